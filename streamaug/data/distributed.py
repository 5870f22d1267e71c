"""Where this process sits: its rank among ranks and its slot among DataLoader workers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Slot:
    """One reader's place in the job: ``rank`` of ``world`` ranks, ``worker`` of ``num_workers``."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        """Global reader index in ``[0, world * num_workers)``, rank-major."""
        return self.rank * self.num_workers + self.worker

    @property
    def total(self) -> int:
        return self.world * self.num_workers


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else from the
    ``RANK``/``WORLD_SIZE`` environment variables torchrun sets, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def current_slot() -> Slot:
    """The :class:`Slot` of the calling process (call it inside ``__iter__``, in the worker)."""
    rank, world = rank_world()
    info = torch.utils.data.get_worker_info()
    if info is None:
        return Slot(rank, world, 0, 1)
    return Slot(rank, world, info.id, info.num_workers)
