"""TransformersVLM end to end on a tiny random-weight LLaVA built offline (real config, tokenizer, processor)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crp_csp.candidates.vlm import (
    POS_NEG_PROMPT,
    STORE_GROUP,
    GenerationCache,
    TransformersVLM,
    VLMRequest,
    build_request,
    grid_shape,
    parse_concepts,
    propose_candidates,
)
from crp_csp.candidates.vlm.prompts import GRID_PADDING, GRID_ROWS

transformers = pytest.importorskip("transformers")

TILE = 8  # a 3x3 grid of 8 px tiles with 2 px padding is 32 px, the vision tower's input size
IMAGE_SIZE = grid_shape(TILE, TILE)[0]
PATCH = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # "default" feature selection drops the CLS token
MAX_NEW_TOKENS = 6

CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def build_tiny_llava():
    """A random-weight LLaVA (CLIP vision tower + Llama decoder) with a byte-level BPE tokenizer, all offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    specials = ["<pad>", "<s>", "</s>", "<image>"]
    vocab = {token: index for index, token in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                        model_max_length=1024)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(vocab),
                         max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_seq_length=IMAGE_TOKENS,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger weights than the default init, so that answers depend on the images
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.5)
    return model, processor, vocab["<image>"]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    model, processor, image_token_id = build_tiny_llava()
    path = tmp_path_factory.mktemp("tiny_llava") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor, image_token_id


@pytest.fixture(scope="module")
def vlm(tiny_llava):
    return TransformersVLM(tiny_llava[0], batch_size=2, max_new_tokens=MAX_NEW_TOKENS, progress=False)


class CountingVLM(TransformersVLM):
    """A real TransformersVLM that counts how often, and with how many requests, it is asked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def generate(self, requests):
        self.calls.append(len(requests))
        return super().generate(requests)


def unit_images(units, seed=0):
    generator = torch.Generator().manual_seed(seed)
    positives = {unit: torch.rand(9, 3, TILE, TILE, generator=generator) for unit in units}
    negatives = {unit: torch.rand(9, 3, TILE, TILE, generator=generator) for unit in units}
    return positives, negatives


def test_loads_model_and_processor_from_a_saved_directory(vlm, tiny_llava):
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    assert type(vlm.processor).__name__ == "LlavaProcessor"
    assert vlm.model_id == str(tiny_llava[0])
    assert vlm.tokenizer.padding_side == "left"
    assert vlm.cache_settings == {"max_new_tokens": MAX_NEW_TOKENS, "decoding": "greedy"}


def test_pos_neg_prompt_carries_two_three_by_three_grids(vlm, tiny_llava):
    image_token_id = tiny_llava[3]
    positives, negatives = unit_images([0])
    request = build_request(positives[0], negatives[0], mode="pos-neg")
    assert len(request.images) == 2
    for grid, source in zip(request.images, (positives[0], negatives[0])):
        assert grid.size == (IMAGE_SIZE, IMAGE_SIZE)
        pixels = np.asarray(grid).astype(np.float32) / 255
        for index in range(9):  # every tile sits where a 3x3 grid puts it
            row, col = divmod(index, GRID_ROWS)
            top, left = GRID_PADDING + row * (TILE + GRID_PADDING), GRID_PADDING + col * (TILE + GRID_PADDING)
            tile = pixels[top:top + TILE, left:left + TILE].transpose(2, 0, 1)
            assert np.abs(tile - source[index].numpy()).max() <= 0.5 / 255 + 1e-6

    text = vlm.prompt_text(request)
    assert text.count("<image>") == 2 and POS_NEG_PROMPT in text and text.endswith("assistant: ")
    inputs = vlm.prepare([request])
    assert inputs["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert int((inputs["input_ids"] == image_token_id).sum()) == 2 * IMAGE_TOKENS


def test_batches_are_left_padded(vlm, tiny_llava):
    pad_id = vlm.tokenizer.pad_token_id
    positives, negatives = unit_images([0])
    short = build_request(positives[0])
    long = build_request(positives[0], negatives[0], mode="pos-neg")
    inputs = vlm.prepare([short, long])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[0] == 2 and mask[0, 0] == 0 and mask[0, -1] == 1 and bool((ids[0, mask[0] == 0] == pad_id).all())
    assert bool(mask[1].all())


def test_generation_is_deterministic_and_batch_independent(vlm):
    positives, negatives = unit_images([0, 1, 2])
    requests = [build_request(positives[u], negatives[u], mode="pos-neg") for u in positives]
    requests.append(build_request(positives[0]))  # a shorter prompt in the same batch forces padding
    first = vlm.generate(requests)
    second = vlm.generate(requests)
    assert first == second and len(first) == 4 and all(isinstance(text, str) for text in first)
    assert len(set(first)) > 1  # answers depend on the images, so a mix-up of batch rows would show
    alone = [vlm.generate([request])[0] for request in requests]
    assert alone == first  # left padding does not change what a request gets


def test_from_model_matches_the_loaded_checkpoint(vlm, tiny_llava):
    _, model, processor, _ = tiny_llava
    wrapped = TransformersVLM.from_model(model, processor, "tiny-llava", batch_size=3,
                                         max_new_tokens=MAX_NEW_TOKENS, progress=False)
    assert wrapped.model_id == "tiny-llava" and wrapped.batch_size == 3
    request = build_request(unit_images([5])[0][5])
    assert wrapped.generate([request]) == vlm.generate([request])

    processor_without_template = type(processor)(image_processor=processor.image_processor,
                                                 tokenizer=processor.tokenizer, patch_size=PATCH)
    with pytest.raises(ValueError, match="chat template"):
        TransformersVLM.from_model(model, processor_without_template, "x")


def test_propose_candidates_records_parses_and_caches(tiny_llava, minimal_store):
    backend = CountingVLM(tiny_llava[0], batch_size=2, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    positives, negatives = unit_images([4, 7, 9])
    proposals = propose_candidates(backend, positives, negatives, mode="pos-neg",
                                   cache=GenerationCache(minimal_store), progress=False)
    assert backend.calls == [2, 1]  # backend's batch size
    assert list(proposals) == [4, 7, 9]
    for unit, proposal in proposals.items():
        parsed = parse_concepts(proposal.raw)
        assert proposal.unit == unit and not proposal.cached
        assert (proposal.concepts, proposal.malformed, proposal.reason) == (parsed.concepts, parsed.malformed,
                                                                           parsed.reason)
        assert proposal.malformed == (len(proposal.concepts) != 3)
        if proposal.malformed:
            assert proposal.reason
    arrays, _ = minimal_store.read_group(STORE_GROUP)
    stored = dict(zip((k.decode() for k in arrays["keys"]), (a.decode() for a in arrays["answers"])))
    assert sorted(stored.values()) == sorted(p.raw for p in proposals.values())

    # a rerun with a fresh cache on the same store asks the model nothing
    rerun = CountingVLM(tiny_llava[0], batch_size=2, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    again = propose_candidates(rerun, positives, negatives, mode="pos-neg",
                               cache=GenerationCache(minimal_store.path), progress=False)
    assert rerun.calls == []
    assert all(p.cached for p in again.values())
    assert [p.raw for p in again.values()] == [p.raw for p in proposals.values()]

    # other generation settings are other questions
    longer = CountingVLM(tiny_llava[0], batch_size=4, max_new_tokens=MAX_NEW_TOKENS + 1, progress=False)
    propose_candidates(longer, positives, negatives, mode="pos-neg", cache=GenerationCache(minimal_store),
                       progress=False)
    assert longer.calls == [3]


def test_identical_units_are_asked_once(vlm):
    counting = CountingVLM.from_model(vlm.model, vlm.processor, "tiny", batch_size=4,
                                      max_new_tokens=MAX_NEW_TOKENS, progress=False)
    counting.calls = []
    positives, _ = unit_images([0])
    proposals = propose_candidates(counting, {0: positives[0], 1: positives[0].clone()}, progress=False)
    assert counting.calls == [1]
    assert proposals[0].raw == proposals[1].raw


def test_requests_without_images_also_work(vlm):
    (answer,) = vlm.generate([VLMRequest(prompt="Name three colours.")])
    assert isinstance(answer, str)
