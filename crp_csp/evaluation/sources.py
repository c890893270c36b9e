"""Concept-image sources: images that show a label, for CoSy.

A source implements one method, ``images(label, count, seed) -> Tensor [count, 3, H, W] in [0, 1]``,
and raises :class:`UnknownConceptError` for a label it cannot show, so that callers skip the label
or fall back to the next source. Three sources ship:

- :class:`DemoRendererSource` draws the label with the demo world's renderer (exact concepts, the
  other attributes uniform: no confounders);
- :class:`RetrievalSource` takes the probing-set images nearest to the label's text embedding;
- :class:`DiffusersSource` wraps a user-supplied ``diffusers`` text-to-image pipeline, as CoSy does.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders import ImageTextEncoder
from ..scoring.text import LABEL_TEMPLATES, embed_labels
from ..store import AnalysisStore
from .ground_truth import demo_attributes


class UnknownConceptError(ValueError):
    """A concept-image source cannot show this label."""


class ConceptImageSource(abc.ABC):
    """Gives images of a label's concept."""

    name: str = "source"

    @abc.abstractmethod
    def images(self, label: str, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` images showing ``label``, float [count, 3, H, W] in [0, 1].

        Raises :class:`UnknownConceptError` when the source cannot show ``label``.
        """

    def describe(self) -> dict:
        """A plain description for outputs."""
        return {"source": self.name}


def _check_count(count: int) -> int:
    if int(count) < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return int(count)


class DemoRendererSource(ConceptImageSource):
    """Renders a label with the demo world (:func:`crp_csp.demo.render_phrase`).

    Parameters
    ----------
    strict : reject a label holding a word the world does not draw ("dog on grass" would otherwise
        render plain grass scenes); filler words ("a", "on", "background", ...:
        :data:`crp_csp.evaluation.ground_truth.DEMO_FILLER_WORDS`) are allowed.
    """

    name = "demo-renderer"

    def __init__(self, strict: bool = True):
        self.strict = bool(strict)

    def images(self, label: str, count: int, seed: int = 0) -> torch.Tensor:
        from ..demo.world import parse_phrase, render_phrase

        count = _check_count(count)
        try:
            demo_attributes(label) if self.strict else parse_phrase(label)
        except ValueError as error:
            raise UnknownConceptError(f"the demo world cannot draw {label!r}: {error}") from None
        pixels, _ = render_phrase(label, count, seed)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)

    def describe(self) -> dict:
        return {"source": self.name, "strict": self.strict}


def _dataset_image(dataset, index: int) -> torch.Tensor:
    sample = dataset[int(index)]
    image = sample[0] if isinstance(sample, (tuple, list)) else sample
    return torch.as_tensor(image).float()


class RetrievalSource(ConceptImageSource):
    """The probing-set images nearest to a label's text embedding.

    Parameters
    ----------
    store_or_embeddings : an :class:`~crp_csp.store.AnalysisStore` (its image embeddings and sample
        indices), or an array [N, D] of L2-normalised image embeddings of ``dataset[0 .. N-1]``.
    dataset : the dataset the embeddings were made from; yields ``(image, label)`` or images in [0, 1].
    encoder : the encoder of the embeddings, used to embed the label.
    templates : label templates; the text embedding is their mean (as the scorers embed labels).
    exclude : dataset indices never returned (e.g. a unit's own reference samples).

    Retrieval is deterministic: ``seed`` is accepted for the interface and ignored. Asking for more
    images than the dataset holds raises :class:`UnknownConceptError`.
    """

    name = "retrieval"

    def __init__(self, store_or_embeddings: AnalysisStore | np.ndarray, dataset, encoder: ImageTextEncoder, *,
                 templates: Sequence[str] = LABEL_TEMPLATES, exclude: Sequence[int] = ()):
        if isinstance(store_or_embeddings, AnalysisStore):
            self.embeddings = store_or_embeddings.embeddings()
            self.sample_ids = store_or_embeddings.sample_index
        else:
            self.embeddings = np.asarray(store_or_embeddings, dtype=np.float32)
            self.sample_ids = np.arange(len(self.embeddings))
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {self.embeddings.shape}")
        self.dataset, self.encoder, self.templates = dataset, encoder, tuple(templates)
        keep = ~np.isin(self.sample_ids, np.asarray(list(exclude), dtype=np.int64))
        self.embeddings, self.sample_ids = self.embeddings[keep], self.sample_ids[keep]

    def nearest(self, label: str, count: int) -> np.ndarray:
        """Dataset indices of the ``count`` images nearest to ``label``, nearest first (ties: smaller index)."""
        count = _check_count(count)
        if count > len(self.sample_ids):
            raise UnknownConceptError(f"retrieval holds {len(self.sample_ids)} images, {count} were asked for")
        text = F.normalize(embed_labels(self.encoder, [label], self.templates).float(), dim=-1).cpu().numpy()[0]
        similarity = self.embeddings @ text
        order = np.lexsort((self.sample_ids, -similarity))[:count]
        return self.sample_ids[order]

    def images(self, label: str, count: int, seed: int = 0) -> torch.Tensor:
        return torch.stack([_dataset_image(self.dataset, i) for i in self.nearest(label, count)])

    def describe(self) -> dict:
        return {"source": self.name, "encoder": self.encoder.spec, "pool": int(len(self.sample_ids))}


class DiffusersSource(ConceptImageSource):
    """Images generated by a ``diffusers`` text-to-image pipeline (CoSy's concept synthesis).

    ``diffusers`` is not a dependency of crp-csp: build the pipeline yourself
    (``StableDiffusionPipeline.from_pretrained(...)``) and pass it in.

    Parameters
    ----------
    pipeline : a diffusers pipeline, called as ``pipeline(prompt, num_images_per_prompt=...,
        generator=..., output_type="np", **pipeline_kwargs)``.
    prompt : template of the prompt, formatted with the label.
    image_size : resize the generated images to this (height, width) or side (None: keep).
    batch_size : images per pipeline call.
    pipeline_kwargs : further arguments of each call (``num_inference_steps``, ``guidance_scale``).
    """

    name = "diffusers"

    def __init__(self, pipeline, *, prompt: str = "a photo of a {}", image_size: int | tuple[int, int] | None = None,
                 batch_size: int = 4, **pipeline_kwargs):
        try:
            import diffusers  # noqa: F401
        except ImportError as error:
            raise ImportError("DiffusersSource needs the diffusers package (pip install diffusers)") from error
        self.pipeline, self.prompt, self.batch_size = pipeline, prompt, int(batch_size)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.pipeline_kwargs = pipeline_kwargs

    def images(self, label: str, count: int, seed: int = 0) -> torch.Tensor:
        count = _check_count(count)
        device = getattr(self.pipeline, "device", "cpu")
        generator = torch.Generator(device=device).manual_seed(int(seed))
        chunks = []
        for start in range(0, count, self.batch_size):
            output = self.pipeline(self.prompt.format(label), num_images_per_prompt=min(self.batch_size, count - start),
                                   generator=generator, output_type="np", **self.pipeline_kwargs)
            pixels = torch.as_tensor(np.asarray(output.images), dtype=torch.float32).permute(0, 3, 1, 2)
            chunks.append(pixels)
        images = torch.cat(chunks).clamp_(0, 1)
        if self.image_size is not None:
            images = F.interpolate(images, size=tuple(self.image_size), mode="bilinear", antialias=True,
                                   align_corners=False).clamp_(0, 1)
        return images

    def describe(self) -> dict:
        return {"source": self.name, "pipeline": type(self.pipeline).__name__, "prompt": self.prompt,
                **{k: v for k, v in self.pipeline_kwargs.items() if isinstance(v, (int, float, str, bool))}}
