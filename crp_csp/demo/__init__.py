"""The offline demo world: renderer, datasets, and the shipped classifier and CLIP."""
from .captions import LABEL_TEMPLATES
from .data import CLASS_NAMES, SPLITS, DemoWorldDataset
from .models import DemoClassifier, build_demo_clip, demo_tokenizer, load_demo_classifier, load_demo_clip
from .world import (
    CONFOUNDERS, FAMILIES, Confounder, Scene, is_world_phrase, object_mask, parse_phrase, render_phrase,
    render_scene, sample_scene,
)

__all__ = [
    "CLASS_NAMES", "CONFOUNDERS", "FAMILIES", "LABEL_TEMPLATES", "SPLITS", "Confounder", "DemoClassifier",
    "DemoWorldDataset", "Scene", "build_demo_clip", "demo_tokenizer", "is_world_phrase", "load_demo_classifier",
    "load_demo_clip", "object_mask", "parse_phrase", "render_phrase", "render_scene", "sample_scene",
]
