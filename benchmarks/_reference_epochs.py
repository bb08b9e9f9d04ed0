"""The earlier epoch orders of `KinoIterDataset`, kept to check that the current ones give
identical orders and to measure them against.

Before, every DataLoader worker built the whole epoch's int64 order (a seeded permutation;
for a mixture, each source's cycled draws concatenated and shuffled together) and then
took its part of it. ``benchmarks/bench_epoch_order.py`` measures that against
``KinoIterDataset.worker_order``, and ``tests/torch_datasets/test_iterable_memory.py``
checks that both give the same samples in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kinodb.torch import KinoIterDataset


def cycle_draws(seed: int, source: int, size: int, first: int, k: int) -> np.ndarray:
    """Draws ``first .. first+k-1`` of a source's endless run of seeded permutations."""
    out = np.empty(k, dtype=np.int64)
    done = 0
    while done < k:
        p, at = divmod(first + done, size)
        perm = np.random.default_rng([seed, source, p]).permutation(size)
        take = min(k - done, size - at)
        out[done : done + take] = perm[at : at + take]
        done += take
    return out


def epoch_order(ds: KinoIterDataset, epoch: int) -> np.ndarray:
    """The whole epoch's order: a seeded permutation, or each mixture source's cycled draws
    by weight, concatenated and shuffled together."""
    n = len(ds._inner)
    if ds._mixture is None:
        if not ds.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([ds.seed, epoch]).permutation(n).astype(np.int64)
    inner: Any = ds._inner
    counts = inner.windows.counts_by_source() if ds.windows else inner.episodes_by_source()
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    take = ds._mixture.counts(ds.num_samples or int(starts[-1]))
    parts = [
        starts[s] + cycle_draws(ds.seed, s, int(counts[s]), epoch * k, k)
        for s, k in enumerate(take.tolist())
        if k
    ]
    order = np.concatenate(parts).astype(np.int64)
    return order[np.random.default_rng([ds.seed, epoch, 1 << 20]).permutation(len(order))]


def worker_order(ds: KinoIterDataset, epoch: int, rank: int, world: int, wid: int, nw: int) -> np.ndarray:
    """The rank's every world-th sample, dealt out to its workers in batches, in turn."""
    order = epoch_order(ds, epoch)[rank::world]
    if ds.batch_size is None:
        return order[wid::nw]
    size = ds.batch_size
    runs = [order[s : s + size] for s in range(wid * size, len(order), nw * size)]
    return np.concatenate(runs) if runs else np.empty(0, dtype=np.int64)
