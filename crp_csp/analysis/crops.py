"""Relevance crops of reference samples (zennit-crp's receptive-field references) and their embeddings."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from crp.concepts import ChannelConcept
from crp.image import get_crop_range
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from ..encoders import ImageTextEncoder
from .config import AnalysisConfig


def default_kernel_size(image_side: int) -> int:
    """zennit-crp blurs with 19 px at 224 px; keep that share of the image side, odd."""
    return max(1, round(19 * image_side / 224)) // 2 * 2 + 1


def relevance_crop(image: torch.Tensor, heatmap: torch.Tensor, *, vis_th: float = 0.2, crop_th: float = 0.1,
                   alpha: float = 0.3, kernel_size: int | None = None) -> torch.Tensor:
    """The part of ``image`` [C, H, W] that ``heatmap`` [H, W] points at, as zennit-crp's
    ``vis_opaque_img(rf=True)`` draws it: cropped where the blurred, max-normalised relevance
    exceeds ``crop_th``, faded to ``alpha`` where it is below ``vis_th``. Returned at [C, H, W]."""
    kernel_size = kernel_size or default_kernel_size(min(heatmap.shape))
    blurred = gaussian_blur(heatmap[None, None].float(), kernel_size=kernel_size)[0, 0]
    blurred = blurred / (blurred.abs().max() + 1e-10)
    visible = blurred > vis_th
    row1, row2, col1, col2 = (int(v) for v in get_crop_range(blurred, crop_th))
    cropped, visible_cropped = image[..., row1:row2, col1:col2], visible[row1:row2, col1:col2]
    if cropped.numel() and cropped.sum() != 0 and visible_cropped.sum() != 0:
        image, visible = cropped, visible_cropped
    faded = image * visible + image * (~visible) * alpha
    return F.interpolate(faded[None], size=tuple(heatmap.shape), mode="bilinear", align_corners=False)[0]


def conditional_heatmaps(attribution, composite, data: torch.Tensor, layer: str, units, neurons) -> torch.Tensor:
    """CRP heatmaps of ``units`` restricted to their arg-max ``neurons`` at ``layer`` (one per sample).

    Starts the relevance at ``layer`` from its activation, as zennit-crp's ``get_max_reference``
    with ``rf=True`` does (and, unlike crp 0.6.0's wheel, keeps neuron ids aligned across batches).
    """
    conditions = [{layer: {int(unit): [int(neuron)]}} for unit, neuron in zip(units, neurons)]
    result = attribution(data.requires_grad_(True), conditions, composite, mask_map=ChannelConcept.mask_rf,
                         start_layer=layer, exclude_parallel=False)
    return result.heatmap.detach()


def embed_reference_crops(
    attribution, composite, dataset, encoder: ImageTextEncoder, layer: str, ids: np.ndarray, rf: np.ndarray,
    config: AnalysisConfig, *, preprocess_fn: Callable | None = None, encoder_input_fn: Callable | None = None,
    progress: bool = True, description: str = "crops",
) -> np.ndarray:
    """Embed the relevance crop of every (reference k, unit c) pair: returns [K, C, D] float32."""
    count, units = ids.shape
    pairs = [(k, c) for c in range(units) for k in range(count)]
    result = np.zeros((count, units, encoder.embed_dim), dtype=np.float32)
    device = torch.device(config.device)
    for start in tqdm(range(0, len(pairs), config.batch_size), desc=description, disable=not progress):
        batch = pairs[start:start + config.batch_size]
        images = torch.stack([torch.as_tensor(dataset[int(ids[k, c])][0]) for k, c in batch])
        model_input = preprocess_fn(images) if preprocess_fn is not None else images
        heatmaps = conditional_heatmaps(
            attribution, composite, model_input.to(device=device, dtype=config.torch_dtype), layer,
            [c for _, c in batch], [rf[k, c] for k, c in batch],
        ).cpu()
        encoder_images = encoder_input_fn(images) if encoder_input_fn is not None else images
        crops = torch.stack([
            relevance_crop(image, heatmap, vis_th=config.crop_vis_th, crop_th=config.crop_th,
                           alpha=config.crop_alpha, kernel_size=config.crop_kernel_size)
            for image, heatmap in zip(encoder_images, heatmaps)
        ])
        embedding = encoder.encode_images(crops.clamp(0, 1)).float().cpu().numpy()
        for (k, c), row in zip(batch, embedding):
            result[k, c] = row
    return result
