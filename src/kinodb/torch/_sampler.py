"""Weighted epochs for map-style datasets over a `kinodb.Mixture`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from kinodb.mixture import Mixture

__all__ = ["MixtureSampler", "cycle_draws"]


def cycle_draws(seed: int, source: int, size: int, first: int, k: int) -> np.ndarray:
    """Draws ``first .. first+k-1`` of a source's endless run of seeded permutations of
    ``range(size)``: pass ``p`` is the permutation seeded by ``(seed, source, p)``, so no
    draw repeats before the source has been drawn through."""
    out = np.empty(k, dtype=np.int64)
    done = 0
    while done < k:
        p, at = divmod(first + done, size)
        perm = np.random.default_rng([seed, source, p]).permutation(size)
        take = min(k - done, size - at)
        out[done : done + take] = perm[at : at + take]
        done += take
    return out


class MixtureSampler(Sampler[int]):
    """Indices of a `KinoFrameDataset` over a `Mixture`, drawn by the mixture's weights.

    A map-style dataset over a mixture holds every window of every source once, so a
    plain shuffle draws sources in proportion to their sizes, not their weights. This
    sampler makes epochs of ``num_samples`` windows in which source ``s`` contributes
    exactly ``Mixture.counts(num_samples)[s]``. Within a source, windows are drawn
    uniformly without replacement: its draws walk through seeded permutations of its
    windows, one after another, so no window repeats before all of that source has
    been drawn, across epochs too (epoch ``e`` takes each source's draws
    ``e*k .. (e+1)*k - 1``). The draws of all sources are shuffled together, seeded by
    ``(seed, epoch)``; `set_epoch` moves to the next epoch.

    With several ranks (``torch.distributed`` when initialised, or ``rank=`` and
    ``world_size=``) rank ``r`` takes every ``world_size``-th index from ``r``, and every
    rank as many (a DDP step waits for every rank): where ``num_samples`` divides by the
    world size the ranks' slices are disjoint and together hold the epoch; otherwise the
    epoch is extended by its first indices up to the next multiple, as
    ``DistributedSampler`` pads, so up to ``world_size - 1`` windows are drawn twice.

    Args:
        dataset: A `KinoFrameDataset` whose source is a `Mixture`.
        num_samples: Windows per epoch (default: the dataset's length).
        seed: Non-negative integer.
        rank: This reader's rank (default: from ``torch.distributed``, else 0).
        world_size: Number of ranks (default: from ``torch.distributed``, else 1).

    Example:
        >>> mix = kinodb.Mixture({"franka.kdb": 3, "widowx.kdb": 1})
        >>> ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=16)
        >>> sampler = MixtureSampler(ds, num_samples=100_000, seed=0)
        >>> loader = DataLoader(ds, batch_size=256, sampler=sampler, num_workers=2)

    Raises:
        TypeError: the dataset's source is not a `Mixture`.
        ValueError: a bad ``num_samples``, ``seed``, ``rank`` or ``world_size``.
    """

    def __init__(
        self,
        dataset: Any,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        mixture = getattr(dataset, "_source", None)
        if not isinstance(mixture, Mixture):
            raise TypeError(
                f"MixtureSampler draws by a mixture's weights: give it a KinoFrameDataset over a "
                f"kinodb.Mixture, not over {type(mixture).__name__ if mixture is not None else type(dataset).__name__}"
            )
        n = len(dataset) if num_samples is None else num_samples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if ready else 0) if rank is None else rank
            world_size = (dist.get_world_size() if ready else 1) if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in 0..world_size-1 and world_size >= 1, got {rank} and {world_size}"
            )
        sizes = dataset.windows.counts_by_source()  # per mixture source; 0 where a filter kept nothing
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._counts = mixture.counts(int(n))
        empty = [i for i, k in enumerate(self._counts.tolist()) if k and not sizes[i]]
        if empty:
            raise ValueError(
                f"mixture source {empty[0]} ({mixture.sources()[empty[0]].path}) keeps no windows after the "
                "filters but has a share of the draws; leave it out of the mixture, give it its own filter in "
                "the mixture, or change the dataset's kql_filter"
            )
        self._bounds, self._sizes = bounds, sizes
        self.num_samples, self.seed, self.rank, self.world_size = (
            int(n),
            int(seed),
            int(rank),
            int(world_size),
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch`` next (deterministic from the seed)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices of the current epoch, in order."""
        parts = [
            cycle_draws(self.seed, s, int(self._sizes[s]), self.epoch * k, k) + int(self._bounds[s])
            for s, k in enumerate(self._counts.tolist())
            if k
        ]
        order = np.concatenate(parts)
        order = order[np.random.default_rng([self.seed, 1 << 32, self.epoch]).permutation(len(order))]
        padded = np.resize(order, len(self) * self.world_size)  # the epoch, then its first indices again
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        """Indices this rank takes per epoch: the same on every rank."""
        return -(-self.num_samples // self.world_size)
