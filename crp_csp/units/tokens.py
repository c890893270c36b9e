"""Units of vision transformers: a token-wise layer output [B, T, C] reduced to one value per unit.

A :class:`TokenConcept` in ``layer_map`` marks a layer whose output carries units last, one row per
token: a ViT block's MLP neurons (the output of its first MLP linear or activation), its residual
stream, or the latents of an SAE inserted after a block. The analysis statistics see such an output
as [B, C, N] over the tokens that the aggregation uses, and reduce N as the aggregation says.

Relevance: zennit and zennit-crp have no LRP rules for attention, and lxt 2.1 (AttnLRP) cannot run
beside them here (it needs zennit >= 0.5, which zennit-crp 0.6 excludes, and it fails to import with
transformers 5). Relevances recorded at token units are therefore whatever the composite's modified
gradient gives through attention and LayerNorm, not conservative LRP: rank and select token units by
activation (``SelectionConfig`` defaults). The concept says so in ``references`` and in its repr,
which the store's fingerprint keeps.
"""
from __future__ import annotations

import torch
from crp.concepts import Concept

AGGREGATIONS = ("cls", "mean", "max")
# how the per-unit value reduces the selected tokens (statistics.unit_values' max_target)
_REDUCTIONS = {"cls": "sum", "mean": "mean", "max": "max"}


class TokenConcept(Concept):
    """Channel ``c`` of a token-wise output [B, T, C], aggregated over tokens.

    Parameters
    ----------
    aggregation : ``cls``: the value at the CLS token (token 0); ``mean`` / ``max``: over the patch
        tokens, i.e. all tokens after the first ``prefix_tokens``.
    prefix_tokens : leading tokens that are not patches (CLS, registers): 1 for torchvision ViTs and
        most timm ViTs (timm: ``model.num_prefix_tokens``).

    The statistics follow the aggregation (``value`` is the CLS value, the mean or the max of the
    patch tokens, then ``abs_norm`` as configured); ``rf`` is the arg-max token among those used
    (a patch index for ``mean``/``max``: row ``rf // grid``, column ``rf % grid``). Relevance crops
    (``AnalysisConfig.crop_count > 0``) and crp's conditional heatmaps are not supported.
    """

    references = "activation"

    def __init__(self, aggregation: str = "mean", prefix_tokens: int = 1):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if prefix_tokens < 0 or (aggregation == "cls" and prefix_tokens < 1):
            raise ValueError(f"prefix_tokens must be >= 0 (>= 1 for 'cls'), got {prefix_tokens}")
        self.aggregation = aggregation
        self.prefix_tokens = int(prefix_tokens)

    def __repr__(self) -> str:
        return (f"TokenConcept(aggregation={self.aggregation!r}, prefix_tokens={self.prefix_tokens}, "
                f"references={self.references!r})")

    @property
    def reduction(self) -> str:
        """How the statistics reduce the selected tokens: ``sum`` (one token), ``mean`` or ``max``."""
        return _REDUCTIONS[self.aggregation]

    def channel_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, C, N], N the tokens this aggregation uses (1 for ``cls``)."""
        if tensor.ndim != 3:
            raise ValueError(
                f"TokenConcept needs a token-wise layer output [batch, tokens, units], got shape "
                f"{tuple(tensor.shape)}; use ChannelConcept for conv feature maps and linear layers"
            )
        if tensor.shape[1] <= self.prefix_tokens and self.aggregation != "cls":
            raise ValueError(f"the layer output has {tensor.shape[1]} tokens, all of them prefix tokens "
                             f"(prefix_tokens={self.prefix_tokens})")
        tokens = tensor[:, :1] if self.aggregation == "cls" else tensor[:, self.prefix_tokens:]
        return tokens.transpose(1, 2)


def unit_layout(concept: Concept, tensor: torch.Tensor, max_target: str) -> tuple[torch.Tensor, str]:
    """A layer output as the statistics want it, [B, C, ...], and the reduction over its positions."""
    if isinstance(concept, TokenConcept):
        return concept.channel_first(tensor), concept.reduction
    return tensor, max_target


def describe_concept(concept: Concept) -> str:
    """What the store's fingerprint records for a layer's concept (options included)."""
    return repr(concept) if isinstance(concept, TokenConcept) else type(concept).__name__
