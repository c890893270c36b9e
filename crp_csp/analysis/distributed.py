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


def current_process_group(init: bool = True) -> ProcessGroup:
    """The running process group; under torchrun (``WORLD_SIZE`` > 1) initialise it first when ``init``.

    The backend is NCCL when CUDA is available, gloo otherwise.
    """
    if not dist.is_available():
        return ProcessGroup()
    if not dist.is_initialized():
        if not init or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return ProcessGroup()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return ProcessGroup(dist.get_rank(), dist.get_world_size())
