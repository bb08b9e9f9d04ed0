"""What `Writer.add_episode` takes, checked: an episode's arrays, and each camera's frames
(encoded, or passed through)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kinodb.errors import WriterError
from kinodb.kdb import _codecs
from kinodb.kdb._checks import as_array, check_text, dims3, mapping, shown, terminal

# add_episode's own arrays; the names extra arrays cannot take.
RESERVED_ARRAYS = frozenset({"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images"})

# libjpeg's limit on either side (JPEG_MAX_DIMENSION); Pillow fails past it with a bare
# "broken data stream".
JPEG_MAX_SIDE = 65500


class RawFrames:
    """uint8 frames ``(T, H, W, C)`` stored raw whatever the writer's ``image_codec``: a
    copied camera's exact pixels (`Writer.copy_episode`)."""

    __slots__ = ("frames",)

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames


def camera_frames(
    cam: str, value: Any, T: int, codec_for: Callable[[str], str], quality: int
) -> tuple[str, tuple[int, int, int], list[bytes] | np.ndarray]:
    """Camera ``cam``'s frames as `Writer.add_episode` stores them: ``(codec, (H, W, C),
    frames)``, the frames a uint8 array (raw) or one encoded blob per frame.

    ``value`` is uint8 ``(T, H, W, C)`` or ``(T, H, W)`` pixels (encoded with
    ``codec_for(cam)`` at JPEG ``quality``), `RawFrames`, an `EncodedFrames`, or a list
    of JPEG/PNG bytes (kept byte for byte, once `_codecs.damage` finds each one complete).

    Raises:
        WriterError: the frames are of the wrong type, shape or count, or not all alike;
            an encoded frame is damaged (truncated, or with bytes after its end marker
            that do not decode).
    """
    if not cam:
        raise WriterError("camera names must be non-empty strings")
    check_text(cam, f"camera name {cam!r} (a key of images)")
    forced = None
    if isinstance(value, RawFrames):
        value, forced = value.frames, "raw"
    if isinstance(value, np.ndarray):
        frames = value if value.ndim == 4 else value[..., None] if value.ndim == 3 else None
        if frames is None or frames.dtype != np.uint8:
            hint = _sixteen_bit(cam) if value.dtype == np.uint16 else ""
            raise WriterError(
                f"images[{cam!r}] must be uint8 (T, H, W, C) or (T, H, W), got {value.dtype} {value.shape}{hint}"
            )
        if frames.shape[0] != T:
            raise WriterError(f"images[{cam!r}] has {frames.shape[0]} frames, actions has {T}")
        h, w, c = frames.shape[1:]
        if c not in (1, 2, 3, 4) or h == 0 or w == 0:
            raise WriterError(f"images[{cam!r}] has shape {frames.shape}; need H, W > 0 and 1-4 channels")
        chosen = forced or codec_for(cam)
        if chosen == "raw":
            return "raw", (h, w, c), np.ascontiguousarray(frames)
        if chosen == "jpeg" and c not in (1, 3):
            raise WriterError(
                f"images[{cam!r}] has {c} channels; JPEG stores 1 or 3, use image_codec='png' or 'raw'"
            )
        if chosen == "jpeg" and max(h, w) > JPEG_MAX_SIDE:
            raise WriterError(
                f"images[{cam!r}] frames are {h}x{w} (HxW); JPEG stores at most {JPEG_MAX_SIDE} pixels "
                "a side: use image_codec='png' or 'raw'"
            )
        try:
            return chosen, (h, w, c), _codecs.encode(frames, chosen, quality)
        except OSError as exc:  # Pillow's encoders raise OSError on what they cannot store
            raise WriterError(
                f"images[{cam!r}]: {chosen} encoding failed ({_codecs.describe(exc)}); try "
                "image_codec='png' or 'raw'"
            ) from exc
    channels = None
    if isinstance(value, _codecs.EncodedFrames):
        value, channels = list(value.frames), value.channels
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 4:
            raise WriterError(f"images[{cam!r}].channels must be 1, 2, 3 or 4, got {channels!r}")
    if isinstance(value, (list, tuple)):
        if len(value) != T:
            raise WriterError(f"images[{cam!r}] has {len(value)} frames, actions has {T}")
        return _encoded(cam, value, channels)
    raise WriterError(
        f"images[{cam!r}] must be a uint8 array or a list of encoded frames, got {type(value).__name__}"
    )


def _encoded(
    cam: str, value: list[Any] | tuple[Any, ...], channels: int | None
) -> tuple[str, tuple[int, int, int], list[bytes]]:
    """Camera ``cam``'s encoded frames, checked: one codec, one shape, each frame complete."""
    alike = _alike(value)
    if alike is not None:
        kind, (h, w, c) = alike
        return kind, (h, w, c if channels is None else channels), list(value)
    blobs = [bytes(b) if isinstance(b, (bytes, bytearray, memoryview)) else None for b in value]
    if isinstance(value[0], np.ndarray):
        codec = _encoded_arrays(value)
        if codec is not None:
            raise WriterError(
                f"images[{cam!r}] is a list of uint8 arrays holding encoded {codec} frames (as "
                "cv2.imencode returns them); pass their bytes, [b.tobytes() for b in frames]: kinodb "
                "stores encoded frames unchanged"
            )
        raise WriterError(
            f"images[{cam!r}] is a list of arrays; stack them into one uint8 array (T, H, W, C) "
            "(np.stack), or pass a list of encoded JPEG/PNG bytes"
        )
    codec = _codecs.sniff(blobs[0] or b"")
    if codec is None:
        raise WriterError(f"images[{cam!r}][0] is not JPEG or PNG bytes")
    shape = None
    # Frames from one encoder usually repeat frame 0's header up to its size field;
    # a frame that starts with those bytes has its shape, with no parsing.
    first = _codecs.header(blobs[0] or b"")
    first_shape, same = (first[0], (blobs[0] or b"")[: first[1]]) if first else (None, None)
    for t, blob in enumerate(blobs):
        if blob is None or _codecs.sniff(blob) != codec:
            raise WriterError(f"images[{cam!r}][{t}] is not {codec} bytes like frame 0")
        if first_shape is not None and same is not None and blob.startswith(same):
            got = first_shape
        else:
            try:
                got = _codecs.probe(blob)
            except OSError as exc:
                raise WriterError(
                    f"images[{cam!r}][{t}]: unreadable {codec} header ({_codecs.describe(exc)})"
                ) from exc
            except WriterError as exc:  # a mode kinodb does not store (16-bit, CMYK ...)
                hint = (
                    _sixteen_bit(cam)
                    if _codecs.sixteen_bit(blob)
                    else "; decode the frames and pass their pixels as uint8 RGB (Pillow: im.convert('RGB'))"
                )
                raise WriterError(f"images[{cam!r}][{t}]: {exc}{hint}") from None
        problem = _codecs.damage(blob, codec)  # stored unchecked, it would fail on every read
        if problem is not None:
            raise WriterError(
                f"images[{cam!r}][{t}] is a damaged {codec} frame: {problem}; pass complete {codec} "
                "bytes or the decoded pixels, or leave this episode out"
            )
        if channels is not None:  # readers convert every frame to these channels
            got = (got[0], got[1], channels)
        if shape is None:
            shape = got
        elif got != shape:
            raise WriterError(f"images[{cam!r}][{t}] is {got} (H, W, C), frame 0 is {shape}")
    assert shape is not None  # T >= 1
    return codec, shape, [b for b in blobs if b is not None]


def _encoded_arrays(value: list[Any] | tuple[Any, ...]) -> str | None:
    """The codec of frames that are all uint8 arrays, 1-D or ``(N, 1)``, holding JPEG or
    PNG bytes of one codec (what ``cv2.imencode`` returns); None when they are not."""
    codecs = {
        _codecs.sniff(b[:8].tobytes())
        if isinstance(b, np.ndarray)
        and b.dtype == np.uint8
        and (b.ndim == 1 or (b.ndim == 2 and b.shape[1] == 1))
        else None
        for b in value
    }
    return codecs.pop() if len(codecs) == 1 else None


def _sixteen_bit(cam: str) -> str:
    """What to do with camera ``cam``'s 16-bit frames (depth), which cameras do not store."""
    return f"; store 16-bit frames (depth) as an array, extra_arrays={{{cam!r}: uint16 (T, H, W)}}, not as images"


# What a complete frame ends with when nothing follows its end marker, as encoders write
# them: JPEG's end-of-image marker, PNG's IEND chunk (empty, so its CRC is always AE426082).
_ENDS = {"jpeg": b"\xff\xd9", "png": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


def _alike(value: list[Any] | tuple[Any, ...]) -> tuple[str, tuple[int, int, int]] | None:
    """``(codec, shape)`` of frames that are all ``bytes``, all start with frame 0's header
    up to its size field and all end with their codec's end marker, as one encoder writes
    a camera's frames; None when any is not (`_encoded` then checks them one by one and
    names the frame at fault). Each test is one pass in C over the frames, with no Python
    per frame: an episode of passed-through JPEGs is checked in microseconds."""
    first = value[0]
    if type(first) is not bytes:
        return None
    codec, found = _codecs.sniff(first), _codecs.header(first)
    if codec is None or found is None:
        return None
    same = first[: found[1]]
    if not (
        set(map(type, value)) == {bytes}
        and all(map(bytes.startswith, value, itertools.repeat(same)))
        and all(map(bytes.endswith, value, itertools.repeat(_ENDS[codec])))
    ):
        return None
    return codec, found[0]


def check_quality(value: Any) -> int:
    """``jpeg_quality`` as an int in 1..100 (a whole number; NumPy integers too)."""
    try:
        q: int | None = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        q = int(value) if isinstance(value, (float, np.floating)) and float(value).is_integer() else None
    if q is None or not 1 <= q <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100 (a whole number), got {shown(value)}")
    return q


def episode_arrays(
    actions: Any,
    states: Any,
    rewards: Any,
    is_terminal: Any,
    timestamps: Any,
    extra: Mapping[str, Any] | None,
) -> dict[str, np.ndarray]:
    """`Writer.add_episode`'s arrays, checked: each is (T, ...) with T >= 1 frames, at most
    4 dims, and stored as little-endian.

    Raises:
        WriterError: an array is malformed; the message names it.
    """
    acts = as_array("actions", actions, np.float32, ndim=2)
    T = acts.shape[0]
    if T == 0:
        raise WriterError("actions has 0 frames; empty episodes cannot be stored")
    sts = np.zeros((T, 0), np.float32) if states is None else as_array("states", states, np.float32, ndim=2)
    rew = np.zeros(T, np.float32) if rewards is None else as_array("rewards", rewards, np.float32, ndim=1)
    if is_terminal is None:
        term = np.zeros(T, bool)
        term[-1] = True
    else:
        term = terminal(is_terminal)
    arrays = {"actions": acts, "states": sts, "rewards": rew, "is_terminal": term}
    if timestamps is not None:
        arrays["timestamps"] = as_array("timestamps", timestamps, np.float64, ndim=1)
    for name, value in mapping(extra, "extra_arrays", "{'depth': uint16 (T, H, W)}").items():
        if name not in _ARRAY_NAMES:
            if not isinstance(name, str) or not name or name in RESERVED_ARRAYS:
                raise WriterError(f"extra array name {name!r} is empty or reserved; rename it")
            check_text(name, f"extra array name {name!r}")
            if len(_ARRAY_NAMES) < _NAMES_KEPT:
                _ARRAY_NAMES.add(name)
        arrays[name] = as_array(f"extra array {name!r}", value, np.float32, ndim=None)
    for name, arr in arrays.items():
        shape = arr.shape
        if shape[0] != T or len(shape) > 2:
            what = name if name in RESERVED_ARRAYS else f"extra array {name!r}"
            if shape[0] != T:
                raise WriterError(f"{what} has {shape[0]} frames, actions has {T}")
            dims3(shape, what)  # before any byte is written
        elif len(shape) == 2 and shape[1] >= 2**32:
            dims3(shape, name if name in RESERVED_ARRAYS else f"extra array {name!r}")
    return arrays


# Extra array names checked (non-empty text, not reserved): each is checked once.
_ARRAY_NAMES: set[str] = set()
_NAMES_KEPT = 4096  # names kept at most: those beyond are checked each time
