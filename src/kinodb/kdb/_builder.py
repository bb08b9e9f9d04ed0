"""The writer's episode table: the rows an append loads stay encoded, the rows added are
kept in typed buffers, and `TableBuilder.encode` joins both into a new index block.

An append rewrites the whole index (docs/format.md), so its cost should be the index's
bytes, not a Python object per stored episode: fixed columns are kept as NumPy arrays,
string columns as codes plus dictionary (gaining the added values' entries), and extra
fields as their encoded columns, converted only when added values change a field's kind
(an int field given a float becomes JSON). The block is byte for byte the one that
encoding every value again would give.

The dataset JSON's writable parts are checked here too: `Metadata`, the mapping
`Writer.metadata` gives, and `declared_schema`, the components and names a schema declares;
`utc_now` is the time it records (``SOURCE_DATE_EPOCH`` when set).
"""

from __future__ import annotations

import array
import datetime as _dt
import itertools
import json
import math
import operator
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError, WriterError
from kinodb.kdb._checks import check_text, json_mapping
from kinodb.kdb._frames import RESERVED_ARRAYS
from kinodb.kdb._sections import uniform_layout
from kinodb.kdb._table import (
    _EXTRA_PARTS,
    ABSENT,
    EPISODE_COLUMNS,
    EXTRA_VALUE,
    SECTION_COLUMNS,
    STRING_COLUMNS,
    Column,
    IndexBlock,
    _extra_kind,
    encode_extra,
    encode_index,
)

# Distinct added strings looked up one by one in a loaded dictionary (a few NumPy passes
# each); past this many, the dictionary is read into a Python dict once instead.
_SEARCHES = 32


def _typecodes() -> dict[tuple[str, int], str]:
    """The `array.array` typecode of each NumPy ``(kind, itemsize)`` an index column uses."""
    found: dict[tuple[str, int], str] = {}
    for kind, codes in (("i", "bhilq"), ("u", "BHILQ"), ("f", "fd")):
        for code in codes:
            found.setdefault((kind, array.array(code).itemsize), code)
    return found


_TYPECODES = _typecodes()


class Rows:
    """One column's rows: those loaded from a file (NumPy, as stored) and those added since.

    Added rows are kept in a typed buffer (`array.array`, a row's values one after another),
    not as a Python object per value: a writer of a million episodes holds their rows in
    the bytes the index will take, not in a gigabyte of Python numbers.
    """

    __slots__ = ("_width", "added", "append", "base")

    def __init__(self, base: np.ndarray) -> None:
        self.base = base
        self._width = math.prod(base.shape[1:])  # values per row
        code = _TYPECODES.get((base.dtype.kind, base.dtype.itemsize))
        if code is None or self._width < 1:
            raise ValueError(
                f"index columns hold numbers, one or more per row, not {base.dtype} {base.shape}"
            )
        self.added: array.array[Any] = array.array(code)
        # Add one row: a number, or a sequence of a row's values where it holds several.
        # The buffer's own append where a row is one value (called per row: no extra call).
        # Raises OverflowError (or TypeError) for a value the column's type cannot hold,
        # adding nothing.
        self.append: Callable[[Any], None] = self.added.append if self._width == 1 else self._append_values

    def __len__(self) -> int:
        return len(self.base) + len(self.added) // self._width

    def __iter__(self) -> Iterator[Any]:
        yield from self.base.tolist()
        if self._width == 1:
            yield from self.added
        else:
            values, w = self.added.tolist(), self._width
            for i in range(0, len(values), w):
                yield values[i : i + w]

    def _append_values(self, value: Sequence[Any]) -> None:
        if len(value) != self._width:
            raise ValueError(f"a row of this column holds {self._width} values, got {len(value)}")
        self.added.fromlist(value if isinstance(value, list) else list(value))  # all or nothing

    def extend(self, values: list[Any]) -> None:
        """Add rows: their values one after another (a row's several values in turn); all
        or none (OverflowError or TypeError for a value the column's type cannot hold)."""
        if len(values) % self._width:
            raise ValueError(f"a row of this column holds {self._width} values, got {len(values)} in all")
        self.added.fromlist(values)

    def __delitem__(self, key: slice) -> None:
        """Remove the rows from ``key.start`` to the end (a failed episode's rows).

        Raises:
            ValueError: ``key`` is not ``start:`` or would remove a loaded row.
        """
        start = key.start if isinstance(key, slice) and key.stop is None and key.step is None else -1
        if not isinstance(start, int) or start < len(self.base):
            raise ValueError(f"only added rows can be removed, to the end ({len(self.base)}:), not {key!r}")
        del self.added[(start - len(self.base)) * self._width :]

    def parts(self, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """The loaded rows and the added ones, as arrays of ``dtype``."""
        # The buffer holds native values of the loaded rows' kind and size; astype copies,
        # so the buffer is not left exported (which would stop it growing).
        native = np.frombuffer(self.added, self.base.dtype.newbyteorder("="))
        return self.base, native.astype(dtype).reshape(-1, *self.base.shape[1:])


class AddedStrings:
    """A string column's added rows: each distinct value once, in first-use order, and
    one code per row (`join_strings` turns them into the file's dictionary codes)."""

    __slots__ = ("_lookup", "codes", "values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.codes: array.array[int] = array.array(_TYPECODES["i", 4])
        self.values: list[str] = []
        self._lookup: dict[str, int] = {}
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return len(self.codes)

    def __iter__(self) -> Iterator[str]:
        values = self.values
        return (values[c] for c in self.codes)

    def append(self, value: str) -> None:
        """Add one row."""
        code = self._lookup.get(value)
        if code is None:
            code = self._lookup[value] = len(self.values)
            self.values.append(value)
        self.codes.append(code)


@dataclass
class _Strings:
    """A loaded string column in first-use order: every entry used, in the order of the
    rows that first use it, as `encode_strings` writes."""

    codes: np.ndarray  # int32, one per loaded row
    offsets: np.ndarray  # uint64, entries + 1, from 0
    blob: np.ndarray  # uint8, exactly the entries' bytes

    @classmethod
    def empty(cls, rows: int = 0) -> _Strings:
        """``rows`` rows of ``""`` (no dictionary without rows)."""
        return cls(np.zeros(rows, "<i4"), np.zeros(2 if rows else 1, "<u8"), np.zeros(0, "|u1"))


class _Dictionary:
    """A loaded string dictionary, looked up by value, and the entries added to it."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray):
        self._offsets, self._blob = offsets, blob
        self._starts = offsets[:-1].astype(np.int64)
        self._lengths = np.diff(offsets)
        self._codes: dict[bytes, int] = {}  # values looked up (or every loaded entry, once read)
        self._read = len(self._lengths) == 0  # every loaded entry is in `_codes`
        self._searches = 0
        self.added: list[bytes] = []

    def code(self, value: str) -> int:
        """The code of ``value``, added as a new entry when the dictionary lacks it."""
        raw = value.encode()
        code = self._codes.get(raw)
        if code is None:
            code = None if self._read else self._search(raw)
            if code is None:
                code = len(self._lengths) + len(self.added)
                self.added.append(raw)
            self._codes[raw] = code
        return code

    def _search(self, raw: bytes) -> int | None:
        self._searches += 1
        if self._searches > _SEARCHES:
            whole = self._blob.tobytes()
            bounds = self._offsets.tolist()
            for code in range(len(bounds) - 1):
                self._codes.setdefault(whole[bounds[code] : bounds[code + 1]], code)
            self._read = True
            return self._codes.get(raw)
        found = np.flatnonzero(self._lengths == len(raw))
        for j, byte in enumerate(raw):  # narrowed byte by byte: a few passes over few entries
            if not len(found):
                break
            found = found[self._blob[self._starts[found] + j] == byte]
        return int(found[0]) if len(found) else None

    def columns(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``(dict_offsets, dict_bytes)``, each as the loaded part and the added one."""
        more = np.cumsum(np.array([len(b) for b in self.added], "<u8")) + self._offsets[-1]
        return (self._offsets, more), (self._blob, np.frombuffer(b"".join(self.added), "|u1"))


def join_strings(loaded: _Strings, added: Sequence[str] | AddedStrings) -> dict[str, Column]:
    """``codes``, ``dict_offsets`` and ``dict_bytes`` of the loaded rows then ``added``,
    as `encode_strings` would write all of them."""
    if not isinstance(added, AddedStrings):
        added = AddedStrings(added)
    dictionary = _Dictionary(loaded.offsets, loaded.blob)
    # Looked up in first-use order, the distinct values gain their entries in the order
    # that looking up every row would give them.
    mapped = np.fromiter((dictionary.code(v) for v in added.values), "<i4", len(added.values))
    codes = mapped[np.frombuffer(added.codes, "=i4")]
    offsets, blob = dictionary.columns()
    return {"codes": (loaded.codes, codes), "dict_offsets": offsets, "dict_bytes": blob}


def _gather(starts: np.ndarray, lengths: np.ndarray, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, bytes)`` of the byte runs ``blob[start : start + length]``, in order."""
    lengths = lengths.astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, "<u8")
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    src = np.repeat(starts.astype(np.int64) - offsets[:-1].astype(np.int64), lengths) + np.arange(total)
    return offsets, blob[src]


def first_use(codes: np.ndarray, offsets: np.ndarray, blob: np.ndarray) -> _Strings:
    """The loaded column in first-use order (already so in every file kinodb writes)."""
    k = len(offsets) - 1
    if not len(codes):
        return _Strings.empty()
    top = np.maximum.accumulate(codes)
    if (
        int(codes[0]) == 0
        and int(top[-1]) == k - 1
        and int(offsets[0]) == 0
        and int(offsets[-1]) == len(blob)
        and (len(codes) < 2 or int(np.diff(top).max()) <= 1)
    ):
        return _Strings(codes, offsets, blob)
    used, first = np.unique(codes, return_index=True)
    order = used[np.argsort(first, kind="stable")]
    rank = np.zeros(k, "<i4")
    rank[order] = np.arange(len(order), dtype="<i4")
    new_offsets, new_blob = _gather(offsets[:-1][order], np.diff(offsets)[order], blob)
    return _Strings(rank[codes], new_offsets, new_blob)


def _check_runs(offsets: np.ndarray, blob: np.ndarray, what: str, where: str, column: str) -> None:
    """Offsets (the stored column ``column``) must not decrease nor pass the end of ``blob``:
    then every one fits an int64 too.

    Raises:
        CorruptFileError: they do (``what`` and ``where`` say which column of which index).
    """
    # Compared as stored (unsigned): cast to int64 first, an offset past 2**63 would turn
    # negative and pass.
    if not len(offsets) or int(offsets[-1]) > len(blob) or bool((offsets[1:] < offsets[:-1]).any()):
        raise CorruptFileError(
            f"{where}{what} is damaged: its offsets decrease or pass the end of its {len(blob)} bytes "
            f"(column {column}); the index is damaged"
        )


def _load_strings(
    codes: np.ndarray, offsets: np.ndarray, blob: np.ndarray, what: str, where: str, column: str
) -> _Strings:
    """Check a loaded string column (codes in range, UTF-8 entries) and put it in first-use order.

    ``column`` is the stored name of its dictionary offsets.

    Raises:
        CorruptFileError: an offset, a code or an entry's UTF-8 is damaged.
    """
    _check_runs(offsets, blob, f"the string dictionary of {what}", where, column)
    k = len(offsets) - 1
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= k):
        i = int(np.flatnonzero((codes < 0) | (codes >= k))[0])
        raise CorruptFileError(
            f"{where}{what} holds out-of-range string codes (first: episode {i}, code {int(codes[i])}; "
            f"the dictionary has {k} entries); the index is damaged"
        )
    inner = offsets[offsets < len(blob)].astype(np.int64)
    try:  # the whole text, and no entry starting inside a character: every entry is UTF-8
        blob.tobytes().decode()
        if bool(((blob[inner] & 0xC0) == 0x80).any()):
            raise UnicodeError("an entry starts inside a character")
    except UnicodeError as exc:
        raise CorruptFileError(f"{where}{what} holds invalid UTF-8; the index is damaged") from exc
    return first_use(codes, offsets, blob)


@dataclass
class _Extra:
    """A loaded extra field: its kind and columns (strings in first-use order, null rows as "")."""

    kind: str
    cols: dict[str, np.ndarray]
    strings: _Strings | None = None


def _load_extra(block: IndexBlock, j: int, name: str, kind: str, where: str) -> _Extra:
    """Copy extra field ``j``'s columns out of ``block`` and check them.

    Raises:
        CorruptFileError: its JSON offsets or strings are damaged.
    """
    cols = {p: np.array(block.columns[f"extra.{j}.{p}"]) for p in ("state", *_EXTRA_PARTS[kind])}
    what = f"extra field {name!r}"
    has = cols["state"] == EXTRA_VALUE
    if kind == "str":
        codes, offsets, blob = cols.pop("codes"), cols.pop("dict_offsets"), cols.pop("dict_bytes")
        column = f"extra.{j}.dict_offsets"
        _check_runs(offsets, blob, f"the string dictionary of {what}", where, column)
        if not bool(has.all()):  # encoded as "" (its entry added when no value is "")
            empty = np.flatnonzero(np.diff(offsets) == 0)
            if not len(empty):
                offsets = np.append(offsets, offsets[-1])
                empty = np.array([len(offsets) - 2])
            codes[~has] = empty[0]
        return _Extra(kind, cols, _load_strings(codes, offsets, blob, what, where, column))
    if kind == "json":
        offsets, blob = cols["offsets"], cols["bytes"]
        _check_runs(offsets, blob, what, where, f"extra.{j}.offsets")
        lengths = np.diff(offsets)
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(blob) or bool(lengths[~has].any()):
            cols["offsets"], cols["bytes"] = _gather(offsets[:-1], lengths * has, blob)  # as written: compact
    elif kind in ("bool", "int", "float"):
        cols["values"] = cols["values"].astype(_FILL[kind][0], copy=False)
    return _Extra(kind, cols)


def _as_json(old: _Extra, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, bytes)``: a loaded field's values as JSON text (empty where it has none),
    when added values of another kind make the field's kind ``"json"``."""
    has = old.cols["state"] == EXTRA_VALUE
    if old.kind == "json":
        return old.cols["offsets"], old.cols["bytes"]
    if old.kind == "null":
        return np.zeros(rows + 1, "<u8"), np.zeros(0, "|u1")
    if old.strings is not None:
        s = old.strings
        whole, bounds = s.blob.tobytes(), s.offsets.tolist()
        texts = [json.dumps(whole[a:b].decode()).encode() for a, b in itertools.pairwise(bounds)]
        which = s.codes
    else:
        values = old.cols["values"]
        keys = values.view("<i8") if old.kind == "float" else values  # by bits: -0.0 is not 0.0
        distinct, which = np.unique(keys[has], return_inverse=True)
        distinct = distinct.view("<f8") if old.kind == "float" else distinct
        items = [bool(v) for v in distinct.tolist()] if old.kind == "bool" else distinct.tolist()
        texts = [json.dumps(v).encode() for v in items]
        full = np.zeros(rows, np.int64)
        full[has] = which
        which = full
    text_offsets = np.zeros(len(texts) + 1, "<u8")
    np.cumsum([len(t) for t in texts], out=text_offsets[1:])
    lengths = np.diff(text_offsets)[which] * has
    return _gather(text_offsets[:-1][which], lengths, np.frombuffer(b"".join(texts), "|u1"))


_FILL = {"bool": ("|u1", 0), "int": ("<i8", 0), "float": ("<f8", np.nan)}


def join_extra(old: _Extra | None, rows: int, values: Sequence[Any]) -> tuple[str, dict[str, Column]]:
    """``(kind, columns)`` of an extra field over ``rows`` loaded episodes (``old``, None
    where none has the field) then the added ``values``, as `encode_extra` would give."""
    old = old or _Extra("null", {"state": np.zeros(rows, "|u1")})
    new_kind = _extra_kind(values)
    kind = (
        new_kind if old.kind == "null"
        else old.kind if new_kind in ("null", old.kind)
        else "json"
    )  # fmt: skip
    if kind == "str":
        _, new = encode_extra(values, "null")
        strings = old.strings or _Strings.empty(rows)
        added = [v if isinstance(v, str) else "" for v in values]
        return kind, {"state": (old.cols["state"], new["state"]), **join_strings(strings, added)}
    _, new = encode_extra(values, kind)
    cols: dict[str, Column] = {"state": (old.cols["state"], new["state"])}
    if kind in _FILL:
        dtype, fill = _FILL[kind]
        cols["values"] = (
            old.cols["values"] if old.kind == kind else np.full(rows, fill, dtype),
            new["values"],
        )
    elif kind == "json":
        offsets, blob = _as_json(old, rows)
        cols["offsets"] = (offsets, new["offsets"][1:] + offsets[-1])
        cols["bytes"] = (blob, new["bytes"])
    return kind, cols


# Rows queued at most before they are moved into the columns (a row's tuple takes some
# 200 bytes of Python objects; in the columns, its bytes in the index).
_QUEUED = 512


def _move(queue: list[tuple[Any, ...]], columns: dict[str, Rows], several: tuple[str, ...]) -> None:
    """Move the queued rows into ``columns`` (in order, a row's values in column order; the
    columns named in ``several`` take a sequence of values per row), emptying ``queue``.

    The writer checks every value before it queues a row; one that does not fit its column
    all the same (OverflowError, TypeError) moves no row and leaves the queue as it was.
    """
    start = len(next(iter(columns.values())))
    try:
        for (name, col), values in zip(columns.items(), zip(*queue, strict=True), strict=True):
            col.extend([v for row in values for v in row] if name in several else list(values))
    except BaseException:
        for col in columns.values():
            del col[start:]
        raise
    queue.clear()


class TableBuilder:
    """The episode and section rows of the file being written: those `load` takes from an
    existing index stay encoded; those added are kept in typed buffers (numbers) and as codes
    (strings) until `encode`, extra fields as Python values."""

    def __init__(self) -> None:
        self._rows = {c: Rows(np.zeros(0, dt)) for c, dt in EPISODE_COLUMNS.items()}
        self._sections = {
            c: Rows(np.zeros((0, 3) if c == "sec.dims" else 0, dt)) for c, dt in SECTION_COLUMNS.items()
        }
        # Rows added but not yet in the columns: a tuple of every column's value each, moved
        # in at once when the columns are read (per-row appends to 13 and 7 columns cost more
        # than the rest of a small episode's bookkeeping).
        self._row_queue: list[tuple[Any, ...]] = []
        self._section_queue: list[tuple[Any, ...]] = []
        self._episodes = 0  # rows in all: loaded, in the columns and queued
        self._section_rows = 0
        self.strings = {s: AddedStrings() for s in STRING_COLUMNS}  # added rows only
        self.extras: dict[str, list[Any]] = {}  # added rows only (`ABSENT` where one has none)
        self.section_names: list[str] = []
        self._name_codes: dict[str, int] = {}
        self._loaded = 0
        self._loaded_strings = {s: _Strings.empty() for s in STRING_COLUMNS}
        self._loaded_extras: dict[str, _Extra] = {}

    def __len__(self) -> int:
        return self._episodes

    @property
    def rows(self) -> dict[str, Rows]:
        """The episode columns, every row added in them."""
        if self._row_queue:
            _move(self._row_queue, self._rows, ())
        return self._rows

    @property
    def sections(self) -> dict[str, Rows]:
        """The section columns, every row added in them."""
        if self._section_queue:
            _move(self._section_queue, self._sections, ("sec.dims",))
        return self._sections

    def section_count(self) -> int:
        """Section rows in all."""
        return self._section_rows

    def drop_sections(self, start: int) -> None:
        """Remove the section rows from ``start`` on (a failed episode's)."""
        for col in self.sections.values():
            del col[start:]
        self._section_rows = min(self._section_rows, start)

    def name_code(self, name: str) -> int:
        """The dictionary code of a section name, adding it if new."""
        code = self._name_codes.get(name)
        if code is None:
            code = self._name_codes[name] = len(self.section_names)
            self.section_names.append(name)
        return code

    def new_names(self, names: Iterable[str]) -> int:
        """How many of ``names`` have no dictionary code yet."""
        return len(set(names).difference(self._name_codes))

    def add_episode(self, row: dict[str, Any], strings: dict[str, str], extra: Mapping[str, Any]) -> None:
        """Append one episode row (all `EPISODE_COLUMNS`), its strings and extra fields."""
        self.add_episode_values(tuple([row[c] for c in EPISODE_COLUMNS]), strings, extra)

    def add_episode_values(
        self, row: tuple[Any, ...], strings: dict[str, str], extra: Mapping[str, Any]
    ) -> None:
        """`add_episode` of a row given as every `EPISODE_COLUMNS` value in order."""
        n = self._episodes - self._loaded
        for s in STRING_COLUMNS:
            self.strings[s].append(strings[s])
        extras = self.extras
        for key in extra:
            if key not in extras:  # a new field: absent from every earlier added episode
                extras[key] = [ABSENT] * n
        for key, values in extras.items():
            values.append(extra.get(key, ABSENT))
        self._row_queue.append(row)
        self._episodes += 1
        if len(self._row_queue) >= _QUEUED:
            _move(self._row_queue, self._rows, ())

    def add_sections(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append section rows, each the values of every `SECTION_COLUMNS` column in order
        (``sec.dims`` a list of three)."""
        self._section_queue.extend(rows)
        self._section_rows += len(rows)
        if len(self._section_queue) >= _QUEUED:
            _move(self._section_queue, self._sections, ("sec.dims",))

    def add_section(self, row: dict[str, Any]) -> None:
        """Append one section row (all `SECTION_COLUMNS`)."""
        self.add_sections([tuple([row[c] for c in SECTION_COLUMNS])])

    def load(self, block: IndexBlock, where: str = "") -> None:
        """Start from an existing index block (append mode), copying its columns out of it.

        ``where`` names the block in errors (``"PATH: index at byte offset N"``).

        Raises:
            CorruptFileError: a string or extra-field column is damaged.
        """
        where = f"{where}: " if where else ""
        cols = block.columns
        self._row_queue.clear()
        self._section_queue.clear()
        for c, dt in EPISODE_COLUMNS.items():
            self._rows[c] = Rows(np.array(cols[c], dtype=dt))
        for c, dt in SECTION_COLUMNS.items():
            self._sections[c] = Rows(np.array(cols[c], dtype=dt))
        self._loaded = self._episodes = len(self._rows["episode_id"].base)
        self._section_rows = len(self._sections["sec.name"].base)
        for s in STRING_COLUMNS:
            self._loaded_strings[s] = _load_strings(
                np.array(cols[f"{s}.codes"], dtype="<i4"), np.array(cols[f"{s}.dict_offsets"], dtype="<u8"),
                np.array(cols[f"{s}.dict_bytes"], dtype="|u1"), f"column {s!r}", where, f"{s}.dict_offsets",
            )  # fmt: skip
        for j, (name, kind) in enumerate(block.extra_kinds.items()):
            self._loaded_extras[name] = _load_extra(block, j, name, kind, where)
        for name in block.section_names:
            self.name_code(name)

    def encode(self, dataset: dict[str, Any]) -> bytearray:
        """The index block for every row, loaded and added."""
        columns: dict[str, Column] = {c: self.rows[c].parts(dt) for c, dt in EPISODE_COLUMNS.items()}
        for s in STRING_COLUMNS:
            joined = join_strings(self._loaded_strings[s], self.strings[s])
            columns.update({f"{s}.{part}": col for part, col in joined.items()})
        for c, dt in SECTION_COLUMNS.items():
            columns[c] = self.sections[c].parts(dt)
        kinds = []
        added = len(self) - self._loaded
        for j, name in enumerate(sorted(self._loaded_extras.keys() | self.extras.keys())):
            values = self.extras.get(name, [ABSENT] * added)
            kind, cols = join_extra(self._loaded_extras.get(name), self._loaded, values)
            kinds.append([name, kind])
            columns.update({f"extra.{j}.{part}": col for part, col in cols.items()})
        laid = {c: _joined(columns[c]) for c in ("sec_start", "sec_count", "num_frames", *SECTION_COLUMNS)}
        return encode_index(dataset, columns, self.section_names, kinds, uniform_layout(laid))


def _joined(col: Column) -> np.ndarray:
    return np.concatenate(col) if isinstance(col, tuple) else col


# What to store instead of a value JSON cannot hold, by its type's name.
_JSON_HINTS = {"ndarray": "store an array as a list: array.tolist()", "bytes": "decode bytes to str"}


def json_metadata(value: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`json_mapping`, its message saying what to store instead of an array or bytes."""
    try:
        return json_mapping(value, where)
    except WriterError as exc:
        hint = next((h for kind, h in _JSON_HINTS.items() if f"has type {kind};" in str(exc)), None)
        if hint is None:
            raise
        raise WriterError(f"{exc} ({hint})") from None


class Metadata(dict[str, Any]):
    """`Writer.metadata`: the dataset metadata, a dict whose values are checked as they are
    set (NumPy scalars become Python numbers; NaN, arrays and other values JSON cannot
    store are refused, naming the key), by item, `update`, `setdefault` and ``|=``.

    Building one (``Metadata(stored)``) checks nothing: the values are already stored.
    Values read back are the stored ones: a nested dict or list changed in place is
    checked again when the writer commits.
    """

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> None:
        super().update(json_metadata({key: value}, "metadata"))

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Check every value first: nothing is set when one is refused."""
        super().update(json_metadata(dict(*args, **kwargs), "metadata"))

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    # mypy compares |= with dict's |, which returns a new dict; |= returns this one.
    def __ior__(self, other: Any) -> Metadata:  # type: ignore[override,misc]
        self.update(other)
        return self


def _bound(value: Any) -> int | None:
    """A component bound: an int (NumPy integers too, not bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def declared_schema(part: str, spec: Any) -> dict[str, Any]:
    """The ``components`` and ``names`` that ``spec`` declares for ``part``, checked.

    Raises:
        ValueError: they are not a mapping of names to ``[start, stop)`` and a list of names.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"schema {part} must be a mapping with 'components' and 'names', got {spec!r}")
    given = spec.get("components", {})
    if not isinstance(given, Mapping):
        raise ValueError(
            f"schema {part}.components must map each name to [start, stop), e.g. {{'pos': [0, 3]}}; "
            f"got {given!r}"
        )
    comps = {}
    for name, sl in given.items():
        pair = (sl.start, sl.stop) if isinstance(sl, slice) else sl
        bounds = [_bound(b) for b in pair] if isinstance(pair, (list, tuple)) and len(pair) == 2 else []
        start, stop = bounds if bounds else (None, None)
        if start is None or stop is None or not 0 <= start < stop < 2**32:  # dims are u32
            said = (
                f"[{_shown(start)}, {_shown(stop)}]" if start is not None and stop is not None else repr(sl)
            )
            raise ValueError(f"schema {part}.components[{name!r}] must be [start, stop), got {said}")
        check_text(str(name), f"schema {part} component name {name!r}")
        comps[str(name)] = [start, stop]
    new: dict[str, Any] = {"components": comps} if comps else {}
    if "names" in spec:
        names = spec["names"]
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise ValueError(f"schema {part}.names must be a list of names (one per dim), got {names!r}")
        new["names"] = [str(n) for n in names]
        for n in new["names"]:
            check_text(n, f"schema {part}.names entry {n!r}")
    return new


def _shown(bound: int) -> str:
    """A bound as text, or its size for an int too long to print."""
    return str(bound) if bound.bit_length() < 1000 else f"an int of {bound.bit_length()} bits"


def check_dims(schema: Mapping[str, Any], action_dim: int, state_dim: int) -> None:
    """Check an episode's ``actions`` and ``states`` dims against the declared ``schema``.

    Raises:
        WriterError: a component ends past its part's dim, or the names do not count it.
    """
    for part, dim in (("actions", action_dim), ("states", state_dim)):
        entry = schema.get(part, {})
        for name, (_, stop) in entry.get("components", {}).items():
            if stop > dim:
                raise WriterError(f"schema component {part}.{name} ends at {stop}, but {part} has dim {dim}")
        if "names" in entry and len(entry["names"]) != dim:
            raise WriterError(f"schema {part}.names has {len(entry['names'])} names, {part} has dim {dim}")


def note_schema(
    schema: dict[str, Any],
    arrays: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]],
    cams: Mapping[str, Any],
) -> None:
    """Record an episode's dtypes, dims and camera formats in ``schema``; a value that
    varies between episodes becomes None. add_episode's own arrays get a part of their
    own, extra arrays one in ``schema["arrays"]``."""
    for name, (dtype, shape) in arrays.items():
        if name in ("actions", "states"):
            entry = schema.setdefault(name, {})
            _note(entry, "dim", int(shape[1]))
        else:
            entry = (
                schema.setdefault(name, {})
                if name in RESERVED_ARRAYS
                else schema["arrays"].setdefault(name, {})
            )
            _note(entry, "shape", [int(d) for d in shape[1:]])
        _note(entry, "dtype", dtype_name(dtype))
    for cam, (codec, (h, w, c)) in cams.items():
        entry = schema["cameras"].setdefault(cam, {})
        for key, value in (("codec", codec), ("height", h), ("width", w), ("channels", c)):
            _note(entry, key, value)


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, cached: NumPy builds the name in Python on every access (some 5 µs),
    and the writer asks for it per array of every episode."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def dtype_drift(
    schema: Mapping[str, Any], arrays: Mapping[str, np.ndarray], warned: set[str]
) -> list[tuple[str, str, str]]:
    """``(array, its dtype, the dtype earlier episodes hold)`` for the arrays of an episode
    held in another dtype than ``schema`` records for every earlier episode, once per array
    (``warned``, updated: the arrays said before).

    Such a file is valid (its schema then records no dtype for the array), but
    `Database.gather`, frame windows and ``kino stats`` need one dtype per array, as the
    warnings of ``kino merge`` say for inputs of different dtypes.
    """
    found = []
    for name, arr in arrays.items():
        entry = schema.get(name) if name in RESERVED_ARRAYS else schema.get("arrays", {}).get(name)
        was = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(was, str) or was == dtype_name(arr.dtype) or name in warned:
            continue
        warned.add(name)
        found.append((name, dtype_name(arr.dtype), was))
    return found


def drift_message(path: str, n: int, name: str, got: str, was: str, fix: str) -> str:
    """What a `dtype_drift` finding means, with ``fix`` (how the caller stores one dtype)."""
    return (
        f"{path}: episode {n} holds {name!r} as {got}, but the file's earlier episodes hold it as {was}; "
        f"Database.gather, frame windows and kino stats need one dtype per array in a file: {fix} "
        "(said once per array)"
    )


def writer_fix(name: str, got: str, was: str) -> str:
    """`drift_message`'s fix for a `kinodb.Writer` caller: the cast to pass."""
    give = name if name in RESERVED_ARRAYS else f"extra_arrays[{name!r}]"
    try:
        floating = np.dtype(got).kind == np.dtype(was).kind == "f"
    except (TypeError, ValueError, SyntaxError):  # not a dtype: a damaged schema
        floating = False
    ingest = f", or kino ingest --dtype {was}" if floating else ""
    return f"pass {give} as {give}.astype(np.{was}){ingest}"


def _note(entry: dict[str, Any], key: str, value: Any) -> None:
    if key not in entry:
        entry[key] = value
    elif entry[key] != value:
        entry[key] = None  # varies between episodes


def check_dataset(dataset: dict[str, Any], path: str, episodes: int) -> None:
    """Check the metadata and statistics of ``dataset`` again before a commit (a nested
    value may have been changed in place), converting NumPy scalars in place: a value JSON
    cannot store is refused while the writer is still open, so that no episode is lost.

    Raises:
        WriterError: a value JSON cannot store; the message names its key.
    """
    for key in ("metadata", "stats"):
        value = dataset.get(key)
        if not isinstance(value, dict):
            continue
        try:
            clean = json_metadata(value, key)
        except WriterError as exc:
            raise WriterError(
                f"{path}: {exc}. Nothing was committed, and the writer is still open with its {episodes} "
                "episodes: set or delete that value, then call close() again"
            ) from None
        value.clear()  # in place: callers may hold `Writer.metadata`
        value.update(clean)


def utc_now() -> str:
    """The UTC time to record, ``SOURCE_DATE_EPOCH`` when it is set (reproducible files).

    Raises:
        WriterError: ``SOURCE_DATE_EPOCH`` is set but is not a number of seconds.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        t = time.time()
    else:
        try:
            t = float(epoch)
            return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (ValueError, OverflowError, OSError):
            raise WriterError(
                f"the environment variable SOURCE_DATE_EPOCH is {epoch!r}; it must be a whole number of "
                "seconds since 1970-01-01 UTC (e.g. 1700000000), or unset"
            ) from None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
