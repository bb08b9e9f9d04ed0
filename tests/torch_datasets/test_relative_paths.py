"""Datasets, mixtures and databases made from relative paths read the same files in a
process whose working directory differs (a DataLoader worker spawned after a ``chdir``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, KinoMapDataset, from_mixture


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``a/`` and ``b/``, each with its own ``data.kdb`` and ``more.kdb`` (other episodes in ``b``);
    the working directory is ``a``."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seed, lengths in ((a, 0, [5, 6, 4]), (b, 7, [9, 3])):
        folder.mkdir()
        write_episodes(folder / "data.kdb", lengths, seed=seed)
        write_episodes(folder / "more.kdb", [4, 4], seed=seed + 1)
    monkeypatch.chdir(a)
    return a, b


def _first_batch(ds: Any, batch_size: int | None, **loader: Any) -> dict[str, Any]:
    batch: dict[str, Any] = next(iter(DataLoader(ds, batch_size=batch_size, **loader)))
    return batch


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("state", "action"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_datasets_pickled_after_a_chdir_read_the_files_they_were_made_from(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = folders
    made = {
        "frames": (KinoFrameDataset("data.kdb", obs_horizon=2, image_key=False), 4),
        "list": (KinoFrameDataset(["data.kdb", "more.kdb"], obs_horizon=2, image_key=False), 4),
        "episodes": (KinoMapDataset("data.kdb", image_key=False), None),
        "stream": (KinoIterDataset("data.kdb", obs_horizon=2, image_key=False, batch_size=4, shuffle=False), None),
        "mixture": (from_mixture({"data.kdb": 1, "more.kdb": 1}, obs_horizon=2, image_key=False, batch_size=4), None),
        "database": (KinoFrameDataset(kinodb.open("data.kdb"), obs_horizon=2, image_key=False), 4),
    }  # fmt: skip
    want = {name: _first_batch(ds, size) for name, (ds, size) in made.items()}
    blobs = {name: pickle.dumps(ds) for name, (ds, _) in made.items()}
    monkeypatch.chdir(b)  # holds other files of the same names
    for name, (_, size) in made.items():
        _same(_first_batch(pickle.loads(blobs[name]), size), want[name])
    os.rename(b / "data.kdb", b / "gone.kdb")  # none of that name here: no FileNotFoundError either
    _same(_first_batch(pickle.loads(blobs["frames"]), 4), want["frames"])


def test_spawned_workers_started_after_a_chdir_read_the_files_the_dataset_was_made_from(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = folders
    frames = KinoFrameDataset("data.kdb", obs_horizon=2, image_key=False)
    mixed = from_mixture({"data.kdb": 1, "more.kdb": 1}, obs_horizon=2, image_key=False, batch_size=4)
    want = (_first_batch(frames, 4), _first_batch(mixed, None))
    monkeypatch.chdir(b)
    spawn = dict(num_workers=1, multiprocessing_context="spawn")
    _same(_first_batch(frames, 4, **spawn), want[0])
    _same(_first_batch(mixed, None, **spawn), want[1])


def test_a_database_pickles_by_its_absolute_path_and_keeps_the_path_given(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = folders
    with kinodb.open("data.kdb") as db:
        want = db.read_array(0, "actions")
        monkeypatch.chdir(b)  # pickled after the chdir: still the file it opened
        copy = pickle.loads(pickle.dumps(db))
        assert copy.path() == db.path() == "data.kdb"
        assert len(copy) == 3 and np.array_equal(copy.read_array(0, "actions"), want)
        copy.close()


def test_a_mixture_pickles_by_absolute_paths_and_keeps_the_paths_given(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = folders
    with kinodb.Mixture({"data.kdb": 2, "more.kdb": 1}, seed=3) as mix:
        monkeypatch.chdir(b)
        copy = pickle.loads(pickle.dumps(mix))
        assert copy.sources() == mix.sources()
        assert [s.path for s in copy.sources()] == ["data.kdb", "more.kdb"]
        assert [copy.database(i).path() for i in range(2)] == ["data.kdb", "more.kdb"]
        assert len(copy) == 5 and np.array_equal(copy.weighted_epoch(20), mix.weighted_epoch(20))
        assert np.array_equal(copy[0]["actions"], mix[0]["actions"])
        copy.close()
