"""KinoIterDataset's per-worker epoch orders: the same samples, in the same order, as the
worker's part of the whole epoch's order built the straightforward way (the earlier orders,
benchmarks/_reference_epochs.py), in less memory."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoIterDataset, from_mixture
from kinodb.torch._epochs import index_dtype, shuffled, worker_positions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _reference_epochs as reference  # noqa: E402

# (rank, world size) pairs; each is checked with 1, 2 and 3 DataLoader workers
RANKS = [(0, 1), (1, 2), (2, 3), (5, 8)]
SEEDS = [0, 1, 7]
EPOCHS = [0, 1, 3]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    root = tmp_path_factory.mktemp("orders")
    a, b, c = root / "a.kdb", root / "b.kdb", root / "c.kdb"
    write_episodes(a, [5, 9, 3, 7, 7])  # 31 frames
    write_episodes(b, [6, 4, 8], seed=1)  # 18
    write_episodes(c, [3, 12, 2, 5], seed=2)  # 22
    return str(a), str(b), str(c)


Build = Callable[[tuple[str, str, str], int, int | None, int, int], KinoIterDataset]
WINDOWS: dict[str, Any] = {"obs_horizon": 2, "action_horizon": 3, "image_key": False}

CASES: dict[str, Build] = {
    "one file, shuffled": lambda f, seed, bs, r, w: KinoIterDataset(
        f[0], seed=seed, batch_size=bs, rank=r, world_size=w, **WINDOWS
    ),
    "one file, in file order": lambda f, seed, bs, r, w: KinoIterDataset(
        f[0], seed=seed, shuffle=False, batch_size=bs, rank=r, world_size=w, **WINDOWS
    ),
    "files, kql filter": lambda f, seed, bs, r, w: KinoIterDataset(
        [f[0], f[1], f[2]],
        kql_filter="num_frames > 4",
        seed=seed,
        batch_size=bs,
        rank=r,
        world_size=w,
        **WINDOWS,
    ),
    "mixture 3:1": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 3, f[1]: 1}, seed=seed, batch_size=bs, rank=r, world_size=w, **WINDOWS
    ),
    "mixture by frame, many passes": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 1, f[1]: 2, f[2]: 5},
        seed=seed,
        weight_by="frame",
        num_samples=173,
        batch_size=bs,
        rank=r,
        world_size=w,
        **WINDOWS,
    ),
    "mixture, fewer draws than samples": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 2, f[2]: 1}, seed=seed, num_samples=23, batch_size=bs, rank=r, world_size=w, **WINDOWS
    ),
    "mixture, filters": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 1, f[1]: 1, f[2]: 2},
        seed=seed,
        filters={f[0]: "num_frames >= 7", f[2]: "num_frames < 5"},
        num_samples=97,
        batch_size=bs,
        rank=r,
        world_size=w,
        **WINDOWS,
    ),
    "mixture, a source drawn nothing": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 1000, f[1]: 0.001, f[2]: 300},
        seed=seed,
        num_samples=50,
        batch_size=bs,
        rank=r,
        world_size=w,
        **WINDOWS,
    ),
    "mixture of a file twice, kql filter": lambda f, seed, bs, r, w: KinoIterDataset(
        kinodb.Mixture([(f[0], 1), (f[0], 2, "num_frames > 5"), (f[1], 1)], seed=seed),
        kql_filter="num_frames != 9",
        seed=seed,
        num_samples=61,
        batch_size=bs,
        rank=r,
        world_size=w,
        **WINDOWS,
    ),
}
EPISODE_CASES: dict[str, Build] = {  # whole episodes: no batches
    "episodes of files": lambda f, seed, bs, r, w: KinoIterDataset(
        [f[0], f[2]], seed=seed, rank=r, world_size=w, image_key=False
    ),
    "episodes of a mixture": lambda f, seed, bs, r, w: from_mixture(
        {f[0]: 1, f[1]: 3, f[2]: 1}, seed=seed, num_samples=29, rank=r, world_size=w, image_key=False
    ),
}


def padded_order(ds: KinoIterDataset, epoch: int, world: int) -> np.ndarray:
    """The reference epoch order extended by its first samples to a multiple of ``world``
    (as DistributedSampler pads), so that every rank reads as many."""
    order = reference.epoch_order(ds, epoch)
    return np.resize(order, -(-len(order) // world) * world)


def reference_worker_order(
    ds: KinoIterDataset, epoch: int, rank: int, world: int, wid: int, nw: int
) -> np.ndarray:
    """`reference.worker_order` over `padded_order`: the rank's every world-th sample, dealt
    out to its workers in batches, in turn."""
    order = padded_order(ds, epoch, world)[rank::world]
    size = ds.batch_size or 1
    runs = [order[s : s + size] for s in range(wid * size, len(order), nw * size)]
    return np.concatenate(runs) if runs else np.empty(0, dtype=np.int64)


@pytest.mark.parametrize("case", [*CASES, *EPISODE_CASES])
def test_worker_orders_are_the_workers_parts_of_the_epoch_order(
    files: tuple[str, str, str], case: str
) -> None:
    build = CASES.get(case) or EPISODE_CASES[case]
    batch_sizes = [None, 1, 4, 5] if case in CASES else [None]
    checked = 0
    for seed in SEEDS:
        for batch_size in batch_sizes:
            for rank, world in RANKS:
                ds = build(files, seed, batch_size, rank, world)
                for epoch in EPOCHS:
                    whole = reference.epoch_order(ds, epoch)
                    got_whole = ds.epoch_order(epoch)
                    assert got_whole.dtype == np.int64 and np.array_equal(got_whole, whole)
                    for nw in (1, 2, 3):
                        parts = []
                        for wid in range(nw):
                            want = reference_worker_order(ds, epoch, rank, world, wid, nw)
                            if len(whole) % world == 0:  # nothing to pad: the earlier order itself
                                assert np.array_equal(
                                    want, reference.worker_order(ds, epoch, rank, world, wid, nw)
                                )
                            got = ds.worker_order(epoch, worker=wid, num_workers=nw)
                            assert got.dtype == np.int64
                            assert np.array_equal(got, want), (seed, batch_size, rank, world, epoch, wid, nw)
                            parts.append(got)
                            checked += 1
                        # the workers together read the rank's share once
                        share = padded_order(ds, epoch, world)[rank::world]
                        assert sorted(np.concatenate(parts).tolist()) == sorted(share.tolist())
                        assert len(share) == -(-len(whole) // world)  # as many on every rank
    assert checked == len(SEEDS) * len(batch_sizes) * len(RANKS) * len(EPOCHS) * 6


def test_the_current_epoch_is_the_default(files: tuple[str, str, str]) -> None:
    ds = from_mixture({files[0]: 3, files[1]: 1}, seed=4, batch_size=3, rank=1, world_size=2, **WINDOWS)
    ds.set_epoch(2)
    assert np.array_equal(ds.worker_order(worker=1, num_workers=2), reference_worker_order(ds, 2, 1, 2, 1, 2))
    assert np.array_equal(ds.epoch_order(), reference.epoch_order(ds, 2))
    with pytest.raises(ValueError, match="0 <= worker < num_workers"):
        ds.worker_order(worker=2, num_workers=2)


def _flat(ds: KinoIterDataset, batches: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    return [
        (int(s), int(e), int(t))
        for b in batches
        for s, e, t in zip(
            b["source"].reshape(-1), b["episode_index"].reshape(-1), b["frame_index"].reshape(-1), strict=True
        )
    ]


@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_rank_of_a_mixture_reads_its_share_of_the_epoch_in_order(
    files: tuple[str, str, str], batch_size: int | None
) -> None:
    ds = from_mixture({files[0]: 3, files[1]: 1, files[2]: 2}, seed=3, num_samples=150, batch_size=batch_size,
                      rank=1, world_size=3, filters={files[2]: "num_frames > 2"}, **WINDOWS)  # fmt: skip
    ds.set_epoch(1)
    got = _flat(ds, list(DataLoader(ds, batch_size=None, num_workers=2)))
    share = reference.epoch_order(ds, 1)[1::3]
    inner: Any = ds._inner
    want = _flat(ds, [inner[i] for i in share.tolist()])
    assert len(got) == 50 and got == want


def test_shuffled_draws_the_same_permutation_in_the_smallest_dtype() -> None:
    for n in (0, 1, 2, 1000, 65536, 65537, 200_003):
        got = shuffled(n, [9, 2, 1 << 20])
        assert got.dtype == index_dtype(n) and got.dtype.itemsize <= 4
        assert np.array_equal(got, np.random.default_rng([9, 2, 1 << 20]).permutation(n))
    assert index_dtype(1 << 16) == np.uint16 and index_dtype((1 << 16) + 1) == np.uint32
    assert index_dtype(1 << 32) == np.uint32 and index_dtype((1 << 32) + 1) == np.int64


@pytest.mark.parametrize("size", [0, 1, 7, 64, 1001])
def test_worker_positions_deal_the_rank_share_in_runs(size: int) -> None:
    for world in (1, 2, 5):
        for rank in range(world):
            share = np.arange(size)[rank::world]
            for nw in (1, 2, 3):
                for batch in (1, 4):
                    got = [worker_positions(size, rank, world, w, nw, batch) for w in range(nw)]
                    want = [
                        np.concatenate(
                            [share[s : s + batch] for s in range(w * batch, len(share), nw * batch)] or [[]]
                        )
                        for w in range(nw)
                    ]
                    assert all(
                        np.array_equal(g, x) and g.dtype == np.int64 for g, x in zip(got, want, strict=True)
                    )


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two files of 150,000 and 90,000 one-frame-window samples (tiny arrays)."""
    root = tmp_path_factory.mktemp("large")
    paths = (root / "a.kdb", root / "b.kdb")
    zeros = np.zeros((1000, 1), np.float32)
    for path, episodes in zip(paths, (150, 90), strict=True):
        with kinodb.Writer(path) as w:
            for _ in range(episodes):
                w.add_episode(actions=zeros)
    return str(paths[0]), str(paths[1])


@pytest.mark.parametrize("mixture", [False, True])
def test_a_worker_keeps_no_copy_of_the_whole_epoch(large: tuple[str, str], mixture: bool) -> None:
    # Rank 3 of 8, worker 1 of 2 reads 1/16 of an epoch of 240,000 samples. Building its part
    # holds one 4-byte shuffle of the epoch at a time, where building the whole epoch's int64
    # order first and slicing it took some 30 bytes per sample.
    options: dict[str, Any] = {"obs_horizon": 1, "action_horizon": 1, "image_key": False, "batch_size": 256,
                               "rank": 3, "world_size": 8}  # fmt: skip
    if mixture:
        ds = from_mixture({large[0]: 3, large[1]: 1}, seed=0, **options)
    else:
        ds = KinoIterDataset(list(large), seed=0, **options)
    n = 240_000
    assert ds._epoch_size() == n
    ds.worker_order(worker=1, num_workers=2)  # anything computed once per dataset, computed
    tracemalloc.start()
    try:
        mine = ds.worker_order(worker=1, num_workers=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(mine) == 58 * 256 + 48  # every other batch of the rank's 30,000 samples, and its last
    assert peak < 6 * n, f"{peak / n:.2f} bytes per epoch sample"
    assert np.array_equal(mine, reference.worker_order(ds, 0, 3, 8, 1, 2))  # 240,000 ranks evenly
