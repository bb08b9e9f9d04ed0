"""Write ``tests/data/tfds_read_export/``: kinodb's RLDS exports and what TensorFlow Datasets read from them.

Two small ``.kdb`` files, each exported with ``kinodb.export(..., format="rlds")`` to
``<name>/1.0.0/`` and then read by ``tfds.builder_from_directory(...).as_dataset("train")``
(tensorflow-datasets 4.9.10):

- ``raw``: float32 actions, float64 states with components, float64 timestamps, a raw RGB
  camera and a raw one-channel camera (exported as PNG), extra arrays of dtypes uint64,
  int16 ``(2, 2)``, float16, bool and float64, per-frame tasks (``tasks`` and
  ``task_index``), and extra fields of text, int, float and bool;
- ``jpeg``: float64 actions, no states, a JPEG camera whose frames differ in size between
  episodes (a ``(-1, -1, 3)`` image feature), no timestamps.

``expected.npz`` holds what TFDS returned, keyed ``{name}/{episode}/{feature}``: every
per-step feature stacked over the steps, every ``episode_metadata`` feature, the decoded
pixels of every camera, and, keyed ``{name}/{episode}/{camera}#sha256``, the SHA-256 of
each frame's encoded bytes as TFDS read them undecoded. The test
(``tests/export/test_export_rlds_tfds_read.py``) checks that the export of the same
``.kdb`` is still byte for byte what TFDS read, and that what TFDS read is the file's data.

Run it where ``tensorflow-cpu`` and ``tensorflow-datasets`` are installed, with kinodb
installed into that environment without its dependencies (TensorFlow is no dependency of
kinodb)::

    pip install tensorflow-cpu tensorflow-datasets pillow && pip install --no-deps -e .
    python tests/data/make_tfds_read_export.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import kinodb
from kinodb.export import export

HERE = Path(__file__).resolve().parent
OUT = HERE / "tfds_read_export"
NAMES = ("raw", "jpeg")


def _image(h: int, w: int, c: int, ep: int, t: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    planes = [(x * 9 + 7 * t) % 256, (y * 11 + 40 * ep) % 256, np.full((h, w), 30 * (t % 7))]
    return np.stack(planes[:c], axis=-1).astype(np.uint8)


def write_raw(path: Path) -> None:
    with kinodb.Writer(path, image_codec="raw", schema={"states": {"components": {"pos": [0, 2], "grip": [2, 3]}}},
                       metadata={"robot": {"name": "arm", "dof": 4}}) as w:  # fmt: skip
        for ep, T in enumerate((5, 3, 6)):
            rng = np.random.default_rng(ep)
            tasks = ["pick the cube", "place it"] if ep == 1 else [f"task {ep}"]
            w.add_episode(
                actions=rng.standard_normal((T, 4)).astype(np.float32),
                states=rng.standard_normal((T, 3)),
                rewards=np.r_[np.zeros(T - 1), ep % 2].astype(np.float32),
                is_terminal=np.arange(T) == T - 1,
                timestamps=np.arange(T) / 10.0,
                images={"front": np.stack([_image(8, 10, 3, ep, t) for t in range(T)]),
                        "depth": np.stack([_image(8, 10, 1, ep + 5, t) for t in range(T)])},
                extra_arrays={
                    "uid": np.arange(T, dtype=np.uint64) + np.uint64(2**63 + 7),
                    "contacts": rng.integers(-300, 300, (T, 2, 2)).astype(np.int16),
                    "observation.ee_vel": rng.standard_normal((T, 2)).astype(np.float16),
                    "grasped": np.arange(T) % 2 == 1,
                    "sim_state": rng.standard_normal((T, 2)),
                    "task_index": (np.arange(T) >= 2).astype(np.int64) if ep == 1 else np.zeros(T, np.int64),
                },
                task=tasks[0], embodiment="arm", fps=10.0, success=ep % 2 == 1,
                extra={"tasks": tasks, "scene": f"table {ep}", "meta.seed": 10 + ep, "meta.scale": 0.25 * ep},
            )  # fmt: skip


def write_jpeg(path: Path) -> None:
    with kinodb.Writer(path, image_codec="jpeg") as w:
        for ep, (T, h, wd) in enumerate(((4, 16, 16), (3, 12, 14))):
            rng = np.random.default_rng(20 + ep)
            w.add_episode(
                actions=rng.standard_normal((T, 2)),
                images={"image": np.stack([_image(h, wd, 3, ep, t) for t in range(T)])},
                task="wipe",
                fps=5.0,
            )


def _export(name: str) -> Path:
    src = OUT / f"{name}.kdb"
    {"raw": write_raw, "jpeg": write_jpeg}[name](src)
    folder = OUT / name / "1.0.0"
    folder.parent.mkdir(parents=True)
    export(src, folder, format="rlds")
    return folder


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}/{key}" if prefix else key, item, out)
    else:
        out[prefix] = value


def _read(name: str, folder: Path, expected: dict[str, np.ndarray]) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(folder))
    cameras = list(_image_features(builder.info.features))
    for ep, episode in enumerate(tfds.as_numpy(builder.as_dataset("train"))):
        flat: dict[str, Any] = {}
        steps = list(episode.pop("steps"))
        per_step: dict[str, list[Any]] = {}
        for step in steps:
            one: dict[str, Any] = {}
            _flat("steps", step, one)
            for key, value in one.items():
                per_step.setdefault(key, []).append(value)
        for key, values in per_step.items():
            flat[key] = np.array(values, dtype="S") if isinstance(values[0], bytes) else np.stack(values)
        _flat("", episode, flat)
        for key, value in flat.items():
            if isinstance(value, bytes):
                value = np.array([value], dtype="S")
            expected[f"{name}/{ep}/{key}"] = np.asarray(value)
    skip = {"steps": {cam.split("/", 1)[1]: tfds.decode.SkipDecoding() for cam in cameras}}
    raw = builder.as_dataset("train", decoders=_nest(skip))
    for ep, episode in enumerate(tfds.as_numpy(raw)):
        for cam in cameras:
            frames = [_get(step, cam.split("/")[1:]) for step in episode["steps"]]
            expected[f"{name}/{ep}/{cam}#sha256"] = np.stack(
                [np.frombuffer(hashlib.sha256(b).digest(), np.uint8) for b in frames]
            )


def _image_features(features: Any, prefix: str = "") -> dict[str, Any]:
    import tensorflow_datasets as tfds

    out: dict[str, Any] = {}
    items = features.items() if hasattr(features, "items") else []
    for key, feature in items:
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(feature, tfds.features.Image):
            out[path] = feature
        elif isinstance(feature, tfds.features.Dataset):
            out.update(_image_features(feature.feature, path))
        elif hasattr(feature, "items"):
            out.update(_image_features(feature, path))
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for top, inner in flat.items():
        tree: dict[str, Any] = {}
        for key, value in inner.items():
            *path, leaf = key.split("/")
            d = tree
            for part in path:
                d = d.setdefault(part, {})
            d[leaf] = value
        out[top] = tree
    return out


def _get(tree: Any, path: list[str]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    expected: dict[str, np.ndarray] = {}
    for name in NAMES:
        _read(name, _export(name), expected)
    np.savez_compressed(OUT / "expected.npz", **expected)
    print(f"wrote {OUT} ({len(expected)} arrays)")


if __name__ == "__main__":
    main()
