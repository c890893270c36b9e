"""A local vision-language model on Hugging Face ``transformers``.

Any checkpoint that loads with ``AutoProcessor`` and ``AutoModelForImageTextToText`` and whose
processor has a chat template (LLaVA, Idefics3/SmolVLM, Qwen2-VL, Gemma 3, ...) works. Prompts are
rendered with the processor's own chat template, batches are left-padded, and decoding is greedy,
so that answers are deterministic for a given batch.
"""
from __future__ import annotations

import logging
import os

import torch
from tqdm.auto import tqdm

from .base import VLMBackend, VLMRequest

logger = logging.getLogger(__name__)


def chat_messages(request: VLMRequest) -> list[dict]:
    """The chat of one request: one user turn with one ``{"type": "image"}`` part per image, then the text."""
    content: list[dict] = [{"type": "image"} for _ in request.images]
    content.append({"type": "text", "text": request.prompt})
    return [{"role": "user", "content": content}]


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch.dtype, its name (e.g. 'bfloat16'), 'auto' or None, got {dtype!r}")


class TransformersVLM(VLMBackend):
    """A ``transformers`` image-text-to-text model.

    Parameters
    ----------
    model_id_or_path : a Hub id or a local directory with the model and its processor.
    device : where to run the model.
    dtype : weight dtype (``torch.bfloat16``, ``"float16"``, ``"auto"``); None keeps transformers' default.
    batch_size : requests per forward pass.
    max_new_tokens : most tokens generated per answer.
    progress : show a progress bar when one :meth:`generate` call spans several batches.
    """

    def __init__(
        self,
        model_id_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 32,
        progress: bool = True,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs = {}
        dtype = _resolve_dtype(dtype)
        if dtype is not None:
            kwargs["dtype"] = dtype
        processor = AutoProcessor.from_pretrained(model_id_or_path)
        model = AutoModelForImageTextToText.from_pretrained(model_id_or_path, **kwargs)
        self._setup(model, processor, str(model_id_or_path), device, batch_size, max_new_tokens, progress)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        processor,
        model_id: str,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 32,
        progress: bool = True,
    ) -> "TransformersVLM":
        """Wrap an already built model and processor.

        Parameters
        ----------
        model : an image-text-to-text ``transformers`` model.
        processor : its processor (with a chat template).
        model_id : the name used in cache keys.
        device : where to move the model; None leaves it where it is.
        batch_size, max_new_tokens, progress : as for the constructor.
        """
        self = cls.__new__(cls)
        if device is None:
            device = next(model.parameters()).device
        self._setup(model, processor, model_id, device, batch_size, max_new_tokens, progress)
        return self

    def _setup(self, model, processor, model_id, device, batch_size, max_new_tokens, progress) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"the processor of {model_id} has no chat template; set processor.chat_template")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self._model_id = model_id
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.progress = progress
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"  # generation continues from the last position of every row
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def cache_settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def __repr__(self) -> str:
        return (f"TransformersVLM({self._model_id!r}, device={str(self.device)!r}, batch_size={self.batch_size}, "
                f"max_new_tokens={self.max_new_tokens})")

    def prompt_text(self, request: VLMRequest) -> str:
        """The request rendered by the processor's chat template, with the generation prompt."""
        return self.processor.apply_chat_template(chat_messages(request), add_generation_prompt=True, tokenize=False)

    def prepare(self, requests: list[VLMRequest]):
        """Model inputs (left-padded, on the model's device) for one batch of requests."""
        if not requests:
            raise ValueError("no requests")
        counts = {len(request.images) > 0 for request in requests}
        if len(counts) > 1:
            raise ValueError("a batch mixes requests with and without images; send them separately")
        texts = [self.prompt_text(request) for request in requests]
        images = [[image.convert("RGB") for image in request.images] for request in requests] if True in counts else None
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        dtype = self.model.dtype
        return {
            name: value.to(self.device, dtype=dtype) if value.is_floating_point() else value.to(self.device)
            for name, value in inputs.items() if isinstance(value, torch.Tensor)
        }

    @torch.inference_mode()
    def generate(self, requests: list[VLMRequest]) -> list[str]:
        """Answer requests in batches of ``batch_size`` with greedy decoding.

        Returns
        -------
        list[str]
            The decoded new tokens of each request (special tokens skipped, whitespace stripped).
        """
        answers: list[str] = []
        starts = range(0, len(requests), self.batch_size)
        for start in tqdm(starts, desc="generate", disable=not self.progress or len(starts) < 2):
            inputs = self.prepare(requests[start:start + self.batch_size])
            output = self.model.generate(
                **inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                pad_token_id=self.pad_token_id,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            answers.extend(text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True))
        return answers
