"""Evaluating a layer's labels: CoSy, simulation correlation, AUPRC and ground-truth match per unit.

:func:`evaluate_labels` is the one-call form. :class:`LabelEvaluator` is the same thing with the
label-independent work cached (held-out activations and embeddings, control activations, concept
images), for comparing several labelling methods on one layer.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._json import dump_json
from ..encoders import ImageTextEncoder
from ..scoring import LayerLabels, embed_labels
from .activations import unit_activations
from .ground_truth import best_explaining_attribute, concept_overlap, demo_attributes, same_concept
from .metrics import auprc, cosy, simulation_correlation
from .sources import ConceptImageSource, UnknownConceptError

logger = logging.getLogger(__name__)

_UNSET = object()

#: Per-unit fields averaged by :meth:`LabelEvaluation.summary`.
METRICS = ("cosy_auc", "cosy_mad", "simcorr", "simcorr_presence", "auprc", "auprc_chance", "gt_auc", "gt_match",
           "gt_overlap")


def _images_of(sample) -> torch.Tensor:
    return torch.as_tensor(sample[0] if isinstance(sample, (tuple, list)) else sample).float()


def _batches(images: torch.Tensor | Dataset, batch_size: int):
    """Batches of images from a tensor [N, 3, H, W] or a dataset of images / (image, label) pairs."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size].float()
        return
    loader = DataLoader(images, batch_size=batch_size, shuffle=False,
                        collate_fn=lambda samples: torch.stack([_images_of(s) for s in samples]))
    yield from loader


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclasses.dataclass
class LabelEvaluation:
    """Faithfulness of one layer's labels, per unit.

    Each entry of ``units`` holds ``unit``, ``label`` (the top-1 label evaluated), ``concept_source``
    (which source drew the label's images, None when none could), ``cosy_auc``, ``cosy_mad``,
    ``simcorr`` (Pearson r of the activation with the encoder's image-text similarity of the label on
    held-out images), ``simcorr_presence`` (the same with the label's ground-truth presence),
    ``auprc`` and ``auprc_chance`` (average precision of the activation for the label's presence, and
    its chance level), ``gt_attribute`` / ``gt_auc`` (the concept that explains the unit best on
    held-out data, and its presence AUC), ``gt_match`` (label and ``gt_attribute`` name the same
    concept) and ``gt_overlap`` (partial credit: the Jaccard index of the attribute values they name).
    A field is None where it is undefined (no concept images, no ground truth, a constant unit).
    """

    layer: str
    method: str
    config: dict
    units: list[dict]

    def summary(self) -> dict:
        """Mean of each metric over the units where it is defined, and how many units that is."""
        result: dict = {"units": len(self.units)}
        for metric in METRICS:
            values = [float(u[metric]) for u in self.units if u.get(metric) is not None]
            result[metric] = float(np.mean(values)) if values else None
            result[f"{metric}_n"] = len(values)
        return result

    def to_dict(self) -> dict:
        return {"layer": self.layer, "method": self.method, "config": self.config, "summary": self.summary(),
                "units": self.units}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        return dump_json(self.to_dict(), path)


class LabelEvaluator:
    """Evaluates labels of one layer; caches everything that does not depend on the labels.

    Parameters are those of :func:`evaluate_labels`, plus ``batch_size`` (images per forward pass),
    ``ground_truth_concepts`` (the concepts :func:`best_explaining_attribute` chooses from) and
    ``heldout_embeddings`` ([N, D] encoder embeddings of ``heldout``, e.g. another layer's
    evaluator's ``heldout_data()[1]``, to skip encoding the held-out images again).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        heldout: Dataset,
        *,
        encoder: ImageTextEncoder,
        concept_source: ConceptImageSource | Sequence[ConceptImageSource],
        control_images: torch.Tensor | Dataset,
        preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "max",
        device: str | torch.device = "cpu",
        composite=None,
        concept_count: int = 50,
        seed: int = 0,
        batch_size: int = 64,
        ground_truth_concepts: Sequence[str] | None = None,
        heldout_embeddings: np.ndarray | None = None,
    ):
        sources = [concept_source] if isinstance(concept_source, ConceptImageSource) else list(concept_source)
        if not sources or not all(isinstance(s, ConceptImageSource) for s in sources):
            raise TypeError("concept_source must be a ConceptImageSource or a non-empty sequence of them")
        if concept_count < 1:
            raise ValueError(f"concept_count must be >= 1, got {concept_count}")
        self.model, self.layer, self.heldout = model, layer, heldout
        self.encoder, self.sources, self.control_images = encoder, sources, control_images
        self.preprocess_fn, self.reduction, self.device, self.composite = preprocess_fn, reduction, device, composite
        self.concept_count, self.seed, self.batch_size = int(concept_count), int(seed), int(batch_size)
        self.ground_truth_concepts = ground_truth_concepts
        self._heldout: tuple[np.ndarray, np.ndarray] | None = None
        self._heldout_embeddings = None if heldout_embeddings is None else np.asarray(heldout_embeddings, np.float32)
        self._control: np.ndarray | None = None
        self._concepts: dict[str, tuple[np.ndarray | None, str | None]] = {}
        self._ground_truth: tuple[list[str], np.ndarray] | None | object = _UNSET

    def activations(self, images: torch.Tensor) -> np.ndarray:
        """[N, C] activations of the layer's units on a batch of images."""
        return unit_activations(self.model, self.layer, images, preprocess_fn=self.preprocess_fn,
                                reduction=self.reduction, batch_size=self.batch_size, device=self.device,
                                composite=self.composite)

    def heldout_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Activations [N, C] and encoder image embeddings [N, D] of the held-out images (cached)."""
        if self._heldout is None:
            acts, embeddings = [], []
            for images in _batches(self.heldout, self.batch_size * 4):
                acts.append(self.activations(images))
                if self._heldout_embeddings is None:
                    embeddings.append(self.encoder.encode_images(images).float().cpu().numpy())
            if not acts:
                raise ValueError("the held-out dataset is empty")
            acts = np.concatenate(acts)
            embedded = np.concatenate(embeddings) if embeddings else self._heldout_embeddings
            if len(embedded) != len(acts):
                raise ValueError(f"heldout_embeddings has {len(embedded)} rows, the held-out data {len(acts)}")
            self._heldout = acts, embedded
        return self._heldout

    def control_acts(self) -> np.ndarray:
        """Activations [K, C] on the control images (cached)."""
        if self._control is None:
            chunks = [self.activations(images) for images in _batches(self.control_images, self.batch_size * 4)]
            if not chunks:
                raise ValueError("control_images is empty")
            self._control = np.concatenate(chunks)
        return self._control

    def concept_acts(self, label: str) -> tuple[np.ndarray | None, str | None]:
        """Activations [M, C] on images of ``label`` from the first source that can draw it, and that
        source's name; ``(None, None)`` when no source can (cached per label)."""
        if label not in self._concepts:
            result: tuple[np.ndarray | None, str | None] = (None, None)
            for source in self.sources:
                try:
                    images = source.images(label, self.concept_count, self.seed)
                except UnknownConceptError as error:
                    logger.info("%s: %s", source.name, error)
                    continue
                result = (self.activations(images), source.name)
                break
            self._concepts[label] = result
        return self._concepts[label]

    def presence(self, label: str) -> np.ndarray | None:
        """Ground-truth presence [N] of ``label`` in the held-out data, or None where it has none."""
        if not hasattr(self.heldout, "presence"):
            return None
        from ..demo import DemoWorldDataset

        try:
            if isinstance(self.heldout, DemoWorldDataset):
                demo_attributes(label)  # strict: "dog on grass" is not "grass"
            return np.asarray(self.heldout.presence(label), dtype=bool)
        except ValueError:
            return None

    def ground_truth(self) -> tuple[list[str], np.ndarray] | None:
        """Each unit's best-explaining concept and its AUC on the held-out data (None without ground truth)."""
        if self._ground_truth is _UNSET:
            if not hasattr(self.heldout, "presence"):
                self._ground_truth = None
            else:
                self._ground_truth = best_explaining_attribute(self.heldout_data()[0], self.heldout,
                                                               concepts=self.ground_truth_concepts)
        return self._ground_truth  # type: ignore[return-value]

    def evaluate(self, labels: LayerLabels) -> LabelEvaluation:
        """Evaluate the top-1 label of every unit in ``labels``."""
        if labels.layer != self.layer:
            raise ValueError(f"labels are of layer {labels.layer!r}, the evaluator measures {self.layer!r}")
        acts, embeddings = self.heldout_data()
        control = self.control_acts()
        if labels.units and max(u.unit for u in labels.units) >= acts.shape[1]:
            raise ValueError(f"labels name unit {max(u.unit for u in labels.units)} but {self.layer} has "
                             f"{acts.shape[1]} units")
        distinct = list(dict.fromkeys(unit.label for unit in labels.units))
        text = F.normalize(embed_labels(self.encoder, distinct).float(), dim=-1).cpu().numpy() if distinct else None
        similarity = dict(zip(distinct, (embeddings @ text.T).T)) if distinct else {}
        truth = self.ground_truth()
        presence = {label: self.presence(label) for label in distinct}
        rows = []
        for unit_label in labels.units:
            unit, label = unit_label.unit, unit_label.label
            concept, source = self.concept_acts(label)
            auc, mad = cosy(concept[:, unit], control[:, unit]) if concept is not None else (None, None)
            row = {"unit": unit, "label": label, "concept_source": source, "cosy_auc": _finite(auc),
                   "cosy_mad": _finite(mad),
                   "simcorr": _finite(simulation_correlation(acts[:, unit], similarity[label]))}
            present = presence[label]
            if present is not None:
                row["simcorr_presence"] = _finite(simulation_correlation(acts[:, unit], present))
                row["auprc"] = _finite(auprc(present, acts[:, unit]))
                row["auprc_chance"] = float(present.mean())
            else:
                row.update(simcorr_presence=None, auprc=None, auprc_chance=None)
            if truth is not None:
                row["gt_attribute"], row["gt_auc"] = truth[0][unit], _finite(truth[1][unit])
                row["gt_match"] = float(same_concept(label, truth[0][unit]))
                row["gt_overlap"] = concept_overlap(label, truth[0][unit])
            else:
                row.update(gt_attribute=None, gt_auc=None, gt_match=None, gt_overlap=None)
            rows.append(row)
        config = {
            "labels": {"method": labels.method, "config": labels.config},
            "evaluation": {
                "label_rank": 1, "reduction": self.reduction, "concept_count": self.concept_count, "seed": self.seed,
                "concept_sources": [source.describe() for source in self.sources],
                "control_images": int(len(control)), "heldout_images": int(len(acts)),
                "heldout": f"{type(self.heldout).__name__}:{getattr(self.heldout, 'split', '')}".rstrip(":"),
                "simcorr_predictor": "encoder image-text cosine (labels embedded as the mean over templates)",
                "composite": type(self.composite).__name__ if self.composite is not None else None,
            },
        }
        return LabelEvaluation(self.layer, labels.method, config, rows)


def evaluate_labels(
    model: nn.Module,
    layer: str,
    labels: LayerLabels,
    heldout: Dataset,
    *,
    encoder: ImageTextEncoder,
    concept_source: ConceptImageSource | Sequence[ConceptImageSource],
    control_images: torch.Tensor | Dataset,
    preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "max",
    device: str | torch.device = "cpu",
    composite=None,
    concept_count: int = 50,
    seed: int = 0,
) -> LabelEvaluation:
    """Measure how faithful the top-1 label of every unit of ``layer`` is.

    Parameters
    ----------
    model : the analysed network.
    layer : the layer the labels belong to (``labels.layer``).
    labels : the labels (:func:`crp_csp.scoring.label_units`).
    heldout : held-out data, ``(image, label)`` pairs or images in [0, 1]; simulation correlation and
        AUPRC are measured on it. With a ``presence(concept)`` method (the demo world) it also gives
        the ground truth: ``simcorr_presence``, ``auprc`` and ``gt_attribute`` / ``gt_match``.
    encoder : the CLIP-like encoder; its image-text similarity is the predictor of ``simcorr``.
    concept_source : a :class:`ConceptImageSource`, or several tried in order (a source that cannot
        draw a label raises :class:`UnknownConceptError` and the next one is asked).
    control_images : float [K, 3, H, W] in [0, 1], or a dataset of them: CoSy's control set.
    preprocess_fn : applied to images before the model (as in the analysis).
    reduction : ``max`` or ``mean`` over space of a unit's activation map.
    device : where the model runs.
    composite : the zennit composite of the analysis; its canonizers change some layers' outputs
        (see :func:`unit_activations`). None measures the plain model.
    concept_count : images per label from the concept source.
    seed : seed of the concept images (the same for every label and method).

    Returns
    -------
    LabelEvaluation
    """
    evaluator = LabelEvaluator(model, layer, heldout, encoder=encoder, concept_source=concept_source,
                               control_images=control_images, preprocess_fn=preprocess_fn, reduction=reduction,
                               device=device, composite=composite, concept_count=concept_count, seed=seed)
    return evaluator.evaluate(labels)
