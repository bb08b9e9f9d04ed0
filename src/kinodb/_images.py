"""Decode and resize camera frames for training: scaled JPEG decode, antialiased resize, threads.

Pillow releases the GIL while it decodes and resizes, so a small thread pool decodes a
batch's frames in parallel. A JPEG whose target size is at most half its stored size is
decoded with libjpeg-turbo's DCT-domain scaling (``Image.draft``: 1/2, 1/4 or 1/8, never
below the target) before the final resize, which skips most of the inverse DCT work.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import CorruptFileError
from kinodb.kdb._codecs import DAMAGED_ADVICE, describe

Resize: TypeAlias = Literal["bilinear", "area", "bicubic", "nearest"]
RESIZE_MODES = ("bilinear", "area", "bicubic", "nearest")
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}

_pool_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


@functools.cache
def _filter(resize: str) -> Any:
    from PIL import Image

    table = {
        "bilinear": Image.Resampling.BILINEAR,  # Pillow widens the kernel when shrinking: antialiased
        "area": Image.Resampling.BOX,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }
    if resize not in table:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return table[resize]


def check_size(size: Any) -> tuple[int, int] | None:
    """``(H, W)`` from ``image_size`` (None, an int, or a pair), checked."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"image_size must be None, a positive int or a pair (H, W) of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def decode_one(
    data: bytes | memoryview | NDArray[np.uint8],
    codec: str,
    shape: tuple[int, int, int],
    size: tuple[int, int] | None,
    resize: str,
    where: Any,
) -> NDArray[np.uint8]:
    """One frame as ``(H, W, C)`` uint8 at ``size`` (the stored size when None)."""
    from PIL import Image

    h, w, c = shape
    try:
        if codec == "raw":
            arr = np.asarray(data, dtype=np.uint8).reshape(h, w, c)
            if size is None or size == (h, w):
                return arr
            im = Image.fromarray(arr[..., 0] if c == 1 else arr, _MODES[c])
        else:
            im = Image.open(io.BytesIO(data))  # type: ignore[arg-type]  # bytes or memoryview
            if im.size != (w, h):  # known from the header; checked before a resize hides it
                raise CorruptFileError(
                    f"image is {im.height}x{im.width} (HxW), the index says {h}x{w}; {DAMAGED_ADVICE}"
                )
            if codec == "jpeg" and size is not None and 2 * size[0] <= h and 2 * size[1] <= w:
                im.draft(im.mode, (size[1], size[0]))  # DCT scaling, never below the target
            if im.mode != _MODES[c]:
                im = im.convert(_MODES[c])
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), _filter(resize), reducing_gap=None)
            out = np.asarray(im)
            if out.shape[:2] != (size or (h, w)):
                raise CorruptFileError(
                    f"frame decodes to {out.shape[:2]}, the index says {(h, w)}; {DAMAGED_ADVICE}"
                )
            return out.reshape(out.shape[0], out.shape[1], c)
        im = im.resize((size[1], size[0]), _filter(resize), reducing_gap=None)
        return np.asarray(im).reshape(size[0], size[1], c)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{_where(where)}: {exc}") from None
    except Exception as exc:  # Pillow raises many types on damaged bytes (OSError, SyntaxError, bomb errors)
        raise CorruptFileError(
            f"{_where(where)}: cannot decode {codec} frame ({describe(exc)}); {DAMAGED_ADVICE}"
        ) from exc


def _where(where: Any) -> str:
    if isinstance(where, tuple):
        source, j, cam, f = where
        return f"{source.db.path()}: episode {int(source.kept[j])}, camera {cam!r}, frame {f}"
    return str(where)


def _pool(threads: int) -> ThreadPoolExecutor:
    # Keyed by pid: a pool inherited through fork (DataLoader workers) has no threads.
    key = (os.getpid(), threads)
    with _pool_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="kinodb-decode")
        return pool


def in_parts(n: int, threads: int, work: Callable[[int, int], None]) -> None:
    """``work(a, b)`` over ``0..n`` cut into one contiguous run per thread (pool overhead
    once per thread, not per item); inline when ``threads <= 1``."""
    parts = min(threads, n)
    if parts <= 1:
        work(0, n)
        return
    bounds = np.linspace(0, n, parts + 1).astype(int).tolist()
    for _ in _pool(threads).map(work, bounds[:-1], bounds[1:]):
        pass


def decode_into(
    out: NDArray[np.uint8],
    jobs: Sequence[tuple[int, Any, str, tuple[int, int, int], Any]],
    size: tuple[int, int] | None,
    resize: str,
    threads: int,
    *,
    channels_last: bool = False,
) -> None:
    """Decode ``jobs`` into ``out`` (N, C, H, W): job ``(slot, data, codec, shape, where)``.

    Each frame is written straight into its slot, transposed to channels-first; with
    ``channels_last`` ``out`` is (N, H, W, C) and takes the decoder's pixels as they are.
    ``where`` names the frame in errors: a string, or ``(source, kept index, camera,
    frame)`` from `kinodb._window_images`, formatted only when a frame fails.
    """
    _filter(resize)  # check the mode once, before any thread starts
    axes = (0, 1, 2) if channels_last else (2, 0, 1)

    def work(a: int, b: int) -> None:
        for slot, data, codec, shape, where in jobs[a:b]:
            out[slot] = decode_one(data, codec, shape, size, resize, where).transpose(axes)

    in_parts(len(jobs), threads if len(jobs) >= 4 else 1, work)
