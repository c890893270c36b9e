"""Ground truth for data that knows its concepts (the demo world): which concept explains a unit best.

A unit's ground-truth concept is the one whose presence its activation separates best on held-out
data (highest ROC AUC of presence vs activation). Held-out demo data breaks the planted
confounders, so a unit that detects circles is explained by "circle", not by the "grass" that
accompanies most circles in the probing set.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

#: AUCs closer than this count as tied in :func:`best_explaining_attribute`.
TIE_TOLERANCE = 1e-9


def presence_matrix(dataset, concepts: Sequence[str]) -> np.ndarray:
    """bool [N, K]: does sample n of ``dataset`` show concept k (``dataset.presence(concept)``)?"""
    if not hasattr(dataset, "presence"):
        raise TypeError(f"{type(dataset).__name__} has no presence(concept) method; it holds no ground truth")
    return np.stack([np.asarray(dataset.presence(concept), dtype=bool) for concept in concepts], axis=1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of each column of ``values`` [N, C], ties sharing their mean rank."""
    ranks = np.empty(values.shape, dtype=np.float64)
    for column in range(values.shape[1]):
        order = np.argsort(values[:, column], kind="stable")
        ordered = values[order, column]
        starts = np.r_[0, np.nonzero(np.diff(ordered))[0] + 1]
        ends = np.r_[starts[1:], len(ordered)]
        mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
        ranks[order, column] = np.repeat(mean_rank, ends - starts)
    return ranks


def presence_auc(acts: np.ndarray, presence: np.ndarray) -> np.ndarray:
    """ROC AUC [K, C] of every unit's activation (``acts`` [N, C]) as a detector of every concept
    (``presence`` bool [N, K]); ties count 1/2, NaN for a concept present in none or all samples."""
    acts = np.asarray(acts, dtype=np.float64)
    presence = np.asarray(presence, dtype=bool)
    if acts.ndim != 2 or presence.ndim != 2 or len(acts) != len(presence):
        raise ValueError(f"acts [N, C] and presence [N, K] must have the same N, got {acts.shape}, {presence.shape}")
    ranks = _average_ranks(acts)
    positives = presence.sum(0).astype(np.float64)[:, None]
    negatives = len(acts) - positives
    rank_sums = presence.T.astype(np.float64) @ ranks
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)
    auc[(positives == 0).ravel() | (negatives == 0).ravel()] = np.nan
    return auc


def default_concepts() -> list[str]:
    """The demo world's concepts: every attribute value, class names and two-attribute phrases."""
    from ..candidates.vocabularies import demo_concepts

    return demo_concepts()


def best_explaining_attribute(acts: np.ndarray, dataset, *, concepts: Sequence[str] | None = None
                              ) -> tuple[list[str], np.ndarray]:
    """Each unit's ground-truth concept: the concept whose presence its activation separates best.

    Parameters
    ----------
    acts : [N, C] unit activations on the N samples of ``dataset`` (held-out data, confounders broken).
    dataset : has ``presence(concept) -> bool [N]`` (e.g. :class:`crp_csp.demo.DemoWorldDataset`).
    concepts : the concepts to choose from (default :func:`default_concepts`: the 20 attribute values
        of the demo world, its 16 class names and two-attribute phrases).

    Returns
    -------
    (best, auc)
        ``best[c]`` the concept of highest presence AUC for unit c (ties within
        :data:`TIE_TOLERANCE` go to the concept whose presence correlates best with the activation),
        ``auc[c]`` that AUC.
    """
    concepts = list(default_concepts() if concepts is None else concepts)
    if not concepts:
        raise ValueError("no concepts to choose from")
    acts = np.asarray(acts, dtype=np.float64)
    presence = presence_matrix(dataset, concepts)
    auc = presence_auc(acts, presence)
    filled = np.where(np.isnan(auc), -np.inf, auc)
    # AUC ignores magnitudes: a unit that fires on striped circles and a little on other circles
    # separates "circle" and "striped circle" equally well. Ties go to the better-correlated concept.
    tied = filled >= filled.max(0, keepdims=True) - TIE_TOLERANCE
    correlation = np.nan_to_num(_correlation(presence.astype(np.float64), acts), nan=-np.inf)
    best = np.where(tied, correlation, -np.inf).argmax(0)
    return [concepts[k] for k in best], auc[best, np.arange(auc.shape[1])]


def _correlation(presence: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """Pearson r [K, C] between every presence column and every activation column (NaN if constant)."""
    presence = presence - presence.mean(0)
    acts = acts - acts.mean(0)
    norms = np.outer(np.sqrt((presence**2).sum(0)), np.sqrt((acts**2).sum(0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, presence.T @ acts / np.where(norms > 0, norms, 1.0), np.nan)


# Words a demo phrase may hold besides attribute values ("a red object on a grass background").
DEMO_FILLER_WORDS = frozenset({
    "a", "an", "the", "on", "in", "of", "over", "with", "front", "background", "object", "shape", "thing",
    "like", "image", "closeup", "photo", "picture",
})


def demo_attributes(phrase: str) -> dict[str, str]:
    """The demo attribute values ``phrase`` names, strictly: a word that is neither an attribute value
    nor a filler word (:data:`DEMO_FILLER_WORDS`) is a ``ValueError`` ("dog on grass" is not "grass")."""
    from ..demo.world import VALUE_TO_FAMILY, parse_phrase

    words = re.findall(r"[a-z]+", phrase.lower())
    unknown = [w for w in words if w not in VALUE_TO_FAMILY and w not in DEMO_FILLER_WORDS]
    if unknown:
        raise ValueError(f"the demo world does not know {', '.join(map(repr, unknown))} in {phrase!r}")
    return parse_phrase(phrase)


def _words(label: str) -> frozenset:
    return frozenset(re.findall(r"[a-z0-9]+", label.lower())) - {"a", "an", "the"}


def _concept_parts(concept: str) -> frozenset:
    """The demo attribute values a label names, or else its lower-cased words (articles dropped)."""
    try:
        return frozenset(demo_attributes(concept).items())
    except ValueError:
        return _words(concept)


def same_concept(a: str, b: str) -> bool:
    """Whether two labels name the same concept: the same demo attribute values ("striped circle" and
    "a circle striped" do), or otherwise the same words after lower-casing and dropping punctuation
    and articles."""
    return _concept_parts(a) == _concept_parts(b)


def concept_overlap(a: str, b: str) -> float:
    """Partial credit between two labels: the Jaccard index of the demo attribute values they name
    ("circle" vs "plain circle": 1/2), or of their words when either is not a demo phrase."""
    parts_a, parts_b = _concept_parts(a), _concept_parts(b)
    if len({isinstance(part, str) for part in parts_a | parts_b}) > 1:  # one demo phrase, one not
        parts_a, parts_b = _words(a), _words(b)
    union = parts_a | parts_b
    return len(parts_a & parts_b) / len(union) if union else 1.0


def is_confounded_attribute(concept: str, confounders=None) -> bool:
    """Whether ``concept`` holds the class attribute of a planted confounder (demo: circle, striped)."""
    from ..demo.world import CONFOUNDERS

    confounders = CONFOUNDERS if confounders is None else confounders
    try:
        values = demo_attributes(concept)
    except ValueError:
        return False
    return any(values.get(c.class_family) == c.class_value for c in confounders)


def names_incidental_attribute(label: str, truth: str, confounders=None) -> bool:
    """The confounder error: ``truth`` holds a confounder's class attribute (circle) but not its incidental
    one (grass), and ``label`` names the incidental one ("grass", "circle on grass")."""
    from ..demo.world import CONFOUNDERS

    confounders = CONFOUNDERS if confounders is None else confounders
    try:
        named, true = demo_attributes(label), demo_attributes(truth)
    except ValueError:
        return False
    return any(true.get(c.class_family) == c.class_value and true.get(c.incidental_family) != c.incidental_value
               and named.get(c.incidental_family) == c.incidental_value for c in confounders)
