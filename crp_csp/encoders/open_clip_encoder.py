"""An :class:`ImageTextEncoder` over an open_clip model (``open_clip.CLIP``, ``CustomTextCLIP``, ...)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from .base import ImageTextEncoder

logger = logging.getLogger(__name__)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


class OpenClipEncoder(ImageTextEncoder):
    """Wrap an open_clip model and its tokenizer.

    Parameters
    ----------
    model : an open_clip model with ``encode_image`` and ``encode_text``; it is put in eval mode and stays
        on its device.
    tokenizer : callable mapping a list of strings to a LongTensor [T, context_length]
        (``open_clip.get_tokenizer(name)``).
    mean, std : per-channel normalisation the model was trained with.
    image_size : the model's input size, an int or (height, width).
    spec : the spec string the encoder was loaded from.
    resize_mode : ``"shortest"`` (resize shorter side, center crop) or ``"squash"``.
    interpolation : ``"bicubic"`` or ``"bilinear"``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | Sequence[int],
        spec: str,
        *,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
    ) -> None:
        device, self._dtype = _model_device_dtype(model)
        super().__init__(spec, image_size, mean, std, resize_mode=resize_mode, interpolation=interpolation,
                         device=device)
        self.model = model.eval()
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self._dtype))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        if not isinstance(tokens, torch.Tensor):  # some tokenizers return a dict-like batch
            tokens = tokens["input_ids"]
        return self.model.encode_text(tokens.to(self.device))

    def _weights_module(self) -> nn.Module:
        return self.model
