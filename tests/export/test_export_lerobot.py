"""Export to LeRobot v3.0, read back with pyarrow and PyAV, kinodb's ingester and LeRobot itself."""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import kinodb
import kinodb._cli.main as kino
from _factories import smooth_frames
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.export import lerobot as lerobot_export

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

FPS = 10.0
LENGTHS = (6, 9, 12)
COMPONENTS = {"eef": [0, 2], "gripper": [2, 3]}


def _episodes(rng: np.random.Generator, *, lengths: tuple[int, ...] = LENGTHS, size=(32, 48, 3),
              timestamps: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Episodes with float32 actions, float64 states, 2-D and bool extra arrays, one camera."""
    eps = []
    for k, T in enumerate(lengths):
        eps.append({
            "actions": rng.normal(size=(T, 4)).astype(np.float32),
            "states": rng.normal(size=(T, 3)),  # float64
            "rewards": rng.uniform(size=T).astype(np.float32),
            "is_terminal": np.arange(T) == T - 1,
            "images": {"front": smooth_frames(rng, (T, *size))},
            "extra_arrays": {"emb": rng.normal(size=(T, 2, 3)).astype(np.float32), "flag": np.arange(T) % 3 == 0},
            "embodiment": "franka", "task": f"task {k % 2}", "fps": FPS, "success": k != 1,
            "extra": {"scene": "lab", "attempt": k},
            "timestamps": np.arange(T) / FPS + 0.01 * k if timestamps else None,
        })  # fmt: skip
    return eps


def _write(path: Path, eps: list[dict[str, Any]], *, codec: str = "jpeg") -> Path:
    with kinodb.Writer(path, mode="w", image_codec=codec, schema={"states": {"components": COMPONENTS}}) as w:
        for ep in eps:
            w.add_episode(**ep)
    return path


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    eps = _episodes(np.random.default_rng(7))
    return _write(tmp_path / "src.kdb", eps, codec="png"), eps


@pytest.fixture
def exported(source: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Path:
    out = tmp_path / "lr"
    export(source[0], out, format="lerobot")
    return out


# -- helpers --------------------------------------------------------------------------------


def _info(root: Path) -> dict[str, Any]:
    return json.loads((root / "meta/info.json").read_text())  # type: ignore[no-any-return]


def _values(table: Any, key: str, shape: list[int]) -> np.ndarray:
    col = table.column(key).combine_chunks()
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).reshape(table.num_rows, *shape)


def _episodes_table(root: Path) -> Any:
    files = sorted((root / "meta/episodes").glob("*/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _decode(path: Path) -> tuple[np.ndarray, list[Fraction], list[bool], Any]:
    """Every frame of an mp4 (RGB), its time, whether it is a keyframe, and the stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times, keys = [], [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(frame.pts * stream.time_base)
            keys.append(bool(frame.key_frame))
        return np.stack(frames), times, keys, stream.codec_context.name


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- layout and info.json ---------------------------------------------------------------------


def test_layout_and_info(exported: Path) -> None:
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
        "meta/kinodb.json", "meta/kinodb_episodes.jsonl", "meta/stats.json", "meta/tasks.parquet",
        "videos/observation.images.front/chunk-000/file-000.mp4",
    ]  # fmt: skip
    info = _info(exported)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and isinstance(info["fps"], int)
    assert info["robot_type"] == "franka"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (
        1000,
        100,
        200,
    )
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert list(feats) == [
        "action", "observation.state", "observation.emb", "observation.flag", "next.reward", "next.done",
        "observation.images.front", "timestamp", "frame_index", "episode_index", "index", "task_index",
    ]  # fmt: skip
    assert feats["action"] == {"dtype": "float32", "shape": [4], "names": None}
    assert feats["observation.state"] == {
        "dtype": "float64", "shape": [3], "names": {"eef": ["eef_0", "eef_1"], "gripper": ["gripper"]},
    }  # fmt: skip
    assert feats["observation.emb"]["shape"] == [2, 3] and feats["observation.flag"]["dtype"] == "bool"
    assert feats["next.reward"] == {"dtype": "float32", "shape": [1], "names": None}
    assert feats["next.done"]["dtype"] == "bool" and feats["timestamp"]["dtype"] == "float32"
    front = feats["observation.images.front"]
    assert front["dtype"] == "video" and front["shape"] == [32, 48, 3]
    assert front["names"] == ["height", "width", "channels"]
    assert front["info"] == {
        "video.height": 32, "video.width": 48, "video.codec": "h264", "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False, "video.fps": 10, "video.channels": 3, "has_audio": False,
    }  # fmt: skip


def test_kinodb_metadata_files(exported: Path, source: tuple[Path, list[dict[str, Any]]]) -> None:
    meta = json.loads((exported / "meta/kinodb.json").read_text())
    assert meta["export"]["format"] == "lerobot" and meta["export"]["video_codec"] == "h264"
    assert meta["arrays"]["observation.emb"] == {"array": "emb", "dtype": "float32", "shape": [2, 3]}
    assert meta["arrays"]["observation.flag"] == {"array": "flag", "dtype": "bool", "shape": []}
    assert meta["cameras"] == {"observation.images.front": "front"} and meta["timestamps"] is None
    assert meta["dataset"]["schema"]["states"]["components"] == COMPONENTS
    lines = [json.loads(x) for x in (exported / "meta/kinodb_episodes.jsonl").read_text().splitlines()]
    assert [(x["episode_index"], x["position"]) for x in lines] == [(0, 0), (1, 1), (2, 2)]
    assert [x["meta"]["success"] for x in lines] == [True, False, True] and lines[2]["meta"]["attempt"] == 2


# -- data and meta tables ---------------------------------------------------------------------


def test_data_rows_keep_arrays_exactly(exported: Path, source: tuple[Path, list[dict[str, Any]]]) -> None:
    eps = source[1]
    pf = pq.ParquetFile(exported / "data/chunk-000/file-000.parquet")
    assert pf.metadata.num_row_groups == 1  # episodes share row groups (see docs/lerobot.md)
    table = pf.read()
    schema = table.schema
    assert schema.field("action").type == pa.list_(pa.float32(), 4)
    assert schema.field("observation.state").type == pa.list_(pa.float64(), 3)
    assert schema.field("observation.emb").type == pa.list_(pa.list_(pa.float32()))
    assert schema.field("timestamp").type == pa.float32() and "observation.images.front" not in schema.names
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 4, "_type": "List"}
    assert hf["observation.emb"] == {"shape": [2, 3], "dtype": "float32", "_type": "Array2D"}
    assert hf["index"] == {"dtype": "int64", "_type": "Value"}
    start = 0
    for k, ep in enumerate(eps):
        T = len(ep["actions"])
        rows = table.slice(start, T)
        assert _values(rows, "action", [4]).dtype == np.float32
        np.testing.assert_array_equal(_values(rows, "action", [4]), ep["actions"])
        assert _values(rows, "observation.state", [3]).dtype == np.float64
        np.testing.assert_array_equal(_values(rows, "observation.state", [3]), ep["states"])
        np.testing.assert_array_equal(_values(rows, "observation.emb", [2, 3]), ep["extra_arrays"]["emb"])
        np.testing.assert_array_equal(_values(rows, "observation.flag", []), ep["extra_arrays"]["flag"])
        np.testing.assert_array_equal(_values(rows, "next.reward", []), ep["rewards"])
        np.testing.assert_array_equal(_values(rows, "next.done", []), ep["is_terminal"])
        frame_index = _values(rows, "frame_index", [])
        np.testing.assert_array_equal(frame_index, np.arange(T))
        # LeRobot's grid: frame_index / fps rounded to float32, bit for bit
        assert _values(rows, "timestamp", []).tobytes() == (np.arange(T) / FPS).astype(np.float32).tobytes()
        np.testing.assert_array_equal(_values(rows, "episode_index", []), k)
        np.testing.assert_array_equal(_values(rows, "index", []), np.arange(start, start + T))
        np.testing.assert_array_equal(_values(rows, "task_index", []), k % 2)
        start += T


def test_tasks_and_episodes_tables(exported: Path) -> None:
    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "__index_level_0__"]
    assert tasks.to_pylist() == [
        {"task_index": 0, "__index_level_0__": "task 0"}, {"task_index": 1, "__index_level_0__": "task 1"},
    ]  # fmt: skip
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    eps = _episodes_table(exported).to_pylist()
    key = "videos/observation.images.front"
    assert [e["episode_index"] for e in eps] == [0, 1, 2]
    assert [e["tasks"] for e in eps] == [["task 0"], ["task 1"], ["task 0"]]
    assert [e["length"] for e in eps] == list(LENGTHS)
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 6), (6, 15), (15, 27)]
    assert all(e["data/chunk_index"] == e["data/file_index"] == 0 for e in eps)
    assert all(e[f"{key}/chunk_index"] == e[f"{key}/file_index"] == 0 for e in eps)
    assert all(e["meta/episodes/chunk_index"] == e["meta/episodes/file_index"] == 0 for e in eps)
    assert [(e[f"{key}/from_timestamp"], e[f"{key}/to_timestamp"]) for e in eps] == [
        (0.0, 0.6), (0.6, 1.5), (1.5, 2.7)
    ]  # fmt: skip
    assert eps[1]["stats/action/count"] == [9] and len(eps[1]["stats/action/q50"]) == 4
    assert np.asarray(eps[0]["stats/observation.images.front/mean"]).shape == (3, 1, 1)


def test_tasks_read_by_pandas_as_lerobot_does(exported: Path) -> None:
    pd = pytest.importorskip("pandas")
    tasks = pd.read_parquet(exported / "meta/tasks.parquet")
    assert list(tasks.index) == ["task 0", "task 1"] and list(tasks.columns) == ["task_index"]
    assert tasks.iloc[1].name == "task 1" and int(tasks.loc["task 0"].task_index) == 0


def test_stats(exported: Path, source: tuple[Path, list[dict[str, Any]]]) -> None:
    stats = json.loads((exported / "meta/stats.json").read_text())
    actions = np.concatenate([ep["actions"] for ep in source[1]]).astype(np.float64)
    a = stats["action"]
    assert a["count"] == [sum(LENGTHS)]
    np.testing.assert_allclose(a["mean"], actions.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(a["std"], actions.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(a["min"], actions.min(axis=0))
    np.testing.assert_array_equal(a["max"], actions.max(axis=0))
    assert {"q01", "q10", "q50", "q90", "q99"} <= set(a)
    assert stats["observation.emb"]["mean"] and np.asarray(stats["observation.emb"]["mean"]).shape == (2, 3)
    assert stats["next.done"]["max"] == [True] and stats["frame_index"]["max"] == [11]
    img = {k: np.asarray(v) for k, v in stats["observation.images.front"].items()}
    assert img["mean"].shape == (3, 1, 1) and 0 <= img["min"].min() <= img["max"].max() <= 1
    frames = np.concatenate([ep["images"]["front"] for ep in source[1]]).astype(np.float64) / 255
    np.testing.assert_allclose(img["mean"].ravel(), frames.mean(axis=(0, 1, 2)), rtol=1e-9)


# -- videos ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "name", "min_psnr"), [("h264", "h264", 35.0), ("av1", "av1", 30.0)])
def test_video_frames_on_the_grid(source: tuple[Path, list[dict[str, Any]]], tmp_path: Path, codec: str,
                                  name: str, min_psnr: float) -> None:  # fmt: skip
    out = tmp_path / codec
    export(source[0], out, format="lerobot", video_codec=codec)
    frames, times, keys, decoded_with = _decode(
        out / "videos/observation.images.front/chunk-000/file-000.mp4"
    )
    assert decoded_with in (name, "libdav1d") and _info(out)["features"]["observation.images.front"]["info"][
        "video.codec"
    ] == name  # fmt: skip
    want = np.concatenate([ep["images"]["front"] for ep in source[1]])
    assert frames.shape == want.shape == (sum(LENGTHS), 32, 48, 3)
    assert times == [Fraction(n, 10) for n in range(len(want))]  # exactly frame / fps
    assert all(keys[s] for s in (0, 6, 15))  # every episode starts with a keyframe
    assert min(_psnr(f, w) for f, w in zip(frames, want, strict=True)) > min_psnr
    with av.open(str(out / "videos/observation.images.front/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_episode_spans_find_their_frames(exported: Path, source: tuple[Path, list[dict[str, Any]]]) -> None:
    """Frame t of episode e is the video frame at from_timestamp + timestamp, as LeRobot looks it up."""
    frames, times, _, _ = _decode(exported / "videos/observation.images.front/chunk-000/file-000.mp4")
    seconds = np.array([float(t) for t in times])
    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    for e, row in enumerate(_episodes_table(exported).to_pylist()):
        offset = row["videos/observation.images.front/from_timestamp"]
        rows = data.filter(pa.compute.equal(data["episode_index"], e))
        for t, ts in enumerate(_values(rows, "timestamp", []).tolist()):
            nearest = int(np.argmin(np.abs(seconds - (offset + ts))))
            assert abs(seconds[nearest] - (offset + ts)) <= 1e-4
            assert _psnr(frames[nearest], source[1][e]["images"]["front"][t]) > 35


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["png", "jpeg", "raw"])
def test_images_as_image(tmp_path: Path, codec: str) -> None:
    eps = _episodes(np.random.default_rng(3), lengths=(3, 4))
    src = _write(tmp_path / "src.kdb", eps, codec=codec)
    out = tmp_path / "lr"
    report = export(src, out, format="lerobot", images_as="image")
    assert report.warnings == () and not (out / "videos").exists()
    info = _info(out)
    assert info["video_path"] is None and info["features"]["observation.images.front"]["dtype"] == "image"
    table = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert table.schema.field("observation.images.front").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    cells = table.column("observation.images.front").to_pylist()
    ext = "jpg" if codec == "jpeg" else "png"
    assert [c["path"] for c in cells[:4]] == [f"frame-{t:06d}.{ext}" for t in (0, 1, 2, 0)]
    with kinodb.open(src) as db:
        for k, (e, t) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]):
            blob = cells[k]["bytes"]
            if codec != "raw":
                assert blob == db.read_image_bytes(e, "front", t)  # stored bytes, unchanged
            assert blob[:8] == b"\x89PNG\r\n\x1a\n" or codec == "jpeg"
            with Image.open(io.BytesIO(blob)) as im:
                np.testing.assert_array_equal(
                    np.asarray(im), db.read_frames(e, t, t + 1)["images"]["front"][0]
                )


def test_images_past_one_arrow_array_are_written_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An episode's frames past 2 GiB (an arrow binary array's most) are split into chunks;
    # a small limit stands in for it here. The files hold the same rows either way.
    from kinodb.export import _lerobot_tables

    src = _write(tmp_path / "src.kdb", _episodes(np.random.default_rng(4), lengths=(3, 5)), codec="png")
    export(src, tmp_path / "whole", format="lerobot", images_as="image")
    monkeypatch.setattr(_lerobot_tables, "_BINARY_LIMIT", 2500)  # a few frames a chunk
    export(src, tmp_path / "chunked", format="lerobot", images_as="image")
    whole, chunked = (
        pq.read_table(tmp_path / d / "data/chunk-000/file-000.parquet") for d in ("whole", "chunked")
    )
    assert chunked.schema.equals(whole.schema, check_metadata=True) and chunked.equals(whole)
    sizes = [len(c["bytes"]) + len(c["path"]) for c in whole.column("observation.images.front").to_pylist()]
    assert max(sizes) <= 2500 < sum(sizes[:3])  # so the first episode did need chunks


def test_image_features_hold_the_cameras_channels(tmp_path: Path) -> None:
    # A camera may keep greyscale JPEG bytes under 3 channels (as TFDS allows); readers
    # repeat the grey. Its image feature holds what they read, as PNG, for such an episode.
    from kinodb.kdb._codecs import EncodedFrames

    rng = np.random.default_rng(6)
    grey = rng.integers(0, 256, (3, 8, 10), dtype=np.uint8)
    blobs = []
    for t, frame in enumerate(grey):
        buf = io.BytesIO()
        Image.fromarray(frame if t != 1 else np.stack([frame] * 3, -1)).save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())  # frame 1 is an RGB JPEG, 0 and 2 greyscale ones
    src = tmp_path / "grey.kdb"
    with kinodb.Writer(src, mode="w") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"front": EncodedFrames(blobs, 3)})
    out = tmp_path / "lr"
    export(src, out, format="lerobot", images_as="image")
    cells = (
        pq.read_table(out / "data/chunk-000/file-000.parquet").column("observation.images.front").to_pylist()
    )
    assert [c["path"] for c in cells] == ["frame-000000.png", "frame-000001.png", "frame-000002.png"]
    with kinodb.open(src) as db:
        for t, cell in enumerate(cells):
            with Image.open(io.BytesIO(cell["bytes"])) as im:
                assert im.mode == "RGB"
                np.testing.assert_array_equal(
                    np.asarray(im), db.read_frames(0, t, t + 1)["images"]["front"][0]
                )
    from kinodb.ingest import ingest

    ingest(out, tmp_path / "back.kdb")  # one format per episode: kinodb's own ingest takes it back
    with kinodb.open(tmp_path / "back.kdb") as back, kinodb.open(src) as db:
        np.testing.assert_array_equal(
            back.read_episode(0)["images"]["front"], db.read_episode(0)["images"]["front"]
        )


def test_cameras_that_cannot_be_video_become_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    eps = _episodes(rng, lengths=(3, 5))
    for ep in eps:
        T = len(ep["actions"])
        ep["images"] = {"depth": smooth_frames(rng, (T, 8, 8, 1)), "odd": smooth_frames(rng, (T, 7, 8, 3)),
                        "front": smooth_frames(rng, (T, 8, 8, 3))}  # fmt: skip
    src = _write(tmp_path / "src.kdb", eps, codec="png")
    report = export(src, tmp_path / "lr", format="lerobot")
    assert len(report.warnings) == 2
    assert "'depth'" in report.warnings[0] and "1 channel" in report.warnings[0]
    assert "'odd'" in report.warnings[1] and "even" in report.warnings[1]
    feats = _info(tmp_path / "lr")["features"]
    kinds = {k: feats[f"observation.images.{k}"]["dtype"] for k in ("depth", "odd", "front")}
    assert kinds == {"depth": "image", "odd": "image", "front": "video"}
    assert feats["observation.images.depth"]["shape"] == [8, 8, 1]
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.depth"]["mean"]).shape == (1, 1, 1)


# -- timestamps -----------------------------------------------------------------------------


def test_timestamps_on_the_grid_are_not_duplicated(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(5), lengths=(4, 5))
    for ep in eps:
        ep["timestamps"] = (np.arange(len(ep["actions"])) / FPS).astype(np.float32).astype(np.float64)
    out = tmp_path / "lr"
    export(_write(tmp_path / "src.kdb", eps), out, format="lerobot")
    assert "observation.timestamps" not in _info(out)["features"]
    assert json.loads((out / "meta/kinodb.json").read_text())["timestamps"] == "timestamp"


def test_timestamps_off_the_grid_are_kept(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(6), lengths=(4, 5), timestamps=True)
    out = tmp_path / "lr"
    export(_write(tmp_path / "src.kdb", eps), out, format="lerobot")
    assert _info(out)["features"]["observation.timestamps"] == {
        "dtype": "float64",
        "shape": [1],
        "names": None,
    }
    table = pq.read_table(out / "data/chunk-000/file-000.parquet")
    kept = _values(table, "observation.timestamps", [])
    np.testing.assert_array_equal(kept, np.concatenate([ep["timestamps"] for ep in eps]))
    grid = _values(table, "timestamp", [])
    np.testing.assert_array_equal(grid[4:], (np.arange(5) / FPS).astype(np.float32))


# -- several files --------------------------------------------------------------------------


def test_files_roll_over_at_their_size_limits(source: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(lerobot_export, "DATA_FILES_SIZE_IN_MB", 1e-6)  # every episode in a file of its own
    monkeypatch.setattr(lerobot_export, "VIDEO_FILES_SIZE_IN_MB", 1e-6)
    monkeypatch.setattr(lerobot_export, "CHUNKS_SIZE", 2)  # two files per chunk folder
    out = tmp_path / "lr"
    export(source[0], out, format="lerobot")
    where = [(0, 0), (0, 1), (1, 0)]
    for chunk, file in where:
        assert (out / f"data/chunk-{chunk:03d}/file-{file:03d}.parquet").is_file()
        assert (out / f"videos/observation.images.front/chunk-{chunk:03d}/file-{file:03d}.mp4").is_file()
        assert (out / f"meta/episodes/chunk-{chunk:03d}/file-{file:03d}.parquet").is_file()
    rows = _episodes_table(out).to_pylist()
    key = "videos/observation.images.front"
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == where
    assert [(r[f"{key}/chunk_index"], r[f"{key}/file_index"]) for r in rows] == where
    assert [(r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]) for r in rows] == where
    assert [r[f"{key}/from_timestamp"] for r in rows] == [0.0, 0.0, 0.0]
    for r, (chunk, file), ep in zip(rows, where, source[1], strict=True):
        data = pq.read_table(out / f"data/chunk-{chunk:03d}/file-{file:03d}.parquet")
        np.testing.assert_array_equal(_values(data, "action", [4]), ep["actions"])
        np.testing.assert_array_equal(_values(data, "index", []), np.arange(r["dataset_from_index"],
                                                                            r["dataset_to_index"]))  # fmt: skip
        frames, _, _, _ = _decode(out / f"{key}/chunk-{chunk:03d}/file-{file:03d}.mp4")
        assert len(frames) == r["length"]


# -- what cannot be one LeRobot dataset -------------------------------------------------------


def _refused(tmp_path: Path, eps: list[dict[str, Any]], *match: str) -> None:
    src = _write(tmp_path / "src.kdb", eps)
    with pytest.raises(ConversionError) as exc:
        export(src, tmp_path / "lr", format="lerobot")
    for text in match:
        assert text in str(exc.value)
    assert not (tmp_path / "lr").exists() and [p.name for p in tmp_path.iterdir()] == ["src.kdb"]


def test_different_fps_is_refused(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(8), lengths=(3, 4, 5))
    eps[2]["fps"] = 15.0
    _refused(tmp_path, eps, "different fps", "10: 2 episodes", "15: 1 episode)", "--filter 'fps = 10'")


def test_different_action_dims_are_refused(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(9), lengths=(3, 4))
    eps[1]["actions"] = np.zeros((4, 6), np.float32)
    _refused(tmp_path, eps, "different action dims", "4: 1 episode,", "6: 1 episode)", "action_dim = 4")


def test_different_state_dims_are_refused(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(9), lengths=(3, 4))
    eps[1]["states"] = np.zeros((4, 2))
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src) as w:  # no components: they would not fit 2 dims
        for ep in eps:
            w.add_episode(**ep)
    with pytest.raises(ConversionError, match="different state dims"):
        export(src, tmp_path / "lr", format="lerobot")


def test_different_arrays_or_cameras_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    eps = _episodes(rng, lengths=(3, 4))
    eps[1]["extra_arrays"]["emb"] = eps[1]["extra_arrays"]["emb"].astype(np.float64)
    _refused(tmp_path, eps, "hold different arrays (dtype[per-frame shape]) or cameras", "1 episode (first: 0) holds array emb float32[2, 3];",
             "1 episode (first: 1) holds array emb float64[2, 3];", 'episode 0 with --filter "episode_id = 0"')  # fmt: skip
    eps = _episodes(rng, lengths=(3, 4))
    eps[1]["images"] = {"front": smooth_frames(rng, (4, 16, 16, 3))}
    _refused(tmp_path, eps, "holds camera front [32, 48, 3];", "holds camera front [16, 16, 3]; a LeRobot")


@pytest.mark.parametrize(("name", "match"), [("a/b", "cannot hold '/'"), ("next.reward", "both be")])
def test_names_that_cannot_be_features_are_refused(tmp_path: Path, name: str, match: str) -> None:
    eps = _episodes(np.random.default_rng(11), lengths=(3,))
    eps[0]["extra_arrays"][name] = np.zeros(3, np.float32)
    _refused(tmp_path, eps, match)


def test_arrays_holding_no_values_are_refused(tmp_path: Path) -> None:
    eps = _episodes(np.random.default_rng(11), lengths=(3,))
    eps[0]["extra_arrays"]["empty"] = np.zeros((3, 2, 0), np.float32)
    _refused(tmp_path, eps, "array 'empty' is [2, 0] per frame, holding no values")


def test_unsigned_values_past_int64_keep_their_statistics(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    big = np.array([2**64 - 1, 2**63 + 1, 5], np.uint64)
    with kinodb.Writer(src) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), fps=10.0, task="t", extra_arrays={"big": big})
    export(src, tmp_path / "lr", format="lerobot")
    data = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.big").type == pa.uint64()
    assert data["observation.big"].to_pylist() == big.tolist()
    row = _episodes_table(tmp_path / "lr").to_pylist()[0]
    assert (row["stats/observation.big/min"], row["stats/observation.big/max"]) == ([5], [2**64 - 1])
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())
    assert stats["observation.big"]["max"] == [2**64 - 1]


def test_option_errors(source: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lerobot"):
        export(source[0], tmp_path / "x", format="numpy", video_codec="av1")
    with pytest.raises(ValueError, match="video_codec must be one of h264, av1"):
        export(source[0], tmp_path / "y", format="lerobot", video_codec="vp9")
    with pytest.raises(ValueError, match="images_as"):
        export(source[0], tmp_path / "z", format="lerobot", images_as="png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.kdb"]


def test_filter_renumbers_episodes(source: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    out = tmp_path / "lr"
    report = export(source[0], out, format="lerobot", filter="success = true")
    assert (report.episodes, report.frames) == (2, LENGTHS[0] + LENGTHS[2])
    rows = _episodes_table(out).to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1] and [r["length"] for r in rows] == [6, 12]
    assert _info(out)["total_tasks"] == 1
    lines = (out / "meta/kinodb_episodes.jsonl").read_text().splitlines()
    assert [json.loads(x)["position"] for x in lines] == [0, 2]


# -- command line ---------------------------------------------------------------------------


def test_cli(
    source: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lr"
    args = ["export", str(source[0]), "-o", str(out), "--format", "lerobot", "--video-codec", "av1"]
    assert kino.main(args) == 0
    assert "as lerobot" in capsys.readouterr().out.splitlines()[-1]
    assert _info(out)["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    assert kino.main([*args, "--force", "--images-as", "image"]) == 0
    assert _info(out)["features"]["observation.images.front"]["dtype"] == "image"
    assert kino.main(["export", str(source[0]), "-o", str(tmp_path / "n"), "--video-codec", "av1"]) == 2
    assert "apply to format 'lerobot' only" in capsys.readouterr().err


def test_import_kinodb_export_stays_light() -> None:
    code = "import sys, kinodb, kinodb.export, kinodb.export.lerobot; sys.exit('pyarrow' in sys.modules or 'av' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- read back by kinodb's LeRobot ingester ---------------------------------------------------


def _ingester() -> Any:
    """``kinodb.ingest.ingest`` (its LeRobot source needs the pyarrow and av imported above)."""
    from kinodb.ingest import ingest

    return ingest


@pytest.mark.parametrize("images_as", ["video", "image"])
def test_ingest_of_the_export_keeps_arrays_and_frames(tmp_path: Path, images_as: str) -> None:
    ingest = _ingester()
    eps = _episodes(np.random.default_rng(12))
    src = _write(tmp_path / "src.kdb", eps, codec="png")
    export(src, tmp_path / "lr", format="lerobot", images_as=images_as)
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "lr", back, format="lerobot", image_codec="png")
    with kinodb.open(src) as a, kinodb.open(back) as b:
        assert len(a) == len(b) == 3
        assert b.schema()["states"]["components"] == COMPONENTS
        for i in range(3):
            x, y = a.read_episode(i), b.read_episode(i)
            for name in ("actions", "states", "rewards", "is_terminal"):
                assert x[name].dtype == y[name].dtype, name
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)
            for name in ("emb", "flag"):  # their own names, restored from meta/kinodb.json
                assert y[name].dtype == x[name].dtype
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)
            assert "timestamps" not in y  # the source had none: the LeRobot grid is not kept
            extra = {k: v for k, v in y["meta"].items() if k not in ("source_file", "source_episode")}
            assert extra == x["meta"], (extra, x["meta"])  # success, total reward, extra fields too
            got, want = y["images"]["front"], x["images"]["front"]
            assert got.shape == want.shape
            if images_as == "image":
                np.testing.assert_array_equal(got, want)  # PNG bytes passed through
            else:
                assert min(_psnr(g, w) for g, w in zip(got, want, strict=True)) > 35


# -- read back by LeRobot itself ----------------------------------------------------------------


def _lerobot_dataset_class(monkeypatch: pytest.MonkeyPatch) -> Any:
    """LeRobot's ``LeRobotDataset``, offline, or skip when ``lerobot`` cannot be imported."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except Exception as exc:  # ImportError, or a broken torchvision raising at import
        pytest.skip(f"lerobot is not importable ({type(exc).__name__}: {exc}); see docs/lerobot.md")
    return LeRobotDataset


@pytest.mark.integration
@pytest.mark.parametrize("images_as", ["video", "image"])
def test_lerobot_dataset_reads_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images_as: str
) -> None:
    LeRobotDataset = _lerobot_dataset_class(monkeypatch)
    eps = _episodes(np.random.default_rng(13))
    src = _write(tmp_path / "src.kdb", eps, codec="png")
    root = tmp_path / "lr"
    export(src, root, format="lerobot", images_as=images_as)
    ds = LeRobotDataset("kinodb/export-test", root=root, video_backend="pyav")
    assert (len(ds), ds.num_episodes, ds.fps) == (sum(LENGTHS), 3, 10)
    index = 0
    for k, ep in enumerate(eps):
        for t in range(len(ep["actions"])):
            item = ds[index]
            assert (
                int(item["episode_index"]) == k
                and int(item["frame_index"]) == t
                and int(item["index"]) == index
            )
            np.testing.assert_array_equal(item["action"].numpy(), ep["actions"][t])
            np.testing.assert_allclose(item["observation.state"].numpy(), ep["states"][t], rtol=1e-6)
            np.testing.assert_array_equal(item["observation.emb"].numpy(), ep["extra_arrays"]["emb"][t])
            assert bool(item["next.done"]) == ep["is_terminal"][t] and item["task"] == ep["task"]
            frame = item["observation.images.front"].numpy()  # (C, H, W) float in [0, 1]
            assert frame.shape == (3, 32, 48)
            got = np.round(frame.transpose(1, 2, 0) * 255).astype(np.uint8)
            assert _psnr(got, ep["images"]["front"][t]) > (35 if images_as == "video" else 99)
            index += 1
    stats = ds.meta.stats
    np.testing.assert_allclose(stats["action"]["mean"], np.concatenate([e["actions"] for e in eps]).mean(axis=0),
                               rtol=1e-6)  # fmt: skip
    window = LeRobotDataset("kinodb/export-test", root=root, video_backend="pyav",
                            delta_timestamps={"action": [-0.1, 0.0, 0.1],
                                              "observation.images.front": [-0.1, 0.0]})  # fmt: skip
    item = window[7]  # episode 1, frame 1
    assert tuple(item["action"].shape) == (3, 4) and tuple(item["observation.images.front"].shape) == (
        2,
        3,
        32,
        48,
    )
    np.testing.assert_array_equal(item["action"].numpy(), eps[1]["actions"][0:3])
    assert item["action_is_pad"].tolist() == [False, False, False]


def test_a_task_index_array_without_a_task_list_is_an_ordinary_array(tmp_path: Path) -> None:
    src = tmp_path / "ti.kdb"
    with kinodb.Writer(src) as w:
        for k in range(2):
            w.add_episode(actions=np.zeros((4, 2), np.float32), fps=10.0, task="push",
                          extra_arrays={"task_index": np.full(4, 7 + k, np.int64)})  # fmt: skip
    export(src, tmp_path / "out", format="lerobot")
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["features"]["observation.task_index"]["dtype"] == "int64"
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "data" / "chunk-000" / "file-000.parquet")
    assert table["observation.task_index"].to_pylist() == [7] * 4 + [8] * 4
    assert table["task_index"].to_pylist() == [0] * 8  # LeRobot's own column: the episode's task


def test_an_encoder_failure_is_a_conversion_error_naming_the_file(tmp_path: Path) -> None:
    # A muxer refusing a packet (as SVT-AV1 sometimes makes it) is kinodb's error, exit 1.
    import av

    from kinodb.errors import ConversionError
    from kinodb.export._video_encode import CODECS, VideoFile

    video = VideoFile(str(tmp_path / "v.mp4"), CODECS["h264"], fps=10.0, height=16, width=16)

    class Refusing:  # the real container, whose muxer refuses every packet
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def mux(self, packet: Any) -> None:
            raise av.error.ArgumentError(22, "Invalid argument")

        def close(self) -> None:
            self.inner.close()

    video._container = Refusing(video._container)
    with pytest.raises(
        ConversionError, match=r"v\.mp4: the libx264 encoder failed after .* --video-codec h264"
    ):
        video.add(np.zeros((40, 16, 16, 3), np.uint8), episode_start=True)
        video.close()
    video.close(flush=False)


def test_an_abandoned_av1_file_still_ends_the_encoder_stream(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # After a failure the file is discarded, but SVT-AV1 torn down without its end of
    # stream logs an error (and can hang): close(flush=False) drains it without muxing.
    pytest.importorskip("av")
    from kinodb.export._video_encode import CODECS, VideoFile

    video = VideoFile(str(tmp_path / "v.mp4"), CODECS["av1"], fps=10.0, height=64, width=64)
    video.add(np.zeros((12, 64, 64, 3), np.uint8), episode_start=True)
    written = video.bytes
    video.close(flush=False)
    assert video.bytes == written  # nothing more was muxed
    del video
    gc.collect()  # the encoder is torn down with its stream
    assert "without sending EOS" not in capfd.readouterr().err


def test_episodes_of_other_arrays_are_named_with_a_filter_that_works(tmp_path: Path) -> None:
    src = tmp_path / "mixed.kdb"
    with kinodb.Writer(src) as w:
        for k in range(7):  # episodes 2, 3 and 4 (and 6) hold an array the others lack
            extra = {"force": np.zeros((3, 2), np.float32)} if k in (2, 3, 4, 6) else {}
            w.add_episode(actions=np.zeros((3, 2), np.float32), fps=FPS, extra_arrays=extra)
    with pytest.raises(ConversionError) as exc:
        export(src, tmp_path / "lr", format="lerobot")
    message = str(exc.value)
    assert (
        "3 episodes (first: 0) hold nothing more; 4 episodes (first: 2) hold array force float32[2]"
        in message
    )
    assert message.endswith('e.g. the 3 episodes like episode 0 with --filter "episode_id IN (0, 1, 5)"')
    export(src, tmp_path / "a", format="lerobot", filter="episode_id IN (0, 1, 5)")
    export(src, tmp_path / "b", format="lerobot", filter="episode_id BETWEEN 2 AND 4 OR episode_id = 6")
    assert [_info(tmp_path / p)["total_episodes"] for p in "ab"] == [3, 4]


def test_episode_filters_keep_exactly_their_episodes(tmp_path: Path) -> None:
    from kinodb.export._base import episodes_filter, split_advice

    src = tmp_path / "many.kdb"
    with kinodb.Writer(src) as w:
        for k in range(40):
            w.add_episode(actions=np.zeros((2, 1), np.float32), embodiment="ur5" if k >= 30 else "panda")
    with kinodb.open(src) as db:
        table = db.episodes()
        for group in ([3], [0, 1], [0, 1, 2, 7, 9, 10, 11, 12, 39], list(range(0, 40, 2))):
            assert db.query(episodes_filter(table, group)).tolist() == group
        assert split_advice(table, list(range(30, 40))).endswith("with --filter \"embodiment = 'ur5'\"")
        assert "episode_id BETWEEN 0 AND 9" in split_advice(table, list(range(10)))  # panda: also 10..29


def test_image_statistics_keep_no_full_size_frames(tmp_path: Path) -> None:
    from kinodb.export import _lerobot_stats as stats_

    frames = np.random.default_rng(3).integers(0, 255, (8, 480, 640, 3), dtype=np.uint8)
    small = stats_.downsample(frames)
    assert small.shape == (8, 120, 160, 3) and not np.shares_memory(small, frames)
    picked = lerobot_export._pick(frames, np.array([1, 5, 9]), 0)
    assert picked.shape == (2, 120, 160, 3) and not np.shares_memory(picked, frames)
    assert picked.base is None or picked.base.nbytes == picked.nbytes  # holds only the samples


# -- non-finite values and statistics left out --------------------------------------------------


def _strict_json(path: Path) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_statistics_leave_non_finite_values_out_as_kino_stats_does(tmp_path: Path) -> None:
    import warnings

    from kinodb.stats import compute_stats

    rng = np.random.default_rng(4)
    states = [rng.normal(size=(T, 4)).astype(np.float32) for T in (10, 7, 12)]
    states[0][2, 0], states[1][4, 1], states[2][[0, 5], 0] = np.inf, np.nan, [-np.inf, np.nan]
    states[1][:, 2] = np.nan  # element 2 has finite values in episodes 0 and 2 only
    for s in states:
        s[:, 3] = np.nan  # element 3 has none at all
    path = tmp_path / "nan.kdb"
    with kinodb.Writer(path) as w:
        for s in states:
            w.add_episode(actions=rng.normal(size=(len(s), 2)).astype(np.float32), states=s, fps=FPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bare NumPy RuntimeWarning on the way
        export(path, tmp_path / "lr", format="lerobot")
    got = _strict_json(tmp_path / "lr/meta/stats.json")["observation.state"]
    want = compute_stats(path, arrays=["states"])["arrays"]["states"]
    assert got["count"] == [29]
    for key in ("mean", "std", "min", "max"):
        assert got[key][3] is None, key
        np.testing.assert_allclose(got[key][:3], want[key][:3], rtol=1e-9, err_msg=key)
    x = np.concatenate(states).astype(np.float64)
    for f in range(3):
        col = x[np.isfinite(x[:, f]), f]
        np.testing.assert_allclose(got["mean"][f], col.mean(), rtol=1e-12)
        np.testing.assert_allclose(got["std"][f], col.std(), rtol=1e-9)
    assert all(v is None for key in ("q01", "q50", "q99") for v in got[key][3:])
    table = _episodes_table(tmp_path / "lr")  # per episode: over its finite values, NaN where it had none
    means = np.asarray(table.column("stats/observation.state/mean").to_pylist())
    np.testing.assert_allclose(means[1, 0], states[1][:, 0].astype(np.float64).mean(), rtol=1e-12)
    np.testing.assert_allclose(
        means[0, 0], np.delete(states[0][:, 0], 2).astype(np.float64).mean(), rtol=1e-12
    )
    assert np.isnan(means[1, 2]) and np.isnan(means[:, 3]).all()


def test_statistics_of_a_file_that_lost_episodes_are_left_out_saying_it_changed(tmp_path: Path) -> None:
    from kinodb.kdb.upgrade import upgrade
    from kinodb.stats import compute_stats, write_stats

    path, smaller = tmp_path / "five.kdb", tmp_path / "four.kdb"
    rng = np.random.default_rng(9)
    with kinodb.Writer(path) as w:
        for _ in range(5):
            w.add_episode(actions=rng.normal(size=(4, 2)).astype(np.float32), fps=FPS)
    write_stats(path, compute_stats(path))
    with kinodb.open(path) as db:
        raw = db.read_array(1, "actions").tobytes()
    data = bytearray(path.read_bytes())
    data[bytes(data).find(raw)] ^= 0xFF  # episode 1 no longer matches its checksum
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        upgrade(path, smaller, on_error="skip")
    export(smaller, tmp_path / "lr", format="lerobot")
    meta = _strict_json(tmp_path / "lr/meta/kinodb.json")
    assert "stats" not in meta["dataset"]
    assert meta["export"]["stats_left_out"] == (
        "the file's statistics are stale: the file changed after they were computed (20 frames in 5 episodes "
        "then, 16 frames in 4 episodes now); run kino stats on it"
    )
