"""load_model: torchvision, factory and checkpoint specs with real models (random weights, no downloads)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from crp_csp.demo.models import CLASSIFIER_WEIGHTS, DemoClassifier
from crp_csp.models import load_model

FACTORY = "crp_csp.demo.models:DemoClassifier"


def _assert_same_state(model: torch.nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_torchvision_random():
    model = load_model("torchvision:resnet18")
    assert isinstance(model, torchvision.models.ResNet)
    assert not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_factory():
    model = load_model(FACTORY, device="cpu")
    assert type(model) is DemoClassifier
    assert not model.training and not any(m.training for m in model.modules())


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix"])
def test_factory_checkpoint(tmp_path, wrap):
    torch.manual_seed(1)
    state = DemoClassifier().state_dict()
    payload = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module_prefix": {f"module.{key}": value for key, value in state.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    model = load_model(f"{FACTORY}@{path}")
    assert type(model) is DemoClassifier and not model.training
    _assert_same_state(model, state)
    _assert_same_state(load_model(f"demo@{path}"), state)


def test_torchvision_checkpoint(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.get_model("resnet18").state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    _assert_same_state(load_model(f"torchvision:resnet18@{path}"), state)


def test_checkpoint_that_does_not_fit(tmp_path):
    path = tmp_path / "demo.pt"
    torch.save(DemoClassifier().state_dict(), path)
    with pytest.raises(RuntimeError, match="does not fit"):
        load_model(f"torchvision:resnet18@{path}")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_model(f"{FACTORY}@{path}")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(f"{FACTORY}@{tmp_path / 'nope.pt'}")


@pytest.mark.parametrize("spec, message", [
    ("", "no architecture"),
    ("resnet18", "unknown form"),
    ("ckpt.pt", "does not say the architecture"),
    ("torchvision:", "no torchvision model name"),
    ("torchvision:resnet_999", "not a torchvision model"),
    ("torchvision:resnet18/NOT_A_TAG", "not a weights tag"),
    ("torchvision:resnet18/IMAGENET1K_V1@ckpt.pt", "not both"),
    ("no_such_module_xyz:build", "cannot import"),
    ("crp_csp.demo.models:no_such_factory", "no attribute"),
    ("crp_csp.demo.models:CLASS_NAMES", "not callable"),
    ("crp_csp.demo.models:build_demo_clip@", "nothing after '@'"),
    ("crp_csp.demo.data:class_index", "requires \\['scene'\\]"),
    ("crp_csp.demo.models:demo_tokenizer", "not a torch.nn.Module"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        load_model(spec)
    assert "Accepted forms" in str(info.value)


@pytest.mark.skipif(not CLASSIFIER_WEIGHTS.exists(), reason="demo classifier weights not built yet")
def test_demo():
    model = load_model("demo")
    assert type(model) is DemoClassifier and not model.training
