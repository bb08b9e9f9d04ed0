"""KinoIterDataset and from_mixture through real DataLoaders: ranks, workers, epochs, lengths, schemas."""

from __future__ import annotations

import copy
import io
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from _factories import LOWDIM_LENGTHS as LENGTHS
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, from_mixture, pad_collate


def _keys(batches: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for b in batches:
        source = b["source"].reshape(-1).tolist()
        out += zip(
            source,
            b["episode_index"].reshape(-1).tolist(),
            b["frame_index"].reshape(-1).tolist(),
            strict=True,
        )
    return out


def _ddp_rank(rank: int, world: int, store: str, path: str, out: str) -> None:
    """One rank of a 2-process gloo group: a spawn-worker DataLoader over the stream."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ds = KinoIterDataset(path, obs_horizon=1, action_horizon=1, image_key=False, batch_size=4, seed=0)
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        batches = list(loader)
        with open(f"{out}.{rank}", "w") as fh:
            json.dump({"len": len(ds), "batches": len(batches), "keys": _keys(batches),
                       "order": ds.epoch_order().tolist()}, fh)  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.integration
def test_ranks_of_a_process_group_split_the_epoch_with_spawned_workers(tmp_path: Path, lowdim: Path) -> None:
    # Spawned DataLoader workers have no process group: the rank is taken in the rank's
    # own process, when the dataset is pickled for them.
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    args = (2, str(tmp_path / "store"), str(lowdim), out)
    mp.start_processes(_ddp_rank, args=args, nprocs=2, start_method="fork")  # the workers are spawned
    got = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    keys = [{tuple(k) for k in g["keys"]} for g in got]
    # 31 samples over 2 ranks: 16 each, the epoch's first sample read again by rank 1
    assert [len(g["keys"]) for g in got] == [16, 16]
    assert keys[0] & keys[1] == {tuple(got[0]["keys"][0])} and len(keys[0] | keys[1]) == 31
    assert [g["len"] for g in got] == [g["batches"] for g in got] == [4, 4]
    starts = np.cumsum([0, *LENGTHS])
    for rank, g in enumerate(got):  # in the rank's order of the epoch (extended by its first sample)
        padded = [*g["order"], g["order"][0]]
        assert [int(starts[e]) + t for _, e, t in g["keys"]] == padded[rank::2]


def _torch_roundtrip(ds: Any) -> Any:
    buf = io.BytesIO()
    torch.save(ds, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "original": lambda ds: ds,
    "deepcopy": copy.deepcopy,
    "pickle": lambda ds: pickle.loads(pickle.dumps(ds)),
    "torch.save": _torch_roundtrip,
}


@pytest.mark.parametrize("made", list(COPIES))
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(lowdim: Path, context: str, made: str) -> None:
    """Also for a copy of the dataset (a wrapper's deepcopy, torch.save, a pickle sent to
    a job): its epoch is shared memory of its own, which forked workers see."""
    ds = COPIES[made](
        KinoIterDataset(lowdim, obs_horizon=2, action_horizon=3, image_key=False, batch_size=4, seed=5)
    )
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                        multiprocessing_context=context)  # fmt: skip
    starts = np.cumsum([0, *LENGTHS])
    orders = []
    for epoch in (0, 1, 2, 1):
        ds.set_epoch(epoch)
        seen = [int(starts[e]) + t for _, e, t in _keys(list(loader))]
        assert seen == ds.epoch_order(epoch).tolist()  # the epoch asked for, in order
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2] and orders[1] == orders[3]
    assert ds.epoch == 1


def test_set_epoch_reaches_persistent_workers_of_a_mixture(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [6, 6])
    write_episodes(b, [5, 8], seed=1)
    ds = from_mixture({str(a): 1, str(b): 3}, seed=2, obs_horizon=1, action_horizon=2, batch_size=5,
                      num_samples=40, image_key=False)  # fmt: skip
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    by_epoch = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        want = _keys(list(DataLoader(ds, batch_size=None)))  # in this process
        got = _keys(list(loader))
        assert got == want and len(got) == 40
        by_epoch.append(got)
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]


def test_a_dataset_saved_by_one_rank_reads_the_whole_epoch_where_no_group_runs(lowdim: Path) -> None:
    """The rank and world size a process group gave where the dataset was pickled reach its
    DataLoader workers, not a job that loads the dataset later without a process group."""
    ds = KinoIterDataset(lowdim, obs_horizon=2, action_horizon=3, image_key=False, batch_size=4, seed=5)
    whole = len(ds)
    ds._dist = (1, 2)  # what __getstate__ records in rank 1 of 2 (see test_ranks_of_a_process_group...)
    loaded = _torch_roundtrip(ds)
    assert loaded._rank_world() == (0, 1) and len(loaded) == whole
    assert len(list(DataLoader(loaded, batch_size=None))) == whole


@pytest.mark.parametrize("horizons", [{"obs_horizon": 0}, {"action_horizon": 0}, {"obs_horizon": False}])
def test_streams_refuse_zero_horizons(lowdim: Path, horizons: dict[str, Any]) -> None:
    ((name, value),) = horizons.items()
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {value}"):
        KinoIterDataset(lowdim, image_key=False, **horizons)
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {value}"):
        from_mixture({str(lowdim): 1}, image_key=False, **horizons)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("rank", [None, 0, 1])
def test_len_is_what_the_loader_yields(lowdim: Path, num_workers: int, rank: int | None) -> None:
    world = None if rank is None else 2
    share = 31 if rank is None else 16  # 31 samples over 2 ranks: the first one twice
    for batch_size, want in ((12, -(-share // 12)), (4, -(-share // 4)), (None, share)):
        ds = KinoIterDataset(lowdim, obs_horizon=2, action_horizon=3, image_key=False, batch_size=batch_size,
                             rank=rank, world_size=world)  # fmt: skip
        loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = list(loader)
        assert not [w for w in caught if "Length of IterableDataset" in str(w.message)]  # more than len
        assert len(ds) == len(loader) == len(items) == want
        if batch_size is not None:  # full batches, then one partial batch at the end
            sizes = [len(b["frame_index"]) for b in items]
            assert sizes[:-1] == [batch_size] * (want - 1) and 0 < sizes[-1] <= batch_size
            assert sum(sizes) == share


def _mixed_schemas(tmp_path: Path) -> tuple[Path, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """A float32 robot (state 5, action 3) and a float64 one (state 2, action 4)."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    eps_a = write_episodes(a, [6, 7], state_dim=5, action_dim=3)
    rng = np.random.default_rng(3)
    eps_b = []
    with kinodb.Writer(b) as w:
        for T in (5, 8):
            ep = {"states": rng.normal(size=(T, 2)), "actions": rng.normal(size=(T, 4)), "fps": 10.0}
            w.add_episode(**ep)
            eps_b.append(ep)
    return a, b, eps_a, eps_b


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_of_a_mixed_schema_stream_all_have_one_layout(
    tmp_path: Path, batch_size: int, num_workers: int
) -> None:
    a, b, eps_a, eps_b = _mixed_schemas(tmp_path)
    ds = from_mixture({str(a): 1, str(b): 1}, seed=0, obs_horizon=2, action_horizon=3, batch_size=batch_size,
                      num_samples=40, image_key=False)  # fmt: skip
    batches = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
    sources = [set(b_["source"].tolist()) for b_ in batches]
    assert {0} in sources and {1} in sources  # batches of one source, of each
    layout = {k: (tuple(v.shape[1:]), v.dtype) for k, v in batches[0].items() if isinstance(v, torch.Tensor)}
    assert layout["state"] == ((2, 5), torch.float64) and layout["action"] == ((3, 4), torch.float64)
    assert layout["state_mask"] == ((2, 5), torch.bool) and layout["action_mask"] == ((3, 4), torch.bool)
    for batch in batches:
        assert {
            k: (tuple(v.shape[1:]), v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)
        } == layout
        assert set(batch) == set(batches[0])
        for n, (s, e, t) in enumerate(_keys([batch])):
            eps, width = (eps_a, (5, 3)) if s == 0 else (eps_b, (2, 4))
            want_s = eps[e]["states"][[max(t - 1, 0), t]]
            torch.testing.assert_close(batch["state"][n, :, : width[0]], torch.from_numpy(want_s).double())
            assert (
                batch["state_mask"][n, :, : width[0]].all()
                and not batch["state_mask"][n, :, width[0] :].any()
            )
            assert not batch["state"][n, :, width[0] :].any() and not batch["action"][n, :, width[1] :].any()
            assert (
                batch["action_mask"][n, :, : width[1]].all()
                and not batch["action_mask"][n, :, width[1] :].any()
            )


def test_pad_collate_pads_a_mixed_datasets_batches_to_its_widest_source(tmp_path: Path) -> None:
    a, b, _, _ = _mixed_schemas(tmp_path)
    ds = KinoFrameDataset(
        kinodb.Mixture({str(a): 1, str(b): 1}), obs_horizon=2, action_horizon=3, image_key=False
    )
    only_a, only_b, both = list(range(4)), list(range(13, 17)), [0, 14, 1, 15]
    loader = DataLoader(
        ds, batch_size=4, sampler=[*only_a, *only_b, *both], collate_fn=pad_collate, num_workers=1
    )
    got = list(loader)
    for batch in got:
        assert batch["state"].shape == (4, 2, 5) and batch["state"].dtype == torch.float64
        assert batch["action"].shape == (4, 3, 4) and batch["action_mask"].shape == (4, 3, 4)
    assert got[0]["source"].tolist() == [0] * 4 and got[1]["source"].tolist() == [1] * 4
    assert got[0]["state_mask"].all() and not got[0]["action_mask"][..., 3:].any()
    samples = pad_collate([ds[i] for i in only_b])  # items carry the dataset's widths: the widest source's
    assert samples["state"].shape == (4, 2, 5) and samples["state"].dtype == torch.float64
    torch.testing.assert_close(samples["state"], got[1]["state"])
    plain = pad_collate([dict(ds[i]) for i in only_b])  # dicts made anew: padded to the widest of the batch
    assert plain["state"].shape == (4, 2, 2)
    fixed = pad_collate([dict(ds[i]) for i in only_b], widths={"state": 5, "action": 4})
    assert fixed["state"].shape == (4, 2, 5) and fixed["action"].shape == (4, 3, 4)
    torch.testing.assert_close(fixed["state"], got[1]["state"])
    assert torch.equal(fixed["state_mask"], got[1]["state_mask"])


def test_a_single_schema_stream_keeps_its_plain_batches(lowdim: Path) -> None:
    ds = KinoIterDataset(
        lowdim, obs_horizon=2, action_horizon=3, image_key=False, batch_size=8, shuffle=False
    )
    (first, *_) = list(DataLoader(ds, batch_size=None))
    assert "state_mask" not in first and first["state"].dtype == torch.float32
