"""``tf.train.Example`` on the wire, without TensorFlow or the protobuf package.

From tensorflow/core/example/{example,feature}.proto::

    message Example { Features features = 1; }
    message Features { map<string, Feature> feature = 1; }  // entry: key = 1, value = 2
    message Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                   Int64List int64_list = 3; } }
    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }

Decoding follows protobuf's rules: unknown fields are skipped, repeated scalars are
accepted packed and unpacked, a map key seen twice keeps its last value, and a oneof
keeps its last kind (merging repeated values within one kind).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import ConversionError

FeatureValue: TypeAlias = list[bytes] | NDArray[np.float32] | NDArray[np.int64]
"""A decoded feature: bytes values, float32 values or int64 values (always 1-D)."""

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_F32 = np.dtype("<f4")


class _Error(Exception):
    """A malformed message; the caller adds where the message came from."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return ``(value, next position)``."""
    if pos >= end:
        raise _Error(f"varint runs past the end of its message at byte {pos}")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value, shift = b & 0x7F, 7
    pos += 1
    while True:
        if pos >= end:
            raise _Error(f"varint runs past the end of its message at byte {pos}")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _Error(f"varint longer than 10 bytes before byte {pos}")


def _skip(buf: bytes, wire: int, pos: int, end: int) -> int:
    """Skip one field value of wire type ``wire``; return the next position."""
    if wire == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire == _LEN:
        n, pos = _varint(buf, pos, end)
        nxt = pos + n
    elif wire == _I64:
        nxt = pos + 8
    elif wire == _I32:
        nxt = pos + 4
    else:
        raise _Error(f"unsupported wire type {wire} at byte {pos}")
    if nxt > end:
        raise _Error(f"field at byte {pos} runs past the end of its message")
    return nxt


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """Every length-delimited field of a message as ``(number, wire, start, stop)``.

    Fields of other wire types are skipped (this module reads none at this level).
    """
    out = []
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Error(f"field {number} at byte {pos} declares {n} bytes, its message has {end - pos}")
            out.append((number, wire, pos, pos + n))
            pos += n
        else:
            pos = _skip(buf, wire, pos, end)
    return out


def _bytes_list(buf: bytes, pos: int, end: int) -> list[bytes]:
    out = []
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A:  # field 1, length-delimited: the common case, inlined
            n, pos = _varint(buf, pos + 1, end)
            stop = pos + n
            if stop > end:
                raise _Error(f"bytes value at byte {pos} declares {n} bytes, its list has {end - pos}")
            out.append(buf[pos:stop])
            pos = stop
        else:
            tag, pos = _varint(buf, pos, end)
            pos = _skip(buf, tag & 7, pos, end)
    return out


def _float_list(buf: bytes, pos: int, end: int) -> NDArray[np.float32]:
    if pos < end and buf[pos] == 0x0A:  # one packed run covering the whole list: zero-copy
        n, start = _varint(buf, pos + 1, end)
        if start + n == end and n % 4 == 0:
            return np.frombuffer(buf, _F32, n // 4, start)
    raw = np.frombuffer(buf, np.uint8, end - pos, pos)
    if raw.size % 5 == 0 and raw.size and (raw[::5] == 0x0D).all():  # every value unpacked
        return np.ascontiguousarray(raw.reshape(-1, 5)[:, 1:]).view(_F32).reshape(-1)
    parts: list[NDArray[np.float32]] = []
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        if tag == 0x0A:
            n, pos = _varint(buf, pos, end)
            if n % 4 or pos + n > end:
                raise _Error(f"packed floats at byte {pos}: {n} bytes is not a whole number of floats")
            parts.append(np.frombuffer(buf, _F32, n // 4, pos))
            pos += n
        elif tag == 0x0D:
            if pos + 4 > end:
                raise _Error(f"float at byte {pos} runs past the end of its list")
            parts.append(np.frombuffer(buf, _F32, 1, pos))
            pos += 4
        else:
            pos = _skip(buf, tag & 7, pos, end)
    return np.concatenate(parts) if parts else np.zeros(0, _F32)


def _packed_varints(buf: bytes, pos: int, end: int) -> NDArray[np.int64]:
    """Decode a packed run of varints at once (vectorised)."""
    raw = np.frombuffer(buf, np.uint8, end - pos, pos)
    last = raw < 0x80
    if last.all():
        return raw.astype(np.int64)
    if raw.size and not last[-1]:
        raise _Error(f"packed varints at byte {pos}: the last varint is cut off")
    stops = np.flatnonzero(last)
    starts = np.concatenate([[0], stops[:-1] + 1])
    lengths = stops - starts + 1
    if lengths.max() > 10:
        raise _Error(f"packed varints at byte {pos}: a varint is longer than 10 bytes")
    within = np.arange(raw.size) - np.repeat(starts, lengths)
    parts = (raw & 0x7F).astype(np.uint64) << (7 * within).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


def _int64_list(buf: bytes, pos: int, end: int) -> NDArray[np.int64]:
    if pos < end and buf[pos] == 0x0A:
        n, start = _varint(buf, pos + 1, end)
        if start + n == end:
            return _packed_varints(buf, start, end)
    parts: list[NDArray[np.int64]] = []
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        if tag == 0x0A:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Error(f"packed varints at byte {pos} run past the end of their list")
            parts.append(_packed_varints(buf, pos, pos + n))
            pos += n
        elif tag == 0x08:
            value, pos = _varint(buf, pos, end)
            parts.append(np.array([value], np.uint64).view(np.int64))
        else:
            pos = _skip(buf, tag & 7, pos, end)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


_LISTS: dict[int, Callable[[bytes, int, int], FeatureValue]] = {
    1: _bytes_list,
    2: _float_list,
    3: _int64_list,
}


def _feature(buf: bytes, pos: int, end: int) -> FeatureValue:
    kind = 0
    chunks: list[FeatureValue] = []
    for number, _, start, stop in _fields(buf, pos, end):
        if number not in _LISTS:
            continue
        if number != kind:  # a new oneof case replaces the old one
            kind, chunks = number, []
        chunks.append(_LISTS[number](buf, start, stop))
    if not chunks:  # no kind set: an empty feature
        return []
    if len(chunks) == 1:
        return chunks[0]
    if kind == 1:
        return [b for chunk in chunks for b in chunk]
    return np.concatenate(chunks)  # type: ignore[arg-type]


def _entry(buf: bytes, pos: int, end: int) -> tuple[str, int, int]:
    """Key and value extent of one ``map<string, Feature>`` entry."""
    key, value = b"", (end, end)
    for number, _, start, stop in _fields(buf, pos, end):
        if number == 1:
            key = buf[start:stop]
        elif number == 2:
            value = (start, stop)
    try:
        text = key.decode()
    except UnicodeDecodeError:
        raise _Error(f"feature name at byte {pos} is not UTF-8: {key[:40]!r}") from None
    return text, value[0], value[1]


def parse_example(
    buf: bytes, *, skip: Collection[str] = (), only: Collection[str] | None = None
) -> dict[str, FeatureValue]:
    """Decode a serialized ``tf.train.Example`` into ``{name: values}``.

    Float values are zero-copy read-only views of ``buf`` where the wire allows. Names in
    ``skip``, or not in ``only`` when given, are left out without decoding their values.

    Raises:
        ConversionError: the bytes are not a well-formed Example; says at which byte.
    """
    out: dict[str, FeatureValue] = {}
    try:
        for number, _, start, stop in _fields(buf, 0, len(buf)):
            if number != 1:
                continue
            for number2, _, a, b in _fields(buf, start, stop):
                if number2 != 1:
                    continue
                key, v0, v1 = _entry(buf, a, b)
                if key not in skip and (only is None or key in only):
                    out[key] = _feature(buf, v0, v1)
    except _Error as exc:
        raise ConversionError(f"not a valid tf.train.Example: {exc}") from None
    return out


# -- encoding -----------------------------------------------------------------------------


_ONE_BYTE = [bytes([v]) for v in range(0x80)]


def _enc_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _enc_varints(values: NDArray[np.int64]) -> bytes:
    """The varints of ``values`` (negative ones as their 64-bit two's complement), packed."""
    u = values.view(np.uint64)
    if not len(u) or int(u.max()) < 0x80:  # one byte each: flags, small counts
        return u.astype(np.uint8).tobytes()
    groups = np.stack([(u >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)]).astype(np.uint8)
    sizes = np.ones(len(u), np.int64)
    for k in range(1, 10):
        sizes += (u >> np.uint64(7 * k)) != 0
    held = np.arange(10)[:, None] < sizes  # (10, N): the groups each value is written with
    groups[np.arange(10)[:, None] < sizes - 1] |= 0x80  # every group but a value's last goes on
    packed: bytes = groups.T[held.T].tobytes()
    return packed


def _enc_len(number: int, payload: bytes) -> bytes:
    return _enc_varint(number << 3 | _LEN) + _enc_varint(len(payload)) + payload


def _enc_feature(value: Sequence[bytes] | NDArray[np.generic]) -> bytes:
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        if flat.dtype.kind == "f":
            return _enc_len(2, _enc_len(1, flat.astype(_F32).tobytes()))
        if flat.dtype.kind in "biu":
            return _enc_len(3, _enc_len(1, _enc_varints(flat.astype(np.int64))))
        raise TypeError(f"cannot encode a {flat.dtype} array as a Feature")
    if value and value.count(value[0]) == len(value):  # a step feature's one text, in every step
        return _enc_len(1, _enc_len(1, bytes(value[0])) * len(value))
    encoded: dict[bytes, bytes] = {}  # else texts that repeat are framed once each (not frames)
    parts = []
    for v in value:
        b = bytes(v)
        part = encoded.get(b) if len(b) <= 256 else None
        if part is None:
            part = _enc_len(1, b)
            if len(b) <= 256:
                encoded[b] = part
        parts.append(part)
    return _enc_len(1, b"".join(parts))


def encode_example(features: Mapping[str, Sequence[bytes] | NDArray[np.generic]]) -> bytes:
    """Serialize ``{name: values}`` as a ``tf.train.Example`` (packed, in the given order).

    Floating arrays become a FloatList (float32), integer and bool arrays an Int64List,
    and sequences of bytes a BytesList.
    """
    entries = b"".join(
        _enc_len(1, _enc_len(1, name.encode()) + _enc_len(2, _enc_feature(value)))
        for name, value in features.items()
    )
    return _enc_len(1, entries)
