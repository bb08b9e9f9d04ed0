"""Write ``tests/data/tfds_written/``: three RLDS datasets written by TensorFlow Datasets.

The other RLDS fixtures are written by the tests (TFRecord framing and ``tf.train.Example``
protos from the documented layout, with ``features.json`` written by hand); these are what
TFDS's own ``GeneratorBasedBuilder`` leaves on disk (records, ``features.json``,
``dataset_info.json``), so the tests catch any difference between the documentation and
the library:

- ``template_rlds``: the features of the RLDS dataset-builder template that Open
  X-Embodiment datasets are made from (``observation/image`` and ``wrist_image`` JPEG,
  ``observation/state``, ``action``, ``reward``, ``discount``, the three flags,
  ``language_instruction``, ``language_embedding``, ``episode_metadata/file_path``), in a
  ``train`` and a ``val`` split;
- ``obs_keys``: no ``state`` feature but float64 and float32 observation keys, float64
  actions and rewards, a PNG camera, and episode metadata with a success flag and an id;
- ``shaped_bytes``: per-step tensors TFDS stores as bytes (a float64 one with
  ``encoding='zlib'``, an int16 one with ``encoding=Encoding.BYTES``), episode metadata of
  several dimensions (a ``(3, 3)`` tensor, a ``Sequence`` of ``(2,)`` tensors, a
  ``Sequence`` of dicts, a zlib-encoded ``(2, 3)`` tensor), and no ``is_terminal``.

``expected.npz`` holds what ``tfds.builder_from_directory(...).as_dataset()`` returns for
every episode in record order, keyed ``{dataset}/{split}/{episode}/{feature}``: the
arrays, and for every camera the SHA-256 of each frame's encoded bytes (images not
decoded) and, for PNG, of the decoded pixels. ``slices/{dataset}/{i}/split`` and
``.../episodes`` hold TFDS split slices (``train[:80%]``) and the positions, within the
whole split, of the episodes TFDS reads for them.

Run it where ``tensorflow-cpu`` and ``tensorflow-datasets`` are installed (a venv of its
own: TensorFlow is no dependency of kinodb)::

    python tests/data/make_tfds_written.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_datasets as tfds

HERE = Path(__file__).resolve().parent
OUT = HERE / "tfds_written"
TASKS = ("put the carrot on the plate", "open the drawer", "")


def _image(h: int, w: int, ep: int, t: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 8 + 5 * t) % 256, (y * 8 + 30 * ep) % 256, np.full((h, w), 40 * (t % 5))], axis=-1)
    return img.astype(np.uint8)


def _flags(n: int) -> dict[str, np.ndarray]:
    return {
        "is_first": np.arange(n) == 0,
        "is_last": np.arange(n) == n - 1,
        "is_terminal": np.arange(n) == n - 1,
    }


class TemplateRlds(tfds.core.GeneratorBasedBuilder):
    """The RLDS dataset-builder template's features."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": tfds.features.FeaturesDict(
                                {
                                    "image": tfds.features.Image(
                                        shape=(32, 32, 3), dtype=np.uint8, encoding_format="jpeg"
                                    ),
                                    "wrist_image": tfds.features.Image(
                                        shape=(24, 32, 3), dtype=np.uint8, encoding_format="jpeg"
                                    ),
                                    "state": tfds.features.Tensor(shape=(10,), dtype=np.float32),
                                }
                            ),
                            "action": tfds.features.Tensor(shape=(10,), dtype=np.float32),
                            "discount": tfds.features.Scalar(dtype=np.float32),
                            "reward": tfds.features.Scalar(dtype=np.float32),
                            "is_first": tfds.features.Scalar(dtype=np.bool_),
                            "is_last": tfds.features.Scalar(dtype=np.bool_),
                            "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                            "language_instruction": tfds.features.Text(),
                            "language_embedding": tfds.features.Tensor(shape=(16,), dtype=np.float32),
                        }
                    ),
                    "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(0, 7), "val": self._generate_examples(7, 3)}

    def _generate_examples(self, first: int, count: int):  # type: ignore[no-untyped-def]
        for ep in range(first, first + count):
            rng = np.random.default_rng(ep)
            n = 6 + 3 * (ep % 4)
            steps = []
            for t in range(n):
                steps.append(
                    {
                        "observation": {
                            "image": _image(32, 32, ep, t),
                            "wrist_image": _image(24, 32, ep + 50, t),
                            "state": rng.standard_normal(10).astype(np.float32),
                        },
                        "action": rng.standard_normal(10).astype(np.float32),
                        "discount": np.float32(1.0),
                        "reward": np.float32(t == n - 1 and ep % 3 != 0),
                        **{k: bool(v[t]) for k, v in _flags(n).items()},
                        "language_instruction": TASKS[ep % 3],
                        "language_embedding": rng.standard_normal(16).astype(np.float32),
                    }
                )
            yield (
                f"episode_{ep}",
                {"steps": steps, "episode_metadata": {"file_path": f"/raw/run_{ep:03d}.npy"}},
            )


class ObsKeys(tfds.core.GeneratorBasedBuilder):
    """Observation keys of two float dtypes, float64 actions and rewards, a PNG camera."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": tfds.features.FeaturesDict(
                                {
                                    "joint_pos": tfds.features.Tensor(shape=(7,), dtype=np.float64),
                                    "gripper": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                                    "agentview": tfds.features.Image(
                                        shape=(24, 32, 3), dtype=np.uint8, encoding_format="png"
                                    ),
                                }
                            ),
                            "action": tfds.features.Tensor(shape=(7,), dtype=np.float64),
                            "reward": tfds.features.Scalar(dtype=np.float64),
                            "discount": tfds.features.Scalar(dtype=np.float64),
                            "is_first": tfds.features.Scalar(dtype=np.bool_),
                            "is_last": tfds.features.Scalar(dtype=np.bool_),
                            "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                            "language_instruction": tfds.features.Text(),
                        }
                    ),
                    "episode_metadata": tfds.features.FeaturesDict(
                        {
                            "file_path": tfds.features.Text(),
                            "success": tfds.features.Scalar(dtype=np.bool_),
                            "episode_id": tfds.features.Scalar(dtype=np.int64),
                        }
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(5)}

    def _generate_examples(self, count: int):  # type: ignore[no-untyped-def]
        for ep in range(count):
            rng = np.random.default_rng(100 + ep)
            n = 5 + 2 * ep
            steps = [
                {
                    "observation": {
                        "joint_pos": rng.standard_normal(7),
                        "gripper": rng.random(1).astype(np.float32),
                        "agentview": _image(24, 32, ep, t),
                    },
                    "action": rng.standard_normal(7),
                    "reward": float(t == n - 1) * 0.5,
                    "discount": 0.99,
                    **{k: bool(v[t]) for k, v in _flags(n).items()},
                    "language_instruction": "stack the blocks",
                }
                for t in range(n)
            ]
            meta = {"file_path": f"run_{ep}.hdf5", "success": ep % 2 == 0, "episode_id": 1000 + ep}
            yield f"ep{ep}", {"steps": steps, "episode_metadata": meta}


class ShapedBytes(tfds.core.GeneratorBasedBuilder):
    """Tensors stored as bytes, episode metadata of several dimensions, no is_terminal."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": tfds.features.FeaturesDict(
                                {
                                    "state": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                                    "depth": tfds.features.Tensor(
                                        shape=(3, 2), dtype=np.float64, encoding="zlib"
                                    ),
                                }
                            ),
                            "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                            "counts": tfds.features.Tensor(
                                shape=(3,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
                            ),
                            "reward": tfds.features.Scalar(dtype=np.float32),
                            "is_first": tfds.features.Scalar(dtype=np.bool_),
                            "is_last": tfds.features.Scalar(dtype=np.bool_),
                        }
                    ),
                    "episode_metadata": tfds.features.FeaturesDict(
                        {
                            "intrinsics": tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
                            "waypoints": tfds.features.Sequence(
                                tfds.features.Tensor(shape=(2,), dtype=np.float32)
                            ),
                            "objects": tfds.features.Sequence(
                                {
                                    "name": tfds.features.Text(),
                                    "pos": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                                }
                            ),
                            "calibration": tfds.features.Tensor(
                                shape=(2, 3), dtype=np.float64, encoding="zlib"
                            ),
                        }
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(3)}

    def _generate_examples(self, count: int):  # type: ignore[no-untyped-def]
        for ep in range(count):
            rng = np.random.default_rng(200 + ep)
            n = 2 + ep
            steps = [
                {
                    "observation": {
                        "state": rng.standard_normal(2).astype(np.float32),
                        "depth": rng.standard_normal((3, 2)),  # float64 values a float32 cannot hold
                    },
                    "action": rng.standard_normal(2).astype(np.float32),
                    "counts": np.array([t, -300 * t, 32000 - ep], np.int16),
                    "reward": np.float32(t == n - 1 and ep != 1),
                    "is_first": t == 0,
                    "is_last": t == n - 1,
                }
                for t in range(n)
            ]
            meta = {
                "intrinsics": (np.arange(9, dtype=np.float32) + ep).reshape(3, 3),
                "waypoints": (np.arange(2 * (ep + 1), dtype=np.float32) / 4).reshape(-1, 2),
                "objects": {
                    "name": ["cup", "bowl", "fork"][: ep + 1],
                    "pos": rng.standard_normal((ep + 1, 3)).astype(np.float32),
                },
                "calibration": rng.standard_normal((2, 3)),
            }
            yield f"ep{ep}", {"steps": steps, "episode_metadata": meta}


SLICES = {  # TFDS split slices of template_rlds (train: 7 episodes, val: 3)
    "template_rlds": ("train[:80%]", "train[:5]", "train[10%:90%]", "train[:50%]", "val[:50%]", "val[33%:]",
                      "train[-3:]", "train[2:-2]", "train[:3]+train[5:]"),
}  # fmt: skip


def _digest(b: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(b).digest(), np.uint8)


def expected(builder: tfds.core.DatasetBuilder, cameras: dict[str, str]) -> dict[str, np.ndarray]:
    """Every episode as TFDS reads it back, in record order; cameras as digests."""
    name = builder.name
    reread = tfds.builder_from_directory(builder.data_dir)
    skip = {"steps": {"observation": {c: tfds.decode.SkipDecoding() for c in cameras}}}
    out: dict[str, np.ndarray] = {}
    for split in reread.info.splits:
        encoded = tfds.as_numpy(reread.as_dataset(split=split, shuffle_files=False, decoders=skip))
        decoded = tfds.as_numpy(reread.as_dataset(split=split, shuffle_files=False))
        for e, (raw, ep) in enumerate(zip(encoded, decoded, strict=True)):
            key = f"{name}/{split}/{e}"
            steps = list(ep["steps"])
            raw_steps = list(raw["steps"])
            for k, v in steps[0].items():
                if isinstance(v, bytes):
                    out[f"{key}/{k}"] = np.array([s[k].decode() for s in steps])
                elif k != "observation":
                    out[f"{key}/{k}"] = np.stack([s[k] for s in steps])
            for k in steps[0]["observation"]:
                if k not in cameras:
                    out[f"{key}/observation/{k}"] = np.stack([s["observation"][k] for s in steps])
            for c, fmt in cameras.items():
                out[f"{key}/{c}/encoded"] = np.stack([_digest(s["observation"][c]) for s in raw_steps])
                if fmt == "png":
                    out[f"{key}/{c}/pixels"] = np.stack(
                        [_digest(s["observation"][c].tobytes()) for s in steps]
                    )
            for k, v in _flat(ep["episode_metadata"]).items():
                out[f"{key}/episode_metadata/{k}"] = _text(v)
    for i, spec in enumerate(SLICES.get(name, ())):
        split = spec.split("[")[0]
        whole = [ep["episode_metadata"]["file_path"] for ep in tfds.as_numpy(reread.as_dataset(split=split))]
        part = [ep["episode_metadata"]["file_path"] for ep in tfds.as_numpy(reread.as_dataset(split=spec))]
        out[f"slices/{name}/{i}/split"] = np.array(spec)
        out[f"slices/{name}/{i}/episodes"] = np.array([whole.index(p) for p in part], np.int64)
    return out


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict's leaves by their ``/``-joined keys (a ``Sequence`` of dicts is a dict of lists)."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _text(value: object) -> np.ndarray:
    """A value as ``np.savez`` stores it without pickling: bytes as str."""
    if isinstance(value, bytes):
        return np.array(value.decode())
    arr = np.asarray(value)
    return np.array([b.decode() for b in arr.reshape(-1)]).reshape(arr.shape) if arr.dtype == object else arr


def main() -> int:
    tf.config.set_visible_devices([], "GPU")
    if OUT.exists():
        shutil.rmtree(OUT)
    arrays: dict[str, np.ndarray] = {}
    for cls, cameras in (
        (TemplateRlds, {"image": "jpeg", "wrist_image": "jpeg"}),
        (ObsKeys, {"agentview": "png"}),
        (ShapedBytes, {}),
    ):
        builder = cls(data_dir=str(OUT))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        arrays.update(expected(builder, cameras))
    for junk in OUT.rglob("downloads"):
        shutil.rmtree(junk)
    np.savez_compressed(OUT / "expected.npz", **arrays)
    files = sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob("*") if p.is_file())
    print("\n".join(files))
    print(sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file()), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
