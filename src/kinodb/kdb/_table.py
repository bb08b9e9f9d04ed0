"""The index block: a columnar episode table plus the section directory.

The index block is one table of contents (JSON, size independent of the episode
count) followed by 64-byte-aligned NumPy columns. Readers map the columns in place;
nothing is parsed per episode at open time.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError
from kinodb.kdb._layout import ALIGN, CLOSED, DTYPES, INDEX_HEAD, INDEX_MAGIC, Commit, align, crc32

ABSENT: Any = object()  # an extra field the episode does not have
EXTRA_ABSENT, EXTRA_NULL, EXTRA_VALUE = 0, 1, 2

# Per-episode columns with a fixed dtype, in the order they are written.
EPISODE_COLUMNS: dict[str, str] = {
    "episode_id": "<u8",
    "num_frames": "<u8",
    "action_dim": "<u4",
    "state_dim": "<u4",
    "fps": "<f8",
    "success": "|i1",  # -1 unknown, 0 false, 1 true
    "total_reward": "<f8",  # NaN where total_reward.valid is 0
    "total_reward.valid": "|u1",
    "payload_offset": "<u8",
    "payload_length": "<u8",
    "payload_crc": "<u4",
    "sec_start": "<u8",
    "sec_count": "<u2",
}
STRING_COLUMNS = ("embodiment", "task")
# The bytes every episode takes in an index at least (its row of each fixed column and its
# string codes): an index of L bytes holds at most L // MIN_EPISODE_BYTES episodes.
MIN_EPISODE_BYTES = sum(np.dtype(d).itemsize for d in EPISODE_COLUMNS.values()) + 4 * len(STRING_COLUMNS)
# One row per section (an array, or a camera's frames) of every episode.
SECTION_COLUMNS: dict[str, str] = {
    "sec.name": "<u2",
    "sec.kind": "|u1",
    "sec.dtype": "|u1",
    "sec.codec": "|u1",
    "sec.ndim": "|u1",  # rank, counting the leading frame dimension
    "sec.dims": "<u4",  # 3 per row: the trailing dims, zero-padded
    "sec.offset": "<u8",  # arrays: the data; cameras: the (T+1) u64 frame-offset table
}


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dictionary-encode strings: ``(codes int32, dict offsets uint64, dict utf-8 bytes)``."""
    lookup: dict[str, int] = {}
    codes = np.fromiter((lookup.setdefault(v, len(lookup)) for v in values), "<i4", len(values))
    encoded = [k.encode() for k in lookup]
    offsets = np.zeros(len(encoded) + 1, "<u8")
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return codes, offsets, np.frombuffer(b"".join(encoded), "|u1")


class StringColumn:
    """A dictionary-encoded string column, decoded lazily.

    ``where`` names the index block in errors (``"PATH: index at byte offset N"``); the
    byte offsets of damaged entries follow when ``cols`` knows where its columns lie.
    """

    def __init__(
        self, cols: Mapping[str, np.ndarray], prefix: str, name: str, where: str = "", what: str = "column"
    ):
        self._cols, self._prefix, self._name = cols, prefix, name
        self._where = f"{where}: " if where else ""
        self._what = what  # "column", or "extra field" for a field's strings
        self._dict: list[str] | None = None

    @classmethod
    def from_values(cls, values: Sequence[str], name: str) -> StringColumn:
        """A column built in memory from Python strings."""
        codes, offsets, blob = encode_strings(values)
        return cls({"codes": codes, "dict_offsets": offsets, "dict_bytes": blob}, "", name)

    @property
    def codes(self) -> np.ndarray:
        """The int32 dictionary code of every row."""
        return self._cols[self._prefix + "codes"]

    def _at(self, part: str, skip: int = 0) -> str:
        """``" (NAME at byte offset N)"`` for column part ``part`` plus ``skip`` bytes, or ""."""
        return _column_at(self._cols, self._prefix + part, skip)

    @property
    def dictionary(self) -> list[str]:
        """All distinct values, in code order."""
        if self._dict is None:
            offs = self._cols[self._prefix + "dict_offsets"].tolist()
            raw = self._cols[self._prefix + "dict_bytes"].tobytes()
            if offs and (offs[-1] > len(raw) or any(a > b for a, b in itertools.pairwise(offs))):
                raise CorruptFileError(
                    f"{self._where}string dictionary of {self._what} {self._name!r} is damaged: its entry "
                    f"offsets{self._at('dict_offsets')} decrease or pass the end of its {len(raw)} bytes; "
                    "the index is damaged"
                )
            try:
                self._dict = [raw[a:b].decode() for a, b in itertools.pairwise(offs)]
            except UnicodeDecodeError as exc:
                bad = next(a for a, b in itertools.pairwise(offs) if not _utf8(raw[a:b])) + exc.start
                raise CorruptFileError(
                    f"{self._where}{self._what} {self._name!r} holds invalid UTF-8{self._at('dict_bytes', bad)}; "
                    "the index is damaged"
                ) from exc
        return self._dict

    def __getitem__(self, i: int) -> str:
        code = int(self.codes[i])
        d = self.dictionary
        if not 0 <= code < len(d):
            raise CorruptFileError(
                f"{self._where}{self._what} {self._name!r}, episode {i}: bad string code {code}{self._at('codes', 4 * i)} "
                f"(its dictionary has {len(d)} entries); the index is damaged"
            )
        return d[code]

    def to_numpy(self) -> np.ndarray:
        """The column as an object array of str."""
        d = np.array([*self.dictionary, ""], dtype=object)
        codes = self.codes.astype(np.int64)
        if len(codes) and (codes.min() < 0 or codes.max() >= len(d) - 1):
            i = int(np.flatnonzero((codes < 0) | (codes >= len(d) - 1))[0])
            raise CorruptFileError(
                f"{self._where}{self._what} {self._name!r} holds out-of-range string codes (first: episode {i}, "
                f"code {int(codes[i])}{self._at('codes', 4 * i)}; the dictionary has {len(d) - 1} entries); "
                "the index is damaged"
            )
        return d[codes]


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _column_at(cols: Mapping[str, np.ndarray], name: str, skip: int = 0) -> str:
    """``" (NAME at byte offset N)"`` where column ``name`` (plus ``skip`` bytes) lies in
    the file, or "" for columns built in memory."""
    locate = getattr(cols, "byte_offset", None)
    at = None if locate is None else locate(name)
    if at is None:
        return ""
    stored = getattr(cols, "full_name", str)(name)  # a field's columns are named with its prefix
    return f" ({stored} at byte offset {at + skip})"


def _extra_kind(values: Iterable[Any]) -> str:
    kinds = set()
    for v in values:
        if v is ABSENT or v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2**63) <= v < 2**63 else "json")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("json")
    return kinds.pop() if len(kinds) == 1 else ("json" if kinds else "null")


def encode_extra(values: Sequence[Any], kind: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Encode one extra field over all episodes; returns ``(kind, columns)``.

    ``kind`` overrides the kind the values give (``"json"`` stores any values; ``"null"``
    only their state); unset, it is theirs.
    """
    state = np.array(
        [EXTRA_ABSENT if v is ABSENT else EXTRA_NULL if v is None else EXTRA_VALUE for v in values],
        "|u1",
    )
    kind = _extra_kind(values) if kind is None else kind
    present = [v if state[i] == EXTRA_VALUE else None for i, v in enumerate(values)]
    cols: dict[str, np.ndarray] = {"state": state}
    if kind == "bool":
        cols["values"] = np.array([bool(v) for v in present], "|u1")
    elif kind == "int":
        cols["values"] = np.array([v or 0 for v in present], "<i8")
    elif kind == "float":
        cols["values"] = np.array([math.nan if v is None else v for v in present], "<f8")
    elif kind == "str":
        cols["codes"], cols["dict_offsets"], cols["dict_bytes"] = encode_strings([v or "" for v in present])
    elif kind == "json":
        texts = [b"" if v is None else json.dumps(v).encode() for v in present]
        offsets = np.zeros(len(texts) + 1, "<u8")
        np.cumsum([len(t) for t in texts], out=offsets[1:])
        cols["offsets"], cols["bytes"] = offsets, np.frombuffer(b"".join(texts), "|u1")
    return kind, cols


class ExtraColumn:
    """One per-episode extra field, decoded lazily from its columns."""

    def __init__(self, name: str, kind: str, cols: Mapping[str, np.ndarray], where: str = ""):
        self.name, self.kind = name, kind
        self._cols = cols
        self._where = f"{where}: " if where else ""
        self._strings = StringColumn(cols, "", name, where, "extra field") if kind == "str" else None

    @property
    def state(self) -> np.ndarray:
        """Per episode: `EXTRA_ABSENT`, `EXTRA_NULL` or `EXTRA_VALUE`."""
        return self._cols["state"]

    def get(self, i: int) -> Any:
        """The value for episode ``i``, `ABSENT` if it has none."""
        st = int(self.state[i])
        if st == EXTRA_ABSENT:
            return ABSENT
        if st != EXTRA_VALUE:
            return None
        if self._strings is not None:
            return self._strings[i]
        if self.kind == "json":
            a, b = int(self._cols["offsets"][i]), int(self._cols["offsets"][i + 1])
            blob = self._cols["bytes"]
            try:
                if not a <= b <= len(blob):
                    raise ValueError(f"its text would be bytes {a}..{b} of {len(blob)}")
                return json.loads(blob[a:b].tobytes())
            except ValueError as exc:
                raise CorruptFileError(
                    f"{self._where}extra field {self.name!r}, episode {i}: bad JSON{_column_at(self._cols, 'bytes', a)} "
                    f"({_short(exc)}); the index is damaged"
                ) from exc
        value = self._cols["values"][i]
        return bool(value) if self.kind == "bool" else value.item()

    def to_numpy(self) -> np.ndarray:
        """All values as a NumPy array (object dtype where the kind needs it; None = null)."""
        has = self.state == EXTRA_VALUE
        if self.kind in ("int", "float", "bool"):
            values = self._cols["values"]
            values = values.astype(bool) if self.kind == "bool" else values
            if bool(has.all()):
                return values
            out = values.astype(object)
        elif self._strings is not None:
            out = self._strings.to_numpy()
        else:
            out = np.empty(len(has), dtype=object)
            at = np.flatnonzero(has)
            decoded = self._json_values(at)
            if decoded is None:  # damaged somewhere: one by one, for the error that names where
                decoded = [self.get(i) for i in at.tolist()]
            for i, value in zip(at.tolist(), decoded, strict=True):
                out[i] = value
        out[~has] = None
        return out

    def _json_values(self, at: np.ndarray) -> list[Any] | None:
        """The JSON values of episodes ``at`` (ascending), decoded in one `json.loads` of
        their texts joined into an array; None if the texts do not give one value each."""
        if not len(at):
            return []
        offsets, blob = self._cols["offsets"], self._cols["bytes"]
        starts, ends = offsets[at].astype(np.int64), offsets[at + 1].astype(np.int64)
        # Absent and null entries store no text, so the present ones lie back to back.
        if not (
            (ends > starts).all()
            and (starts[1:] == ends[:-1]).all()
            and starts[0] >= 0
            and ends[-1] <= len(blob)
        ):
            return None
        joined = np.insert(np.asarray(blob[starts[0] : ends[-1]]), starts[1:] - starts[0], ord(","))
        try:
            values = json.loads(b"[" + joined.tobytes() + b"]")
        except ValueError:
            return None
        return values if len(values) == len(at) else None


@dataclass
class IndexBlock:
    """A decoded index block: dataset JSON and mapped columns."""

    dataset: dict[str, Any]
    columns: Mapping[str, np.ndarray]
    section_names: list[str]
    extra_kinds: dict[str, str]
    strings: dict[str, StringColumn] = field(default_factory=dict)
    extras: dict[str, ExtraColumn] = field(default_factory=dict)
    # The TOC's ``uniform`` entry when it is well formed and the TOC checksum in the
    # index head matches (see `uniform_entry`), else None.
    uniform: dict[str, Any] | None = None


# A column to encode: one array, or parts joined along the first axis (an append's stored
# rows and its new ones, written side by side without joining them first).
Column = np.ndarray | tuple[np.ndarray, ...]


def encode_index(
    dataset: dict[str, Any],
    columns: Mapping[str, Column],
    section_names: list[str],
    extra_kinds: list[list[str]],
    uniform: dict[str, Any] | None = None,
) -> bytearray:
    """Serialise the index block (TOC JSON plus aligned columns).

    ``uniform`` is the TOC's optional ``uniform`` entry (`uniform_layout`): written only
    for files whose episodes are all laid out alike at a constant stride.
    """
    parts = {name: col if isinstance(col, tuple) else (col,) for name, col in columns.items()}
    layout: dict[str, list[Any]] = {}
    pos = 0
    for name, arrs in parts.items():
        first = arrs[0]
        shape = [sum(len(a) for a in arrs), *first.shape[1:]] if first.ndim else []
        layout[name] = [first.dtype.str, pos, shape]
        pos = align(pos + sum(a.nbytes for a in arrs))
    contents: dict[str, Any] = {"dataset": dataset, "columns": layout, "section_names": section_names,
                                "extras": extra_kinds}  # fmt: skip
    if uniform is not None:
        contents["uniform"] = uniform
    toc = json.dumps(contents, separators=(",", ":")).encode()
    body_start = align(INDEX_HEAD.size + len(toc))
    out = bytearray(body_start + pos)
    INDEX_HEAD.pack_into(out, 0, INDEX_MAGIC, len(toc), crc32(toc), 0)
    out[INDEX_HEAD.size : INDEX_HEAD.size + len(toc)] = toc
    view = np.frombuffer(out, np.uint8)  # columns are copied in place: no bytes object per column
    for name, arrs in parts.items():
        start = body_start + layout[name][1]
        for a in arrs:
            raw = np.ascontiguousarray(a.astype(arrs[0].dtype, copy=False)).reshape(-1).view(np.uint8)
            view[start : start + len(raw)] = raw
            start += len(raw)
    del view  # releases the export: the caller may resize the buffer
    return out


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."


class Columns(Mapping[str, np.ndarray]):
    """Index columns, checked and mapped on first access (open cost stays constant)."""

    def __init__(self, buf: Any, layout: dict[str, Any], body: int, end: int, where: str):
        self._buf, self._layout, self._body, self._end, self._where = buf, layout, body, end, where
        self._cache: dict[str, np.ndarray] = {}
        self._expected: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}  # extra fields' columns: the dtype their kind implies
        self._variable: set[str] = set()  # variable-length columns: rank 1 (dictionary offsets: 1 or more)
        self.sizes: tuple[int, int] | None = None  # (episodes, section rows) for the fixed columns

    def expect(self, shapes: dict[str, tuple[int, ...]], dtypes: Mapping[str, str] | None = None) -> None:
        """Require these exact shapes (and dtypes) of columns when they are mapped."""
        self._expected.update(shapes)
        self._dtypes.update(dtypes or {})

    def expect_variable(self, names: Iterable[str]) -> None:
        """Require these variable-length columns (a dictionary's or a JSON field's) to have
        rank 1, and a dictionary's offsets at least one entry, when they are mapped."""
        self._variable.update(names)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a column, from the table of contents (no mapping)."""
        try:
            shape = tuple(int(d) for d in self._layout[name][2])
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise CorruptFileError(f"{self._where}: column {name!r} has a damaged shape") from exc
        if min(shape, default=0) < 0:
            raise CorruptFileError(f"{self._where}: column {name!r} has a negative shape")
        return shape

    def byte_offset(self, name: str) -> int | None:
        """The file offset where column ``name`` starts, from the table of contents, or None."""
        try:
            return self._body + int(self._layout[name][1])
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def full_name(self, name: str) -> str:
        """The stored name of column ``name`` (itself: `_Prefixed` adds a field's prefix)."""
        return name

    def extent(self) -> int:
        """The first byte after the last column, every column checked to lie in the block.

        Raises:
            CorruptFileError: a column's layout is damaged or lies outside the block.
        """
        end = self._body
        for name in self._layout:
            dt, start, count, _ = self._locate(name)
            end = max(end, start + count * dt.itemsize)
        return end

    def release(self) -> None:
        """Drop every mapped column; later access raises ValueError (the file is closed)."""
        self._buf = None
        self._cache.clear()

    def _locate(self, name: str) -> tuple[np.dtype[Any], int, int, tuple[int, ...]]:
        """``(dtype, byte offset, element count, shape)`` of a column, checked against the index."""
        if self._buf is None:
            raise ValueError(f"{self._where}: {CLOSED}")
        shape = self.shape(name)
        expected = self._expected.get(name)
        if expected is None and self.sizes is not None:
            per = _FIXED_SHAPES.get(name)
            expected = None if per is None else (self.sizes[per[0]], *per[1:])
        if expected is not None and expected != shape:
            raise CorruptFileError(f"{self._where}: column {name!r} has shape {shape}, expected {expected}")
        if name in self._variable and (len(shape) != 1 or (name.endswith("dict_offsets") and shape[0] < 1)):
            want = "(K + 1,) for a dictionary of K entries" if name.endswith("dict_offsets") else "(N,)"
            raise CorruptFileError(
                f"{self._where}: column {name!r} has shape {shape}, expected {want}; the index is damaged"
            )
        entry = self._layout[name]
        try:
            stored, rel = entry[0], int(entry[1])
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:  # JSON allows Infinity
            raise CorruptFileError(f"{self._where}: column {name!r} has a damaged layout") from exc
        dt = self._dtype(name, stored)
        start, count = self._body + rel, math.prod(shape)
        if rel % ALIGN:
            raise CorruptFileError(
                f"{self._where}: column {name!r} starts at byte {rel} of the index body, not a multiple of "
                f"{ALIGN} as every column does; the index is damaged"
            )
        if start < self._body or start + count * dt.itemsize > self._end:
            raise CorruptFileError(f"{self._where}: column {name!r} lies outside the index")
        return dt, start, count, shape

    def _dtype(self, name: str, stored: Any) -> np.dtype[Any]:
        """The dtype of column ``name``, stored as ``stored``: exactly the one the format
        gives the column (a kinodb column), or a plain one (a column kinodb does not know).

        Raises:
            CorruptFileError: the stored dtype is not the column's (names both).
        """
        want = _FIXED_DTYPES.get(name) or self._dtypes.get(name)
        if want is not None:
            if stored != want:
                text = repr(stored)
                raise CorruptFileError(
                    f"{self._where}: column {name!r} has dtype {text if len(text) <= 40 else text[:37] + '...'}, "
                    f"but the format stores it as {want!r}; the index is damaged"
                )
            return _COLUMN_DTYPES[want]
        try:
            dt = _COLUMN_DTYPES.get(stored) or np.dtype(stored)
        except (TypeError, ValueError, SyntaxError) as exc:  # np.dtype parses some strings as code
            raise CorruptFileError(f"{self._where}: column {name!r} has a damaged dtype") from exc
        if dt.hasobject or dt.shape:  # no column holds Python objects or sub-arrays
            raise CorruptFileError(
                f"{self._where}: column {name!r} has dtype {dt.str!r}; the index is damaged"
            )
        return dt

    def ints(self, name: str) -> Any:
        """A flat integer column whose items are Python ints: a memoryview of the map where
        the host is little-endian (no copy, and no NumPy array unless one is mapped already)."""
        little = sys.byteorder == "little"
        arr = self._cache.get(name)
        if arr is None:
            dt, start, count, _ = self._locate(name)
            fmt = _INT_FORMATS.get(dt.str) if little else None
            if fmt is not None:
                return memoryview(self._buf)[start : start + count * dt.itemsize].cast(fmt)  # type: ignore[call-overload]
            arr = self[name]
        fmt = _INT_FORMATS.get(arr.dtype.str) if little else None
        if fmt is not None:
            return arr.reshape(-1).data.cast("B").cast(fmt)  # type: ignore[call-overload]
        if arr.dtype.kind not in "iu":
            raise CorruptFileError(f"{self._where}: column {name!r} is {arr.dtype}, not integers")
        return arr.reshape(-1).tolist()

    def __getitem__(self, name: str) -> np.ndarray:
        arr = self._cache.get(name)
        if arr is None:
            dt, start, count, shape = self._locate(name)
            arr = np.frombuffer(self._buf, dt, count, start)  # type: ignore[arg-type]
            if len(shape) != 1:
                arr = arr.reshape(shape)
            self._cache[name] = arr
        return arr

    def __contains__(self, name: object) -> bool:
        return name in self._layout

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)


# The dtypes of the columns kinodb writes, parsed once; and the integer ones as memoryview formats.
_COLUMN_DTYPES = {s: np.dtype(s) for s in ("<u8", "<u4", "<u2", "|u1", "<i8", "<i4", "<i2", "|i1", "<f8")}
_INT_FORMATS = {"<u8": "Q", "<u4": "I", "<u2": "H", "|u1": "B", "<i8": "q", "<i4": "i", "<i2": "h", "|i1": "b"}  # fmt: skip


class _Prefixed(Mapping[str, np.ndarray]):
    def __init__(self, cols: Columns, prefix: str):
        self._cols, self._prefix = cols, prefix

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[self._prefix + name]

    def byte_offset(self, name: str) -> int | None:
        """The file offset where column ``name`` (without the prefix) starts, or None."""
        return self._cols.byte_offset(self._prefix + name)

    def full_name(self, name: str) -> str:
        """The stored name of column ``name``."""
        return self._prefix + name

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return (k[n:] for k in self._cols if k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_index_head(buf: Any, offset: int, length: int, path: str) -> int:
    """Check the fixed head of the index block at ``offset``; return the TOC length.

    Raises:
        CorruptFileError: the block is too short, or its magic or TOC length is wrong.
    """
    if length < INDEX_HEAD.size:
        raise CorruptFileError(f"{path}: index at byte offset {offset} is {length} bytes, too short")
    magic, toc_len, _, _ = INDEX_HEAD.unpack_from(buf, offset)
    if magic != INDEX_MAGIC or INDEX_HEAD.size + toc_len > length:
        raise CorruptFileError(
            f"{path}: index at byte offset {offset}: bad index magic or table-of-contents length"
        )
    return int(toc_len)


def decode_index(
    buf: Any, offset: int, length: int, path: str, *, toc_bytes: bytes | None = None
) -> IndexBlock:
    """Map the index block at ``offset`` of ``buf`` (an mmap or bytes).

    ``toc_bytes`` is the table of contents when the caller has already read it (after
    `check_index_head`).

    Raises:
        CorruptFileError: the table of contents is damaged or a column lies outside it.
    """
    where = f"{path}: index at byte offset {offset}"
    if toc_bytes is None:
        toc_len = check_index_head(buf, offset, length, path)
        toc_bytes = bytes(buf[offset + INDEX_HEAD.size : offset + INDEX_HEAD.size + toc_len])
    toc_len = len(toc_bytes)
    try:
        toc = json.loads(toc_bytes)
        raw_layout, names, extra_kinds = toc["columns"], toc["section_names"], toc["extras"]
        kinds = {str(name): str(kind) for name, kind in extra_kinds}
        if not isinstance(toc["dataset"], dict) or not all(isinstance(n, str) for n in names):
            raise TypeError("dataset or section names have the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{where}: table of contents is damaged ({exc})") from exc
    if not isinstance(raw_layout, dict):
        raise CorruptFileError(f"{where}: column table is damaged")
    body = offset + align(INDEX_HEAD.size + toc_len)
    columns = Columns(buf, raw_layout, body, offset + length, where)
    block = IndexBlock(toc["dataset"], columns, list(names), kinds)
    n = _check_columns(columns, raw_layout, where)
    block.uniform = uniform_entry(toc.get("uniform"), toc_bytes, INDEX_HEAD.unpack_from(buf, offset)[2], n)
    columns.expect_variable(f"{s}.{p}" for s in STRING_COLUMNS for p in ("dict_offsets", "dict_bytes"))
    for s in STRING_COLUMNS:
        block.strings[s] = StringColumn(columns, f"{s}.", s, where)
    for j, (name, kind) in enumerate(block.extra_kinds.items()):
        prefix = f"extra.{j}."
        if prefix + "state" not in columns or columns.shape(prefix + "state") != (n,):
            raise CorruptFileError(f"{where}: extra field {name!r} has the wrong length")
        parts = _EXTRA_PARTS.get(kind)
        if parts is None or any(prefix + p not in columns for p in parts):
            raise CorruptFileError(f"{where}: extra field {name!r} of kind {kind!r} lacks its columns")
        columns.expect(
            {prefix + p: (n + 1,) if p == "offsets" else (n,) for p in parts if p in _PER_EPISODE},
            {
                prefix + p: _VALUE_DTYPES[kind] if p == "values" else _PART_DTYPES[p]
                for p in ("state", *parts)
            },
        )
        columns.expect_variable(prefix + p for p in parts if p in ("dict_offsets", "dict_bytes", "bytes"))
        block.extras[name] = ExtraColumn(name, kind, _Prefixed(columns, prefix), where)
    return block


# The value columns of each extra-field kind, and those with one row per episode (+1 for offsets).
_EXTRA_PARTS = {"bool": ("values",), "int": ("values",), "float": ("values",), "null": (),
                "str": ("codes", "dict_offsets", "dict_bytes"), "json": ("offsets", "bytes")}  # fmt: skip
_PER_EPISODE = ("values", "codes", "offsets")
# The dtype of each part of an extra field's columns (``values`` by the field's kind).
_PART_DTYPES = {"state": "|u1", "codes": "<i4", "dict_offsets": "<u8", "dict_bytes": "|u1",
                "offsets": "<u8", "bytes": "|u1"}  # fmt: skip
_VALUE_DTYPES = {"bool": "|u1", "int": "<i8", "float": "<f8"}

# The dtype of every column the format always holds: exactly this, or the index is damaged.
_FIXED_DTYPES: dict[str, str] = (
    EPISODE_COLUMNS | SECTION_COLUMNS
    | {f"{s}.{p}": _PART_DTYPES[p] for s in STRING_COLUMNS for p in ("codes", "dict_offsets", "dict_bytes")}
)  # fmt: skip

# The fixed columns' shapes: (0, per episode) or (1, per section row), then trailing dims.
_FIXED_SHAPES: dict[str, tuple[int, ...]] = (
    {c: (0,) for c in EPISODE_COLUMNS} | {f"{s}.codes": (0,) for s in STRING_COLUMNS}
    | {c: (1,) for c in SECTION_COLUMNS} | {"sec.dims": (1, 3)}
)  # fmt: skip

_REQUIRED = frozenset(
    [*EPISODE_COLUMNS, *SECTION_COLUMNS]
    + [f"{s}.{p}" for s in STRING_COLUMNS for p in ("codes", "dict_offsets", "dict_bytes")]
)


def _check_columns(cols: Columns, layout: dict[str, Any], where: str) -> int:
    missing = _REQUIRED.difference(layout)
    if missing:
        raise CorruptFileError(f"{where}: index lacks columns {sorted(missing)}")
    n, r = cols.shape("episode_id"), cols.shape("sec.name")
    if len(n) != 1 or len(r) != 1:
        raise CorruptFileError(f"{where}: a column has the wrong rank")
    cols.sizes = (n[0], r[0])  # every other column is checked against these when first mapped
    return n[0]


def uniform_entry(entry: Any, toc_bytes: bytes, toc_crc: int, n: int) -> dict[str, Any] | None:
    """The TOC's ``uniform`` entry if it is well formed for ``n`` episodes and the TOC
    checksum ``toc_crc`` (from the index head) matches ``toc_bytes``, else None: the
    reader then finds arrays from the index rows, as for a file written without it."""
    if not isinstance(entry, dict) or crc32(toc_bytes) != toc_crc:
        return None
    offsets = entry.get("offsets")
    ints = [entry.get(k) for k in ("episodes", "frames", "step")]
    if not isinstance(offsets, list) or not offsets or ints[0] != n:
        return None
    if not all(type(v) is int and v > 0 for v in ints) or not all(type(v) is int and v >= 0 for v in offsets):
        return None
    return entry


def check_index_crc(block: Any, stored: int, offset: int, path: str) -> None:
    """Check the bytes of the index block at ``offset`` against the CRC-32 its commit
    record stores.

    Raises:
        CorruptFileError: the checksum does not match: names the file, the block, both
            checksums and what to do.
    """
    got = crc32(block)
    if got != stored:
        raise CorruptFileError(
            f"{path}: index checksum mismatch at byte offset {offset} ({len(block)} bytes): stored "
            f"{stored:08x}, computed {got:08x}; the index (the episodes' metadata and where their arrays "
            f"lie) is damaged. See what else is with: kino validate {path}; then restore the file from a "
            "copy (appends, kino stats, merge and upgrade refuse it: they would store the damage again "
            "under a valid checksum)"
        )


def check_frames(frames: np.ndarray, size: int, num_frames: int, path: str) -> None:
    """Every episode's frame count ``frames`` fits a file of ``size`` bytes (each frame
    stores a byte at least), and they sum to the commit record's ``num_frames``: what a
    faulty writer could get wrong.

    Raises:
        CorruptFileError: a count does not fit, or the sum differs (names ``path``).
    """
    top = int(frames.max()) if len(frames) else 0
    if top > size:
        i = int(np.argmax(frames))
        raise CorruptFileError(
            f"{path}: episode {i}: num_frames is {top}, more than the file's {size} bytes can "
            f"hold; the index is damaged: run kino validate {path}"
        )
    total = int(frames.sum(dtype=np.uint64)) if top * len(frames) < 1 << 64 else sum(frames.tolist())
    if total != num_frames:
        raise CorruptFileError(
            f"{path}: the commit record says {num_frames} frames, the index's episodes "
            f"sum to {total}; the file is damaged: run kino validate {path}"
        )


def check_counts(commit: Commit, size: int, path: str) -> None:
    """Refuse a commit record that counts more episodes than its index block can hold, or
    more frames than the file (every frame stores a byte at least: ``is_terminal``).

    Raises:
        CorruptFileError: a count is impossible (as a faulty writer could record it).
    """
    most = commit.index_length // MIN_EPISODE_BYTES
    if commit.num_episodes > most:
        raise CorruptFileError(
            f"{path}: the commit record says {commit.num_episodes} episodes, but its index at byte offset "
            f"{commit.index_offset} ({commit.index_length} bytes) holds at most {most} (each takes "
            f"{MIN_EPISODE_BYTES} bytes of it or more); the file is damaged: run kino validate {path}"
        )
    if commit.num_frames > size:
        raise CorruptFileError(
            f"{path}: the commit record says {commit.num_frames} frames, more than the file's {size} bytes "
            f"can hold; the file is damaged: run kino validate {path}"
        )


_BUILTIN_ARRAYS = ("actions", "states", "rewards", "is_terminal", "timestamps")


def schema_layout(dataset: Mapping[str, Any], name: str) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
    """The dtype and per-frame shape the dataset schema gives array ``name`` in every
    episode, or None when it records none (they vary, or nothing is stored)."""
    schema = dataset.get("schema")
    schema = schema if isinstance(schema, dict) else {}
    arrays = schema.get("arrays")
    entry = (
        schema.get(name)
        if name in _BUILTIN_ARRAYS
        else arrays.get(name)
        if isinstance(arrays, dict)
        else None
    )
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):  # None: it varies
        return None
    try:
        dtype = np.dtype(entry["dtype"])
        dims = [entry["dim"]] if name in ("actions", "states") else entry["shape"]
        trail = tuple(int(d) for d in dims)
    except (KeyError, TypeError, ValueError):
        return None
    return (dtype, trail) if dtype.str in DTYPES else None


def check_append_dataset(dataset: Mapping[str, Any], where: str, path: str) -> None:
    """Check the dataset JSON of a file an append extends for what the writer updates:
    ``metadata``, and ``schema`` with its ``cameras``, ``arrays``, ``actions`` and ``states``.

    Raises:
        CorruptFileError: a part is missing or of the wrong kind (``where`` names the index).
    """
    schema, bad = dataset.get("schema"), []
    if not isinstance(dataset.get("metadata"), dict):
        bad.append("'metadata' (an object)")
    if not isinstance(schema, dict):
        bad.append("'schema' (an object)")
    else:
        for key in ("cameras", "arrays"):
            value = schema.get(key)
            if not (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())):
                bad.append(f"'schema.{key}' (an object of objects)")
        for part in ("actions", "states"):
            entry = schema.get(part, {})
            comps = entry.get("components", {}) if isinstance(entry, dict) else None
            pairs = isinstance(comps, dict) and all(
                isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v) for v in comps.values()
            )
            if not (pairs and isinstance(entry.get("names", []), list)):
                bad.append(f"'schema.{part}' (an object: dim, dtype, components of [start, stop], names)")
    if bad:
        raise CorruptFileError(
            f"{where}: the dataset JSON lacks {', '.join(bad)}, which an append updates; the index is "
            f"damaged or was written by another program: run kino validate {path}; nothing was appended"
        )
