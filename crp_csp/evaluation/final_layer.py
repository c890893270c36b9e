"""The final-layer protocol (CLIP-Dissect): label the output units and compare with the class names."""
from __future__ import annotations

from typing import Sequence

from ..scoring import LayerLabels
from .ground_truth import same_concept


def final_layer_accuracy(labels: LayerLabels, class_names: Sequence[str], k: int = 5) -> dict[str, float]:
    """Top-1 and top-``k`` accuracy of output-unit labels: unit i's true label is ``class_names[i]``.

    Labels match when they name the same concept (:func:`~crp_csp.evaluation.ground_truth.same_concept`:
    case, punctuation and, for demo phrases, word order do not matter).

    Returns
    -------
    dict
        ``{"top1": ..., "top5": ..., "units": n}`` (the second key is ``f"top{k}"``); accuracy over the
        labelled units that have a class name.
    """
    scored = [unit for unit in labels.units if 0 <= unit.unit < len(class_names)]
    if not scored:
        raise ValueError(f"none of the {len(labels.units)} labelled units indexes into {len(class_names)} class names")
    top1 = sum(same_concept(unit.labels[0], class_names[unit.unit]) for unit in scored)
    topk = sum(any(same_concept(label, class_names[unit.unit]) for label in unit.labels[:k]) for unit in scored)
    return {"top1": top1 / len(scored), f"top{k}": topk / len(scored), "units": len(scored)}
