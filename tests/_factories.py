"""Plain helpers shared by the tests (the fixtures in conftest.py build on them)."""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random bytes viewed as ``dtype``: every bit pattern is fair game (NaN payloads, -0.0,
    subnormals); bools are 0 or 1."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, math.prod(shape) * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def smooth_frames(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 ``(T, H, W, C)`` frames made of gradients, which JPEG keeps nearly exact."""
    t, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty(shape, np.uint8)
    for i in range(t):
        base = rng.uniform(40, 200, c)
        slope = rng.uniform(-3, 3, (2, c))
        img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def encode_image(frame: np.ndarray, fmt: str, **options: Any) -> bytes:
    """Encode one ``(H, W, C)`` uint8 frame with Pillow (``fmt`` is ``"PNG"`` or ``"JPEG"``)."""
    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, fmt, **options)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes with Pillow into ``(H, W, C)`` uint8."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def numbered_episode(k: int) -> dict[str, Any]:
    """Episode number ``k``: the same arrays and frames in every process."""
    rng = np.random.default_rng(k)
    T = 8 + k % 7
    return {
        "actions": rng.normal(size=(T, 7)).astype(np.float32),
        "states": rng.normal(size=(T, 5)).astype(np.float32),
        "images": {"cam": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8)},
        "task": f"task {k}",
        "extra": {"k": k},
    }


LOWDIM_LENGTHS = [5, 9, 3, 7, 7]  # 31 frames: one window per frame (the torch tests' ``lowdim`` file)


def write_episodes(
    path: Any,
    lengths: list[int],
    *,
    action_dim: int = 2,
    state_dim: int = 3,
    fps: float = 10.0,
    cameras: dict[str, tuple[int, int, int]] | None = None,
    codec: str = "raw",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Write one episode per length (random arrays, random frames) and return what was written."""
    import kinodb

    rng = np.random.default_rng(seed)
    eps = []
    with kinodb.Writer(path, mode="w", image_codec=codec) as w:
        for k, T in enumerate(lengths):
            ep: dict[str, Any] = {
                "actions": rng.normal(size=(T, action_dim)).astype(np.float32),
                "states": rng.normal(size=(T, state_dim)).astype(np.float32),
                "rewards": rng.uniform(size=T).astype(np.float32),
                "task": f"task {k}", "embodiment": "arm", "fps": fps, "success": (True, False, None)[k % 3],
            }  # fmt: skip
            if cameras:
                ep["images"] = {
                    c: rng.integers(0, 256, (T, *hwc), dtype=np.uint8) for c, hwc in cameras.items()
                }
            w.add_episode(**ep)
            eps.append(ep)
    return eps


def write_field_in_one_file(a: Any, b: Any) -> None:
    """``a``: 3 episodes of 4 frames with the extra field ``has_language`` (true, false, true);
    ``b``: 2 episodes (5 and 6 frames) without it. For queries over several files."""
    import kinodb

    with kinodb.Writer(a) as w:
        for k in range(3):
            w.add_episode(actions=np.zeros((4, 2), np.float32), extra={"has_language": k != 1})
    write_episodes(b, [5, 6])


def tiny_robomimic_hdf5(path: Any) -> Any:
    """A one-demo robomimic-layout HDF5 file at ``path`` (needs h5py); returns ``path``."""
    import h5py

    with h5py.File(path, "w") as fh:
        fh.create_dataset("data/demo_0/actions", data=np.zeros((3, 2), np.float32))
    return path


def varied_episode(
    T: int,
    seed: int,
    *,
    force: int | tuple[int, ...] | None = None,
    states: Any = np.float32,
    cameras: dict[str, tuple[int, int, int]] | None = None,
    timestamps: bool = False,
    embodiment: str = "arm",
) -> dict[str, Any]:
    """`Writer.add_episode` arguments for an episode whose layout a test varies: a ``force``
    extra array of that per-frame width (or shape), the states' dtype, cameras, timestamps."""
    rng = np.random.default_rng(seed)
    ep: dict[str, Any] = {
        "actions": rng.normal(size=(T, 3)).astype(np.float32),
        "states": rng.normal(size=(T, 5)).astype(states),
        "fps": 10.0,
        "embodiment": embodiment,
    }
    if force is not None:
        shape = (force,) if isinstance(force, int) else force
        ep["extra_arrays"] = {"force": rng.normal(size=(T, *shape)).astype(np.float32)}
    if cameras:
        ep["images"] = {c: rng.integers(0, 256, (T, *hwc), dtype=np.uint8) for c, hwc in cameras.items()}
    if timestamps:
        ep["timestamps"] = np.arange(T) / 10.0
    return ep


def write_raw(path: Any, episodes: list[dict[str, Any]]) -> Any:
    """Write ``episodes`` (add_episode arguments) to a new file, frames stored raw."""
    import kinodb

    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        for ep in episodes:
            w.add_episode(**ep)
    return path


def kql_advice(message: str) -> str:
    """The ``kql_filter="..."`` an error message gives."""
    import re

    found = re.search(r'kql_filter="([^"]*)"', message)
    assert found, message
    return found.group(1)


SIGNALLING_NANS = {
    "float16": np.array([0x7C01, 0, 0x3C00], np.uint16).view(np.float16),
    "float32": np.array([0x7F800001, 0, 0x3F800000], np.uint32).view(np.float32),
    "float64": np.array([0x7FF0000000000001, 0, 0x3FF0000000000000], np.uint64).view(np.float64),
}


def write_non_finite(path: Any) -> Any:
    """Episode 0 holds a signalling NaN in its rewards and in each float dtype of an extra
    array (``x_float16`` ...), episode 1 both infinities in the same places; returns ``path``."""
    import warnings

    import kinodb

    both = np.array([np.inf, 0.0, -np.inf])
    with warnings.catch_warnings(), kinodb.Writer(path) as w:
        warnings.simplefilter("ignore")  # the writer's own checks are not what is tested here
        w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=SIGNALLING_NANS["float32"],
                      extra_arrays={f"x_{k}": v for k, v in SIGNALLING_NANS.items()})  # fmt: skip
        w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=both.astype(np.float32),
                      extra_arrays={f"x_{k}": both.astype(k) for k in SIGNALLING_NANS})  # fmt: skip
    return path


def drop_uniform_check(raw: bytearray) -> None:
    """Zero the table-of-contents checksum in the newest commit's index head, in place, and
    recompute the index and commit checksums: the file then reads as one written without a
    ``uniform`` entry (through its section rows), whatever its TOC says."""
    slot = max((64, 128), key=lambda at: struct.unpack_from("<Q", raw, at)[0])
    struct.pack_into("<I", raw, struct.unpack_from("<Q", raw, slot + 8)[0] + 8, 0)
    recommit(raw)


def recommit(raw: bytearray) -> None:
    """Recompute, in place, the index checksum of the newest commit and that commit
    record's own checksum (what a writer of these bytes would have stored)."""
    slot = max((64, 128), key=lambda at: struct.unpack_from("<Q", raw, at)[0])
    offset, length = struct.unpack_from("<QQ", raw, slot + 8)
    struct.pack_into("<I", raw, slot + 40, zlib.crc32(bytes(raw[offset : offset + length])))
    struct.pack_into("<I", raw, slot + 60, zlib.crc32(bytes(raw[slot : slot + 60])))


def without_uniform_check(path: Any) -> Any:
    """`drop_uniform_check` on the file at ``path``; returns ``path``."""
    with open(path, "r+b") as fh:
        raw = bytearray(fh.read())
        drop_uniform_check(raw)
        fh.seek(0)
        fh.write(raw)
    return path


EXPORT_PROVENANCE = ("source_file", "source_episode", "origin_file", "origin_episode")
"""Every ingest sets source_* afresh; a merge moves the pair an episode held to origin_*."""


def assert_same_episodes(a: Any, b: Any, *, skip_meta: tuple[str, ...] = ()) -> None:
    """Two ``.kdb`` files hold the same episodes: arrays bit for bit, decoded frames pixel for
    pixel, metadata equal less provenance (and ``skip_meta``): ``b`` ingested from an export of ``a``."""
    import kinodb

    skipped = set(EXPORT_PROVENANCE) | set(skip_meta)
    with kinodb.open(a) as da, kinodb.open(b) as db:
        assert len(da) == len(db)
        for i in range(len(da)):
            x, y = da.read_episode(i), db.read_episode(i)
            mx, my = ({k: v for k, v in e.pop("meta").items() if k not in skipped} for e in (x, y))
            assert mx == my, i
            images_x, images_y = x.pop("images"), y.pop("images")
            assert set(x) == set(y), i
            for name in x:
                assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape, name
                assert x[name].tobytes() == y[name].tobytes(), name
            assert set(images_x) == set(images_y)
            for cam in images_x:
                assert np.array_equal(images_x[cam], images_y[cam]), cam


def assert_same_file(a: Any, b: Any) -> None:
    """`assert_same_episodes`, and the same state components (names, column slices)."""
    import kinodb

    with kinodb.open(a) as da, kinodb.open(b) as db:
        assert db.schema()["states"] == da.schema()["states"]
    assert_same_episodes(a, b)
