"""An SAE inside the analysed model, so that its latents are units that CRP relevance reaches.

:func:`insert_sae` replaces the module ``layer`` with :class:`SAEInsertion`: the original module
(``<layer>.layer``) followed by :class:`SparseCoding` (``<layer>.sae``)::

    a     = layer(x)                           [B, C, H, W] (per position), [B, T, C] (per token) or [B, C]
    z     = latents(encode(a))                 <layer>.sae.latents: [B, K, H, W], [B, T, K] or [B, K]
    a_hat = decoder(z)                         <layer>.sae.decoder: nn.Linear(K, C), weight = dictionary^T
    e     = error(detach(a - a_hat))           <layer>.sae.error: the reconstruction error
    out   = combine(stack([a_hat, e], -1))     <layer>.sae.combine: zennit.layer.Sum; out == a

The model's outputs are unchanged (up to float rounding). Under a zennit composite the gradient of
a module's output is its relevance R, and it decomposes as

    R(out)                                     the layer's relevance, recorded at ``<layer>``
    R(a_hat)_c = a_hat_c / out_c * R(out)_c    Norm rule on ``combine`` (every zennit preset has it)
    R(e)_c     = e_c / out_c * R(out)_c        the error term's share, at ``<layer>.sae.error`` (no crops)
    R(z_k)     = sum_c z_k D_kc R(a_hat)_c / (a_hat_c + eps)      Epsilon rule on ``decoder``
    sum_k R(z_k) = sum_c R(out)_c - sum_c R(e)_c                  up to the stabilisers (1e-6)

The error term is cut from the graph: its share ends at ``<layer>.sae.error``, and only the latents'
share flows on, through the encoder (Epsilon on its ``nn.Linear``, Pass on its ReLU, the top-k
selection as a mask), to the layers below. Without a composite all of these are plain gradients.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from zennit.layer import Sum

from ..analysis.recording import find_layers


class ReconstructionError(nn.Identity):
    """Marks the SAE's error term (a graph leaf: relevance is recorded there but flows no further, so it
    has no relevance crops)."""


class SparseCoding(nn.Module):
    """Codes of a trained overcomplete SAE as a named module, and the reconstruction plus error term.

    Parameters
    ----------
    autoencoder : a trained ``overcomplete`` SAE (``encode`` gives ``(pre_codes, codes)``,
        ``get_dictionary`` the [K, C] dictionary); it is put in eval mode and a frozen copy is kept.

    4-D inputs are channel-first feature maps (the SAE runs at every position); 2-D and 3-D inputs
    carry the units last ([B, C] or tokens [B, T, C]).
    """

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        with torch.no_grad():  # overcomplete fuses its dictionary on eval(); keep that tensor out of the graph
            autoencoder.eval()
        self.autoencoder = copy.deepcopy(autoencoder).requires_grad_(False)
        dictionary = self.autoencoder.get_dictionary().detach().clone()
        self.latents = nn.Identity()
        self.decoder = nn.Linear(dictionary.shape[0], dictionary.shape[1], bias=False)
        self.decoder.weight.data = dictionary.T.contiguous()
        self.decoder.requires_grad_(False)
        self.error = ReconstructionError()
        self.combine = Sum(dim=-1)

    @property
    def nb_concepts(self) -> int:
        return self.decoder.in_features

    def encode(self, activation: torch.Tensor) -> torch.Tensor:
        """The codes of ``activation``, laid out as the latents module outputs them."""
        channel_first = activation.ndim == 4
        last = activation.movedim(1, -1) if channel_first else activation
        _, codes = self.autoencoder.encode(last.reshape(-1, last.shape[-1]))
        codes = codes.reshape(*last.shape[:-1], codes.shape[-1])
        return codes.movedim(-1, 1) if channel_first else codes

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        channel_first = latents.ndim == 4
        reconstruction = self.decoder(latents.movedim(1, -1) if channel_first else latents)
        return reconstruction.movedim(-1, 1) if channel_first else reconstruction

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        reconstruction = self.decode(self.latents(self.encode(activation)))
        error = (activation - reconstruction).detach()
        if torch.is_grad_enabled():
            error.requires_grad_(True)  # a leaf, so that the error's relevance can be recorded
        return self.combine(torch.stack([reconstruction, self.error(error)], dim=-1))


class SAEInsertion(nn.Module):
    """The original module ``layer`` followed by :class:`SparseCoding` ``sae``."""

    def __init__(self, layer: nn.Module, sae: SparseCoding):
        super().__init__()
        self.layer = layer
        self.sae = sae

    def forward(self, *args, **kwargs):
        output = self.layer(*args, **kwargs)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"an SAE can follow a module with one tensor output, got {type(output).__name__}")
        return self.sae(output)


def insert_sae(model: nn.Module, layer: str, autoencoder: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with the trained SAE ``autoencoder`` after module ``layer`` (a copy unless ``inplace``).

    The latents are then the module ``f"{layer}.sae.latents"`` (see :func:`latents_name`), the error
    term ``f"{layer}.sae.error"``; ``layer`` itself still names the (unchanged) layer output, and the
    original module moves to ``f"{layer}.layer"`` (with its submodules: a block's ``mlp.1`` becomes
    ``layer.mlp.1``).
    """
    if not layer:
        raise ValueError("name the layer to follow with an SAE, e.g. 'features.relu4'")
    module = find_layers(model, [layer])[layer]
    if isinstance(module, SAEInsertion):
        raise ValueError(f"{layer!r} is already followed by an SAE")
    target = model if inplace else copy.deepcopy(model)
    parent_name, _, child = layer.rpartition(".")
    parent = target.get_submodule(parent_name) if parent_name else target
    setattr(parent, child, SAEInsertion(getattr(parent, child), SparseCoding(autoencoder)))
    return target


def latents_name(layer: str) -> str:
    """The module name of the latents of an SAE inserted after ``layer``."""
    return f"{layer}.sae.latents"


def error_name(layer: str) -> str:
    """The module name of the error term of an SAE inserted after ``layer``."""
    return f"{layer}.sae.error"
