"""Weighted epochs for map-style datasets over a `kinodb.Mixture`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Sampler

from kinodb.mixture import Mixture
from kinodb.torch._datasets import KinoFrameDataset, KinoMapDataset

__all__ = ["MixtureSampler", "cycle_draws", "episode_frames"]


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


def episode_frames(dataset: KinoMapDataset) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(kept frames per source given, first frame of each item then the total)`` of an
    episode dataset, its sources' kept frames numbered one after another.

    Drawing frames uniformly and taking the items that hold them (``searchsorted(starts,
    frame, side="right") - 1``, which passes over episodes without frames) draws episodes
    in proportion to their length, as ``weight_by="frame"`` means.
    """
    sources = dataset._open()[0]  # in item order; a source a filter left empty is absent
    lengths = [np.asarray(src.lengths, dtype=np.int64) for src in sources]
    starts = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(dataset.episodes_by_source())]).astype(np.int64)
    return np.diff(starts[bounds]), starts


class MixtureSampler(Sampler[int]):
    """Indices of a map-style dataset over a `Mixture`, drawn by the mixture's weights.

    A map-style dataset over a mixture holds every sample of every source once (every
    window of a `KinoFrameDataset`, every episode of a `KinoMapDataset`), so a plain
    shuffle draws sources in proportion to their sizes, not their weights. This sampler
    makes epochs of ``num_samples`` indices in which source ``s`` contributes exactly
    ``Mixture.counts(num_samples)[s]``. Within a source, windows are drawn uniformly;
    episodes uniformly with ``weight_by="episode"``, and in proportion to their length
    with ``"frame"`` (a frame drawn uniformly names the episode that holds it, as in
    `Mixture.weighted_epoch`). The draws are without replacement: a source's draws walk
    through seeded permutations of its windows (episodes, or frames), one after another,
    so none repeats before all of that source has been drawn, across epochs too (epoch
    ``e`` takes each source's draws ``e*k .. (e+1)*k - 1``). The draws of all sources are
    shuffled together, seeded by ``(seed, epoch)``; `set_epoch` moves to the next epoch.

    With several ranks (``torch.distributed`` when initialised, or ``rank=`` and
    ``world_size=``) rank ``r`` takes every ``world_size``-th index from ``r``, and every
    rank as many (a DDP step waits for every rank): where ``num_samples`` divides by the
    world size the ranks' slices are disjoint and together hold the epoch; otherwise the
    epoch is extended by its first indices up to the next multiple, as
    ``DistributedSampler`` pads, so up to ``world_size - 1`` samples are drawn twice.

    Args:
        dataset: A `KinoFrameDataset` or `KinoMapDataset` whose source is a `Mixture`.
        num_samples: Samples per epoch (default: the dataset's length).
        seed: Non-negative integer.
        rank: This reader's rank (default: from ``torch.distributed``, else 0).
        world_size: Number of ranks (default: from ``torch.distributed``, else 1).

    Example:
        >>> mix = kinodb.Mixture({"franka.kdb": 3, "widowx.kdb": 1})
        >>> ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=16)
        >>> sampler = MixtureSampler(ds, num_samples=100_000, seed=0)
        >>> loader = DataLoader(ds, batch_size=256, sampler=sampler, num_workers=2)

    Raises:
        TypeError: the dataset is not a `KinoFrameDataset` or `KinoMapDataset` over a `Mixture`.
        ValueError: a bad ``num_samples``, ``seed``, ``rank`` or ``world_size``, or a source
            the filters leave empty has a share of the draws.
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
        if not isinstance(dataset, (KinoFrameDataset, KinoMapDataset)):
            raise TypeError(
                "MixtureSampler draws a map-style dataset by its mixture's weights: give it a "
                "KinoFrameDataset or KinoMapDataset over a kinodb.Mixture, got a "
                f"{type(dataset).__name__} (a KinoIterDataset over a Mixture, or from_mixture, draws by the "
                "weights itself)"
            )
        mixture = dataset._source
        if not isinstance(mixture, Mixture):
            raise TypeError(
                "MixtureSampler draws by a mixture's weights: give it a KinoFrameDataset or KinoMapDataset "
                f"over a kinodb.Mixture, not over {type(mixture).__name__}"
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
        # What a source's draws cycle through, per mixture source (0 where a filter kept
        # nothing): its windows, its episodes, or the frames of its episodes.
        self._frames: NDArray[np.int64] | None = None  # first frame of each item, by weight
        if isinstance(dataset, KinoFrameDataset):
            sizes, what = dataset.windows.counts_by_source(), "windows"
        elif mixture.weight_by == "frame":
            sizes, self._frames = episode_frames(dataset)
            what = "frames"
        else:
            sizes, what = dataset.episodes_by_source(), "episodes"
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._counts = mixture.counts(int(n))
        empty = [i for i, k in enumerate(self._counts.tolist()) if k and not sizes[i]]
        if empty:
            raise ValueError(
                f"mixture source {empty[0]} ({mixture.sources()[empty[0]].path}) keeps no {what} after the "
                "filters but has a share of the draws; leave it out of the mixture, give it its own filter in "
                "the mixture, or change the dataset's kql_filter"
            )
        self._bounds, self._sizes = bounds, np.asarray(sizes, dtype=np.int64)
        self.num_samples, self.seed, self.rank, self.world_size = (
            int(n),
            int(seed),
            int(rank),
            int(world_size),
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch`` next (deterministic from the seed).

        Raises:
            ValueError: ``epoch`` is not an int >= 0 (as `KinoIterDataset.set_epoch`).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices of the current epoch, in order."""
        parts = [
            cycle_draws(self.seed, s, int(self._sizes[s]), self.epoch * k, k) + int(self._bounds[s])
            for s, k in enumerate(self._counts.tolist())
            if k
        ]
        order = np.concatenate(parts)
        if self._frames is not None:  # the episodes that hold the drawn frames
            order = np.searchsorted(self._frames, order, side="right") - 1
        order = order[np.random.default_rng([self.seed, 1 << 32, self.epoch]).permutation(len(order))]
        padded = np.resize(order, len(self) * self.world_size)  # the epoch, then its first indices again
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        """Indices this rank takes per epoch: the same on every rank."""
        return -(-self.num_samples // self.world_size)
