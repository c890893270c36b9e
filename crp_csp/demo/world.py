"""The demo world: a procedural renderer of 64x64 RGB scenes with known concepts.

Every scene shows one object described by five attribute families (shape, colour, pattern,
size, background). Rendering is a pure function of the attributes and an integer seed, so any
image can be re-created from its description. :func:`render_phrase` draws images for a label
phrase ("red", "striped square", "circle on grass"), which makes the renderer a concept-image
source for faithfulness evaluation.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np

IMAGE_SIZE = 64

FAMILIES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star"),
    "colour": ("red", "green", "blue", "yellow"),
    "pattern": ("plain", "striped", "dotted", "checkered"),
    "size": ("small", "medium", "large", "huge"),
    "background": ("grass", "sand", "water", "snow"),
}
FAMILY_NAMES = tuple(FAMILIES)
VALUE_TO_FAMILY = {value: family for family, values in FAMILIES.items() for value in values}

_COLOUR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (35, 70, 235),
    "yellow": (240, 220, 30),
}
_SIZE_RADIUS = {"small": 10.0, "medium": 14.0, "large": 19.0, "huge": 24.0}
_BACKGROUND_RGB = {
    "grass": (78, 112, 50),
    "sand": (205, 180, 130),
    "water": (50, 110, 130),
    "snow": (232, 236, 242),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Ground-truth description of one demo image: one value per attribute family."""

    shape: str
    colour: str
    pattern: str
    size: str
    background: str

    def __post_init__(self) -> None:
        for family in FAMILY_NAMES:
            value = getattr(self, family)
            if value not in FAMILIES[family]:
                raise ValueError(
                    f"unknown {family} {value!r}; choose one of {', '.join(FAMILIES[family])}"
                )

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def has(self, concept: str) -> bool:
        """Whether the scene shows ``concept`` (a label phrase the world knows)."""
        wanted = parse_phrase(concept)
        return all(getattr(self, family) == value for family, value in wanted.items())


def parse_phrase(phrase: str) -> dict[str, str]:
    """Map a label phrase to the attribute values it names.

    Raises ``ValueError`` when the phrase names no attribute value of the world or names two
    values of one family ("red blue").
    """
    words = re.findall(r"[a-z]+", phrase.lower())
    wanted: dict[str, str] = {}
    for word in words:
        family = VALUE_TO_FAMILY.get(word)
        if family is None:
            continue
        if family in wanted and wanted[family] != word:
            raise ValueError(f"phrase {phrase!r} names two {family} values")
        wanted[family] = word
    if not wanted:
        raise ValueError(
            f"phrase {phrase!r} names no concept of the demo world; known words: "
            + ", ".join(sorted(VALUE_TO_FAMILY))
        )
    return wanted


def is_world_phrase(phrase: str) -> bool:
    """True when :func:`parse_phrase` understands ``phrase``."""
    try:
        parse_phrase(phrase)
    except ValueError:
        return False
    return True


def sample_scene(
    rng: np.random.Generator,
    fixed: Mapping[str, str] | None = None,
    confounders: Iterable["Confounder"] = (),
) -> Scene:
    """Draw a scene: ``fixed`` values are kept, confounders bias the rest, others are uniform."""
    fixed = dict(fixed or {})
    values = {}
    for family in FAMILY_NAMES:
        values[family] = fixed.get(family) or FAMILIES[family][rng.integers(len(FAMILIES[family]))]
    for confounder in confounders:
        if confounder.incidental_family in fixed:
            continue
        if values[confounder.class_family] == confounder.class_value:
            if rng.random() < confounder.probability:
                values[confounder.incidental_family] = confounder.incidental_value
            else:
                others = [v for v in FAMILIES[confounder.incidental_family]
                          if v != confounder.incidental_value]
                values[confounder.incidental_family] = others[rng.integers(len(others))]
    return Scene(**values)


@dataclasses.dataclass(frozen=True)
class Confounder:
    """A class-defining attribute that co-occurs with an incidental one in training data."""

    class_family: str
    class_value: str
    incidental_family: str
    incidental_value: str
    probability: float


# Planted confounders of the classifier's training (and probing) distribution: a unit that
# detects circles sees mostly grass in its top images, a unit that detects stripes mostly red.
CONFOUNDERS = (
    Confounder("shape", "circle", "background", "grass", 0.9),
    Confounder("pattern", "striped", "colour", "red", 0.9),
)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, radius: float, angle: float) -> np.ndarray:
    if shape == "circle":
        return yy**2 + xx**2 <= radius**2
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    if shape == "square":
        half = radius * 0.85
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    theta = np.arctan2(v, u)
    dist = np.sqrt(u**2 + v**2)
    if shape == "triangle":
        # distance to the edge of a regular triangle with circumradius `radius`
        sector = np.mod(theta + np.pi / 3, 2 * np.pi / 3) - np.pi / 3
        return dist * np.cos(sector) <= radius * 0.5
    if shape == "star":
        # five-pointed star: radius oscillates between inner and outer
        sector = np.mod(theta, 2 * np.pi / 5) - np.pi / 5
        edge = radius * (0.45 + 0.55 * (np.abs(sector) / (np.pi / 5)) ** 2.2)
        return dist <= edge
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_mask(pattern: str, yy: np.ndarray, xx: np.ndarray, radius: float, angle: float) -> np.ndarray:
    period = max(5.0, radius / 2.5)
    if pattern == "plain":
        return np.zeros_like(yy, dtype=bool)
    if pattern == "striped":
        direction = np.cos(angle) * xx + np.sin(angle) * yy
        return np.mod(direction, period) < period / 2
    if pattern == "dotted":
        cy = np.mod(yy, period) - period / 2
        cx = np.mod(xx, period) - period / 2
        return cy**2 + cx**2 <= (period * 0.3) ** 2
    if pattern == "checkered":
        return (np.floor(yy / period) + np.floor(xx / period)) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def _background(name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = np.array(_BACKGROUND_RGB[name], dtype=np.float32)
    image = np.broadcast_to(base, yy.shape + (3,)).astype(np.float32).copy()
    if name == "grass":
        blades = rng.normal(0, 1, size=(IMAGE_SIZE // 4 + 1, IMAGE_SIZE))
        blades = np.repeat(blades, 4, axis=0)[:IMAGE_SIZE]
        image += 22 * blades[..., None] * np.array([0.6, 1.0, 0.4], dtype=np.float32)
    elif name == "sand":
        image += 14 * rng.normal(0, 1, size=yy.shape + (1,)).astype(np.float32)
    elif name == "water":
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(yy * 0.9 + 1.5 * np.sin(xx * 0.25 + phase))
        image += 25 * waves[..., None] * np.array([0.5, 0.8, 1.0], dtype=np.float32)
    elif name == "snow":
        image -= 10 * np.abs(rng.normal(0, 1, size=yy.shape + (1,))).astype(np.float32)
    return image


@dataclasses.dataclass(frozen=True)
class _Layout:
    background: np.ndarray
    body: np.ndarray
    outline: np.ndarray
    pattern: np.ndarray
    colour: np.ndarray
    noise: np.ndarray


def _layout(scene: Scene, seed: int) -> _Layout:
    rng = np.random.default_rng(seed)
    grid = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    background = _background(scene.background, rng, yy, xx)
    radius = _SIZE_RADIUS[scene.size] * rng.uniform(0.92, 1.08)
    low, high = radius + 2, IMAGE_SIZE - radius - 2
    cy, cx = (rng.uniform(low, high), rng.uniform(low, high)) if low < high else (32.0, 32.0)
    angle = rng.uniform(0, 2 * np.pi)
    rel_y, rel_x = yy - cy, xx - cx
    body = _shape_mask(scene.shape, rel_y, rel_x, radius, angle)
    outline = _shape_mask(scene.shape, rel_y, rel_x, radius + 1.3, angle) & ~body
    colour = np.array(_COLOUR_RGB[scene.colour], dtype=np.float32) * rng.uniform(0.9, 1.05)
    pattern = _pattern_mask(scene.pattern, rel_y, rel_x, radius, rng.uniform(0, np.pi))
    noise = rng.normal(0, 3, size=background.shape).astype(np.float32)
    return _Layout(background, body, outline, pattern, colour, noise)


def render_scene(scene: Scene, seed: int) -> np.ndarray:
    """Render ``scene`` as a ``uint8`` array of shape [64, 64, 3]; same scene and seed, same pixels."""
    layout = _layout(scene, seed)
    image = layout.background
    fill = np.where(layout.pattern[..., None], layout.colour * 0.3, layout.colour)
    image[layout.outline] = 20.0
    image[layout.body] = fill[layout.body]
    return np.clip(image + layout.noise, 0, 255).astype(np.uint8)


def object_mask(scene: Scene, seed: int) -> np.ndarray:
    """Boolean [64, 64] mask of the object's pixels in ``render_scene(scene, seed)``."""
    return _layout(scene, seed).body


def render_phrase(phrase: str, count: int, seed: int = 0) -> tuple[np.ndarray, list[Scene]]:
    """Render ``count`` images that show ``phrase``; other attributes are drawn uniformly.

    Returns a uint8 array [count, 64, 64, 3] and the scenes drawn.
    """
    wanted = parse_phrase(phrase)
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, fixed=wanted) for _ in range(count)]
    seeds = rng.integers(0, 2**31 - 1, size=count)
    images = np.stack([render_scene(s, int(k)) for s, k in zip(scenes, seeds)]) if count else \
        np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return images, scenes
