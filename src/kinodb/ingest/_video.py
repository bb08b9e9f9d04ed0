"""Decode video files with PyAV, frame-exact by presentation time.

A frame's time is its ``pts * time_base`` in seconds, exactly as LeRobot's own loader
compares it (no ``start_time`` is subtracted). `decode_at` decodes one file once, in
order, and returns for every wanted time the decoded frame whose time is nearest (the
earlier one on a tie), when it lies within ``tolerance`` seconds
(``|frame time - wanted| <= tolerance``, LeRobot's rule; its default, 1e-4 s, is
``TOLERANCE_S``). A wanted time with no such frame is an error, never a neighbour. Frames that nothing wants are decoded (a decoder cannot skip them)
but never converted to RGB; wanted frames become exactly the pixels of
``frame.to_ndarray(format="rgb24")``. With ``seek=True`` the file is positioned once at the
keyframe at or before the first wanted time, then decoded forward: how a LeRobot v3
episode in the middle of a concatenated file is read without decoding what precedes it.
Should the seek land after the first wanted frame (a damaged index), the file is decoded
again from its start.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb._optional import require
from kinodb.errors import ConversionError

TOLERANCE_S = 1e-4


def _av() -> Any:
    return require("av", extra="lerobot")


def open_video(path: str) -> tuple[Any, Any]:
    """Open ``path`` and return ``(container, video stream)`` with threaded decoding.

    Raises:
        ConversionError: the file is missing, unreadable, or holds no video stream.
    """
    av = _av()
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing video file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as exc:
        raise ConversionError(f"{path}: not a readable video file ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ConversionError(f"{path}: holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads; output is identical
    return container, stream


def decode_at(
    path: str,
    times: npt.NDArray[np.float64],
    *,
    tolerance: float = TOLERANCE_S,
    seek: bool = False,
) -> npt.NDArray[np.uint8]:
    """Frames of ``path`` nearest to each time in ``times`` (seconds), as uint8 (T, H, W, 3) RGB.

    Raises:
        ConversionError: the file is missing or unreadable, ends before the last wanted
            time (a short video), or has no frame within ``tolerance`` of a wanted time;
            the message names the file and the first frame at fault.
    """
    times = np.asarray(times, np.float64)
    if times.size == 0:
        raise ConversionError(f"{path}: no frame times asked for")
    if not np.isfinite(times).all():
        raise ConversionError(f"{path}: frame times must be finite numbers")
    order = np.argsort(times, kind="stable")
    wanted = times[order]
    start = float(wanted[0]) - tolerance
    out = _match(path, wanted, tolerance, start if seek and start > 0 else None)
    if out is None:  # the seek landed past the first wanted frame: decode from the start
        out = _match(path, wanted, tolerance, None)
    assert out is not None
    if order[-1] == len(order) - 1 and (order[:-1] < order[1:]).all():
        return out  # already in order (the usual case): no copy
    result = np.empty_like(out)
    result[order] = out
    return result


def _match(
    path: str, wanted: npt.NDArray[np.float64], tolerance: float, seek_to: float | None
) -> npt.NDArray[np.uint8] | None:
    """Decode forward, keeping per sorted wanted time the nearest frame (None: seek overshot)."""
    av = _av()
    container, stream = open_video(path)
    # One converter for the whole file: `frame.to_ndarray(format=...)` builds a new one per
    # frame; the pixels are the same, the set-up cost is not.
    rgb24 = av.video.reformatter.VideoReformatter()
    best = np.full(len(wanted), np.inf)
    out: npt.NDArray[np.uint8] | None = None
    seen: list[float] = []
    first, last = float(wanted[0]) + tolerance, float(wanted[-1]) + tolerance
    try:
        if seek_to is not None:
            container.seek(max(0, math.floor(seek_to / stream.time_base)), stream=stream)
        for frame in container.decode(stream):
            if frame.pts is None:
                raise ConversionError(f"{path}: frame {len(seen)} has no presentation timestamp")
            t = float(frame.pts * stream.time_base)
            if seek_to is not None and not seen and t > first:
                return None
            seen.append(t)
            lo = int(np.searchsorted(wanted, t - tolerance, side="left"))
            hi = int(np.searchsorted(wanted, t + tolerance, side="right"))
            gap = np.abs(wanted[lo:hi] - t)
            take = lo + np.flatnonzero(gap < best[lo:hi])
            if take.size:
                rgb = rgb24.reformat(frame, format="rgb24").to_ndarray()
                if out is None:
                    out = np.empty((len(wanted), *rgb.shape), np.uint8)
                elif rgb.shape != out.shape[1:]:
                    raise ConversionError(
                        f"{path}: the frame at {t:.6f} s is {rgb.shape}, earlier frames {out.shape[1:]}"
                    )
                out[take] = rgb
                best[take] = np.abs(wanted[take] - t)
            if t > last:
                break
    except av.FFmpegError as exc:
        raise ConversionError(f"{path}: decoding failed after {len(seen)} frames ({exc})") from None
    finally:
        container.close()
    if seek_to is not None and not seen:
        return None  # sought past the end: decode from the start to say how short the file is
    missing = np.flatnonzero(~np.isfinite(best))
    if missing.size:
        raise ConversionError(_miss_message(path, wanted, int(missing[0]), seen, tolerance))
    assert out is not None
    return out


def _miss_message(path: str, wanted: npt.NDArray[np.float64], i: int, seen: list[float], tol: float) -> str:
    w = float(wanted[i])
    if not seen:
        return f"{path}: no frame decodes; the frame at {w:.6f} s is needed"
    if w > max(seen) + tol:
        return (
            f"{path}: short video: it ends at {max(seen):.6f} s, but a frame at {w:.6f} s is needed "
            f"({int((wanted > max(seen) + tol).sum())} of {len(wanted)} wanted frames are past its end)"
        )
    near = min(seen, key=lambda s: abs(s - w))
    return (
        f"{path}: no frame within {tol:g} s of {w:.6f} s (nearest at {near:.6f} s); "
        f"the video and the parquet timestamps disagree"
    )
