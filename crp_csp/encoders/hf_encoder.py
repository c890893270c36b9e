"""An :class:`ImageTextEncoder` over a Hugging Face transformers CLIP or SigLIP model."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .base import ImageTextEncoder

logger = logging.getLogger(__name__)

# PIL resampling codes used in image processor configs.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_SIGLIP_TYPES = ("siglip",)


def _get(size: Any, key: str) -> Any:
    """Read ``key`` from an image processor size: a dict (transformers 4) or a ``SizeDict`` (transformers 5)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _features(output: Any, kind: str) -> torch.Tensor:
    """The projected embeddings from ``get_image_features`` / ``get_text_features``.

    transformers 4 returns a tensor; transformers 5 returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` holds the projected embeddings.
    """
    if isinstance(output, torch.Tensor):
        return output
    for name in (f"{kind}_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]
    raise TypeError(f"cannot find {kind} embeddings in a {type(output).__name__} returned by the model")


def preprocessing_from_image_processor(image_processor: Any) -> dict[str, Any]:
    """Translate a transformers image processor's config into :class:`ImageTextEncoder` preprocessing.

    Parameters
    ----------
    image_processor : e.g. ``CLIPImageProcessor`` or ``SiglipImageProcessor``.

    Returns
    -------
    dict
        keyword arguments ``image_size``, ``mean``, ``std``, ``resize_mode``, ``resize_size``, ``interpolation``.
    """
    size = getattr(image_processor, "size", None)
    crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    do_resize = getattr(image_processor, "do_resize", True)
    shortest = _get(size, "shortest_edge")
    height, width = _get(size, "height"), _get(size, "width")
    crop_hw = (_get(crop, "height"), _get(crop, "width"))
    if crop_hw[0] is None or crop_hw[1] is None:
        crop_hw = None

    if shortest is not None:
        resize_mode, resize_size = "shortest", int(shortest) if do_resize else None
        image_size = crop_hw or (int(shortest), int(shortest))
    elif height is not None and width is not None:
        resize_mode, resize_size = "squash", (int(height), int(width))
        image_size = crop_hw or (int(height), int(width))
    elif crop_hw is not None:
        resize_mode, resize_size, image_size = "shortest", None, crop_hw
    else:
        raise ValueError(f"cannot read an input size from {type(image_processor).__name__} (size={size!r}); "
                         "only fixed-size image processors are supported")

    if getattr(image_processor, "do_normalize", True):
        mean = tuple(image_processor.image_mean)
        std = tuple(image_processor.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = getattr(image_processor, "resample", 3)
    interpolation = _RESAMPLE.get(int(resample) if resample is not None else 3, "bicubic")
    if resample is not None and int(resample) not in _RESAMPLE:
        logger.debug("resample=%s is not bilinear/bicubic; using bicubic", resample)
    return dict(image_size=tuple(int(s) for s in image_size), mean=mean, std=std, resize_mode=resize_mode,
                resize_size=resize_size, interpolation=interpolation)


class HFClipEncoder(ImageTextEncoder):
    """Wrap a transformers CLIP (``CLIPModel``) or fixed-resolution SigLIP (``SiglipModel``) model.

    Parameters
    ----------
    model : a transformers model with ``get_image_features`` and ``get_text_features``; it is put in eval
        mode and stays on its device.
    processor : an ``AutoProcessor`` result (with ``.tokenizer`` and ``.image_processor``), or a tokenizer
        alone together with ``image_processor``.
    spec : the spec string the encoder was loaded from.
    image_processor : the image processor, when ``processor`` is a bare tokenizer.
    padding : tokenizer padding; default ``"max_length"`` for SigLIP (as it was trained), ``True`` otherwise.
    max_length : token limit; default the text tower's ``max_position_embeddings``.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        spec: str,
        *,
        image_processor: Any = None,
        padding: bool | str | None = None,
        max_length: int | None = None,
    ) -> None:
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{spec!r}: {type(model).__name__} has no {method}(); HFClipEncoder needs a "
                                 "CLIP-like dual encoder (e.g. CLIPModel or SiglipModel)")
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", "")
        if model_type == "siglip2":
            raise ValueError(f"{spec!r}: NaFlex SigLIP2 models (Siglip2Model) take variable-size patch inputs and "
                             "are not supported; use a fixed-resolution checkpoint (model_type 'siglip')")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            tokenizer = processor
        if image_processor is None:
            image_processor = getattr(processor, "image_processor", None)
        if image_processor is None:
            raise ValueError(f"{spec!r}: no image processor; pass a processor with .image_processor or "
                             "image_processor=...")
        if not callable(tokenizer):
            raise ValueError(f"{spec!r}: the tokenizer {type(tokenizer).__name__} is not callable")

        parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        self._dtype = parameter.dtype if parameter is not None else torch.float32
        super().__init__(spec, device=device, **preprocessing_from_image_processor(image_processor))

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.is_siglip = model_type in _SIGLIP_TYPES
        self.padding = padding if padding is not None else ("max_length" if self.is_siglip else True)
        text_config = getattr(config, "text_config", None)
        self.max_length = max_length or getattr(text_config, "max_position_embeddings", None)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels.to(self._dtype)), "image")

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(padding=self.padding, truncation=True, return_tensors="pt")
        if self.max_length is not None:
            kwargs["max_length"] = self.max_length
        batch = self.tokenizer(texts, **kwargs)
        inputs = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask") if key in batch}
        return _features(self.model.get_text_features(**inputs), "text")

    def _weights_module(self) -> nn.Module:
        return self.model
