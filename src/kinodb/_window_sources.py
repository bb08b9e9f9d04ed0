"""A window source: one file's kept episodes, where each array lives, and how sources are opened.

`_Source` locates every sample (a per-frame lookup table, or a binary search over episode
starts), the first element of each kept episode's array in the file's map (from the index,
or read episode by episode), the row views windows gather from, camera tables and per-frame
task texts. `_open_sources` makes one per file of a path, a `Database`, a list of paths or
a `Mixture`, keeping the episodes a filter selects, and advises each file's map that its
payloads are read at random (`Database._advise_random`: a cold page fault reads its page,
not megabytes of read-ahead around it). `kinodb.windows` re-exports the names other
modules use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from kinodb._window_checks import _EpisodeChecks
from kinodb.errors import KinodbError, QuerySyntaxError
from kinodb.kdb._layout import DATA_START
from kinodb.kdb.reader import Database, open_database
from kinodb.mixture import Mixture

LOOKUP_FRAMES = 1 << 22  # sources up to this many frames find samples by table lookup


class _Source(_EpisodeChecks):
    """One file's share of the samples: its kept episodes and where each array lives.

    The checks of its kept episodes and the messages naming them come from
    `_EpisodeChecks` (``context``, ``kql_filter`` and ``own_filter`` are described there).
    """

    def __init__(
        self,
        db: Database,
        kept: NDArray[np.int64],
        where: str,
        index: int = 0,
        *,
        context: str = "file",
        kql_filter: str | None = None,
        own_filter: str | None = None,
    ) -> None:
        super().__init__(db, kept, where, context=context, kql_filter=kql_filter, own_filter=own_filter)
        # index: the source's position among those given (a mixture's, or the list's), which
        # stays its id in samples when a filter leaves other sources empty
        self.index = index
        table = db._columns(("num_frames", "fps", "task", "tasks"))
        self.lengths = np.asarray(table["num_frames"], dtype=np.int64)[kept]
        self.last = self.lengths - 1  # each kept episode's last frame: windows clip to it per batch
        self.fps = np.asarray(table["fps"], dtype=np.float64)[kept]
        self.tasks = np.asarray(table["task"], dtype=object)[kept]
        # Episodes whose task changes from frame to frame (extra field `tasks` with more
        # than one text, and extra array `task_index`): their positions in `kept`.
        listed = table.get("tasks")
        self._varying = np.zeros(len(kept), dtype=bool)
        self._any_varying = False
        if listed is not None:
            per = np.asarray(listed, dtype=object)[kept]
            self._varying[:] = [isinstance(v, list) and len(v) > 1 for v in per.tolist()]
        self._any_varying = bool(self._varying.any())
        self._frame_tasks: dict[int, NDArray[Any]] = {}
        self._lookup: tuple[NDArray[np.int32], NDArray[np.int32]] | None = None
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._rows: dict[str, tuple[NDArray[np.int64], NDArray[Any], np.dtype[Any], tuple[int, ...]]] = {}
        self._frame_views: dict[int, NDArray[np.uint8]] = {}
        self._blocks: dict[tuple[str, int], NDArray[Any] | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the views of the file's map and the tables made on first use,
        which are made again where it is unpickled: a view over the map pickles as a copy of
        every row it spans, many times the file's size."""
        state = self.__dict__.copy()
        state.update(_rows={}, _blocks={}, _frame_views={}, _lookup=None, _frame_tasks={})
        return state

    def frame_lookup(self) -> tuple[NDArray[np.int32], NDArray[np.int32]] | None:
        """Each sample's kept episode and frame, as int32 tables (8 bytes per frame), made on
        first use; None for sources over `LOOKUP_FRAMES` frames (a binary search then)."""
        found = self._lookup
        if found is None and 0 < self.starts[-1] <= LOOKUP_FRAMES:
            n = len(self.lengths)
            j = np.repeat(np.arange(n, dtype=np.int32), self.lengths)
            t = (np.arange(self.starts[-1], dtype=np.int64) - self.starts[j]).astype(np.int32)
            found = self._lookup = (j, t)
        return found

    def task_texts(self, j: NDArray[np.int64], t: NDArray[np.int64]) -> NDArray[Any]:
        """The task text at frame ``t`` of each kept episode ``j`` (an object array)."""
        out = self.tasks[j]
        if self._any_varying:
            for n in np.flatnonzero(self._varying[j]).tolist():
                out[n] = self._frame_texts(int(j[n]))[int(t[n])]
        return out

    def _frame_texts(self, j: int) -> NDArray[Any]:
        found = self._frame_tasks.get(j)
        if found is None:
            ep = int(self.kept[j])
            try:
                codes = np.asarray(self.db.read_array(ep, "task_index")).reshape(-1)
            except KeyError:
                raise KinodbError(
                    f"{self.where}: episode {ep} lists several tasks but has no per-frame task_index array"
                ) from None
            texts, positions = frame_tasks(self.db, ep, codes, int(self.lengths[j]), self.where)
            found = self._frame_tasks[j] = np.asarray(texts, dtype=object)[positions]
        return found

    def rows(self, name: str) -> tuple[NDArray[np.int64], NDArray[Any], np.dtype[Any], tuple[int, ...]]:
        """``(first element of each kept episode, row view, dtype, per-frame shape)`` of ``name``.

        The view holds one opaque row of a frame's bytes starting at every element
        position of the map, so frame ``t`` of an episode whose array starts at element
        ``s`` is row ``s + t * D`` (``D`` elements per frame), and a fancy index copies
        whole rows (memcpy) rather than element by element.
        """
        found = self._rows.get(name)
        if found is not None:
            return found
        db = self.db
        if db.version().startswith("0."):
            raise KinodbError(
                f"{self.where} is a format {db.version()} file, whose arrays are not laid out as sections "
                "frame windows gather from; convert it once with `kino upgrade OLD NEW` (format v1 keeps "
                "every value and encoded frame) and read the new file"
            )
        base = db._map()  # the file's map; every array returned by read_array is a view of it
        layout = self._index_starts(name, len(base))
        if layout is not None:
            starts, dtype, trail = layout
        else:
            starts, dtype, trail = self._read_starts(name, base)
        isz = dtype.itemsize
        width = math.prod(trail)
        n = len(base) // isz - width + 1
        view = np.ndarray((max(n, 0),), np.dtype((np.void, width * isz)), buffer=base, strides=(isz,))  # type: ignore[call-overload]
        view.flags.writeable = False
        self._rows[name] = found = (starts, view, dtype, trail)
        return found

    def blocks(self, name: str, frames: int) -> NDArray[Any] | None:
        """Like `rows`' view, but each row holds ``frames`` consecutive frames of ``name``:
        a window of that many frames inside one episode is one row (one memcpy). None when
        the file is smaller than one such row."""
        key = (name, frames)
        if key not in self._blocks:
            _, rows, dtype, _ = self.rows(name)
            base = self.db._map()
            isz, size = dtype.itemsize, rows.dtype.itemsize * frames
            n = (len(base) - size) // isz + 1
            found = None
            if n > 0:
                found = np.ndarray((n,), np.dtype((np.void, size)), buffer=base, strides=(isz,))  # type: ignore[call-overload]
                found.flags.writeable = False
            self._blocks[key] = found
        return self._blocks[key]

    def _index_starts(
        self, name: str, size: int
    ) -> tuple[NDArray[np.int64], np.dtype[Any], tuple[int, ...]] | None:
        """`rows`' element starts from the index columns alone (checked alike over every kept
        episode, aligned and inside the file); None where only reading tells (a format 0.1
        file, or a row that looks damaged: the read names the damage)."""
        layout = self.array_layout(name)
        sec = self.sections()
        if layout is None or sec is None:
            return None
        rows, dtype, trail = layout
        isz = dtype.itemsize
        off = sec.column("sec.offset", rows)
        nbytes = self.lengths * (math.prod(trail) * isz)
        if not ((off >= DATA_START) & (off <= size - nbytes) & (off % isz == 0)).all():
            return None
        return off // isz, dtype, trail

    def _read_starts(
        self, name: str, base: NDArray[Any]
    ) -> tuple[NDArray[np.int64], np.dtype[Any], tuple[int, ...]]:
        """`rows`' element starts read episode by episode (files the index cannot answer for)."""
        first = None
        starts = np.empty(len(self.kept), dtype=np.int64)
        addr0 = base.__array_interface__["data"][0]
        for j, ep in enumerate(self.kept.tolist()):
            try:
                arr = self.db.read_array(ep, name)
            except KeyError:
                raise KinodbError(
                    f"{self.where}: episode {ep} has no array {name!r}; choose episodes that have it "
                    f"(kql_filter) or drop it from the window"
                ) from None
            if first is None:
                first = arr
            elif arr.dtype != first.dtype or arr.shape[1:] != first.shape[1:]:
                raise KinodbError(
                    f"{self.where}: array {name!r} is {arr.dtype} {arr.shape[1:]} per frame in episode "
                    f"{ep} but {first.dtype} {first.shape[1:]} in episode {int(self.kept[0])}; windows "
                    f"need one layout per file (select episodes with kql_filter)"
                )
            off = arr.__array_interface__["data"][0] - addr0
            if not arr.flags.c_contiguous or off % arr.dtype.itemsize:
                raise KinodbError(f"{self.where}: array {name!r} of episode {ep} is not aligned in the map")
            starts[j] = off // arr.dtype.itemsize
        assert first is not None  # kept is never empty (_nonempty)
        return starts, first.dtype, first.shape[1:]

    def frame_rows(self, hwc: tuple[int, int, int]) -> NDArray[np.uint8]:
        """A view with one row of ``H*W*C`` bytes starting at every byte of the map."""
        step = hwc[0] * hwc[1] * hwc[2]
        view = self._frame_views.get(step)
        if view is None:
            base = self.db._map()
            view = self._frame_views[step] = as_strided(
                base, shape=(max(len(base) - step + 1, 0), step), strides=(1, 1), writeable=False
            )
        return view


def frame_tasks(db: Database, ep: int, codes: Any, T: int, where: str) -> tuple[list[str], NDArray[np.int64]]:
    """An episode's task texts and each frame's position among them, from its extra field
    ``tasks`` and extra array ``task_index`` (kinodb's per-frame task convention).

    ``task_index`` holds positions in ``tasks``, numbered in order of first appearance.
    Files ingested from LeRobot by kinodb before that convention hold LeRobot's own task
    numbers instead: those are read through the dataset's ``lerobot.tasks`` table.

    Raises:
        KinodbError: the array does not fit the list (names ``where`` and the episode).
    """
    meta = db.read_meta(ep)
    texts = [str(t) for t in meta.get("tasks") or ()]
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if len(codes) != T or not len(codes):
        raise KinodbError(f"{where}: episode {ep}'s task_index has {len(codes)} frames, the episode {T}")
    _, first = np.unique(codes, return_index=True)
    order = codes[np.sort(first)]  # the codes in order of first appearance
    if np.array_equal(order, np.arange(len(texts))):
        return texts, codes
    lerobot = db.metadata().get("lerobot")
    table = lerobot.get("tasks") if isinstance(lerobot, dict) else None
    if isinstance(table, dict) and all(str(int(c)) in table for c in order.tolist()):
        named = [str(table[str(int(c))]) for c in order.tolist()]
        if named[0] == meta.get("task") and sorted(named) == sorted(texts):
            rank = {int(c): k for k, c in enumerate(order.tolist())}
            return named, np.array([rank[int(c)] for c in codes.tolist()], dtype=np.int64)
    raise KinodbError(
        f"{where}: episode {ep}'s task_index does not index its {len(texts)} tasks frame by frame; "
        "re-ingest the source to rebuild it"
    )


def _frame_data(source: _Source, cam: Any, f: int) -> Any:
    """The stored bytes of frame ``f`` (a view of the map)."""
    if cam.codec == "raw":
        _, h, w, c = cam.shape
        pos = cam.data_offset + f * h * w * c
        return source.db._map()[pos : pos + h * w * c]
    return source.db._frame_bytes(cam, f)


def prefetch_frames(db: Database, cam: Any) -> None:
    """Start reading all of one camera's frames of an episode (``cam``, a `Camera` of ``db``)
    in large requests, for a reader about to read them all from a map advised random, which
    would otherwise fault them in page by page. Frames of a format 0.1 file lie interleaved
    with other cameras' and are left to the faults."""
    if not hasattr(cam, "starts"):
        db._will_need(cam.data_offset, cam.data_offset + int(cam.frame_offsets[-1]))


def _open_sources(source: Any, kql_filter: str | None) -> list[_Source]:
    """One `_Source` per file of ``source`` with episodes ``kql_filter`` keeps, each file's map
    advised random (a `Database` or `Mixture` passed in too: their maps are read at random
    from now on)."""
    from kinodb.kql._eval import fields_of  # deferred: kql builds on kdb

    if isinstance(source, Mixture):
        out = []
        mixed = [source.database(i) for i in range(len(source.sources()))]
        absent = fields_of(mixed) if kql_filter else ()
        labels = [f"mixture source {i} ({info.path})" for i, info in enumerate(source.sources())]
        for i, info in enumerate(source.sources()):
            db = mixed[i]
            db._advise_random()
            kept = np.asarray(source._src[i].kept, dtype=np.int64)
            if kql_filter is not None:  # a field only some sources hold is null in the others
                kept = np.intersect1d(kept, _query(kql_filter, i, mixed, labels, absent, mixture=True))
            out.append(_Source(db, kept, labels[i], i, context="mixture",
                               kql_filter=kql_filter, own_filter=info.filter))  # fmt: skip
        return _nonempty(out, kql_filter)
    if isinstance(source, Database):
        dbs = [source]
    elif isinstance(source, (str, os.PathLike)):
        dbs = [open_database(source)]
    elif isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        dbs = [open_database(p) for p in source]
    else:
        raise TypeError(f"source must be a path, a Database, a list of paths or a Mixture, got {source!r}")
    for db in dbs:
        db._advise_random()
    out = []
    absent = fields_of(dbs) if kql_filter else ()
    labels = [db.path() if len(dbs) == 1 else f"source {i} ({db.path()})" for i, db in enumerate(dbs)]
    for i, db in enumerate(dbs):
        kept = (
            np.arange(len(db), dtype=np.int64)
            if kql_filter is None
            else _query(kql_filter, i, dbs, labels, absent)
        )
        context = "file" if len(dbs) == 1 else "list"
        out.append(
            _Source(
                db, np.asarray(kept, dtype=np.int64), labels[i], i, context=context, kql_filter=kql_filter
            )
        )
    return _nonempty(out, kql_filter)


def _query(
    kql_filter: str,
    i: int,
    dbs: Sequence[Database],
    labels: list[str],
    absent: Collection[str],
    *,
    mixture: bool = False,
) -> NDArray[np.int64]:
    """The episodes of ``dbs[i]`` that ``kql_filter`` keeps. In a mixture or among several
    files, an error names the source (``labels[i]``), as a mixture's own filters do, and
    says when the fields it names hold values of different kinds in different sources.

    Raises:
        QuerySyntaxError: the filter does not parse, names no field of the sources, or
            compares a field with a value of another kind.
    """
    try:
        return np.asarray(dbs[i].query(kql_filter, absent=absent), dtype=np.int64)
    except QuerySyntaxError as exc:
        if len(dbs) == 1 and not mixture:
            raise
        from kinodb.kql._parser import parse  # deferred: kql builds on kdb

        try:
            parse(kql_filter)
        except QuerySyntaxError:
            raise exc from None  # the text itself: the same in every source
        note = _kinds_apart(kql_filter, dbs, labels, mixture)
        raise QuerySyntaxError(f"{labels[i]}: filter {kql_filter!r}: {exc}{note}", exc.position) from exc


# How a note names the kinds of an extra field's values; integers and floats compare alike.
_KINDS = {"int": "numbers", "float": "numbers", "str": "strings", "bool": "true/false", "json": "JSON values"}


def _kinds_apart(kql_filter: str, dbs: Sequence[Database], labels: list[str], mixture: bool) -> str:
    """A line saying which fields of ``kql_filter`` hold values of different kinds in
    different sources, and what to do; empty when none does."""
    lines = []
    for name in sorted(_extra_fields(kql_filter)):
        by_kind: dict[str, list[int]] = {}
        for i, db in enumerate(dbs):
            column = db._block.extras.get(name)
            if column is not None and column.kind in _KINDS:
                by_kind.setdefault(_KINDS[column.kind], []).append(i)
        if len(by_kind) > 1:
            held = " and ".join(
                f"{kind} in {_sources_text(idx, labels, mixture)}" for kind, idx in by_kind.items()
            )
            lines.append(f"{name} holds {held}")
    if not lines:
        return ""
    how = (
        "the mixture's sources their own filters instead, Mixture(..., filters={path: kql, ...})"
        if mixture
        else "each file its own filter: pass kinodb.Mixture({path: weight, ...}, filters={path: kql, ...}) "
        "instead of the list"
    )
    return f"\n{'; '.join(lines)}: one kql_filter cannot compare it in every source; give {how}"


def _sources_text(indices: list[int], labels: list[str], mixture: bool) -> str:
    if len(indices) == 1:
        return labels[indices[0]]
    return f"{'mixture ' if mixture else ''}sources {', '.join(str(i) for i in indices)}"


def _extra_fields(kql_filter: str) -> set[str]:
    """The names of the extra fields ``kql_filter`` may name (the fields it names that are
    not built in, and those it names as ``extra.NAME``); none when it does not parse."""
    from kinodb.kql._eval import BUILTIN_KINDS  # deferred: kql builds on kdb
    from kinodb.kql._parser import parse
    from kinodb.kql.ast import fields_of_query

    try:
        node = parse(kql_filter)
    except QuerySyntaxError:
        return set()
    return {f.name for f in fields_of_query(node) if f.extra or f.name not in BUILTIN_KINDS}


def _num_given(source: Any) -> int:
    """How many sources ``source`` names (before filters leave any empty)."""
    if isinstance(source, Mixture):
        return int(source.num_sources())
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return len(source)
    return 1


def _nonempty(sources: list[_Source], kql_filter: str | None) -> list[_Source]:
    kept = [s for s in sources if len(s.kept) and s.starts[-1] > 0]
    if not kept:
        why = (
            f"the filter {kql_filter!r} keeps no episode with frames{_index_note(sources, kql_filter)}"
            if kql_filter
            else "no episode has frames"
        )
        raise KinodbError(f"{', '.join(s.where for s in sources)}: {why}")
    return kept


def _index_note(sources: list[_Source], kql_filter: str) -> str:
    """Where ``kql_filter`` names ``episode_index`` and a file holds an extra field of that
    name (LeRobot's own episode number, kept by ingest): that it is not the items'
    ``episode_index``, the episode's position in its file, which KQL calls ``episode_id``."""
    if "episode_index" not in _extra_fields(kql_filter):
        return ""
    for source in sources:
        column = source.db._block.extras.get("episode_index")
        if column is None:
            continue
        first = column.get(0) if len(source.db) else None
        shown = isinstance(first, (int, str)) and not isinstance(first, bool)
        example = f" (episode 0 of {source.db.path()} has episode_index {first!r})" if shown else ""
        return (
            "; in KQL, episode_index is the file's extra field of that name, the source dataset's own "
            f"episode number{example}; the items' episode_index is the episode's position in its file, "
            "which KQL calls episode_id (e.g. kql_filter='episode_id = 0')"
        )
    return ""
