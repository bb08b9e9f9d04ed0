"""Streaming datasets: seeded epochs split across DataLoader workers and distributed ranks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kinodb.errors import KinodbError
from kinodb.mixture import DEFAULT_SEED, Mixture
from kinodb.torch._collate import Batch, Sample, TensorBatch
from kinodb.torch._datasets import KinoFrameDataset, KinoMapDataset
from kinodb.torch._sampler import cycle_draws

__all__ = ["KinoIterDataset", "from_mixture"]


class KinoIterDataset(IterableDataset[dict[str, Any]]):
    """Stream episode items, or frame windows when given horizons, in seeded epochs.

    Each epoch is one order of all samples (shuffled from ``seed`` and the epoch
    number, or in file order), or for a `Mixture` source a weighted, stratified draw of
    ``num_samples`` (default: every kept episode, or frame, once on average). The order
    is split by DataLoader worker and by distributed rank (``torch.distributed`` when
    initialised, or ``rank=``/``world_size=``), so across all of them each sample of the
    epoch is seen exactly once. Call `set_epoch` before each epoch, as with
    ``DistributedSampler``.

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture`.
        kql_filter: Keep only matching episodes.
        shuffle: Shuffle each epoch (mixtures are always drawn in a shuffled order).
        seed: Seed of every epoch's order.
        obs_horizon, action_horizon, delta_timestamps, pad: Frame windows as in
            `KinoFrameDataset`; without them the items are whole episodes.
        batch_size: Yield stacked batches of this many windows (one vectorised gather
            each; use ``DataLoader(ds, batch_size=None)``) instead of single samples.
        num_samples: Samples per epoch of a mixture.
        rank, world_size: This process's share (default: from ``torch.distributed``).
        image_key, image_size, normalize, resize, to_tensor, decode_threads, channels_last,
        image_dtype: As in
            `KinoFrameDataset`.

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
        for name, value in (("batch_size", batch_size), ("num_samples", num_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if (
            rank is not None
            and world_size is not None
            and not (isinstance(world_size, int) and 0 <= rank < world_size)
        ):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.windows = obs_horizon is not None or action_horizon is not None or delta_timestamps is not None
        common = dict(kql_filter=kql_filter, image_key=image_key, image_size=image_size, normalize=normalize,
                      resize=resize, to_tensor=to_tensor, decode_threads=decode_threads,
                      channels_last=channels_last, image_dtype=image_dtype)  # fmt: skip
        self._inner: KinoFrameDataset | KinoMapDataset
        if self.windows:
            self._inner = KinoFrameDataset(source, obs_horizon=obs_horizon or 1, action_horizon=action_horizon or 1,
                                           delta_timestamps=delta_timestamps, pad=pad, **common)  # type: ignore[arg-type]  # fmt: skip
        else:
            if batch_size is not None:
                raise ValueError(
                    "batch_size needs frame windows (obs_horizon/action_horizon); episodes differ in length"
                )
            self._inner = KinoMapDataset(source, **common)  # type: ignore[arg-type]
        self._mixture = source if isinstance(source, Mixture) else None
        self.shuffle, self.seed, self.batch_size = bool(shuffle), int(seed), batch_size
        self.num_samples, self._rank, self._world = num_samples, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order (deterministic from the seed)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def _split(self) -> tuple[int, int]:
        """``(index, count)`` of this reader among all ranks times workers."""
        rank, world = self._rank, self._world
        if rank is None:
            rank, world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        assert world is not None
        return rank * nw + wid, world * nw

    def epoch_order(self) -> np.ndarray:
        """Every sample index of the current epoch, in order, before splitting."""
        n = len(self._inner)
        if self._mixture is None:
            if not self.shuffle:
                return np.arange(n, dtype=np.int64)
            return np.random.default_rng([self.seed, self.epoch]).permutation(n).astype(np.int64)
        return self._mixture_order()

    def _mixture_order(self) -> np.ndarray:
        """A weighted draw over the mixture's sources: per-source counts by weight, each
        source cycled without replacement, in a seeded order."""
        mix = self._mixture
        assert mix is not None
        if self.windows:  # per mixture source, 0 where a filter kept nothing
            counts_per_source = self._inner.windows.counts_by_source()  # type: ignore[union-attr]
        else:
            counts_per_source = self._inner.episodes_by_source()  # type: ignore[union-attr]
        starts = np.concatenate([[0], np.cumsum(counts_per_source)]).astype(np.int64)
        n = self.num_samples or int(starts[-1])
        take = mix.counts(n)
        parts = []
        for s, k in enumerate(take.tolist()):
            units = int(counts_per_source[s])
            if k and not units:
                raise KinodbError(
                    f"mixture source {s} keeps no samples but has a share of the draws; give it its own "
                    "filter in the mixture, or change kql_filter"
                )
            if k == 0:
                continue
            parts.append(starts[s] + cycle_draws(self.seed, s, units, self.epoch * k, k))
        order = np.concatenate(parts).astype(np.int64)
        return order[np.random.default_rng([self.seed, self.epoch, 1 << 20]).permutation(len(order))]

    def __len__(self) -> int:
        """Items this reader yields per epoch (batches when ``batch_size`` is set)."""
        n = len(self.epoch_order()) if self._mixture is not None else len(self._inner)
        index, count = self._split()
        mine = len(range(index, n, count))
        return -(-mine // self.batch_size) if self.batch_size else mine

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, count = self._split()
        order = self.epoch_order()[index::count]
        if self.batch_size is None:
            if isinstance(self._inner, KinoFrameDataset):
                for start in range(0, len(order), 64):  # gather in chunks, hand out one by one
                    chunk = self._inner.__getitems__(order[start : start + 64].tolist())
                    yield from (Sample(sample) for sample in chunk)  # no link to the chunk
            else:
                for i in order.tolist():
                    yield self._inner[i]
            return
        for start in range(0, len(order), self.batch_size):
            batch = self._inner.__getitems__(order[start : start + self.batch_size].tolist())  # type: ignore[union-attr]
            if isinstance(batch, Batch):
                yield TensorBatch(batch.stacked)
            else:
                yield from_samples(batch)


def from_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate per-sample dicts of different schemas with `pad_collate`."""
    from kinodb.torch._collate import pad_collate

    return pad_collate(samples)


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
