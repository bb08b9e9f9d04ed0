"""The section directory: where each array and camera of each episode lives.

Four views of the same index columns, all checked against the file before any byte
is mapped: `episode_sections` decodes the rows of one episode (used for cameras and
validation); `all_sections` decodes every episode's rows at once, with NumPy, as a
`Directory` of distinct row types (the commands that summarise or validate a whole
file, and `camera_tables` their frame-offset tables); `checked_reader` finds one array in an episode in O(1) from the usual row
order (a `Locator`), so no single read costs O(episodes); and an `ArrayTable` holds one
array's place in every episode, checked at once after enough reads to repay its
O(episodes) NumPy cost, so that later reads look nothing up in the index at all.
`periodic_table` builds it with a few contiguous comparisons when every episode repeats
one row layout (`periodic_layout`, the usual file), `build_table` row by row otherwise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError
from kinodb.kdb._layout import CODECS, DATA_START, DTYPE_CODE, DTYPES, KIND_ARRAY, KIND_CAMERA
from kinodb.kdb._table import EPISODE_COLUMNS, SECTION_COLUMNS

# Returns the array of episode ``i``, or None where that episode holds it elsewhere.
ArrayReader = Callable[[int], "np.ndarray | None"]
# The index columns `episode_sections` and `checked_reader` consult, in this order, as
# integer views (`Columns.ints`).
READER_COLUMNS = (
    "sec_start", "sec_count", "num_frames", "sec.name", "sec.kind", "sec.dtype", "sec.ndim", "sec.dims",
    "sec.offset", "sec.codec",
)  # fmt: skip

_DTYPES = [np.dtype(d) for d in DTYPES]


@dataclass(frozen=True, slots=True)
class Section:
    """One checked section row: an array, or a camera's offset table plus frames."""

    name: str
    kind: int
    dtype: np.dtype[Any]
    codec: str
    shape: tuple[int, ...]  # full shape; the first dim is the episode's frame count
    offset: int  # arrays: the data; cameras: the (T + 1) u64 frame-offset table
    nbytes: int  # arrays: the data; cameras: the offset table (the frames follow it)


def episode_sections(ints: tuple[Any, ...], names: list[str], i: int, size: int, path: str) -> list[Section]:
    """Decode and check the section rows of episode ``i``.

    ``ints`` holds the `READER_COLUMNS` as integer views.

    Raises:
        CorruptFileError: a row has a bad code or rank, or lies outside the file.
    """
    starts, counts, frames, name, kind, dt, ndim, dims, offs, codec = ints
    start, count, T = starts[i], counts[i], frames[i]
    if start + count > len(name):
        raise CorruptFileError(f"{path}: episode {i}: section rows {start}..{start + count} do not exist")
    out = []
    for r in range(start, start + count):
        rank = ndim[r]
        if name[r] >= len(names) or kind[r] > KIND_CAMERA or dt[r] >= len(DTYPES) or not 1 <= rank <= 4:
            raise CorruptFileError(
                f"{_row(path, i, r, offs)}: bad name, kind, dtype or rank code; the index is damaged"
            )
        row_dims = list(dims[3 * r : 3 * r + 3])
        trail = tuple(row_dims[: rank - 1])
        if any(row_dims[rank - 1 :]):
            raise CorruptFileError(
                f"{_row(path, i, r, offs)}: dims beyond the rank are set; the index is damaged"
            )
        shape = (T, *trail)
        if kind[r] == KIND_CAMERA:
            if rank != 4 or codec[r] >= len(CODECS) or min(trail) < 1 or trail[2] > 4:
                raise CorruptFileError(
                    f"{_row(path, i, r, offs)}: camera has codec {codec[r]} and shape {shape}; the index is damaged"
                )
            nbytes = 8 * (T + 1)
        else:
            nbytes = math.prod(shape) * _DTYPES[dt[r]].itemsize
        if offs[r] < DATA_START or offs[r] + nbytes > size:
            raise CorruptFileError(
                f"{_row(path, i, r, offs)}: {nbytes} bytes do not fit in the file ({size} bytes)"
            )
        out.append(
            Section(names[name[r]], kind[r], _DTYPES[dt[r]], CODECS[codec[r]] if kind[r] else "raw",
                    shape, offs[r], nbytes)
        )  # fmt: skip
    if count < len(_REQUIRED) or not _REQUIRED.issubset(sec.name for sec in out):
        missing = sorted(_REQUIRED.difference(sec.name for sec in out))
        raise CorruptFileError(
            f"{path}: episode {i}: its index rows lack {', '.join(missing)}, which every episode holds; "
            f"the index is damaged: run kino validate {path}, and kino upgrade {path} NEW.kdb --on-error skip "
            "to keep the readable episodes"
        )
    return out


_REQUIRED = frozenset(("actions", "states", "rewards", "is_terminal"))  # written for every v1 episode


def _row(path: str, i: int, r: int, offs: Any) -> str:
    return f"{path}: episode {i}, section row {r} (byte offset {offs[r]})"


def int_view(arr: np.ndarray) -> Any:
    """Index access to an integer column that returns Python ints (fast, no copy)."""
    if sys.byteorder == "little" and arr.dtype.kind in "iu" and arr.flags.c_contiguous:
        fmt = (
            {1: "B", 2: "H", 4: "I", 8: "Q"}[arr.dtype.itemsize]
            if arr.dtype.kind == "u"
            else {1: "b", 2: "h", 4: "i", 8: "q"}[arr.dtype.itemsize]
        )
        return arr.reshape(-1).data.cast("B").cast(fmt)  # type: ignore[call-overload]
    return arr.reshape(-1).tolist()


@dataclass(frozen=True, slots=True)
class Locator:
    """Where array ``name`` sits in an episode whose rows follow the usual order.

    Writers put an episode's sections in one order, so an array is usually the
    ``k``-th row of every episode with the same dtype and trailing shape. A read checks
    that the row really is that array before mapping it, and falls back to decoding
    the episode's rows when it is not.
    """

    name: str
    code: int
    k: int
    dtype_code: int
    ndim: int
    dims: tuple[int, int, int]
    dtype: np.dtype[Any]
    trail: tuple[int, ...]
    row_bytes: int  # bytes per frame

    @classmethod
    def from_section(cls, code: int, k: int, sec: Section) -> Locator:
        """The locator of ``sec``, the ``k``-th row of an episode."""
        trail = sec.shape[1:]
        dims = (*trail, 0, 0, 0)[:3]
        return cls(sec.name, code, k, DTYPE_CODE[sec.dtype], len(sec.shape), dims, sec.dtype, trail,  # type: ignore[arg-type]
                   math.prod(trail) * sec.dtype.itemsize)  # fmt: skip


def typed_view(buf: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """The whole map as a flat array of ``dtype``: an array at a byte offset that is a
    multiple of the item size is then one slice of it (cheaper than a new ndarray)."""
    return buf[: len(buf) - len(buf) % dtype.itemsize].view(dtype)


def checked_reader(
    ints: tuple[Any, ...], loc: Locator, flat: np.ndarray, size: int, path: str, budget: list[int]
) -> ArrayReader:
    """An O(1) reader of the array ``loc`` describes, for episodes whose rows follow it.

    ``ints`` holds the `READER_COLUMNS` as integer views and ``flat`` is the `typed_view`
    of the map for ``loc.dtype``. The reader checks the episode's row (name, kind, dtype,
    rank, dims) and the extent against the file before making one view, and returns None
    when the row is not that array (or not aligned). ``budget[0]`` counts reads down
    (shared by the readers of one file); once it reaches zero the reader returns None
    until the caller refills it, having switched to tables (`periodic_table`,
    `build_table`) that enough reads have repaid.

    Raises (from the reader):
        CorruptFileError: the array's bytes do not fit the file.
    """
    start, count, frames, names, kinds, dtypes, ndims, dims, offs, _ = ints
    k, code, dcode, ndim = loc.k, loc.code, loc.dtype_code, loc.ndim
    row_bytes, trail, (d0, d1, d2) = loc.row_bytes, loc.trail, loc.dims
    itemsize = loc.dtype.itemsize
    width = row_bytes // itemsize

    def read(i: int) -> np.ndarray | None:
        budget[0] -= 1
        try:
            row = start[i] + k
            if budget[0] <= 0 or not (
                k < count[i] and names[row] == code and kinds[row] == KIND_ARRAY
                and dtypes[row] == dcode and ndims[row] == ndim
                and dims[3 * row] == d0 and dims[3 * row + 1] == d1 and dims[3 * row + 2] == d2
            ):  # fmt: skip
                return None
        except IndexError:  # rows past the directory: the checked decode reports the damage
            return None
        off, T = offs[row], frames[i]
        if off < DATA_START or off + T * row_bytes > size:
            raise CorruptFileError(
                f"{path}: episode {i}: array {loc.name!r} at byte offset {off} does not fit the file"
            )
        if off % itemsize:
            return None
        at = off // itemsize
        return flat[at : at + T * width].reshape(T, *trail)  # type: ignore[no-any-return]

    return read


@dataclass(frozen=True, slots=True)
class ArrayTable:
    """One array's place in every episode, checked at once against the index and the file.

    ``read`` returns None for the episodes whose row is not the usual one (they take the
    checked path). When every episode holds the array alike (same frame count, dtype and
    dims, at a constant stride), ``strided`` is one opaque item per episode over the map,
    which serves batch reads with one vectorised copy.
    """

    loc: Locator
    read: ArrayReader
    strided: np.ndarray | None


@dataclass(frozen=True, slots=True)
class Periodic:
    """Every episode has ``width`` section rows equal to episode 0's, as a writer lays out
    episodes that all hold the same arrays and cameras (`periodic_layout`).

    ``step`` is set when, besides, every episode has the same frame count and its rows lie
    ``step`` bytes after the previous episode's: then an array of episode ``i`` is at
    episode 0's offset plus ``i * step``.
    """

    width: int
    step: int | None


_NONE = Periodic(0, None)


def periodic_layout(cols: Mapping[str, np.ndarray]) -> Periodic:
    """The `Periodic` layout of the section directory, of ``width`` 0 if episodes differ.

    Equal rows have the same name, kind, dtype, rank and dims. Checked with a few
    contiguous NumPy comparisons over the columns, once for every array.
    """
    start, count = cols["sec_start"], cols["sec_count"]
    n = len(start)
    w = int(count[0]) if n else 0
    rows = n * w
    if not w or rows > len(cols["sec.name"]) or start[0] != 0:
        return _NONE
    if not ((count == w).all() and (np.diff(start) == w).all()):
        return _NONE
    for key in ("sec.name", "sec.kind", "sec.dtype", "sec.ndim"):
        col = cols[key]
        if not (col[w:rows] == col[: rows - w]).all():
            return _NONE
    dims = cols["sec.dims"].reshape(-1)
    if not (dims[3 * w : 3 * rows] == dims[: 3 * rows - 3 * w]).all():
        return _NONE
    frames, offs = cols["num_frames"], cols["sec.offset"]
    step = int(offs[w]) - int(offs[0]) if n > 1 else 0
    uniform = step >= 0 and (frames == frames[0]).all() and (offs[w:rows] - offs[: rows - w] == step).all()
    return Periodic(w, step if uniform else None)


def uniform_layout(cols: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The table of contents' ``uniform`` entry for the index columns ``cols``, or None.

    Written when every episode repeats episode 0's section rows, has its frame count, and
    lies a constant ``step`` bytes after the previous one (`periodic_layout`): then a
    reader finds every episode's arrays from the entry alone (`uniform_table`), before
    and without the O(episodes) checks of the index.
    """
    return uniform_entry_of(cols, periodic_layout(cols))


def uniform_entry_of(cols: Mapping[str, np.ndarray], layout: Periodic) -> dict[str, Any] | None:
    """`uniform_layout` from the columns' `periodic_layout` ``layout``, already computed."""
    n = len(cols["sec_start"])
    if n < 2 or not layout.step:
        return None
    return {"episodes": n, "frames": int(cols["num_frames"][0]), "step": layout.step,
            "offsets": cols["sec.offset"][: layout.width].tolist()}  # fmt: skip


def uniform_table(
    uniform: Mapping[str, Any], loc: Locator, rows: Sequence[tuple[int, int, int]], n: int,
    buf: np.ndarray, size: int,
) -> ArrayTable | None:  # fmt: skip
    """The table of array ``loc`` from the table of contents' ``uniform`` entry
    (`uniform_layout`).

    ``rows`` holds (episode, byte offset, frames) of the array as the section rows of two
    episodes or more give it. None unless each agrees with the entry (its offset and
    frame count where the entry puts them: a damaged entry or row shows), the entry
    covers ``n`` episodes, and every episode's array lies inside the file of ``size`` bytes.
    """
    offsets, T, step = uniform["offsets"], uniform["frames"], uniform["step"]
    if loc.k >= len(offsets) or uniform["episodes"] != n:
        return None
    first, nbytes = offsets[loc.k], T * loc.row_bytes
    if any(frames != T or offset != first + i * step for i, offset, frames in rows):
        return None
    if not (nbytes and step >= nbytes and first >= DATA_START and first + (n - 1) * step + nbytes <= size):
        return None
    return _uniform_table(loc, n, T, first, step, buf)


def periodic_table(
    cols: Mapping[str, np.ndarray], loc: Locator, layout: Periodic, buf: np.ndarray, size: int
) -> ArrayTable | None:
    """`build_table` for a file whose episodes repeat one row layout (`periodic_layout`).

    None if there is no such layout, or row ``loc.k`` of it is not the array ``loc``
    describes.
    """
    k, n, width = loc.k, len(cols["sec_start"]), layout.width
    if not (
        k < width and cols["sec.name"][k] == loc.code and cols["sec.kind"][k] == KIND_ARRAY
        and cols["sec.dtype"][k] == loc.dtype_code and cols["sec.ndim"][k] == loc.ndim
        and tuple(cols["sec.dims"][k].tolist()) == loc.dims
    ):  # fmt: skip
        return None
    frames = cols["num_frames"]
    if layout.step is not None:
        T, first, step = int(frames[0]), int(cols["sec.offset"][k]), layout.step
        nbytes = T * loc.row_bytes
        if nbytes and step >= nbytes and first >= DATA_START and first + (n - 1) * step + nbytes <= size:
            return _uniform_table(loc, n, T, first, step, buf)
    off = cols["sec.offset"][k : n * width : width].astype(np.int64)
    return _table(loc, None, off, frames, buf, size)


def build_table(cols: Mapping[str, np.ndarray], loc: Locator, buf: np.ndarray, size: int) -> ArrayTable:
    """Check array ``loc``'s usual row in every episode, whatever the row layout."""
    start, count = cols["sec_start"], cols["sec_count"]
    at = start.astype(np.int64) + loc.k
    ok = (count > loc.k) & (at >= 0) & (at < len(cols["sec.name"]))
    rows = np.where(ok, at, 0)
    ok &= (cols["sec.name"][rows] == loc.code) & (cols["sec.kind"][rows] == KIND_ARRAY)
    ok &= (cols["sec.dtype"][rows] == loc.dtype_code) & (cols["sec.ndim"][rows] == loc.ndim)
    ok &= (cols["sec.dims"][rows] == np.array(loc.dims, np.uint32)).all(axis=1)
    return _table(loc, ok, cols["sec.offset"][rows].astype(np.int64), cols["num_frames"], buf, size)


def _table(
    loc: Locator, ok: np.ndarray | None, off: np.ndarray, frames: np.ndarray, buf: np.ndarray, size: int
) -> ArrayTable:
    """The table of array ``loc`` at byte offsets ``off`` (valid rows where ``ok``)."""
    n, row_bytes = len(off), loc.row_bytes
    T = int(frames[0]) if n else 0
    step, nbytes = (int(off[1] - off[0]) if n > 1 else 0), T * row_bytes
    if (
        nbytes and (ok is None or ok.all()) and step >= nbytes and off[0] >= DATA_START
        and int(off[0]) + (n - 1) * step + nbytes <= size
        and (frames == T).all() and (np.diff(off) == step).all()
    ):  # fmt: skip
        return _uniform_table(loc, n, T, int(off[0]), step, buf)
    good = frames <= size // max(row_bytes, 1)  # no overflow below
    if ok is not None:
        good &= ok
    good &= (off >= DATA_START) & (off <= size - np.where(good, frames, 0).astype(np.int64) * row_bytes)
    good &= off % loc.dtype.itemsize == 0  # the others take the checked path
    offsets = np.where(good, off, -1)
    return ArrayTable(loc, _table_reader(loc, offsets, frames, typed_view(buf, loc.dtype)), None)


def _uniform_table(loc: Locator, n: int, T: int, first: int, step: int, buf: np.ndarray) -> ArrayTable:
    """Every episode alike at a constant stride (checked by the caller against the file):
    one strided view over the map, and a read is one integer index into it, with nothing
    looked up in the index."""
    inner = _c_strides((T, *loc.trail), loc.dtype.itemsize)
    view = np.ndarray((n, T, *loc.trail), loc.dtype, buffer=buf, offset=first, strides=(step, *inner))
    item = np.dtype((np.void, T * loc.row_bytes))
    strided = np.ndarray((n,), item, buffer=buf, offset=first, strides=(step,))  # type: ignore[call-overload]
    return ArrayTable(loc, view.__getitem__, strided)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    out, step = [], itemsize
    for dim in reversed(shape):
        out.append(step)
        step *= dim
    return tuple(reversed(out))


def _table_reader(loc: Locator, offsets: np.ndarray, frames: np.ndarray, flat: np.ndarray) -> ArrayReader:
    offs, count, trail = int_view(offsets), int_view(frames), loc.trail
    itemsize = loc.dtype.itemsize
    width = loc.row_bytes // itemsize

    def read(i: int) -> np.ndarray | None:
        off = offs[i]
        if off < 0:
            return None
        at = off // itemsize
        return flat[at : at + count[i] * width].reshape(count[i], *trail)  # type: ignore[no-any-return]

    return read


def gather_out(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """`Database.gather`'s output: ``out`` checked, or a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(
            f"out must be a NumPy array ({dtype} {shape}, e.g. np.empty({shape}, np.{dtype})), "
            f"got {type(out).__name__}; or leave out=None for a new array"
        )
    if not out.flags.writeable:
        raise ValueError(
            f"out is read-only; gather writes into it: pass a writeable array, e.g. np.empty({shape}, "
            f"np.{dtype}) (a read-only view, such as an array read from a file, cannot be an output)"
        )
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous:  # reshape(-1) would copy, and the copy get the data
        raise ValueError(
            "out must be C-contiguous: gather into a whole buffer (np.empty(shape, dtype)), "
            "not a slice or transpose of one"
        )
    return out


@dataclass(frozen=True, slots=True)
class RowType:
    """A distinct section row but for its offset: what `episode_sections` decodes each row
    of this type to, given its episode's frame count ``T``."""

    code: int  # the name code as stored
    kind: int
    dtype_code: int
    codec_code: int
    trail: tuple[int, ...]  # the dims after the frame axis (those the rank covers)
    ok: bool  # `episode_sections` accepts its codes, rank and dims
    name: str  # "" where not ok
    dtype: np.dtype[Any]
    codec: str  # as `Section.codec`
    frame_bytes: int  # `Section.nbytes` is ``frame_bytes * T + table_bytes``
    table_bytes: int  # cameras: 8, their offset table's entry past the last frame


@dataclass(frozen=True, slots=True)
class Directory:
    """The section rows of every episode, decoded and checked at once (`all_sections`).

    Rows run episode by episode, each episode's in directory order: row ``j`` is of type
    ``types[type_of[j]]`` and belongs to episode ``episode[j]``, whose rows start at
    ``first[episode[j]]``. ``bad`` marks the episodes `episode_sections` raises for; their
    rows may hold anything.
    """

    types: list[RowType]
    type_of: np.ndarray  # int32, per row
    episode: np.ndarray  # int32 (int64 past 2**31 episodes), per row
    first: np.ndarray  # int64, per episode, then the row count
    frames: np.ndarray  # int64, per episode: its frame count (at most the file size + 1)
    offset: np.ndarray  # int64, per row: as `Section.offset` (at most the file size + 1)
    nbytes: np.ndarray  # int64, per row: as `Section.nbytes`
    bad: np.ndarray  # bool, per episode

    def rows_where(self, rows: np.ndarray) -> Directory:
        """The rows where the boolean ``rows`` is set (``first`` no longer counts them)."""
        if rows.all():
            return self
        return replace(self, type_of=self.type_of[rows], episode=self.episode[rows],
                       offset=self.offset[rows], nbytes=self.nbytes[rows])  # fmt: skip

    def of_types(self, want: Callable[[RowType], bool]) -> np.ndarray:
        """Per row: whether its type is one ``want`` accepts."""
        return np.array([want(t) for t in self.types] or [False])[self.type_of]  # type: ignore[no-any-return]


def all_sections(cols: Mapping[str, np.ndarray], names: list[str], size: int) -> Directory | None:
    """Decode and check the section rows of every episode at once, with NumPy.

    The checks are `episode_sections`', made once per distinct row (`RowType`) and per row
    only where the row's frame count and offset count; an episode that fails one is
    marked ``bad`` (`episode_sections` names its damage). None where the directory cannot
    be read as columns (a column of the wrong type or length, or rows that episodes
    share): the caller then decodes episode by episode.
    """
    got = [cols[k] for k in READER_COLUMNS]
    if any(c.dtype != _STORED[k] for k, c in zip(READER_COLUMNS, got, strict=True)):  # not as written
        return None
    starts, counts, frames, name, kind, dt, ndim, dims, offs, codec = (c.reshape(-1) for c in got)
    rows, n = len(name), len(starts)
    if len(counts) != n or len(frames) != n or len(dims) != 3 * rows:
        return None
    if any(len(c) != rows for c in (kind, dt, ndim, offs, codec)):
        return None
    counts = counts.astype(np.int64)
    room = (rows - np.minimum(counts, rows)).astype(np.uint64)  # compared unsigned: nothing wraps around
    fits = (counts <= rows) & (starts.astype(np.uint64) <= room)
    taken = np.where(fits, counts, 0)
    first = np.zeros(n + 1, np.int64)
    np.cumsum(taken, out=first[1:])
    total = int(first[-1])
    if total > rows:  # episodes share rows, as no writer lays a directory out
        return None
    episode = np.repeat(np.arange(n, dtype=np.int32 if n < 1 << 31 else np.int64), taken)
    at: np.ndarray | None = None
    if not (total == rows and (starts == first[:-1].astype(np.uint64)).all()):  # not the usual layout
        at = starts.astype(np.int64)[episode] + (np.arange(total, dtype=np.int64) - first[episode])
    parts = [name, kind, dt, ndim, codec, *dims.reshape(-1, 3).T]
    types, type_of = _row_types([p if at is None else p[at] for p in parts], names)
    T = np.minimum(frames, size + 1).astype(np.int64)  # more fits no row but empty ones
    off = np.minimum(offs if at is None else offs[at], size + 1).astype(np.int64)
    nbytes = _nbytes(types, type_of, T[episode], size)
    bad_row = nbytes > size - off
    bad_row |= off < DATA_START
    bad_row |= ~np.array([t.ok for t in types] or [True])[type_of]
    bad = ~fits | (_required_bits(types, type_of, first) != (1 << len(_REQUIRED)) - 1)
    bad[episode[np.flatnonzero(bad_row)]] = True
    return Directory(types, type_of, episode, first, T, off, nbytes, bad)


# The dtypes of `READER_COLUMNS` as the format stores them.
_STORED = {k: np.dtype(v) for k, v in (EPISODE_COLUMNS | SECTION_COLUMNS).items() if k in READER_COLUMNS}


def _row_types(parts: list[np.ndarray], names: list[str]) -> tuple[list[RowType], np.ndarray]:
    """The distinct rows among the columns ``parts`` (name, kind, dtype, rank, codec and
    the three dims) and the type of each row, from one sort of one packed key."""
    name, kind, dt, ndim, codec, *dims = parts
    # Codes past the valid ones are all equally bad: clamped, they pack in fewer bits.
    fields = [name, np.minimum(kind, 2), np.minimum(dt, len(DTYPES)), np.minimum(ndim, 5),
              np.minimum(codec, len(CODECS)), *dims]  # fmt: skip
    bits = [16, 2, 4, 3, 2, *(max(int(d.max()) if len(d) else 0, 1).bit_length() for d in dims)]
    lookups: list[np.ndarray | None] = [None] * len(fields)
    while sum(bits) > 63:  # dims too large to pack (no usual file): numbered instead
        j = bits.index(max(bits[5:]), 5)
        lookups[j], fields[j] = np.unique(fields[j], return_inverse=True)
        bits[j] = max(len(lookups[j]) - 1, 1).bit_length()  # type: ignore[arg-type]
    key = np.zeros(len(name), np.int64)
    for values, width in zip(fields, bits, strict=True):
        key <<= width
        key |= values
    ordered = np.sort(key)
    distinct = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(key) else ordered
    types = []
    for packed in distinct.tolist():
        vals = []
        for width, lookup in zip(reversed(bits), reversed(lookups), strict=True):
            v = packed & ((1 << width) - 1)
            packed >>= width
            vals.append(v if lookup is None else int(lookup[v]))
        types.append(_row_type(*reversed(vals), names=names))
    return types, np.searchsorted(distinct, key).astype(np.int32)


def _row_type(code: int, kind: int, dt: int, rank: int, codec: int, *dims: int, names: list[str]) -> RowType:
    """`episode_sections`' checks of one row that do not depend on its episode."""
    if code >= len(names) or kind > KIND_CAMERA or dt >= len(DTYPES) or not 1 <= rank <= 4:
        return RowType(code, kind, dt, codec, (), False, "", _DTYPES[0], "raw", 0, 0)
    trail = tuple(dims[: rank - 1])
    ok = not any(dims[rank - 1 :])
    if kind == KIND_CAMERA:
        ok = ok and rank == 4 and codec < len(CODECS) and min(trail) >= 1 and trail[2] <= 4
        return RowType(
            code, kind, dt, codec, trail, ok, names[code], _DTYPES[dt], CODECS[min(codec, 2)], 8, 8
        )
    dtype = _DTYPES[dt]
    return RowType(
        code, kind, dt, codec, trail, ok, names[code], dtype, "raw", math.prod(trail) * dtype.itemsize, 0
    )


def _nbytes(types: list[RowType], type_of: np.ndarray, T: np.ndarray, size: int) -> np.ndarray:
    """`Section.nbytes` of every row; past ``size`` where it overflows int64, or nearly."""
    per = [min(t.frame_bytes, size + 1) for t in types]  # more would fit no row of a frame or more
    frame_bytes = np.array(per or [0], np.int64)
    top = int(T.max()) if len(T) else 0
    if top * max(per, default=0) >= 1 << 62:
        past = frame_bytes[type_of].astype(np.float64) * T > 2.0 * size + 4096
        T = np.where(past, 0, T)
    out = frame_bytes[type_of]
    out *= T
    out += np.array([t.table_bytes for t in types] or [0], np.int64)[type_of]
    if top * max(per, default=0) >= 1 << 62:
        out[past] = size + 1
    return out  # type: ignore[no-any-return]


def _required_bits(types: list[RowType], type_of: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per episode, one bit for each of `_REQUIRED` among the names of its rows."""
    order = sorted(_REQUIRED)
    bits = np.array([1 << order.index(t.name) if t.name in _REQUIRED else 0 for t in types] or [0], np.int64)
    have = np.zeros(len(first) - 1, np.int64)
    some = np.flatnonzero(first[1:] > first[:-1])
    if len(some):
        have[some] = np.bitwise_or.reduceat(bits[type_of], first[some])
    return have


def camera_tables(
    buf: np.ndarray, offset: np.ndarray, frames: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The frame-offset tables of camera rows, checked as `Database._episode_cameras` does.

    ``offset`` and ``frames`` are int64 per row, of episodes `all_sections` found sound.
    Returns ``(frame bytes, ok)`` per row: the table's last entry (the bytes its frames
    take), and whether the table starts at 0, never decreases and its frames fit the file.
    """
    n = len(offset)
    last, ok = np.zeros(n, np.int64), np.ones(n, bool)
    aligned = offset % 8 == 0
    for r in np.flatnonzero(~aligned).tolist():  # no kinodb writer leaves a table unaligned
        table = np.frombuffer(buf, "<u8", int(frames[r]) + 1, int(offset[r]))  # type: ignore[call-overload]
        last[r], ok[r] = _table_check(table.astype(np.int64), int(offset[r]) + table.nbytes, size)
    rows = np.flatnonzero(aligned)
    if not len(rows):
        return last, ok
    entries = np.cumsum(frames[rows] + 1)
    cuts = np.unique(np.searchsorted(entries, np.arange(_GATHER_ROWS, int(entries[-1]), _GATHER_ROWS)))
    u64 = typed_view(buf, np.dtype("<u8"))
    for part in np.split(rows, cuts):
        if len(part):
            last[part], ok[part] = _tables_at(u64, offset[part], frames[part] + 1, size)
    return last, ok


_GATHER_ROWS = 1 << 22  # table entries gathered at once (8 bytes of index each)


def _tables_at(
    u64: np.ndarray, offset: np.ndarray, lens: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`camera_tables` of 8-byte-aligned tables: one gather of all their entries."""
    begin = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=begin[1:])
    idx = np.repeat(offset // 8 - begin, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    values = u64[idx].astype(np.int64)  # as the reader reads them: a value past 2**63 turns negative
    falls = np.diff(values) < 0
    falls[begin[1:] - 1] = False  # one table's last entry and the next one's first
    tail = values[begin + lens - 1]
    ok = (values[begin] == 0) & (tail >= 0) & (tail <= size - (offset + 8 * lens))
    ok[np.searchsorted(begin, np.flatnonzero(falls), "right") - 1] = False
    return tail, ok


def _table_check(table: np.ndarray, data: int, size: int) -> tuple[int, bool]:
    tail = int(table[-1])
    return tail, bool(table[0] == 0 and not (np.diff(table) < 0).any() and 0 <= tail <= size - data)
