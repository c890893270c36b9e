"""Text embeddings of candidate labels, averaged over templates, cached in the analysis store."""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import h5py
import numpy as np
import torch

from ..encoders import ImageTextEncoder
from ..store import AnalysisStore

# The CSP reference templates (also SemanticLens' defaults).
LABEL_TEMPLATES = (
    "{}", "{}-like", "a {}", "an image of a {}", "a closeup of a {}", "an image of a closeup of {}",
)
TEXT_VARIANTS = ("mean", "semanticlens")


def embed_labels(encoder: ImageTextEncoder, labels: Sequence[str], templates: Sequence[str] = LABEL_TEMPLATES,
                 variant: str = "mean", batch_size: int = 512) -> torch.Tensor:
    """Embed each label as a mean over templates, [T, D].

    ``mean``: mean of the L2-normalised embeddings of each templated label (the CSP reference does
    not re-normalise the mean). ``semanticlens``: mean over templates of the raw embedding of the
    templated label minus the raw embedding of the empty template, as the ``semanticlens`` package
    probes text.
    """
    if variant not in TEXT_VARIANTS:
        raise ValueError(f"variant must be one of {TEXT_VARIANTS}, got {variant!r}")
    labels = list(labels)
    if not labels:
        raise ValueError("no candidate labels to embed")
    prompts = [template.format(label) for label in labels for template in templates]
    normalize = variant == "mean"
    embedded = encoder.encode_texts(prompts, batch_size=batch_size, normalize=normalize).cpu()
    embedded = embedded.view(len(labels), len(templates), -1)
    if variant == "semanticlens":
        empty = encoder.encode_texts([template.format("") for template in templates], normalize=False).cpu()
        embedded = embedded - empty.unsqueeze(0)
    return embedded.mean(1)


def _cache_key(encoder: ImageTextEncoder, templates: Sequence[str], variant: str) -> str:
    text = json.dumps([encoder.fingerprint(), list(templates), variant])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_label_embeddings(store: AnalysisStore | None, encoder: ImageTextEncoder, labels: Sequence[str],
                            templates: Sequence[str] = LABEL_TEMPLATES, variant: str = "mean") -> torch.Tensor:
    """:func:`embed_labels`, reading and extending a cache in ``store`` keyed by encoder weights,
    templates and variant (group ``text_embeddings/<key>``)."""
    labels = list(labels)
    if store is None:
        return embed_labels(encoder, labels, templates, variant)
    group = f"text_embeddings/{_cache_key(encoder, templates, variant)}"
    known: dict[str, np.ndarray] = {}
    if store.has(group):
        arrays, _ = store.read_group(group)
        known = dict(zip((label.decode() if isinstance(label, bytes) else label for label in arrays["labels"]),
                         arrays["embeddings"]))
    missing = list(dict.fromkeys(label for label in labels if label not in known))
    if missing:
        fresh = embed_labels(encoder, missing, templates, variant).numpy()
        known.update(zip(missing, fresh))
        names = list(known)
        store.write_group(group, {
            "labels": np.array(names, dtype=h5py.string_dtype()),
            "embeddings": np.stack([known[name] for name in names]).astype(np.float32),
        }, attrs={"encoder": encoder.spec, "templates": json.dumps(list(templates)), "variant": variant})
    return torch.from_numpy(np.stack([known[label] for label in labels]))
