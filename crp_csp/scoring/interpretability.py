"""SemanticLens' interpretability scores of units, from the embeddings of their examples.

* clarity: how alike a unit's examples are (mean pairwise cosine of the examples, computed from
  the norm of their mean direction);
* polysemanticity: 1 - clarity of the centres of a k-means clustering (k = 2) of the examples, so
  a unit whose examples fall into two distinct groups scores high;
* redundancy: how alike the units of a layer are (mean over units of the cosine to the nearest
  other unit).

The formulas follow ``semanticlens.scores`` 0.2.1 (``clarity_score``, ``polysemanticity_score``,
``redundancy_score``); the k-means is a small torch implementation (k-means++ seeding, Lloyd
iterations, best of ``n_init`` restarts by inertia), so scikit-learn is not needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Examples used for the fallback of a unit whose clustering leaves a cluster with < 2 members.
EMPTY_CLUSTER_SAMPLES = 10


def _as_units(embeddings, ndim: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(embeddings).detach().float()
    if tensor.ndim != ndim:
        shape = "[units, examples, dim]" if ndim == 3 else "[units, dim]"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(tensor.shape)}")
    return tensor


def clarity(embeddings) -> torch.Tensor:
    """Clarity of each unit, [C], in [-1/(N-1), 1] (1: all examples point the same way).

    Parameters
    ----------
    embeddings : [C, N, D] embeddings of N examples of each of C units (normalised here), N >= 2.

    Returns
    -------
    torch.Tensor
        ``(|mean_i e_i|^2 - 1/N) * N / (N - 1)`` with ``e_i`` the normalised examples: the mean
        cosine between distinct examples.
    """
    embeddings = _as_units(embeddings, 3, "embeddings")
    count = embeddings.shape[1]
    if count < 2:
        raise ValueError(f"clarity needs at least 2 examples per unit, got {count}")
    mean = F.normalize(embeddings, dim=-1).mean(1)
    return (mean.pow(2).sum(-1) - 1.0 / count) / (count - 1) * count


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[C, N, D] x [C, k, D] -> [C, N, k] squared Euclidean distances (faster than ``cdist`` here)."""
    cross = points @ centres.transpose(1, 2)
    return (points.pow(2).sum(-1, keepdim=True) - 2 * cross + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding for every unit at once: points [C, N, D] -> centres [C, k, D]."""
    units, count, _ = points.shape
    first = torch.randint(count, (units,), generator=generator)
    centres = [points[torch.arange(units), first]]
    closest = (points - centres[0].unsqueeze(1)).pow(2).sum(-1)  # [C, N]
    for _ in range(1, k):
        weights = closest.clamp_min(0)
        # all points on a centre already: pick uniformly
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
        chosen = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        centre = points[torch.arange(units), chosen]
        centres.append(centre)
        closest = torch.minimum(closest, (points - centre.unsqueeze(1)).pow(2).sum(-1))
    return torch.stack(centres, 1)


def kmeans(points, k: int = 2, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0):
    """k-means of every unit's points, batched over units.

    Parameters
    ----------
    points : [C, N, D].
    k : clusters per unit.
    n_init : restarts; the one of lowest inertia is kept per unit.
    max_iter, tol : Lloyd iterations stop after ``max_iter`` or once no centre moves more than
        ``tol`` times the mean per-feature variance (scikit-learn's criterion).
    seed : seeds the k-means++ initialisations.

    Returns
    -------
    (centres [C, k, D], assignment [C, N], inertia [C])
    """
    points = _as_units(points, 3, "points").double()
    units, count, _ = points.shape
    if count < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points per unit, got {count}")
    generator = torch.Generator().manual_seed(seed)
    threshold = tol * points.var(1, unbiased=False).mean(-1)  # [C]
    best_centres = best_assignment = best_inertia = None
    for _ in range(n_init):
        centres = _kmeans_plus_plus(points, k, generator)
        for _ in range(max_iter):
            assignment = _squared_distances(points, centres).argmin(-1)  # [C, N]
            one_hot = F.one_hot(assignment, k).double()  # [C, N, k]
            sizes = one_hot.sum(1)  # [C, k]
            sums = one_hot.transpose(1, 2) @ points  # [C, k, D]
            updated = torch.where(sizes.unsqueeze(-1) > 0, sums / sizes.clamp_min(1).unsqueeze(-1), centres)
            shift = (updated - centres).pow(2).sum(-1).sum(-1)
            centres = updated
            if (shift <= threshold).all():
                break
        distances = _squared_distances(points, centres)
        assignment = distances.argmin(-1)
        inertia = distances.min(-1).values.sum(-1)
        if best_inertia is None:
            best_centres, best_assignment, best_inertia = centres, assignment, inertia
        else:
            better = inertia < best_inertia - 1e-12
            best_centres = torch.where(better[:, None, None], centres, best_centres)
            best_assignment = torch.where(better[:, None], assignment, best_assignment)
            best_inertia = torch.where(better, inertia, best_inertia)
    return best_centres.float(), best_assignment, best_inertia.float()


def polysemanticity(embeddings, k: int = 2, seed: int = 0, *, n_init: int = 10,
                    replace_empty_clusters: bool = True) -> torch.Tensor:
    """Polysemanticity of each unit, [C], in [0, 2] (about [0, 1] for CLIP embeddings).

    Parameters
    ----------
    embeddings : [C, N, D] embeddings of N examples of each of C units.
    k : clusters (SemanticLens uses 2).
    seed, n_init : of the k-means.
    replace_empty_clusters : a unit whose clustering leaves a cluster with fewer than 2 examples
        scores ``1 - mean_i cos(mean example, example_i)`` over its first 10 examples instead, as
        ``semanticlens`` does.

    Returns
    -------
    torch.Tensor
        ``1 - clarity(cluster centres)``; for k = 2, one minus the cosine between the two centres.
    """
    embeddings = _as_units(embeddings, 3, "embeddings")
    centres, assignment, _ = kmeans(embeddings, k, n_init=n_init, seed=seed)
    scores = 1 - clarity(centres)
    if replace_empty_clusters:
        sizes = F.one_hot(assignment, k).sum(1)  # [C, k]
        degenerate = sizes.amin(-1) < 2
        if degenerate.any():
            examples = embeddings[degenerate]
            count = min(EMPTY_CLUSTER_SAMPLES, examples.shape[1])
            mean = examples.mean(1, keepdim=True)
            cosine = F.cosine_similarity(mean.expand(-1, count, -1), examples[:, :count], dim=-1)
            scores[degenerate] = 1 - cosine.mean(1)
    return scores


def nearest_unit_similarity(unit_embeddings) -> torch.Tensor:
    """Each unit's cosine to its most similar other unit, [C] (the per-unit part of redundancy)."""
    units = F.normalize(_as_units(unit_embeddings, 2, "unit_embeddings"), dim=-1)
    if units.shape[0] < 2:
        raise ValueError("redundancy needs at least 2 units")
    similarity = units @ units.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.max(-1).values


def redundancy(unit_embeddings) -> torch.Tensor:
    """Redundancy of a layer (a scalar): the mean over units of :func:`nearest_unit_similarity`.

    Parameters
    ----------
    unit_embeddings : [C, D], one embedding per unit (e.g. the mean of its examples' embeddings).
    """
    return nearest_unit_similarity(unit_embeddings).mean()
