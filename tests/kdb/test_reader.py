"""The read API: indexing errors, frame windows, protocols, pickling and the public surface."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import EpisodeNotFoundError, FrameRangeError, KinodbError

CheckEpisode = Callable[[kinodb.Database, int, dict[str, Any]], None]


@pytest.fixture
def sample(make_kdb: Any, make_episode: Any) -> tuple[Path, list[dict[str, Any]]]:
    """Three episodes of 5, 6 and 7 frames with a raw camera, timestamps and an extra array."""
    eps = [
        make_episode(
            T=5 + i, cameras={"front": (4, 6, 3)}, extra_arrays={"lang": (2,)}, timestamps=True,
            embodiment=("franka", "widowx")[i % 2], success=(True, False, None)[i], extra={"scene": "lab"},
        )
        for i in range(3)
    ]  # fmt: skip
    return make_kdb(eps, image_codec="raw")  # type: ignore[no-any-return]


@pytest.fixture
def db(sample: tuple[Path, list[dict[str, Any]]]) -> Any:
    with kinodb.open(sample[0]) as database:
        yield database


@pytest.fixture
def png_db(make_kdb: Any) -> Any:
    path, eps = make_kdb(2, T=9, cameras={"front": (5, 4, 3), "wrist": (3, 3, 1)}, image_codec="png")
    with kinodb.open(path) as database:
        yield database, eps


# -- indexing ------------------------------------------------------------------------------


def test_episode_not_found_names_the_valid_range(db: kinodb.Database) -> None:
    assert issubclass(EpisodeNotFoundError, IndexError) and issubclass(EpisodeNotFoundError, KinodbError)
    calls: list[Callable[[int], Any]] = [
        db.read_episode, db.read_meta, db.read_episode_actions_only, db.cameras,
        lambda i: db.read_array(i, "actions"), lambda i: db.read_frames(i, 0, 1),
        lambda i: db.read_image_bytes(i, "front", 0), db.__getitem__,
    ]  # fmt: skip
    for call in calls:
        for bad in (3, 400, -4):
            with pytest.raises(EpisodeNotFoundError, match=r"out of range: file has 3 episodes \(0\.\.2\)"):
                call(bad)


@pytest.mark.parametrize("bad", [1.5, "1", None, True, [0]])
def test_non_integer_indexes_are_rejected(db: kinodb.Database, bad: Any) -> None:
    with pytest.raises(EpisodeNotFoundError, match="episode index must be an int"):
        db.read_episode(bad)
    with pytest.raises(EpisodeNotFoundError, match="episode index must be an int"):
        db.read_array(bad, "actions")


def test_numpy_integers_and_negative_indexing(db: kinodb.Database, sample: Any) -> None:
    _, eps = sample
    np.testing.assert_array_equal(db.read_episode(np.int64(2))["actions"], eps[2]["actions"])
    np.testing.assert_array_equal(db.read_array(np.uint8(1), "actions"), eps[1]["actions"])
    for k in range(1, 4):
        assert db[-k]["meta"]["episode_id"] == 3 - k
    np.testing.assert_array_equal(db[-1]["images"]["front"], eps[2]["images"]["front"])
    np.testing.assert_array_equal(db.read_episode(-1)["actions"], eps[2]["actions"])  # as a list counts
    with pytest.raises(EpisodeNotFoundError):
        db.read_episode(-4)


def test_iteration_and_len(db: kinodb.Database, sample: Any, assert_episode: CheckEpisode) -> None:
    _, eps = sample
    assert len(db) == 3
    seen = list(db)
    assert [ep["meta"]["episode_id"] for ep in seen] == [0, 1, 2]
    for i, ep in enumerate(eps):
        assert_episode(db, i, ep)
        np.testing.assert_array_equal(seen[i]["lang"], ep["extra_arrays"]["lang"])


# -- frame windows -------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "stop"), [(0, 7), (0, 1), (6, 7), (2, 5), (3, 4)])
def test_read_frames_windows_match_the_full_episode(db: kinodb.Database, start: int, stop: int) -> None:
    full = db.read_episode(2)
    window = db.read_frames(2, start, stop)
    assert set(window) == set(full) - {"meta"}
    for name in ("actions", "states", "rewards", "is_terminal", "timestamps", "lang"):
        np.testing.assert_array_equal(window[name], full[name][start:stop])
        assert not window[name].flags.writeable
    np.testing.assert_array_equal(window["images"]["front"], full["images"]["front"][start:stop])


def test_read_frames_decodes_only_the_chosen_cameras(png_db: Any) -> None:
    db, eps = png_db
    both = db.read_frames(1, 2, 6)
    assert set(both["images"]) == {"front", "wrist"}
    np.testing.assert_array_equal(both["images"]["front"], eps[1]["images"]["front"][2:6])
    np.testing.assert_array_equal(both["images"]["wrist"], eps[1]["images"]["wrist"][2:6])
    assert set(db.read_frames(1, 2, 6, cameras=["wrist"])["images"]) == {"wrist"}
    assert db.read_frames(1, 0, 9, cameras=[])["images"] == {}
    with pytest.raises(KeyError, match=r"episode 1 has no camera 'side'; it has \['front', 'wrist'\]"):
        db.read_frames(1, 0, 2, cameras=["side"])


@pytest.mark.parametrize(("start", "stop"), [(-1, 2), (0, 8), (3, 3), (5, 2), (7, 8), (0, 100)])
def test_frame_windows_outside_the_episode(db: kinodb.Database, start: int, stop: int) -> None:
    assert issubclass(FrameRangeError, IndexError) and issubclass(FrameRangeError, KinodbError)
    with pytest.raises(
        FrameRangeError, match=rf"frames {start}:{stop} outside episode 2, which has frames 0:7"
    ):
        db.read_frames(2, start, stop)


def test_read_image_bytes(db: kinodb.Database, png_db: Any, sample: Any) -> None:
    _, eps = sample
    assert db.read_image_bytes(0, "front", 4) == eps[0]["images"]["front"][4].tobytes()
    with pytest.raises(FrameRangeError, match="frame 5 outside episode 0, which has frames 0:5"):
        db.read_image_bytes(0, "front", 5)
    with pytest.raises(FrameRangeError):
        db.read_image_bytes(0, "front", -1)
    with pytest.raises(KeyError, match="no camera 'side'"):
        db.read_image_bytes(0, "side", 0)
    pdb, _ = png_db
    assert pdb.read_image_bytes(0, "wrist", 8).startswith(b"\x89PNG\r\n\x1a\n")


def test_read_images_bytes(db: kinodb.Database, png_db: Any, sample: Any) -> None:
    _, eps = sample
    assert db.read_images_bytes(0, "front") == [f.tobytes() for f in eps[0]["images"]["front"]]
    assert db.read_images_bytes(0, "front", 2, 4) == [db.read_image_bytes(0, "front", t) for t in (2, 3)]
    assert db.read_images_bytes(0, "front", 3, 3) == []
    pdb, _ = png_db
    T = pdb.cameras(0)["wrist"]["shape"][0]
    assert pdb.read_images_bytes(0, "wrist") == [pdb.read_image_bytes(0, "wrist", t) for t in range(T)]
    for start, stop in ((0, 6), (-1, 2), (3, 2)):
        with pytest.raises(
            FrameRangeError, match=rf"frames {start}:{stop} outside episode 0, which has frames 0:5"
        ):
            db.read_images_bytes(0, "front", start, stop)
    with pytest.raises(FrameRangeError, match="start must be an int"):
        db.read_images_bytes(0, "front", 1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no camera 'side'"):
        db.read_images_bytes(0, "side")


def test_read_array_and_cameras(db: kinodb.Database, sample: Any) -> None:
    _, eps = sample
    np.testing.assert_array_equal(db.read_array(1, "lang"), eps[1]["extra_arrays"]["lang"])
    with pytest.raises(KeyError, match=r"episode 1 has no array 'front'; it has \["):
        db.read_array(1, "front")  # a camera is not an array
    assert db.cameras(1) == {"front": {"codec": "raw", "shape": (6, 4, 6, 3)}}


# -- tables and file-level facts -----------------------------------------------------------


def test_episodes_table_columns(make_kdb: Any) -> None:
    eps = [
        {"actions": np.zeros((3, 2)), "embodiment": "franka", "task": "a", "success": True,
         "total_reward": 1.5, "extra": {"scene": "lab", "task": "shadowed", "n": 1}},
        {"actions": np.zeros((4, 5)), "states": np.zeros((4, 1)), "embodiment": "aloha", "task": "b",
         "fps": 30, "success": None, "extra": {"scene": None, "n": 2}},
        {"actions": np.zeros((1, 2)), "rewards": [0.25], "success": False},
    ]  # fmt: skip
    path, _ = make_kdb(eps)
    with kinodb.open(path) as db:
        t = db.episodes()
        assert set(t) == {
            "episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim",
            "success", "total_reward", "scene", "extra.task", "n",
        }  # fmt: skip
        assert all(len(col) == 3 for col in t.values())
        assert t["episode_id"].tolist() == [0, 1, 2]
        assert t["embodiment"].tolist() == ["franka", "aloha", "unknown"]
        assert t["task"].tolist() == ["a", "b", ""]
        assert t["num_frames"].tolist() == [3, 4, 1]
        assert t["fps"].tolist() == [10.0, 30.0, 10.0]
        assert t["action_dim"].tolist() == [2, 5, 2] and t["state_dim"].tolist() == [0, 1, 0]
        assert t["success"].dtype == object and t["success"].tolist() == [True, None, False]
        assert (
            t["total_reward"][0] == 1.5 and math.isnan(t["total_reward"][1]) and t["total_reward"][2] == 0.25
        )
        assert t["scene"].tolist() == ["lab", None, None]
        assert t["extra.task"].tolist() == ["shadowed", None, None]
        assert t["n"].tolist() == [1, 2, None]
        assert db.read_meta(0)["extra.task"] == "shadowed" and db.read_meta(0)["task"] == "a"
        for name in ("episode_id", "num_frames", "fps"):
            assert not t[name].flags.writeable


def test_file_level_facts(db: kinodb.Database, sample: Any) -> None:
    path, _ = sample
    assert db.path() == str(path)
    assert db.version() == "1.0"
    assert db.num_episodes() == 3 and db.num_frames() == 5 + 6 + 7
    schema = db.schema()
    assert schema["actions"] == {"dim": 4, "dtype": "float32"}
    assert schema["cameras"] == {"front": {"codec": "raw", "height": 4, "width": 6, "channels": 3}}
    assert schema["arrays"] == {"lang": {"shape": [2], "dtype": "float32"}}
    schema["actions"]["dim"] = 99
    assert db.schema()["actions"]["dim"] == 4  # a copy
    summary = db.summary()
    assert "episodes: 3, frames: 18" in summary and "franka, widowx" in summary and "front" in summary
    assert "success: 1/2 known (50.0%)" in summary
    assert repr(db) == f"<kinodb.Database {str(path)!r} (3 episodes, format 1.0)>"
    json.dumps(db.dataset_info())


def test_arrays_outlive_close_and_reads_after_close_fail(sample: Any) -> None:
    path, eps = sample
    db = kinodb.open(path)
    actions = db.read_array(0, "actions")
    frames = db.read_episode(1)["images"]["front"]
    db.close()
    db.close()  # idempotent
    np.testing.assert_array_equal(actions, eps[0]["actions"])
    np.testing.assert_array_equal(frames, eps[1]["images"]["front"])
    for read in (
        lambda: db.read_episode(0),
        lambda: db.read_array(0, "actions"),
        lambda: db.read_frames(0, 0, 1),
    ):
        with pytest.raises(ValueError, match="closed"):
            read()


def test_close_releases_the_map_once_no_view_is_left(sample: Any) -> None:
    path, _ = sample
    db = kinodb.open(path)
    db.read_meta(1)
    view = db.read_array(1, "states")
    mm = db._mm
    assert mm is not None
    db.close()
    assert not mm.closed  # the view still pins it, so it stays readable
    assert view.shape[0] > 0 and np.isfinite(view).all()
    del view
    db2 = kinodb.open(path)
    db2.read_episode(0)
    mm2 = db2._mm
    assert mm2 is not None
    db2.close()
    assert mm2.closed


# -- pickling ------------------------------------------------------------------------------


def _actions_sum(db: kinodb.Database) -> tuple[int, float, bytes]:
    return (
        len(db),
        float(db.read_array(1, "actions").astype(np.float64).sum()),
        db.read_image_bytes(2, "front", 0),
    )


def test_pickles_by_path(db: kinodb.Database, sample: Any) -> None:
    blob = pickle.dumps(db)
    assert len(blob) < 500  # the path, not the data
    clone = pickle.loads(blob)
    assert clone.path() == db.path()
    assert _actions_sum(clone) == _actions_sum(db)
    clone.close()


@pytest.mark.integration
def test_pickled_database_works_in_a_spawned_worker(db: kinodb.Database) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_actions_sum, (db,)) == _actions_sum(db)


# -- the public surface --------------------------------------------------------------------


def test_import_kinodb_stays_light() -> None:
    heavy = [
        "torch",
        "h5py",
        "grpc",
        "pyarrow",
        "av",
        "onnxruntime",
        "onnx",
        "matplotlib",
        "PIL",
        "tensorflow",
    ]
    code = f"import sys, kinodb; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names() -> None:
    assert kinodb.__all__ == [
        "ConversionError",
        "CorruptFileError",
        "Database",
        "EpisodeNotFoundError",
        "FormatError",
        "FrameRangeError",
        "KinodbError",
        "MissingExtraError",
        "Mixture",
        "MixtureError",
        "NameNotFoundError",
        "QuerySyntaxError",
        "UnsupportedVersionError",
        "Writer",
        "WriterError",
        "__version__",
        "export",
        "ingest",
        "kql",
        "merge",
        "open",
    ]
    assert kinodb.__all__ == sorted(kinodb.__all__)
    for name in kinodb.__all__:
        assert getattr(kinodb, name) is not None


def test_error_hierarchy() -> None:
    for cls in (
        kinodb.FormatError,
        kinodb.CorruptFileError,
        kinodb.UnsupportedVersionError,
        kinodb.WriterError,
        kinodb.MixtureError,
    ):
        assert issubclass(cls, KinodbError) and issubclass(cls, ValueError)
    assert issubclass(kinodb.CorruptFileError, kinodb.FormatError)
    assert issubclass(kinodb.UnsupportedVersionError, kinodb.FormatError)
    assert issubclass(kinodb.MissingExtraError, ImportError)


def test_many_reads_with_changing_layouts(tmp_path: Path) -> None:
    # Half the episodes have timestamps, so the extra array's row moves between episodes;
    # enough reads switch read_array to its checked offset table, which must agree.
    rng = np.random.default_rng(5)
    path = tmp_path / "layouts.kdb"
    want = []
    with kinodb.Writer(path) as w:
        for i in range(600):
            T = 3 + i % 5
            extra = rng.standard_normal((T, 2, 3)).astype(np.float64 if i % 3 else np.float32)
            want.append((rng.standard_normal((T, 4)).astype(np.float32), extra))
            w.add_episode(
                actions=want[-1][0],
                timestamps=np.arange(T, dtype=np.float64) if i % 2 else None,
                extra_arrays={"e": extra},
            )
    with kinodb.open(path) as db:
        for order in (range(600), rng.permutation(600).tolist(), range(599, -1, -1)):
            for i in order:
                np.testing.assert_array_equal(db.read_array(i, "actions"), want[i][0])
                got = db.read_array(i, "e")
                assert got.dtype == want[i][1].dtype
                np.testing.assert_array_equal(got, want[i][1])
        assert "actions" in db._tables  # the offset table was built, and agrees


def test_gather_concatenates_episodes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    uniform, ragged = tmp_path / "u.kdb", tmp_path / "r.kdb"
    with kinodb.Writer(uniform) as w:
        acts = [rng.standard_normal((6, 3)).astype(np.float32) for _ in range(40)]
        for a in acts:
            w.add_episode(actions=a, states=np.ones((6, 2)))
    with kinodb.Writer(ragged) as w:
        racts = [rng.standard_normal((2 + k % 5, 3)) for k in range(40)]
        for k, a in enumerate(racts):
            w.add_episode(actions=a, timestamps=np.arange(len(a), dtype=float) if k % 2 else None)
    for path, src in ((uniform, acts), (ragged, racts)):
        with kinodb.open(path) as db:
            for idx in (None, [5, 1, 1, 39], rng.integers(0, 40, 25)):
                want = np.concatenate([src[i] for i in (range(40) if idx is None else idx)])
                got = db.gather("actions", idx)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
            out = np.empty((sum(len(a) for a in src), 3), src[0].dtype)
            assert db.gather("actions", out=out) is out
            with pytest.raises(ValueError, match="out must be"):
                db.gather("actions", [0], out=out)
            with pytest.raises(EpisodeNotFoundError, match="episode 40 out of range"):
                db.gather("actions", [0, 40])
            with pytest.raises(KeyError):
                db.gather("nope", [0])
            mask = np.arange(40) % 3 == 1
            want = np.concatenate([src[i] for i in np.flatnonzero(mask)])
            np.testing.assert_array_equal(db.gather("actions", mask), want)
            with pytest.raises(ValueError, match=r"one entry per episode \(40\), got shape \(4,\)"):
                db.gather("actions", mask[:4])
            with pytest.raises(EpisodeNotFoundError, match="must be ints or a boolean mask, got float64"):
                db.gather("actions", [0.9, 2.5])
            wide = np.zeros((len(want), 4), src[0].dtype)
            with pytest.raises(ValueError, match="out must be C-contiguous"):
                db.gather("actions", mask, out=wide[:, :3])
            assert not wide.any()
    mixed = tmp_path / "m.kdb"
    with kinodb.Writer(mixed) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
        w.add_episode(actions=np.zeros((3, 2), np.float64))
    with (
        kinodb.open(mixed) as db,
        pytest.raises(
            ValueError,
            match=r"episode 1 holds actions as float64 \(2,\) per frame, episode 0 as float32 \(2,\); gather stacks them",
        ),
    ):
        db.gather("actions")


def test_a_missing_array_or_camera_is_a_kinodb_error_and_a_key_error(tmp_path: Path) -> None:
    path = tmp_path / "one.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(
            actions=np.zeros((3, 2), np.float32), images={"front": np.zeros((3, 4, 4, 3), np.uint8)}
        )
    with kinodb.open(path) as db:
        for call in (
            lambda: db.read_array(0, "nope"),
            lambda: db.read_image_bytes(0, "wrist", 0),
            lambda: db.read_frames(0, 0, 2, cameras=["wrist"]),
        ):
            with pytest.raises(kinodb.NameNotFoundError) as exc:
                call()
            assert isinstance(exc.value, KeyError) and isinstance(exc.value, kinodb.KinodbError)
            assert str(exc.value).startswith(f"{path}: episode 0 has no ")  # not quoted like a plain KeyError


def test_an_episode_that_trades_cameras_for_extra_arrays_reads_them_after_another(tmp_path: Path) -> None:
    path = tmp_path / "mixed.kdb"
    cams = {"front": np.full((1, 1, 1, 1), 33, np.uint8), "wrist": np.full((1, 1, 1, 1), 248, np.uint8)}
    extra = {"lang": np.array([-114.06], np.float16), "joint_vel": np.array([-1.492], np.float16)}
    with kinodb.Writer(path, image_codec="png") as w:
        w.add_episode(actions=np.zeros((1, 0), np.float16), timestamps=np.array([0.5]), images=cams)
        w.add_episode(actions=np.zeros((1, 0), np.float16), timestamps=np.array([0.5]), extra_arrays=extra)
    with kinodb.open(path) as db:  # the same number of sections: two cameras, then two extra arrays
        assert sorted(db.read_episode(0)["images"]) == ["front", "wrist"]
        second = db.read_episode(1)
        assert np.array_equal(second["lang"], extra["lang"]) and np.array_equal(
            second["joint_vel"], extra["joint_vel"]
        )


def test_gather_reads_the_strided_rewards_of_a_format_0_1_file(tmp_path: Path) -> None:
    from _legacy_encoder import encode, random_episode

    rng = np.random.default_rng(5)
    eps = [random_episode(rng, T, 3, 2) for T in (20, 7, 13)]
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with kinodb.open(path) as db:
        assert db.version() == "0.1" and not db.read_array(0, "rewards").flags.c_contiguous
        for name, key in (("rewards", "rewards"), ("actions", "actions"), ("states", "states")):
            for idx in (None, [2, 0]):
                picked = [eps[i] for i in (range(3) if idx is None else idx)]
                np.testing.assert_array_equal(
                    db.gather(name, idx), np.concatenate([getattr(e, key) for e in picked])
                )
        out = np.empty(40, np.float32)
        assert db.gather("rewards", out=out) is out
        np.testing.assert_array_equal(out, np.concatenate([e.rewards for e in eps]))


def _damaged_upgrade(tmp_path: Path) -> Path:
    """A file of 5 episodes (100 frames) with statistics, upgraded leaving out a damaged one."""
    from kinodb.kdb.upgrade import upgrade
    from kinodb.stats import compute_stats, write_stats

    path, out = tmp_path / "five.kdb", tmp_path / "four.kdb"
    rng = np.random.default_rng(8)
    with kinodb.Writer(path) as w:
        for _ in range(5):
            w.add_episode(actions=rng.normal(size=(20, 2)).astype(np.float32))
    write_stats(path, compute_stats(path))
    with kinodb.open(path) as db:
        raw = db.read_array(3, "actions").tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(raw)
    data[at] ^= 0xFF  # episode 3's payload no longer matches its checksum
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        assert upgrade(path, out, on_error="skip") == 4
    return out


def test_stale_statistics_say_the_file_changed_when_episodes_were_left_out(tmp_path: Path) -> None:
    out = _damaged_upgrade(tmp_path)
    with kinodb.open(out) as db:
        with pytest.raises(kinodb.FormatError) as err:
            db.stats()
        msg = str(err.value)
        assert (
            f"the statistics stored in {out} are stale: the file changed after they were computed (100 frames "
            f"in 5 episodes then, 80 frames in 4 episodes now); run: kino stats {out}"
        ) == msg
        with pytest.warns(UserWarning, match=r"100 frames in 5 episodes then, 80 frames in 4 episodes now"):
            assert db.stats(allow_stale=True)["stale"] is True


def test_stale_statistics_without_episode_counts_name_the_frames(tmp_path: Path) -> None:
    from kinodb.kdb._stale import stale_stats

    assert stale_stats({"num_frames": 10, "num_episodes": 2}, 10, 2) is None
    assert stale_stats({"num_frames": 10}, 10, 2) is None  # counts of episodes are optional
    assert (
        stale_stats({"num_frames": 10}, 12, 3)
        == "the file changed after they were computed (10 frames then, 12 frames now)"
    )
    assert stale_stats({"num_frames": 10, "num_episodes": 1}, 12, 2) == (
        "the file changed after they were computed (10 frames in 1 episode then, 12 frames in 2 episodes now)"
    )
    assert (
        stale_stats({"num_frames": 10, "stale": True}, 10, 2)
        == "the file's episodes changed after they were computed"
    )
