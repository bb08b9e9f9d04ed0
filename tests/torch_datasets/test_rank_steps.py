"""Every rank takes the same number of steps per epoch: KinoIterDataset pads an epoch that
does not divide by the world size (as DistributedSampler does), SchemaBatchSampler splits
its batches by rank; ``num_samples`` sets the epoch of a file or a list too."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from _factories import LOWDIM_LENGTHS as LENGTHS
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, SchemaBatchSampler


def _two_schemas(tmp_path: Path) -> kinodb.Mixture:
    """17 windows of (state 3, action 2) and 14 of (state 5, action 4)."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 9, 3])
    write_episodes(b, [7, 7], state_dim=5, action_dim=4, seed=1)
    return kinodb.Mixture({str(a): 1, str(b): 1}, seed=0)


def _windows(batch: dict[str, Any]) -> list[tuple[int, int, int]]:
    return list(
        zip(
            batch["source"].reshape(-1).tolist(),
            batch["episode_index"].reshape(-1).tolist(),
            batch["frame_index"].reshape(-1).tolist(),
            strict=True,
        )
    )


def _ddp_rank(rank: int, world: int, store: str, path: str, root: str, out: str) -> None:
    """One rank of a gloo group: one all-reduce per step, as DDP's backward makes."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=30))  # fmt: skip
    try:
        steps = torch.zeros(1)
        stream = KinoIterDataset(path, obs_horizon=1, action_horizon=1, image_key=False, batch_size=5, seed=0)
        seen: list[Any] = []
        for batch in DataLoader(stream, batch_size=None, num_workers=2):
            torch.distributed.all_reduce(steps)
            seen += _windows(batch)
        ds = KinoFrameDataset(_two_schemas(Path(root)), obs_horizon=1, action_horizon=2, image_key=False)
        sampler = SchemaBatchSampler(ds, 4, seed=0)  # the rank from the process group
        batches = []
        for idx, batch in zip(sampler, DataLoader(ds, batch_sampler=sampler), strict=True):
            torch.distributed.all_reduce(steps)
            batches.append(idx)
            assert batch["state"].shape[0] == len(idx)
        with open(f"{out}.{rank}", "w") as fh:
            json.dump({"len": len(stream), "seen": seen, "sampler_len": len(sampler), "batches": batches,
                       "order": stream.epoch_order().tolist()}, fh)  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.integration
def test_ranks_of_a_process_group_take_the_same_number_of_steps(tmp_path: Path, lowdim: Path) -> None:
    # 31 windows in batches of 5 over 2 ranks: 16 samples (4 batches) each, where a split
    # without padding gave rank 1 only 15 (3 batches), and its fourth all-reduce no partner.
    import torch.multiprocessing as mp

    out, root = str(tmp_path / "rank"), tmp_path / "schemas"
    root.mkdir()
    args = (2, str(tmp_path / "store"), str(lowdim), str(root), out)
    mp.start_processes(_ddp_rank, args=args, nprocs=2, start_method="fork")
    got = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    assert [g["len"] for g in got] == [4, 4] and [len(g["seen"]) for g in got] == [16, 16]
    seen = [[tuple(k) for k in g["seen"]] for g in got]
    assert len(set(seen[0]) | set(seen[1])) == 31  # every window, one of them twice: the epoch's first
    starts = np.cumsum([0, *LENGTHS])
    first = got[0]["order"][0]
    assert [int(starts[e]) + t for _, e, t in seen[1]][-1] == first
    # SchemaBatchSampler: 5 + 4 batches over 2 ranks, 5 each (the epoch's first batch twice)
    assert [g["sampler_len"] for g in got] == [5, 5] and [len(g["batches"]) for g in got] == [5, 5]
    batches = [[tuple(b) for b in g["batches"]] for g in got]
    assert len(set(batches[0]) & set(batches[1])) == 1
    assert sorted(i for b in set(batches[0]) | set(batches[1]) for i in b) == list(range(31))


@pytest.mark.parametrize("world", [2, 3, 4, 32, 40])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_every_rank_yields_as_many_items_and_the_padding_repeats_the_epochs_first(
    lowdim: Path, world: int, batch_size: int | None
) -> None:
    per_rank = []
    for rank in range(world):
        ds = KinoIterDataset(lowdim, obs_horizon=1, action_horizon=2, image_key=False, batch_size=batch_size,
                             seed=4, rank=rank, world_size=world)  # fmt: skip
        ds.set_epoch(2)
        items = list(DataLoader(ds, batch_size=None if batch_size else 1, num_workers=0))
        assert len(items) == len(ds)
        per_rank.append(ds.worker_order())
    share = -(-31 // world)
    assert {len(p) for p in per_rank} == {share}
    order = KinoIterDataset(lowdim, obs_horizon=1, action_horizon=2, seed=4).epoch_order(2)
    padded = np.resize(order, share * world)  # the epoch, then its first samples again
    for rank, got in enumerate(per_rank):
        assert np.array_equal(got, padded[rank::world])
    counts = np.bincount(np.concatenate(per_rank), minlength=31)
    assert counts.min() >= 1 and counts.sum() == share * world  # all read; the padding only repeats


def test_an_epoch_that_divides_is_read_once_across_ranks_and_workers(tmp_path: Path) -> None:
    path = tmp_path / "even.kdb"
    write_episodes(path, [6, 10, 8])  # 24 windows
    seen = []
    for rank in range(3):
        ds = KinoIterDataset(path, obs_horizon=1, action_horizon=1, image_key=False, batch_size=3, seed=1,
                             rank=rank, world_size=3)  # fmt: skip
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert len(batches) == len(ds) == 3
        seen += [k for b in batches for k in _windows(b)]
    assert len(seen) == len(set(seen)) == 24


def test_num_samples_of_a_file_draws_without_replacement_across_epochs(lowdim: Path) -> None:
    ds = KinoIterDataset(lowdim, obs_horizon=1, action_horizon=1, image_key=False, num_samples=12, seed=3)
    assert len(ds) == 12
    orders = [ds.epoch_order(e) for e in range(3)]
    assert [len(o) for o in orders] == [12, 12, 12]
    assert len(set(np.concatenate(orders[:2]).tolist())) == 24  # no repeat before all 31 are drawn
    assert set(np.concatenate(orders).tolist()) == set(range(31))
    ds.set_epoch(1)
    got = [k for b in DataLoader(ds, batch_size=5, num_workers=2) for k in _windows(b)]
    starts = np.cumsum([0, *LENGTHS])
    assert sorted(int(starts[e]) + t for _, e, t in got) == sorted(orders[1].tolist())
    in_order = KinoIterDataset(lowdim, action_horizon=1, image_key=False, num_samples=12, shuffle=False)
    assert [in_order.epoch_order(e).tolist() for e in (0, 2)] == [
        list(range(12)),
        [*range(24, 31), *range(5)],  # on from where epoch 1 stopped, round the end
    ]


def test_num_samples_of_a_list_splits_over_ranks_and_batches(tmp_path: Path, lowdim: Path) -> None:
    other = tmp_path / "other.kdb"
    write_episodes(other, [4, 4], seed=2)
    options: dict[str, Any] = dict(obs_horizon=1, action_horizon=1, image_key=False, num_samples=20, seed=0)
    whole = KinoIterDataset([str(lowdim), str(other)], **options).epoch_order()
    assert len(whole) == 20 and len(set(whole.tolist())) == 20 and whole.max() < 39
    parts = []
    for rank in range(3):  # 20 over 3 ranks: 7 each, the epoch's first draw read again
        ds = KinoIterDataset([str(lowdim), str(other)], batch_size=3, rank=rank, world_size=3, **options)
        assert len(ds) == 3
        parts.append(np.concatenate([ds.worker_order(worker=w, num_workers=2) for w in range(2)]))
    assert [len(p) for p in parts] == [7, 7, 7]
    assert sorted(np.concatenate(parts).tolist()) == sorted([*whole.tolist(), whole[0]])
