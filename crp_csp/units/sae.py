"""Sparse autoencoders (dictionaries) on a layer's activations, trained and stored with ``overcomplete``.

``overcomplete`` (Fel et al., PyPI ``overcomplete``) provides the SAEs and the training loop; this
module chooses its options, turns layer outputs into rows (one per spatial position or token),
measures reconstruction and sparsity, and saves a trained SAE in a self-describing file.

Two kinds:

- ``topk``: ``overcomplete.sae.TopKSAE`` (keeps the ``top_k`` largest codes), trained with AuxK
  (``top_k_auxiliary_loss``) plus ``reanimation_regularizer`` against dead latents;
- ``vanilla``: ``overcomplete.sae.SAE`` (ReLU codes), trained with MSE + ``l1_penalty`` times the
  mean L1 norm of a row's codes.

Both use overcomplete's default encoder (one ``nn.Linear`` and a ReLU) and its unit-norm dictionary
without decoder bias; dictionary atoms and encoder rows start from random data rows. Training sees
the rows scaled to a mean squared unit value of 1 (so the penalties mean the same for every layer);
the scale is then folded into the encoder weights and the dictionary's multiplier, so the trained
SAE takes the layer's raw activations.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..analysis.recording import record_layers

SAE_KINDS = ("topk", "vanilla")
SAE_FILE_FORMAT = "crp-csp-sae/1"


def import_overcomplete():
    """``overcomplete.sae``, with a clear error when the ``sae`` extra is missing.

    overcomplete 0.3.0 calls ``matplotlib.cm.get_cmap`` at import time, which matplotlib 3.9 removed;
    the alias is put in place for the import only and removed again afterwards.
    """
    import matplotlib
    import matplotlib.cm

    shim = not hasattr(matplotlib.cm, "get_cmap")
    if shim:
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    try:
        import overcomplete.sae
    except ModuleNotFoundError as error:
        if error.name != "overcomplete":
            raise
        raise ImportError("SAE units need the overcomplete package: pip install 'crp-csp[sae]'") from None
    finally:
        if shim:
            del matplotlib.cm.get_cmap
    return overcomplete.sae


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Options of :func:`fit_sae`.

    Parameters
    ----------
    kind : ``topk`` or ``vanilla`` (L1).
    nb_concepts : number of latents K.
    top_k : active latents per row (``topk``).
    l1_penalty : weight of the mean L1 norm of a row's codes (``vanilla``).
    aux_penalty, revive_penalty : weights of AuxK and of the dead-latent regulariser (``topk``).
    epochs, batch_size, lr, seed : the training run (Adam, cosine schedule, gradient clipping at 1).
    """

    kind: str = "topk"
    nb_concepts: int = 256
    top_k: int = 8
    l1_penalty: float = 0.01
    aux_penalty: float = 0.1
    revive_penalty: float = 0.1
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SAE_KINDS:
            raise ValueError(f"kind must be one of {SAE_KINDS}, got {self.kind!r}")
        if self.nb_concepts < 1 or not 0 < self.top_k <= self.nb_concepts:
            raise ValueError(f"need nb_concepts >= 1 and 0 < top_k <= nb_concepts, "
                             f"got {self.nb_concepts} and {self.top_k}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def activation_rows(activation: torch.Tensor) -> torch.Tensor:
    """A layer output as rows of units: [B, C, H, W] -> [B*H*W, C], [B, T, C] -> [B*T, C], [B, C] as is."""
    if activation.ndim == 4:
        return activation.movedim(1, -1).reshape(-1, activation.shape[1])
    if activation.ndim in (2, 3):
        return activation.reshape(-1, activation.shape[-1])
    raise ValueError(f"expected a [B, C, H, W], [B, T, C] or [B, C] output, got shape {tuple(activation.shape)}")


@torch.no_grad()
def layer_rows(model: nn.Module, layer: str, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The rows (:func:`activation_rows`) of ``layer``'s output on ``images``, computed in batches
    (``model`` runs as it is: put it in eval mode first)."""
    rows = []
    with record_layers(model, [layer]) as recording:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
            rows.append(activation_rows(recording.activations[layer]))
    return torch.cat(rows).float()


def build_sae(input_dim: int, config: SAEConfig = SAEConfig(), init_rows: torch.Tensor | None = None) -> nn.Module:
    """An untrained overcomplete SAE; dictionary atoms and encoder rows start at ``init_rows`` (normalised)."""
    sae_module = import_overcomplete()
    params = {}
    if init_rows is not None:
        atoms = init_rows.float() / (init_rows.float().norm(dim=1, keepdim=True) + 1e-8)
        params["initializer"] = atoms.numpy()
    if config.kind == "topk":
        sae = sae_module.TopKSAE(input_dim, config.nb_concepts, top_k=config.top_k, dictionary_params=params)
    else:
        sae = sae_module.SAE(input_dim, config.nb_concepts, dictionary_params=params)
    if init_rows is not None:
        with torch.no_grad():
            linear = sae.encoder.final_block[0]
            linear.weight.copy_(torch.from_numpy(params["initializer"]))
            linear.bias.zero_()
    return sae


def _criterion(config: SAEConfig) -> Callable:
    losses = import_overcomplete().losses
    if config.kind == "topk":
        def topk_loss(x, x_hat, pre_codes, codes, dictionary):
            return (losses.top_k_auxiliary_loss(x, x_hat, pre_codes, codes, dictionary, penalty=config.aux_penalty)
                    + losses.reanimation_regularizer(x, x_hat, pre_codes, codes, dictionary,
                                                     penalty=config.revive_penalty))
        return topk_loss

    def l1_loss(x, x_hat, pre_codes, codes, dictionary):
        # overcomplete's mse_l1 sums |z| over the whole batch; this is the per-row mean
        return (x - x_hat).square().mean() + config.l1_penalty * codes.abs().sum(-1).mean()
    return l1_loss


def fit_sae(rows: torch.Tensor, config: SAEConfig = SAEConfig(), *, verbose: bool = False) -> tuple[nn.Module, dict]:
    """Train an SAE on ``rows`` [N, C] with overcomplete's ``train_sae``; returns ``(sae in eval mode, logs)``."""
    sae_module = import_overcomplete()
    rows = rows.detach().float().cpu()
    scale = float(rows.square().sum(1).mean().div(rows.shape[1]).sqrt().clamp_min(1e-12))
    rows = rows / scale
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    init = rows[torch.randperm(len(rows), generator=generator)[:config.nb_concepts]]
    if len(init) < config.nb_concepts:
        init = None
    sae = build_sae(rows.shape[1], config, init)
    loader = DataLoader(rows, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))
    logs = sae_module.train_sae(sae, loader, _criterion(config), optimizer, schedule, nb_epochs=config.epochs,
                                clip_grad=1.0, monitoring=int(verbose))
    with torch.no_grad():  # fold the input scale in; eval() fuses the dictionary outside the autograd graph
        sae.encoder.final_block[0].weight.div_(scale)
        sae.dictionary.multiplier.add_(float(np.log(scale)))
        sae.eval()
    return sae, {**logs, "input_scale": scale}


@torch.no_grad()
def sae_quality(sae: nn.Module, rows: torch.Tensor) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` on ``rows`` [N, C].

    ``fve``: fraction of variance explained, 1 - |x - x_hat|^2 / |x - mean(x)|^2 (per-unit mean);
    ``mean_active``: mean number of non-zero latents per row; ``dead_latents``: latents never active.
    """
    sae.eval()
    _, codes, reconstruction = sae(rows.float())
    residual = (rows - reconstruction).square().sum()
    total = (rows - rows.mean(0)).square().sum()
    active = codes > 0
    return {
        "fve": float(1 - residual / total),
        "mean_active": float(active.sum(1).float().mean()),
        "dead_latents": int((~active.any(0)).sum()),
        "latents": int(codes.shape[1]),
        "rows": int(rows.shape[0]),
    }


def save_sae(sae: nn.Module, config: SAEConfig, path: str | os.PathLike, **metadata) -> None:
    """Write ``sae`` with its :class:`SAEConfig`, input size and ``metadata`` (plain values) to ``path``."""
    state = {key: value.detach().cpu() for key, value in sae.state_dict().items()}
    torch.save({"format": SAE_FILE_FORMAT, "config": config.to_dict(), "input_dim": int(sae.dictionary.in_dimensions),
                "metadata": dict(metadata), "state_dict": state}, path)


def load_sae(path: str | os.PathLike) -> tuple[nn.Module, SAEConfig, dict]:
    """An SAE written by :func:`save_sae`, in eval mode: ``(sae, config, metadata)``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no SAE file at {path}")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or stored.get("format") != SAE_FILE_FORMAT:
        raise ValueError(f"{path} is not a crp-csp SAE file (format {SAE_FILE_FORMAT})")
    config = SAEConfig(**stored["config"])
    sae = build_sae(stored["input_dim"], config)
    sae.load_state_dict(stored["state_dict"])
    with torch.no_grad():
        sae.eval()
    return sae, config, stored["metadata"]

