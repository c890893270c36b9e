"""Per-sample, per-unit statistics of a layer's activation or relevance, as zennit-crp defines them."""
from __future__ import annotations

import torch

ACTIVATION_STATS = ("value", "rf", "max", "mean")
RELEVANCE_STATS = ("value", "rf", "sum")


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [B, C, N] (N = 1 for a linear layer's [B, C])."""
    if tensor.ndim < 2:
        raise ValueError(f"layer output must have a batch and a unit dimension, got shape {tuple(tensor.shape)}")
    return tensor.reshape(*tensor.shape[:2], -1)


def unit_values(tensor: torch.Tensor, max_target: str = "sum", abs_norm: bool = True):
    """zennit-crp's reference-sampling value of every unit on every sample.

    Returns ``(value [B, C], rf [B, C])``: ``value`` is the spatial sum (or the value at the arg-max
    neuron, or the mean), divided by the sum of absolute values over units when ``abs_norm``; ``rf`` is the
    flat index of the arg-max neuron, as ``crp.concepts.ChannelConcept.reference_sampling`` gives.
    """
    flat = _flat(tensor)
    rf = flat.argmax(-1)
    if max_target == "sum":
        value = flat.sum(-1)
    elif max_target == "max":
        value = flat.gather(-1, rf.unsqueeze(-1)).squeeze(-1)
    elif max_target == "mean":  # token units (crp_csp.units.TokenConcept)
        value = flat.mean(-1)
    else:
        raise ValueError(f"max_target must be 'sum', 'max' or 'mean', got {max_target!r}")
    if abs_norm:
        value = value / (value.abs().sum(-1, keepdim=True) + 1e-10)
    return value, rf


def activation_statistics(activation: torch.Tensor, max_target: str, abs_norm: bool) -> dict[str, torch.Tensor]:
    """``value`` and ``rf`` (crp), plus the raw spatial ``max`` and ``mean`` of each unit."""
    flat = _flat(activation.float())
    value, rf = unit_values(activation.float(), max_target, abs_norm)
    return {"value": value, "rf": rf, "max": flat.amax(-1), "mean": flat.mean(-1)}


def relevance_statistics(relevance: torch.Tensor, max_target: str, abs_norm: bool) -> dict[str, torch.Tensor]:
    """``value`` and ``rf`` (crp), plus ``sum``: each unit's total (unnormalised) relevance."""
    flat = _flat(relevance.float())
    value, rf = unit_values(relevance.float(), max_target, abs_norm)
    return {"value": value, "rf": rf, "sum": flat.sum(-1)}


def merge_top(values: torch.Tensor, ids: torch.Tensor, k: int, *extra: torch.Tensor):
    """Keep the top ``k`` rows per column of ``values`` [N, C], ties broken by smaller sample id.

    ``ids`` is [N, C] (or [N], broadcast). Returns ``(values, ids, *extra)`` gathered, each [min(k,N), C].
    The order does not depend on how the rows were chunked, which keeps resumed and distributed
    runs identical to a single pass.
    """
    if ids.ndim == 1:
        ids = ids.unsqueeze(1).expand_as(values)
    by_id = torch.argsort(ids, dim=0, stable=True)
    order = torch.gather(by_id, 0, torch.argsort(torch.gather(-values, 0, by_id), dim=0, stable=True))[:k]
    gathered = [torch.gather(t if t.ndim == 2 else t.unsqueeze(1).expand_as(values), 0, order)
                for t in (values, ids, *extra)]
    return tuple(gathered)
