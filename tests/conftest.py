"""Shared fixtures: tiny, real transformers CLIP and SigLIP checkpoints built offline."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_IMAGE_SIZE = 32


def write_clip_bpe_files(directory: Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` from open_clip's bundled BPE file (no download).

    Same construction as ``open_clip.tokenizer.SimpleTokenizer``, with the Hugging Face special-token names.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [token + "</w>" for token in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A saved tiny ``CLIPModel`` + ``CLIPProcessor`` (real CLIP BPE tokenizer, 32 px input), loadable as ``hf:DIR``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_hf_clip")
    vocab_file, merges_file = write_clip_bpe_files(root / "bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
    config = CLIPConfig(
        text_config=dict(TINY_TOWER, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(TINY_TOWER, image_size=TINY_IMAGE_SIZE, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                                         crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    out = root / "model"
    model.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_hf_siglip_dir(tmp_path_factory) -> Path:
    """A saved tiny ``SiglipModel`` + ``SiglipProcessor``, loadable as ``hf:DIR``.

    ``SiglipTokenizer`` needs sentencepiece (not installed, and its model file cannot be made offline here),
    so the tokenizer is a byte-fallback ``GemmaTokenizer`` -- the tokenizer family the fixed-resolution
    SigLIP 2 checkpoints (which load as ``SiglipModel``) ship with.
    """
    from transformers import GemmaTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    root = tmp_path_factory.mktemp("tiny_hf_siglip")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{byte:02X}>": 5 + byte for byte in range(256)})
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=16)
    config = SiglipConfig(
        text_config=dict(TINY_TOWER, vocab_size=len(vocab), max_position_embeddings=16,
                         pad_token_id=0, bos_token_id=2, eos_token_id=1),
        vision_config=dict(TINY_TOWER, image_size=TINY_IMAGE_SIZE, patch_size=8),
    )
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    image_processor = SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    out = root / "model"
    model.save_pretrained(out)
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture
def minimal_store(tmp_path):
    """An empty but valid ``AnalysisStore`` (root attributes only), for stages that add groups to it."""
    import h5py

    from crp_csp import __version__
    from crp_csp.store.store import SCHEMA_VERSION, AnalysisStore

    path = tmp_path / "analysis.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs.update(schema_version=SCHEMA_VERSION, crp_csp_version=__version__, fingerprint="{}",
                            config="{}", layers="[]", num_samples=0)
    return AnalysisStore(path)
