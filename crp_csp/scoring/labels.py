"""Labelling the units of a layer: selection, scoring, top-k, and the results as plain objects."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Sequence

import h5py
import numpy as np
import torch

from .._json import dump_json
from ..candidates import CandidateSet
from ..contrastive import ContrastiveSelection, SelectionConfig, select_contrastive
from ..encoders import ImageTextEncoder, load_encoder
from ..store import AnalysisStore
from .scorers import ClipDissectScorer, CSPScorer, Scorer, ScoringContext
from .text import LABEL_TEMPLATES, cached_label_embeddings


@dataclasses.dataclass
class UnitLabel:
    """One unit's result: ranked labels with scores, and the examples they came from."""

    unit: int
    labels: list[str]
    scores: list[float]
    positives: list[int]
    positive_weights: list[float]
    negatives: list[int]
    negative_similarity: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclasses.dataclass
class LayerLabels:
    """Labels of the units of one layer under one scorer, with the full configuration."""

    layer: str
    method: str
    config: dict
    units: list[UnitLabel]
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def top1(self) -> list[str]:
        return [unit.label for unit in self.units]

    def by_unit(self) -> dict[int, UnitLabel]:
        return {unit.unit: unit for unit in self.units}

    def to_dict(self) -> dict:
        return {"layer": self.layer, "method": self.method, "config": self.config,
                "units": [dataclasses.asdict(unit) for unit in self.units],
                "sources": {label: self.sources[label] for unit in self.units for label in unit.labels
                            if label in self.sources}}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        return dump_json(self.to_dict(), path)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["layer", "method", "unit", "rank", "label", "score"])
        for unit in self.units:
            for rank, (label, score) in enumerate(zip(unit.labels, unit.scores), start=1):
                writer.writerow([self.layer, self.method, unit.unit, rank, label, f"{score:.6g}"])
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(buffer.getvalue())
        return buffer.getvalue()

    def save(self, store: AnalysisStore, name: str | None = None) -> str:
        """Write into ``store`` under ``labels/<name>/<layer>`` (name defaults to the method)."""
        group = f"labels/{name or self.method}/{self.layer}"
        strings = h5py.string_dtype()
        store.write_group(group, {
            "units": np.array([u.unit for u in self.units]),
            "labels": np.array([u.labels for u in self.units], dtype=strings),
            "scores": np.array([u.scores for u in self.units], dtype=np.float32),
            "positives": np.array([u.positives for u in self.units]),
            "positive_weights": np.array([u.positive_weights for u in self.units], dtype=np.float32),
            "negatives": np.array([u.negatives for u in self.units]),
            "negative_similarity": np.array([u.negative_similarity for u in self.units], dtype=np.float32),
        }, attrs={"method": self.method, "config": json.dumps(self.config), "sources": json.dumps(self.sources)})
        return group

    @classmethod
    def load(cls, store: AnalysisStore, layer: str, name: str) -> "LayerLabels":
        arrays, attrs = store.read_group(f"labels/{name}/{layer}")
        decode = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])
        labels = decode(arrays["labels"])
        units = [
            UnitLabel(int(u), list(labels[i]), arrays["scores"][i].tolist(), arrays["positives"][i].tolist(),
                      arrays["positive_weights"][i].tolist(), arrays["negatives"][i].tolist(),
                      arrays["negative_similarity"][i].tolist())
            for i, u in enumerate(arrays["units"])
        ]
        return cls(layer, str(attrs["method"]), json.loads(attrs["config"]), units, json.loads(attrs["sources"]))


def encoder_for(store: AnalysisStore, encoder: ImageTextEncoder | None = None) -> ImageTextEncoder:
    """The given encoder (checked against the store's) or the one the store was made with."""
    stored = store.fingerprint["encoder"]
    if encoder is None:
        try:
            encoder = load_encoder(stored["spec"])
        except ValueError as error:
            raise ValueError(
                f"the store's encoder {stored['spec']!r} cannot be loaded by spec ({error}); pass encoder=..."
            ) from None
    if encoder.fingerprint() != stored["weights"]:
        raise ValueError(
            f"encoder {encoder.spec!r} is not the one {store.path} was made with ({stored['spec']!r}); "
            "text and image embeddings must come from the same encoder"
        )
    return encoder


def label_units(
    store: AnalysisStore,
    layer: str,
    candidates: CandidateSet | Sequence[str],
    *,
    encoder: ImageTextEncoder | None = None,
    scorer: Scorer | None = None,
    selection: ContrastiveSelection | None = None,
    selection_config: SelectionConfig | None = None,
    top_k: int = 5,
    units: Sequence[int] | None = None,
    templates: Sequence[str] = LABEL_TEMPLATES,
) -> LayerLabels:
    """Label the units of ``layer`` with ``scorer`` (default CSP, gamma 1) against ``candidates``.

    Text embeddings are cached in the store, keyed by encoder weights, templates and variant.
    """
    if not isinstance(candidates, CandidateSet):
        candidates = CandidateSet.from_labels(candidates, "user")
    if len(candidates) == 0:
        raise ValueError("the candidate set is empty; add a vocabulary or a label file")
    scorer = scorer or CSPScorer()
    encoder = encoder_for(store, encoder)
    selection = selection or select_contrastive(store, layer, selection_config, units=units)
    text = cached_label_embeddings(store, encoder, candidates.labels, templates, scorer.text_variant)
    with store.open() as handle:
        context = None
        if isinstance(scorer, ClipDissectScorer):
            unit_ids = np.asarray(units) if units is not None else np.arange(selection.num_units)
            stat = selection.config.eligibility_stat
            activations = handle[f"layers/{layer}/{selection.config.eligibility}/{stat}"][()][:, unit_ids]
            context = ScoringContext(handle["samples/embedding"], activations)
        scores = scorer.score(selection, text, context)
    k = min(top_k, len(candidates))
    top = torch.topk(scores, k, dim=1)
    unit_ids = list(units) if units is not None else list(range(selection.num_units))
    results = []
    for column, unit in enumerate(unit_ids):
        results.append(UnitLabel(
            unit=int(unit),
            labels=[candidates.labels[i] for i in top.indices[column].tolist()],
            scores=[round(float(s), 6) for s in top.values[column]],
            positives=selection.positive_ids[:, column].tolist(),
            positive_weights=[float(w) for w in selection.positive_weights[:, column]],
            negatives=selection.negative_ids[:, column].tolist(),
            negative_similarity=[float(s) for s in selection.negative_similarity[:, column]],
        ))
    config = {"scorer": scorer.config(), "selection": selection.config.to_dict(), "templates": list(templates),
              "encoder": encoder.spec, "candidates": len(candidates)}
    return LayerLabels(layer, _method_name(scorer), config, results, candidates.sources)


def _method_name(scorer: Scorer) -> str:
    if isinstance(scorer, CSPScorer):
        return f"csp-g{scorer.gamma:g}" + ("" if scorer.weighting == "raw" else "-uniform")
    return scorer.name + ("" if getattr(scorer, "empty_template", True) else "-plain")
