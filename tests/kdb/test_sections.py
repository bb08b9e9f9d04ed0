"""The section directory's read paths (a full decode, the checked O(1) reader, per-file
tables) all return exactly the arrays written, as zero-copy read-only views of the map."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import without_uniform_check
from kinodb.kdb._sections import Periodic, periodic_layout

N = 300  # enough reads of every episode to switch every array to a table
ARRAYS = ("actions", "states", "rewards", "is_terminal")


def _uniform(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Every episode alike: 12 frames, the same arrays, dtypes and dims."""
    return {
        "actions": rng.normal(size=(12, 3)).astype(np.float32),
        "states": rng.normal(size=(12, 4)),  # float64
        "rewards": rng.normal(size=12).astype(np.float32),
        "is_terminal": np.arange(12) == 11,
        "extra_arrays": {
            "lang": rng.integers(0, 9, (12, 5)).astype(np.int16),
            "pose": rng.normal(size=(12, 2, 2)),  # two trailing dims
        },
    }


def _ragged(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """The same arrays in every episode, but the frame count varies."""
    T = 1 + i % 9
    return {
        "actions": rng.normal(size=(T, 3)).astype(np.float32),
        "states": rng.normal(size=(T, 4)),
        "rewards": rng.normal(size=T).astype(np.float32),
        "extra_arrays": {
            "lang": rng.integers(0, 9, (T, 5)).astype(np.int16),
            "pose": rng.normal(size=(T, 2, 2)),
        },
    }


def _mixed(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Episodes with and without timestamps and an extra array of changing dtype."""
    ep = _ragged(rng, i)
    if i % 2:
        ep["timestamps"] = np.arange(len(ep["actions"]), dtype=np.float64) / 10
    ep["extra_arrays"]["lang"] = ep["extra_arrays"]["lang"].astype(np.int64 if i % 3 else np.int8)
    return ep


def _raw_cameras(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Alike episodes with a camera among the arrays' sections."""
    ep = _uniform(rng, i)
    ep["images"] = {"cam": rng.integers(0, 256, (12, 4, 3, 3), dtype=np.uint8)}
    return ep


CASES: dict[str, Callable[[np.random.Generator, int], dict[str, Any]]] = {
    "uniform": _uniform, "ragged": _ragged, "mixed": _mixed, "camera": _raw_cameras,
}  # fmt: skip


def written(tmp_path: Path, case: str) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Write ``N`` episodes of one case; return the path and each episode's arrays."""
    rng = np.random.default_rng(7)
    path = tmp_path / f"{case}.kdb"
    want = []
    with kinodb.Writer(path, image_codec="raw") as w:
        for i in range(N):
            ep = CASES[case](rng, i)
            w.add_episode(**ep)
            arrays = {k: np.asarray(ep[k]) for k in (*ARRAYS, "timestamps") if k in ep}
            want.append({**arrays, **ep["extra_arrays"]})
    return path, want


def check_view(db: kinodb.Database, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable and got.flags.c_contiguous
    assert np.shares_memory(got, db._map())  # a view of the file's map, not a copy


@pytest.mark.parametrize("case", list(CASES))
def test_every_read_path_returns_the_written_arrays(tmp_path: Path, case: str) -> None:
    path, want = written(tmp_path, case)
    rng = np.random.default_rng(1)
    with kinodb.open(path) as db:
        for order in (range(N), rng.permutation(N).tolist(), range(N - 1, -1, -1)):
            for i in order:
                for name in want[i]:
                    check_view(db, db.read_array(i, name), want[i][name])
        assert {name for ep in want for name in ep if name != "is_terminal"} <= set(db._tables)
        for i in rng.permutation(N).tolist()[:50]:
            ep = db.read_episode_actions_only(i)
            assert set(ep) - {"meta"} >= set(want[i])
            for name, arr in want[i].items():
                check_view(db, ep[name], arr)
            if case == "mixed":
                assert ("timestamps" in ep) == ("timestamps" in want[i])


def test_alike_episodes_are_read_through_one_strided_view(tmp_path: Path) -> None:
    path, want = written(tmp_path, "uniform")
    with kinodb.open(path) as db:
        for i in range(N):
            for name in want[i]:
                db.read_array(i, name)
        for name in want[0]:
            table = db._tables[name]
            assert table.strided is not None, name
            whole = table.read.__self__  # type: ignore[attr-defined]  # reads index one (N, T, ...) view
            assert isinstance(whole, np.ndarray) and whole.shape == (N, *want[0][name].shape)
            assert np.shares_memory(whole, db._map()) and not whole.flags.writeable
        batch = db.gather("states", [5, 0, 5])
        np.testing.assert_array_equal(
            batch, np.concatenate([want[5]["states"], want[0]["states"], want[5]["states"]])
        )


def test_periodic_layout_tells_the_cases_apart(tmp_path: Path) -> None:
    found = {}
    for case in CASES:
        path, _ = written(tmp_path, case)
        with kinodb.open(path) as db:
            found[case] = periodic_layout(db._cols)
    assert found["uniform"].width == 6 and found["uniform"].step is not None
    assert found["camera"].width == 7 and found["camera"].step is not None
    assert found["ragged"] == Periodic(6, None)  # same rows, frame counts differ
    assert found["mixed"].width == 0  # rows differ between episodes


def test_reads_stay_lazy_until_they_repay_a_table(tmp_path: Path) -> None:
    path, want = written(tmp_path, "uniform")
    without_uniform_check(path)  # read as a file without the uniform entry
    with kinodb.open(path) as db:
        assert db._index is None  # opening decoded nothing of the index
        check_view(db, db.read_array(3, "actions"), want[3]["actions"])
        assert db._index is not None and db._tables == {}  # one read costs O(1), no table yet
        for i in range(N):
            db.read_episode_actions_only(i)  # whole-episode reads count towards the tables too
        assert set(want[0]) <= set(db._tables)


def test_api_results_do_not_depend_on_what_is_read_first(tmp_path: Path) -> None:
    path, _ = written(tmp_path, "mixed")
    calls: list[Callable[[kinodb.Database], Any]] = [
        len, lambda db: db.num_frames(), lambda db: db.schema(), lambda db: db.dataset_info(),
        lambda db: db.summary(), lambda db: {k: v.tolist() for k, v in db.episodes().items()},
        lambda db: db.read_meta(7), lambda db: db.query("num_frames > 4").tolist(),
        lambda db: db.gather("actions", [3, 1]).tolist(), lambda db: db.cameras(2),
        lambda db: {k: v.tolist() for k, v in db.read_episode(5).items() if k not in ("meta", "images")},
        lambda db: db.read_array(9, "lang").tolist(),
    ]  # fmt: skip
    with kinodb.open(path) as db:
        reference = [call(db) for call in calls]
    for first in calls:
        with kinodb.open(path) as db:
            first(db)  # this call decodes the index
            assert [call(db) for call in calls] == reference


def test_numpy_and_out_of_range_indexes_after_tables(tmp_path: Path) -> None:
    path, want = written(tmp_path, "uniform")
    with kinodb.open(path) as db:
        for i in range(N):
            db.read_array(i, "actions")
        assert "actions" in db._tables
        check_view(db, db.read_array(np.int32(N - 1), "actions"), want[N - 1]["actions"])
        for bad in (N, -(N + 1), 10**12):
            with pytest.raises(kinodb.EpisodeNotFoundError, match="out of range"):
                db.read_array(bad, "actions")
        with pytest.raises(KeyError, match="has no array 'nope'"):
            db.read_array(0, "nope")
        db.close()
        with pytest.raises(ValueError, match="closed"):
            db.read_array(0, "actions")


@pytest.mark.parametrize("case", ["uniform", "ragged"])
def test_table_views_outlive_close(tmp_path: Path, case: str) -> None:
    path, want = written(tmp_path, case)
    db = kinodb.open(path)
    for i in range(N):
        db.read_array(i, "actions")
    assert "actions" in db._tables
    view = db.read_array(N - 2, "actions")
    mm = db._mm
    assert mm is not None
    db.close()
    assert not mm.closed  # the view still pins the map
    np.testing.assert_array_equal(view, want[N - 2]["actions"])
    with pytest.raises(ValueError, match="closed"):
        db.read_array(N - 2, "actions")


def test_an_index_row_count_that_loses_a_required_array_is_damage(tmp_path: Path) -> None:
    from kinodb.errors import CorruptFileError
    from kinodb.kdb._sections import episode_sections

    path = tmp_path / "d.kdb"
    rng = np.random.default_rng(0)
    with kinodb.Writer(path) as w:
        for i in range(2):
            w.add_episode(**_uniform(rng, i))
    with kinodb.open(path) as db:
        ints = list(db._int_views())
        assert [s.name for s in episode_sections(tuple(ints), db._names, 1, db._size, str(path))][:4] == list(
            ARRAYS
        )
        ints[1] = np.array(ints[1]).copy()
        ints[0] = np.array(ints[0]).copy()
        ints[0][1] += 1  # episode 1's rows start one later (a flipped bit): its actions row is lost
        ints[1][1] -= 1
        with pytest.raises(CorruptFileError, match=r"episode 1: its index rows lack actions, which every"):
            episode_sections(tuple(ints), db._names, 1, db._size, str(path))
