"""Read ``.kdb`` files: memory-mapped, zero-copy NumPy views over each section."""

from __future__ import annotations

import contextlib
import copy
import mmap
import os
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np

from kinodb.errors import (
    CorruptFileError,
    EpisodeNotFoundError,
    FormatError,
    FrameRangeError,
    KinodbError,
    NameNotFoundError,
    UnsupportedVersionError,
)
from kinodb.kdb import _codecs
from kinodb.kdb._checks import as_index, episode_index, out_of_range
from kinodb.kdb._files import advise_random, human_bytes, map_file, will_need
from kinodb.kdb._layout import (
    DATA_START,
    INDEX_HEAD,
    KIND_CAMERA,
    SLOT_OFFSETS,
    SLOT_SIZE,
    Commit,
    LegacyFormat,
    parse_slot,
    read_preamble,
)
from kinodb.kdb._sections import (
    READER_COLUMNS,
    ArrayReader,
    ArrayTable,
    Locator,
    Periodic,
    Section,
    build_table,
    checked_reader,
    episode_sections,
    gather_out,
    int_view,
    periodic_layout,
    periodic_table,
    typed_view,
)
from kinodb.kdb._stale import stale_stats
from kinodb.kdb._table import (
    ABSENT,
    EXTRA_ABSENT,
    EXTRA_VALUE,
    Columns,
    IndexBlock,
    check_counts,
    check_frames,
    check_index_crc,
    check_index_head,
    decode_index,
    schema_layout,
)

META_FIELDS = (
    "episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim",
    "success", "total_reward",
)  # fmt: skip
# The index's unsigned count, id and dim columns, which `Database.episodes` gives as int64.
_INT_FIELDS = ("episode_id", "num_frames", "action_dim", "state_dim")
# Array reads through the checked O(1) path before every array's row is checked in every
# episode at once, a NumPy cost that grows with the episode count: first for a file whose
# episodes share one row layout (a few contiguous comparisons for all arrays), then, if
# they do not, array by array and row by row (gathers, some ten times dearer).
_TABLE_AFTER, _TABLE_PER = 64, 256
_GATHER_AFTER, _GATHER_PER = 128, 32
# Stages of `Database._budget`: renting before the layout check; renting before the row
# by row checks; tables built (an array first seen later gets its table at once).
_RENT, _RENT_ROWS, _BUILT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Camera:
    """Where one camera's frames of one episode live."""

    codec: str
    shape: tuple[int, int, int, int]  # (T, H, W, C)
    data_offset: int
    frame_offsets: np.ndarray  # (T + 1,) byte offsets relative to data_offset


class Database:
    """A read-only, memory-mapped ``.kdb`` file.

    Sized, indexable (``db[i]`` is `read_episode`), iterable over episodes, a context
    manager, and picklable: a DataLoader worker re-opens the file by its path and maps it
    itself, reading the commit the pickled database read (see `__reduce__`). Episode
    indices are ints (Python or NumPy), negative ones counting from the end as in a list.

    Example:
        >>> db = kinodb.open("demo.kdb")
        >>> ep = db.read_episode(0)
        >>> ep["actions"].shape
        (4, 7)
    """

    _index: IndexBlock | None = None  # the decoded index block, once something needed it
    _verified = False  # the index block matched the commit record's checksum
    _ints: tuple[Any, ...] | None = None  # `READER_COLUMNS` as int views, on the first read
    _array_names: Sequence[str] = ()  # the arrays of the last episode decoded in full
    _layout: Periodic | None = None  # `periodic_layout` of the index, once a table needed it
    _codes: dict[str, int] | None = None  # section name -> its first position in `_names`

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Opening reads the header, the commit records and the index head, nothing whose
        # size grows with the file; the index's checksum is verified, and its table of
        # contents and columns decoded, on first use (`_block`), where damage raises
        # CorruptFileError. Only `read_array`'s first O(1) reads come before that.
        self._path = path = os.fspath(path)
        self._mm: mmap.mmap | None = None
        # Every view is made over this array, which holds a buffer export of the map:
        # the map cannot be closed under a live view (np.ndarray(buffer=mmap) alone
        # does not pin it, and touching such a view after close would crash).
        self._buf: np.ndarray | None = None
        mm = map_file(path)
        try:
            size = len(mm)
            (major, minor), self._slot, self._commit = read_preamble(mm[:DATA_START], path, size)
            self._toc_len = check_index_head(mm, self._commit.index_offset, self._commit.index_length, path)
            check_counts(self._commit, size, path)
        except BaseException:
            mm.close()
            raise
        self._mm, self._size = mm, size
        self._version = f"{major}.{minor}"
        self._n: int = self._commit.num_episodes
        self._init_reads()

    def _init_reads(self) -> None:
        # Per array: the fastest reader so far, the checked reader of its latest layout,
        # and the table once built; the checked readers count their reads down in
        # ``_budget`` ([reads left, stage]) until tables repay their cost.
        self._fast: dict[str, ArrayReader] = {}
        self._checked: dict[str, tuple[Locator, ArrayReader]] = {}
        self._tables: dict[str, ArrayTable] = {}
        self._budget = [_TABLE_AFTER + self._n // _TABLE_PER, _RENT]
        self._typed: dict[np.dtype[Any], np.ndarray] = {}  # `typed_view`s of the map
        self._ints = None
        self._int_table: dict[str, np.ndarray] | None = None  # `episodes`' int64 columns
        self._array_names = ()

    def _load(self, block: IndexBlock) -> None:
        """Use an index block built in memory (readers of other format versions, which
        store no index checksum)."""
        self._index, self._verified = block, True
        self._n = len(block.columns["episode_id"])
        if self._n != self._commit.num_episodes:
            raise CorruptFileError(
                f"{self._path}: commit record says {self._commit.num_episodes} episodes, index has {self._n}"
            )
        self._init_reads()

    @property
    def _block(self) -> IndexBlock:
        """The index block, its checksum verified the first time (every O(episodes) use)."""
        if not self._verified:
            self._verify_index()
        return self._decoded

    def _verify_index(self) -> None:
        """Check the index block against the commit record's CRC-32 (once per open file).

        Raises:
            CorruptFileError: the checksum does not match (`check_index_crc`), or the
                frame counts are impossible (`check_frames`).
        """
        if not self._verified:
            c = self._commit
            check_index_crc(self._map()[c.index_offset : c.end].data, c.index_crc, c.index_offset, self._path)
            check_frames(self._decoded.columns["num_frames"], self._size, c.num_frames, self._path)
            self._verified = True

    @property
    def _decoded(self) -> IndexBlock:
        """The index block without its checksum verified: the O(1) reads before `_block`."""
        block = self._index
        if block is None:
            c, buf, mm = self._commit, self._map(), self._mm
            at = c.index_offset + INDEX_HEAD.size  # the head was checked at open
            toc = None if mm is None else mm[at : at + self._toc_len]
            block = decode_index(buf, c.index_offset, c.index_length, self._path, toc_bytes=toc)
            cols = block.columns
            n = cols.sizes[0] if isinstance(cols, Columns) and cols.sizes else len(cols["episode_id"])
            if n != c.num_episodes:
                raise CorruptFileError(
                    f"{self._path}: commit record says {c.num_episodes} episodes, index has {n}"
                )
            self._index = block
        return block

    @property
    def _cols(self) -> Mapping[str, np.ndarray]:
        return self._block.columns

    @property
    def _names(self) -> list[str]:
        return self._decoded.section_names

    # -- file-level -----------------------------------------------------------------------

    def path(self) -> str:
        """The file path this database was opened from."""
        return self._path

    def version(self) -> str:
        """The file's format version from its header, e.g. ``"1.0"``."""
        return self._version

    def num_episodes(self) -> int:
        """Number of episodes."""
        return self._n

    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return int(self._commit.num_frames)

    def schema(self) -> dict[str, Any]:
        """The dataset schema: dims, dtypes, named components, cameras, extra arrays."""
        return copy.deepcopy(self._block.dataset.get("schema", {}))

    def metadata(self) -> dict[str, Any]:
        """Free-form dataset metadata given to the writer."""
        return dict(self._block.dataset.get("metadata", {}))

    def dataset_info(self) -> dict[str, Any]:
        """The whole dataset-level JSON block (format, writer, creation time, source, ...)."""
        return copy.deepcopy(self._block.dataset)

    def stats(self, *, allow_stale: bool = False) -> dict[str, Any]:
        """The normalisation statistics ``kino stats`` stored, as float64 NumPy arrays.

        Returns the stored block (``version``, ``computed``, ``num_frames``, ``arrays``,
        ``skipped``) with each array's ``mean``, ``std``, ``min``, ``max``, ``q01`` and
        ``q99`` turned into flat float64 arrays (NaN where a feature had no finite value).

        Example:
            >>> mean = db.stats()["arrays"]["actions"]["mean"]

        Raises:
            UnsupportedVersionError: the file is a legacy format 0.x file.
            FormatError: no statistics are stored, or the file's episodes changed after
                they were computed (pass ``allow_stale=True`` to get them anyway, with a warning).
        """
        path = self._path
        if self.version().startswith("0."):
            raise UnsupportedVersionError(
                f"{path} is a format {self.version()} file, which holds no statistics; convert it "
                f"first: kino upgrade {path} NEW.kdb, then: kino stats NEW.kdb"
            )
        stored = self._block.dataset.get("stats")
        if not isinstance(stored, dict) or not isinstance(stored.get("arrays"), dict):
            raise FormatError(f"no statistics stored in {path}; run: kino stats {path}")
        out = copy.deepcopy(stored)
        why = stale_stats(out, self.num_frames(), self._n)
        if why is not None:
            msg = f"the statistics stored in {path} are stale: {why}; run: kino stats {path}"
            if not allow_stale:
                raise FormatError(msg)
            warnings.warn(msg, stacklevel=2)
            out["stale"] = True
        for entry in out["arrays"].values():
            for key in ("mean", "std", "min", "max", "q01", "q99"):
                if key in entry:
                    entry[key] = np.array([np.nan if v is None else v for v in entry[key]], np.float64)
        return out

    def summary(self) -> str:
        """A short human-readable description."""
        info = self._block.dataset
        emb = sorted(set(self._block.strings["embodiment"].dictionary)) if self._n else []
        succ = self._cols["success"]
        known = int((succ >= 0).sum())
        cams = sorted(info.get("schema", {}).get("cameras", {}))
        lines = [
            f"kinodb {self.version()} file {self._path}",
            f"  episodes: {self._n}, frames: {self.num_frames()}, size: {human_bytes(self._size)}",
            f"  embodiments: {', '.join(emb) or '-'}",
            f"  success: {int((succ == 1).sum())}/{known} known" + (f" ({100 * (succ == 1).sum() / known:.1f}%)" if known else ""),
            f"  cameras: {', '.join(cams) or '-'}",
        ]  # fmt: skip
        if info.get("source_format"):
            lines.append(f"  source format: {info['source_format']}")
        return "\n".join(lines)

    # -- metadata -------------------------------------------------------------------------

    def _check(self, i: SupportsIndex) -> int:
        """Episode index ``i`` as a position ``0..n-1`` (`episode_index`)."""
        if type(i) is int and 0 <= i < self._n:
            return i
        return episode_index(i, self._n)

    def read_meta(self, i: SupportsIndex) -> dict[str, Any]:
        """Metadata of episode ``i``: the built-in fields plus its extra fields.

        An extra field appears under its name, or as ``"extra.NAME"`` when its name is a
        built-in one or itself starts with ``extra.`` (which files written before kinodb
        refused such names can hold), so every key names one value (`extra_key`).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
        """
        i = self._check(i)
        c = self._cols
        succ = int(c["success"][i])
        if not -1 <= succ <= 1:
            raise CorruptFileError(f"{self._path}: episode {i}: success code {succ} is not -1, 0 or 1")
        meta: dict[str, Any] = {
            "episode_id": int(c["episode_id"][i]),
            "embodiment": self._block.strings["embodiment"][i],
            "task": self._block.strings["task"][i],
            "num_frames": int(c["num_frames"][i]),
            "fps": float(c["fps"][i]),
            "action_dim": int(c["action_dim"][i]),
            "state_dim": int(c["state_dim"][i]),
            "success": None if succ < 0 else bool(succ),
            "total_reward": float(c["total_reward"][i]) if c["total_reward.valid"][i] else None,
        }
        for name, value in self._extra_fields(i).items():
            meta[extra_key(name)] = value
        return meta

    def _extra_fields(self, i: int) -> dict[str, Any]:
        """Episode ``i``'s extra fields by their stored names (``i`` already checked)."""
        out = {}
        for name, col in self._block.extras.items():
            value = col.get(i)
            if value is not ABSENT:
                out[name] = value
        return out

    def _meta_columns(self, idx: np.ndarray) -> list[tuple[str, list[Any], np.ndarray | None]] | None:
        """`read_meta` of the episodes at the checked positions ``idx``, column by column.

        Per key, in `read_meta`'s order: the values, and where the episodes hold that key
        (None: all of them). None where `read_meta` would raise for one of them, or the
        columns are not of the usual types: `read_meta` then names the damage. The commands
        that list many episodes read them so, at NumPy speed.
        """
        try:
            c, block = self._cols, self._block
            kinds = {k: "iu" for k in _INT_FIELDS} | {"fps": "f", "total_reward": "f", "success": "i"}
            if any(c[k].dtype.kind not in want for k, want in kinds.items()):
                return None
            succ = c["success"][idx].astype(np.int64)
            strings = [
                _coded(block.strings[k].dictionary, block.strings[k].codes[idx])
                for k in ("embodiment", "task")
            ]
            if (len(succ) and not -1 <= succ.min() <= succ.max() <= 1) or None in strings:
                return None
            reward = np.array(c["total_reward"][idx], dtype=object)
            reward[c["total_reward.valid"][idx] == 0] = None
            values = (c["episode_id"][idx].tolist(), *strings, c["num_frames"][idx].tolist(), c["fps"][idx].tolist(),
                      c["action_dim"][idx].tolist(), c["state_dim"][idx].tolist(),
                      np.array([None, False, True], dtype=object)[succ + 1].tolist(), reward.tolist())  # fmt: skip
            out: list[tuple[str, list[Any], np.ndarray | None]] = [
                (k, v, None) for k, v in zip(META_FIELDS, values, strict=True)
            ]
            for name, col in block.extras.items():
                state = col.state[idx]
                has = state == EXTRA_VALUE
                got = np.full(len(idx), None, dtype=object)
                if col.kind == "str" and col._strings is not None:
                    text = _coded(col._strings.dictionary, col._strings.codes[idx][has])
                    if text is None:
                        return None
                    got[has] = text
                elif col.kind in ("int", "float", "bool"):
                    stored = col._cols["values"][idx][has]
                    got[has] = stored.astype(bool) if col.kind == "bool" else stored
                else:  # JSON, decoded one by one (or a kind that holds no values: get raises)
                    for k in np.flatnonzero(has).tolist():
                        got[k] = col.get(int(idx[k]))
                held = state != EXTRA_ABSENT
                out.append((extra_key(name), got.tolist(), None if held.all() else held))
        except (KinodbError, LookupError, ValueError, TypeError):
            return None
        return out

    def episodes(self) -> dict[str, np.ndarray]:
        """The metadata table: one NumPy array per column, one entry per episode.

        ``episode_id``, ``num_frames``, ``action_dim`` and ``state_dim`` are int64 (read-only),
        so arithmetic on them does not wrap around as unsigned integers would; ``success`` is
        an object array of True/False/None; ``total_reward`` is float64 with NaN where
        unknown; extra fields are named as in `read_meta`.
        """
        c = self._cols
        ints = self._int_table
        if ints is None:
            ints = self._int_table = {name: _int64(c[name]) for name in _INT_FIELDS}
        codes = c["success"].astype(np.int64) + 1
        if len(codes) and not 0 <= codes.min() <= codes.max() <= 2:
            raise CorruptFileError(f"{self._path}: success column holds codes other than -1, 0 and 1")
        succ = np.array([None, False, True], dtype=object)[codes]
        table: dict[str, np.ndarray] = {
            "episode_id": ints["episode_id"],
            "embodiment": self._block.strings["embodiment"].to_numpy(),
            "task": self._block.strings["task"].to_numpy(),
            "num_frames": ints["num_frames"],
            "fps": c["fps"],
            "action_dim": ints["action_dim"],
            "state_dim": ints["state_dim"],
            "success": succ,
            "total_reward": np.where(c["total_reward.valid"].astype(bool), c["total_reward"], np.nan),
        }
        for name, col in self._block.extras.items():
            table[extra_key(name)] = col.to_numpy()
        return table

    def query(self, kql: str, *, limit: int | None = None, absent: Collection[str] = ()) -> np.ndarray:
        """Positions of the episodes matching a KQL query, ascending (int64).

        ``absent``: extra fields other files of the same query hold, null here when this
        file has none of them (see `kinodb.kql.query`).

        Example:
            >>> db.query("embodiment = 'franka' AND success = true AND num_frames > 50")

        Raises:
            QuerySyntaxError: the query does not parse or compares incompatible types.
        """
        from kinodb.kql import query  # deferred: kql builds on kdb, and this is its entry point

        return query(self, kql, limit=limit, absent=absent)

    # -- sections -------------------------------------------------------------------------

    def _map(self) -> np.ndarray:
        buf = self._buf
        if buf is None:
            # np.ndarray(buffer=None) would silently allocate garbage instead of failing.
            if self._mm is None:
                raise ValueError(f"{self._path}: the database is closed")
            buf = self._buf = np.frombuffer(self._mm, np.uint8)
        return buf

    def _advise_random(self) -> bool:
        """Tell the kernel that the payloads are read at random (frame windows, a server):
        `advise_random` over bytes ``0 .. index_offset``; the index block keeps read-ahead
        (it is read in one pass). Returns whether the advice was given."""
        return self._mm is not None and advise_random(self._mm, min(self._commit.index_offset, self._size))

    def _will_need(self, start: int, stop: int) -> None:
        """Start reading bytes ``start:stop`` into the page cache without waiting (`will_need`)."""
        if self._mm is not None:
            will_need(self._mm, start, min(stop, self._size))

    def _episode_sections(self, i: int) -> list[Section]:
        return episode_sections(self._int_views(), self._names, i, self._size, self._path)

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
        for k, sec in enumerate(sections):
            if sec.kind != KIND_CAMERA:
                out[sec.name] = np.ndarray(sec.shape, sec.dtype, buffer=buf, offset=sec.offset)  # type: ignore[arg-type]
                self._remember(Locator.from_section(self._name_code(sec.name), k, sec))
        self._array_names = list(out)
        return out

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

    def _episode_cameras(self, i: int) -> dict[str, Camera]:
        out = {}
        for sec in self._episode_sections(i):
            if sec.kind == KIND_CAMERA:
                T = sec.shape[0]
                table = np.ndarray((T + 1,), "<u8", buffer=self._map(), offset=sec.offset)  # type: ignore[arg-type]
                data = sec.offset + sec.nbytes
                if (
                    table[0] != 0
                    or (np.diff(table.astype(np.int64)) < 0).any()
                    or data + int(table[-1]) > self._size
                ):
                    raise CorruptFileError(
                        f"{self._path}: episode {i}, camera {sec.name!r}: frame offset table at byte "
                        f"offset {sec.offset} is damaged"
                    )
                out[sec.name] = Camera(sec.codec, sec.shape, data, table)  # type: ignore[arg-type]
        return out

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

    def read_array(self, i: SupportsIndex, name: str) -> np.ndarray:
        """One low-dimensional array of episode ``i`` (e.g. ``"actions"``), zero-copy.

        The cheapest read: no metadata, no dict, one view over the map, O(1) in the
        number of episodes.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
            NameNotFoundError: the episode has no array called ``name`` (a KeyError).
        """
        read = self._fast.get(name)
        if read is not None and type(i) is int and 0 <= i < self._n:
            view = read(i)
            if view is not None:
                return view
        return self._read_array(i, name)

    def _read_array(self, i: SupportsIndex, name: str) -> np.ndarray:
        """`read_array` off its fast path: the first read, a NumPy or negative index, a
        changed layout."""
        i = self._check(i)
        self._map()  # a closed database raises here
        view = self._known_array(i, name)
        if view is not None:
            return view
        # First read of this array, or an episode laid out differently: decode its rows.
        arrays = self._slow_arrays(i)
        if name not in arrays:
            raise NameNotFoundError(
                f"{self._path}: episode {i} has no array {name!r}; it has {sorted(arrays)}"
            )
        return arrays[name]

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
            f"episode {j}: {name} is {y.dtype} {y.shape}; episode {i} has "
            f"{x.dtype} {x.shape[1:]} per frame; gather needs them alike"
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

    def cameras(self, i: SupportsIndex) -> dict[str, dict[str, Any]]:
        """Cameras of episode ``i``: codec and (T, H, W, C) shape per camera."""
        i = self._check(i)
        self._verify_index()
        return {k: {"codec": c.codec, "shape": c.shape} for k, c in self._episode_cameras(i).items()}

    # -- episodes -------------------------------------------------------------------------

    def read_episode_actions_only(self, i: SupportsIndex) -> dict[str, Any]:
        """Episode ``i`` without images: meta plus zero-copy low-dimensional arrays."""
        i = self._check(i)
        out: dict[str, Any] = {"meta": self.read_meta(i)}
        out.update(self._episode_arrays(i))
        return out

    def read_episode(self, i: SupportsIndex) -> dict[str, Any]:
        """Episode ``i``: meta, arrays, and ``images`` {camera: uint8 (T, H, W, C)}.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
            CorruptFileError: a frame fails to decode (names episode, camera and frame).
        """
        i = self._check(i)
        out = self.read_episode_actions_only(i)
        out["images"] = {
            name: self._decode(i, name, cam, 0, cam.shape[0])
            for name, cam in self._episode_cameras(i).items()
        }
        return out

    def read_frames(
        self,
        i: SupportsIndex,
        start: SupportsIndex,
        stop: SupportsIndex,
        *,
        cameras: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Frames ``start:stop`` of episode ``i``, decoding only those frames.

        Returns arrays sliced to the window (zero-copy) and ``images`` for the chosen
        cameras (all by default; a str is one camera's name).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
            FrameRangeError: ``start`` or ``stop`` is not an int, or the window is empty
                or outside the episode.
            NameNotFoundError: a requested camera does not exist (a KeyError).
        """
        i = self._check(i)
        start, stop = as_index(start, "start", FrameRangeError), as_index(stop, "stop", FrameRangeError)
        T = int(self._cols["num_frames"][i])
        if not (0 <= start < stop <= T):
            raise FrameRangeError(
                f"{self._path}: frames {start}:{stop} outside episode {i}, which has frames 0:{T}"
            )
        out: dict[str, Any] = {k: v[start:stop] for k, v in self._episode_arrays(i).items()}
        cams = self._episode_cameras(i)
        chosen = list(cams) if cameras is None else [cameras] if isinstance(cameras, str) else list(cameras)
        for name in chosen:
            if name not in cams:
                raise NameNotFoundError(
                    f"{self._path}: episode {i} has no camera {name!r}; it has {sorted(cams)}"
                )
        out["images"] = {name: self._decode(i, name, cams[name], start, stop) for name in chosen}
        return out

    def read_image_bytes(self, i: SupportsIndex, camera: str, frame: SupportsIndex) -> bytes:
        """The stored bytes of one frame (JPEG/PNG as encoded; raw pixels for ``raw``).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
            NameNotFoundError: the episode has no camera ``camera`` (a KeyError).
            FrameRangeError: ``frame`` is not an int or lies outside the episode.
        """
        i = self._check(i)
        frame = as_index(frame, "frame", FrameRangeError)
        self._verify_index()
        cams = self._episode_cameras(i)
        if camera not in cams:
            raise NameNotFoundError(
                f"{self._path}: episode {i} has no camera {camera!r}; it has {sorted(cams)}"
            )
        cam = cams[camera]
        if not 0 <= frame < cam.shape[0]:
            raise FrameRangeError(
                f"{self._path}: frame {frame} outside episode {i}, which has frames 0:{cam.shape[0]}"
            )
        return bytes(self._frame_bytes(cam, frame))

    def _frame_bytes(self, cam: Camera, t: int) -> memoryview:
        a, b = int(cam.frame_offsets[t]), int(cam.frame_offsets[t + 1])
        return self._map()[cam.data_offset + a : cam.data_offset + b].data

    def _decode(self, i: int, name: str, cam: Camera, start: int, stop: int) -> np.ndarray:
        _, h, w, c = cam.shape
        if cam.codec == "raw":
            frame = h * w * c
            if int(cam.frame_offsets[-1]) != frame * cam.shape[0]:
                raise CorruptFileError(
                    f"{self._path}: episode {i}, camera {name!r}: raw frames have the wrong size"
                )
            return np.ndarray((stop - start, h, w, c), np.uint8, buffer=self._map(),  # type: ignore[arg-type, no-any-return]
                              offset=cam.data_offset + start * frame)  # fmt: skip
        blobs = [self._frame_bytes(cam, t) for t in range(start, stop)]
        return _codecs.decode(blobs, (h, w, c), f"{self._path}: episode {i}, camera {name!r}", first=start)

    # -- protocols ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: SupportsIndex) -> dict[str, Any]:
        return self.read_episode(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            yield self.read_episode(i)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the map. Arrays already returned stay valid (they hold the map)."""
        mm, self._mm, self._buf = self._mm, None, None
        release = getattr(self._index.columns, "release", None) if self._index is not None else None
        if release is not None:
            release()
        self._init_reads()  # the readers hold the map
        if mm is not None:
            with contextlib.suppress(BufferError):  # views still reference it; it closes with the last one
                mm.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The identity of the file at the path now: a file replaced before this is caught by
        # the commit comparison in `_pin`, which covers the index checksum too.
        c = self._commit
        commit = (c.generation, c.index_offset, c.index_length, c.num_episodes, c.num_frames, c.index_crc)
        return (_restore, (self._path, _identity(self._path), commit))

    def _pin(self, identity: tuple[int, int] | None, parent: Commit) -> None:
        """Read commit ``parent``, the one the database this one was unpickled from read.

        The same commit record (the index checksum in it covers the payloads' checksums)
        reads the same bytes. An append leaves the older commits' index blocks in place
        (docs/format.md, "Commit protocol"), so a file only appended to since is read at
        ``parent``: the copy sees the episodes its parent saw, not the ones added since.

        Raises:
            KinodbError: the file was replaced or rewritten since: it no longer holds ``parent``.
        """
        now = self._commit
        same_file = identity is not None and _identity(self._path) == identity
        if now == parent and (same_file or parent.generation):  # a 0.x file's record holds no checksum
            return
        if not same_file:
            raise self._moved(parent, "replaced")
        if (
            not parent.generation  # a 0.x file: kinodb never appends to one
            or now.generation <= parent.generation
            or now.num_episodes < parent.num_episodes
            or now.num_frames < parent.num_frames
            or parent.end > now.index_offset
        ):
            raise self._moved(parent, "rewritten")
        try:
            toc_len = check_index_head(self._map(), parent.index_offset, parent.index_length, self._path)
            check_counts(parent, self._size, self._path)
            self._commit, self._toc_len, self._n = parent, toc_len, parent.num_episodes
            self._index, self._verified, self._codes, self._layout = None, False, None, None
            self._init_reads()
            self._verify_index()  # now, not on first use: no commit record vouches for this block
        except CorruptFileError:
            raise self._moved(parent, "rewritten") from None
        slots = [parse_slot(self._map()[at : at + SLOT_SIZE].tobytes()) for at in SLOT_OFFSETS]
        self._slot = slots.index(parent) if parent in slots else -1

    def _moved(self, parent: Commit, how: str) -> KinodbError:
        def state(c: Commit) -> str:  # a 0.x file has no commits: generation 0
            return f"{c.num_episodes} episodes" + (f" at commit {c.generation}" if c.generation else "")

        what = (
            f"was replaced by another file since the Database this copy was pickled from opened it "
            f"({state(parent)})"
            if how == "replaced"
            else f"was rewritten or replaced since the Database this copy was pickled from opened it: it no "
            f"longer holds the commit that one read ({state(parent)}; it holds {state(self._commit)})"
        )
        return KinodbError(
            f"{self._path} {what}, so the copy would read other data. Open the file again (kinodb.open) "
            "and pickle that Database instead"
        )

    def __repr__(self) -> str:
        return f"<kinodb.Database {self._path!r} ({self._n} episodes, format {self.version()})>"


def extra_key(name: str) -> str:
    """The key of extra field ``name`` in `Database.read_meta`: ``extra.NAME`` when the name
    is a built-in one or starts with ``extra.`` itself, else the name."""
    return f"extra.{name}" if name in META_FIELDS or name.startswith("extra.") else name


def _coded(dictionary: list[str], codes: np.ndarray) -> list[str] | None:
    """The strings of dictionary ``codes``, or None if a code lies outside the dictionary."""
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(dictionary)):
        return None
    return list(map(dictionary.__getitem__, codes.tolist()))


def _int64(col: np.ndarray) -> np.ndarray:
    """An unsigned index column as read-only int64 (kept as it is if a value exceeds int64,
    which no kinodb writer stores)."""
    if len(col) and col.dtype.kind == "u" and int(col.max()) > np.iinfo(np.int64).max:
        return col
    out = col.astype(np.int64)
    out.flags.writeable = False
    return out


def _identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path``, None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _restore(path: str, identity: tuple[int, int] | None, commit: tuple[int, ...]) -> Database:
    """Unpickle a `Database`: open ``path`` at the commit its original read (`Database._pin`).

    Raises:
        KinodbError: the file was replaced or rewritten since the original opened it.
    """
    db = open_database(path)
    try:
        db._pin(identity, Commit(*commit))
    except BaseException:
        db.close()
        raise
    return db


def open_database(path: str | os.PathLike[str]) -> Database:
    """Open a ``.kdb`` file of any supported format version.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: the file is not a readable ``.kdb`` file.
    """
    try:
        return Database(path)
    except LegacyFormat:
        from kinodb.kdb.legacy import LegacyDatabase  # deferred: only 0.x files need it

        return LegacyDatabase(path)


__all__ = ["Camera", "Database", "open_database"]
