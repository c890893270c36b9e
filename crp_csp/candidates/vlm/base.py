"""The :class:`VLMBackend` extension point and :func:`propose_candidates`.

A backend turns requests (a prompt and its images) into answer texts. To plug in another kind of
vision-language model, subclass :class:`VLMBackend` and implement :meth:`~VLMBackend.generate` and
:attr:`~VLMBackend.model_id`.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
from PIL import Image
from tqdm.auto import tqdm

from .cache import GenerationCache, generation_key
from .parsing import parse_concepts
from .prompts import MODES, PROMPTS, make_image_grid

logger = logging.getLogger(__name__)


@dataclass
class VLMRequest:
    """One question to a VLM: a prompt and the images it refers to, in order."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class CandidateProposal:
    """A unit's candidate labels as proposed by a VLM.

    Attributes
    ----------
    unit : the unit (channel) index.
    concepts : parsed concepts (whatever was usable, also when malformed).
    malformed : the answer did not yield exactly 3 concepts.
    reason : why it is malformed and what the parser removed, or None.
    raw : the answer text as the backend returned it.
    cached : the answer came from the cache (the backend was not asked).
    """

    unit: int
    concepts: list[str]
    malformed: bool
    reason: str | None
    raw: str
    cached: bool


class VLMBackend(abc.ABC):
    """A vision-language model that answers batches of :class:`VLMRequest`."""

    #: How many requests :func:`propose_candidates` hands to :meth:`generate` at once.
    batch_size: int = 1

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """A stable name of the model (part of every cache key)."""

    @property
    def cache_settings(self) -> dict:
        """Generation settings that change the answers (part of every cache key); none by default."""
        return {}

    @abc.abstractmethod
    def generate(self, requests: list[VLMRequest]) -> list[str]:
        """Answer each request.

        Parameters
        ----------
        requests : prompts with their images.

        Returns
        -------
        list[str]
            One answer text per request, in order.
        """


def build_request(
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    mode: str = "pos-only",
    tile_size: int | None = None,
) -> VLMRequest:
    """The request for one unit: one grid of positives (``pos-only``), or positives then negatives (``pos-neg``).

    Parameters
    ----------
    positives : [N, 3, H, W] float images in [0, 1], the unit's top references (first 9 used).
    negatives : [M, 3, H, W], its matched negatives; required for ``pos-neg``, ignored otherwise.
    mode : ``"pos-only"`` or ``"pos-neg"``.
    tile_size : optional side to resize each tile to.

    Returns
    -------
    VLMRequest
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    images = [make_image_grid(positives, tile_size=tile_size)]
    if mode == "pos-neg":
        if negatives is None:
            raise ValueError("mode 'pos-neg' needs negatives")
        images.append(make_image_grid(negatives, tile_size=tile_size))
    return VLMRequest(prompt=PROMPTS[mode], images=images)


def propose_candidates(
    backend: VLMBackend,
    positives: Mapping[int, torch.Tensor],
    negatives: Mapping[int, torch.Tensor] | None = None,
    mode: str = "pos-only",
    cache: GenerationCache | None = None,
    progress: bool = True,
    tile_size: int | None = None,
) -> dict[int, CandidateProposal]:
    """Ask a VLM for 3 candidate concepts per unit.

    Parameters
    ----------
    backend : the VLM.
    positives : unit -> [N, 3, H, W] float images in [0, 1] (its top references; the first 9 are shown).
    negatives : unit -> [M, 3, H, W] matched contrastive negatives; every unit needs one in ``pos-neg``.
    mode : ``"pos-only"`` (one grid) or ``"pos-neg"`` (grid of positives, then grid of negatives).
    cache : answers already known are taken from it; new ones are added and saved once, at the end
        (also when the backend fails part-way, so that a rerun resumes).
    progress : show a progress bar over the backend batches.
    tile_size : optional side to resize each grid tile to.

    Returns
    -------
    dict[int, CandidateProposal]
        One proposal per unit, in the order of ``positives``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    units = [int(unit) for unit in positives]
    if mode == "pos-neg":
        if negatives is None:
            raise ValueError("mode 'pos-neg' needs negatives for every unit; got negatives=None")
        missing = [unit for unit in units if unit not in negatives]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"mode 'pos-neg' needs negatives for every unit; {len(missing)} have none: {shown}")
    elif negatives is not None:
        logger.debug("mode 'pos-only' ignores the negatives")

    settings = backend.cache_settings
    model_id = backend.model_id
    keys: dict[int, str] = {}
    todo: dict[str, VLMRequest] = {}  # key -> request, deduplicated
    answers: dict[str, str] = {}
    from_cache: set[str] = set()
    for unit in units:
        request = build_request(positives[unit], negatives[unit] if mode == "pos-neg" else None, mode, tile_size)
        key = generation_key(model_id, request, settings)
        keys[unit] = key
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            answers[key] = cached
            from_cache.add(key)
        elif key not in todo:
            todo[key] = request
    logger.info("%s: %d units, %d answers cached, %d requests to %s", mode, len(units), len(from_cache), len(todo), model_id)

    pending = list(todo.items())
    batch_size = max(1, int(getattr(backend, "batch_size", 1) or 1))
    try:
        with tqdm(total=len(pending), desc=f"VLM {mode}", unit="unit", disable=not progress or not pending) as bar:
            for start in range(0, len(pending), batch_size):
                batch = pending[start:start + batch_size]
                texts = backend.generate([request for _, request in batch])
                if len(texts) != len(batch):
                    raise RuntimeError(
                        f"{type(backend).__name__}.generate returned {len(texts)} answers for {len(batch)} requests"
                    )
                for (key, _), text in zip(batch, texts):
                    text = "" if text is None else str(text)
                    answers[key] = text
                    if cache is not None:
                        cache.put(key, text)
                bar.update(len(batch))
    finally:
        if cache is not None and cache.unsaved:
            cache.save()

    proposals = {}
    for unit in units:
        key = keys[unit]
        parsed = parse_concepts(answers[key])
        if parsed.malformed:
            logger.debug("unit %d: malformed answer (%s)", unit, parsed.reason)
        proposals[unit] = CandidateProposal(
            unit=unit, concepts=parsed.concepts, malformed=parsed.malformed, reason=parsed.reason,
            raw=parsed.raw, cached=key in from_cache,
        )
    return proposals
