"""Test-only LeRobot dataset writers (v2.0, v2.1, v3.0), written with pyarrow and PyAV.

Layouts follow LeRobot's own writers (``shared/docs/source-formats.md`` section 1):

- v2.x: ``meta/info.json``, ``meta/tasks.jsonl``, ``meta/episodes.jsonl``, then
  ``meta/stats.json`` (v2.0) or ``meta/episodes_stats.jsonl`` (v2.1);
  ``data/chunk-000/episode_NNNNNN.parquet``; ``videos/chunk-000/KEY/episode_NNNNNN.mp4``.
- v3.0: ``meta/tasks.parquet`` (the task text as the unnamed pandas index, or a ``task``
  column), ``meta/episodes/chunk-000/file-000.parquet`` (file indices, ``dataset_*_index``,
  ``videos/KEY/{chunk_index,file_index,from_timestamp,to_timestamp}``, ``stats/...``),
  ``data/chunk-000/file-NNN.parquet`` (several episodes, one row group each) and
  ``videos/KEY/chunk-000/file-NNN.mp4`` (several episodes back to back, the timestamps of
  each continuing where the previous one ended).

Nothing here imports kinodb: the files are what LeRobot would have written. Other tests
(export round trips) may import `make_episodes`, `write_v2`, `write_v3` and
`reference_decode`.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

Episode = dict[str, Any]
CAMERA = "observation.images.top"
STATE_NAMES = [[f"joint_{i}" for i in range(3)]]  # nested list, as on the Unitree G1 sample
ACTION_NAMES = {"motors": ["x", "y", "z", "gripper"]}  # dict of lists, as v1 -> v2 ports write


def frames_for(episode: int, T: int, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames: smooth gradients with a moving bright block, distinct per frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((T, height, width, 3), np.uint8)
    for t in range(T):
        base = np.stack([xx * 4 + t * 3, yy * 6 + episode * 40, (xx + yy) * 2 + t * 7], axis=-1)
        img = (base % 200 + 20).astype(np.uint8)
        x0 = (t * 3) % max(1, width - 8)
        img[2:10, x0 : x0 + 8] = 250
        out[t] = img
    return out


def make_episodes(
    rng: np.random.Generator,
    lengths: list[int],
    *,
    fps: float = 10.0,
    cameras: dict[str, tuple[int, int]] | None = None,
    first_index: int = 0,
    task_of: list[int] | None = None,
    task_switch: bool = False,
) -> list[Episode]:
    """Episodes with LeRobot's columns and (T, H, W, 3) frames per camera key.

    ``task_switch`` changes the task index halfway through episode 0.
    """
    cameras = {CAMERA: (24, 32)} if cameras is None else cameras
    eps, index = [], 0
    for k, T in enumerate(lengths):
        e = first_index + k
        task = task_of[k] if task_of else e % 2
        task_index = np.full(T, task, np.int64)
        if task_switch and k == 0:
            task_index[T // 2 :] = 1 - task
        reward = np.zeros(T, np.float32)
        reward[-1] = 1.0 if e % 2 == 0 else 0.25
        columns = {
            "observation.state": rng.normal(size=(T, 3)).astype(np.float32),
            "action": rng.normal(size=(T, 4)).astype(np.float32),
            "observation.environment_state": rng.normal(size=(T, 2)),  # float64 stays float64
            "next.reward": reward,
            "next.done": np.arange(T) == T - 1,
            "next.success": (np.arange(T) == T - 1) & (e % 2 == 0),
            "timestamp": (np.arange(T) / fps).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, e, np.int64),
            "index": np.arange(index, index + T, dtype=np.int64),
            "task_index": task_index,
        }
        index += T
        frames = {key: frames_for(e, T, h, w) for key, (h, w) in cameras.items()}
        eps.append({"episode_index": e, "columns": columns, "frames": frames, "length": T})
    return eps


# -- pieces -------------------------------------------------------------------------------


def encode_video(
    path: Path, frames: np.ndarray, fps: float, *, codec: str = "libx264", gop: int = 2, start: int = 0,
    pix_fmt: str = "yuv420p", colorspace: int | None = None,
) -> None:  # fmt: skip
    """Encode frames as an mp4 with PyAV, the frame i at pts ``start + i`` in 1/fps units.

    ``colorspace`` (an AVColorSpace number, e.g. 1 for BT.709) tags the stream and converts
    the frames with that matrix.
    """
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        stream.options = {"preset": "12"} if codec == "libsvtav1" else {"crf": "23"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if colorspace is not None:
                vf = vf.reformat(format=pix_fmt, dst_colorspace=colorspace)
                vf.colorspace = colorspace
            vf.pts, vf.time_base = start + i, 1 / rate
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def reference_decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of ``path`` decoded by plain PyAV: (times in seconds, uint8 (N, H, W, 3))."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, frames = [], []
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.array(times), np.stack(frames)


def image_bytes(frame: np.ndarray, fmt: str, *, quality: int = 90) -> bytes:
    """One frame encoded with Pillow as ``"PNG"`` or ``"JPEG"``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _arrow(values: np.ndarray, list_type: str) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(values.reshape(-1))
    if list_type == "fixed":
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def episode_table(ep: Episode, *, images: str | None = None, list_type: str = "fixed") -> pa.Table:
    """One episode's parquet rows; ``images`` ("PNG"/"JPEG") adds image structs per camera."""
    cols = {name: _arrow(values, list_type) for name, values in ep["columns"].items()}
    if images:
        for key, frames in ep["frames"].items():
            blobs = [image_bytes(f, images) for f in frames]
            paths = [f"frame_{t:06d}.{images.lower()}" for t in range(len(blobs))]
            cols[key] = pa.StructArray.from_arrays(
                [pa.array(blobs, pa.binary()), pa.array(paths)], ["bytes", "path"]
            )
    return pa.table(cols)


def _feature(values: np.ndarray, names: Any = None) -> dict[str, Any]:
    dtype = "bool" if values.dtype == np.bool_ else str(values.dtype)
    return {"dtype": dtype, "shape": list(values.shape[1:]) or [1], "names": names}


def info_json(
    eps: list[Episode], *, version: str, fps: float, image_dtype: str, codec: str
) -> dict[str, Any]:
    """``meta/info.json`` for ``eps`` (features from the first episode)."""
    cols = eps[0]["columns"]
    features = {name: _feature(values) for name, values in cols.items()}
    features["observation.state"]["names"] = STATE_NAMES
    features["action"]["names"] = ACTION_NAMES
    for key, frames in eps[0]["frames"].items():
        _, h, w, c = frames.shape
        features[key] = {"dtype": image_dtype, "shape": [h, w, c], "names": ["height", "width", "channels"]}
        if image_dtype == "video":
            features[key]["info"] = {
                "video.height": h, "video.width": w, "video.codec": "av1" if "av1" in codec else "h264",
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                "video.channels": c, "has_audio": False,
            }  # fmt: skip
    v3 = version == "v3.0"
    return {
        "codebase_version": version, "robot_type": "fixture_bot",
        "total_episodes": len(eps), "total_frames": sum(e["length"] for e in eps), "total_tasks": 2,
        "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(eps)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3
        else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None if image_dtype != "video"
        else "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3
        else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }  # fmt: skip


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _stats(ep: Episode) -> dict[str, Any]:
    out = {}
    for name, values in ep["columns"].items():
        v = values.astype(np.float64).reshape(len(values), -1)
        out[name] = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
                     "std": v.std(0).tolist(), "count": [len(v)]}  # fmt: skip
    return out


TASKS = ["pick up the cube", "place the cube in the bowl"]


# -- datasets -------------------------------------------------------------------------------


def write_v2(
    root: Path, eps: list[Episode], *, version: str = "v2.1", fps: float = 10.0, images: str | None = None,
    codec: str = "libx264", gop: int = 2, list_type: str = "fixed", tasks: list[str] = TASKS,
) -> Path:  # fmt: skip
    """A LeRobot v2.0/v2.1 dataset: videos (default) or ``images`` ("PNG"/"JPEG") in the parquet."""
    info = info_json(eps, version=version, fps=fps, image_dtype="image" if images else "video", codec=codec)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _jsonl(root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    _jsonl(root / "meta" / "episodes.jsonl", [
        {"episode_index": ep["episode_index"], "tasks": sorted({tasks[i] for i in ep["columns"]["task_index"]}),
         "length": ep["length"]} for ep in eps
    ])  # fmt: skip
    if version == "v2.1":
        stats = [{"episode_index": ep["episode_index"], "stats": _stats(ep)} for ep in eps]
        _jsonl(root / "meta" / "episodes_stats.jsonl", stats)
    else:
        (root / "meta" / "stats.json").write_text(json.dumps(_stats(eps[0])))
    for ep in eps:
        e = ep["episode_index"]
        data = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, images=images, list_type=list_type), data)
        if not images:
            for key, frames in ep["frames"].items():
                encode_video(root / "videos" / "chunk-000" / key / f"episode_{e:06d}.mp4", frames, fps,
                             codec=codec, gop=gop)  # fmt: skip
    return root


def make_openpi_libero(rng: np.random.Generator, lengths: list[int], *, size: int = 16) -> list[Episode]:
    """Episodes laid out as openpi's LIBERO port (``physical-intelligence/libero``, written by
    openpi's ``examples/libero/convert_libero_data_to_lerobot.py``): image features ``image``
    and ``wrist_image``, ``state`` (8,) and ``actions`` (7,), no ``action`` and no
    ``observation.*`` feature."""
    eps, index = [], 0
    for e, T in enumerate(lengths):
        columns = {
            "state": rng.normal(size=(T, 8)).astype(np.float32),
            "actions": rng.normal(size=(T, 7)).astype(np.float32),
            "timestamp": (np.arange(T) / 10.0).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, e, np.int64),
            "index": np.arange(index, index + T, dtype=np.int64),
            "task_index": np.full(T, e % 2, np.int64),
        }
        index += T
        frames = {"image": frames_for(e, T, size, size), "wrist_image": frames_for(e + 50, T, size, size)}
        eps.append({"episode_index": e, "columns": columns, "frames": frames, "length": T})
    return eps


def write_openpi_libero(root: Path, eps: list[Episode], *, fps: float = 10.0) -> Path:
    """A LeRobot v2.0 dataset of `make_openpi_libero` episodes, PNG frames in the parquet, with
    the features (and ``names``) openpi's converter declares."""
    cols = eps[0]["columns"]
    features = {name: _feature(values) for name, values in cols.items()}
    features["state"]["names"], features["actions"]["names"] = ["state"], ["actions"]
    for key, frames in eps[0]["frames"].items():
        features[key] = {
            "dtype": "image",
            "shape": list(frames.shape[1:]),
            "names": ["height", "width", "channel"],
        }
    info = {
        "codebase_version": "v2.0", "robot_type": "panda", "total_episodes": len(eps),
        "total_frames": sum(e["length"] for e in eps), "total_tasks": 2, "total_videos": 0, "total_chunks": 1,
        "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(eps)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet", "video_path": None,
        "features": features,
    }  # fmt: skip
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _jsonl(root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(TASKS)])
    _jsonl(root / "meta" / "episodes.jsonl", [
        {"episode_index": ep["episode_index"], "tasks": [TASKS[ep["episode_index"] % 2]], "length": ep["length"]}
        for ep in eps
    ])  # fmt: skip
    (root / "meta" / "stats.json").write_text(json.dumps(_stats(eps[0])))
    for ep in eps:
        data = root / "data" / "chunk-000" / f"episode_{ep['episode_index']:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, images="PNG"), data)
    return root


def tasks_parquet(path: Path, tasks: list[str], *, layout: str = "index") -> None:
    """``meta/tasks.parquet``: the text as pandas' unnamed index (``index``) or a ``task`` column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "__index_level_0__" if layout == "index" else "task"
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), text: pa.array(tasks)})
    if layout == "index":
        pandas = {
            "index_columns": [text],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": text, "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3",
        }  # fmt: skip
        table = table.replace_schema_metadata({"pandas": json.dumps(pandas)})
    pq.write_table(table, path)


def write_v3(
    root: Path, eps: list[Episode], *, fps: float = 10.0, per_file: int = 2, images: str | None = None,
    codec: str = "libx264", gop: int = 4, task_layout: str = "index", tasks: list[str] = TASKS,
) -> Path:  # fmt: skip
    """A LeRobot v3.0 dataset with ``per_file`` episodes per data and video file."""
    info = info_json(eps, version="v3.0", fps=fps, image_dtype="image" if images else "video", codec=codec)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "stats.json").write_text(json.dumps(_stats(eps[0])))
    tasks_parquet(root / "meta" / "tasks.parquet", tasks, layout=task_layout)
    rows: dict[str, list[Any]] = {}
    for f in range(0, len(eps), per_file):
        group, file_index = eps[f : f + per_file], f // per_file
        data = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        tables = [episode_table(ep, images=images) for ep in group]
        with pq.ParquetWriter(data, tables[0].schema) as writer:
            for table in tables:  # one row group per episode, as LeRobot writes them
                writer.write_table(table)
        start = 0
        for ep in group:
            row = _episode_row(ep, file_index, start, fps, tasks, images is None)
            for k, v in row.items():
                rows.setdefault(k, []).append(v)
            start += ep["length"]
        if images is None:
            for key in group[0]["frames"]:
                frames = np.concatenate([ep["frames"][key] for ep in group])
                encode_video(root / "videos" / key / "chunk-000" / f"file-{file_index:03d}.mp4", frames, fps,
                             codec=codec, gop=gop)  # fmt: skip
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    meta.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), meta)
    return root


def _episode_row(
    ep: Episode, file_index: int, start: int, fps: float, tasks: list[str], video: bool
) -> dict[str, Any]:
    T, cols = ep["length"], ep["columns"]
    row: dict[str, Any] = {
        "episode_index": ep["episode_index"], "tasks": sorted({tasks[i] for i in cols["task_index"]}),
        "length": T, "data/chunk_index": 0, "data/file_index": file_index,
        "dataset_from_index": int(cols["index"][0]), "dataset_to_index": int(cols["index"][-1]) + 1,
    }  # fmt: skip
    if video:
        for key in ep["frames"]:
            p = f"videos/{key}/"
            row.update({p + "chunk_index": 0, p + "file_index": file_index, p + "from_timestamp": start / fps,
                        p + "to_timestamp": (start + T) / fps})  # fmt: skip
    row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
    for name, stats in _stats(ep).items():
        for stat, value in stats.items():
            row[f"stats/{name}/{stat}"] = value
    return row


class CountingContainer:
    """A PyAV container that counts opens, seeks and decoded frames in ``counts``."""

    def __init__(self, container: Any, counts: dict[str, int]) -> None:
        self._container, self._counts = container, counts
        counts["opens"] = counts.get("opens", 0) + 1

    def seek(self, *args: Any, **kwargs: Any) -> None:
        self._counts["seeks"] += 1
        self._container.seek(*args, **kwargs)

    def decode(self, stream: Any) -> Any:
        for frame in self._container.decode(stream):
            self._counts["frames"] += 1
            yield frame

    def close(self) -> None:
        self._container.close()


def count_video_opens(monkeypatch: Any, counts: dict[str, int]) -> None:
    """Make `kinodb.ingest._video.open_video` hand out `CountingContainer` s."""
    from kinodb.ingest import _video

    real = _video.open_video

    def counting(p: str) -> tuple[Any, Any]:
        container, stream = real(p)
        return CountingContainer(container, counts), stream

    monkeypatch.setattr(_video, "open_video", counting)
