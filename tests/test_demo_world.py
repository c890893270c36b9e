"""The demo world: renderer determinism and ground truth, splits, confounders, shipped models."""
import numpy as np
import pytest
import torch

from crp_csp.demo import (
    CLASS_NAMES, CONFOUNDERS, FAMILIES, DemoWorldDataset, Scene, object_mask, parse_phrase, render_phrase,
    render_scene,
)
from crp_csp.demo.models import CLASSIFIER_WEIGHTS, CLIP_WEIGHTS, WEIGHTS_DIR

PLAIN = dict(shape="square", colour="red", pattern="plain", size="large", background="snow")


def test_render_is_deterministic():
    scene = Scene(**PLAIN)
    assert np.array_equal(render_scene(scene, 7), render_scene(scene, 7))
    assert not np.array_equal(render_scene(scene, 7), render_scene(scene, 8))
    a, b = DemoWorldDataset("probe", size=20), DemoWorldDataset("probe", size=20)
    assert torch.equal(a[13][0], b[13][0])
    # random access order does not change a sample
    assert torch.equal(a[5][0], DemoWorldDataset("probe", size=20)[5][0])


@pytest.mark.parametrize("colour", FAMILIES["colour"])
def test_object_pixels_have_the_named_colour(colour):
    expected = {"red": 0, "green": 1, "blue": 2}
    for seed in range(5):
        scene = Scene(**{**PLAIN, "colour": colour})
        image = render_scene(scene, seed).astype(float)
        mask = object_mask(scene, seed)
        mean = image[mask].mean(0)
        if colour == "yellow":
            assert mean[0] > 150 and mean[1] > 150 and mean[2] < 100
        else:
            assert mean.argmax() == expected[colour] and mean.max() > 150


def test_sizes_grow_and_backgrounds_differ():
    areas = [object_mask(Scene(**{**PLAIN, "size": s}), 3).sum() for s in FAMILIES["size"]]
    assert areas == sorted(areas) and areas[0] * 3 < areas[-1]
    means = []
    for background in FAMILIES["background"]:
        scene = Scene(**{**PLAIN, "size": "small", "background": background})
        image = render_scene(scene, 0).astype(float)
        means.append(image[~object_mask(scene, 0)].mean(0))
    distances = [np.abs(a - b).sum() for i, a in enumerate(means) for b in means[i + 1:]]
    assert min(distances) > 60


def test_patterns_change_the_object():
    plain = render_scene(Scene(**PLAIN), 1).astype(float)
    mask = object_mask(Scene(**PLAIN), 1)
    for pattern in ("striped", "dotted", "checkered"):
        patterned = render_scene(Scene(**{**PLAIN, "pattern": pattern}), 1).astype(float)
        dark_share = (patterned[mask].sum(1) < plain[mask].sum(1) * 0.6).mean()
        assert 0.1 < dark_share < 0.7, pattern


def test_render_phrase_draws_the_concept():
    images, scenes = render_phrase("striped square on grass", 12, seed=3)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert all(s.pattern == "striped" and s.shape == "square" and s.background == "grass" for s in scenes)
    assert len({s.colour for s in scenes}) > 1  # unnamed families vary
    assert parse_phrase("a Red circle-like") == {"colour": "red", "shape": "circle"}
    with pytest.raises(ValueError, match="names no concept"):
        parse_phrase("banana")
    with pytest.raises(ValueError, match="two colour"):
        parse_phrase("red blue")
    with pytest.raises(ValueError, match="unknown shape"):
        Scene(**{**PLAIN, "shape": "hexagon"})


def test_splits_and_ground_truth():
    dataset = DemoWorldDataset("probe")
    assert len(dataset) >= 5000
    image, label = dataset[0]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    scene = dataset.scene(0)
    assert CLASS_NAMES[label] == f"{scene.pattern} {scene.shape}"
    assert dataset.attributes(0) == scene.as_dict()
    presence = DemoWorldDataset("heldout", size=200).presence("red")
    assert 0.1 < presence.mean() < 0.4
    with pytest.raises(ValueError, match="unknown demo split"):
        DemoWorldDataset("validation")
    with pytest.raises(IndexError):
        dataset.scene(len(dataset))


def test_confounders_are_planted_in_training_and_broken_in_heldout():
    for split, low, high in (("train", 0.85, 1.0), ("heldout", 0.0, 0.4)):
        dataset = DemoWorldDataset(split, size=4000)
        scenes = [dataset.scene(i) for i in range(len(dataset))]
        for c in CONFOUNDERS:
            chosen = [s for s in scenes if getattr(s, c.class_family) == c.class_value]
            share = np.mean([getattr(s, c.incidental_family) == c.incidental_value for s in chosen])
            assert low <= share <= high, (split, c, share)


def test_shipped_weights_are_small_and_safe_to_load():
    files = sorted(WEIGHTS_DIR.glob("*.pt"))
    assert {CLASSIFIER_WEIGHTS, CLIP_WEIGHTS} <= set(files)
    assert sum(path.stat().st_size for path in files) <= 10 * 2**20
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)
        tensors = state.get("state_dict", state)
        assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())
