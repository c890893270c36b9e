"""``load_encoder``: one spec string -> one :class:`ImageTextEncoder`."""
from __future__ import annotations

import logging
import os

import torch

from .base import ImageTextEncoder
from .hf_encoder import HFClipEncoder
from .open_clip_encoder import OpenClipEncoder

logger = logging.getLogger(__name__)

ENCODER_SPEC_FORMS = (
    '"demo" (the demo world\'s CLIP)',
    '"open_clip:MODEL" (random weights, e.g. "open_clip:ViT-B-32")',
    '"open_clip:MODEL/TAG" (pretrained tag, e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k")',
    '"open_clip:MODEL/PATH" (local checkpoint file, e.g. "open_clip:ViT-B-32//data/ckpt.pt")',
    '"open_clip:hf-hub:ORG/REPO" or "open_clip:local-dir:/path"',
    '"hf:ORG/NAME" or "hf:/local/dir" (transformers CLIP or SigLIP, e.g. "hf:openai/clip-vit-base-patch32")',
)

_OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(f"bad encoder spec {spec!r}: {why}. Accepted forms: " + "; ".join(ENCODER_SPEC_FORMS))


def _interpolation(name: str) -> str:
    return name if name in ("bicubic", "bilinear") else "bicubic"


def _load_demo(spec: str, device: str | torch.device) -> OpenClipEncoder:
    import open_clip

    from crp_csp.demo.models import CLIP_CONFIG, demo_tokenizer, load_demo_clip

    return OpenClipEncoder(load_demo_clip(device), demo_tokenizer(), open_clip.OPENAI_DATASET_MEAN,
                           open_clip.OPENAI_DATASET_STD, CLIP_CONFIG["vision_cfg"]["image_size"], spec)


def _load_open_clip(spec: str, rest: str, device: str | torch.device) -> OpenClipEncoder:
    import open_clip

    if not rest:
        raise _bad_spec(spec, "no open_clip model name after 'open_clip:'")
    if rest.startswith(_OPEN_CLIP_SCHEMAS):
        name, pretrained = rest, None
    else:
        name, _, pretrained = rest.partition("/")
        pretrained = pretrained or None
        if name not in open_clip.list_models():
            raise _bad_spec(spec, f"{name!r} is not an open_clip model config; see open_clip.list_models()")
        if pretrained is not None and not os.path.isfile(pretrained):
            known_tags = open_clip.list_pretrained_tags_by_model(name)
            looks_like_path = os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)
            if looks_like_path or pretrained not in known_tags:
                raise _bad_spec(spec, f"{pretrained!r} is neither an existing checkpoint file nor a pretrained tag "
                                      f"of {name} (known tags: {known_tags})")
    logger.info("loading open_clip model %s (pretrained=%s) on %s", name, pretrained, device)
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    cfg = open_clip.get_model_preprocess_cfg(model)
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        logger.warning("open_clip resize_mode %r is not supported; using 'shortest' (resize + center crop)",
                       resize_mode)
        resize_mode = "shortest"
    return OpenClipEncoder(
        model,
        open_clip.get_tokenizer(name),
        cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
        cfg.get("std", open_clip.OPENAI_DATASET_STD),
        cfg.get("size", 224),
        spec,
        resize_mode=resize_mode,
        interpolation=_interpolation(cfg.get("interpolation", "bicubic")),
    )


def _load_hf(spec: str, rest: str, device: str | torch.device) -> HFClipEncoder:
    from transformers import AutoModel, AutoProcessor

    if not rest:
        raise _bad_spec(spec, "no model id or directory after 'hf:'")
    logger.info("loading transformers model %s on %s", rest, device)
    model = AutoModel.from_pretrained(rest)
    processor = AutoProcessor.from_pretrained(rest)
    return HFClipEncoder(model.to(device).eval(), processor, spec)


def load_encoder(spec: str, device: str | torch.device = "cpu") -> ImageTextEncoder:
    """Build the image/text encoder named by ``spec``.

    Parameters
    ----------
    spec : one of ``"demo"``; ``"open_clip:MODEL"`` (random weights); ``"open_clip:MODEL/TAG"`` (pretrained tag,
        downloads on first use); ``"open_clip:MODEL/PATH"`` (a local checkpoint file, absolute paths give a
        double slash: ``"open_clip:ViT-B-32//ckpt/model.pt"``); ``"open_clip:hf-hub:ORG/REPO"``;
        ``"hf:MODEL_ID"`` or ``"hf:/local/dir"`` (transformers CLIP / SigLIP via ``AutoModel`` and
        ``AutoProcessor``).
    device : where the model runs and embeddings are returned.

    Returns
    -------
    ImageTextEncoder
        the encoder, in eval mode; its :attr:`~ImageTextEncoder.spec` is ``spec``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"an encoder spec is a str, got {type(spec).__name__}")
    spec = spec.strip()
    if spec == "demo":
        return _load_demo(spec, device)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "open_clip":
        return _load_open_clip(spec, rest, device)
    if sep and prefix == "hf":
        return _load_hf(spec, rest, device)
    raise _bad_spec(spec, "unknown form")
