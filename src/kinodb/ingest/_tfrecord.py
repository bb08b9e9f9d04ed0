"""TFRecord framing: find, read and write records, checking both CRC-32C checksums.

A record is ``uint64 length``, ``uint32 masked_crc32c(length bytes)``, ``data``,
``uint32 masked_crc32c(data)``, all little-endian, concatenated with no file header.
CRC-32C comes from ``google-crc32c`` when it is installed with its C extension (the
``rlds`` extra), else from a vectorised NumPy implementation (a few hundred MB/s).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import ConversionError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<QI")  # data length, masked CRC of the 8 length bytes
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_RESYNC_CHUNK = 1 << 20
_COMPRESSED = {b"\x1f\x8b": "GZIP", b"\x78\x01": "ZLIB", b"\x78\x9c": "ZLIB", b"\x78\xda": "ZLIB"}
_DECOMPRESS = "decompress it first"  # ends the fault of a compressed shard: not damage


# -- CRC-32C ------------------------------------------------------------------------------


def _tables() -> NDArray[np.uint32]:
    """Slicing-by-4 tables: row k maps a byte to its CRC followed by k zero bytes."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    rows = [t]
    for _ in range(3):
        prev = rows[-1]
        rows.append((prev >> 8) ^ t[prev & 0xFF])
    return np.stack(rows)


_T = _tables()
_ZERO_OPS: list[NDArray[np.uint32]] = []  # _ZERO_OPS[j]: the register after 2**j zero bytes


def _apply(op: NDArray[np.uint32], x: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """Apply a GF(2)-linear map on 32-bit registers, stored as 4 byte-sliced tables."""
    out: NDArray[np.uint32] = (
        op[0][x & 0xFF] ^ op[1][(x >> 8) & 0xFF] ^ op[2][(x >> 16) & 0xFF] ^ op[3][x >> 24]
    )
    return out


def _op_from_columns(cols: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """Byte-sliced tables of the linear map whose image of bit ``b`` is ``cols[b]``."""
    v = np.arange(256, dtype=np.uint32)
    op = np.zeros((4, 256), np.uint32)
    for k in range(4):
        for j in range(8):
            op[k] ^= np.where((v >> j) & 1, cols[8 * k + j], 0).astype(np.uint32)
    return op


def _zero_op(j: int) -> NDArray[np.uint32]:
    """The map from a register to the register after ``2**j`` zero bytes (cached)."""
    while len(_ZERO_OPS) <= j:
        basis = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
        if not _ZERO_OPS:
            cols = _T[0][basis & 0xFF] ^ (basis >> 8)
        else:
            prev = _ZERO_OPS[-1]
            cols = _apply(prev, _apply(prev, basis))
        _ZERO_OPS.append(_op_from_columns(cols))
    return _ZERO_OPS[j]


def _crc32c_small(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t0 = _T[0]
    for b in data:
        crc = int(t0[(crc ^ b) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_numpy(data: bytes) -> int:
    """CRC-32C of ``data`` with NumPy: thousands of lanes at once, then combined.

    The initial register is folded into the first four bytes, the data is left-padded
    with zeros (which leave a zero register unchanged) into lanes of ``2**m`` bytes,
    each lane runs slicing-by-4, and neighbouring lanes merge pairwise by shifting the
    left one over the right one's length.
    """
    n = len(data)
    if n < 64:
        return _crc32c_small(data)
    m = min(max(int(np.ceil(np.log2(n / 4096))), 4), 16)
    lane = 1 << m
    k = -(-n // lane)
    buf = np.zeros(k * lane, np.uint8)
    buf[k * lane - n :] = np.frombuffer(data, np.uint8)
    buf[k * lane - n : k * lane - n + 4] ^= 0xFF
    words = np.ascontiguousarray(buf.view("<u4").reshape(k, lane // 4).T)
    t0, t1, t2, t3 = _T
    reg = np.zeros(k, np.uint32)
    for row in words:
        x = reg ^ row
        reg = t3[x & 0xFF] ^ t2[(x >> 8) & 0xFF] ^ t1[(x >> 16) & 0xFF] ^ t0[x >> 24]
    level = m
    while reg.size > 1:
        if reg.size % 2:
            reg = np.concatenate([np.zeros(1, np.uint32), reg])
        reg = _apply(_zero_op(level), reg[0::2]) ^ reg[1::2]
        level += 1
    return int(reg[0]) ^ 0xFFFFFFFF


def _fast_crc32c() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c  # type: ignore[import-not-found,unused-ignore]  # optional (rlds extra)
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "") != "c":
        return None
    value: Callable[[bytes], int] = google_crc32c.value
    return value


_fast = _fast_crc32c()
if _fast is None:
    log.debug("google-crc32c is not installed; CRC-32C runs in NumPy")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    if _fast is not None:
        return _fast(data)
    return crc32c_numpy(data)


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """Where one record lies in its shard, or why it cannot be read.

    Attributes:
        offset: byte offset of the record's length field.
        length: data bytes the header declares (0 when the header is unreadable).
        fault: None for a readable header, else what is wrong (the data CRC is checked
            only when the record is read).
    """

    offset: int
    length: int
    fault: str | None = None


def scan(path: str) -> list[Record]:
    """Every record of a shard, reading only the 12-byte headers.

    A header whose length CRC fails becomes a faulty record, and the scan resumes at the
    next offset where a whole record (both CRCs) checks out, so one damaged record
    costs only itself. A record that runs past the end of the file is faulty and ends
    the scan.

    Raises:
        OSError: the file cannot be opened.
    """
    out: list[Record] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            head = os.pread(fd, HEADER.size, pos)
            if len(head) < HEADER.size:
                out.append(
                    Record(pos, 0, f"truncated: {len(head)} of {HEADER.size} header bytes at byte {pos}")
                )
                break
            length, stored = HEADER.unpack(head)
            got = masked_crc32c(head[:8])
            if got != stored and pos == 0 and head[:2] in _COMPRESSED:
                out.append(Record(0, 0, f"the shard is {_COMPRESSED[head[:2]]}-compressed; {_DECOMPRESS}"))
                break
            if got != stored:
                nxt = _resync(fd, pos + 1, size)
                where = f"resumed at byte {nxt}" if nxt is not None else "no later record checks out"
                out.append(Record(pos, 0, f"length CRC mismatch at byte {pos} (stored {stored:#010x}, "
                                          f"computed {got:#010x}); {where}"))  # fmt: skip
                if nxt is None:
                    break
                pos = nxt
                continue
            end = pos + HEADER.size + length + _CRC.size
            if end > size:
                out.append(Record(pos, length, f"truncated: the record at byte {pos} declares {length} "
                                               f"data bytes and needs {end} bytes, the file has {size}"))  # fmt: skip
                break
            out.append(Record(pos, length))
            pos = end
    finally:
        os.close(fd)
    return out


def _resync(fd: int, start: int, size: int) -> int | None:
    """The first offset at or after ``start`` holding a record whose two CRCs check out."""
    pos = start
    while pos + HEADER.size + _CRC.size <= size:
        chunk = os.pread(fd, _RESYNC_CHUNK + HEADER.size, pos)
        raw = np.frombuffer(chunk, np.uint8)
        if raw.size < HEADER.size:
            return None
        # a plausible length is below 2**40, so its top three bytes are zero
        zero = raw == 0
        cand = np.flatnonzero(zero[5 : raw.size - 6] & zero[6 : raw.size - 5] & zero[7 : raw.size - 4])
        for i in cand.tolist():
            if i >= _RESYNC_CHUNK:
                break
            length, stored = HEADER.unpack_from(chunk, i)
            at = pos + int(i)
            if at + HEADER.size + length + _CRC.size > size or masked_crc32c(chunk[i : i + 8]) != stored:
                continue
            body = os.pread(fd, length + _CRC.size, at + HEADER.size)
            crc: int = _CRC.unpack_from(body, length)[0]
            if masked_crc32c(body[:length]) == crc:
                return at
        pos += _RESYNC_CHUNK
    return None


def read_data(fd: int, path: str, index: int, record: Record, *, fix: str | Callable[[], str] = "") -> bytes:
    """The data of ``record`` (number ``index`` in shard ``path``), its CRC checked.

    ``fix`` (``copy the shard again ...``, or what makes it, called only for a message) ends
    the message of a damaged or truncated record.

    Raises:
        ConversionError: the record is faulty, or its data fails the CRC.
    """

    def advice() -> str:
        said = fix() if callable(fix) else fix
        return f"; {said}" if said else ""

    if record.fault is not None:
        end = "" if record.fault.endswith(_DECOMPRESS) else advice()
        raise ConversionError(f"{path}: record {index}: {record.fault}{end}")
    n = record.length
    body = os.pread(fd, n + _CRC.size, record.offset + HEADER.size)
    if len(body) < n + _CRC.size:
        raise ConversionError(f"{path}: record {index}: truncated: the file ends inside the record{advice()}")
    data = body[:n]
    stored = _CRC.unpack_from(body, n)[0]
    got = masked_crc32c(data)
    if got != stored:
        raise ConversionError(
            f"{path}: record {index}: data CRC mismatch (stored {stored:#010x}, computed {got:#010x}): "
            f"the {n} bytes at byte {record.offset + HEADER.size} are damaged{advice()}"
        )
    return data


def iter_records(path: str) -> Iterator[bytes]:
    """Every record's data in order, streaming, both CRCs checked.

    Raises:
        ConversionError: a CRC fails or the file is truncated; names the record.
    """
    with open(path, "rb", buffering=1 << 20) as fh:
        index = 0
        pos = 0
        while True:
            head = fh.read(HEADER.size)
            if not head:
                return
            if len(head) < HEADER.size:
                raise ConversionError(f"{path}: record {index}: truncated header at byte {pos}")
            length, stored = HEADER.unpack(head)
            if masked_crc32c(head[:8]) != stored:
                raise ConversionError(f"{path}: record {index}: length CRC mismatch at byte {pos}")
            body = fh.read(length + _CRC.size)
            if len(body) < length + _CRC.size:
                raise ConversionError(f"{path}: record {index}: truncated: the file ends inside the record")
            data = body[:length]
            if masked_crc32c(data) != _CRC.unpack_from(body, length)[0]:
                raise ConversionError(
                    f"{path}: record {index}: data CRC mismatch at byte {pos + HEADER.size}"
                )
            yield data
            index += 1
            pos += HEADER.size + length + _CRC.size


# -- writing ------------------------------------------------------------------------------


def frame(data: bytes) -> bytes:
    """One record: ``data`` with its length, and both masked CRCs."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data))))


def write_records(path: str | os.PathLike[Any], records: Iterable[bytes]) -> int:
    """Write ``records`` as one TFRecord shard; return how many were written."""
    n = 0
    with open(path, "wb") as fh:
        for data in records:
            fh.write(frame(data))
            n += 1
    return n
