"""Fingerprints that tie a store to the model, dataset, composite, layers and encoder it was made with."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn


def state_dict_digest(module: nn.Module) -> str:
    """sha256 hex digest over ``module``'s state_dict: every entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode("utf-8"))
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state
            digest.update(repr(value).encode("utf-8"))
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}", "weights": state_dict_digest(model)}


def dataset_fingerprint(dataset, probes: int = 3) -> dict[str, Any]:
    """Class, length and a digest of a few samples (first, middle, last)."""
    length = len(dataset)
    digest = hashlib.sha256()
    for index in sorted({0, length // 2, length - 1}) if length else []:
        sample = dataset[index]
        image = sample[0] if isinstance(sample, (tuple, list)) else sample
        array = np.ascontiguousarray(torch.as_tensor(image).detach().cpu().float().numpy())
        digest.update(array.tobytes())
    return {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "length": length,
            "samples": digest.hexdigest()[:16]}


def composite_fingerprint(composite) -> dict[str, Any]:
    """The composite's class, its canonizers and its rule settings."""
    if composite is None:
        return {"class": None}
    canonizers = [type(c).__name__ for c in getattr(composite, "canonizers", []) or []]
    settings = {key: repr(value) for key, value in sorted(vars(composite).items())
                if isinstance(value, (int, float, str, bool, tuple))}
    return {"class": type(composite).__name__, "canonizers": canonizers, "settings": settings}


def fingerprint_json(parts: dict[str, Any]) -> str:
    return json.dumps(parts, sort_keys=True, default=str)
