"""Candidate labels from vision-language models (METHOD.md, stage 1).

A VLM is shown a unit's top reference images as a 3x3 grid (``pos-only``), or that grid followed by a
grid of the unit's matched contrastive negatives (``pos-neg``), and asked for 3 short concepts::

    from crp_csp.candidates.vlm import GenerationCache, TransformersVLM, propose_candidates

    backend = TransformersVLM("HuggingFaceTB/SmolVLM-256M-Instruct", device="cuda", dtype="bfloat16")
    proposals = propose_candidates(backend, positives, negatives, mode="pos-neg",
                                   cache=GenerationCache(store))

Backends: :class:`TransformersVLM` (local ``transformers`` model) and :class:`OpenAICompatibleVLM`
(any OpenAI-compatible chat completions server); subclass :class:`VLMBackend` for others.
"""
from .base import CandidateProposal, VLMBackend, VLMRequest, build_request, propose_candidates
from .cache import STORE_GROUP, GenerationCache, generation_key
from .endpoint import OpenAICompatibleVLM, VLMEndpointError, chat_payload, image_data_url
from .local import TransformersVLM, chat_messages
from .parsing import ParsedAnswer, parse_concepts
from .prompts import MODES, POS_NEG_PROMPT, POS_ONLY_PROMPT, PROMPTS, grid_shape, make_image_grid

__all__ = [
    "CandidateProposal",
    "GenerationCache",
    "MODES",
    "OpenAICompatibleVLM",
    "POS_NEG_PROMPT",
    "POS_ONLY_PROMPT",
    "PROMPTS",
    "ParsedAnswer",
    "STORE_GROUP",
    "TransformersVLM",
    "VLMBackend",
    "VLMEndpointError",
    "VLMRequest",
    "build_request",
    "chat_messages",
    "chat_payload",
    "generation_key",
    "grid_shape",
    "image_data_url",
    "make_image_grid",
    "parse_concepts",
    "propose_candidates",
]
