"""The epoch and the rank an iterable dataset reads, shared with its DataLoader workers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info


class EpochsAndRanks:
    """`set_epoch` that reaches every DataLoader worker, and this process's rank.

    The epoch lives in shared memory, made before any worker starts, so it reaches workers
    that outlive an epoch (``persistent_workers=True``), forked or spawned. The rank and
    world size are as given, else torch.distributed's, taken where the dataset is pickled
    for its workers too: spawned workers have no process group.
    """

    _rank: int | None
    _world: int | None
    _dist: tuple[int, int] | None
    _epoch: torch.Tensor

    def _init_epochs(self, rank: int | None, world_size: int | None) -> None:
        self._rank, self._world, self._dist = rank, world_size, None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]

    @property
    def epoch(self) -> int:
        """The epoch `__iter__` yields next (see `set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` next (its order follows from the seed), in this process and
        in the DataLoader's workers, persistent ones included."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._rank is None and get_worker_info() is None:
            state["_dist"] = distributed() or self._dist
        return state

    def _rank_world(self) -> tuple[int, int]:
        """This process's rank and the world size: as given, else as torch.distributed says
        here, else as it said where this dataset was pickled for the worker, else (0, 1)."""
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        return distributed() or self._dist or (0, 1)


def distributed() -> tuple[int, int] | None:
    """``(rank, world size)`` of torch.distributed where it is initialised, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None
