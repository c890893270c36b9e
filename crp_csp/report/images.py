"""Images for the report: sample thumbnails, CRP heatmaps of a unit, matplotlib figures, all as
``data:image/png;base64`` URLs, so the report is one self-contained file."""
from __future__ import annotations

import base64
import io
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from zennit.image import palette

#: Longest side, in pixels, of the thumbnails embedded in the report.
THUMBNAIL_SIZE = 80
#: zennit colour map of the heatmaps (red: positive relevance, blue: negative).
HEATMAP_CMAP = "bwr"


def png_data_url(image: Image.Image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_data_url(figure) -> str:
    """A matplotlib figure as a PNG data URL (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit(image: Image.Image, size: int) -> Image.Image:
    if max(image.size) <= size:
        return image
    scale = size / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A float image [C, H, W] in [0, 1] (C = 1 or 3) as a thumbnail of at most ``size`` px,
    quantised to 256 colours (a third smaller as PNG, hardly visible)."""
    array = image.detach().float().clamp(0, 1).cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    pil = Image.fromarray((array.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), mode="RGB")
    return _fit(pil, size).quantize(256, method=Image.Quantize.MEDIANCUT)


def heatmap_image(heatmap: torch.Tensor, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A relevance heatmap [H, W] in zennit's colour map, symmetric around zero (as ``imgify``).

    The palette is applied here rather than by ``imgify``: zennit 0.4.6 hands Pillow a numpy
    palette, which Pillow >= 10 rejects when the image is converted.
    """
    array = heatmap.detach().float().cpu().numpy()
    bound = float(np.abs(array).max())
    bound = bound if bound > 0 else 1.0
    levels = ((array + bound) / (2 * bound) * 255).clip(0, 255).astype(np.uint8)
    image = _fit(Image.fromarray(levels, mode="L"), size).convert("P")
    image.putpalette(np.asarray(palette(HEATMAP_CMAP), dtype=np.uint8).reshape(-1).tolist())
    return image


def dataset_images(dataset, ids: Sequence[int]) -> torch.Tensor:
    """The images of dataset samples ``ids``, stacked [B, C, H, W]."""
    images = []
    for index in ids:
        sample = dataset[int(index)]
        images.append(torch.as_tensor(sample[0] if isinstance(sample, (tuple, list)) else sample).float())
    return torch.stack(images)


def unit_heatmaps(attribution, composite, images: torch.Tensor, layer: str, units: Sequence[int], *,
                  preprocess_fn: Callable | None = None, device: str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """CRP heatmaps [B, H, W] of ``units[i]`` of ``layer`` on ``images[i]`` (dataset images [B, C, H, W]).

    The relevance starts at the unit's own activation (conditions ``{layer: [unit]}`` with
    ``start_layer=layer``), as zennit-crp's ``FeatureVisualization`` draws reference heatmaps,
    so the heatmap shows where the unit looks whatever the class of the image.
    """
    if len(units) != len(images):
        raise ValueError(f"one unit per image: got {len(units)} units for {len(images)} images")
    heatmaps = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        model_input = preprocess_fn(batch) if preprocess_fn is not None else batch
        data = model_input.to(device).detach().requires_grad_(True)
        conditions = [{layer: [int(unit)]} for unit in units[start:start + batch_size]]
        result = attribution(data, conditions, composite, start_layer=layer)
        heatmaps.append(result.heatmap.detach().cpu())
    return torch.cat(heatmaps)
