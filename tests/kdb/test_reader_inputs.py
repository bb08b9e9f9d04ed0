"""What the read API takes: episode indices (negative ones count from the end, NumPy
integers work, floats and bools do not), frame arguments, a camera given as a str, and
the metadata table's integer columns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb import EpisodeNotFoundError, FrameRangeError, NameNotFoundError

N = 3


@pytest.fixture
def db(make_kdb: Any) -> Any:
    """Three episodes of 5, 6 and 7 frames, cameras ``front`` and ``wrist`` stored as PNG."""
    path, _ = make_kdb(
        [
            {"actions": np.full((5 + i, 2), i, np.float32), "states": np.zeros((5 + i, 3)),
             "images": {"front": np.full((5 + i, 4, 6, 3), 10 * i + 1, np.uint8),
                        "wrist": np.full((5 + i, 2, 2, 3), 10 * i + 2, np.uint8)},
             "extra": {"k": i}}
            for i in range(N)
        ],
        image_codec="png",
    )  # fmt: skip
    with kinodb.open(path) as database:
        yield database


def _calls(db: kinodb.Database) -> dict[str, Callable[[Any], Any]]:
    """Every public call that takes an episode index, by name."""
    return {
        "read_meta": db.read_meta,
        "read_episode": db.read_episode,
        "read_episode_actions_only": db.read_episode_actions_only,
        "cameras": db.cameras,
        "read_array": lambda i: db.read_array(i, "actions"),
        "read_frames": lambda i: db.read_frames(i, 1, 3),
        "read_image_bytes": lambda i: db.read_image_bytes(i, "front", 0),
        "getitem": db.__getitem__,
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


# -- episode indices -----------------------------------------------------------------------


CALLS = [
    "read_meta", "read_episode", "read_episode_actions_only", "cameras", "read_array",
    "read_frames", "read_image_bytes", "getitem",
]  # fmt: skip


@pytest.mark.parametrize("call", CALLS)
def test_a_negative_episode_index_counts_from_the_end(db: kinodb.Database, call: str) -> None:
    read = _calls(db)[call]
    for k in range(1, N + 1):
        assert _same(read(-k), read(N - k)), k
    assert _same(read(np.int64(-1)), read(N - 1))
    assert _same(read(np.int8(-N)), read(0))


@pytest.mark.parametrize("call", CALLS)
def test_out_of_range_names_the_valid_indices_both_ways(db: kinodb.Database, call: str) -> None:
    read = _calls(db)[call]
    for bad in (N, -N - 1, np.int64(-N - 1), 10**20, -(10**20)):
        with pytest.raises(
            EpisodeNotFoundError,
            match=rf"episode {bad} out of range: file has 3 episodes \(0\.\.2\), or -3\.\.-1 counting from the end",
        ):
            read(bad)


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("bad", [2.0, np.float64(1.0), np.float32(0.0), True, np.True_, "1", None, [0]])
def test_an_episode_index_must_be_an_int(db: kinodb.Database, call: str, bad: Any) -> None:
    with pytest.raises(EpisodeNotFoundError, match=r"episode index must be an int, got .* \(\w+\)"):
        _calls(db)[call](bad)


def test_numpy_integers_read_as_python_ints(db: kinodb.Database) -> None:
    for kind in (np.int8, np.uint8, np.int32, np.uint64, np.intp):
        for name, read in _calls(db).items():
            assert _same(read(kind(1)), read(1)), (kind, name)


def test_gather_counts_negative_indices_from_the_end(db: kinodb.Database) -> None:
    want = np.concatenate(
        [db.read_array(2, "actions"), db.read_array(0, "actions"), db.read_array(2, "actions")]
    )
    np.testing.assert_array_equal(db.gather("actions", [-1, 0, 2]), want)
    np.testing.assert_array_equal(
        db.gather("actions", np.array([-1, -3, -1], np.int8)), db.gather("actions", [2, 0, 2])
    )
    for bad in ([0, -4], [3]):
        with pytest.raises(EpisodeNotFoundError, match=rf"episode {bad[-1]} out of range: .*\(0\.\.2\)"):
            db.gather("actions", bad)
    # An unsigned index past int64 is out of range, not wrapped around to a negative one.
    with pytest.raises(EpisodeNotFoundError, match=f"episode {2**64 - 1} out of range"):
        db.gather("actions", np.array([0, 2**64 - 1], np.uint64))


# -- frames and cameras --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, 1.0, np.float64(1.0), True, "1", None])
def test_frame_arguments_must_be_ints(db: kinodb.Database, bad: Any) -> None:
    with pytest.raises(FrameRangeError, match=r"start must be an int, got .* \(\w+\)"):
        db.read_frames(0, bad, 3)
    with pytest.raises(FrameRangeError, match=r"stop must be an int, got .* \(\w+\)"):
        db.read_frames(0, 0, bad)
    with pytest.raises(FrameRangeError, match=r"frame must be an int, got .* \(\w+\)"):
        db.read_image_bytes(0, "front", bad)


def test_numpy_integer_frame_arguments_work(db: kinodb.Database) -> None:
    assert _same(db.read_frames(1, np.int64(1), np.uint8(4)), db.read_frames(1, 1, 4))
    assert db.read_image_bytes(1, "wrist", np.int32(2)) == db.read_image_bytes(1, "wrist", 2)


def test_a_camera_given_as_a_str_is_one_camera(db: kinodb.Database) -> None:
    got = db.read_frames(2, 0, 2, cameras="front")
    assert list(got["images"]) == ["front"]
    assert _same(got, db.read_frames(2, 0, 2, cameras=["front"]))
    assert (got["images"]["front"] == 21).all()
    with pytest.raises(NameNotFoundError, match="has no camera 'fron'; it has"):
        db.read_frames(0, 0, 2, cameras="fron")


# -- the metadata table --------------------------------------------------------------------


def test_the_tables_count_id_and_dim_columns_are_int64(db: kinodb.Database) -> None:
    t = db.episodes()
    for name in ("episode_id", "num_frames", "action_dim", "state_dim"):
        assert t[name].dtype == np.int64, name
        assert not t[name].flags.writeable, name
        assert t[name].tolist() == [db.read_meta(i)[name] for i in range(N)], name
    nf = t["num_frames"]
    assert (nf - 8 + 1).tolist() == [-2, -1, 0]  # windows of 8 frames: none, not 2**64 - 2
    starts = np.concatenate([[0], np.cumsum(nf)[:-1]])
    assert starts.dtype == np.int64
    g = db.gather("actions")
    np.testing.assert_array_equal(g[starts[2] : starts[2] + nf[2]], db.read_array(2, "actions"))


def test_the_int64_columns_are_converted_once(db: kinodb.Database) -> None:
    first, again = db.episodes(), db.episodes()
    assert first is not again  # a new dict each call: adding keys to one leaves the next alone
    for name in ("episode_id", "num_frames", "action_dim", "state_dim"):
        assert first[name] is again[name], name


def test_a_legacy_files_table_has_int64_columns_too(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([random_episode(rng, 4, 2, 3), random_episode(rng, 2, 1, 5)]))
    with kinodb.open(path) as db:
        t = db.episodes()
        assert {t[k].dtype for k in ("episode_id", "num_frames", "action_dim", "state_dim")} == {
            np.dtype(np.int64)
        }
        assert t["num_frames"].tolist() == [4, 2] and t["action_dim"].tolist() == [3, 5]
        assert _same(db.read_meta(-1), db.read_meta(1))


# -- type hints ------------------------------------------------------------------------------

_TYPED = """
import numpy as np
import kinodb

def use(db: kinodb.Database) -> None:
    db.read_meta(np.int64(0))
    db[np.int64(0)]
    db[np.uint8(0)]
    db.read_episode(np.int32(-1))
    db.read_episode_actions_only(np.intp(0))
    db.cameras(np.int64(0))
    db.read_array(np.int64(0), "actions")
    db.read_frames(np.int64(0), np.int32(0), np.uint64(2), cameras="front")
    db.read_image_bytes(np.int16(0), "front", np.int64(1))
"""


@pytest.mark.slow
def test_numpy_integer_indices_pass_mypy_strict(tmp_path: Path) -> None:
    (tmp_path / "use.py").write_text(_TYPED)
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "mypy.ini", "use.py"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
