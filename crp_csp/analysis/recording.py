"""Recording the activations and relevances of named layers during one forward/backward pass."""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator, Sequence

import torch
from torch import nn


def find_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Modules of ``model`` by name; an unknown name is a ``KeyError`` that suggests close names."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"layer {name!r} is not a module of {type(model).__name__}.{hint} "
                "Layer names are those of model.named_modules()."
            )
        found[name] = modules[name]
    return found


class LayerRecording:
    """Outputs of named layers in the last forward pass, and their gradients after backward.

    Under a zennit composite the gradient of a layer's output is its relevance.
    """

    def __init__(self) -> None:
        self.activations: dict[str, torch.Tensor] = {}
        self.relevances: dict[str, torch.Tensor] = {}

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, tuple):
                output = output[0]
            self.activations[name] = output.detach()
            if output.requires_grad:
                def store_grad(grad, name=name):
                    self.relevances[name] = grad.detach()
                output.register_hook(store_grad)
        return hook


@contextlib.contextmanager
def record_layers(model: nn.Module, names: Sequence[str]) -> Iterator[LayerRecording]:
    """Context manager that records ``names``' outputs and gradients; hooks are always removed."""
    recording = LayerRecording()
    handles = [module.register_forward_hook(recording._forward_hook(name))
               for name, module in find_layers(model, names).items()]
    try:
        yield recording
    finally:
        for handle in handles:
            handle.remove()
