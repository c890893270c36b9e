"""Contrastive example selection: for each positive of a unit, the most CLIP-similar sample that
does not drive the unit.

Per unit k (vectorised over all units of a layer):

1. positives: the first ``scored_count`` samples of the unit's ActMax or RelMax pool;
2. eligible negatives: samples whose activation (or relevance) statistic for k lies below the
   unit's mean over the probing set (or a quantile);
3. for each positive in rank order, the eligible sample of highest encoder cosine is its negative
   (``s_i``). Without reuse, negatives are assigned greedily without replacement.

Similarities are computed in chunks of samples, so probing sets whose embeddings do not fit in
memory work too.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import torch

from ..store import AnalysisStore

logger = logging.getLogger(__name__)

POSITIVE_SOURCES = ("activation", "relevance")
VIEWS = ("image", "crop")
DEFAULT_STATS = {"activation": "max", "relevance": "sum"}


class TooFewNegativesError(ValueError):
    """A unit has fewer eligible contrastive candidates than it needs."""


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Options of :func:`select_contrastive`.

    Parameters
    ----------
    positives : rank positives by ``activation`` (ActMax) or ``relevance`` (RelMax).
    scored_count : positives per unit used for scoring (N; CSP default 30).
    eligibility : threshold negatives by ``activation`` or ``relevance``.
    eligibility_stat : the per-sample statistic thresholded (default: spatial ``max`` of the activation,
        or the ``sum`` of the relevance); the same statistic gives the positives' weights.
    threshold : ``"mean"`` (below the unit's mean over the probing set) or a quantile in (0, 1) (at or
        below it).
    view : embed positives as whole ``image``s or as their relevance ``crop``s (negatives are whole images).
    reuse : allow one negative for several positives of a unit.
    chunk_elements : bound on the similarity block held in memory (positives x samples).
    """

    positives: str = "activation"
    scored_count: int = 30
    eligibility: str = "activation"
    eligibility_stat: str | None = None
    threshold: str | float = "mean"
    view: str = "image"
    reuse: bool = True
    chunk_elements: int = 2**24

    def __post_init__(self) -> None:
        if self.positives not in POSITIVE_SOURCES or self.eligibility not in POSITIVE_SOURCES:
            raise ValueError(f"positives and eligibility must be one of {POSITIVE_SOURCES}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.scored_count < 1:
            raise ValueError(f"scored_count must be >= 1, got {self.scored_count}")
        if not (self.threshold == "mean" or (isinstance(self.threshold, float) and 0 < self.threshold < 1)):
            raise ValueError(f"threshold must be 'mean' or a quantile in (0, 1), got {self.threshold!r}")
        if self.eligibility_stat is None:
            object.__setattr__(self, "eligibility_stat", DEFAULT_STATS[self.eligibility])

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "chunk_elements"}


@dataclasses.dataclass
class ContrastiveSelection:
    """Positives and their matched negatives for every unit of one layer (arrays are [N, C])."""

    layer: str
    config: SelectionConfig
    positive_ids: np.ndarray
    positive_weights: np.ndarray
    positive_embeddings: np.ndarray  # [N, C, D]
    negative_ids: np.ndarray
    negative_similarity: np.ndarray
    negative_embeddings: np.ndarray  # [N, C, D]

    @property
    def num_units(self) -> int:
        return self.positive_ids.shape[1]

    def describe(self) -> str:
        return json.dumps({"layer": self.layer, **self.config.to_dict()}, sort_keys=True)


def _eligible_mask(stat: np.ndarray, threshold) -> np.ndarray:
    if threshold == "mean":
        return stat < stat.mean(0, keepdims=True)
    # at or below the quantile: zero-inflated statistics (ReLU, relevance) have their quantile at 0
    return stat <= np.quantile(stat, threshold, axis=0, keepdims=True)


def _best_matches(pair_embeddings: torch.Tensor, pair_units: torch.Tensor, embeddings,
                  eligible: np.ndarray, k: int, chunk_elements: int):
    """Top-``k`` eligible samples by cosine for every (positive, unit) pair, streamed over samples.

    Ties go to the smaller sample index.
    """
    pairs = pair_embeddings.shape[0]
    best_sim = torch.full((pairs, k), -float("inf"))
    best_ids = torch.full((pairs, k), -1, dtype=torch.long)
    chunk = max(1, chunk_elements // max(1, pairs))
    for start in range(0, embeddings.shape[0], chunk):
        block = torch.from_numpy(np.ascontiguousarray(embeddings[start:start + chunk])).float()
        sims = pair_embeddings @ block.T  # [pairs, chunk]
        mask = torch.from_numpy(eligible[start:start + chunk]).T[pair_units]  # [pairs, chunk]
        sims = sims.masked_fill(~mask, -float("inf"))
        ids = torch.arange(start, start + block.shape[0]).expand(pairs, -1)
        merged_sim = torch.cat([best_sim, sims], 1)
        merged_ids = torch.cat([best_ids, ids], 1)
        # stable sort keeps earlier (smaller) ids first among equal similarities
        order = torch.argsort(-merged_sim, dim=1, stable=True)[:, :k]
        best_sim, best_ids = merged_sim.gather(1, order), merged_ids.gather(1, order)
    return best_sim, best_ids


def select_contrastive(store: AnalysisStore, layer: str, config: SelectionConfig | None = None,
                       units: np.ndarray | None = None) -> ContrastiveSelection:
    """Choose positives and contrastive negatives for the units of ``layer`` (all, or ``units``).

    Raises :class:`TooFewNegativesError` when a unit has too few eligible candidates.
    """
    config = config or SelectionConfig()
    pool = store.references(layer, config.positives)
    pool_size = pool["ids"].shape[0]
    if config.scored_count > pool_size:
        raise ValueError(
            f"scored_count={config.scored_count} exceeds the stored pool of {pool_size} references; "
            "lower scored_count or rerun the analysis with a larger pool_size"
        )
    units = np.arange(pool["ids"].shape[1]) if units is None else np.asarray(units)
    positive_ids = pool["ids"][:config.scored_count][:, units]
    n, c = positive_ids.shape

    eligibility_stat = store.statistic(layer, config.eligibility, config.eligibility_stat)[:, units]
    eligible = _eligible_mask(eligibility_stat, config.threshold)
    constant = eligibility_stat.max(0) == eligibility_stat.min(0)
    if constant.any():
        # a dead unit has no contrast to offer: any sample but its positives may serve
        logger.warning("%s: units %s have a constant %s %s; their negatives are drawn from all other samples",
                       layer, units[constant].tolist()[:10], config.eligibility, config.eligibility_stat)
        eligible[:, constant] = True
        positive_rows = store.rows_of(positive_ids[:, constant].reshape(-1)).reshape(n, -1)
        for column, unit_rows in zip(np.nonzero(constant)[0], positive_rows.T):
            eligible[unit_rows, column] = False
    weight_stat = store.statistic(layer, config.positives, DEFAULT_STATS[config.positives])[:, units]
    rows = store.rows_of(positive_ids.reshape(-1)).reshape(n, c)
    positive_weights = np.clip(np.take_along_axis(weight_stat, rows, 0), 0, None)

    counts = eligible.sum(0)
    needed = 1 if config.reuse else n
    if (counts < needed).any():
        unit = int(units[np.argmax(counts < needed)])
        raise TooFewNegativesError(
            f"unit {unit} of {layer} has {int(counts.min())} eligible contrastive candidates but needs "
            f"{needed}; {'allow reuse, ' if not config.reuse else ''}lower scored_count, relax the threshold "
            "or analyse a larger probing set"
        )

    if config.view == "crop":
        crops = store.crop_embeddings(layer, config.positives)
        if crops.shape[0] < n:
            raise ValueError(
                f"the store holds crops of {crops.shape[0]} references per unit, scored_count needs {n}; "
                "lower scored_count or rerun the analysis with a larger crop_count"
            )
        positive_embeddings = crops[:n][:, units]
    else:
        positive_embeddings = store.take("samples/embedding", rows.reshape(-1)).reshape(n, c, -1)

    pair_embeddings = torch.from_numpy(positive_embeddings.transpose(1, 0, 2).reshape(c * n, -1)).float()
    pair_units = torch.arange(c).repeat_interleave(n)
    with store.open() as handle:
        best_sim, best_ids = _best_matches(pair_embeddings, pair_units, handle["samples/embedding"], eligible,
                                           needed, config.chunk_elements)
    best_sim, best_ids = best_sim.view(c, n, needed), best_ids.view(c, n, needed)

    if config.reuse:
        negative_rows, similarity = best_ids[:, :, 0], best_sim[:, :, 0]
    else:
        negative_rows = torch.empty(c, n, dtype=torch.long)
        similarity = torch.empty(c, n)
        used = [set() for _ in range(c)]
        for unit in range(c):
            for rank in range(n):
                for option in range(needed):
                    candidate = int(best_ids[unit, rank, option])
                    if candidate not in used[unit]:
                        used[unit].add(candidate)
                        negative_rows[unit, rank] = candidate
                        similarity[unit, rank] = best_sim[unit, rank, option]
                        break
    negative_rows = negative_rows.T.numpy()
    sample_index = store.sample_index
    negative_embeddings = store.take("samples/embedding", negative_rows.reshape(-1)).reshape(n, c, -1)
    return ContrastiveSelection(
        layer=layer, config=config, positive_ids=positive_ids, positive_weights=positive_weights,
        positive_embeddings=positive_embeddings, negative_ids=sample_index[negative_rows],
        negative_similarity=similarity.T.numpy(), negative_embeddings=negative_embeddings,
    )
