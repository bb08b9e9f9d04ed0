"""Storing statistics: an append-safe index update, read back by `Database.stats`, stale after appends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb.errors import FormatError, KinodbError, UnsupportedVersionError, WriterError
from kinodb.kdb._layout import DATA_START
from kinodb.kdb.validate import validate
from kinodb.stats import compute_stats, stats_to_json, write_stats


@pytest.fixture
def dataset(make_kdb: Any) -> tuple[Path, list[dict[str, Any]]]:
    path, eps = make_kdb(5, T=12, extra_arrays={"force": (3,)}, cameras={"cam": (8, 8, 3)})
    return path, eps


def committed_end(path: Path) -> int:
    with kinodb.open(path) as db:
        return int(db._commit.end)


def test_stored_statistics_read_back_as_float64_arrays(dataset: tuple[Path, Any]) -> None:
    path, _ = dataset
    stats = compute_stats(path)
    write_stats(path, stats)
    with kinodb.open(path) as db:
        got = db.stats()
        raw = db.dataset_info()["stats"]
        assert db.metadata() == {}  # not inside the user's metadata
    assert got["version"] == 1 and got["num_frames"] == 60 and got["num_episodes"] == 5
    assert "T" in got["computed"] and "stale" not in got
    assert sorted(got["arrays"]) == ["actions", "force", "rewards", "states"]
    for name, entry in got["arrays"].items():
        for key in ("mean", "std", "min", "max", "q01", "q99"):
            value = entry[key]
            assert isinstance(value, np.ndarray) and value.dtype == np.float64, (name, key)
            np.testing.assert_array_equal(value, stats["arrays"][name][key])  # JSON keeps float64 exactly
        assert entry["count"] == 60 and entry["nonfinite"] == 0
    assert isinstance(raw["arrays"]["actions"]["mean"], list)
    assert got["skipped"] == stats["skipped"]


def test_storing_keeps_episodes_and_payload_bytes_and_the_file_validates(
    dataset: tuple[Path, Any], assert_episode: Any
) -> None:
    path, eps = dataset
    end = committed_end(path)
    before = path.read_bytes()
    write_stats(path, compute_stats(path))
    after = path.read_bytes()
    assert after[DATA_START:end] == before[DATA_START:end]  # only the index and commit record change
    assert validate(path).ok
    with kinodb.open(path) as db:
        assert len(db) == len(eps)
        for i, ep in enumerate(eps):
            assert_episode(db, i, ep)
    assert subprocess.run([sys.executable, "-m", "kinodb._cli.main", "validate", str(path)]).returncode == 0


def test_missing_statistics_raise_with_the_command_to_run(dataset: tuple[Path, Any]) -> None:
    path, _ = dataset
    with (
        kinodb.open(path) as db,
        pytest.raises(FormatError, match=r"no statistics stored in .*; run: kino stats"),
    ):
        db.stats()


def test_statistics_become_stale_after_an_append(dataset: tuple[Path, Any], make_episode: Any) -> None:
    path, _ = dataset
    write_stats(path, compute_stats(path))
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        w.add_episode(**make_episode(7, extra_arrays={"force": (3,)}, cameras={"cam": (8, 8, 3)}))
    with kinodb.open(path) as db:
        assert db.dataset_info()["stats"]["stale"] is True
        changed = r"the file changed after they were computed \(60 frames in 5 episodes then, 67 frames in 6 episodes now\)"
        with pytest.raises(FormatError, match=rf"stale: {changed}; run: kino stats"):
            db.stats()
        with pytest.warns(UserWarning, match="stale"):
            got = db.stats(allow_stale=True)
        assert got["stale"] is True and got["num_frames"] == 60
    write_stats(path, compute_stats(path))  # computing again clears it
    with kinodb.open(path) as db:
        assert "stale" not in db.dataset_info()["stats"]
        assert db.stats()["num_frames"] == 67


def test_an_append_without_episodes_keeps_statistics_fresh(dataset: tuple[Path, Any]) -> None:
    path, _ = dataset
    write_stats(path, compute_stats(path))
    with kinodb.Writer(path, mode="a") as w:
        w.metadata["note"] = "edited"
    with kinodb.open(path) as db, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert db.stats()["num_frames"] == 60


def test_statistics_of_a_changed_file_are_refused(dataset: tuple[Path, Any], make_episode: Any) -> None:
    path, _ = dataset
    stats = compute_stats(path)
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        w.add_episode(**make_episode(3, extra_arrays={"force": (3,)}, cameras={"cam": (8, 8, 3)}))
    end = committed_end(path)
    with pytest.raises(FormatError, match=r"63 frames in 6 episodes.*computed over 60 frames"):
        write_stats(path, stats)
    assert committed_end(path) == end and validate(path).ok
    with kinodb.open(path) as db, pytest.raises(FormatError, match="no statistics"):
        db.stats()


def test_writer_stats_property_validates_json(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "d.kdb") as w:
        w.add_episode(actions=np.zeros((2, 2), np.float32))
        assert w.stats is None
        with pytest.raises(WriterError, match="NaN"):
            w.stats = {"arrays": {"a": {"mean": [float("nan")]}}}
        w.stats = {"version": 1, "num_frames": 2, "num_episodes": 1, "arrays": {}}
        assert w.stats["num_frames"] == 2
    with kinodb.open(tmp_path / "d.kdb") as db:
        assert db.stats()["arrays"] == {}


def test_statistics_set_before_more_episodes_are_marked_stale(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "d.kdb") as w:
        w.add_episode(actions=np.zeros((2, 2), np.float32))
        w.stats = {"version": 1, "num_frames": 2, "num_episodes": 1, "arrays": {}}
        w.add_episode(actions=np.zeros((2, 2), np.float32))
    with kinodb.open(tmp_path / "d.kdb") as db:
        assert db.dataset_info()["stats"]["stale"] is True


def test_nan_statistics_are_stored_as_null(tmp_path: Path) -> None:
    path = tmp_path / "d.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.array([[1.0, np.nan], [3.0, np.nan]], np.float32))
    stats = compute_stats(path, arrays=["actions"])
    assert stats_to_json(stats)["arrays"]["actions"]["mean"] == [2.0, None]
    json.dumps(stats_to_json(stats), allow_nan=False)
    write_stats(path, stats)
    with kinodb.open(path) as db:
        mean = db.stats()["arrays"]["actions"]["mean"]
    assert mean[0] == 2.0 and np.isnan(mean[1])


def test_legacy_files_have_no_statistics_and_cannot_store_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([random_episode(rng, 4, 2, 2)]))
    with kinodb.open(path) as db, pytest.raises(UnsupportedVersionError, match="kino upgrade"):
        db.stats()
    stats = compute_stats(path)
    with pytest.raises(FormatError, match="kino upgrade"):
        write_stats(path, stats)


def test_a_missing_file_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_stats(tmp_path / "missing.kdb", {"num_frames": 0, "arrays": {}})
    assert not (tmp_path / "missing.kdb").exists()


# A child stores statistics and kills itself at the n-th fsync of the commit: before the
# commit record is written (1) or before it is synced (2).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    path, when = sys.argv[1], int(sys.argv[2])
    from kinodb.stats import compute_stats, write_stats
    stats = compute_stats(path)
    real, calls = os.fsync, [0]
    def fsync(fd):
        calls[0] += 1
        if calls[0] == when:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd)
    os.fsync = fsync
    write_stats(path, stats)
    print("committed")
    """
)


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("when", [1, 2])
def test_a_killed_update_leaves_the_old_or_the_new_commit(
    dataset: tuple[Path, Any], assert_episode: Any, when: int
) -> None:
    path, eps = dataset
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(when)], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert validate(path).ok
    with kinodb.open(path) as db:
        for i, ep in enumerate(eps):
            assert_episode(db, i, ep)
        if when == 1:  # the new index was written but nothing points at it
            with pytest.raises(KinodbError, match="no statistics"):
                db.stats()
        else:  # the commit record was written (to the page cache) before the kill
            assert db.stats()["num_frames"] == 60
    write_stats(path, compute_stats(path))  # the leftovers do not stop the next update
    assert validate(path).ok
    with kinodb.open(path) as db:
        assert db.stats()["num_episodes"] == len(eps)
