"""Encoders: real open_clip / transformers / demo models, random or tiny weights, nothing downloaded."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from crp_csp.demo.models import CLIP_CONFIG, CLIP_WEIGHTS, build_demo_clip, demo_tokenizer
from crp_csp.encoders import (
    HFClipEncoder,
    ImageTextEncoder,
    OpenClipEncoder,
    load_encoder,
    resize_and_crop,
)

# the smallest plain open_clip config (ViT-S/32 image tower, 256-wide text tower), random weights
OPEN_CLIP_NAME = "ViT-S-32-alt"
TEXTS = ["a photo of a cat", "a red striped square", "Hello, World!"]


def _images(n: int, height: int, width: int, seed: int = 0, smooth: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if smooth:
        coarse = torch.rand(n, 3, 6, 6, generator=generator)
        return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return torch.rand(n, 3, height, width, generator=generator)


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


def _check_embeddings(embeddings: torch.Tensor, rows: int, dim: int) -> None:
    assert embeddings.shape == (rows, dim)
    assert embeddings.dtype == torch.float32
    assert torch.isfinite(embeddings).all()
    assert not embeddings.is_inference() and not embeddings.requires_grad
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(rows), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def open_clip_encoder() -> OpenClipEncoder:
    return load_encoder(f"open_clip:{OPEN_CLIP_NAME}")


@pytest.fixture(scope="module")
def demo_encoder() -> OpenClipEncoder:
    torch.manual_seed(0)
    return OpenClipEncoder(build_demo_clip(), demo_tokenizer(), open_clip.OPENAI_DATASET_MEAN,
                           open_clip.OPENAI_DATASET_STD, CLIP_CONFIG["vision_cfg"]["image_size"], "demo-untrained")


# -- preprocessing -------------------------------------------------------------------------------------
def test_resize_and_crop_shapes_and_identity():
    images = _images(2, 48, 80)
    assert resize_and_crop(images, 64).shape == (2, 3, 64, 64)
    assert resize_and_crop(images, (32, 40), resize_mode="squash").shape == (2, 3, 32, 40)
    square = _images(1, 64, 64)
    assert torch.equal(resize_and_crop(square, 64), square)


# -- open_clip ----------------------------------------------------------------------------------------
def test_open_clip_random_encoder(open_clip_encoder):
    encoder = open_clip_encoder
    assert isinstance(encoder, ImageTextEncoder)
    assert encoder.spec == f"open_clip:{OPEN_CLIP_NAME}"
    assert encoder.device == torch.device("cpu")
    assert encoder.image_size == (224, 224)
    dim = encoder.embed_dim
    assert dim == 256
    images = _images(2, 64, 64)
    image_embeddings = encoder.encode_images(images)
    text_embeddings = encoder.encode_texts(TEXTS)
    _check_embeddings(image_embeddings, 2, dim)
    _check_embeddings(text_embeddings, len(TEXTS), dim)
    assert torch.equal(image_embeddings, encoder.encode_images(images))
    assert torch.equal(text_embeddings, encoder.encode_texts(TEXTS))
    torch.testing.assert_close(encoder.encode_texts(TEXTS, batch_size=2), text_embeddings)


def test_open_clip_matches_reference_preprocessing(open_clip_encoder):
    """Tensor preprocessing reproduces open_clip's own PIL transform up to uint8 rounding."""
    _, _, reference = open_clip.create_model_and_transforms(OPEN_CLIP_NAME)
    image = _uint8(_images(1, 48, 64, smooth=True))
    expected_pixels = reference(Image.fromarray(image[0].permute(1, 2, 0).numpy()))[None]
    pixels = open_clip_encoder.preprocess(image.float() / 255)
    assert pixels.shape == expected_pixels.shape
    assert (pixels - expected_pixels).abs().mean() < 0.01
    with torch.no_grad():
        expected = F.normalize(open_clip_encoder.model.encode_image(expected_pixels), dim=-1)
    assert (open_clip_encoder.encode_images(image.float() / 255) * expected).sum() > 0.9999


def test_open_clip_checkpoint_path_tag(open_clip_encoder, tmp_path):
    path = tmp_path / "random.pt"
    torch.save(open_clip_encoder.model.state_dict(), path)
    loaded = load_encoder(f"open_clip:{OPEN_CLIP_NAME}/{path}")
    images = _images(2, 64, 64, seed=1)
    torch.testing.assert_close(loaded.encode_images(images), open_clip_encoder.encode_images(images),
                               atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), open_clip_encoder.encode_texts(TEXTS), atol=0, rtol=0)


@pytest.mark.parametrize("spec", [
    "open_clip:",
    "open_clip:NotARealModel-B-32",
    f"open_clip:{OPEN_CLIP_NAME}/not_a_tag",
    f"open_clip:{OPEN_CLIP_NAME}//no/such/checkpoint.pt",
])
def test_open_clip_bad_specs(spec):
    with pytest.raises(ValueError, match="encoder spec"):
        load_encoder(spec)


# -- transformers --------------------------------------------------------------------------------------
def test_hf_clip_encoder(tiny_hf_clip_dir):
    from transformers import AutoProcessor

    encoder = load_encoder(f"hf:{tiny_hf_clip_dir}")
    assert isinstance(encoder, HFClipEncoder) and not encoder.is_siglip
    assert encoder.image_size == (32, 32) and encoder.resize_mode == "shortest"
    assert encoder.embed_dim == 16
    processor = AutoProcessor.from_pretrained(tiny_hf_clip_dir)

    # the offline vocabulary tokenizes exactly like open_clip's BPE tokenizer
    ids = processor.tokenizer(TEXTS[:1])["input_ids"][0]
    assert ids == open_clip.SimpleTokenizer()(TEXTS[:1])[0, :len(ids)].tolist()

    images = _images(3, 32, 32)
    embeddings = encoder.encode_images(images)
    _check_embeddings(embeddings, 3, 16)
    _check_embeddings(encoder.encode_images(_images(2, 64, 48)), 2, 16)
    assert torch.equal(embeddings, encoder.encode_images(images))

    # same as the transformers reference pipeline (processor on uint8 images, padding=True)
    image = _uint8(images)
    with torch.no_grad():
        pixel_values = processor(images=list(image), return_tensors="pt")["pixel_values"]
        expected = encoder.model.get_image_features(pixel_values=pixel_values)
        expected = F.normalize(getattr(expected, "pooler_output", expected), dim=-1)
        batch = processor(text=TEXTS, padding=True, return_tensors="pt")
        expected_text = encoder.model.get_text_features(**batch)
        expected_text = F.normalize(getattr(expected_text, "pooler_output", expected_text), dim=-1)
    torch.testing.assert_close(encoder.encode_images(image.float() / 255), expected, atol=1e-5, rtol=0)
    text_embeddings = encoder.encode_texts(TEXTS)
    _check_embeddings(text_embeddings, len(TEXTS), 16)
    torch.testing.assert_close(text_embeddings, expected_text, atol=1e-5, rtol=0)

    # a non-square input goes through resize + center crop like the processor's
    odd = _uint8(_images(1, 48, 40, smooth=True))
    with torch.no_grad():
        pixel_values = processor(images=list(odd), return_tensors="pt")["pixel_values"]
        reference = encoder.model.get_image_features(pixel_values=pixel_values)
        reference = F.normalize(getattr(reference, "pooler_output", reference), dim=-1)
    assert (encoder.encode_images(odd.float() / 255) * reference).sum() > 0.999


def test_hf_siglip_encoder(tiny_hf_siglip_dir):
    from transformers import AutoProcessor

    encoder = load_encoder(f"hf:{tiny_hf_siglip_dir}")
    assert isinstance(encoder, HFClipEncoder) and encoder.is_siglip
    assert encoder.padding == "max_length" and encoder.max_length == 16
    assert encoder.resize_mode == "squash" and encoder.mean == (0.5, 0.5, 0.5)
    processor = AutoProcessor.from_pretrained(tiny_hf_siglip_dir)
    images = _images(2, 32, 32)
    embeddings = encoder.encode_images(images)
    _check_embeddings(embeddings, 2, 32)
    _check_embeddings(encoder.encode_images(_images(1, 40, 56)), 1, 32)
    text_embeddings = encoder.encode_texts(TEXTS)
    _check_embeddings(text_embeddings, len(TEXTS), 32)
    with torch.no_grad():
        pixel_values = processor(images=list(_uint8(images)), return_tensors="pt")["pixel_values"]
        expected = encoder.model.get_image_features(pixel_values=pixel_values)
        expected = F.normalize(getattr(expected, "pooler_output", expected), dim=-1)
        batch = processor(text=TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        expected_text = encoder.model.get_text_features(**batch)
        expected_text = F.normalize(getattr(expected_text, "pooler_output", expected_text), dim=-1)
    torch.testing.assert_close(encoder.encode_images(_uint8(images).float() / 255), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_embeddings, expected_text, atol=1e-5, rtol=0)


def test_hf_bad_spec():
    with pytest.raises(ValueError, match="encoder spec"):
        load_encoder("hf:")


# -- demo ----------------------------------------------------------------------------------------------
def test_demo_architecture_encoder(demo_encoder):
    assert demo_encoder.embed_dim == CLIP_CONFIG["embed_dim"]
    images = _images(4, 64, 64)
    embeddings = demo_encoder.encode_images(images)
    _check_embeddings(embeddings, 4, 64)
    torch.testing.assert_close(demo_encoder.encode_images(images, batch_size=3), embeddings)
    _check_embeddings(demo_encoder.encode_images(_images(2, 100, 80)), 2, 64)
    _check_embeddings(demo_encoder.encode_texts(TEXTS * 3, batch_size=4), 9, 64)


def test_fingerprint_tracks_weights(demo_encoder):
    fingerprint = demo_encoder.fingerprint()
    assert len(fingerprint) == 64 and fingerprint == demo_encoder.fingerprint()
    same = OpenClipEncoder(build_demo_clip(), demo_tokenizer(), demo_encoder.mean, demo_encoder.std, 64,
                           demo_encoder.spec)
    same.model.load_state_dict(demo_encoder.model.state_dict())
    assert same.fingerprint() == fingerprint
    changed = OpenClipEncoder(build_demo_clip(), demo_tokenizer(), demo_encoder.mean, demo_encoder.std, 64,
                              demo_encoder.spec)
    changed.model.load_state_dict(demo_encoder.model.state_dict())
    with torch.no_grad():
        changed.model.logit_scale.add_(1e-3)
    assert changed.fingerprint() != fingerprint


@pytest.mark.skipif(not CLIP_WEIGHTS.exists(), reason="demo CLIP weights not built yet")
def test_load_demo_encoder():
    encoder = load_encoder("demo")
    assert isinstance(encoder, OpenClipEncoder) and encoder.spec == "demo"
    _check_embeddings(encoder.encode_images(_images(2, 64, 64)), 2, CLIP_CONFIG["embed_dim"])
    _check_embeddings(encoder.encode_texts(TEXTS), len(TEXTS), CLIP_CONFIG["embed_dim"])


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["", "clip:ViT-B-32", "ViT-B-32", "openclip:ViT-B-32", "demo2"])
def test_unknown_spec(spec):
    with pytest.raises(ValueError, match="Accepted forms"):
        load_encoder(spec)


@pytest.mark.parametrize("images, message", [
    (torch.rand(3, 64, 64), "shape"),
    (torch.rand(2, 1, 64, 64), "3 \\(RGB\\) channels"),
    (torch.rand(2, 64, 64, 3), "3 \\(RGB\\) channels"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ((torch.rand(2, 3, 16, 16) - 0.45) / 0.27, "drop your own normalisation"),
    (torch.rand(1, 3, 8, 8) * 255, "\\[0, 1\\]"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    (np.zeros((1, 3, 8, 8), dtype=np.float32), "torch.Tensor"),
])
def test_bad_images(demo_encoder, images, message):
    with pytest.raises(ValueError, match=message):
        demo_encoder.encode_images(images)


def test_images_within_tolerance_are_accepted(demo_encoder):
    images = _images(1, 64, 64)
    images[0, 0, 0, 0], images[0, 0, 0, 1] = -1e-4, 1 + 1e-4
    _check_embeddings(demo_encoder.encode_images(images), 1, 64)


@pytest.mark.parametrize("texts, message", [
    ([], "empty"),
    ((), "empty"),
    ("a cat", "single string"),
    (["a cat", 3], "non-string"),
    (["a cat", None], "non-string"),
])
def test_bad_texts(demo_encoder, texts, message):
    with pytest.raises(ValueError, match=message):
        demo_encoder.encode_texts(texts)
