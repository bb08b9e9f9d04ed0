"""Read ``.kdb`` files: memory-mapped, zero-copy NumPy views over each section.

`Database` opens a file (its header, commit records and index head; the index block is
decoded and verified on first use), reads episodes, frames, cameras and single arrays, and
pickles by path at the commit it read. Two bases hold the rest of its methods:
`kinodb.kdb._reader_meta` (`_MetaReads`: metadata, the episode table, statistics, the
summary) and `kinodb.kdb._reader_arrays` (`_ArrayReads`: the per-array readers and
tables behind `read_array`, and the batch read `gather`). `META_FIELDS` and `extra_key`
are re-exported from `kinodb.kdb._reader_meta`.
"""

from __future__ import annotations

import contextlib
import copy
import mmap
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np

from kinodb.errors import CorruptFileError, FrameRangeError, KinodbError, NameNotFoundError
from kinodb.kdb import _codecs
from kinodb.kdb._checks import as_index, episode_index
from kinodb.kdb._files import advise_random, map_file, will_need
from kinodb.kdb._layout import (
    CLOSED,
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
from kinodb.kdb._reader_arrays import _RENT, _TABLE_AFTER, _TABLE_PER, _ArrayReads
from kinodb.kdb._reader_meta import META_FIELDS as META_FIELDS
from kinodb.kdb._reader_meta import _MetaReads
from kinodb.kdb._reader_meta import extra_key as extra_key
from kinodb.kdb._sections import ArrayReader, ArrayTable, Locator, Section, episode_sections
from kinodb.kdb._table import (
    Columns,
    IndexBlock,
    check_counts,
    check_frames,
    check_index_crc,
    check_index_head,
    decode_index,
)


@dataclass(frozen=True, slots=True)
class Camera:
    """Where one camera's frames of one episode live."""

    codec: str
    shape: tuple[int, int, int, int]  # (T, H, W, C)
    data_offset: int
    frame_offsets: np.ndarray  # (T + 1,) byte offsets relative to data_offset


class Database(_MetaReads, _ArrayReads):
    """A read-only, memory-mapped ``.kdb`` file.

    Sized, indexable (``db[i]`` is `read_episode`), iterable over episodes, a context
    manager, and picklable: a DataLoader worker re-opens the file by its path and maps it
    itself, reading the commit the pickled database read (see `__reduce__`). Episode
    indices are ints (Python or NumPy), negative ones counting from the end as in a list.
    The metadata reads come from `_MetaReads` (`kinodb.kdb._reader_meta`), the array
    readers and `gather` from `_ArrayReads` (`kinodb.kdb._reader_arrays`).

    Example:
        >>> db = kinodb.open("demo.kdb")
        >>> ep = db.read_episode(0)
        >>> ep["actions"].shape
        (4, 7)
    """

    _index: IndexBlock | None = None  # the decoded index block, once something needed it
    _verified = False  # the index block matched the commit record's checksum
    _failure: str | None = None  # why it did not: every later use of the index raises it again
    # The absolute path of the file, resolved when it was opened: a pickled copy re-opens
    # that file even where the working directory has changed since (`__reduce__`).
    _file: str | None = None
    # The header and commit records as read at open (`_map_commit`); a 0.x file has none.
    _preamble: bytes = bytes(DATA_START)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Opening reads the header, the commit records and the index head, nothing whose
        # size grows with the file; the index's checksum is verified, and its table of
        # contents and columns decoded, on first use (`_block`), where damage raises
        # CorruptFileError. Only `read_array`'s first O(1) reads come before that.
        self._path = path = os.fspath(path)
        self._file = os.path.abspath(path)
        self._mm: mmap.mmap | None = None
        # Every view is made over this array, which holds a buffer export of the map:
        # the map cannot be closed under a live view (np.ndarray(buffer=mmap) alone
        # does not pin it, and touching such a view after close would crash).
        self._buf: np.ndarray | None = None
        mm, size, self._preamble, (major, minor), self._slot, self._commit = _map_commit(path)
        try:
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
        self._uniform_names = set()
        self._uniform_checked = False
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
        if self._verified:
            return
        if self._failure is not None:
            raise CorruptFileError(self._failure)
        c = self._commit
        try:
            check_index_crc(self._map()[c.index_offset : c.end].data, c.index_crc, c.index_offset, self._path)
            check_frames(self._decoded.columns["num_frames"], self._size, c.num_frames, self._path)
        except CorruptFileError as exc:
            # Remembered: `read_array` must not serve the damaged index through the readers
            # its first reads built, so they go, and its slow path raises this from now on.
            self._failure = str(exc)
            self._fast.clear()
            self._checked.clear()
            self._tables.clear()
            self._uniform_names.clear()
            raise
        self._verified = True
        if self._uniform_names:
            self._confirm_uniform()

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
        """The file path this database was opened from, as given."""
        return self._path

    def _abspath(self) -> str:
        """The absolute path of the file, as resolved when it was opened."""
        return self._file or os.path.abspath(self._path)

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

    # -- metadata (read_meta, episodes, stats, summary: `_MetaReads`) -------------------

    def _check(self, i: SupportsIndex) -> int:
        """Episode index ``i`` as a position ``0..n-1`` (`episode_index`)."""
        if type(i) is int and 0 <= i < self._n:
            return i
        return episode_index(i, self._n)

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
                raise ValueError(f"{self._path}: {CLOSED}")
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
                        f"offset {sec.offset} is damaged; {_codecs.VALIDATE_ADVICE}"
                    )
                out[sec.name] = Camera(sec.codec, sec.shape, data, table)  # type: ignore[arg-type]
        return out

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
        if self._failure is not None:  # the index failed its checksum: nothing it says is served
            raise CorruptFileError(self._failure)
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
        cam = self._camera(i, camera)
        if not 0 <= frame < cam.shape[0]:
            raise FrameRangeError(
                f"{self._path}: frame {frame} outside episode {i}, which has frames 0:{cam.shape[0]}"
            )
        return bytes(self._frame_bytes(cam, frame))

    def read_images_bytes(
        self, i: SupportsIndex, camera: str, start: SupportsIndex = 0, stop: SupportsIndex | None = None
    ) -> list[bytes]:
        """The stored bytes of frames ``start:stop`` of a camera (all by default), as
        `read_image_bytes` gives each, with the episode's index read once.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
            NameNotFoundError: the episode has no camera ``camera`` (a KeyError).
            FrameRangeError: ``start:stop`` is not a range of the episode's frames.
        """
        i = self._check(i)
        cam = self._camera(i, camera)
        T = cam.shape[0]
        a = as_index(start, "start", FrameRangeError)
        b = T if stop is None else as_index(stop, "stop", FrameRangeError)
        if not 0 <= a <= b <= T:
            raise FrameRangeError(f"{self._path}: frames {a}:{b} outside episode {i}, which has frames 0:{T}")
        return [bytes(self._frame_bytes(cam, t)) for t in range(a, b)]

    def _camera(self, i: int, camera: str) -> Camera:
        self._verify_index()
        cams = self._episode_cameras(i)
        if camera not in cams:
            raise NameNotFoundError(
                f"{self._path}: episode {i} has no camera {camera!r}; it has {sorted(cams)}"
            )
        return cams[camera]

    def _frame_bytes(self, cam: Camera, t: int) -> memoryview:
        a, b = int(cam.frame_offsets[t]), int(cam.frame_offsets[t + 1])
        return self._map()[cam.data_offset + a : cam.data_offset + b].data

    def _decode(self, i: int, name: str, cam: Camera, start: int, stop: int) -> np.ndarray:
        _, h, w, c = cam.shape
        if cam.codec == "raw":
            frame = h * w * c
            if int(cam.frame_offsets[-1]) != frame * cam.shape[0]:
                raise CorruptFileError(
                    f"{self._path}: episode {i}, camera {name!r} at byte offset {cam.data_offset}: raw frames "
                    f"take {int(cam.frame_offsets[-1])} bytes, not {cam.shape[0]} frames of {frame}; the index "
                    f"is damaged; {_codecs.VALIDATE_ADVICE}"
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
        # By the absolute path resolved when opened (a relative one would name another file
        # in a process whose working directory differs), shown as given in the copy.
        identity, commit = pin_of(self)  # type: ignore[misc]  # a Database has a commit
        return (_restore, (self._abspath(), identity, commit, self._path))

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
            self._read_commit(parent)
        except CorruptFileError:
            raise self._moved(parent, "rewritten") from None
        # From the records read at open, not the map: a commit made since may overwrite them.
        slots = [parse_slot(self._preamble[at : at + SLOT_SIZE]) for at in SLOT_OFFSETS]
        self._slot = slots.index(parent) if parent in slots else -1

    def _read_commit(self, commit: Commit) -> None:
        """Read the file at ``commit`` instead of the one its records name (an older one, or
        a newer one a damaged record hides); its index is verified now.

        Raises:
            CorruptFileError: no complete index block of ``commit`` lies in the file.
        """
        toc_len = check_index_head(self._map(), commit.index_offset, commit.index_length, self._path)
        check_counts(commit, self._size, self._path)
        self._commit, self._toc_len, self._n = commit, toc_len, commit.num_episodes
        self._index, self._verified, self._codes, self._layout = None, False, None, None
        self._failure = None
        self._init_reads()
        self._verify_index()  # now, not on first use: no commit record vouches for this block

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


# How many times opening maps a file again when commits keep landing between mapping it and
# reading its commit records (`_map_commit`); each needs another commit in that instant.
_REMAPS = 4


def _map_commit(path: str) -> tuple[mmap.mmap, int, bytes, tuple[int, int], int, Commit]:
    """Map ``path`` and pick its newest commit: ``(map, mapped length, preamble, (major,
    minor), slot number, commit)``.

    The commit records are read from a copy of the preamble taken once. The map is shared,
    so it shows a commit made after it was sized, but not the bytes that commit added past
    its length. A writer makes its data and index durable before the record that points at
    them, so such a record is no damage: the file has grown to hold it, and a new map
    covers it.

    Raises:
        FormatError: the bytes are not a .kdb file (`read_preamble`).
        CorruptFileError: no valid commit fits in the file, though it has stopped growing.
    """
    mm, remaps = map_file(path), 0
    while True:
        try:
            size = len(mm)
            head = mm[:DATA_START]  # a copy: commits from here on do not change what is read
            try:
                return mm, size, head, *read_preamble(head, path, size)
            except CorruptFileError:
                if remaps == _REMAPS or not _grown(mm, size):  # damage, not a commit made since
                    raise
        except BaseException:
            mm.close()
            raise
        mm.close()
        mm, remaps = map_file(path), remaps + 1


def _grown(mm: mmap.mmap, size: int) -> bool:
    """Whether the file that ``mm`` maps is now longer than ``size`` bytes."""
    try:
        return mm.size() > size  # the mapped file's length now, by its descriptor (fstat)
    except (OSError, ValueError):
        return False


def _identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path``, None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _restore(
    path: str, identity: tuple[int, int] | None, commit: tuple[int, ...], shown: str | None = None
) -> Database:
    """Unpickle a `Database`: open ``path`` at the commit its original read (`Database._pin`);
    its `Database.path` is then ``shown`` (the path the original was given), where given.

    Raises:
        KinodbError: the file was replaced or rewritten since the original opened it.
    """
    db = open_database(path)
    try:
        db._pin(identity, Commit(*commit))
    except BaseException:
        db.close()
        raise
    if shown is not None:
        db._path = shown
    return db


def _open_as(file: str, shown: str) -> Database:
    """Open ``file`` (an absolute path) as `open_database` does, showing ``shown`` (the path
    it was given as) as its `Database.path`.

    Raises:
        FileNotFoundError: ``file`` does not exist.
        FormatError: the file is not a readable ``.kdb`` file.
    """
    db = open_database(file)
    db._path = shown
    return db


# Commits that files are read at in this context (`pinned`): absolute path -> (file identity,
# commit fields), as a dataset made in one process asks of the DataLoader workers it pickles into.
Pins = Mapping[str, tuple[tuple[int, int] | None, tuple[int, ...]]]
_PINS: ContextVar[Pins | None] = ContextVar("kinodb_pinned_commits", default=None)


@contextlib.contextmanager
def pinned(pins: Pins) -> Iterator[None]:
    """Within: `open_database` reads each file ``pins`` names at the commit it gives, as an
    unpickled `Database` reads its original's (a file only appended to since shows the
    episodes it held then). A file rewritten or replaced since is opened as it is now, for
    the caller to compare with what it expected."""
    token = _PINS.set(pins)
    try:
        yield
    finally:
        _PINS.reset(token)


def pin_of(db: Any) -> tuple[tuple[int, int] | None, tuple[int, ...]] | None:
    """What `pinned` takes to read ``db``'s file at the commit ``db`` read: ``(file identity,
    commit fields)``; None for a 0.x file (it has no commits, and kinodb never appends to one)."""
    c = getattr(db, "_commit", None)
    if c is None:
        return None
    fields = (c.generation, c.index_offset, c.index_length, c.num_episodes, c.num_frames, c.index_crc)
    return _identity(db._abspath()), fields


def _pin_if_asked(db: Database, path: str | os.PathLike[str]) -> Database:
    pin = (_PINS.get() or {}).get(db._abspath())
    if pin is None:
        return db
    identity, fields = pin
    try:
        db._pin(identity, Commit(*fields))
    except KinodbError:  # rewritten or replaced: no longer holds that commit
        db.close()
        return Database(path)
    return db


def open_database(path: str | os.PathLike[str]) -> Database:
    """Open a ``.kdb`` file of any supported format version.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: the file is not a readable ``.kdb`` file.
    """
    try:
        db = Database(path)
        return db if _PINS.get() is None else _pin_if_asked(db, path)
    except LegacyFormat:
        from kinodb.kdb.legacy import LegacyDatabase  # deferred: only 0.x files need it

        legacy = LegacyDatabase(path)
        legacy._file = os.path.abspath(legacy.path())
        return legacy


__all__ = ["Camera", "Database", "open_database", "pin_of", "pinned"]
