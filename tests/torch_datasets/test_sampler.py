"""MixtureSampler: weighted epochs over a map-style dataset of a mixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, MixtureSampler


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[KinoFrameDataset, kinodb.Mixture, np.ndarray]:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [30, 40, 30])  # 100 windows
    write_episodes(b, [10, 10])  # 20 windows
    mix = kinodb.Mixture({str(a): 1, str(b): 3}, seed=0)
    ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=4)
    return ds, mix, np.asarray(ds.windows._starts)


def _source(idx: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    return np.searchsorted(bounds, idx, side="right") - 1


def test_epochs_follow_the_weights_exactly(mixed) -> None:
    ds, mix, bounds = mixed
    assert len(ds) == 120  # a plain shuffle would draw 100:20
    sampler = MixtureSampler(ds, num_samples=400, seed=5)
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler) == 400
    np.testing.assert_array_equal(np.bincount(_source(idx, bounds), minlength=2), mix.counts(400))  # 100:300
    small = idx[_source(idx, bounds) == 1]  # 300 draws of 20 windows: each exactly 15 times
    assert set(np.bincount(small - bounds[1]).tolist()) == {15}
    big = idx[_source(idx, bounds) == 0]  # 100 draws of 100 windows: each once
    assert sorted(big.tolist()) == list(range(100))


def test_no_window_repeats_before_its_source_is_drawn_through_across_epochs(mixed) -> None:
    ds, _, bounds = mixed
    sampler = MixtureSampler(ds, num_samples=80, seed=1)  # 20 draws of source 0 per epoch
    seen = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        idx = np.array(list(sampler))
        seen.extend(idx[_source(idx, bounds) == 0].tolist())
    assert sorted(seen) == list(range(100))  # 5 epochs x 20 = source 0's 100 windows, once each
    again = MixtureSampler(ds, num_samples=80, seed=1)
    again.set_epoch(3)
    sampler.set_epoch(3)
    assert list(again) == list(sampler)  # deterministic from (seed, epoch)
    sampler.set_epoch(4)
    assert list(again) != list(sampler)


def test_ranks_split_the_epoch(mixed) -> None:
    ds, _, _ = mixed
    whole = list(MixtureSampler(ds, num_samples=101, seed=2))
    parts = [list(MixtureSampler(ds, num_samples=101, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [34, 34, 34]  # as many on every rank: the epoch's first index twice
    assert sorted(i for p in parts for i in p) == sorted([*whole, whole[0]])
    even = [list(MixtureSampler(ds, num_samples=99, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for p in even for i in p) == sorted(MixtureSampler(ds, num_samples=99, seed=2))


def test_a_dataloader_with_workers_reads_the_weighted_epoch(mixed) -> None:
    ds, mix, _ = mixed
    sampler = MixtureSampler(ds, num_samples=64, seed=3)
    sources = [
        int(s) for b in DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2) for s in b["source"]
    ]
    np.testing.assert_array_equal(np.bincount(sources, minlength=2), mix.counts(64))


def test_errors(mixed, tmp_path: Path) -> None:
    ds, _, _ = mixed
    write_episodes(tmp_path / "one.kdb", [5])
    with pytest.raises(TypeError, match=r"over a kinodb\.Mixture, not over str"):
        MixtureSampler(KinoFrameDataset(str(tmp_path / "one.kdb")))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            MixtureSampler(ds, num_samples=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        MixtureSampler(ds, rank=3, world_size=3)


def test_a_source_a_filter_empties_keeps_its_place(tmp_path: Path) -> None:
    # Sample ids, per-source camera lists and the weighted draws all count the mixture's
    # sources, also when the dataset's filter leaves one of them empty.
    paths = [tmp_path / f"{n}.kdb" for n in ("ten", "twenty", "thirty")]
    for path, T in zip(paths, (10, 20, 30), strict=True):
        write_episodes(path, [T, T], cameras={f"cam{T}": (6, 8, 3)})
    mix = kinodb.Mixture({str(p): w for p, w in zip(paths, (1, 2, 3), strict=True)}, seed=0)
    with pytest.warns(
        UserWarning, match=r"mixture source 1 \(.*twenty\.kdb\) keeps no windows after the filters"
    ):
        ds = KinoFrameDataset(mix, kql_filter="num_frames != 20", image_key={"front": ["cam10", "cam20", "cam30"]},
                              normalize=False)  # fmt: skip
    assert len(ds) == 80 and ds.windows.counts_by_source().tolist() == [20, 0, 60]
    batch = next(iter(DataLoader(ds, batch_size=80)))
    assert np.bincount(batch["source"].numpy(), minlength=3).tolist() == [20, 0, 60]  # the mixture's ids
    assert batch["images"]["front"].shape == (80, 1, 3, 6, 8)
    advice = r"has a share of the draws; leave it out of the mixture, give it its own filter in the mixture"
    with pytest.raises(ValueError, match=rf"mixture source 1 \(.*twenty\.kdb\) keeps no windows .*{advice}"):
        MixtureSampler(ds)
    with pytest.raises(kinodb.MixtureError, match="weight must be a positive"):
        kinodb.Mixture({str(paths[1]): 0})  # so the advice is not "weight 0"
    from kinodb.torch import KinoIterDataset

    with pytest.raises(
        kinodb.KinodbError, match=rf"mixture source 1 \(.*twenty\.kdb\) keeps no samples .*{advice}"
    ):
        KinoIterDataset(  # refused when made, not when iterated
            mix, kql_filter="num_frames != 20", obs_horizon=1, action_horizon=2, image_key=False
        )
