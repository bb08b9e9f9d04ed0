"""Replies on the wire without message objects: built bytes, zero-copy arrays.

Replies that carry frame windows (`GetBatch` and `StreamBatches` with ``windows`` set)
are the hot path of a training feed, and replies of episodes with decoded frames the
largest. Going through protobuf message objects copies every array three times on the
server (``tobytes``, the message's own copy, serialisation) and twice on the client
(parsing, then each access of a ``bytes`` field): a reply of decoded frames took about
three times its size in memory at each end. Here the server writes the reply's wire
bytes itself, each array copied once into the reply, and the client reads arrays with
``np.frombuffer`` over the received bytes, with no copy at all.

`encode_windows` and `encode_episodes` write the protobuf encoding of a `BatchResponse`
(`encode_episode` of an `EpisodeResponse`; fields in number order, proto3 defaults left
out), so every protobuf parser reads it, earlier clients included. `decode_windows` and
`decode_episodes` read any encoding a protobuf library writes: fields in any order,
unknown fields skipped, shapes packed or not (a map key or camera sent twice keeps its
last value). Entries in the layout encoders use take a shortcut past the general field
walk; that matters because the walk is Python, run once per field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb.serve._messages import sendable, tensor_dtype

__all__ = [
    "CameraPart",
    "DecodedEpisode",
    "DecodedWindows",
    "EpisodePart",
    "WireError",
    "decode_episode",
    "decode_episodes",
    "decode_windows",
    "encode_episode",
    "encode_episodes",
    "encode_windows",
]

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_SMALL = [bytes([n]) for n in range(128)]


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


@dataclass(frozen=True, slots=True)
class CameraPart:
    """One camera's frames of a window batch or an episode: stored ``frames`` (bytes, or
    byte views of a file) or decoded ``pixels``."""

    camera: str
    codec: str
    height: int
    width: int
    channels: int
    frames: Sequence[bytes | memoryview] = ()
    pixels: NDArray[np.uint8] | None = None


@dataclass(slots=True)
class DecodedWindows:
    """A decoded `BatchResponse` of windows: arrays are read-only views of the reply."""

    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    images: dict[str, NDArray[np.uint8] | list[bytes]] = field(default_factory=dict)
    next_offset: int = 0
    batches: int = 0


@dataclass(frozen=True, slots=True)
class EpisodePart:
    """One `Episode` of a reply: its `EpisodeMeta` as encoded bytes, its arrays and cameras."""

    meta: bytes
    arrays: Mapping[str, NDArray[Any]]
    images: Sequence[CameraPart] = ()
    index: int = 0
    source: int = 0
    position: int = 0


@dataclass(slots=True)
class DecodedEpisode:
    """A decoded `Episode`: arrays and decoded frames are read-only views of the reply.

    ``meta`` holds the `EpisodeMeta`'s encoded bytes; ``codecs`` names the codec of each
    camera that came as stored frames (a list of bytes in ``images``).
    """

    meta: bytes = b""
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    images: dict[str, NDArray[np.uint8] | list[bytes]] = field(default_factory=dict)
    codecs: dict[str, str] = field(default_factory=dict)
    index: int = 0
    source: int = 0
    position: int = 0


# -- encoding ---------------------------------------------------------------------------------

# A map entry's bytes before its data depend only on (key, dtype, shape), which repeat from
# batch to batch of a stream: they are built once.
_ENTRY_HEADS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
_MAX_HEADS = 4096


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field (``number`` < 16)."""
    return _SMALL[number << 3 | _LEN] + _varint(size)


def _uint_field(number: int, value: int) -> bytes:
    return _SMALL[number << 3 | _VARINT] + _varint(value) if value else b""


def _string(number: int, text: str) -> bytes:
    raw = text.encode()
    return _len_field(number, len(raw)) + raw


def _data(a: NDArray[Any]) -> Any:
    """The bytes of a C-contiguous array, for ``bytes.join`` (no copy)."""
    return a if a.dtype.kind in "biuf" else a.reshape(-1).view(np.uint8)


def _tensor_head(a: NDArray[Any]) -> bytes:
    """A `Tensor`'s bytes before its data: dtype, shape and the data field's key and length."""
    head = _string(1, a.dtype.str)
    if a.ndim:
        shape = b"".join([_varint(int(d)) for d in a.shape])
        head += _len_field(2, len(shape)) + shape
    if a.nbytes:
        head += _len_field(3, a.nbytes)
    return head


def _map_head(number: int, key: str, a: NDArray[Any]) -> bytes:
    """A ``map<string, Tensor>`` entry of field ``number`` up to its data, key and length included."""
    tensor = _tensor_head(a)
    body = _string(1, key) + _len_field(2, len(tensor) + a.nbytes) + tensor
    return _len_field(number, len(body) + a.nbytes) + body


def _entry_head(key: str, a: NDArray[Any]) -> bytes:
    """`_map_head` of ``WindowBatch.arrays``, cached: window batches repeat their shapes."""
    cache = (key, a.dtype.str, a.shape)
    head = _ENTRY_HEADS.get(cache)
    if head is None:
        head = _map_head(1, key, a)
        if len(_ENTRY_HEADS) < _MAX_HEADS:
            _ENTRY_HEADS[cache] = head
    return head


def _camera(cam: CameraPart, parts: list[Any]) -> int:
    """Append one `CameraFrames` (without its own key and length) to ``parts``; return its size."""
    head = (
        (_string(1, cam.camera) if cam.camera else b"") + (_string(2, cam.codec) if cam.codec else b"")
        + _uint_field(3, cam.height) + _uint_field(4, cam.width) + _uint_field(5, cam.channels)
    )  # fmt: skip
    size = len(head)
    parts.append(head)
    for blob in cam.frames:
        n = len(blob) if type(blob) is bytes else memoryview(blob).nbytes
        key = _len_field(6, n)
        parts.append(key)
        parts.append(blob)
        size += len(key) + n
    if cam.pixels is not None:
        a = sendable(cam.pixels)
        t_head = _tensor_head(a)
        key = _len_field(7, len(t_head) + a.nbytes)
        parts.append(key + t_head)
        parts.append(_data(a))
        size += len(key) + len(t_head) + a.nbytes
    return size


def encode_windows(
    arrays: Mapping[str, NDArray[Any]],
    tasks: Iterable[str],
    images: Sequence[CameraPart] = (),
    *,
    next_offset: int = 0,
    batches: int = 0,
) -> bytes:
    """The wire bytes of ``BatchResponse(windows=WindowBatch(...), next_offset=..., batches=...)``.

    Each array is copied once, into the result; ``batches`` 0 or 1 is left out (one batch).

    Raises:
        TypeError: an array holds Python objects.
    """
    body: list[Any] = [b""]  # the windows field's key and length go first
    size = 0
    for key, arr in arrays.items():
        a = sendable(arr)
        head = _entry_head(key, a)
        body.append(head)
        body.append(_data(a))
        size += len(head) + a.nbytes
    for text in tasks:
        raw = _string(2, text)
        body.append(raw)
        size += len(raw)
    for cam in images:
        parts: list[Any] = []
        n = _camera(cam, parts)
        head = _len_field(3, n)
        body.append(head)
        body.extend(parts)
        size += len(head) + n
    body[0] = _len_field(2, size)
    body.append(_uint_field(3, next_offset))
    if batches > 1:
        body.append(_uint_field(4, batches))
    return b"".join(body)


def _episode(ep: EpisodePart, parts: list[Any]) -> int:
    """Append one `Episode` (without its own key and length) to ``parts``; return its size.

    The arrays and frames go in as they are: ``bytes.join`` copies them once, into the reply.
    """
    head = _len_field(1, len(ep.meta)) + ep.meta  # the meta: present, even when all defaults
    parts.append(head)
    size = len(head)
    for key, arr in ep.arrays.items():  # shapes differ from episode to episode: not cached
        a = sendable(arr)
        head = _map_head(3, key, a)
        parts.append(head)
        parts.append(_data(a))
        size += len(head) + a.nbytes
    for cam in ep.images:
        inner: list[Any] = []
        n = _camera(cam, inner)
        head = _len_field(4, n)
        parts.append(head)
        parts.extend(inner)
        size += len(head) + n
    tail = _uint_field(5, ep.index) + _uint_field(6, ep.source) + _uint_field(7, ep.position)
    parts.append(tail)
    return size + len(tail)


def encode_episodes(episodes: Iterable[EpisodePart], *, next_offset: int = 0) -> bytes:
    """The wire bytes of ``BatchResponse(episodes=[...], next_offset=...)``.

    Each array and frame is copied once, into the result.

    Raises:
        TypeError: an array holds Python objects.
    """
    body: list[Any] = []
    for ep in episodes:
        parts: list[Any] = []
        n = _episode(ep, parts)
        body.append(_len_field(1, n))
        body.extend(parts)
    body.append(_uint_field(3, next_offset))
    return b"".join(body)


def encode_episode(ep: EpisodePart) -> bytes:
    """The wire bytes of ``EpisodeResponse(episode=...)``; see `encode_episodes`.

    Raises:
        TypeError: an array holds Python objects.
    """
    parts: list[Any] = []
    n = _episode(ep, parts)
    return b"".join([_len_field(1, n), *parts])


# -- decoding ---------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"a varint at byte {pos} runs over 10 bytes")
    raise WireError(f"a varint runs past the end of its message (byte {end})")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, value or start, end)`` of each field in ``buf[pos:end]``.

    For length-delimited fields the third item is where the payload starts; for the other
    wire types it is the value (fixed-width values are skipped, as 0).
    """
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _LEN:
            n = buf[pos] if pos < end else 0x80
            if n < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos, end)
            if pos + n > end:
                raise WireError(f"field {number} claims {n} bytes at byte {pos}; only {end - pos} remain")
            yield number, wire, pos, pos + n
            pos += n
        elif wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise WireError(f"field {number} runs past the end of its message")
            yield number, wire, 0, pos
        else:
            raise WireError(f"field {number} has wire type {wire}, which proto3 does not use")


def _tensor_at(buf: bytes, start: int, end: int, where: str) -> NDArray[Any]:
    """The `Tensor` in ``buf[start:end]`` as a read-only view of ``buf``."""
    dtype_text, data = b"", (start, start)
    shape: list[int] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:
            dtype_text = buf[a:b]
        elif number == 2 and wire == _LEN:  # packed, the usual form
            shape.extend(_dims(buf, a, b))
        elif number == 2 and wire == _VARINT:
            shape.append(a)
        elif number == 3 and wire == _LEN:
            data = (a, b)
    dtype = _dtype(dtype_text, where)
    nbytes = data[1] - data[0]
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise WireError(f"{where}: {nbytes} bytes do not make a {dtype.str} array of shape {tuple(shape)}")
    if not dtype.itemsize:  # records of no bytes: nothing to view
        empty = np.zeros(shape, dtype)
        empty.flags.writeable = False
        return empty
    return np.frombuffer(buf, dtype, nbytes // dtype.itemsize, data[0]).reshape(shape)


_DTYPES: dict[bytes, np.dtype[Any]] = {}


def _dtype(text: bytes, where: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(text)
    if dtype is None:
        dtype = tensor_dtype(text.decode(), where)
        if len(_DTYPES) < 256:  # a peer cannot grow it without bound
            _DTYPES[text] = dtype
    return dtype


def _dims(buf: bytes, pos: int, end: int) -> tuple[int, ...]:
    """The dimensions of a packed shape in ``buf[pos:end]``."""
    raw = buf[pos:end]
    if raw.isascii():  # every dimension below 128: one byte each
        return tuple(raw)
    dims = []
    while pos < end:
        dim, pos = _read_varint(buf, pos, end)
        dims.append(dim)
    return tuple(dims)


def _map_entry(buf: bytes, start: int, end: int, out: dict[str, NDArray[Any]]) -> None:
    if _canonical_entry(buf, start, end, out):
        return
    key, value = "", (start, start)
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:
            key = buf[a:b].decode()
        elif number == 2 and wire == _LEN:
            value = (a, b)
    out[key] = _tensor_at(buf, value[0], value[1], key or "tensor")


def _canonical_entry(buf: bytes, pos: int, end: int, out: dict[str, NDArray[Any]]) -> bool:
    """Read a map entry laid out as encoders write it, without the general field walk.

    The layout: key (0x0A, one-byte length, text), value (0x12, length), and in the value
    dtype (0x0A, one-byte length, a dtype seen before), packed shape (0x12, one-byte
    length) and data (0x1A, length) ending where the entry ends. For anything else this
    returns False having stored nothing, and the general reader takes the entry.
    """
    if pos + 2 > end or buf[pos] != 0x0A or buf[pos + 1] >= 0x80:
        return False
    k_end = pos + 2 + buf[pos + 1]
    if k_end + 2 > end or buf[k_end] != 0x12:
        return False
    v_len, t_pos = _read_varint(buf, k_end + 1, end)
    if t_pos + v_len != end or t_pos + 2 > end or buf[t_pos] != 0x0A or buf[t_pos + 1] >= 0x80:
        return False
    d_end = t_pos + 2 + buf[t_pos + 1]
    if d_end + 2 > end or buf[d_end] != 0x12 or buf[d_end + 1] >= 0x80:
        return False
    dtype = _DTYPES.get(buf[t_pos + 2 : d_end])
    s_end = d_end + 2 + buf[d_end + 1]
    if dtype is None or not dtype.itemsize or s_end > end:
        return False  # a dtype not seen yet goes the general way once, which learns it
    dims = _dims(buf, d_end + 2, s_end)
    if s_end == end:  # no data field: an empty array
        nbytes, data = 0, s_end
    elif buf[s_end] == 0x1A:
        nbytes, data = _read_varint(buf, s_end + 1, end)
        if data + nbytes != end:
            return False
    else:
        return False
    if nbytes != math.prod(dims) * dtype.itemsize:
        return False
    out[buf[pos + 2 : k_end].decode()] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, data).reshape(
        dims
    )
    return True


def _camera_at(
    buf: bytes, start: int, end: int, out: dict[str, NDArray[np.uint8] | list[bytes]],
    codecs: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Read one `CameraFrames` into ``out``; for stored frames, their codec into ``codecs``."""
    name, codec, frames, pixels = "", "", [], None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:
            name = buf[a:b].decode()
        elif number == 2 and wire == _LEN:
            codec = buf[a:b].decode()
        elif number == 6 and wire == _LEN:
            frames.append(buf[a:b])
        elif number == 7 and wire == _LEN:
            pixels = (a, b)
    if pixels is not None:
        out[name] = _tensor_at(buf, pixels[0], pixels[1], name)
        if codecs is not None:
            codecs.pop(name, None)
    else:
        out[name] = frames
        if codecs is not None:
            codecs[name] = codec


def decode_windows(buf: bytes) -> DecodedWindows:
    """Read a `BatchResponse` of windows; its arrays are read-only views of ``buf``.

    Raises:
        WireError: ``buf`` is not a valid encoding, or a tensor's bytes do not fit its shape.
    """
    try:
        return _decode_windows(buf)
    except UnicodeDecodeError as err:
        raise WireError(f"a text field is not UTF-8: {err}") from None


def _decode_windows(buf: bytes) -> DecodedWindows:
    out = DecodedWindows()
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 2 and wire == _LEN:
            for inner, w, c, d in _fields(buf, a, b):
                if inner == 1 and w == _LEN:
                    _map_entry(buf, c, d, out.arrays)
                elif inner == 2 and w == _LEN:
                    out.tasks.append(buf[c:d].decode())
                elif inner == 3 and w == _LEN:
                    _camera_at(buf, c, d, out.images)
        elif number == 3 and wire == _VARINT:
            out.next_offset = a
        elif number == 4 and wire == _VARINT:
            out.batches = a
    return out


def decode_episodes(buf: bytes) -> tuple[list[DecodedEpisode], int]:
    """Read a `BatchResponse` of episodes: the episodes and ``next_offset``; their arrays
    are read-only views of ``buf``.

    Raises:
        WireError: ``buf`` is not a valid encoding, or a tensor's bytes do not fit its shape.
    """
    try:
        episodes, next_offset = [], 0
        for number, wire, a, b in _fields(buf, 0, len(buf)):
            if number == 1 and wire == _LEN:
                episodes.append(_episode_at(buf, a, b))
            elif number == 3 and wire == _VARINT:
                next_offset = a
        return episodes, next_offset
    except UnicodeDecodeError as err:
        raise WireError(f"a text field is not UTF-8: {err}") from None


def decode_episode(buf: bytes) -> DecodedEpisode:
    """Read an `EpisodeResponse`; its arrays are read-only views of ``buf``.

    Raises:
        WireError: ``buf`` is not a valid encoding, or a tensor's bytes do not fit its shape.
    """
    try:
        found = DecodedEpisode()
        for number, wire, a, b in _fields(buf, 0, len(buf)):
            if number == 1 and wire == _LEN:
                found = _episode_at(buf, a, b, found)  # a message sent in parts merges, as in protobuf
        return found
    except UnicodeDecodeError as err:
        raise WireError(f"a text field is not UTF-8: {err}") from None


def _episode_at(buf: bytes, start: int, end: int, into: DecodedEpisode | None = None) -> DecodedEpisode:
    out = into if into is not None else DecodedEpisode()
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:
            out.meta += buf[a:b]  # a sub-message sent twice merges: protobuf reads the concatenation
        elif number == 3 and wire == _LEN:
            _map_entry(buf, a, b, out.arrays)
        elif number == 4 and wire == _LEN:
            _camera_at(buf, a, b, out.images, out.codecs)
        elif number == 5 and wire == _VARINT:
            out.index = a
        elif number == 6 and wire == _VARINT:
            out.source = a
        elif number == 7 and wire == _VARINT:
            out.position = a
    return out
