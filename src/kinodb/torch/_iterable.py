"""Streaming datasets: seeded epochs split across DataLoader workers and distributed ranks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from kinodb.errors import KinodbError
from kinodb.mixture import DEFAULT_SEED, Mixture
from kinodb.torch._collate import Batch, TensorBatch, _is_int, _rank_and_world, pad_collate
from kinodb.torch._datasets import KinoFrameDataset, KinoMapDataset, quiet_empty_sources, warn_empty_sources
from kinodb.torch._epochs import (
    EpochsAndRanks,
    cycle_draws_at,
    cycle_order,
    even_positions,
    rank_share,
    shuffled,
)
from kinodb.torch._sampler import episode_frames

__all__ = ["KinoIterDataset", "from_mixture"]


class KinoIterDataset(EpochsAndRanks, IterableDataset[dict[str, Any]]):
    """Stream episode items, or frame windows when given horizons, in seeded epochs.

    Each epoch is one order of all samples (shuffled from ``seed`` and the epoch
    number, or in file order), or for a `Mixture` source a weighted, stratified draw of
    ``num_samples`` (default: every kept episode, or frame, once on average). Within a
    mixture source, windows are drawn uniformly; episodes uniformly, or with the
    mixture's ``weight_by="frame"`` in proportion to their length (a frame drawn uniformly
    names the episode that holds it, as in `Mixture.weighted_epoch`). With
    ``num_samples`` over a file or a list of files, an epoch is that many samples drawn
    without replacement, continuing across epochs (no sample repeats before all have
    been drawn). The order is split by distributed rank (``torch.distributed`` when
    initialised, read in the rank's process also for spawned workers, or
    ``rank=``/``world_size=``), and a rank's DataLoader workers deal its share out in
    whole batches, in turn: a rank yields ``len(ds)`` items. Every rank takes the same
    number of samples and batches, so that a step that synchronises the ranks (DDP's
    gradient all-reduce) never waits for a rank that has finished: when the epoch's
    count does not divide by the world size, the epoch is extended by repeating its
    first samples up to the next multiple, as ``DistributedSampler`` does, so up to
    ``world_size - 1`` samples are read twice in that epoch; where it divides, across
    all ranks and workers each sample of the epoch is seen exactly once. Call
    `set_epoch` before each epoch, as with ``DistributedSampler``; it reaches persistent
    workers too.

    Over sources of different schemas, the batches it makes (``batch_size``) are padded
    to the widest of all sources, with ``state_mask``/``action_mask`` in every batch;
    single samples carry the dataset's widths, so ``DataLoader(ds, batch_size=B,
    collate_fn=pad_collate)`` pads to the widest of all sources too (the default collate
    refuses such a batch, naming `pad_collate`).

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture`.
        kql_filter: Keep only matching episodes.
        shuffle: Shuffle each epoch (mixtures are always drawn in a shuffled order).
        seed: Seed of every epoch's order.
        obs_horizon, action_horizon, delta_timestamps, pad: Frame windows as in
            `KinoFrameDataset`; without them the items are whole episodes.
        batch_size: Yield stacked batches of this many windows (one vectorised gather
            each; use ``DataLoader(ds, batch_size=None)``) instead of single samples.
        num_samples: Samples per epoch (default: a mixture's every kept sample once on
            average; a file's or list's every sample once).
        rank, world_size: This process's share (default: from ``torch.distributed``).
        image_key, image_size, normalize, resize, to_tensor, decode_threads, channels_last,
        image_dtype: As in
            `KinoFrameDataset`.

    Raises:
        KinodbError: a mixture source the filters leave empty has a share of the draws; or,
            with ``batch_size`` and no ``image_size``, a camera's frames differ in size
            between sources that get draws (a batch would mix them).

    Example:
        >>> ds = KinoIterDataset("pick.kdb", obs_horizon=2, action_horizon=16, batch_size=256)
        >>> for epoch in range(3):
        ...     ds.set_epoch(epoch)
        ...     for batch in DataLoader(ds, batch_size=None, num_workers=2): ...
    """

    def __init__(
        self,
        source: Any,
        *,
        kql_filter: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        obs_horizon: int | None = None,
        action_horizon: int | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        pad: str = "edge",
        batch_size: int | None = None,
        num_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        image_key: str | Sequence[str] | Mapping[str, str | Sequence[str]] | bool | None = None,
        image_size: Any = None,
        normalize: Any = None,
        resize: str = "bilinear",
        to_tensor: bool = True,
        decode_threads: int | None = None,
        channels_last: bool = False,
        image_dtype: str | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        batch_size, num_samples = _positive(batch_size, "batch_size"), _positive(num_samples, "num_samples")
        if rank is not None or world_size is not None:  # else read where it iterates (torch.distributed)
            rank, world_size = _rank_and_world(rank, world_size)
        self.windows = obs_horizon is not None or action_horizon is not None or delta_timestamps is not None
        common = dict(kql_filter=kql_filter, image_key=image_key, image_size=image_size, normalize=normalize,
                      resize=resize, to_tensor=to_tensor, decode_threads=decode_threads,
                      channels_last=channels_last, image_dtype=image_dtype)  # fmt: skip
        self._inner: KinoFrameDataset | KinoMapDataset
        if not self.windows and batch_size is not None:
            raise ValueError(
                "batch_size needs frame windows (obs_horizon/action_horizon); episodes differ in length"
            )
        with quiet_empty_sources():  # said below, unless such a source is refused instead
            if self.windows:
                self._inner = KinoFrameDataset(source, obs_horizon=1 if obs_horizon is None else obs_horizon,
                                               action_horizon=1 if action_horizon is None else action_horizon,
                                               delta_timestamps=delta_timestamps, pad=pad, **common)  # type: ignore[arg-type]  # fmt: skip
            else:
                self._inner = KinoMapDataset(source, **common)  # type: ignore[arg-type]
        self._mixture = source if isinstance(source, Mixture) else None
        # Episodes of a mixture weighted by frame: each source's draws cycle through its
        # kept frames, numbered over all sources, and name the episodes that hold them.
        self._frames = (
            episode_frames(self._inner)  # type: ignore[arg-type]
            if self._mixture is not None and self._mixture.weight_by == "frame" and not self.windows
            else None
        )
        self.shuffle, self.seed, self.batch_size = bool(shuffle), int(seed), batch_size
        self.num_samples = num_samples
        self._init_epochs(rank, world_size)
        draws = self._draws()  # a mixture source a filter left empty is refused now, not mid-epoch
        if batch_size is not None and isinstance(self._inner, KinoFrameDataset) and self._inner._size is None:
            # the batches it makes mix the sources: their frames must be of one size, now
            take = draws[2] if self._mixture is not None and draws is not None else None
            drawn = None if take is None else {s for s, k in enumerate(take.tolist()) if k}
            self._inner.windows.check_image_sizes_across(drawn)
        if self._mixture is not None:  # the empty sources left have no draws: said, not refused
            inner = self._inner
            if isinstance(inner, KinoFrameDataset):
                warn_empty_sources(self._mixture, inner.windows.counts_by_source(), kql_filter, "windows")
            else:
                warn_empty_sources(self._mixture, inner.episodes_by_source(), kql_filter, "episodes")

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """Every sample index of the epoch (the current one by default), in order, before
        splitting (int64). DataLoader workers build only their part (`worker_order`)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self._inner)
        draws = self._draws()
        if draws is None:
            if not self.shuffle:
                return np.arange(n, dtype=np.int64)
            return np.random.default_rng([self.seed, epoch]).permutation(n)
        units, starts, take = draws
        if self._mixture is None and not self.shuffle:  # in file order, on from the last epoch
            return self._in_file_order(epoch, np.arange(int(take[0]), dtype=np.int64))
        drawn = cycle_order(self.seed, epoch, units, starts, take)
        shuffle = shuffled(len(drawn), [self.seed, epoch, 1 << 20])
        picked: np.ndarray = drawn[shuffle]
        del drawn, shuffle  # before the int64 copy
        return self._items(picked)

    def worker_order(self, epoch: int | None = None, *, worker: int = 0, num_workers: int = 1) -> np.ndarray:
        """The sample indices DataLoader worker ``worker`` of ``num_workers`` of this rank
        reads in the epoch (the current one by default), in order (int64).

        The same as taking the worker's part of `epoch_order`: the rank's share is every
        world-size-th sample from the rank (of the order extended by its first samples to
        a multiple of the world size, when it does not divide), dealt out to its workers
        in whole batches (or samples), in turn. Only that part is built: an epoch of
        ``n`` samples costs a worker one shuffle of ``n`` 4-byte positions (2-byte up to
        65,536), then for a mixture one pass over a source at a time (of its frames, for
        episodes weighted by frame), plus its part.
        """
        epoch = self.epoch if epoch is None else epoch
        rank, world = self._rank_world()
        if not 0 <= worker < num_workers:
            raise ValueError(
                f"need 0 <= worker < num_workers, got worker={worker!r}, num_workers={num_workers!r}"
            )
        size = self._epoch_size()
        where = even_positions(size, rank, world, worker, num_workers, self.batch_size or 1)
        draws = self._draws()
        if draws is None:
            if not self.shuffle:
                return where
            return shuffled(size, [self.seed, epoch])[where].astype(np.int64)
        units, starts, take = draws
        if self._mixture is None and not self.shuffle:
            return self._in_file_order(epoch, where)
        drawn = shuffled(size, [self.seed, epoch, 1 << 20])[where]  # positions in the draws
        del where
        return self._items(cycle_draws_at(self.seed, epoch, units, starts, take, drawn))

    def _items(self, drawn: np.ndarray) -> np.ndarray:
        """The sample indices of draws (int64): the draws themselves, or for episodes
        weighted by frame the episodes that hold the drawn frames."""
        if self._frames is None:
            return drawn.astype(np.int64)
        out: np.ndarray = np.searchsorted(self._frames[1], drawn, side="right") - 1
        return out.astype(np.int64, copy=False)

    def _in_file_order(self, epoch: int, where: np.ndarray) -> np.ndarray:
        """Positions ``where`` of epoch ``epoch`` of ``num_samples`` samples in file order,
        each epoch going on where the last one stopped (int64)."""
        n, k = len(self._inner), self.num_samples or len(self._inner)
        out: np.ndarray = (where + (epoch * k) % n) % n
        return out

    def _draws(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(samples per source, their first index, draws per source)`` of an epoch of
        draws (a mixture, or ``num_samples`` of a file or list, as one source), else None.

        Raises:
            KinodbError: a mixture source the filters leave empty has a share of the draws.
        """
        if self._mixture is not None:
            return self._mixture_shares()
        if self.num_samples is None:
            return None
        n = len(self._inner)
        return (np.array([n], np.int64), np.array([0, n], np.int64), np.array([self.num_samples], np.int64))

    def _mixture_shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(samples per source, their first index, draws per source)`` of a mixture epoch.

        Raises:
            KinodbError: a source the filters leave empty has a share of the draws.
        """
        mix = self._mixture
        assert mix is not None
        what = "samples"
        if self.windows:  # per mixture source, 0 where a filter kept nothing
            counts_per_source = self._inner.windows.counts_by_source()  # type: ignore[union-attr]
        elif self._frames is not None:  # episodes weighted by frame: draws of frames
            counts_per_source, what = self._frames[0], "frames"
        else:
            counts_per_source = self._inner.episodes_by_source()  # type: ignore[union-attr]
        starts = np.concatenate([[0], np.cumsum(counts_per_source)]).astype(np.int64)
        take = mix.counts(self.num_samples or len(self._inner))  # by default, each sample once on average
        empty = [s for s, k in enumerate(take.tolist()) if k and not counts_per_source[s]]
        if empty:
            info = mix.sources()[empty[0]]
            raise KinodbError(
                f"mixture source {empty[0]} ({info.path}) keeps no {what} after the filters but has a "
                "share of the draws; leave it out of the mixture, give it its own filter in the mixture, "
                "or change kql_filter"
            )
        return np.asarray(counts_per_source, dtype=np.int64), starts, take

    def _epoch_size(self) -> int:
        """Samples in an epoch, before it is extended to a multiple of the world size."""
        draws = self._draws()
        return len(self._inner) if draws is None else int(draws[2].sum())

    def __len__(self) -> int:
        """Items this rank yields per epoch, over all its DataLoader workers (batches when
        ``batch_size`` is set): the same on every rank."""
        mine = rank_share(self._epoch_size(), self._rank_world()[1])
        return -(-mine // self.batch_size) if self.batch_size else mine

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # The rank's share is every world-th sample (of the epoch extended to a multiple
        # of the world size); its DataLoader workers then deal out whole batches (or
        # samples) in turn, so the rank yields exactly len(self) items, in the order the
        # DataLoader hands them on (it takes from the workers in turn).
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self.worker_order(worker=wid, num_workers=nw)
        if self.batch_size is None:
            for start in range(0, len(order), 64):  # gather in chunks, hand out one by one
                if isinstance(self._inner, KinoFrameDataset):
                    # Samples made on demand, each with the dataset's widths (pad_collate pads to them)
                    yield from self._inner.__getitems__(order[start : start + 64].tolist())
                else:
                    for i in order[start : start + 64].tolist():
                        yield self._inner[i]
            return
        size = self.batch_size
        inner = self._inner
        assert isinstance(inner, KinoFrameDataset)
        for start in range(0, len(order), size):
            batch = inner.__getitems__(order[start : start + size].tolist())
            if isinstance(batch, Batch) and batch.pad is None:
                yield TensorBatch(batch.stacked)
            else:  # sources of several schemas: padded to the widest of all sources, with masks
                yield pad_collate(batch)


def _positive(value: Any, name: str) -> int | None:
    """``value`` as an int (a Python or NumPy one), None as None.

    Raises:
        ValueError: ``value`` is not a positive int (a bool, a float, zero).
    """
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def from_mixture(
    sources: Any,
    *,
    seed: int = DEFAULT_SEED,
    weight_by: str = "episode",
    filters: Mapping[Any, str] | None = None,
    num_samples: int | None = None,
    obs_horizon: int | None = None,
    action_horizon: int | None = None,
    delta_timestamps: Mapping[str, Sequence[float]] | None = None,
    pad: str = "edge",
    batch_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    image_key: str | Sequence[str] | Mapping[str, str | Sequence[str]] | bool | None = None,
    image_size: Any = None,
    normalize: Any = None,
    resize: str = "bilinear",
    to_tensor: bool = True,
    decode_threads: int | None = None,
    channels_last: bool = False,
    image_dtype: str | None = None,
) -> KinoIterDataset:
    """A `KinoIterDataset` over the weighted mixture ``sources`` (``{path: weight}``).

    ``seed``, ``weight_by`` and ``filters`` build the `Mixture`; the other options are
    `KinoIterDataset`'s.

    Example:
        >>> ds = from_mixture({"franka.kdb": 3, "widowx.kdb": 1}, seed=0, obs_horizon=2,
        ...                   action_horizon=8, batch_size=128)
    """
    mixture = Mixture(sources, seed=seed, weight_by=weight_by, filters=filters)  # type: ignore[arg-type]
    return KinoIterDataset(
        mixture, seed=seed, num_samples=num_samples, obs_horizon=obs_horizon, action_horizon=action_horizon,
        delta_timestamps=delta_timestamps, pad=pad, batch_size=batch_size, rank=rank, world_size=world_size,
        image_key=image_key, image_size=image_size, normalize=normalize, resize=resize, to_tensor=to_tensor,
        decode_threads=decode_threads, channels_last=channels_last, image_dtype=image_dtype,
    )  # fmt: skip
