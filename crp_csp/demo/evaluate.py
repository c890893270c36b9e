"""Checks of the demo world's models on held-out renders (confounders broken)."""
from __future__ import annotations

import numpy as np
import open_clip
import torch

from .captions import LABEL_TEMPLATES
from .data import DemoWorldDataset
from .models import demo_tokenizer
from .world import FAMILIES, FAMILY_NAMES

CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def _heldout_batches(size: int, batch_size: int = 500):
    dataset = DemoWorldDataset("heldout", size=size)
    for start in range(0, size, batch_size):
        indices = range(start, min(size, start + batch_size))
        images = torch.stack([dataset[i][0] for i in indices])
        yield dataset, indices, images


@torch.inference_mode()
def classifier_accuracy(model: torch.nn.Module, size: int = 2000) -> float:
    """Top-1 accuracy of the demo classifier on the held-out split."""
    correct = 0
    for dataset, indices, images in _heldout_batches(size):
        labels = torch.tensor([dataset[i][1] for i in indices])
        correct += (model(images).argmax(1) == labels).sum().item()
    return round(correct / size, 4)


@torch.inference_mode()
def zero_shot_accuracy(model: open_clip.CLIP, size: int = 2000) -> dict[str, float]:
    """Per attribute family: accuracy of choosing the right value by text prompts.

    Each value is embedded as the mean over :data:`LABEL_TEMPLATES` of normalised text embeddings of
    the bare value ("red", "circle", "grass"), as the CSP scorer embeds labels.
    """
    tokenizer = demo_tokenizer()
    family_embeddings = {}
    for family in FAMILY_NAMES:
        prompts = [t.format(v) for v in FAMILIES[family] for t in LABEL_TEMPLATES]
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        family_embeddings[family] = text.view(len(FAMILIES[family]), len(LABEL_TEMPLATES), -1).mean(1)
    correct = {family: 0 for family in FAMILY_NAMES}
    for dataset, indices, images in _heldout_batches(size):
        emb = torch.nn.functional.normalize(model.encode_image((images - CLIP_MEAN) / CLIP_STD), dim=-1)
        for family in FAMILY_NAMES:
            predicted = (emb @ family_embeddings[family].T).argmax(1).numpy()
            truth = np.array([FAMILIES[family].index(getattr(dataset.scene(i), family)) for i in indices])
            correct[family] += int((predicted == truth).sum())
    return {family: round(correct[family] / size, 4) for family in FAMILY_NAMES}
