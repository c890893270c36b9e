"""The demo world's models: a small conv classifier and a small open_clip CLIP, both with shipped weights."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import open_clip
import torch
from torch import nn

from .data import CLASS_NAMES

WEIGHTS_DIR = Path(__file__).parent / "weights"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "classifier.pt"
CLIP_WEIGHTS = WEIGHTS_DIR / "clip.pt"
SAE_WEIGHTS = WEIGHTS_DIR / "sae.pt"

# The shipped SAE reads the output of the last conv block (conv4 -> BN -> ReLU, 64 channels). It sits
# after the ReLU rather than after conv4 so that zennit's SequentialMergeBatchNorm still merges bn4.
DEMO_SAE_LAYER = "features.relu4"
DEMO_SAE_LATENTS = f"{DEMO_SAE_LAYER}.sae.latents"

CLASSIFIER_CHANNELS = (24, 48, 64, 64)

# A plain open_clip config: a ModifiedResNet image tower at 64 px and a 2-layer text tower,
# with open_clip's own BPE tokenizer (it ships with open_clip, so nothing is downloaded).
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
}


class DemoClassifier(nn.Sequential):
    """Four conv blocks (conv, BatchNorm, ReLU, max-pool) and a linear head over the 16 classes.

    Layer names for CRP: ``features.conv1`` ... ``features.conv4`` and ``fc``. Input: float images in
    [0, 1], shape [B, 3, 64, 64].
    """

    def __init__(self, channels: tuple[int, ...] = CLASSIFIER_CHANNELS, num_classes: int = len(CLASS_NAMES)):
        blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
        previous = 3
        for index, width in enumerate(channels, start=1):
            blocks[f"conv{index}"] = nn.Conv2d(previous, width, kernel_size=3, padding=1)
            blocks[f"bn{index}"] = nn.BatchNorm2d(width)
            blocks[f"relu{index}"] = nn.ReLU()
            if index < len(channels):
                blocks[f"pool{index}"] = nn.MaxPool2d(2)
            previous = width
        super().__init__(OrderedDict(
            features=nn.Sequential(blocks),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(previous, num_classes),
        ))


def build_demo_clip() -> open_clip.CLIP:
    """An untrained demo CLIP built from :data:`CLIP_CONFIG` with open_clip's own classes."""
    return open_clip.CLIP(**CLIP_CONFIG)


def _load_state(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(
            f"demo weights {path} are missing; rebuild them with `python -m crp_csp.demo.train`"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def load_demo_classifier(device: str | torch.device = "cpu", sae: bool = False) -> DemoClassifier:
    """The trained demo classifier in eval mode; with ``sae``, the shipped SAE follows
    :data:`DEMO_SAE_LAYER` and its latents are the module :data:`DEMO_SAE_LATENTS`."""
    model = DemoClassifier()
    model.load_state_dict(_load_state(CLASSIFIER_WEIGHTS))
    if sae:
        from ..units import insert_sae

        model = insert_sae(model, DEMO_SAE_LAYER, load_demo_sae(), inplace=True)
    return model.eval().to(device)


def load_demo_sae():
    """The demo SAE (overcomplete ``TopKSAE``, 256 latents, k = 8) on :data:`DEMO_SAE_LAYER`, in eval mode."""
    from ..units import load_sae

    if not SAE_WEIGHTS.exists():
        raise FileNotFoundError(
            f"demo weights {SAE_WEIGHTS} are missing; rebuild them with `python -m crp_csp.demo.train --only sae`"
        )
    return load_sae(SAE_WEIGHTS)[0]


def load_demo_clip(device: str | torch.device = "cpu") -> open_clip.CLIP:
    """The trained demo CLIP (open_clip ``CLIP``) in eval mode; tokenize with ``open_clip.get_tokenizer``."""
    model = build_demo_clip()
    model.load_state_dict(_load_state(CLIP_WEIGHTS))
    return model.eval().to(device)


def demo_tokenizer():
    """open_clip's BPE tokenizer at the demo CLIP's context length."""
    return open_clip.SimpleTokenizer(context_length=CLIP_CONFIG["text_cfg"]["context_length"])
