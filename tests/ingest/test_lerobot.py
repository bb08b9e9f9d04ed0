"""LeRobot ingest: v2.0/v2.1/v3.0 layouts, frame-exact video, images, errors, the real G1 sample."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kinodb
from _factories import tiny_robomimic_hdf5
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import SourceOptions, _video, ingest, source_class, verify
from kinodb.ingest.lerobot import LeRobotSource, names_and_components

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
G1 = SAMPLES / "unitree_g1_lerobot_v21"
needs_g1 = pytest.mark.skipif(
    not (G1 / "meta" / "info.json").is_file(),
    reason=f"real LeRobot v2.1 sample not found at {G1} (see shared/samples/SOURCES.md)",
)
LENGTHS = [12, 15, 10, 9, 11]
Episode = dict[str, Any]


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return F.make_episodes(np.random.default_rng(7), LENGTHS, task_switch=True)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, episodes: list[Episode]) -> dict[str, Path]:
    """One folder per layout, written once for the module."""
    root = tmp_path_factory.mktemp("lerobot")
    return {
        "v2.0-h264": F.write_v2(root / "v20", episodes, version="v2.0", gop=12),
        "v2.1-av1": F.write_v2(root / "v21", episodes, codec="libsvtav1", list_type="list"),
        "v3.0-h264": F.write_v3(root / "v30", episodes, per_file=2, gop=4),
        "v3.0-av1": F.write_v3(
            root / "v30av1", episodes, per_file=3, codec="libsvtav1", gop=4, task_layout="column"
        ),
    }


def _video_file(root: Path, version: str, e: int, per_file: int) -> tuple[Path, float]:
    """The mp4 holding episode ``e`` and the episode's start time in it."""
    if version.startswith("v2"):
        return root / "videos" / "chunk-000" / F.CAMERA / f"episode_{e:06d}.mp4", 0.0
    first = e - e % per_file
    start = sum(LENGTHS[first:e]) / 10.0
    return root / "videos" / F.CAMERA / "chunk-000" / f"file-{e // per_file:03d}.mp4", start


def _check_arrays(got: dict[str, Any], ep: Episode) -> None:
    cols = ep["columns"]
    pairs = {
        "actions": cols["action"], "states": cols["observation.state"], "rewards": cols["next.reward"],
        "is_terminal": cols["next.done"], "timestamps": cols["timestamp"],
        "observation.environment_state": cols["observation.environment_state"],
        "next.success": cols["next.success"],
    }  # fmt: skip
    for name, want in pairs.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


# -- layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2.0-h264", "v2.1-av1", "v3.0-h264", "v3.0-av1"])
def test_layouts_ingest_exactly(
    layout: str, datasets: dict[str, Path], episodes: list[Episode], tmp_path: Path
) -> None:
    root = datasets[layout]
    out = tmp_path / "out.kdb"
    report = ingest(root, out, image_codec="png")
    assert report.format == "lerobot" and report.episodes == len(LENGTHS)
    per_file = 3 if layout == "v3.0-av1" else 2
    with kinodb.open(out) as db:
        assert db.dataset_info()["source_format"] == f"lerobot-{layout[:4]}"
        for i, ep in enumerate(episodes):
            got = db.read_episode(i)
            _check_arrays(got, ep)
            meta = got["meta"]
            e = ep["episode_index"]
            assert meta["fps"] == 10.0 and meta["embodiment"] == "fixture_bot"
            assert meta["task"] == F.TASKS[ep["columns"]["task_index"][0]]
            assert meta["success"] is (e % 2 == 0)
            assert meta["total_reward"] == pytest.approx(1.0 if e % 2 == 0 else 0.25)
            assert meta["episode_index"] == e and meta["source_episode"] == f"episode_{e:06d}"
            path, start = _video_file(root, layout, e, per_file)
            times, frames = F.reference_decode(path)
            want_idx = [int(np.argmin(np.abs(times - (start + t)))) for t in ep["columns"]["timestamp"]]
            np.testing.assert_array_equal(got["images"]["top"], frames[want_idx], err_msg=f"episode {e}")


def test_decoded_frames_are_the_right_ones(datasets: dict[str, Path], episodes: list[Episode]) -> None:
    """Each frame is nearer its own source frame than any other frame of the episode (no off-by-one)."""
    for layout in ("v2.1-av1", "v3.0-av1"):
        src = LeRobotSource(str(datasets[layout]), SourceOptions())
        for key, ep in zip(src.episodes(), episodes, strict=True):
            got = src.read(key)["images"]["top"].astype(np.int64)
            source = ep["frames"][F.CAMERA].astype(np.int64)
            err = np.abs(got[:, None] - source[None]).mean(axis=(2, 3, 4))  # (decoded, source)
            np.testing.assert_array_equal(
                err.argmin(axis=1), np.arange(len(source)), err_msg=f"{layout} {key}"
            )
        src.close()


def test_tasks_and_task_changes(datasets: dict[str, Path], tmp_path: Path) -> None:
    for layout in ("v2.1-av1", "v3.0-h264", "v3.0-av1"):
        src = LeRobotSource(str(datasets[layout]), SourceOptions(images=False))
        assert src.info().metadata["lerobot"]["tasks"] == {"0": F.TASKS[0], "1": F.TASKS[1]}
        first = src.read("episode_000000")
        half = LENGTHS[0] // 2
        assert first["task"] == F.TASKS[0] and first["extra"]["tasks"] == F.TASKS
        np.testing.assert_array_equal(
            first["extra_arrays"]["task_index"], np.r_[[0] * half, [1] * (12 - half)]
        )
        second = src.read("episode_000001")
        assert second["task"] == F.TASKS[1] and "task_index" not in second["extra_arrays"]
        assert "tasks" not in second["extra"]
        src.close()


@pytest.mark.parametrize(
    ("version", "fmt"), [("v2.1", "PNG"), ("v2.0", "JPEG"), ("v3.0", "PNG"), ("v3.0", "JPEG")]
)
def test_image_features_pass_through(version: str, fmt: str, episodes: list[Episode], tmp_path: Path) -> None:
    root = tmp_path / "ds"
    if version == "v3.0":
        F.write_v3(root, episodes, images=fmt, per_file=2)
    else:
        F.write_v2(root, episodes, version=version, images=fmt)
    out = tmp_path / "out.kdb"
    ingest(root, out)
    with kinodb.open(out) as db:
        assert db.schema()["cameras"]["top"] == {
            "codec": fmt.lower(),
            "height": 24,
            "width": 32,
            "channels": 3,
        }
        for i, ep in enumerate(episodes):
            _check_arrays(db.read_episode_actions_only(i), ep)
            want = [F.image_bytes(f, fmt) for f in ep["frames"][F.CAMERA]]
            assert [db.read_image_bytes(i, "top", t) for t in range(ep["length"])] == want


def test_names_and_components() -> None:
    assert names_and_components(["a", "b"], 2) == (["a", "b"], {})
    assert names_and_components([["a", "b", "c"]], 3) == (["a", "b", "c"], {})
    assert names_and_components({"motors": ["a", "b"]}, 2) == (["a", "b"], {"motors": [0, 2]})
    assert names_and_components({"arm": ["a", "b"], "hand": [["c"]]}, 3) == (
        ["a", "b", "c"], {"arm": [0, 2], "hand": [2, 3]},
    )  # fmt: skip
    for bad in (None, ["a"], {"x": "ab"}, [1, 2], {"x": [1]}):
        assert names_and_components(bad, 2) == (None, {})


def test_schema_carries_names(datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    ingest(datasets["v2.0-h264"], out, images=False)
    with kinodb.open(out) as db:
        schema = db.schema()
        assert schema["actions"]["names"] == ["x", "y", "z", "gripper"]
        assert schema["actions"]["components"] == {"motors": [0, 4]}
        assert schema["states"]["names"] == ["joint_0", "joint_1", "joint_2"]
        assert schema["cameras"] == {}
        lerobot = db.metadata()["lerobot"]
        assert lerobot["codebase_version"] == "v2.0" and lerobot["cameras"] == {"top": F.CAMERA}
        assert lerobot["info"]["features"]["action"]["names"] == F.ACTION_NAMES
        assert lerobot["video_tolerance_s"] == 1e-4


def test_state_keys_concatenate(datasets: dict[str, Path], episodes: list[Episode], tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    keys = ["observation.state", "observation.environment_state"]
    ingest(datasets["v2.1-av1"], out, images=False, state_keys=keys)
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {keys[0]: [0, 3], keys[1]: [3, 5]}
        got = db.read_episode(0)
        want = np.concatenate([episodes[0]["columns"][k] for k in keys], axis=1)
        assert got["states"].dtype == np.float64
        np.testing.assert_array_equal(got["states"], want)
        assert "observation.environment_state" not in got


def test_no_images_never_opens_videos(
    datasets: dict[str, Path], episodes: list[Episode], tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(datasets["v3.0-h264"], root)
    shutil.rmtree(root / "videos")
    with pytest.raises(ConversionError, match=r"file-000\.mp4: missing video file"):
        ingest(root, tmp_path / "a.kdb")
    out = tmp_path / "b.kdb"
    ingest(root, out, images=False)
    with kinodb.open(out) as db:
        assert len(db) == len(episodes) and db.schema()["cameras"] == {}
        for i, ep in enumerate(episodes):
            got = db.read_episode(i)
            assert got["images"] == {}
            _check_arrays(got, ep)


def test_rows_are_ordered_by_frame_index(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:2], images="PNG")
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), path)
    out = tmp_path / "out.kdb"
    ingest(root, out)
    with kinodb.open(out) as db:
        _check_arrays(db.read_episode(1), episodes[1])
        want = [F.image_bytes(f, "PNG") for f in episodes[1]["frames"][F.CAMERA]]
        assert [db.read_image_bytes(1, "top", t) for t in range(len(want))] == want


def test_flip_images_rotates_both_kinds(
    datasets: dict[str, Path], episodes: list[Episode], tmp_path: Path
) -> None:
    root = F.write_v2(tmp_path / "img", episodes[:2], images="PNG")
    for src, name in ((root, "img.kdb"), (datasets["v2.1-av1"], "vid.kdb")):
        out = tmp_path / name
        ingest(src, out, image_codec="png", flip_images=True, max_episodes=2)
        with kinodb.open(out) as db:
            for i in range(2):
                got = db.read_episode(i)["images"]["top"]
                if src == root:
                    want = episodes[i]["frames"][F.CAMERA]
                else:
                    want = F.reference_decode(
                        src / "videos" / "chunk-000" / F.CAMERA / f"episode_{i:06d}.mp4"
                    )[1]
                np.testing.assert_array_equal(got, want[:, ::-1, ::-1])


@pytest.mark.integration
def test_workers_give_identical_content(datasets: dict[str, Path], tmp_path: Path) -> None:
    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    ingest(datasets["v3.0-av1"], one, image_codec="png")
    ingest(datasets["v3.0-av1"], two, image_codec="png", workers=2)
    with kinodb.open(one) as a, kinodb.open(two) as b:
        assert len(a) == len(b) == len(LENGTHS) and a.schema() == b.schema() and a.metadata() == b.metadata()
        for i in range(len(a)):
            ea, eb = a.read_episode_actions_only(i), b.read_episode_actions_only(i)
            assert ea["meta"] == eb["meta"] and sorted(ea) == sorted(eb)
            for name in ea:
                if name != "meta":
                    np.testing.assert_array_equal(ea[name], eb[name], err_msg=name)
            T = ea["meta"]["num_frames"]
            assert [a.read_image_bytes(i, "top", t) for t in range(T)] == [
                b.read_image_bytes(i, "top", t) for t in range(T)
            ]


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v4.0", "v1.6", "v2.2", None])
def test_unsupported_versions(version: str | None, episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:1], images="PNG")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = version
    (root / "meta" / "info.json").write_text(json.dumps(info))
    assert LeRobotSource.detect(str(root))
    with pytest.raises(
        ConversionError, match=rf"codebase_version {version!r} is not supported.*v2\.0, v2\.1, v3\.0"
    ):
        ingest(root, tmp_path / "out.kdb")


def test_detect(datasets: dict[str, Path], tmp_path: Path) -> None:
    assert source_class("auto", str(datasets["v3.0-h264"])) is LeRobotSource
    assert not LeRobotSource.detect(str(tmp_path))
    assert not LeRobotSource.detect(str(datasets["v3.0-h264"] / "meta" / "info.json"))


def test_a_path_that_is_no_dataset_folder_says_what_it_is(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    h5 = tiny_robomimic_hdf5(tmp_path / "robo.hdf5")
    out = tmp_path / "e.kdb"
    assert main(["ingest", str(h5), "-o", str(out), "--format", "lerobot"]) == 1
    assert capsys.readouterr().err == (
        f"error: {h5}: is a file, but a LeRobot dataset is a folder holding meta/info.json; it is an HDF5 "
        "file: pass --format hdf5, or leave --format out to detect it\n"
    )
    assert not out.exists()
    root = datasets["v2.1-av1"]
    for part in (root / "data", root / "meta", next((root / "data").rglob("*.parquet"))):
        with pytest.raises(ConversionError) as err:
            LeRobotSource(part)
        assert str(err.value).startswith(
            f"{part}: this is part of a LeRobot dataset; pass the dataset root DIR (the folder holding "
            f"meta/info.json): {root}"
        )
    rlds = tmp_path / "tiny" / "1.0.0"  # an RLDS dataset folder given as LeRobot
    rlds.mkdir(parents=True)
    (rlds / "dataset_info.json").write_text(json.dumps({"name": "tiny", "splits": []}))
    with pytest.raises(ConversionError, match=r"1\.0\.0: not a LeRobot dataset: a LeRobot dataset is a folder "
                                              r"holding meta/info\.json, and this folder has none; it looks like "
                                              r"rlds data: pass format='rlds', or leave format out"):  # fmt: skip
        LeRobotSource(rlds)
    with pytest.raises(FileNotFoundError):
        LeRobotSource(tmp_path / "missing")


def _broken_copy(src: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(src, root)
    return root


def _raise_and_skip(root: Path, tmp_path: Path, match: str, bad: list[str]) -> None:
    with pytest.raises(ConversionError, match=match):
        ingest(root, tmp_path / "raise.kdb", image_codec="png")
    assert not (tmp_path / "raise.kdb").exists()
    out = tmp_path / "skip.kdb"
    report = ingest(root, out, image_codec="png", on_error="skip")
    assert [k for k, _ in report.skipped] == bad
    assert all(re.search(match, why) for _, why in report.skipped)
    with kinodb.open(out) as db:
        assert len(db) == len(LENGTHS) - len(bad)
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == [
            f"episode_{e:06d}" for e in range(len(LENGTHS)) if f"episode_{e:06d}" not in bad
        ]


def test_missing_video_raises_or_is_skipped(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v2.1-av1"], tmp_path)
    (root / "videos" / "chunk-000" / F.CAMERA / "episode_000002.mp4").unlink()
    _raise_and_skip(root, tmp_path, r"episode_000002\.mp4: missing video file", ["episode_000002"])


def test_missing_v3_video_file_fails_its_episodes(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v3.0-h264"], tmp_path)
    (root / "videos" / F.CAMERA / "chunk-000" / "file-001.mp4").unlink()
    _raise_and_skip(
        root, tmp_path, r"file-001\.mp4: missing video file", ["episode_000002", "episode_000003"]
    )


def test_short_video_raises_or_is_skipped(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "src", episodes)
    frames = episodes[3]["frames"][F.CAMERA][:-3]
    F.encode_video(root / "videos" / "chunk-000" / F.CAMERA / "episode_000003.mp4", frames, 10.0)
    _raise_and_skip(root, tmp_path, r"episode_000003\.mp4: short video: it ends at 0\.5", ["episode_000003"])


def test_short_v3_video(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v3(tmp_path / "src", episodes, per_file=2)
    frames = np.concatenate([episodes[2]["frames"][F.CAMERA], episodes[3]["frames"][F.CAMERA][:4]])
    F.encode_video(root / "videos" / F.CAMERA / "chunk-000" / "file-001.mp4", frames, 10.0, gop=4)
    _raise_and_skip(root, tmp_path, r"file-001\.mp4: short video", ["episode_000003"])


def test_timestamps_off_the_video_grid(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "src", episodes)
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    ts = table["timestamp"].to_numpy().copy()
    ts[5] += np.float32(0.03)
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(ts))
    pq.write_table(table, path)
    _raise_and_skip(
        root, tmp_path, r"episode_000001\.mp4: no frame within 0\.0001 s of 0\.530", ["episode_000001"]
    )


def test_wrong_parquet_length_raises_or_is_skipped(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v2.1-av1"], tmp_path)
    path = root / "data" / "chunk-000" / "episode_000004.parquet"
    pq.write_table(pq.read_table(path).slice(0, 7), path)
    _raise_and_skip(root, tmp_path, r"episode_000004\.parquet: episode 4: the file holds 7 rows .* length is 11",
                    ["episode_000004"])  # fmt: skip


def test_missing_data_file_raises_or_is_skipped(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v2.0-h264"], tmp_path)
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    _raise_and_skip(
        root, tmp_path, r"episode_000001\.parquet: missing data file of episode 1", ["episode_000001"]
    )


def test_skipped_reasons_do_not_advise_the_skip_already_asked_for(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _broken_copy(datasets["v2.0-h264"], tmp_path)
    for e in (0, 1, 3):
        (root / "data" / "chunk-000" / f"episode_{e:06d}.parquet").unlink()
    fix = "select them with episodes='2,4' (positions in meta/episodes)"
    with pytest.raises(ConversionError, match=re.escape(f"{fix}, or pass on_error='skip'") + "$"):
        ingest(root, tmp_path / "raise.kdb", images=False)
    report = ingest(root, tmp_path / "skip.kdb", images=False, on_error="skip")
    assert [k for k, _ in report.skipped] == ["episode_000000", "episode_000001", "episode_000003"]
    assert all(why.endswith(f"of its 5 episodes (2,4): {fix}") for _, why in report.skipped)
    with kinodb.open(tmp_path / "skip.kdb") as db:
        recorded = db.metadata()["ingest"]["skipped"]
    assert [(s["episode"], s["reason"]) for s in recorded] == report.skipped
    argv = ["ingest", str(root), "-o", str(tmp_path / "cli.kdb"), "--no-images", "--on-error", "skip", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("missing data file of episode") == 3 and "--on-error" not in out


@needs_g1
def test_g1_sample_skip_summarises_the_absent_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g1.kdb"
    argv = ["ingest", str(G1), "-F", "lerobot", "--on-error", "skip", "--no-images", "-q", "-o", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.out.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped[:5]] == [f"skipped episode_{e:06d}" for e in range(5)]
    assert skipped[5:] == [
        "skipped 94 more episodes for the same reason "
        "(episode_000005, episode_000006, episode_000007, ..., episode_000099)"
    ]
    assert "--on-error" not in captured.out and "99 episodes skipped" in captured.err
    with kinodb.open(out) as db:
        recorded = db.metadata()["ingest"]["skipped"]
        assert len(db) == 1 and db.read_meta(0)["source_episode"] == "episode_000029"
    assert len(recorded) == 99 and "episode_000029" not in {s["episode"] for s in recorded}
    assert not any("--on-error" in s["reason"] for s in recorded)


def test_missing_frame_index_rows(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v3.0-h264"], tmp_path)
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(meta)
    lengths = table["length"].to_numpy().copy()
    lengths[0] = 11
    pq.write_table(
        table.set_column(table.schema.get_field_index("length"), "length", pa.array(lengths)), meta
    )
    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data)
    keep = np.ones(table.num_rows, bool)
    keep[4] = False  # episode 0, frame 4
    pq.write_table(table.filter(pa.array(keep)), data)
    _raise_and_skip(root, tmp_path, r"frame_index is not 0\.\.10", ["episode_000000"])


def test_a_task_that_changes_within_an_episode_is_kept_per_frame(tmp_path: Path) -> None:
    # Episode 0 starts with task 1 and switches to task 0: the episode lists its own texts
    # in order of first appearance, and each frame's task reads back through the windows,
    # the LeRobot export and a second ingest.
    eps = F.make_episodes(np.random.default_rng(11), [8, 6, 7], task_of=[1, 0, 1], task_switch=True)
    root = F.write_v3(tmp_path / "ds", eps, per_file=2)
    out = tmp_path / "ds.kdb"
    ingest(root, out, format="lerobot", image_codec="png")
    want = [[F.TASKS[int(i)] for i in e["columns"]["task_index"]] for e in eps]
    assert want[0][0] != want[0][-1]
    with kinodb.open(out) as db:
        meta = db.read_meta(0)
        assert meta["task"] == F.TASKS[1] and meta["tasks"] == [F.TASKS[1], F.TASKS[0]]
        np.testing.assert_array_equal(db.read_array(0, "task_index"), [0] * 4 + [1] * 4)
        assert "tasks" not in db.read_meta(1)
    from kinodb.windows import FrameWindows

    fw = FrameWindows(str(out))
    assert fw.tasks(range(len(fw))) == [t for w in want for t in w]
    ((_, arrays),) = fw.lowdim_groups(np.arange(len(fw))[::-1], tasks=True)
    assert arrays["task"].tolist() == [t for w in want for t in w][::-1]
    exported = tmp_path / "export"
    kinodb.export.export(out, exported, format="lerobot")
    table = pq.read_table(exported / "data" / "chunk-000" / "file-000.parquet")
    assert "observation.task_index" not in table.column_names
    tasks = pq.read_table(exported / "meta" / "tasks.parquet").to_pandas()
    text_of = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"], strict=True)}
    assert [text_of[int(i)] for i in table["task_index"].to_pylist()] == [t for w in want for t in w]
    again = tmp_path / "again.kdb"
    ingest(exported, again, format="lerobot", image_codec="png")
    assert FrameWindows(str(again)).tasks(range(len(fw))) == [t for w in want for t in w]


def test_export_keeps_the_keys_the_ingest_read_and_adds_none(tmp_path: Path) -> None:
    eps = F.make_episodes(np.random.default_rng(12), [5, 6], cameras={"observation.wrist": (24, 32)})
    for ep in eps:  # a dataset without rewards or done flags
        for key in ("next.reward", "next.done", "next.success"):
            del ep["columns"][key]
    root = F.write_v3(tmp_path / "ds", eps, per_file=2)
    out = tmp_path / "ds.kdb"
    ingest(root, out, format="lerobot", image_codec="png")
    with kinodb.open(out) as db:
        assert list(db.read_frames(0, 0, 1)["images"]) == ["wrist"]
    exported = tmp_path / "export"
    kinodb.export.export(out, exported, format="lerobot")
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert info["features"]["observation.wrist"]["dtype"] == "video"
    assert "observation.images.wrist" not in info["features"]
    assert "next.reward" not in info["features"] and "next.done" not in info["features"]  # not made up
    with kinodb.Writer(out, mode="a") as w:  # an episode from elsewhere, with real rewards
        w.add_episode(actions=np.zeros((5, 4), np.float32), states=np.zeros((5, 3), np.float32),
                      rewards=np.r_[np.zeros(4), 1.0].astype(np.float32),
                      images={"wrist": np.zeros((5, 24, 32, 3), np.uint8)}, fps=10.0,
                      timestamps=(np.arange(5) / 10).astype(np.float32),
                      extra_arrays={"observation.environment_state": np.zeros((5, 2))})  # fmt: skip
    kinodb.export.export(out, tmp_path / "export2", format="lerobot")
    info2 = json.loads((tmp_path / "export2" / "meta" / "info.json").read_text())
    assert "next.reward" in info2["features"] and "next.done" not in info2["features"]
    again = tmp_path / "again.kdb"
    ingest(exported, again, format="lerobot", image_codec="png")
    with kinodb.open(out) as a, kinodb.open(again) as b:
        assert b.metadata()["lerobot"]["cameras"] == {"wrist": "observation.wrist"}
        from kinodb.ingest._verify import frame_psnr  # the export re-encodes: lossy video

        assert (
            frame_psnr(a.read_episode(1)["images"]["wrist"], b.read_episode(1)["images"]["wrist"]).min() > 30
        )


def test_tasks_without_a_tasks_table(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v2.1-av1"], tmp_path)
    (root / "meta" / "tasks.jsonl").unlink()
    src = LeRobotSource(str(root), SourceOptions(images=False))
    assert src.read("episode_000001")["task"] == F.TASKS[1]  # from episodes.jsonl
    first = src.read("episode_000000")
    assert "task_index" in first["extra_arrays"]  # the per-frame index still varies
    src.close()


def test_unknown_task_index(datasets: dict[str, Path], tmp_path: Path) -> None:
    root = _broken_copy(datasets["v3.0-h264"], tmp_path)
    F.tasks_parquet(root / "meta" / "tasks.parquet", F.TASKS[:1])
    _raise_and_skip(root, tmp_path, r"task_index 1 is not in the dataset's tasks table",
                    ["episode_000000", "episode_000001", "episode_000003"])  # fmt: skip


def test_unknown_columns_are_reported(
    episodes: list[Episode], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:1], images="PNG")
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    T = table.num_rows
    events = pa.array([[{"role": "user", "content": "hi"}]] * T)
    table = table.append_column("language_events", events).append_column("note", pa.array(["calm"] * T))
    pq.write_table(table, path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["language_events"] = {"dtype": "language", "shape": [1], "names": None}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        ingest(root, out)
    assert "'language_events' is not stored" in caplog.text
    with kinodb.open(out) as db:
        assert db.read_meta(0)["note"] == "calm"
        assert "language_events" in db.metadata()["lerobot"]["left_out"]
        assert "language_events" not in db.read_episode(0)


# -- feature names other than LeRobot's own ----------------------------------------------


def _arrays(db: kinodb.Database, i: int) -> dict[str, Any]:
    got = db.read_episode_actions_only(i)
    got.pop("meta")
    return got


def test_openpi_libero_layout_ingests_without_options(tmp_path: Path) -> None:
    eps = F.make_openpi_libero(np.random.default_rng(5), [6, 4])
    root = F.write_openpi_libero(tmp_path / "libero", eps)
    out = tmp_path / "libero.kdb"
    ingest(root, out)
    with kinodb.open(out) as db:
        for i, ep in enumerate(eps):
            got = _arrays(db, i)
            assert set(got) == {"actions", "states", "rewards", "is_terminal", "timestamps"}
            for name, key in (("actions", "actions"), ("states", "state"), ("timestamps", "timestamp")):
                assert got[name].dtype == np.float32
                np.testing.assert_array_equal(got[name], ep["columns"][key], err_msg=name)
            for cam in ("image", "wrist_image"):
                want = [F.image_bytes(f, "PNG") for f in ep["frames"][cam]]
                assert [db.read_image_bytes(i, cam, t) for t in range(ep["length"])] == want
        schema = db.schema()
        # the source keys, as components spanning the whole vector (their names count 1, not 7 or 8)
        assert schema["actions"]["components"] == {"actions": [0, 7]} and "names" not in schema["actions"]
        assert schema["states"]["components"] == {"state": [0, 8]}
        lerobot = db.metadata()["lerobot"]
        assert lerobot["action_key"] == "actions" and lerobot["state_keys"] == ["state"]
        assert lerobot["cameras"] == {"image": "image", "wrist_image": "wrist_image"}
        assert db.read_meta(1)["task"] == F.TASKS[1] and db.read_meta(0)["embodiment"] == "panda"
    report = verify(root, out)
    assert report.ok and report.episodes_compared == 2
    assert report.arrays == {"actions": 0, "states": 0, "rewards": 0, "is_terminal": 0, "timestamps": 0}
    assert report.cameras["wrist_image"].byte_identical == 10
    assert main(["verify", str(root), str(out)]) == 0


def _rename_feature(root: Path, old: str, new: str) -> None:
    """Rename a feature in ``info.json`` and in every v2 data file."""
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"] = {new if k == old else k: v for k, v in info["features"].items()}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    for path in (root / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([new if n == old else n for n in table.column_names]), path)


def test_action_key_names_the_action_feature(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:2], images="PNG")
    key = "observation.environment_state"
    source = LeRobotSource(root, SourceOptions(action_key=key))
    args = source.read("episode_000001")
    info = source.info()
    source.close()
    cols = episodes[1]["columns"]
    assert args["actions"].dtype == np.float64
    np.testing.assert_array_equal(args["actions"], cols[key])
    np.testing.assert_array_equal(args["extra_arrays"]["action"], cols["action"])  # now an extra array
    assert key not in args["extra_arrays"]
    assert info.schema["actions"] == {"components": {key: [0, 2]}}
    assert info.metadata["lerobot"]["action_key"] == key
    for bad, message in [
        (
            "nope",
            r"action key 'nope' is not a feature; numeric features: action, observation\.environment_state",
        ),
        (F.CAMERA, r"the action feature 'observation\.images\.top' has dtype 'image', not a number"),
    ]:
        with pytest.raises(ConversionError, match=message):
            LeRobotSource(root, SourceOptions(action_key=bad))
    with pytest.raises(ConversionError, match=r"'action' holds the actions and cannot also be a state key"):
        LeRobotSource(root, SourceOptions(state_keys=("observation.state", "action")))


def test_without_an_action_feature_the_error_names_the_options(
    episodes: list[Episode], tmp_path: Path
) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:2], images="PNG")
    _rename_feature(root, "action", "motor_command")
    with pytest.raises(
        ConversionError,
        match=r"no action feature \(neither 'action' nor 'actions'\); name the feature that holds the actions "
        r"with action_key='KEY', and the state with state_keys='K1,K2'; numeric features: motor_command, "
        r"observation\.environment_state, observation\.state",
    ):
        ingest(root, tmp_path / "x.kdb")
    source = LeRobotSource(root, SourceOptions(action_key="motor_command", images=False))
    np.testing.assert_array_equal(source.read("episode_000000")["actions"], episodes[0]["columns"]["action"])
    source.close()


def test_action_key_through_ingest_the_cli_and_verify(episodes: list[Episode], tmp_path: Path) -> None:
    root = F.write_v2(tmp_path / "ds", episodes[:2], images="PNG")
    _rename_feature(root, "action", "motor_command")
    out = tmp_path / "cli.kdb"
    assert main(["ingest", str(root), "-o", str(out), "--action-key", "motor_command", "-q"]) == 0
    ingest(root, tmp_path / "api.kdb", action_key="motor_command")
    for path in (out, tmp_path / "api.kdb"):
        with kinodb.open(path) as db:
            np.testing.assert_array_equal(_arrays(db, 1)["actions"], episodes[1]["columns"]["action"])
            assert db.metadata()["ingest"]["options"]["action_key"] == "motor_command"
        assert verify(root, path).ok  # re-read with the recorded action_key


STAMP0 = 1_700_000_000_123_456_789  # nanoseconds since the epoch: beyond float64's 2**53


def test_state_keys_take_an_int64_column_only_when_its_values_are_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = F.make_episodes(np.random.default_rng(21), [6, 5], cameras={})
    for k, ep in enumerate(eps):
        T = ep["length"]
        ep["columns"]["observation.stamp_ns"] = STAMP0 + 10**9 * k + np.arange(T, dtype=np.int64)
        ep["columns"]["observation.count"] = np.arange(T, dtype=np.int64) + 2**53 - T  # fits float64
    root = F.write_v3(tmp_path / "ds", eps, per_file=2)
    out = tmp_path / "out.kdb"
    keys = ["observation.state", "observation.stamp_ns"]
    message = (
        f"state key 'observation.stamp_ns' holds {STAMP0} at frame 0 (int64), which the float64 states of "
        "observation.state, observation.stamp_ns cannot hold exactly; leave 'observation.stamp_ns' out of "
        "state_keys: it then stays an extra array, with its own dtype"
    )
    with pytest.raises(ConversionError, match=re.escape(message)):
        ingest(root, out, state_keys=keys)
    assert not out.exists()
    assert main(["ingest", str(root), "-o", str(out), "--state-keys", ",".join(keys), "-q"]) == 1
    assert message.replace("of state_keys", "of --state-keys") in capsys.readouterr().err
    ingest(root, out, state_keys=["observation.state"])  # left out: an exact int64 extra array
    with kinodb.open(out) as db:
        got = _arrays(db, 1)
        assert got["observation.stamp_ns"].dtype == np.int64
        assert (
            got["observation.stamp_ns"].reshape(-1).tolist()
            == eps[1]["columns"]["observation.stamp_ns"].tolist()
        )
    keys = ["observation.state", "observation.count"]
    ingest(root, out, state_keys=keys, overwrite=True)  # every value fits float64: merged exactly
    with kinodb.open(out) as db:
        states = _arrays(db, 1)["states"]
        assert states.dtype == np.float64 and db.schema()["states"]["components"][keys[1]] == [3, 4]
        assert states[:, 3].astype(np.int64).tolist() == eps[1]["columns"]["observation.count"].tolist()
    assert verify(root, out).ok


def test_columns_take_the_dtype_info_json_declares_when_that_is_exact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eps = F.make_episodes(np.random.default_rng(22), [6, 5], cameras={})
    eps[0]["columns"]["action"] = eps[0]["columns"]["action"].astype(np.float64)  # declared: float64
    root = F.write_v2(tmp_path / "wide", eps)  # episode 1's parquet still holds float32 actions
    assert pq.read_schema(root / "data" / "chunk-000" / "episode_000001.parquet").field("action").type == (
        pa.list_(pa.float32(), 4)
    )
    out = tmp_path / "wide.kdb"
    ingest(root, out, verify=True)
    with kinodb.open(out) as db:
        for k in range(2):  # float32 -> float64 is exact: every episode gets the declared dtype
            got = _arrays(db, k)["actions"]
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, eps[k]["columns"]["action"])
    eps = F.make_episodes(np.random.default_rng(23), [6, 5], cameras={})
    eps[1]["columns"]["action"] = eps[1]["columns"]["action"].astype(np.float64) / 3  # declared: float32
    root = F.write_v2(tmp_path / "narrow", eps)
    out = tmp_path / "narrow.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        ingest(root, out)
    assert (
        "column 'action' holds float64 values, but meta/info.json declares float32; they stay float64"
        in caplog.text
    )
    assert "pass dtype='float32'" in caplog.text
    with kinodb.open(out) as db:  # no value changed
        np.testing.assert_array_equal(_arrays(db, 1)["actions"], eps[1]["columns"]["action"])


def test_task_replaces_the_per_frame_tasks_too(tmp_path: Path) -> None:
    eps = F.make_episodes(np.random.default_rng(24), [8, 6], cameras={}, task_switch=True)
    root = F.write_v3(tmp_path / "ds", eps, per_file=2)
    out = tmp_path / "out.kdb"
    report = ingest(root, out, task="do the thing", verify=True)
    assert report.verification is not None and report.verification.ok
    from kinodb.windows import FrameWindows

    with kinodb.open(out) as db:
        for k in range(2):
            assert db.read_meta(k)["task"] == "do the thing" and "tasks" not in db.read_meta(k)
            assert "task_index" not in _arrays(db, k)
        assert db.query("task = 'do the thing'").tolist() == [0, 1]
    fw = FrameWindows(str(out))
    assert fw.tasks(range(len(fw))) == ["do the thing"] * 14
    ingest(root, out, overwrite=True)  # without it, episode 0 keeps its two tasks frame by frame
    with kinodb.open(out) as db:
        assert db.read_meta(0)["tasks"] == [F.TASKS[0], F.TASKS[1]] and "task_index" in _arrays(db, 0)


def test_state_or_states_is_the_state_only_when_unambiguous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eps = F.make_openpi_libero(np.random.default_rng(6), [5])
    plural = F.write_openpi_libero(tmp_path / "plural", eps)
    _rename_feature(plural, "state", "states")
    source = LeRobotSource(plural, SourceOptions(images=False))
    np.testing.assert_array_equal(source.read("episode_000000")["states"], eps[0]["columns"]["state"])
    assert source.info().schema["states"] == {"components": {"states": [0, 8]}}
    source.close()
    both = F.write_openpi_libero(tmp_path / "both", eps)
    path = both / "data" / "chunk-000" / "episode_000000.parquet"
    extra = np.arange(15, dtype=np.float32).reshape(5, 3)
    pq.write_table(pq.read_table(path).append_column("states", F._arrow(extra, "fixed")), path)
    info = json.loads((both / "meta" / "info.json").read_text())
    info["features"]["states"] = {"dtype": "float32", "shape": [3], "names": None}
    (both / "meta" / "info.json").write_text(json.dumps(info))
    out = tmp_path / "both.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        ingest(both, out, images=False, verify=True)
    assert "both state and states are features; neither is taken as the state" in caplog.text
    assert "pass state_keys to choose" in caplog.text
    with kinodb.open(out) as db:
        got = _arrays(db, 0)
        assert got["states"].shape == (5, 0)
        np.testing.assert_array_equal(got["state"], eps[0]["columns"]["state"])
        np.testing.assert_array_equal(got["lerobot.states"], extra)  # "states" is kinodb's own name
    ingest(both, out, images=False, state_keys=["states"], overwrite=True)
    with kinodb.open(out) as db:
        got = _arrays(db, 0)
        np.testing.assert_array_equal(got["states"], extra)
        np.testing.assert_array_equal(got["state"], eps[0]["columns"]["state"])


def test_string_features_keep_lists_and_nulls(episodes: list[Episode], tmp_path: Path) -> None:
    # LeRobot writes a string feature of shape (2,) as Sequence(length=2, Value("string")):
    # a fixed_size_list<string>[2] column.
    root = F.write_v2(tmp_path / "ds", episodes[:2], images="PNG")
    per_frame: list[list[Any]] = []
    for e in range(2):
        path = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        table = pq.read_table(path)
        T = table.num_rows
        objects = (
            [["cup", "bowl"]] * T if e == 0 else [["cup", None if t % 2 else f"plate {t}"] for t in range(T)]
        )
        notes = ["calm"] * T if e == 0 else [None if t == 1 else "calm" for t in range(T)]
        per_frame.append(objects)
        flat = pa.array([v for row in objects for v in row], pa.string())
        table = table.append_column("observation.objects", pa.FixedSizeListArray.from_arrays(flat, 2))
        pq.write_table(table.append_column("note", pa.array(notes, pa.string())), path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.objects"] = {"dtype": "string", "shape": [2], "names": None}
    info["features"]["note"] = {"dtype": "string", "shape": [1], "names": None}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    out = tmp_path / "out.kdb"
    ingest(root, out, verify=True)
    with kinodb.open(out) as db:
        first, second = db.read_meta(0), db.read_meta(1)
        assert first["observation.objects"] == ["cup", "bowl"] and first["note"] == "calm"
        assert second["observation.objects"] == per_frame[1]
        assert second["observation.objects"][1] == ["cup", None]
        assert second["note"][:3] == ["calm", None, "calm"]


def test_importing_the_module_stays_light() -> None:
    code = ("import sys, kinodb, kinodb.ingest.lerobot, kinodb.ingest._video; "
            "assert 'pyarrow' not in sys.modules and 'av' not in sys.modules, sorted(sys.modules)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_at_seeks_once_then_decodes_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(0, 40, 24, 32), 10.0, gop=4)
    _, ref = F.reference_decode(path)
    counts = {"seeks": 0, "frames": 0}
    F.count_video_opens(monkeypatch, counts)
    got = _video.decode_at(str(path), np.arange(26, 31) / 10.0, seek=True)
    np.testing.assert_array_equal(got, ref[26:31])
    assert counts["seeks"] == 1 and counts["frames"] <= 4 + 5 + 1  # from the keyframe at 2.4 s to 3.0 s
    counts.update(seeks=0, frames=0)
    np.testing.assert_array_equal(_video.decode_at(str(path), np.arange(26, 31) / 10.0), ref[26:31])
    assert counts == {"opens": 2, "seeks": 0, "frames": 32}


def test_decode_at_unsorted_times_and_tolerance(tmp_path: Path) -> None:
    frames = F.frames_for(0, 10, 24, 32)
    path = tmp_path / "v.mp4"
    F.encode_video(path, frames, 10.0, gop=3)
    _, ref = F.reference_decode(path)
    want = np.array([0.7, 0.2, 0.2 + 1e-4, 0.9 - 1e-4])
    got = _video.decode_at(str(path), want, seek=True)
    np.testing.assert_array_equal(got, ref[[7, 2, 2, 9]])
    with pytest.raises(ConversionError, match="no frame within"):
        _video.decode_at(str(path), np.array([0.2 + 1.5e-4]))
    with pytest.raises(ConversionError, match="short video"):
        _video.decode_at(str(path), np.array([0.5, 1.0]), seek=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ConversionError, match=r"bad\.mp4: not a readable video file"):
        _video.decode_at(str(bad), np.array([0.0]))


# -- the real sample ----------------------------------------------------------------------


def _g1_reference() -> tuple[pa.Table, np.ndarray, np.ndarray]:
    table = pq.read_table(G1 / "data" / "chunk-000" / "episode_000029.parquet")
    times, frames = F.reference_decode(
        G1 / "videos" / "chunk-000" / "observation.images.cam_high" / "episode_000029.mp4"
    )
    return table, times, frames


@needs_g1
@pytest.mark.integration
def test_g1_sample_episode_29(tmp_path: Path) -> None:
    """``kino ingest SAMPLE --episodes 29``: arrays exact, JPEG frames close to a direct decode."""
    out = tmp_path / "g1.kdb"
    assert main(["ingest", str(G1), "-o", str(out), "--episodes", "29", "-q"]) == 0
    table, times, ref = _g1_reference()
    with kinodb.open(out) as db:
        assert len(db) == 1
        ep = db.read_episode(0)
        meta = ep["meta"]
        assert (
            meta["num_frames"] == 221 and meta["fps"] == 30.0 and meta["embodiment"] == "Unitree_G1_Inspire"
        )
        assert meta["task"] == "Pick up the yellow bottle on the table." and meta["episode_index"] == 29
        for name, column in (("actions", "action"), ("states", "observation.state")):
            want = np.stack(table[column].to_numpy(zero_copy_only=False))
            assert ep[name].dtype == np.float32
            np.testing.assert_array_equal(ep[name], want)
        assert ep["timestamps"].dtype == np.float32
        np.testing.assert_array_equal(ep["timestamps"], table["timestamp"].to_numpy())
        assert db.schema()["states"]["names"][:2] == ["kLeftShoulderPitch", "kLeftShoulderRoll"]
        assert db.schema()["cameras"]["cam_high"] == {
            "codec": "jpeg",
            "height": 480,
            "width": 640,
            "channels": 3,
        }
        assert [int(np.argmin(np.abs(times - t))) for t in table["timestamp"].to_numpy()] == list(range(221))
        err = (ep["images"]["cam_high"].astype(np.float64) - ref) ** 2
        psnr = 10 * np.log10(255.0**2 / err.mean(axis=(1, 2, 3)))
        assert psnr.min() > 40, psnr.min()


@needs_g1
@pytest.mark.integration
def test_g1_sample_frames_are_the_direct_decode() -> None:
    """The frames handed to the writer are exactly PyAV's decode of the episode's mp4."""
    _, _, ref = _g1_reference()
    src = LeRobotSource(str(G1), SourceOptions())
    got = src.read("episode_000029")["images"]["cam_high"]
    src.close()
    assert got.dtype == np.uint8 and got.shape == (221, 480, 640, 3)
    np.testing.assert_array_equal(got, ref)


@needs_g1
def test_g1_sample_lists_every_episode_and_skips_absent_ones(tmp_path: Path) -> None:
    src = LeRobotSource(str(G1), SourceOptions(images=False))
    assert src.episodes()[29] == "episode_000029" and len(src.episodes()) == 100
    with pytest.raises(
        ConversionError,
        match=r"episode_000028\.parquet: missing data file of episode 28; this copy holds the data of 1 of "
        r"its 100 episodes \(29\): select them with episodes='29'",
    ):
        src.read("episode_000028")
    src.close()
    report = ingest(G1, tmp_path / "g1.kdb", episodes="28-30", images=False, on_error="skip")
    assert report.episodes == 1 and [k for k, _ in report.skipped] == ["episode_000028", "episode_000030"]


def _mixed_columns(root: Path, seed: int) -> Path:
    """Episode 1's observation.state in float64 under a float32 feature (kept, with a warning),
    and a column of structs in every file (not stored, with a warning)."""
    eps = F.make_episodes(np.random.default_rng(seed), [6, 5], cameras={})
    eps[1]["columns"]["observation.state"] = eps[1]["columns"]["observation.state"].astype(np.float64) / 3
    root = F.write_v2(root, eps)
    for path in sorted((root / "data" / "chunk-000").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.append_column("odd", pa.array([{"a": 1}] * len(table))), path)
    return root


DTYPE_WARNING = "column 'observation.state' holds float64 values, but meta/info.json declares float32"
LEFT_OUT_WARNING = "column 'odd' is not stored: struct<a: int64> is not numeric, text or an image"


def test_verify_does_not_repeat_the_sources_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # verify reads the source again through a new source: each warning is given once a process
    root = _mixed_columns(tmp_path / "api", 31)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        report = ingest(root, tmp_path / "api.kdb", verify=True)
    assert report.verification is not None and report.verification.ok
    assert caplog.text.count(DTYPE_WARNING) == 1 and caplog.text.count(LEFT_OUT_WARNING) == 1
    root = _mixed_columns(tmp_path / "cli", 32)
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "ingest", str(root), "-o", str(tmp_path / "cli.kdb"),
         "--verify", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(DTYPE_WARNING) == 1 and run.stderr.count(LEFT_OUT_WARNING) == 1
    caplog.clear()
    info = root / "meta" / "info.json"
    os.utime(info, ns=(info.stat().st_atime_ns, info.stat().st_mtime_ns + 10**9))  # changed: warned again
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        ingest(root, tmp_path / "again.kdb")
    assert caplog.text.count(DTYPE_WARNING) == 1 and caplog.text.count(LEFT_OUT_WARNING) == 1


def test_episodes_takes_positions_and_says_where_an_episode_index_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = F.make_episodes(np.random.default_rng(33), [5, 4, 6, 3], cameras={})
    for ep, e in zip(eps, [0, 2, 5, 7], strict=True):  # episode_index with gaps
        ep["episode_index"] = e
        ep["columns"]["episode_index"] = np.full(ep["length"], e, np.int64)
    root = F.write_v3(tmp_path / "gaps", eps, per_file=2)
    out = tmp_path / "out.kdb"
    assert main(["ingest", str(root), "-o", str(out), "--episodes", "5", "-q"]) == 1
    assert capsys.readouterr().err == (
        f"error: {root} has 4 episodes (positions 0..3), but --episodes 5 selects 1 beyond the last position "
        "(5); --episodes takes positions in the source's list of episodes, not episode_index values: "
        "episode_index 5 is at position 2, which --episodes 2 selects; positions 0..3 hold episode_index 0, 2, "
        "5, 7; select within 0..3\n"
    )
    with pytest.raises(ConversionError) as info:
        ingest(root, out, episodes=[7, 5, 9])
    assert str(info.value).endswith(
        "not episode_index values: episode_index 5 is at position 2, episode_index 7 is at position 3, which "
        "episodes='2-3' selects; positions 0..3 hold episode_index 0, 2, 5, 7; select within 0..3"
    )
    assert not out.exists()
    assert main(["ingest", str(root), "-o", str(out), "--episodes", "2", "-q"]) == 0
    with kinodb.open(out) as db:
        assert len(db) == 1 and db.read_meta(0)["source_episode"] == "episode_000005"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--episodes SPEC source episodes by position in the source's list, from 0," in text
    assert "(positions, not LeRobot's episode_index values)" in text
