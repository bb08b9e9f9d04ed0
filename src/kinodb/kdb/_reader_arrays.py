"""The array reads of a `kinodb.kdb.reader.Database`: per-array readers, tables, batches.

`_ArrayReads`, a base of `Database`, holds how low-dimensional arrays are found in the map:
an episode's arrays decoded from its section rows (`_slow_arrays`), the O(1) checked reader
remembered per array and layout (`_remember`), the tables that check an array's row in every
episode at once once the reads repay them (`_build_tables`, `_known_array`), and the batch
read of many episodes into one array (`gather`). `Database.read_array`, the one-array read,
goes through the readers these build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np

from kinodb.errors import CorruptFileError, EpisodeNotFoundError
from kinodb.kdb._checks import out_of_range
from kinodb.kdb._layout import KIND_CAMERA
from kinodb.kdb._sections import (
    READER_COLUMNS,
    ArrayReader,
    ArrayTable,
    Locator,
    Periodic,
    Section,
    build_table,
    checked_reader,
    gather_out,
    int_view,
    periodic_layout,
    periodic_table,
    typed_view,
    uniform_entry_of,
    uniform_table,
)
from kinodb.kdb._table import IndexBlock, schema_layout

# Array reads through the checked O(1) path before every array's row is checked in every
# episode at once, a NumPy cost that grows with the episode count: first for a file whose
# episodes share one row layout (a few contiguous comparisons for all arrays), then, if
# they do not, array by array and row by row (gathers, some ten times dearer).
_TABLE_AFTER, _TABLE_PER = 64, 256
_GATHER_AFTER, _GATHER_PER = 128, 32
# Stages of `Database._budget`: renting before the layout check; renting before the row
# by row checks; tables built (an array first seen later gets its table at once).
_RENT, _RENT_ROWS, _BUILT = 0, 1, 2

_BOOLS = {bool, np.bool_}


class _ArrayReads:
    """How a `Database` finds its episodes' low-dimensional arrays in the map, one or many.

    The base of `kinodb.kdb.reader.Database`, whose map (``_map``), index block and
    section rows (``_episode_sections``) it reads, and whose reader state (``_fast``,
    ``_checked``, ``_tables``, ``_budget``, ``_typed``) `Database._init_reads` sets up.
    """

    _ints: tuple[Any, ...] | None = None  # `READER_COLUMNS` as int views, on the first read
    _array_names: Sequence[str] = ()  # the arrays of the last episode decoded in full
    _layout: Periodic | None = None  # `periodic_layout` of the index, once a table needed it
    _codes: dict[str, int] | None = None  # section name -> its first position in `_names`
    _uniform_names: set[str]  # arrays read through the TOC's uniform entry, not yet checked against the rows
    _uniform_checked = False  # whether `_confirm_uniform` has checked the entry against the rows

    if TYPE_CHECKING:  # what these methods read of `Database`
        _path: str
        _n: int
        _size: int
        _fast: dict[str, ArrayReader]
        _checked: dict[str, tuple[Locator, ArrayReader]]
        _tables: dict[str, ArrayTable]
        _budget: list[int]
        _typed: dict[np.dtype[Any], np.ndarray]
        _verified: bool

        @property
        def _block(self) -> IndexBlock: ...
        @property
        def _decoded(self) -> IndexBlock: ...
        @property
        def _cols(self) -> Mapping[str, np.ndarray]: ...
        @property
        def _names(self) -> list[str]: ...
        def _map(self) -> np.ndarray: ...
        def _verify_index(self) -> None: ...
        def _episode_sections(self, i: int) -> list[Section]: ...
        def read_array(self, i: SupportsIndex, name: str) -> np.ndarray: ...

    def _episode_arrays(self, i: int) -> dict[str, np.ndarray]:
        names, fast = self._array_names, self._fast
        if names:
            out = {}
            for name in names:
                read = fast.get(name)
                arr = None if read is None else read(i)
                if arr is None:
                    arr = self._known_array(i, name)
                    if arr is None:
                        break
                out[name] = arr
            else:
                # Every known array was found; the episode holds no other one when its array
                # rows number as many (an episode may trade cameras for extra arrays).
                ints = self._int_views()
                start, count, kinds = ints[0][i], ints[1][i], ints[4]
                if start + count <= len(kinds):  # else the slow path names the damage
                    cams = sum(1 for r in range(start, start + count) if kinds[r] == KIND_CAMERA)
                    if len(out) + cams == count:
                        return out
        return self._slow_arrays(i)

    def _slow_arrays(self, i: int) -> dict[str, np.ndarray]:
        """Decode the rows of episode ``i``; remember where each array sat for the next reads."""
        buf, out = self._map(), {}
        sections = self._episode_sections(i)
        self._check_layout(i, sections)
        uniform = self._decoded.uniform
        if uniform is not None and self._verified and not self._uniform_checked:
            self._confirm_uniform()  # the index is verified already: its rows are checked first
            uniform = self._decoded.uniform
        for k, sec in enumerate(sections):
            if sec.kind != KIND_CAMERA:
                out[sec.name] = np.ndarray(sec.shape, sec.dtype, buffer=buf, offset=sec.offset)  # type: ignore[arg-type]
                loc = Locator.from_section(self._name_code(sec.name), k, sec)
                self._remember(loc)
                if uniform is not None and sec.name not in self._tables:
                    self._use_uniform(uniform, loc, i, sec)
        self._array_names = list(out)
        return out

    def _use_uniform(self, uniform: Mapping[str, Any], loc: Locator, i: int, sec: Section) -> None:
        """Read array ``loc`` through one strided view from now on, if the table of
        contents says every episode holds it alike (under the TOC's own checksum) and the
        rows of episode ``i`` and of its neighbour agree (a wrong start or stride shows in
        one of them; the neighbour's rows share the pages just read)."""
        if self._n < 2:  # writers record the entry for two episodes or more
            return
        start, count, frames, *_, offs, _ = self._int_views()
        j = i + 1 if i + 1 < self._n else i - 1
        try:
            other = (j, offs[start[j] + loc.k], frames[j]) if loc.k < count[j] else None
        except IndexError:  # rows past the directory: the slow path names the damage
            other = None
        if other is None:
            return
        table = uniform_table(
            uniform, loc, [(i, sec.offset, sec.shape[0]), other], self._n, self._map(), self._size
        )
        if table is not None:
            self._tables[loc.name] = table
            self._fast[loc.name] = table.read
            self._uniform_names.add(loc.name)

    def _confirm_uniform(self) -> None:
        """Once the index checksum is verified: check the table of contents' uniform entry
        against every episode's rows (what `_use_uniform` checked in two), and if they
        disagree (a faulty writer), read through the rows from now on, whose checks name
        the damage."""
        cols = self._decoded.columns
        self._layout = periodic_layout(cols)
        self._uniform_checked = True
        if uniform_entry_of(cols, self._layout) != self._decoded.uniform:
            self._decoded.uniform = None
            for name in self._uniform_names:
                del self._tables[name]
                self._fast[name] = self._checked[name][1]
        self._uniform_names.clear()

    def _check_layout(self, i: int, sections: Sequence[Section]) -> None:
        """Check episode ``i``'s arrays, as its rows lay them out, against the rest of the
        index: actions and states as wide as its action_dim and state_dim, each array's
        dtype and per-frame shape those the dataset schema records for every episode, and
        its bytes inside the episode's payload. Run where a layout is first decoded (the
        reads that follow through it check nothing more), before the index checksum is.

        Raises:
            CorruptFileError: they disagree: the index checksum fails, or (a faulty writer)
                the index disagrees with itself.
        """
        block = self._decoded  # not `_block`: its checksum is verified only where this finds disagreement
        cols = block.columns
        off = int(cols["payload_offset"][i])
        end = off + int(cols["payload_length"][i])
        for sec in sections:
            if sec.kind == KIND_CAMERA:
                continue
            dim = {"actions": "action_dim", "states": "state_dim"}.get(sec.name)
            declared = schema_layout(block.dataset, sec.name)
            if dim is not None and sec.shape[1:] != (int(cols[dim][i]),):
                said = f"is {sec.shape[1:]} per frame, but the episode's {dim} is {int(cols[dim][i])}"
            elif declared is not None and (sec.dtype, sec.shape[1:]) != declared:
                said = (
                    f"is {sec.dtype} {sec.shape[1:]} per frame, but the dataset schema says every episode holds it "
                    f"as {declared[0]} {declared[1]}"
                )
            elif not off <= sec.offset <= sec.offset + sec.nbytes <= end:
                said = f"at byte offset {sec.offset} lies outside the episode's payload (bytes {off}..{end})"
            else:
                continue
            self._verify_index()  # a damaged index fails its checksum, which says so
            raise CorruptFileError(
                f"{self._path}: episode {i}: array {sec.name!r} {said}: the index disagrees with itself (it is "
                f"damaged); run kino validate {self._path}"
            )

    def _name_code(self, name: str) -> int:
        """The position of section name ``name`` in the index's name list (its first)."""
        codes = self._codes
        if codes is None:
            codes = {}
            for j, n in enumerate(self._names):
                codes.setdefault(n, j)
            self._codes = codes
        return codes[name]

    def _remember(self, loc: Locator) -> None:
        """Read array ``loc.name`` through an O(1) checked reader of this layout from now on."""
        found = self._checked.get(loc.name)
        if found is not None and found[0] == loc:
            return
        flat = self._typed.get(loc.dtype)
        if flat is None:
            flat = self._typed[loc.dtype] = typed_view(self._map(), loc.dtype)
        read = checked_reader(self._int_views(), loc, flat, self._size, self._path, self._budget)
        self._checked[loc.name] = (loc, read)
        if loc.name not in self._tables:
            self._fast[loc.name] = read
            if self._budget[1] == _BUILT:
                self._build_tables([loc.name], rows=True)

    def _build_tables(self, names: Sequence[str] | None = None, *, rows: bool = False) -> None:
        """Check each array's usual row in every episode at once; read through the tables.

        ``names`` defaults to every array seen so far (and then moves ``_budget`` on a
        stage). Row by row only if ``rows``, or once the reads have repaid that dearer check.
        """
        budget, cols, buf = self._budget, self._cols, self._map()
        if self._layout is None:
            self._layout = periodic_layout(cols)
        rows = rows or budget[1] != _RENT
        done = True
        for name in list(self._checked) if names is None else names:
            if name in self._tables:
                continue
            loc = self._checked[name][0]
            table = periodic_table(cols, loc, self._layout, buf, self._size)
            if table is None and rows:
                table = build_table(cols, loc, buf, self._size)
            if table is None:
                done = False
            else:
                self._tables[name] = table
                self._fast[name] = table.read
        if names is None:
            budget[:] = [1 << 30, _BUILT] if done else [_GATHER_AFTER + self._n // _GATHER_PER, _RENT_ROWS]

    def _int_views(self) -> tuple[Any, ...]:
        ints = self._ints
        if ints is None:
            c = self._decoded.columns  # the checked O(1) reads may come before the checksum
            view = getattr(c, "ints", None)  # a v1 index maps them without NumPy arrays
            ints = self._ints = tuple(view(k) if view else int_view(c[k]) for k in READER_COLUMNS)
        return ints

    def _known_array(self, i: int, name: str) -> np.ndarray | None:
        """Array ``name`` of episode ``i`` through its table or its checked reader (building
        the table once the reads repay it), or None if the episode holds it elsewhere."""
        table = self._tables.get(name)
        if table is not None:
            view = table.read(i)
            if view is not None:
                return view
        found = self._checked.get(name)
        if found is None:
            return None
        if self._budget[0] <= 0:  # enough reads to repay checking every episode
            self._build_tables()
            table = self._tables.get(name)
            view = None if table is None else table.read(i)
            if view is not None:
                return view
        return found[1](i)

    def gather(self, name: str, episodes: Any = None, *, out: np.ndarray | None = None) -> np.ndarray:
        """Array ``name`` of many episodes, concatenated along frames into one array.

        The batch read a data loader wants: one copy from the map into ``out`` (or a new
        array) of shape ``(sum of frames, *dims)``, episodes in the order given; split it
        with the episodes' ``num_frames``. ``episodes`` is indices or a boolean mask over
        all episodes (None: all); negative indices count from the end. The selected episodes
        must share the array's dtype and trailing dims; ``out``, when given, must be C-contiguous.

        Example:
            >>> acts = db.gather("actions", db.query("success = true"))

        Raises:
            EpisodeNotFoundError: an index is out of range or not an int.
            NameNotFoundError: an episode has no array ``name`` (a KeyError).
            ValueError: the episodes disagree on dtype or dims, a mask has the wrong length,
                or ``out`` has the wrong shape or is not C-contiguous.
            CorruptFileError: the index is damaged (its checksum fails, an array does not
                fit the file, or an episode's array contradicts the dataset schema).
        """
        self._verify_index()
        idx = np.arange(self._n) if episodes is None else self._indices(episodes)
        if len(idx) and (idx.min() < -self._n or idx.max() >= self._n):
            raise EpisodeNotFoundError(
                out_of_range(int(idx[(idx < -self._n) | (idx >= self._n)][0]), self._n)
            )
        if len(idx) and idx.min() < 0:
            idx = np.where(idx < 0, idx + self._n, idx)  # as a list counts them, from the end
        if not len(idx):
            raise ValueError("gather needs at least one episode")
        first = self.read_array(int(idx[0]), name)
        # Checking every episode's offsets is O(episodes): worth it for large batches only.
        if name not in self._tables and name in self._checked and len(idx) * 8 >= self._n:
            self._build_tables([name], rows=True)
        strided = self._strided(name, first)
        if strided is not None:  # every episode alike, at a constant stride, checked inside the file
            out = gather_out(out, (len(idx) * first.shape[0], *first.shape[1:]), first.dtype)
            rows = out.reshape(-1).view(np.uint8).view(strided.dtype)
            if episodes is None:
                rows[...] = strided
            else:
                rows[...] = strided[idx]  # fancy indexing walks the strides; take() would copy all first
            return out
        # Every view is made (and its extent checked against the file) before the output is
        # sized from them: a damaged frame count cannot make it allocate what the file lacks.
        views = [first, *(self.read_array(i, name) for i in idx[1:].tolist())]
        for i, src in zip(idx.tolist(), views, strict=True):
            if src.dtype != first.dtype or src.shape[1:] != first.shape[1:]:
                self._unlike(name, (int(idx[0]), first), (i, src))
        out = gather_out(out, (sum(v.shape[0] for v in views), *first.shape[1:]), first.dtype)
        outb, pos = out.reshape(-1).view(np.uint8), 0
        for src in views:
            # A format 0.1 file's 1-D arrays (rewards) are strided views into interleaved
            # records: their bytes are copied out contiguously first (a no-op otherwise).
            outb[pos : pos + src.nbytes] = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
            pos += src.nbytes
        return out

    def _unlike(self, name: str, a: tuple[int, np.ndarray], b: tuple[int, np.ndarray]) -> None:
        """Raise for episodes ``a`` and ``b`` holding array ``name`` differently: damage when
        the dataset schema says every episode holds it one way, else a ValueError."""
        declared = schema_layout(self._block.dataset, name)
        for i, arr in (a, b):
            if declared is not None and (arr.dtype, arr.shape[1:]) != declared:
                raise CorruptFileError(
                    f"{self._path}: episode {i}: array {name!r} is {arr.dtype} {arr.shape[1:]} per frame, "
                    f"but the dataset schema says every episode holds it as {declared[0]} {declared[1]}: "
                    f"the index disagrees with itself (it is damaged); run kino validate {self._path}"
                )
        (i, x), (j, y) = a, b
        raise ValueError(
            f"{self._path}: episode {j} holds {name} as {y.dtype} {y.shape[1:]} per frame, episode {i} as "
            f"{x.dtype} {x.shape[1:]}; gather stacks them and needs them alike: gather the two kinds apart "
            "(select the episodes of each), or read them one by one with read_array"
        )

    def _indices(self, episodes: Any) -> np.ndarray:
        """Episode indices from ints or a boolean mask over every episode, as int64."""
        arr = np.asarray(episodes)
        if arr.dtype == np.bool_:
            if arr.shape != (self._n,):
                raise ValueError(
                    f"a boolean mask of episodes needs one entry per episode ({self._n}), "
                    f"got shape {arr.shape}"
                )
            return np.flatnonzero(arr)
        if (
            arr.dtype.kind in "iu"
            and isinstance(episodes, (list, tuple))
            and _BOOLS & set(map(type, episodes))
        ):
            raise EpisodeNotFoundError(  # NumPy would read True and False as episodes 1 and 0
                "episode indices must be ints or a boolean mask, got a list mixing bools and ints; pass "
                "the indices alone, or one bool per episode"
            )
        if arr.size and arr.dtype.kind not in "iu":
            raise EpisodeNotFoundError(
                f"episode indices must be ints or a boolean mask, got {arr.dtype} values "
                f"(first {arr.reshape(-1)[0]!r})"
            )
        flat = arr.reshape(-1)
        if flat.size and flat.dtype.kind == "u" and int(flat.max()) >= self._n:  # int64 could wrap it
            raise EpisodeNotFoundError(out_of_range(int(flat[flat >= self._n][0]), self._n))
        return flat.astype(np.int64)

    def _strided(self, name: str, first: np.ndarray) -> np.ndarray | None:
        """One opaque item per episode over array ``name`` if every episode holds it alike."""
        table = self._tables.get(name)
        if table is None or table.loc.trail != first.shape[1:] or table.loc.dtype != first.dtype:
            return None
        return table.strided
