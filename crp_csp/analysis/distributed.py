"""Sharding the analysis pass over torch.distributed processes (torchrun), CPU (gloo) or GPU (NCCL).

Every rank runs the one pass on its share of the checkpoint parts and writes them to the shared
``<store>.parts/`` folder; the reference pools are merged with collectives; rank 0 writes the
store. Without an initialised process group everything here is a no-op for one process.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class ProcessGroup:
    """Rank, world size and the few collectives the pass needs."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_gather_object(self, value):
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value):
        """``value`` of rank 0 on every rank (exceptions included, so all ranks fail together)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mine(self, items: list) -> list:
        """This rank's share of ``items`` (round robin)."""
        return items[self.rank::self.world_size]


def _launched_ranks() -> int:
    """How many ranks torchrun (or another launcher setting ``WORLD_SIZE``) started; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: str | torch.device = "cuda") -> str:
    """The device this rank should use: under torchrun a CUDA device without an index becomes the
    rank's own GPU, ``cuda:$LOCAL_RANK``; every other device is returned unchanged.

    Load the model and the encoder on it, so that the ranks of a node do not all share GPU 0::

        device = rank_device("cuda")
        model, encoder = load_model(spec, device=device), load_encoder(spec, device=device)
    """
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None and _launched_ranks() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return str(parsed)


def default_backend() -> str:
    """The backend :func:`current_process_group` initialises: ``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def current_process_group(init: bool = True) -> ProcessGroup:
    """The running process group; under torchrun (``WORLD_SIZE`` > 1) initialise it first when ``init``.

    The backend is NCCL when CUDA is available (each rank bound to ``cuda:$LOCAL_RANK``), gloo otherwise.
    """
    if not dist.is_available():
        return ProcessGroup()
    if not dist.is_initialized():
        if not init or _launched_ranks() <= 1:
            return ProcessGroup()
        if default_backend() == "nccl":
            device = torch.device(rank_device("cuda"))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size())
