"""CLIP-like image/text encoders behind one interface, and a factory that builds them from a spec string.

>>> from crp_csp.encoders import load_encoder
>>> encoder = load_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k")   # doctest: +SKIP
>>> encoder.encode_images(images_in_0_1).shape, encoder.encode_texts(["a dog"]).shape   # doctest: +SKIP
"""
from .base import ImageTextEncoder, center_crop, resize_and_crop
from .factory import ENCODER_SPEC_FORMS, load_encoder
from .hf_encoder import HFClipEncoder
from .open_clip_encoder import OpenClipEncoder

__all__ = [
    "ENCODER_SPEC_FORMS",
    "HFClipEncoder",
    "ImageTextEncoder",
    "OpenClipEncoder",
    "center_crop",
    "load_encoder",
    "resize_and_crop",
]
