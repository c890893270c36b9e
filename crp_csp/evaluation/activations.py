"""A unit's activation on arbitrary images: one forward pass with a hook on the layer."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..analysis import record_layers

REDUCTIONS = ("max", "mean")


def unit_activations(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    *,
    preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "max",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    composite=None,
) -> np.ndarray:
    """Activations of every unit of ``layer`` on ``images``, reduced over space.

    Parameters
    ----------
    model : the analysed network (put in eval mode and on ``device``).
    layer : a module name of ``model`` (``model.named_modules()``).
    images : float [N, 3, H, W], as the dataset gives them (``preprocess_fn`` maps them to the model's input).
    preprocess_fn : applied to each batch before the model, as in :func:`crp_csp.run_analysis`.
    reduction : ``max`` or ``mean`` over the spatial positions of a conv unit (a linear unit has one value).
    batch_size : images per forward pass.
    device : where the forward pass runs.
    composite : the zennit composite the analysis ran under, or None. Its canonizers change what some
        layers output (``SequentialMergeBatchNorm`` folds a BatchNorm into the conv before it, so the
        conv's output becomes the BatchNorm's); pass it to measure the activations the store recorded.

    Returns
    -------
    np.ndarray
        float32 [N, C] (C units of ``layer``).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = torch.as_tensor(images)
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    model = model.to(device).eval()
    context = composite.context(model) if composite is not None else contextlib.nullcontext(model)
    chunks = []
    with torch.no_grad(), context as modified, record_layers(modified, [layer]) as recording:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            modified(preprocess_fn(batch) if preprocess_fn is not None else batch)
            output = recording.activations[layer].float()
            flat = output.reshape(*output.shape[:2], -1)
            chunks.append((flat.amax(-1) if reduction == "max" else flat.mean(-1)).cpu().numpy())
    if not chunks:
        raise ValueError("images is empty")
    return np.concatenate(chunks).astype(np.float32)
