"""Datasets over files whose statistics change while they are read: re-opened workers read
the commit the dataset read (statistics stored or episodes appended since change nothing), a
normalising dataset refuses a file replaced by one of other numbers, and the normalisers the
datasets apply are there to invert a policy's output."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from kinodb.stats import Normalizer, compute_stats, write_stats
from kinodb.torch import KinoFrameDataset, KinoIterDataset, KinoMapDataset


def _write(path: Path, lengths: list[int], *, seed: int = 0, mode: str = "w", **writer: Any) -> None:
    rng = np.random.default_rng(seed)
    with kinodb.Writer(path, mode=mode, **writer) as w:
        for T in lengths:
            w.add_episode(actions=rng.normal(2.0, 3.0, (T, 2)).astype(np.float32),
                          states=rng.normal(-1.0, 0.5, (T, 3)).astype(np.float32),
                          rewards=rng.random(T).astype(np.float32), fps=10.0)  # fmt: skip


def _item(ds: Any, i: int = 2) -> dict[str, Any]:
    return next(iter(ds)) if isinstance(ds, KinoIterDataset) else ds[i]


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("action", "state"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "d.kdb"
    _write(p, [6, 9, 5])
    return p


def _made(path: Path, **options: Any) -> list[Any]:
    return [
        KinoFrameDataset(path, obs_horizon=2, action_horizon=3, image_key=False, **options),
        KinoMapDataset(path, image_key=False, **options),
        KinoIterDataset(path, action_horizon=2, image_key=False, shuffle=False, **options),
    ]


def test_statistics_stored_under_a_live_dataset_leave_reopened_workers_reading(path: Path) -> None:
    made = _made(path)
    before = [_item(pickle.loads(pickle.dumps(ds))) for ds in made]
    blobs = [pickle.dumps(ds) for ds in made]  # what spawned workers (or the next epoch's) get
    write_stats(path, compute_stats(path, arrays=["rewards"]))  # `kino stats --arrays rewards`
    write_stats(path, compute_stats(path))  # and `kino stats` after it: commit 3
    for blob, was in zip(blobs, before, strict=True):
        _same(_item(pickle.loads(blob)), was)


@pytest.mark.integration
def test_statistics_stored_between_epochs_of_spawned_workers(path: Path) -> None:
    ds = KinoFrameDataset(path, action_horizon=4, image_key=False)
    loader = DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    first = [b["action"] for b in loader]
    write_stats(path, compute_stats(path))  # `kino stats` in another shell, mid-training
    second = [b["action"] for b in loader]
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_episodes_appended_after_statistics_are_read_as_the_dataset_read_them(path: Path) -> None:
    made = _made(path)
    blobs = [pickle.dumps(ds) for ds in made]
    write_stats(path, compute_stats(path))  # commit 2: statistics only
    _write(path, [4], seed=1, mode="a")  # commit 3: an episode more
    for blob, ds in zip(blobs, made, strict=True):
        again = pickle.loads(blob)  # a spawned worker's copy: commit 1, as the dataset read it
        assert len(again) == len(ds)
        _same(_item(again), _item(ds))
        _same(_item(again, -1), _item(ds, -1))


def _replace_with_statistics(path: Path, stats: dict[str, Any] | None) -> None:
    """Replace ``path`` by a copy with the same episodes and ``stats`` (None: none stored)."""
    copy = path.with_name("copy.kdb")
    shutil.copyfile(path, copy)
    if stats is None:
        with kinodb.Writer(copy, mode="a") as w:
            w.stats = None
    else:
        write_stats(copy, stats)
    os.replace(copy, path)


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_statistics_stored_under_a_normalising_dataset_leave_its_numbers(path: Path, mode: str) -> None:
    write_stats(path, compute_stats(path))
    made = _made(path, normalize=mode)
    blobs = [pickle.dumps(ds) for ds in made]
    stats = compute_stats(path)
    stats["arrays"]["actions"]["mean"] = stats["arrays"]["actions"]["mean"] + 0.5  # other numbers
    stats["arrays"]["actions"]["min"] = stats["arrays"]["actions"]["min"] - 1.0
    write_stats(path, stats)  # in place, mid-training: the workers read the commit the dataset read
    for blob, ds in zip(blobs, made, strict=True):
        _same(_item(pickle.loads(blob)), _item(ds))


def test_a_file_rewritten_with_as_many_episodes_is_still_refused(path: Path) -> None:
    blobs = [pickle.dumps(ds) for ds in _made(path)]
    _write(path, [6, 9, 5], seed=7)  # other episodes, same counts
    for blob in blobs:
        with pytest.raises(kinodb.KinodbError, match=r"d\.kdb changed since this dataset was made"):
            _item(pickle.loads(blob))


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_normalising_datasets_accept_statistics_that_map_the_same(path: Path, mode: str) -> None:
    write_stats(path, compute_stats(path))
    made = _made(path, normalize=mode)
    blobs = [pickle.dumps(ds) for ds in made]
    write_stats(path, compute_stats(path, arrays=["rewards"]))  # states and actions kept as they were
    write_stats(path, compute_stats(path))  # computed again: the same numbers
    for blob, ds in zip(blobs, made, strict=True):
        _same(_item(pickle.loads(blob)), _item(ds))


def test_normalising_datasets_refuse_a_replaced_file_of_other_statistics(path: Path) -> None:
    write_stats(path, compute_stats(path))
    blobs = [pickle.dumps(ds) for ds in _made(path, normalize="mean_std")]
    stats = compute_stats(path)
    stats["arrays"]["actions"]["mean"] = stats["arrays"]["actions"]["mean"] + 0.5  # other numbers
    _replace_with_statistics(path, stats)
    for blob in blobs:
        with pytest.raises(kinodb.KinodbError) as err:
            _item(pickle.loads(blob))
        msg = str(err.value)
        assert "the statistics normalize='mean_std' uses changed since this dataset was made" in msg
        assert "d.kdb: action" in msg and "d.kdb: state" not in msg
        assert "make the dataset (and the DataLoader) again" in msg


def test_normalising_datasets_refuse_a_replaced_file_without_statistics(path: Path) -> None:
    write_stats(path, compute_stats(path))
    blobs = [pickle.dumps(ds) for ds in _made(path, normalize="min_max")]
    _replace_with_statistics(path, None)
    for blob in blobs:
        with pytest.raises(kinodb.KinodbError, match=r"statistics of .*d\.kdb changed since this dataset was made, "
                                                     r"and the dataset's normalize='min_max' cannot use them now "
                                                     r"\(no statistics stored"):  # fmt: skip
            _item(pickle.loads(blob))


def test_datasets_give_the_normalizers_they_apply(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [6, 9], seed=1)
    _write(b, [7], seed=2)
    for p in (a, b):
        write_stats(p, compute_stats(p))
    mix = kinodb.Mixture({str(a): 1.0, str(b): 1.0})
    frames = KinoFrameDataset(mix, action_horizon=3, image_key=False, normalize="mean_std")
    episodes = KinoMapDataset([str(a), str(b)], image_key=False, normalize="mean_std")
    assert KinoFrameDataset(a, image_key=False).normalizers is None
    for ds in (frames, episodes, pickle.loads(pickle.dumps(frames))):
        norms = ds.normalizers
        assert norms is not None and sorted(norms) == [0, 1] and sorted(norms[1]) == ["action", "state"]
        with kinodb.open(b) as db:
            want = Normalizer.from_stats(db.stats()["arrays"]["actions"], "mean_std")
        np.testing.assert_array_equal(norms[1]["action"].center, want.center)
        np.testing.assert_array_equal(norms[1]["action"].scale, want.scale)
    item = frames[len(frames) - 1]  # the last sample: from b
    assert int(item["source"]) == 1
    with kinodb.open(b) as db:
        raw = db.read_array(0, "actions")[int(item["frame_index"]) :][:3]
    back = frames.normalizers[1]["action"].invert(item["action"])  # type: ignore[index]
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back[: len(raw)], torch.from_numpy(np.array(raw)), rtol=1e-6, atol=1e-6)


def test_a_feature_without_finite_values_is_named_with_its_component(tmp_path: Path) -> None:
    p = tmp_path / "nan.kdb"
    rng = np.random.default_rng(3)
    schema = {"states": {"components": {"eef_pos": [0, 2], "gripper": [2, 4]},
                         "names": ["x", "y", "left_finger", "right_finger"]}}  # fmt: skip
    with kinodb.Writer(p, schema=schema) as w:
        s = rng.normal(size=(10, 4)).astype(np.float32)
        s[:, 3] = np.nan  # a sensor slot that never reported
        w.add_episode(actions=rng.normal(size=(10, 2)).astype(np.float32), states=s)
    write_stats(p, compute_stats(p))
    for make in (lambda: KinoFrameDataset(p, image_key=False, normalize="mean_std"),
                 lambda: KinoMapDataset(p, image_key=False, normalize="min_max")):  # fmt: skip
        with pytest.raises(kinodb.KinodbError) as err:
            make()
        msg = str(err.value)
        assert msg.startswith(f"{p}: normalize=")
        assert "cannot normalise states: feature 3 ('right_finger', gripper[1]) had no finite value" in msg
        assert "repair or drop those values" in msg and "normalize=None" in msg
    KinoFrameDataset(p, image_key=False)  # without normalising, the file reads
