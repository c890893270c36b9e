"""What the report shows, as plain data: per layer, one row per unit with its labels under every
method, interpretability scores and faithfulness metrics. No HTML here (see :mod:`.html`)."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping, Sequence

import numpy as np
import torch

from ..scoring import LayerLabels
from ..scoring.interpretability import clarity, nearest_unit_similarity, polysemanticity

logger = logging.getLogger(__name__)

#: Faithfulness metrics shown per unit, as (key in an evaluation, column title, description).
FAITHFULNESS = (
    ("cosy_auc", "CoSy AUC", "P(activation on concept image > on control image)"),
    ("cosy_mad", "CoSy MAD", "(mean concept - mean control) / std control"),
    ("simcorr", "SimCorr", "correlation of activation and predicted label presence (held-out)"),
    ("auprc", "AUPRC", "precision-recall AUC of activation vs label presence (held-out)"),
    ("gt_match", "GT", "does the label name the ground-truth concept that explains the unit best on held-out "
                       "data (shown after the mark; demo world only)"),
)


def method_order(labels: Sequence[LayerLabels]) -> list[LayerLabels]:
    """CSP first, then SemanticLens, then the rest, each in the order given."""
    def rank(item: LayerLabels) -> int:
        name = item.method
        return 0 if name.startswith("csp") else 1 if name.startswith("semanticlens") else 2
    return sorted(labels, key=rank)


def evaluation_units(evaluation) -> dict[int, dict]:
    """Per-unit metric dicts of an evaluation: a ``LabelEvaluation`` (anything with ``to_dict``),
    or a dict holding ``units`` as a list of dicts with a ``unit`` key or as ``{unit: dict}``."""
    if evaluation is None:
        return {}
    data = evaluation.to_dict() if hasattr(evaluation, "to_dict") else evaluation
    units = data.get("units", data) if isinstance(data, Mapping) else data
    if isinstance(units, Mapping):
        return {int(key): dict(value) for key, value in units.items()
                if str(key).lstrip("-").isdigit() and isinstance(value, Mapping)}
    if isinstance(units, (list, tuple)):
        return {int(row["unit"]): dict(row) for row in units if isinstance(row, Mapping) and "unit" in row}
    return {}


def evaluation_summary(evaluation) -> dict:
    """The summary of an evaluation (its ``summary()``, or the ``summary`` entry of its dict)."""
    if evaluation is None:
        return {}
    if hasattr(evaluation, "summary") and callable(evaluation.summary):
        summary = evaluation.summary()
    else:
        data = evaluation.to_dict() if hasattr(evaluation, "to_dict") else evaluation
        summary = data.get("summary", {}) if isinstance(data, Mapping) else {}
    return dict(summary) if isinstance(summary, Mapping) else {}


def number(value) -> float | None:
    """A finite float, or None (missing, NaN, not a number)."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class UnitRow:
    """One unit of a layer, under every method."""

    unit: int
    labels: dict[str, list[str]]  # method -> ranked labels
    scores: dict[str, list[float]]
    clarity: float | None
    polysemanticity: float | None
    nearest_unit: float | None
    metrics: dict[str, dict]  # method -> faithfulness metrics of its top label


@dataclasses.dataclass
class LayerContent:
    layer: str
    methods: list[LayerLabels]
    rows: list[UnitRow]
    redundancy: float | None
    summaries: dict[str, dict]  # method -> evaluation summary
    candidate_counts: dict[str, int]  # source -> candidate labels from it

    @property
    def primary(self) -> LayerLabels:
        return self.methods[0]

    @property
    def comparison(self) -> LayerLabels | None:
        return self.methods[1] if len(self.methods) > 1 else None

    def agreement(self) -> float | None:
        """Share of units whose top label is the same under the first two methods."""
        if self.comparison is None:
            return None
        first, second = self.primary.method, self.comparison.method
        pairs = [(row.labels.get(first), row.labels.get(second)) for row in self.rows]
        pairs = [(a[0], b[0]) for a, b in pairs if a and b]
        return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def example_embeddings(store, positives: np.ndarray) -> torch.Tensor:
    """Image embeddings of the positives [C, N] of a layer's units from the store: [C, N, D]."""
    units, count = positives.shape
    rows = store.rows_of(positives.reshape(-1))
    return torch.from_numpy(store.take("samples/embedding", rows)).float().view(units, count, -1)


def layer_content(store, layer: str, labels: Sequence[LayerLabels], evaluations: Mapping | None = None) -> LayerContent:
    """Collect what the report shows for ``layer``.

    Interpretability scores (SemanticLens) are computed on the whole-image embeddings of the first
    method's positives: clarity and polysemanticity per unit, redundancy of the layer (from the
    mean embedding of each unit's positives).
    """
    if not labels:
        raise ValueError(f"no labels for layer {layer!r}")
    methods = method_order(labels)
    primary = methods[0]
    by_method = {item.method: item.by_unit() for item in methods}
    units = [unit.unit for unit in primary.units]
    positives = np.array([unit.positives for unit in primary.units])
    clar = poly = near = None
    redundancy_value = None
    if positives.ndim == 2 and positives.shape[1] >= 2:
        embeddings = example_embeddings(store, positives)
        clar = clarity(embeddings).tolist()
        poly = polysemanticity(embeddings).tolist()
        if len(units) >= 2:
            means = embeddings.mean(1)
            near = nearest_unit_similarity(means).tolist()
            redundancy_value = float(np.mean(near))
    evaluations = evaluations or {}
    metrics = {}
    for item in methods:
        found = evaluation_units(evaluations.get((layer, item.method)))
        top = {unit.unit: unit.label for unit in item.units}
        stale = [unit for unit, row in found.items() if "label" in row and row["label"] != top.get(unit)]
        if stale:
            logger.warning("%s [%s]: the evaluation of %d units is of other labels than the current ones (units "
                           "%s); it is left out - evaluate the labels again", layer, item.method, len(stale),
                           ", ".join(map(str, stale[:5])) + (" ..." if len(stale) > 5 else ""))
        metrics[item.method] = {unit: row for unit, row in found.items() if unit not in stale}
    summaries = {item.method: evaluation_summary(evaluations.get((layer, item.method))) for item in methods}
    rows = []
    for position, unit in enumerate(units):
        rows.append(UnitRow(
            unit=unit,
            labels={m: by_method[m][unit].labels for m in by_method if unit in by_method[m]},
            scores={m: by_method[m][unit].scores for m in by_method if unit in by_method[m]},
            clarity=None if clar is None else number(clar[position]),
            polysemanticity=None if poly is None else number(poly[position]),
            nearest_unit=None if near is None else number(near[position]),
            metrics={m: metrics[m].get(unit, {}) for m in metrics},
        ))
    counts: dict[str, int] = {}
    for item in methods:
        for label, sources in item.sources.items():
            for source in sources:
                counts.setdefault(source, set()).add(label)  # type: ignore[arg-type]
    candidate_counts = {source: len(found) for source, found in counts.items()}  # type: ignore[arg-type]
    return LayerContent(layer, methods, rows, redundancy_value, summaries, candidate_counts)


def score_figure(content: LayerContent):
    """Top-1 score distributions of every method and, with two methods or more, the first two
    methods' top-1 scores against each other (coloured by whether their labels agree)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = content.methods
    panels = len(methods) + (1 if content.comparison is not None else 0)
    figure, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.6), squeeze=False)
    axes = axes[0]
    for axis, item in zip(axes, methods):
        top = [unit.scores[0] for unit in item.units if unit.scores]
        axis.hist(top, bins=min(30, max(5, len(top) // 3)), color="#4c72b0")
        axis.set_title(f"{item.method}: top-1 score", fontsize=9)
        axis.set_xlabel("score", fontsize=8)
        axis.set_ylabel("units", fontsize=8)
        axis.tick_params(labelsize=7)
    if content.comparison is not None:
        axis = axes[-1]
        first, second = content.primary.method, content.comparison.method
        xs, ys, same = [], [], []
        for row in content.rows:
            if row.scores.get(first) and row.scores.get(second):
                xs.append(row.scores[first][0])
                ys.append(row.scores[second][0])
                same.append(row.labels[first][0] == row.labels[second][0])
        same = np.array(same, dtype=bool)
        xs, ys = np.array(xs), np.array(ys)
        axis.scatter(xs[same], ys[same], s=12, c="#55a868", label="same top-1 label")
        axis.scatter(xs[~same], ys[~same], s=12, c="#c44e52", label="different")
        agreement = content.agreement()
        title = f"{first} vs {second}" + (f" (agree {agreement:.0%})" if agreement is not None else "")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(f"{first} top-1 score", fontsize=8)
        axis.set_ylabel(f"{second} top-1 score", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure
