"""Image grids and prompt texts for asking a vision-language model about a unit.

A unit is shown to the VLM as a 3x3 grid of its top reference images (``pos-only``), or as that grid
followed by a 3x3 grid of its matched contrastive negatives (``pos-neg``).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

logger = logging.getLogger(__name__)

#: Tiles per grid side; a grid holds ``GRID_ROWS ** 2`` images.
GRID_ROWS = 3
GRID_SIZE = GRID_ROWS * GRID_ROWS
#: Pixels between tiles (and around the border) of a grid.
GRID_PADDING = 2
#: Value of the padding and of the blank tiles that fill a grid with fewer than 9 images (white).
GRID_PAD_VALUE = 1.0

#: Prompt for one grid of positives.
POS_ONLY_PROMPT = (
    "These 9 images all strongly activate one unit of a vision model. "
    "Name exactly 3 short visual concepts (at most 4 words each) that all images share. "
    "Answer with the 3 concepts separated by commas, nothing else."
)

#: Prompt for a grid of positives followed by a grid of their matched negatives.
POS_NEG_PROMPT = (
    "The first grid shows 9 images that strongly activate one unit of a vision model; "
    "the second grid shows 9 similar images that do not activate it. "
    "Name exactly 3 short visual concepts (at most 4 words each) that are present in all images "
    "of the first grid and absent from the images of the second grid. "
    "Answer with the 3 concepts separated by commas, nothing else."
)

PROMPTS = {"pos-only": POS_ONLY_PROMPT, "pos-neg": POS_NEG_PROMPT}
MODES = tuple(PROMPTS)


def grid_shape(tile_height: int, tile_width: int, padding: int = GRID_PADDING) -> tuple[int, int]:
    """(height, width) in pixels of a 3x3 grid of ``tile_height`` x ``tile_width`` tiles."""
    return (GRID_ROWS * (tile_height + padding) + padding, GRID_ROWS * (tile_width + padding) + padding)


def make_image_grid(
    images: torch.Tensor,
    tile_size: int | tuple[int, int] | None = None,
    padding: int = GRID_PADDING,
    pad_value: float = GRID_PAD_VALUE,
) -> Image.Image:
    """A 3x3 grid of images as an RGB PIL image.

    Parameters
    ----------
    images : float tensor [N, C, H, W] in [0, 1], C = 1 or 3, N >= 1. The first 9 are used (in order);
        fewer than 9 are completed with blank tiles.
    tile_size : optional side (or (height, width)) to resize each tile to before tiling.
    padding : pixels between tiles and around the border.
    pad_value : colour of the padding and of the blank tiles, in [0, 1].

    Returns
    -------
    PIL.Image.Image
        RGB image of size :func:`grid_shape` of the tile size.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor [N, C, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, 1 or 3, H, W] tensor, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if images.shape[0] > GRID_SIZE:
        logger.debug("using the first %d of %d images for a grid", GRID_SIZE, images.shape[0])
    images = images[:GRID_SIZE].detach().to("cpu", torch.float32)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if tile_size is not None:
        size = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    images = images.clamp(0.0, 1.0)
    if images.shape[0] < GRID_SIZE:
        blank = torch.full((GRID_SIZE - images.shape[0], *images.shape[1:]), float(pad_value))
        images = torch.cat([images, blank])
    grid = make_grid(images, nrow=GRID_ROWS, padding=padding, pad_value=pad_value)
    array = (grid * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)
