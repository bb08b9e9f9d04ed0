"""Pickling a `Database`: the copy (a DataLoader worker's, say) reads the commit its
original read, whatever was appended since, and refuses a file replaced or rewritten."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb import KinodbError


def _append(path: Path, make_episode: Any, n: int) -> None:
    with kinodb.Writer(path, mode="a") as w:
        for _ in range(n):
            w.add_episode(**make_episode(T=4))


def _view(db: kinodb.Database) -> dict[str, Any]:
    """Everything a copy should agree on with its original."""
    table = db.episodes()
    return {
        "len": len(db),
        "frames": db.num_frames(),
        "table": {k: v.tolist() for k, v in table.items()},
        "metas": [db.read_meta(i) for i in range(len(db))],
        "actions": db.gather("actions").tobytes(),
        "last": db.read_array(-1, "actions").tobytes(),
        "hits": db.query("success = true").tolist(),
    }


def test_a_copy_of_an_unchanged_file_reads_the_same(make_kdb: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        blob = pickle.dumps(db)
        assert len(blob) < 500  # the path and a few numbers, not the data
        with pickle.loads(blob) as copy:
            assert copy.path() == db.path() and _view(copy) == _view(db)


def test_a_copy_keeps_its_originals_episodes_after_appends(make_kdb: Any, make_episode: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        want, blob = _view(db), pickle.dumps(db)
        for appended in (2, 1):  # after the second, no commit record holds the original's commit
            _append(path, make_episode, appended)
            with pickle.loads(blob) as copy:
                assert _view(copy) == want
                again = pickle.loads(pickle.dumps(copy))  # a copy of the copy: the same commit
                assert _view(again) == want
                again.close()
        with kinodb.open(path) as fresh:
            assert len(fresh) == 6


def _view_in_worker(db: kinodb.Database) -> dict[str, Any]:
    with db:
        return _view(db)


@pytest.mark.integration
def test_a_spawned_worker_reads_the_originals_commit(make_kdb: Any, make_episode: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        want = _view(db)
        _append(path, make_episode, 2)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_view_in_worker, (db,)) == want


def test_a_replaced_file_is_refused(make_kdb: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        blob = pickle.dumps(db)
        make_kdb(3, path=path, mode="w")  # the same shapes, other values
        with pytest.raises(
            KinodbError,
            match=rf"{re.escape(str(path))} was replaced by another file since .*Open the file again",
        ):
            pickle.loads(blob)
        assert db.read_meta(0)["episode_id"] == 0  # the original still reads its own map


def test_a_file_replaced_before_pickling_is_refused(make_kdb: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        make_kdb(3, path=path, mode="w")
        blob = pickle.dumps(db)
        with pytest.raises(
            KinodbError,
            match=rf"{re.escape(str(path))} was rewritten or replaced since .* \(3 episodes at commit 1; it holds 3 episodes at commit 1\)",
        ):
            pickle.loads(blob)


def test_a_file_rewritten_in_place_is_refused(make_kdb: Any, tmp_path: Path) -> None:
    path, _ = make_kdb(3)
    other, _ = make_kdb(4)
    with kinodb.open(path) as db:
        blob = pickle.dumps(db)
    with open(path, "r+b") as fh:  # the same file (inode), other bytes
        fh.truncate(0)
        fh.write(other.read_bytes())
    with pytest.raises(KinodbError, match="no longer holds the commit that one read"):
        pickle.loads(blob)


def test_an_appended_file_whose_old_index_changed_is_refused(make_kdb: Any, make_episode: Any) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        blob, end = pickle.dumps(db), db._commit.end
    _append(path, make_episode, 1)
    with open(path, "r+b") as fh:  # a byte of the original's index block, which no commit record now reads
        fh.seek(end - 1)
        last = fh.read(1)
        fh.seek(end - 1)
        fh.write(bytes([last[0] ^ 0xFF]))
    with kinodb.open(path) as fresh:
        assert len(fresh) == 4  # the newest commit is intact
    with pytest.raises(KinodbError, match="no longer holds the commit that one read"):
        pickle.loads(blob)


def test_another_file_holding_the_same_commit_reads_the_same(make_kdb: Any, tmp_path: Path) -> None:
    path, _ = make_kdb(3)
    with kinodb.open(path) as db:
        want, blob = _view(db), pickle.dumps(db)
    # A byte-for-byte copy (another inode): its commit record, index checksum included, matches.
    shutil.copyfile(path, tmp_path / "copy.kdb")
    os.replace(tmp_path / "copy.kdb", path)
    with pickle.loads(blob) as copy:
        assert _view(copy) == want


def test_legacy_files_pickle_and_a_replaced_one_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([random_episode(rng, 4, 2, 3), random_episode(rng, 2, 1, 3)]))
    with kinodb.open(path) as db:
        blob = pickle.dumps(db)
        with pickle.loads(blob) as copy:
            np.testing.assert_array_equal(copy.read_array(1, "actions"), db.read_array(1, "actions"))
        # The same layout, other values: a 0.x file's index stores no checksum to tell them apart.
        (tmp_path / "new.kdb").write_bytes(
            encode([random_episode(rng, 4, 2, 3), random_episode(rng, 2, 1, 3)])
        )
        os.replace(tmp_path / "new.kdb", path)
        with pytest.raises(KinodbError, match="was replaced by another file"):
            pickle.loads(blob)
