"""torch Datasets over the demo world, with every sample's ground truth retrievable by index."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .world import CONFOUNDERS, FAMILIES, Scene, render_scene, sample_scene

# The classifier's classes: shape x pattern. Colour, size and background are incidental.
CLASS_FAMILIES = ("pattern", "shape")
CLASS_NAMES = tuple(f"{p} {s}" for p in FAMILIES["pattern"] for s in FAMILIES["shape"])

# Split name -> (base seed, default size, confounded). "train" and "probe" follow the training
# distribution with its planted confounders; "heldout" and "control" break them.
SPLITS = {
    "train": (1_000, 20_000, True),
    "probe": (2_000, 6_000, True),
    "heldout": (3_000, 2_000, False),
    "control": (4_000, 2_000, False),
}


def class_index(scene: Scene) -> int:
    """Index into :data:`CLASS_NAMES` of ``scene``'s class."""
    return CLASS_NAMES.index(f"{scene.pattern} {scene.shape}")


class DemoWorldDataset(Dataset):
    """A fixed split of the demo world: ``(image, class_index)`` pairs, image float [3, 64, 64] in [0, 1].

    Sample ``i`` of a split is a pure function of the split's seed and ``i``, so any subset can be
    rendered in any order and still match. ``scene(i)`` gives its ground-truth attributes.

    Parameters
    ----------
    split : one of ``train``, ``probe``, ``heldout``, ``control``.
    size : number of samples; the split's default when None.
    cache : keep rendered images in memory (uint8) after first use.
    """

    def __init__(self, split: str = "probe", size: int | None = None, cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"unknown demo split {split!r}; choose one of {', '.join(SPLITS)}")
        self.split = split
        self.seed, default_size, confounded = SPLITS[split]
        self.size = default_size if size is None else int(size)
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.confounders = CONFOUNDERS if confounded else ()
        self._scenes: list[Scene | None] = [None] * self.size
        self._render_seeds = np.zeros(self.size, dtype=np.int64)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self.classes = CLASS_NAMES

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for demo split of size {self.size}")
        scene = self._scenes[index]
        if scene is None:
            rng = np.random.default_rng([self.seed, index])
            scene = sample_scene(rng, confounders=self.confounders)
            self._scenes[index] = scene
            self._render_seeds[index] = rng.integers(0, 2**31 - 1)
        return scene

    def attributes(self, index: int) -> dict[str, str]:
        return self.scene(index).as_dict()

    def image_uint8(self, index: int) -> np.ndarray:
        """The rendered image as uint8 [64, 64, 3]."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        scene = self.scene(index)
        image = render_scene(scene, int(self._render_seeds[index]))
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.image_uint8(index)).permute(2, 0, 1).float().div_(255.0)
        return image, class_index(self.scene(index))

    def presence(self, concept: str) -> np.ndarray:
        """Boolean vector: does sample i show ``concept`` (a label phrase of the world)?"""
        return np.array([self.scene(i).has(concept) for i in range(self.size)], dtype=bool)

    def labels(self) -> np.ndarray:
        return np.array([class_index(self.scene(i)) for i in range(self.size)], dtype=np.int64)
