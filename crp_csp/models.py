"""``load_model``: one spec string -> the model under analysis, in eval mode."""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_SPEC_FORMS = (
    '"demo" (the demo world\'s classifier)',
    '"torchvision:NAME" (random init, e.g. "torchvision:resnet18")',
    '"torchvision:NAME/WEIGHTS" (e.g. "torchvision:resnet50/IMAGENET1K_V2" or ".../DEFAULT")',
    '"package.module:factory" (called without arguments, e.g. "crp_csp.demo.models:DemoClassifier")',
    'any of the architecture forms followed by "@/path/to/checkpoint.pt" (a state_dict, or a dict holding '
    'one under "state_dict" or "model")',
)


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(f"bad model spec {spec!r}: {why}. Accepted forms: " + "; ".join(MODEL_SPEC_FORMS))


def _torchvision_model(spec: str, rest: str, with_checkpoint: bool) -> nn.Module:
    import torchvision

    name, _, weights = rest.partition("/")
    if not name:
        raise _bad_spec(spec, "no torchvision model name after 'torchvision:'")
    available = torchvision.models.list_models()
    if name not in available:
        close = [m for m in available if name.lower()[:4] in m.lower()][:10]
        raise _bad_spec(spec, f"{name!r} is not a torchvision model" + (f" (did you mean one of {close}?)" if close else ""))
    weights_enum = None
    if weights:
        if with_checkpoint:
            raise _bad_spec(spec, "give either a torchvision weights tag or an @checkpoint, not both")
        enum_class = torchvision.models.get_model_weights(name)
        tag = weights.rsplit(".", 1)[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2" as well
        try:
            weights_enum = enum_class[tag]
        except KeyError:
            raise _bad_spec(spec, f"{weights!r} is not a weights tag of {name} "
                                  f"(known: {[w.name for w in enum_class] + ['DEFAULT']})") from None
    logger.info("building torchvision model %s (weights=%s)", name, weights_enum)
    return torchvision.models.get_model(name, weights=weights_enum)


def _factory_model(spec: str, arch: str) -> nn.Module:
    module_name, _, attr_path = arch.partition(":")
    if not module_name or not attr_path:
        raise _bad_spec(spec, "a factory is written 'package.module:function'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise _bad_spec(spec, f"cannot import module {module_name!r} ({error})") from error
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise _bad_spec(spec, f"{module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise _bad_spec(spec, f"{arch!r} is not callable")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature
        signature = None
    if signature is not None:
        required = [p.name for p in signature.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if required:
            raise _bad_spec(spec, f"{arch!r} is called without arguments but requires {required}")
    model = target()
    if not isinstance(model, nn.Module):
        raise _bad_spec(spec, f"{arch!r}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` with ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    path : a file holding a state_dict, or a dict with the state_dict under ``"state_dict"`` or ``"model"``.

    Returns
    -------
    dict
        the state_dict; a DataParallel ``"module."`` prefix on every key is removed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"checkpoint {path!r} is not a state_dict (nor a dict with one under 'state_dict' or "
                         "'model')")
    state = dict(checkpoint)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def load_model(spec: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model under analysis from ``spec``.

    Parameters
    ----------
    spec : ``"demo"``; ``"torchvision:NAME"`` (random init) or ``"torchvision:NAME/WEIGHTS"``;
        ``"package.module:factory"`` (called with no arguments); any of these followed by
        ``"@/path/to/checkpoint.pt"`` to load a state_dict (strictly) into the architecture.
    device : where to put the model.

    Returns
    -------
    torch.nn.Module
        the model in eval mode on ``device``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a model spec is a str, got {type(spec).__name__}")
    spec = spec.strip()
    arch, at, checkpoint = spec.partition("@")
    arch, checkpoint = arch.strip(), checkpoint.strip()
    if at and not checkpoint:
        raise _bad_spec(spec, "nothing after '@'; give a checkpoint path")
    if not arch:
        raise _bad_spec(spec, "no architecture before '@'")
    if arch.endswith((".pt", ".pth", ".ckpt", ".bin")) and ":" not in arch and arch != "demo":
        raise _bad_spec(spec, "a checkpoint alone does not say the architecture; write ARCH@PATH, e.g. "
                              f"'torchvision:resnet18@{arch}'")

    if arch == "demo":
        from crp_csp.demo.models import DemoClassifier, load_demo_classifier

        model = DemoClassifier() if checkpoint else load_demo_classifier("cpu")
    elif arch.startswith("torchvision:"):
        model = _torchvision_model(spec, arch[len("torchvision:"):], bool(checkpoint))
    elif ":" in arch:
        model = _factory_model(spec, arch)
    else:
        raise _bad_spec(spec, "unknown form")

    if checkpoint:
        state = load_state_dict_file(checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise RuntimeError(f"checkpoint {checkpoint!r} does not fit the architecture {arch!r}: {error}") from error
        logger.info("loaded %d tensors from %s into %s", len(state), checkpoint, arch)
    return model.eval().to(device)
