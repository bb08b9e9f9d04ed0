"""The epoch and the rank an iterable dataset reads, shared with its DataLoader workers, and
the part of an epoch's order each worker reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Unpickled by value (a copy, torch.save, a pickle made for another process): the
        # epoch must be shared memory of its own again, or `set_epoch` would not reach
        # the workers this copy forks. A worker's copy (torch's shared tensor) keeps it.
        if not self._epoch.is_shared():  # type: ignore[no-untyped-call]
            self._epoch = self._epoch.clone().share_memory_()  # type: ignore[no-untyped-call]

    def _rank_world(self) -> tuple[int, int]:
        """This process's rank and the world size: as given, else as torch.distributed says
        here, else, in a DataLoader worker, as it said where this dataset was pickled for
        the worker, else (0, 1). A dataset unpickled outside a worker (``torch.load`` in
        another job) does not keep the rank of the process that saved it."""
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        found = distributed()
        if found is not None:
            return found
        if self._dist is not None and get_worker_info() is not None:
            return self._dist
        return 0, 1


def distributed() -> tuple[int, int] | None:
    """``(rank, world size)`` of torch.distributed where it is initialised, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


# The orders below hold what a DataLoader worker keeps, not the whole epoch: the epoch's
# shuffle is one array of the smallest dtype that holds its positions (NumPy's shuffle
# draws the same swaps whatever the dtype, so it equals ``permutation``), and the draws
# of a mixture are computed only at the positions a worker reads.


def index_dtype(n: int) -> np.dtype[Any]:
    """The smallest dtype that holds every index ``0 .. n - 1``."""
    if n <= 1 << 16:
        return np.dtype(np.uint16)
    if n <= 1 << 32:
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


def shuffled(n: int, key: list[int]) -> NDArray[Any]:
    """``np.random.default_rng(key).permutation(n)`` in `index_dtype` ``(n)``."""
    out = np.arange(n, dtype=index_dtype(n))
    np.random.default_rng(key).shuffle(out)
    return out


def worker_positions(
    size: int, rank: int, world: int, worker: int, workers: int, batch: int
) -> NDArray[np.int64]:
    """Positions in an epoch of ``size`` samples that DataLoader worker ``worker`` of
    ``workers`` of rank ``rank`` of ``world`` reads, in its order.

    The rank's share is every ``world``-th position from ``rank``; its workers deal that
    share out in runs of ``batch``, in turn.
    """
    share = len(range(rank, size, world))
    firsts = np.arange(worker * batch, share, workers * batch, dtype=np.int64)
    mine = (firsts[:, None] + np.arange(batch, dtype=np.int64)).ravel()
    mine = mine[: np.searchsorted(mine, share)]  # ascending: only the last run can overrun
    mine *= world
    mine += rank
    return mine


def rank_share(size: int, world: int) -> int:
    """Samples each of ``world`` ranks reads of an epoch of ``size``: ``ceil(size / world)``,
    the same on every rank (`even_positions`)."""
    return -(-size // world)


def even_positions(
    size: int, rank: int, world: int, worker: int, workers: int, batch: int
) -> NDArray[np.int64]:
    """`worker_positions` of the epoch extended to a multiple of ``world`` positions by
    repeating its first ones, as ``DistributedSampler`` pads (``drop_last=False``).

    Every rank then reads `rank_share` positions, so every rank takes the same number of
    samples and batches. Where ``size`` divides by ``world`` nothing repeats: across the
    ranks each position is read once. Otherwise the first ``-size % world`` positions of
    the epoch are read a second time, by the last ranks (more than once only when ``world``
    exceeds ``size``).
    """
    total = rank_share(size, world) * world
    where = worker_positions(total, rank, world, worker, workers, batch)
    if total > size:
        where %= size
    return where


def _passes(first: int, k: int, units: int) -> Iterator[tuple[int, int, int]]:
    """``(pass, first draw, end draw)`` of each pass draws ``first .. first + k - 1`` of a
    source's cycle of ``units``-long passes touch."""
    for p in range(first // units, (first + k - 1) // units + 1):
        yield p, max(p * units, first), min((p + 1) * units, first + k)


def cycle_order(
    seed: int, epoch: int, units: NDArray[np.int64], starts: NDArray[np.int64], take: NDArray[np.int64]
) -> NDArray[Any]:
    """Every source's draws of the epoch, one source after another, in `index_dtype`.

    Source ``s`` gives draws ``epoch * take[s]`` onwards of its cycle of seeded passes
    (pass ``p`` is ``permutation(units[s])`` seeded by ``(seed, s, p)``), offset by
    ``starts[s]``, its first sample index.
    """
    out = np.empty(int(take.sum()), dtype=index_dtype(int(starts[-1])))
    at = 0
    for s, k in enumerate(take.tolist()):
        size, first = int(units[s]), epoch * k
        for p, lo, hi in _passes(first, k, size) if k else ():
            piece = out[at : at + hi - lo]
            piece[...] = shuffled(size, [seed, s, p])[lo - p * size : hi - p * size]
            piece += int(starts[s])
            at += hi - lo
    return out


def cycle_draws_at(
    seed: int,
    epoch: int,
    units: NDArray[np.int64],
    starts: NDArray[np.int64],
    take: NDArray[np.int64],
    where: NDArray[Any],
) -> NDArray[np.int64]:
    """``cycle_order(...)[where]``, without the whole order: only the passes ``where``
    reaches are drawn, one at a time."""
    out = np.empty(len(where), dtype=np.int64)
    by = np.argsort(where, kind="stable")
    ordered = where[by].astype(np.int64)
    at = 0  # the source's first position in the order
    for s, k in enumerate(take.tolist()):
        size, skip = int(units[s]), epoch * k - at  # position + skip: the source's draw number
        lo, end = np.searchsorted(ordered, (at, at + k)).tolist()
        while lo < end:  # one pass of the source at a time, the passes ``where`` reaches
            p = (int(ordered[lo]) + skip) // size
            hi = lo + int(np.searchsorted(ordered[lo:end], (p + 1) * size - skip))
            draws = ordered[lo:hi] + (skip - p * size)
            picked = shuffled(size, [seed, s, p])[draws].astype(np.int64)
            picked += int(starts[s])
            out[by[lo:hi]] = picked
            lo = hi
        at += k
    return out
