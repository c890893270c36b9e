"""Parsing VLM answers into candidate concepts, and the prompt grids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crp_csp.candidates.vlm import (
    POS_NEG_PROMPT,
    POS_ONLY_PROMPT,
    ParsedAnswer,
    build_request,
    grid_shape,
    make_image_grid,
    parse_concepts,
)


@pytest.mark.parametrize(
    "text, concepts",
    [
        ("red circle, stripes, sand background", ["red circle", "stripes", "sand background"]),
        ("Red Circle,  Stripes ,Sand   Background.", ["red circle", "stripes", "sand background"]),
        ("1. Red\n2. Stripes\n3. Sand", ["red", "stripes", "sand"]),
        ("1) red 2) blue 3) green", ["red", "blue", "green"]),
        ("- red\n* blue\n• green", ["red", "blue", "green"]),
        ('"red", \'blue\', “green”', ["red", "blue", "green"]),
        ("**red**, `blue`, green!", ["red", "blue", "green"]),
        ("red; blue; green", ["red", "blue", "green"]),
        ("red, blue, and green", ["red", "blue", "green"]),
        ("Assistant: red, blue, green</s>", ["red", "blue", "green"]),
        ("<|im_start|>assistant\nred, blue, green<|im_end|>", ["red", "blue", "green"]),
        ("<think>they all look striped</think>red, blue, green", ["red", "blue", "green"]),
        ("black and white, t-shirt, dog's ear", ["black and white", "t-shirt", "dog's ear"]),
    ],
)
def test_well_formed_answers(text, concepts):
    parsed = parse_concepts(text)
    assert isinstance(parsed, ParsedAnswer)
    assert parsed.concepts == concepts
    assert not parsed.malformed
    assert parsed.raw == text


def test_preamble_is_removed_and_noted():
    parsed = parse_concepts("Here are the concepts:\n1. red\n2. blue\n3. green")
    assert parsed.concepts == ["red", "blue", "green"] and not parsed.malformed
    assert "preamble" in parsed.reason
    parsed = parse_concepts("Sure! The shared concepts are: red, blue, green")
    assert parsed.concepts == ["red", "blue", "green"] and not parsed.malformed
    assert "Sure!" in parsed.reason


def test_too_many_and_too_few():
    many = parse_concepts("red, blue, green, yellow")
    assert many.malformed and many.concepts == ["red", "blue", "green", "yellow"]
    assert "expected 3 concepts, got 4" in many.reason
    few = parse_concepts("red, blue")
    assert few.malformed and few.concepts == ["red", "blue"]
    assert "got 2" in few.reason
    single = parse_concepts("a red thing")
    assert single.malformed and single.concepts == ["a red thing"]


def test_overlong_items_are_dropped_with_a_reason():
    long_chars = "supercalifragilisticexpialidocious-stripes"  # 42 characters, one word
    parsed = parse_concepts(f"red, {long_chars}, a very long concept with words, blue, green")
    assert parsed.concepts == ["red", "blue", "green"]
    assert not parsed.malformed  # three usable concepts remain
    assert "over 40 characters" in parsed.reason and long_chars in parsed.reason
    assert "over 4 words" in parsed.reason and "a very long concept with words" in parsed.reason

    exactly = "x" * 40
    assert parse_concepts(f"{exactly}, b, c").concepts == [exactly, "b", "c"]
    assert parse_concepts("one two three four, b, c").concepts == ["one two three four", "b", "c"]


def test_duplicates_are_dropped_with_a_reason():
    parsed = parse_concepts("Red, red., RED, blue")
    assert parsed.concepts == ["red", "blue"]
    assert parsed.malformed
    assert parsed.reason.count("duplicate") == 2


@pytest.mark.parametrize("text", ["", "   \n ", None])
def test_empty_answers(text):
    parsed = parse_concepts(text)
    assert parsed.malformed and parsed.concepts == [] and parsed.reason == "empty answer"
    assert parsed.raw == ("" if text is None else text)


def test_answer_with_only_junk():
    parsed = parse_concepts("..., !!!, ---")
    assert parsed.malformed and parsed.concepts == []
    assert parsed.reason == "no usable concept"
    noise = parse_concepts("\x03\ufffd\ufffd lAb\r s")
    assert noise.malformed and noise.raw == "\x03\ufffd\ufffd lAb\r s"


def test_newlines_split_only_without_commas():
    assert parse_concepts("red\nblue\ngreen").concepts == ["red", "blue", "green"]
    assert parse_concepts("red, blue\ngreen").concepts == ["red", "blue", "green"]


# -- grids and prompts --------------------------------------------------------------------------------

def test_grid_is_three_by_three_and_pads_with_blank_tiles():
    images = torch.zeros(4, 3, 10, 12)
    grid = make_image_grid(images)
    height, width = grid_shape(10, 12)
    assert grid.size == (width, height) and grid.mode == "RGB"
    pixels = np.asarray(grid)
    # tile (row 0, col 0) is one of the black images, tile (row 2, col 2) a blank white one
    assert pixels[2:12, 2:14].max() == 0
    assert pixels[-12:-2, -14:-2].min() == 255


def test_grid_uses_the_first_nine_and_accepts_grayscale():
    grid = make_image_grid(torch.rand(20, 1, 8, 8))
    assert grid.size == grid_shape(8, 8)[::-1]
    grid = make_image_grid(torch.rand(3, 3, 20, 20), tile_size=8)
    assert grid.size == grid_shape(8, 8)[::-1]


@pytest.mark.parametrize("bad", [torch.rand(0, 3, 8, 8), torch.rand(3, 8, 8), torch.rand(2, 4, 8, 8)])
def test_grid_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        make_image_grid(bad)
    with pytest.raises(TypeError):
        make_image_grid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_requests_carry_one_or_two_grids():
    positives, negatives = torch.rand(9, 3, 8, 8), torch.rand(9, 3, 8, 8)
    pos_only = build_request(positives)
    assert pos_only.prompt == POS_ONLY_PROMPT and len(pos_only.images) == 1
    pos_neg = build_request(positives, negatives, mode="pos-neg")
    assert pos_neg.prompt == POS_NEG_PROMPT and len(pos_neg.images) == 2
    assert pos_neg.images[0].tobytes() == pos_only.images[0].tobytes()
    assert pos_neg.images[1].tobytes() != pos_only.images[0].tobytes()
    with pytest.raises(ValueError, match="needs negatives"):
        build_request(positives, None, mode="pos-neg")
    with pytest.raises(ValueError, match="mode"):
        build_request(positives, mode="neg-only")
    for prompt in (POS_ONLY_PROMPT, POS_NEG_PROMPT):
        assert "3" in prompt and "comma" in prompt and "4 words" in prompt
    assert "first grid" in POS_NEG_PROMPT and "second grid" in POS_NEG_PROMPT


# -- cache keys and the JSON cache --------------------------------------------------------------------

def test_generation_keys_cover_model_settings_prompt_and_pixels():
    from crp_csp.candidates.vlm import VLMRequest, generation_key

    images = torch.rand(9, 3, 8, 8)
    request = build_request(images)
    key = generation_key("model-a", request, {"max_tokens": 64})
    assert key == generation_key("model-a", build_request(images.clone()), {"max_tokens": 64})
    assert len(key) == 64 and int(key, 16) >= 0
    changed = images.clone()
    changed[8, 0, 0, 0] = 1.0 - changed[8, 0, 0, 0]
    others = [
        generation_key("model-b", request, {"max_tokens": 64}),
        generation_key("model-a", request, {"max_tokens": 32}),
        generation_key("model-a", VLMRequest(POS_NEG_PROMPT, request.images), {"max_tokens": 64}),
        generation_key("model-a", build_request(changed), {"max_tokens": 64}),
        generation_key("model-a", build_request(images, images, mode="pos-neg"), {"max_tokens": 64}),
    ]
    assert len({key, *others}) == 6


def test_json_cache_round_trip_and_corrupt_file(tmp_path):
    from crp_csp.candidates.vlm import GenerationCache

    path = tmp_path / "sub" / "cache.json"
    cache = GenerationCache(path)
    assert len(cache) == 0 and cache.save() == 0 and not path.exists()
    cache.put("k1", "red, blue, green")
    other = GenerationCache(path)  # a concurrent cache on the same file
    other.put("k2", "a, b, c")
    assert other.save() == 1 and cache.save() == 1
    merged = GenerationCache.from_json(path)
    assert merged.get("k1") == "red, blue, green" and merged.get("k2") == "a, b, c" and len(merged) == 2
    memory = GenerationCache()
    memory.put("k", "x")
    assert memory.get("k") == "x" and memory.save() == 0

    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a generation cache"):
        GenerationCache(path)
