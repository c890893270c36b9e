"""Label scorers behind one interface: CSP, SemanticLens, CLIP-Dissect (soft-WPMI).

A scorer turns a unit's examples into a score for every candidate label, for all units of a layer
at once: ``scores = scorer.score(selection, text_embeddings, context)`` gives [units, labels].
"""
from __future__ import annotations

import abc
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ..contrastive import ContrastiveSelection


@dataclasses.dataclass
class ScoringContext:
    """What some scorers need beyond the selection: the probing set's embeddings and unit statistics."""

    sample_embeddings: np.ndarray | None = None  # [S, D]
    unit_activations: np.ndarray | None = None  # [S, C] for the selection's units


class Scorer(abc.ABC):
    """Scores every candidate label for every unit of a layer."""

    name: str
    text_variant: str = "mean"

    @abc.abstractmethod
    def score(self, selection: ContrastiveSelection, text_embeddings: torch.Tensor,
              context: ScoringContext | None = None) -> torch.Tensor:
        """[units, labels] scores (higher is better)."""

    def config(self) -> dict:
        return {"name": self.name, "text_variant": self.text_variant,
                **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def csp_unit_embeddings(selection: ContrastiveSelection, gamma: float = 1.0, weighting: str = "raw") -> torch.Tensor:
    """CSP unit embeddings v_k = normalise(sum_i w_i (e_i+ - gamma s_i e_i-)), [C, D].

    ``raw`` weighting: w_i = a_i / (sum_j a_j + 1e-8) with a_i >= 0 the positive's activation (or
    relevance); a unit whose a_i are all zero gets uniform weights.
    """
    positives = torch.from_numpy(selection.positive_embeddings).float()  # [N, C, D]
    negatives = torch.from_numpy(selection.negative_embeddings).float()
    similarity = torch.from_numpy(selection.negative_similarity).float().unsqueeze(-1)  # [N, C, 1]
    residual = positives - gamma * similarity * negatives
    if weighting == "raw":
        weights = torch.from_numpy(selection.positive_weights).float()
        # a unit whose positives all have zero (clipped) activation falls back to uniform weights
        weights = torch.where(weights.sum(0, keepdim=True) > 0, weights, torch.ones_like(weights))
        weights = weights / (weights.sum(0, keepdim=True) + 1e-8)
    elif weighting == "none":
        weights = torch.full(positives.shape[:2], 1.0 / positives.shape[0])
    else:
        raise ValueError(f"weighting must be 'raw' or 'none', got {weighting!r}")
    return F.normalize((weights.unsqueeze(-1) * residual).sum(0), dim=-1)


class CSPScorer(Scorer):
    """Contrastive Semantic Projection: each positive minus its projection on its negative.

    Parameters
    ----------
    gamma : in [0, 1]; 1 removes the whole projection, 0 gives a weighted SemanticLens.
    weighting : ``raw`` (by activation / relevance) or ``none`` (uniform).
    """

    name = "csp"

    def __init__(self, gamma: float = 1.0, weighting: str = "raw"):
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.gamma, self.weighting = float(gamma), weighting

    def score(self, selection, text_embeddings, context=None):
        return csp_unit_embeddings(selection, self.gamma, self.weighting) @ text_embeddings.float().T


class SemanticLensScorer(Scorer):
    """SemanticLens: cosine between the mean positive embedding and each label.

    ``empty_template=True`` embeds labels as the ``semanticlens`` package does (templated minus empty
    template, raw features); False uses the CSP text embedding (mean of normalised embeddings).
    """

    name = "semanticlens"

    def __init__(self, empty_template: bool = True):
        self.empty_template = bool(empty_template)
        self.text_variant = "semanticlens" if empty_template else "mean"

    def score(self, selection, text_embeddings, context=None):
        units = F.normalize(torch.from_numpy(selection.positive_embeddings).float().mean(0), dim=-1)
        return units @ F.normalize(text_embeddings.float(), dim=-1).T


class ClipDissectScorer(Scorer):
    """CLIP-Dissect soft-WPMI over the probing set.

    P = softmax over labels of ``temperature`` x image-text cosine, per probing image; for unit k with
    its ``top_count`` highest-activating images (weights decaying linearly from ``p_start`` to
    ``p_end``), score = log(weighted mean of P over them) - ``lam`` x log(mean of P over all images).
    Unbounded; compare only within one setup. Streams over the probing set in chunks.
    """

    name = "clip-dissect"

    def __init__(self, top_count: int = 100, temperature: float = 10.0, lam: float = 1.0,
                 p_start: float = 0.998, p_end: float = 0.97, chunk_size: int = 2048):
        self.top_count, self.temperature, self.lam = top_count, temperature, lam
        self.p_start, self.p_end, self.chunk_size = p_start, p_end, chunk_size

    def score(self, selection, text_embeddings, context=None):
        if context is None or context.sample_embeddings is None or context.unit_activations is None:
            raise ValueError("CLIP-Dissect needs the probing set's embeddings and unit activations (ScoringContext)")
        text = F.normalize(text_embeddings.float(), dim=-1)
        activations = torch.from_numpy(context.unit_activations).float()
        count = min(self.top_count, activations.shape[0])
        top = torch.topk(activations, count, dim=0).indices  # [count, C]
        weights = torch.linspace(self.p_start, self.p_end, count)
        weights = weights / weights.sum()
        samples = context.sample_embeddings
        mean_p = torch.zeros(text.shape[0])
        in_top = torch.zeros(text.shape[0], top.shape[1])  # [T, C]
        for start in range(0, samples.shape[0], self.chunk_size):
            block = torch.from_numpy(np.ascontiguousarray(samples[start:start + self.chunk_size])).float()
            probabilities = torch.softmax(self.temperature * F.normalize(block, dim=-1) @ text.T, dim=1)  # [s, T]
            mean_p += probabilities.sum(0)
            local = (top >= start) & (top < start + block.shape[0])  # [count, C]
            if local.any():
                rank, unit = torch.nonzero(local, as_tuple=True)
                contribution = probabilities[top[rank, unit] - start] * weights[rank].unsqueeze(1)  # [m, T]
                in_top.index_add_(1, unit, contribution.T)
        mean_p /= samples.shape[0]
        return (torch.log(in_top.T + 1e-12) - self.lam * torch.log(mean_p + 1e-12)).float()


SCORERS = {"csp": CSPScorer, "semanticlens": SemanticLensScorer, "clip-dissect": ClipDissectScorer}


def make_scorer(name: str, **options) -> Scorer:
    """A scorer by name (``csp``, ``semanticlens``, ``clip-dissect``) with its options."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name](**options)
