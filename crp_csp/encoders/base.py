"""The :class:`ImageTextEncoder` extension point: a CLIP-like model behind one small interface.

An encoder maps float images in [0, 1] and strings into one L2-normalised embedding space. It owns its
preprocessing (resize, center crop, mean/std normalisation, all on tensors), so callers hand it raw
[0, 1] images of any size and never apply a model-specific normalisation themselves.

To plug in another family of models, subclass :class:`ImageTextEncoder` and implement
:meth:`~ImageTextEncoder._image_features`, :meth:`~ImageTextEncoder._text_features` and
:meth:`~ImageTextEncoder._weights_module`.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..store.fingerprint import state_dict_digest

logger = logging.getLogger(__name__)

#: How far below 0 or above 1 an input pixel may lie before it is rejected (rounding slack).
RANGE_TOLERANCE = 1e-3

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ValueError(f"an image size is an int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center crop ``images`` [B, C, H, W] to ``size`` (height, width), as torchvision's ``CenterCrop`` does.

    Parameters
    ----------
    images : tensor [B, C, H, W] with H >= size[0] and W >= size[1].
    size : target (height, width).

    Returns
    -------
    torch.Tensor
        [B, C, size[0], size[1]] view of ``images``.
    """
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        raise ValueError(f"cannot center crop {height}x{width} images to {crop_h}x{crop_w}")
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return images[..., top:top + crop_h, left:left + crop_w]


def resize_and_crop(
    images: torch.Tensor,
    image_size: int | Sequence[int],
    resize_mode: str = "shortest",
    resize_size: int | Sequence[int] | None = None,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize float images and center crop them to ``image_size``.

    Parameters
    ----------
    images : float tensor [B, C, H, W].
    image_size : final (height, width), or an int for a square.
    resize_mode : ``"shortest"`` scales the image, keeping its aspect ratio, so that its shorter side is
        ``resize_size`` (or so that it just covers ``image_size`` when ``resize_size`` is None), then
        center crops; ``"squash"`` resizes to ``resize_size`` (default ``image_size``) ignoring the
        aspect ratio, then center crops.
    resize_size : see ``resize_mode``.
    interpolation : ``"bicubic"`` or ``"bilinear"`` (always antialiased).

    Returns
    -------
    torch.Tensor
        [B, C, *image_size], clamped to [0, 1].
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    target_h, target_w = _pair(image_size)
    height, width = images.shape[-2:]
    if resize_mode == "shortest":
        if resize_size is not None:
            shortest = resize_size if isinstance(resize_size, int) else min(_pair(resize_size))
        elif target_h == target_w:
            shortest = target_h
        else:  # scale so the image just covers a non-square target
            scale = max(target_h / height, target_w / width)
            shortest = int(math.ceil(min(height, width) * scale))
        # the shorter side becomes `shortest`, the longer one is truncated as torchvision's Resize does
        if height <= width:
            new_h, new_w = shortest, int(shortest * width / height)
        else:
            new_h, new_w = int(shortest * height / width), shortest
        new_h, new_w = max(new_h, target_h), max(new_w, target_w)
    else:
        new_h, new_w = _pair(resize_size) if resize_size is not None else (target_h, target_w)
        new_h, new_w = max(new_h, target_h), max(new_w, target_w)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode=interpolation, align_corners=False, antialias=True)
        # bicubic overshoots; PIL and the uint8 pipelines of the reference preprocessors clamp
        images = images.clamp_(0.0, 1.0)
    return center_crop(images, (target_h, target_w))


def check_images(images: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a float [B, 3, H, W] tensor in [0, 1] without NaNs."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape [B, 3, H, W], got a {images.ndim}-D tensor of shape "
                         f"{tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}; divide uint8 "
                         "images by 255")
    if torch.isnan(images).any():
        raise ValueError("images contain NaNs")
    low, high = images.min().item(), images.max().item()
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]; the encoder applies its own "
            "resize and mean/std normalisation, so pass un-normalised [0, 1] images (drop your own "
            "normalisation)"
        )


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list, raising ``ValueError`` on a bare string, an empty list or non-strings."""
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a sequence of strings, got a single string; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one string")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must all be str; non-string items at (index, type): {bad[:5]}")
    return texts


class ImageTextEncoder(abc.ABC):
    """A CLIP-like image/text encoder with its own preprocessing.

    Parameters
    ----------
    spec : the spec string the encoder was loaded from (see :func:`crp_csp.encoders.load_encoder`).
    image_size : the model's input (height, width), or an int for a square.
    mean, std : per-channel normalisation applied after resizing.
    resize_mode, resize_size, interpolation : see :func:`resize_and_crop`.
    device : the device the model lives on; inputs are moved there and outputs are returned there.
    embed_dim : the embedding width when known; otherwise found by encoding one text on first use.
    """

    def __init__(
        self,
        spec: str,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        resize_mode: str = "shortest",
        resize_size: int | Sequence[int] | None = None,
        interpolation: str = "bicubic",
        device: str | torch.device = "cpu",
        embed_dim: int | None = None,
    ) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        self._spec = spec
        self.image_size = _pair(image_size)
        self.mean, self.std = mean, std
        self.resize_mode = resize_mode
        self.resize_size = resize_size
        self.interpolation = interpolation
        self._device = torch.device(device)
        self._embed_dim = embed_dim
        self._fingerprint: str | None = None

    # -- what a subclass provides -------------------------------------------------------------------
    @abc.abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings [B, D] of preprocessed ``pixels`` [B, 3, *image_size] on the device."""

    @abc.abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings [T, D] of one batch of strings."""

    @abc.abstractmethod
    def _weights_module(self) -> nn.Module:
        """The module whose state_dict the :meth:`fingerprint` hashes."""

    # -- public interface ---------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The spec string this encoder was loaded from."""
        return self._spec

    @property
    def device(self) -> torch.device:
        """The device the model runs on; embeddings are returned there."""
        return self._device

    @property
    def embed_dim(self) -> int:
        """Width D of the shared embedding space."""
        if self._embed_dim is None:
            self._embed_dim = int(self.encode_texts(["a photo"]).shape[-1])
        return self._embed_dim

    def fingerprint(self) -> str:
        """sha256 hex digest over the spec, the preprocessing and the model's state_dict tensors.

        Computed on first call and cached; a cache keyed by it is invalidated when the weights change.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(self._spec.encode("utf-8"))
            digest.update(repr((type(self).__name__, self.image_size, self.mean, self.std, self.resize_mode,
                                self.resize_size, self.interpolation)).encode("utf-8"))
            digest.update(state_dict_digest(self._weights_module()).encode("utf-8"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize, center crop and normalise validated [0, 1] images to the model's input.

        Parameters
        ----------
        images : float tensor [B, 3, H, W] in [0, 1], any H and W.

        Returns
        -------
        torch.Tensor
            float32 [B, 3, *image_size] on the encoder's device.
        """
        images = images.to(self._device, torch.float32)
        images = resize_and_crop(images, self.image_size, self.resize_mode, self.resize_size, self.interpolation)
        mean = torch.tensor(self.mean, device=self._device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self._device).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embed images.

        Parameters
        ----------
        images : float tensor [B, 3, H, W] in [0, 1] (any H, W; *not* mean/std normalised).
        batch_size : images per forward pass.

        Returns
        -------
        torch.Tensor
            L2-normalised float32 embeddings [B, D] on :attr:`device`, computed under
            ``torch.inference_mode()`` and returned as an ordinary (non-inference) tensor.
        """
        check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode():
            chunks = []
            for start in range(0, images.shape[0], batch_size):
                pixels = self.preprocess(images[start:start + batch_size])
                chunks.append(F.normalize(self._image_features(pixels).float(), dim=-1))
            embeddings = torch.cat(chunks)
        return embeddings.clone()  # a normal tensor, usable as a constant in autograd code

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """Embed strings.

        Parameters
        ----------
        texts : non-empty sequence of strings.
        batch_size : strings per forward pass.
        normalize : L2-normalise each embedding (False gives the raw text features, as SemanticLens
            uses them for its empty-template subtraction).

        Returns
        -------
        torch.Tensor
            float32 embeddings [T, D] on :attr:`device`, L2-normalised by default (computed under
            ``torch.inference_mode()``, returned as an ordinary tensor).
        """
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode():
            chunks = []
            for start in range(0, len(texts), batch_size):
                features = self._text_features(texts[start:start + batch_size])
                features = features.to(self._device).float()
                chunks.append(F.normalize(features, dim=-1) if normalize else features)
            embeddings = torch.cat(chunks)
        return embeddings.clone()  # a normal tensor, usable as a constant in autograd code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self._spec!r}, image_size={self.image_size}, device={self._device})"
