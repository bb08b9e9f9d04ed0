"""Opening a file while another writer commits to it reads a whole commit, never a false
`CorruptFileError`: the map is sized before a commit lands that it then shows."""

from __future__ import annotations

import mmap
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb import CorruptFileError
from kinodb.kdb import _files, reader
from kinodb.kdb._layout import SLOT_OFFSETS, parse_slot
from kinodb.kdb.validate import validate


def _append(path: Path, value: float) -> None:
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.full((5, 2), value, np.float32))


def _commit_after_mapping(monkeypatch: pytest.MonkeyPatch, path: Path, times: int = 1) -> list[int]:
    """Make the next ``times`` maps of ``path`` by `Database` be followed at once by an
    append (a real commit, by a Writer), before anything is read from them; returns the
    lengths of all the maps made."""
    real = _files.map_file
    lengths: list[int] = []
    busy = [False]

    def map_then_commit(p: str) -> mmap.mmap:
        mm = real(p)
        if busy[0]:  # the Writer's own open under its lock
            return mm
        lengths.append(len(mm))
        if len(lengths) <= times:
            busy[0] = True
            try:
                _append(path, len(lengths))
            finally:
                busy[0] = False
        return mm

    monkeypatch.setattr(reader, "map_file", map_then_commit)
    return lengths


def _one_episode(tmp_path: Path) -> Path:
    path = tmp_path / "grow.kdb"
    with kinodb.Writer(path, mode="x") as w:
        w.add_episode(actions=np.zeros((5, 2), np.float32))
    return path


def test_a_commit_landing_after_the_map_is_made_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _one_episode(tmp_path)
    lengths = _commit_after_mapping(monkeypatch, path)
    with kinodb.open(path) as db:
        assert len(db) == 2  # the commit it saw, read from a map long enough to hold it
        assert db.read_array(1, "actions").tolist() == [[1.0, 1.0]] * 5
        assert db._size == path.stat().st_size > lengths[0]
        db._verify_index()
    assert lengths == [lengths[0], path.stat().st_size]  # mapped again once
    monkeypatch.undo()
    assert validate(path).ok


def test_an_open_database_keeps_the_commit_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _one_episode(tmp_path)
    _commit_after_mapping(monkeypatch, path)
    with kinodb.open(path) as db:
        _append(path, 7.0)  # not through the patched open: a Writer maps by itself
        assert len(db) == 2
        assert db.num_frames() == 10
    with kinodb.open(path) as db:
        assert len(db) == 3


def test_a_pickled_database_reopened_during_a_commit_reads_its_own_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _one_episode(tmp_path)
    with kinodb.open(path) as db:
        blob, slot = pickle.dumps(db), db._slot
    _commit_after_mapping(monkeypatch, path)
    with pickle.loads(blob) as copy:
        assert len(copy) == 1
        assert copy._slot == slot  # from the records read at open, which held it
        assert copy.read_array(0, "actions").tolist() == [[0.0, 0.0]] * 5
    raw = path.read_bytes()
    assert sorted(c.num_episodes for at in SLOT_OFFSETS if (c := parse_slot(raw[at : at + 64]))) == [1, 2]


def test_a_pickled_database_names_the_record_it_read_though_overwritten_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _one_episode(tmp_path)
    with kinodb.open(path) as db:
        blob, slot = pickle.dumps(db), db._slot
    _append(path, 1.0)
    real = reader.open_database

    def open_then_commit(p: str) -> kinodb.Database:
        db = real(p)
        _append(path, 2.0)  # overwrites the record of the commit the copy reads
        return db

    monkeypatch.setattr(reader, "open_database", open_then_commit)
    with pickle.loads(blob) as copy:
        assert len(copy) == 1
        assert copy._slot == slot  # the records read at open, with its commit's, not the map's now
    raw = path.read_bytes()
    assert sorted(c.num_episodes for at in SLOT_OFFSETS if (c := parse_slot(raw[at : at + 64]))) == [2, 3]


def test_a_file_that_keeps_growing_is_mapped_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _one_episode(tmp_path)
    lengths = _commit_after_mapping(monkeypatch, path, times=100)
    with pytest.raises(CorruptFileError, match=r"lies outside the file"):
        kinodb.open(path)
    assert len(lengths) == reader._REMAPS + 1
    monkeypatch.undo()
    with kinodb.open(path) as db:  # the file itself is whole
        assert len(db) == reader._REMAPS + 2


def test_a_record_pointing_past_a_file_that_stopped_growing_is_damage(tmp_path: Path) -> None:
    path = _one_episode(tmp_path)
    _append(path, 1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[:-64])  # the newest commit's index cut short
    with pytest.raises(CorruptFileError, match=r"lies outside the file \(\d+ bytes\); the file is truncated"):
        kinodb.open(path)


_APPENDER = textwrap.dedent(
    """
    import sys, time, numpy as np, kinodb
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    k = 1
    while time.monotonic() < end:
        with kinodb.Writer(sys.argv[1], mode="a") as w:
            w.add_episode(actions=np.full((5, 2), k, np.float32))
        k += 1
    """
)


@pytest.mark.slow
@pytest.mark.integration
def test_opening_while_another_process_appends_never_fails(tmp_path: Path) -> None:
    path = _one_episode(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path), "2"], stdout=subprocess.PIPE, text=True
    )
    errors: list[str] = []
    seen: list[int] = []
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            try:
                with kinodb.open(path) as db:
                    n = len(db)
                    if len(seen) % 64 == 0:  # mostly opens: the race lies in opening
                        assert db.read_array(n - 1, "actions").tolist() == [[float(n - 1)] * 2] * 5
                    seen.append(n)
            except CorruptFileError as exc:
                errors.append(str(exc))
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert errors == []
    assert seen == sorted(seen) and seen[-1] > seen[0]  # it did open during the appends
    with kinodb.open(path) as db:
        assert len(db) >= seen[-1]
