"""Captions for demo scenes: full and partial descriptions in varied phrasings.

Partial captions ("a red object", "grass") keep single-attribute prompts in distribution for the
demo CLIP; each caption also records which attribute values it asserts, so training can treat
every caption that is true of an image as a positive for it.
"""
from __future__ import annotations

import numpy as np

from ..scoring.text import LABEL_TEMPLATES

from .world import FAMILIES, FAMILY_NAMES, Scene

# The CSP / SemanticLens label templates, plus a few plain phrasings.
CAPTION_TEMPLATES = LABEL_TEMPLATES + ("a photo of a {}", "a picture of a {}", "a rendering of a {}", "this is a {}")
_NOUNS = ("object", "shape", "thing")
_BACKGROUND_PHRASES = ("on {}", "on a {} background", "in front of {}", "over {}")


def phrase_for(values: dict[str, str], rng: np.random.Generator) -> str:
    """A noun phrase that names exactly ``values`` (family -> value), e.g. "small striped red circle on grass"."""
    words = [values[f] for f in ("size", "pattern", "colour") if f in values]
    shape = values.get("shape")
    background = values.get("background")
    if shape is not None:
        words.append(shape)
    elif words and rng.random() < 0.6:
        words.append(_NOUNS[rng.integers(len(_NOUNS))])
    if background is not None:
        if not words:
            if rng.random() < 0.5:
                return background
            words.append(_NOUNS[rng.integers(len(_NOUNS))])
        words.append(_BACKGROUND_PHRASES[rng.integers(len(_BACKGROUND_PHRASES))].format(background))
    return " ".join(words)


def sample_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A random true caption of ``scene`` and the attribute codes it asserts (-1 = not mentioned)."""
    count = rng.choice([1, 2, 3, 5], p=[0.4, 0.25, 0.15, 0.2])
    families = sorted(rng.choice(len(FAMILY_NAMES), size=count, replace=False))
    values = {FAMILY_NAMES[f]: getattr(scene, FAMILY_NAMES[f]) for f in families}
    codes = np.full(len(FAMILY_NAMES), -1, dtype=np.int64)
    for f in families:
        codes[f] = FAMILIES[FAMILY_NAMES[f]].index(values[FAMILY_NAMES[f]])
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(phrase_for(values, rng)), codes


def scene_codes(scene: Scene) -> np.ndarray:
    """Attribute codes of a scene, one per family."""
    return np.array([FAMILIES[f].index(getattr(scene, f)) for f in FAMILY_NAMES], dtype=np.int64)
