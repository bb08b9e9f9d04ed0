"""Frame windows over ``.kdb`` files: observation history and action chunks, batched.

A window is what diffusion policy, ACT and VLA training consume per sample: for frame t,
the states (and images) of frames ``t-h+1 .. t`` and the actions of ``t .. t+k-1``, with
masks where a frame falls outside the episode. `FrameWindows` serves any batch of them as
one vectorised gather over the memory map per array: each window row is located by byte
offset and copied straight out of the map, with no per-sample Python loop. Images are
decoded only for the frames a window needs. This module needs NumPy only (Pillow for
images); `kinodb.torch` and the gRPC server build on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from kinodb import _images
from kinodb.errors import EpisodeNotFoundError, KinodbError
from kinodb.kdb._layout import DATA_START, DTYPES, KIND_ARRAY, KIND_CAMERA
from kinodb.kdb.reader import Database, open_database
from kinodb.kql.ast import render_value
from kinodb.mixture import Mixture

__all__ = ["FrameWindows", "WindowSpec", "stack_groups"]

Pad = Literal["edge", "zero"]
_TOLERANCE_S = 1e-4  # LeRobot's tolerance for timestamps that must sit on the frame grid

# Feature names accepted in ``delta_timestamps``: kinodb's and LeRobot's, -> (array, output key).
_ALIASES = {
    "state": ("states", "state"), "states": ("states", "state"), "observation.state": ("states", "state"),
    "action": ("actions", "action"), "actions": ("actions", "action"),
    "reward": ("rewards", "reward"), "rewards": ("rewards", "reward"), "next.reward": ("rewards", "reward"),
    "is_terminal": ("is_terminal", "is_terminal"), "next.done": ("is_terminal", "is_terminal"),
    "timestamp": ("timestamps", "timestamp"), "timestamps": ("timestamps", "timestamp"),
}  # fmt: skip


LOOKUP_FRAMES = 1 << 22  # sources up to this many frames find samples by table lookup


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Which frames a window takes per feature: offsets in frames or in seconds.

    ``arrays`` maps an output key to ``(array name, offsets)``; ``images`` maps a camera
    to its offsets. Offsets are frame counts (ints) when ``seconds`` is False, else
    seconds converted through each episode's fps, except for the array keys in
    ``frame_arrays`` and the cameras in ``frame_images``: features ``delta_timestamps``
    does not name keep their horizons, in frames.
    """

    arrays: dict[str, tuple[str, tuple[float, ...]]]
    images: dict[str, tuple[float, ...]]
    seconds: bool
    frame_arrays: frozenset[str] = frozenset()
    frame_images: frozenset[str] = frozenset()

    def array_in_seconds(self, key: str) -> bool:
        """Whether array key ``key``'s offsets are seconds (else frames)."""
        return self.seconds and key not in self.frame_arrays

    def image_in_seconds(self, camera: str) -> bool:
        """Whether camera ``camera``'s offsets are seconds (else frames)."""
        return self.seconds and camera not in self.frame_images


class _Sections:
    """The section rows of a source's kept episodes, from the index columns alone.

    Every question here is a few NumPy passes over the rows (O(episodes), no episode
    read), so checks over every kept episode cost little when windows are made.
    """

    def __init__(self, db: Database, kept: NDArray[np.int64]) -> None:
        cols = db._cols
        self.cols, self.texts = cols, db._names
        self.names = np.asarray(cols["sec.name"]).reshape(-1)
        self.kinds = np.asarray(cols["sec.kind"]).reshape(-1)
        rows = len(self.names)
        self.kept, self.episodes = kept, len(db)
        # A damaged row range is clipped here; reading that episode names the damage.
        self.start = np.minimum(np.asarray(cols["sec_start"])[kept].astype(np.int64), rows)
        self.end = np.clip(self.start + np.asarray(cols["sec_count"])[kept], self.start, rows)
        self._rows: dict[tuple[str, int], NDArray[np.int64]] = {}
        self._cameras: list[str] | None = None

    @staticmethod
    def of(db: Database, kept: NDArray[np.int64]) -> _Sections | None:
        """The sections of ``db``'s episodes ``kept``; None for a file without section
        columns (format 0.1, whose episodes must be read to tell)."""
        cols = db._cols
        if isinstance(cols, Mapping) and all(k in cols for k in ("sec_start", "sec_count", "sec.kind")):
            return _Sections(db, kept)
        return None

    def find(self, name: str, kind: int) -> NDArray[np.int64]:
        """Per kept episode: its row of section ``name`` of ``kind``, -1 where it has none."""
        found = self._rows.get((name, kind))
        if found is None:
            codes = [k for k, text in enumerate(self.texts) if text == name]
            hit = (self.names == codes[0]) if len(codes) == 1 else np.isin(self.names, codes)
            hit &= self.kinds == kind
            rows = np.flatnonzero(hit)
            if len(rows) == self.episodes:  # one row per episode, as usual: each its own?
                found = rows[self.kept]
                if ((found >= self.start) & (found < self.end)).all():
                    self._rows[(name, kind)] = found
                    return found
            seen = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
            held = seen[self.end] > seen[self.start]
            found = np.full(len(self.start), -1, dtype=np.int64)
            found[held] = rows[seen[self.start[held]]]
            self._rows[(name, kind)] = found
        return found

    def column(self, name: str, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """Index column ``name`` at ``rows`` (``sec.dims``: three per row) as int64."""
        col = np.asarray(self.cols[name])
        if name == "sec.dims":
            col = col.reshape(-1, 3)
        return col[rows].astype(np.int64)

    def cameras(self) -> list[str]:
        """The cameras some kept episode holds, in the order the episodes first hold them."""
        if self._cameras is None:
            codes = np.unique(self.names[self.kinds == KIND_CAMERA]).tolist()  # in the file: a few
            firsts = []
            for text in {self.texts[c] for c in codes if 0 <= c < len(self.texts)}:
                rows = self.find(text, KIND_CAMERA)  # kept for `require_camera`'s check
                held = np.flatnonzero(rows >= 0)
                if len(held):
                    firsts.append((int(held[0]), int(rows[held[0]]), text))
            self._cameras = [text for _, _, text in sorted(firsts)]
        return list(self._cameras)


class _Source:
    """One file's share of the samples: its kept episodes and where each array lives.

    ``context`` says how the file was given (``"file"``, ``"list"`` or ``"mixture"``),
    ``kql_filter`` the filter given for every source and ``own_filter`` a mixture
    source's own filter: with them a message gives the filter that leaves episodes out.
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
        # index: the source's position among those given (a mixture's, or the list's), which
        # stays its id in samples when a filter leaves other sources empty
        self.db, self.kept, self.where, self.index = db, kept, where, index
        self.context, self.kql_filter, self.own_filter = context, kql_filter, own_filter
        self._sections: _Sections | bool | None = False  # False: not looked at yet
        table = db.episodes()
        self.lengths = np.asarray(table["num_frames"], dtype=np.int64)[kept]
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
        self._cams: dict[int, dict[str, Any]] = {}
        self._frame_views: dict[int, NDArray[np.uint8]] = {}

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

    def sections(self) -> _Sections | None:
        """The kept episodes' section rows (None for a file without section columns)."""
        found = self._sections
        if found is False:
            found = self._sections = _Sections.of(self.db, self.kept)
        return found  # type: ignore[return-value]

    def array_layout(self, name: str) -> tuple[NDArray[np.int64], np.dtype[Any], tuple[int, ...]] | None:
        """Each kept episode's index row of array ``name``, with the dtype and per-frame shape
        they all share; None where the index cannot answer (format 0.1, a damaged row).

        Raises:
            KinodbError: some kept episode lacks the array, or holds it with another dtype
                or shape (naming those episodes and the filter that leaves them out).
        """
        sec = self.sections()
        if sec is None:
            return None
        rows = sec.find(name, KIND_ARRAY)
        lacking = rows < 0
        if lacking.any():
            raise KinodbError(
                f"{self.where}: {self.count(lacking)} have no array {name!r} ({self.named(lacking)}); "
                f"{self.leave_out(lacking)}, or drop {name!r} from the window"
            )
        dtype, rank, dims = (sec.column(c, rows) for c in ("sec.dtype", "sec.ndim", "sec.dims"))
        if (dtype == dtype[0]).all() and (rank == rank[0]).all() and (dims == dims[0]).all():
            key = np.concatenate([dtype[:1], rank[:1], dims[0]])[None, :]
        else:
            key = np.column_stack([dtype, rank, dims])
        odd = self.odd_ones(key)
        if odd is not None:
            raise KinodbError(
                f"{self.where}: array {name!r} is {_layout_text(key[odd][0])} per frame in "
                f"{self.count(odd)} ({self.named(odd)}) but {_layout_text(key[~odd][0])} in the others; "
                f"windows need one layout per file: {self.leave_out(odd)}"
            )
        code, ndim = int(key[0, 0]), int(key[0, 1])
        if code >= len(DTYPES) or not 1 <= ndim <= 4 or key[0, 1 + ndim :].any():
            return None  # a damaged row: the read names it
        return rows, np.dtype(DTYPES[code]), tuple(int(d) for d in key[0, 2 : 1 + ndim])

    def camera_shapes(self, camera: str) -> NDArray[np.int64] | None:
        """``(H, W, C)`` of ``camera`` in each kept episode (all hold it: `require_camera`),
        from the index; None for a file without section columns."""
        sec = self.sections()
        if sec is None:
            return None
        rows = sec.find(camera, KIND_CAMERA)
        return sec.column("sec.dims", rows[rows >= 0])

    def odd_ones(self, key: NDArray[np.int64]) -> NDArray[np.bool_] | None:
        """The kept episodes whose row of ``key`` differs from the most common one (the
        first kept episode's on a tie), or None when all agree."""
        if not len(key) or (key == key[0]).all():
            return None
        _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        common = int(inverse[0]) if counts[inverse[0]] == counts.max() else int(np.argmax(counts))
        return np.asarray(inverse != common)

    def count(self, mask: NDArray[np.bool_]) -> str:
        """``"2 of 5 episodes"``: how many kept episodes ``mask`` marks."""
        return f"{int(mask.sum())} of {len(mask)} episodes"

    def named(self, mask: NDArray[np.bool_], shown: int = 5) -> str:
        """The first few kept episodes ``mask`` marks, by position in the file (and by
        episode_id where that differs)."""
        eps = self.kept[mask]
        head = eps[:shown].tolist()
        text = ("episode " if len(eps) == 1 else "episodes ") + ", ".join(map(str, head))
        if len(eps) > shown:
            text += f" and {len(eps) - shown} more"
        ids = np.asarray(self.db.episodes()["episode_id"])[eps[:shown]].tolist()
        if ids != head:
            text += f", whose episode_id {'is' if len(eps) == 1 else 'are'} {', '.join(map(str, ids))}"
            text += " ..." if len(eps) > shown else ""
        return text

    def leave_out(self, mask: NDArray[np.bool_]) -> str:
        """How to leave out the kept episodes ``mask`` marks: the filter that does it, when a
        short one does (their embodiment, or their episode_ids), else how to write one.

        A filter for one file of several goes in a `Mixture`'s ``filters`` (``kql_filter``
        applies to every file).
        """
        it = "it" if mask.sum() == 1 else "them"
        if mask.all():
            if self.context == "file":
                return "no episode the filter keeps has it: choose others with kql_filter"
            return "no episode of this source has it: leave the source out"
        query, why = self._query_without(mask)
        if query is None:
            return (
                f"no short filter names {it}: leave {it} out with a filter listing all {int(mask.sum())} of "
                f"their episode_ids, episode_id NOT IN (...), or write a file without {it} once (kino merge "
                f'{self.db.path()} -o OUT.kdb -F "episode_id NOT IN (...)")'
            )
        if self.context == "file":
            given = f"({self.kql_filter}) AND {query}" if self.kql_filter else query
            return f'{why}leave {it} out with kql_filter="{given}"'
        own = f"({self.own_filter}) AND {query}" if self.own_filter else query
        pick = f"filters={{{self.db.path()!r}: {own!r}}}"
        if self.context == "mixture":
            return f"{why}leave {it} out with Mixture(..., {pick})"
        return (
            f"{why}leave {it} out with a filter for this file alone: a kinodb.Mixture of the files with "
            f"{pick} (kql_filter applies to every file)"
        )

    def _query_without(self, mask: NDArray[np.bool_]) -> tuple[str | None, str]:
        """A short KQL query keeping exactly the kept episodes ``mask`` does not mark, and
        what it rests on (``"they are the 'biped' episodes: "``), or ``(None, "")``."""
        table = self.db.episodes()
        emb = np.asarray(table["embodiment"], dtype=object)[self.kept]
        lacking, others = set(emb[mask].tolist()), set(emb[~mask].tolist())
        if others and not lacking & others and len(lacking) <= 3 and all(isinstance(e, str) for e in lacking):
            names = ", ".join(render_value(e) for e in sorted(lacking))
            query = f"embodiment != {names}" if len(lacking) == 1 else f"NOT embodiment IN ({names})"
            return query, f"they are the {names} episodes: "
        ids = np.asarray(table["episode_id"], dtype=np.int64)[self.kept]
        # Runs of marked episodes in kept order: each run is one range of episode_ids when
        # the ids rise with the position (as the writer numbers them).
        edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
        first, stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lo, hi = ids[first], ids[stop - 1]
        single = first + 1 == stop
        if int(single.sum()) > 8 or int((~single).sum()) > 4:
            return None, ""
        inside = np.zeros(len(ids), dtype=bool)
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            inside |= (ids >= a) & (ids <= b)
        if not np.array_equal(inside, mask):  # ids that do not rise with the position
            return None, ""
        parts = []
        singles = lo[single].tolist()
        if len(singles) == 1:
            parts.append(f"episode_id != {singles[0]}")
        elif singles:
            parts.append(f"episode_id NOT IN ({', '.join(map(str, singles))})")
        parts += [
            f"NOT episode_id BETWEEN {a} AND {b}"
            for a, b in zip(lo[~single].tolist(), hi[~single].tolist(), strict=True)
        ]
        return " AND ".join(parts), ""

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

    def cameras(self, j: int) -> dict[str, Any]:
        cams = self._cams.get(j)
        if cams is None:
            if len(self._cams) > 4096:
                self._cams.clear()
            cams = self._cams[j] = self.db._episode_cameras(int(self.kept[j]))
        return cams

    def camera_names(self) -> list[str]:
        """The cameras any kept episode holds, in the order the episodes first hold them.

        Files without section columns (format 0.1) answer for the first kept episode.
        """
        sec = self.sections()
        return list(self.cameras(0)) if sec is None else sec.cameras()

    def holding(self, camera: str | None) -> NDArray[np.bool_]:
        """Per kept episode: whether it holds ``camera`` (any camera when None).

        One pass over the index's section columns (no episode is read). Files without
        them (format 0.1, whose camera tables mean walking every frame's header) answer
        for the first kept episode only and count the others as holding it: a read
        then names an episode that lacks it.
        """
        sec = self.sections()
        if sec is not None:
            if camera is not None:
                return np.asarray(sec.find(camera, KIND_CAMERA) >= 0)
            hit = sec.kinds == KIND_CAMERA
            seen = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
            return np.asarray(seen[sec.end] > seen[sec.start])
        out = np.ones(len(self.kept), dtype=bool)
        if len(out):
            cams = self.cameras(0)
            out[0] = bool(cams) if camera is None else camera in cams
        return out

    def require_camera(self, camera: str | None, without: str) -> None:
        """Raise if some kept episode lacks ``camera`` (has no camera, when None).

        The message counts them, names the first few, and gives the filter that leaves
        them out (`leave_out`); then the ``image_key=False`` alternative, ``without``
        saying what that gives.
        """
        has = self.holding(camera)
        if has.all():
            return
        what = "no cameras" if camera is None else f"no camera {camera!r}"
        raise KinodbError(
            f"{self.where}: {self.count(~has)} have {what} ({self.named(~has)}); {self.leave_out(~has)}, "
            f"or pass image_key=False for {without}"
        )


def _hwc(dims: NDArray[np.int64]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def _layout_text(key: NDArray[np.int64]) -> str:
    """``"float32 (5,)"`` from an index key ``(dtype code, rank, dim, dim, dim)``."""
    code, rank = int(key[0]), int(key[1])
    dtype = str(np.dtype(DTYPES[code])) if code < len(DTYPES) else f"dtype code {code}"
    return f"{dtype} {tuple(int(d) for d in key[2 : 1 + rank])}"


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
    table = (db.metadata().get("lerobot") or {}).get("tasks")
    if isinstance(table, dict) and all(str(int(c)) in table for c in order.tolist()):
        named = [str(table[str(int(c))]) for c in order.tolist()]
        if named[0] == meta.get("task") and sorted(named) == sorted(texts):
            rank = {int(c): k for k, c in enumerate(order.tolist())}
            return named, np.array([rank[int(c)] for c in codes.tolist()], dtype=np.int64)
    raise KinodbError(
        f"{where}: episode {ep}'s task_index does not index its {len(texts)} tasks frame by frame; "
        "re-ingest the source to rebuild it"
    )


class FrameWindows:
    """One sample per frame of the selected episodes; batches of windows by index.

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture` (its sources and
            per-source filters; samples run over every kept frame, sources in order).
        obs_horizon: Frames of observation history: states and images of frames
            ``t-obs_horizon+1 .. t``.
        action_horizon: Actions of frames ``t .. t+action_horizon-1``.
        kql_filter: Keep only the episodes matching this query (in every file).
        delta_timestamps: LeRobot's form, ``{feature: [seconds, ...]}``; features are
            ``observation.state``/``state``, ``action``, ``next.reward``/``reward``,
            ``observation.images.CAM``/``CAM``/``image``, or an extra array's name.
            Overrides the horizons for the features it names; ``state``, ``action`` and
            the cameras it does not name keep their horizons (in frames).
        pad: ``"edge"`` repeats the first/last frame outside the episode, ``"zero"``
            fills zeros; either way ``KEY_is_pad`` marks those entries.
        cameras: Camera names for images (None: the first camera of the first episode
            when images are asked for), or a mapping ``{name: camera}`` or ``{name:
            [camera of source 0, camera of source 1, ...]}`` that gives each source's own
            camera one output name (robots whose cameras are named differently).

    Example:
        >>> fw = FrameWindows("pick.kdb", obs_horizon=2, action_horizon=16)
        >>> batch = fw.lowdim(np.arange(256))
        >>> batch["state"].shape, batch["action"].shape, batch["action_is_pad"].shape
    """

    def __init__(
        self,
        source: Any,
        *,
        obs_horizon: int = 1,
        action_horizon: int = 1,
        kql_filter: str | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        pad: Pad = "edge",
        cameras: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        for name, value in (("obs_horizon", obs_horizon), ("action_horizon", action_horizon)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if pad not in ("edge", "zero"):
            raise ValueError(f"pad must be 'edge' or 'zero', got {pad!r}")
        self._pad: Pad = pad
        self._step_rows: dict[tuple[float, ...], tuple[NDArray[np.int64], bool, bool]] = {}
        self._widest_cache: tuple[dict[str, tuple[int, ...]], dict[str, np.dtype[Any]]] | None = None
        self._source_arg = source
        self._delta_given = dict(delta_timestamps or {})  # the user's names, for messages
        self._filter_given = kql_filter
        self._sources = _open_sources(source, kql_filter)
        self._starts = np.concatenate([[0], np.cumsum([s.starts[-1] for s in self._sources])]).astype(
            np.int64
        )
        first = self._sources[0]
        all_cams = first.camera_names()  # over every kept episode, not the first one alone
        self._all_cameras = all_cams
        if isinstance(cameras, Mapping):  # output name -> each source's own camera
            given = _camera_map(cameras, _num_given(source))
            stored = [given[src.index] for src in self._sources]
            self.spec = _build_spec(int(obs_horizon), int(action_horizon), delta_timestamps, list(cameras),
                                    list(cameras))  # fmt: skip
        else:
            chosen = (
                [cameras] if isinstance(cameras, str) else (list(cameras) if cameras is not None else None)
            )
            if chosen is not None:
                for cam in chosen:
                    if cam not in all_cams:
                        raise KinodbError(
                            f"{first.where}: no camera {cam!r}; it has {all_cams or 'no cameras'}"
                        )
            self.spec = _build_spec(int(obs_horizon), int(action_horizon), delta_timestamps, chosen, all_cams)
            stored = [{cam: cam for cam in self.spec.images} for _ in self._sources]
        self._stored = stored  # per source: output camera -> the camera as that source names it
        self._check_dims()
        for source, names in zip(self._sources, stored, strict=True):  # every source has its cameras
            have = source.camera_names()
            missing = [names[cam] for cam in self.spec.images if names[cam] not in have]
            if missing:
                raise KinodbError(
                    f"{source.where}: no camera {missing[0]!r}; it has {have or 'no cameras'}. Windows of "
                    "several sources need a camera from each (by default, the first source's first "
                    "camera): pass image_key with cameras every source has, a mapping like "
                    "{'front': ['image_0', 'cam_high']} (one camera per source, in order), or "
                    "image_key=False for windows without images"
                )
            for cam in self.spec.images:  # and every episode of it (a merged file of several robots)
                source.require_camera(names[cam], "windows without images")
        self._check_channels()
        self._check_grid()

    # -- description ------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_sources(self) -> int:
        """Number of files the samples come from."""
        return len(self._sources)

    @property
    def cameras(self) -> list[str]:
        """The cameras whose frames `images` returns."""
        return list(self.spec.images)

    def camera_layouts(self, cam: str) -> list[tuple[str, tuple[int, int, int]]]:
        """``(codec, (H, W, C))`` of output camera ``cam`` in each source (its first kept
        episode), in source order."""
        out = []
        for source, names in zip(self._sources, self._stored, strict=True):
            c = source.cameras(0)[names[cam]]
            out.append((c.codec, tuple(int(d) for d in c.shape[1:])))
        return out  # type: ignore[return-value]

    def database(self, source: int = 0) -> Database:
        """The open `Database` of source ``source``."""
        return self._sources[source].db

    def sample_counts(self) -> NDArray[np.int64]:
        """Samples (frames) per source with samples, in order."""
        return np.diff(self._starts)

    def counts_by_source(self) -> NDArray[np.int64]:
        """Samples per source given (a mixture's sources, or the list's files), 0 for those
        a filter left empty: sample indices run over the given sources in this order."""
        out = np.zeros(_num_given(self._source_arg), dtype=np.int64)
        for src, n in zip(self._sources, self.sample_counts().tolist(), strict=True):
            out[src.index] = n
        return out

    def locate(self, indices: Any) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """``(source, episode position in its file, frame)`` of each sample index.

        Raises:
            EpisodeNotFoundError: an index is out of range (the message names it).
        """
        idx = self._indices(indices)
        src = self._source_of(idx)
        ep, t = np.empty_like(idx), np.empty_like(idx)
        for s, sel in self._groups(src):
            j, tt = self._episode_frame(s, idx[sel] - self._starts[s])
            ep[sel], t[sel] = self._sources[s].kept[j], tt
        return src, ep, t

    @property
    def tasks_vary(self) -> bool:
        """Whether some selected episode's task changes from frame to frame."""
        return any(source._any_varying for source in self._sources)

    def tasks(self, indices: Any) -> list[str]:
        """The task text of each sample: its episode's, or its frame's where it changes."""
        idx = self._indices(indices)
        src = self._source_of(idx)
        out = np.empty(len(idx), dtype=object)
        for s, sel in self._groups(src):
            j, t = self._episode_frame(s, idx[sel] - self._starts[s])
            out[sel] = self._sources[s].task_texts(j, t)
        tasks: list[str] = out.tolist()
        return tasks

    # -- batches ----------------------------------------------------------------------------

    def lowdim(self, indices: Any) -> dict[str, NDArray[Any]]:
        """The low-dimensional windows of a batch, stacked: one gather per array.

        Returns ``state`` (B, To, S), ``action`` (B, Ta, A), their ``*_is_pad`` masks
        (B, T) bool, any other windowed arrays, ``episode_index`` (the episode's position
        in its file), ``frame_index`` and ``source`` (B,) int64.

        Raises:
            EpisodeNotFoundError: an index is out of range.
            KinodbError: the batch mixes sources whose arrays differ in shape or dtype;
                use `lowdim_groups` (or batches from one schema).
        """
        return stack_groups(self.lowdim_groups(indices))

    def lowdim_padded(
        self, indices: Any, *, normalizers: Normalizers | None = None
    ) -> dict[str, NDArray[Any]]:
        """`lowdim`, with sources of different widths zero-padded to the widest of all sources.

        When the sources' ``state`` (or ``action``, or another windowed array) differ in
        per-frame shape, every batch holds it padded with zeros to the widest over all
        sources (one shape for every batch) plus ``state_mask`` (True on real entries), as
        `kinodb.torch.pad_collate` gives for ``state`` and ``action`` (this pads other
        windowed arrays the same way). With one layout it is `lowdim`.

        ``normalizers`` (`Normalizers`) normalises each source's states and actions with
        its own statistics before padding (the padding stays zero).

        Raises:
            KinodbError: the sources' arrays differ in the kind of value (bool, number) or in
                their number of dimensions.
        """
        widest, common = self._widest()
        groups = self.lowdim_groups(indices)
        if normalizers is not None:
            for _, arrays in groups:
                normalizers.apply(int(arrays["source"][0]), arrays, zero_pad=self._pad == "zero")
        normalised = ("state", "action") if normalizers is not None else ()  # float32 from every source
        for key, dtype in common.items():  # e.g. float32 and float64 states: float64 (exact)
            if key not in normalised:
                for _, arrays in groups:
                    arrays[key] = arrays[key].astype(dtype, copy=False)
        if not widest:
            return stack_groups(groups)
        n = sum(len(sel) for sel, _ in groups)
        first = groups[0][1]
        out: dict[str, NDArray[Any]] = {}
        for key, value in first.items():
            shape = (n, value.shape[1], *widest[key]) if key in widest else (n, *value.shape[1:])
            out[key] = np.zeros(shape, value.dtype)
            if key in widest:
                out[f"{key}_mask"] = np.zeros(shape, bool)
        for sel, arrays in groups:
            for key, value in arrays.items():
                if key in widest:
                    region: tuple[Any, ...] = (sel, slice(None), *(slice(0, d) for d in value.shape[2:]))
                    out[key][region] = value
                    out[f"{key}_mask"][region] = True
                else:
                    out[key][sel] = value
        return out

    def _widest(self) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype[Any]]]:
        """Windowed arrays whose sources differ: ``(key -> widest per-frame shape, where the
        shapes differ; key -> common dtype, where numeric dtypes differ)``."""
        if self._widest_cache is None:
            widest: dict[str, tuple[int, ...]] = {}
            common: dict[str, np.dtype[Any]] = {}
            for key, (name, _) in self.spec.arrays.items():
                layouts = {(source.rows(name)[2], source.rows(name)[3]) for source in self._sources}
                if len(layouts) == 1:
                    continue
                dtypes = {np.dtype(dt) for dt, _ in layouts}
                ranks = {len(trail) for _, trail in layouts}
                if len(ranks) > 1 or (len(dtypes) > 1 and not all(dt.kind in "iuf" for dt in dtypes)):
                    raise KinodbError(
                        f"the sources hold {name!r} as {sorted(f'{dt} {trail}' for dt, trail in layouts)}; "
                        "only widths and numeric precision may differ between sources (padded, and "
                        "brought to one dtype), not the kind of value or the rank: serve or load such "
                        "sources apart"
                    )
                if len(dtypes) > 1:
                    common[key] = np.result_type(*dtypes)
                trails = {trail for _, trail in layouts}
                if len(trails) > 1:
                    widest[key] = tuple(max(dims) for dims in zip(*trails, strict=True))
            self._widest_cache = (widest, common)
        return self._widest_cache

    def lowdim_groups(
        self, indices: Any, *, tasks: bool = False
    ) -> list[tuple[NDArray[np.int64], dict[str, NDArray[Any]]]]:
        """`lowdim` per source: ``[(positions in the batch, arrays), ...]``, sources ascending.

        With ``tasks=True`` each part also holds ``task``, an object array of the samples'
        task texts (what `tasks` returns, without locating the samples twice).
        """
        idx = self._indices(indices)
        src = self._source_of(idx)
        return [
            (sel, self._lowdim_one(s, idx[sel] - self._starts[s], tasks=tasks))
            for s, sel in self._groups(src)
        ]

    def images(
        self,
        indices: Any,
        *,
        size: Any = None,
        resize: str = "bilinear",
        threads: int = 1,
        channels_last: bool = False,
    ) -> dict[str, NDArray[np.uint8]]:
        """The image windows of a batch: ``{camera: uint8 (B, To, C, H, W)}``.

        Only the frames the windows need are decoded (JPEG with DCT-domain scaling when
        the target is at most half the stored size), then resized with ``resize``
        (``bilinear`` and ``area`` are antialiased; ``nearest`` is available) into
        ``size`` = ``(H, W)``. Frames outside the episode repeat the edge frame, or are
        zeros with ``pad="zero"``; ``image_is_pad`` in `lowdim` marks them.

        With ``channels_last`` the arrays have the same shape and values over
        channels-last memory: a (B, To, H, W, C) array viewed as (B, To, C, H, W). The
        pixels then keep the layout they are stored and decoded in, with no transpose
        (raw frames are one copy each).

        Raises:
            CorruptFileError: a frame does not decode (names file, episode, camera, frame).
            KinodbError: episodes of the batch differ in a camera's shape and no ``size``
                was given to bring them to one.
        """
        size = _images.check_size(size)
        idx = self._indices(indices)
        src = self._source_of(idx)
        out: dict[str, NDArray[np.uint8]] = {}
        for cam, offsets in self.spec.images.items():
            k = len(offsets)
            jobs: list[tuple[int, Any, str, tuple[int, int, int], Any]] = []
            raw: list[tuple[_Source, tuple[int, int, int], NDArray[np.int64], NDArray[np.int64]]] = []
            shape: tuple[int, int, int] | None = None
            zero_slots: list[NDArray[np.int64]] = []
            for s, sel in self._groups(src):
                source = self._sources[s]
                j, t = self._episode_frame(s, idx[sel] - self._starts[s])
                frames, pad = self._frames(source, j, t, offsets, seconds=self.spec.image_in_seconds(cam))
                slots = sel[:, None] * k + np.arange(k)
                if self._pad == "zero" and pad.any():
                    zero_slots.append(slots[pad])
                keep = ~pad if self._pad == "zero" else np.ones_like(pad)
                starts = np.empty(len(j), dtype=np.int64)  # a raw camera's first byte, else -1
                name = self._stored[s][cam]
                for n, jj in enumerate(j.tolist()):
                    c = source.cameras(jj).get(name)
                    if c is None:
                        raise KinodbError(
                            f"{source.where}: episode {int(source.kept[jj])} has no camera {name!r}; "
                            "leave such episodes out with kql_filter, or pass image_key=False for "
                            "windows without images"
                        )
                    hwc = c.shape[1:]
                    if shape is None:
                        shape = hwc
                    elif hwc[2] != shape[2]:
                        raise KinodbError(
                            f"camera {cam!r} has {hwc[2]} channel(s) in {source.where} episode "
                            f"{int(source.kept[jj])} but {shape[2]} elsewhere in this batch; frames of one "
                            "camera need one channel count: map each source to a camera with the same "
                            "channels (image_key), or leave the others out with kql_filter"
                        )
                    elif hwc != shape and size is None:
                        raise KinodbError(
                            f"camera {cam!r} is {hwc} in {source.where} episode {int(source.kept[jj])} but "
                            f"{shape} elsewhere in this batch; pass image_size=(H, W) to resize them to one"
                        )
                    if c.codec == "raw" and hwc == shape and size in (None, hwc[:2]):
                        starts[n] = c.data_offset
                        continue
                    starts[n] = -1
                    for f, slot in zip(frames[n][keep[n]].tolist(), slots[n][keep[n]].tolist(), strict=True):
                        jobs.append((slot, _frame_data(source, c, f), c.codec, hwc, (source, jj, name, f)))
                direct = (starts >= 0)[:, None] & keep
                if direct.any():
                    assert shape is not None
                    step = shape[0] * shape[1] * shape[2]
                    byte = (starts[:, None] + frames * step)[direct]
                    raw.append((source, shape, slots[direct], byte))
            assert shape is not None
            h, w = size or shape[:2]
            c = shape[2]
            block = np.empty((len(idx) * k, *((h, w, c) if channels_last else (c, h, w))), np.uint8)
            for slots_z in zero_slots:
                block[slots_z] = 0
            for source, hwc, where_to, byte in raw:
                _gather_raw(block, source.frame_rows(hwc), hwc, where_to, byte, threads, channels_last)
            _images.decode_into(block, jobs, size, resize, threads, channels_last=channels_last)
            if channels_last:
                out[cam] = block.reshape(len(idx), k, h, w, c).transpose(0, 1, 4, 2, 3)
            else:
                out[cam] = block.reshape(len(idx), k, c, h, w)
        return out

    def encoded(self, indices: Any) -> list[dict[str, list[bytes]]]:
        """The stored bytes of each window's frames: ``[{camera: [frame bytes, ...]}, ...]``.

        Frames outside the episode repeat the edge frame (``image_is_pad`` marks them).
        """
        idx = self._indices(indices)
        src = self._source_of(idx)
        out: list[dict[str, list[bytes]]] = [{} for _ in range(len(idx))]
        for cam, offsets in self.spec.images.items():
            for s, sel in self._groups(src):
                source = self._sources[s]
                j, t = self._episode_frame(s, idx[sel] - self._starts[s])
                frames, _ = self._frames(source, j, t, offsets, seconds=self.spec.image_in_seconds(cam))
                for b, jj, row in zip(sel.tolist(), j.tolist(), frames.tolist(), strict=True):
                    c = source.cameras(jj)[self._stored[s][cam]]
                    out[b][cam] = [bytes(source.db._frame_bytes(c, f)) for f in row]
        return out

    # -- internals --------------------------------------------------------------------------

    def _indices(self, indices: Any) -> NDArray[np.int64]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise EpisodeNotFoundError(f"sample {bad} out of range: there are {n} samples (0..{n - 1})")
        return idx

    def _source_of(self, idx: NDArray[np.int64]) -> NDArray[np.int64]:
        if len(self._sources) == 1:
            return np.zeros(len(idx), dtype=np.int64)
        return np.searchsorted(self._starts, idx, side="right").astype(np.int64) - 1

    def _groups(self, src: NDArray[np.int64]) -> list[tuple[int, NDArray[np.int64]]]:
        if len(self._sources) == 1:
            return [(0, np.arange(len(src), dtype=np.int64))]
        return [(int(s), np.flatnonzero(src == s)) for s in np.unique(src)]

    def _episode_frame(self, s: int, local: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        source = self._sources[s]
        lookup = source.frame_lookup()
        if lookup is not None:  # two small gathers instead of a binary search per sample
            j = lookup[0][local].astype(np.int64)
            return j, lookup[1][local].astype(np.int64)
        starts = source.starts
        j = np.searchsorted(starts, local, side="right") - 1
        return j, local - starts[j]

    def _frames(
        self, source: _Source, j: NDArray[np.int64], t: NDArray[np.int64], offsets: tuple[float, ...], *,
        seconds: bool, last: NDArray[np.int64] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:  # fmt: skip
        """Clipped frame numbers (B, K) and the mask of those outside the episode
        (``last``: each sample's last frame, when the caller has it)."""
        if seconds:
            off = np.asarray(offsets, dtype=np.float64)
            steps = np.rint(off[None, :] * source.fps[j][:, None]).astype(np.int64)
            back, ahead = True, True
        else:
            steps, back, ahead = self._steps(offsets)
        frames = t[:, None] + steps
        end = (source.lengths[j] - 1 if last is None else last)[:, None]
        # Offsets of one sign can only leave the episode on that side: skip the other test.
        if back and ahead:
            pad = (frames < 0) | (frames > end)
        elif ahead:
            pad = frames > end
        else:
            pad = frames < 0
        if back:
            np.maximum(frames, 0, out=frames)
        if ahead:
            np.minimum(frames, end, out=frames)
        return frames, pad

    def _steps(self, offsets: tuple[float, ...]) -> tuple[NDArray[np.int64], bool, bool]:
        """Offsets in frames as a ``(1, K)`` row, and whether any is negative / positive (cached)."""
        found = self._step_rows.get(offsets)
        if found is None:
            steps = np.asarray(offsets, dtype=np.float64).astype(np.int64)[None, :]
            found = self._step_rows[offsets] = (steps, bool((steps < 0).any()), bool((steps > 0).any()))
        return found

    def _lowdim_one(
        self, s: int, local: NDArray[np.int64], *, tasks: bool = False
    ) -> dict[str, NDArray[Any]]:
        source = self._sources[s]
        j, t = self._episode_frame(s, local)
        last = source.lengths[j] - 1
        out: dict[str, NDArray[Any]] = {}
        for key, (name, offsets) in self.spec.arrays.items():
            frames, pad = self._frames(
                source, j, t, offsets, seconds=self.spec.array_in_seconds(key), last=last
            )
            starts, view, dtype, trail = source.rows(name)
            width = math.prod(trail)
            if width != 1:
                frames *= width
            frames += starts[j][:, None]
            values = view[frames].view(dtype).reshape(*frames.shape, *trail)  # (B, K) rows: one gather
            if self._pad == "zero" and pad.any():
                values[pad] = 0
            out[key] = values
            out[f"{key}_is_pad"] = pad
        for cam, offsets in self.spec.images.items():
            key = "image_is_pad" if len(self.spec.images) == 1 else f"image_is_pad.{cam}"
            seconds = self.spec.image_in_seconds(cam)
            out[key] = self._frames(source, j, t, offsets, seconds=seconds, last=last)[1]
        out["episode_index"] = source.kept[j]
        out["frame_index"] = t
        out["source"] = np.full(len(t), source.index, dtype=np.int64)
        if tasks:
            out["task"] = source.task_texts(j, t)
        return out

    def _check_dims(self) -> None:
        """Each source holds the windowed arrays (a misspelt delta_timestamps feature is named
        now), and its states and actions have one width (a merged file of several robots does
        not): refused now, with the fix, rather than on every batch."""
        names = {name for name, _ in self.spec.arrays.values()}
        for source in self._sources:
            sec = source.sections()
            have = source.db._episode_arrays(int(source.kept[0]))
            for key, (name, _) in self.spec.arrays.items():
                # Held by no kept episode (the first, in a file without section columns): a
                # misspelt name. Held by some only: `array_layout` below names the others.
                held = name in have if sec is None else bool((sec.find(name, KIND_ARRAY) >= 0).any())
                if not held:
                    raise KinodbError(
                        f"{source.where}: windows ask for {name!r} ({key!r}), but its episodes hold "
                        f"{sorted(have)}; name one of those (delta_timestamps takes kinodb's names or "
                        "LeRobot's, e.g. 'observation.state', 'action', 'next.reward')"
                    )
            table = source.db.episodes()
            for name, column in (("states", "state_dim"), ("actions", "action_dim")):
                if name not in names:
                    continue
                dims, counts = np.unique(np.asarray(table[column])[source.kept], return_counts=True)
                if len(dims) > 1:
                    tally = ", ".join(
                        f"{d}: {n} episode{'' if n == 1 else 's'}"
                        for d, n in zip(dims.tolist(), counts.tolist(), strict=True)
                    )
                    pick = (
                        f"Mixture(..., filters={{{source.db.path()!r}: '{column} = {dims[0]}'}})"
                        if isinstance(self._source_arg, Mixture)
                        else f'kql_filter="{column} = {dims[0]}"'
                    )
                    raise KinodbError(
                        f"{source.where}: its episodes differ in {column} ({tally}); windows need one layout "
                        f"per file: select one with {pick}, or keep each robot's data in its own file and "
                        "combine the files with kinodb.Mixture (pad_collate pads them)"
                    )
            for name in sorted(names):  # every kept episode holds it, with one dtype and shape
                source.array_layout(name)

    def _check_channels(self) -> None:
        """Each output camera has one channel count over every kept episode of each source
        (a batch cannot stack 1- and 3-channel frames, whatever size they are brought to).

        Sources may differ from each other (batches by schema, `SchemaBatchSampler`, hold
        one source each); a batch that mixes them says so.
        """
        for cam in self.spec.images:
            for source, names in zip(self._sources, self._stored, strict=True):
                shapes = source.camera_shapes(names[cam])
                odd = None if shapes is None else source.odd_ones(shapes[:, 2:])
                if odd is not None:
                    assert shapes is not None
                    raise KinodbError(
                        f"camera {names[cam]!r} has {int(shapes[odd][0, 2])} channel(s) in {source.count(odd)} "
                        f"of {source.where} ({source.named(odd)}) but {int(shapes[~odd][0, 2])} in the others; "
                        f"frames of one camera need one channel count: {source.leave_out(odd)}"
                    )

    def check_image_sizes(self) -> None:
        """Raise unless each camera has one frame size over every kept episode of each
        source, as `images` needs when no ``size`` brings them to one.

        Checked from the index alone (O(episodes), no frame read); a format 0.1 file is
        checked batch by batch instead. Sources may differ from each other (batches by
        schema hold one source each); a batch that mixes them says so.

        Raises:
            KinodbError: a camera's frames differ in size within a source; names the
                episodes, and the filter that leaves them out.
        """
        for cam in self.spec.images:
            for source, names in zip(self._sources, self._stored, strict=True):
                shapes = source.camera_shapes(names[cam])
                odd = None if shapes is None else source.odd_ones(shapes)
                if odd is not None:
                    assert shapes is not None
                    raise KinodbError(
                        f"camera {names[cam]!r} is {_hwc(shapes[odd][0])} in {source.count(odd)} of "
                        f"{source.where} ({source.named(odd)}) but {_hwc(shapes[~odd][0])} in the others; "
                        f"pass image_size=(H, W) to resize them to one, or {source.leave_out(odd)}"
                    )

    def _check_grid(self) -> None:
        """With offsets in seconds, every one must land on each source's frame grid."""
        if not self.spec.seconds:
            return
        for source in self._sources:
            for fps in np.unique(source.fps).tolist():
                if not fps > 0:
                    raise KinodbError(
                        f"{source.where}: episodes without fps; delta_timestamps needs it (re-ingest "
                        f"with --fps, or give obs_horizon/action_horizon in frames)"
                    )
                named = [(k, o) for k, (_, o) in self.spec.arrays.items() if self.spec.array_in_seconds(k)]
                named += [(c, o) for c, o in self.spec.images.items() if self.spec.image_in_seconds(c)]
                for key, offsets in named:
                    for n, dt in enumerate(offsets):
                        if abs(dt * fps - round(dt * fps)) / fps > _TOLERANCE_S:
                            rates = sorted(
                                {float(f) for s in self._sources for f in np.unique(s.fps).tolist()}
                            )
                            key = next(
                                (k for k, v in self._delta_given.items() if tuple(map(float, v)) == offsets),
                                key,
                            )
                            count = int((source.fps == fps).sum())
                            query = f"fps != {render_value(float(fps))}"  # exact: 29.97002997002997
                            if self._filter_given:
                                query = f"({self._filter_given}) AND {query}"
                            raise KinodbError(
                                f"delta_timestamps of {key!r}: {dt} s (entry {n}) is not a multiple of 1/fps "
                                f"within {_TOLERANCE_S} s for the {count} episode{'' if count == 1 else 's'} "
                                f"at {fps:g} fps in {source.where} (the selected episodes run at "
                                f"{', '.join(f'{r:g}' for r in rates)} fps): give offsets on that grid "
                                f"(multiples of {1 / fps:.6g} s), leave those episodes out with "
                                f'kql_filter="{query}", or give obs_horizon/action_horizon in frames'
                            )


class Normalizers:
    """Per-source normalisers of states and actions from each file's stored statistics.

    ``used`` names the arrays the dataset hands out (``states``, ``actions``); each needs
    stored statistics, unless a source's episodes hold it with no features at all.
    """

    def __init__(
        self, sources: Sequence[_Source], mode: str, used: Sequence[str] = ("states", "actions")
    ) -> None:
        from kinodb.stats import Normalizer  # deferred: only normalising datasets need it

        self._by_source: dict[int, dict[str, Any]] = {}  # by the source's id (`_Source.index`)
        keys = {"states": "state", "actions": "action"}
        for source in sources:
            stored = source.db.stats()
            stats, skipped = stored["arrays"], stored.get("skipped", {})
            table = source.db.episodes()
            widths = {"states": table["state_dim"], "actions": table["action_dim"]}
            lacking = [
                name for name in used
                if name not in stats and np.asarray(widths[name])[source.kept].any()  # zero-width: nothing to do
            ]  # fmt: skip
            if lacking:
                why = "; ".join(f"{name}: {skipped[name]}" for name in lacking if name in skipped)
                path = source.db.path()
                raise KinodbError(
                    f"{source.where}: normalize={mode!r} needs statistics of {' and '.join(lacking)}, but its "
                    "stored statistics have none"
                    + (f" ({why})" if why else "")
                    + f"; run: kino stats {path} (a file whose episodes differ in dims has none: keep such "
                    "datasets as separate files in a Mixture), or leave normalize unset"
                )
            self._by_source[source.index] = {
                keys[name]: Normalizer.from_stats(stats[name], mode) for name in used if name in stats
            }

    def apply(self, source: int, arrays: dict[str, Any], *, zero_pad: bool = False) -> None:
        """Normalise ``arrays``' states and actions in place; with ``zero_pad`` the entries
        their ``*_is_pad`` masks mark stay zero (``pad="zero"``)."""
        for key, norm in self._by_source[source].items():
            if key in arrays:
                arrays[key] = norm.apply(arrays[key])
                pad = arrays.get(f"{key}_is_pad")
                if zero_pad and pad is not None and pad.any():
                    arrays[key][pad] = 0


def normalized_arrays(fw: FrameWindows) -> list[str]:
    """The arrays among states and actions that the windows hand out."""
    names = {name for name, _ in fw.spec.arrays.values()}
    return [name for name in ("states", "actions") if name in names]


def stack_groups(groups: list[tuple[NDArray[np.int64], dict[str, NDArray[Any]]]]) -> dict[str, NDArray[Any]]:
    """One batch from `FrameWindows.lowdim_groups`' per-source parts, in batch order.

    Raises:
        KinodbError: the sources' arrays differ in shape or dtype (mixed schemas).
    """
    if len(groups) == 1:
        return groups[0][1]
    first = groups[0][1]
    for _, arrays in groups[1:]:
        for key, value in arrays.items():
            if value.shape[1:] != first[key].shape[1:] or value.dtype != first[key].dtype:
                raise KinodbError(
                    f"this batch mixes {key!r} of {first[key].dtype} {first[key].shape[1:]} and "
                    f"{value.dtype} {value.shape[1:]} (sources with different schemas), which cannot "
                    f"be stacked: batch by schema (SchemaBatchSampler, or a kql_filter per source), use "
                    f"FrameWindows.lowdim_padded, or read them through kinodb.torch.KinoFrameDataset with "
                    f"collate_fn=pad_collate (or from_mixture(batch_size=...)); those pad them and add masks"
                )
    n = sum(len(sel) for sel, _ in groups)
    out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
    for sel, arrays in groups:
        for key, value in arrays.items():
            out[key][sel] = value
    return out


_RAW_SPLIT_BYTES = 1 << 20  # raw frames gathered on several threads from this much on
_RAW_LOOP_BYTES = 8192  # channels-last raw frames of this size and larger are copied one by one


def _gather_raw(
    block: NDArray[np.uint8],
    rows: NDArray[np.uint8],
    hwc: tuple[int, int, int],
    where_to: NDArray[np.int64],
    byte: NDArray[np.int64],
    threads: int,
    channels_last: bool = False,
) -> None:
    """Raw frames need no decoding: whole frames gathered out of the map (``rows[byte]``)
    and transposed to channels-first into their slots of ``block``, or with
    ``channels_last`` copied into them as they are stored.

    The transpose is a byte-strided copy, the slow part; NumPy runs it without the GIL,
    so a large batch is split over the decode threads.
    """
    if channels_last and rows.shape[1] < _RAW_LOOP_BYTES:
        flat = block.reshape(len(block), -1)

        def part(a: int, b: int) -> None:  # small frames: one gather (a loop costs more)
            flat[where_to[a:b]] = rows[byte[a:b]]

    elif channels_last:
        flat = block.reshape(len(block), -1)

        def part(a: int, b: int) -> None:  # one copy per frame, from the map into its slot
            for slot, at in zip(where_to[a:b].tolist(), byte[a:b].tolist(), strict=True):
                flat[slot] = rows[at]

    else:

        def part(a: int, b: int) -> None:
            block[where_to[a:b]] = rows[byte[a:b]].reshape(b - a, *hwc).transpose(0, 3, 1, 2)

    n = len(byte)
    _images.in_parts(n, threads if n * rows.shape[1] >= _RAW_SPLIT_BYTES else 1, part)


def _frame_data(source: _Source, cam: Any, f: int) -> Any:
    """The stored bytes of frame ``f`` (a view of the map)."""
    if cam.codec == "raw":
        _, h, w, c = cam.shape
        pos = cam.data_offset + f * h * w * c
        return source.db._map()[pos : pos + h * w * c]
    return source.db._frame_bytes(cam, f)


def _open_sources(source: Any, kql_filter: str | None) -> list[_Source]:
    from kinodb.kql._eval import fields_of  # deferred: kql builds on kdb

    if isinstance(source, Mixture):
        out = []
        absent = fields_of(source.database(i) for i in range(len(source.sources()))) if kql_filter else ()
        for i, info in enumerate(source.sources()):
            db = source.database(i)
            kept = np.asarray(source._src[i].kept, dtype=np.int64)
            if kql_filter is not None:  # a field only some sources hold is null in the others
                kept = np.intersect1d(kept, db.query(kql_filter, absent=absent))
            out.append(_Source(db, kept, f"mixture source {i} ({info.path})", i, context="mixture",
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
    out = []
    absent = fields_of(dbs) if kql_filter else ()
    for i, db in enumerate(dbs):
        kept = (
            np.arange(len(db), dtype=np.int64) if kql_filter is None else db.query(kql_filter, absent=absent)
        )
        where = db.path() if len(dbs) == 1 else f"source {i} ({db.path()})"
        context = "file" if len(dbs) == 1 else "list"
        out.append(
            _Source(db, np.asarray(kept, dtype=np.int64), where, i, context=context, kql_filter=kql_filter)
        )
    return _nonempty(out, kql_filter)


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
            f"the filter {kql_filter!r} keeps no episode with frames"
            if kql_filter
            else "no episode has frames"
        )
        raise KinodbError(f"{', '.join(s.where for s in sources)}: {why}")
    return kept


def _camera_map(cameras: Mapping[str, Any], sources: int) -> list[dict[str, str]]:
    """``{output: camera or [camera per source]}`` as one ``{output: camera}`` per source."""
    if not cameras:
        raise ValueError("image_key as a mapping needs at least one camera")
    out: list[dict[str, str]] = [{} for _ in range(sources)]
    for key, value in cameras.items():
        names = [value] * sources if isinstance(value, str) else list(value)
        if not isinstance(key, str) or len(names) != sources or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"image_key[{key!r}] must be a camera name or a list of {sources} camera names (one per "
                f"source, in order), got {value!r}"
            )
        for s, name in enumerate(names):
            out[s][key] = name
    return out


def _build_spec(
    obs: int,
    act: int,
    delta: Mapping[str, Sequence[float]] | None,
    chosen: list[str] | None,
    all_cams: list[str],
) -> WindowSpec:
    """Offsets per feature: ``delta`` (seconds) for the features it names; the horizons (in
    frames) for ``state``, ``action`` and the ``chosen`` cameras it does not name."""
    history = tuple(float(k) for k in range(-obs + 1, 1))
    future = tuple(float(k) for k in range(act))
    if delta is None:
        return WindowSpec(
            {"state": ("states", history), "action": ("actions", future)},
            dict.fromkeys(chosen or [], history),
            seconds=False,
        )
    if not isinstance(delta, Mapping) or not delta:
        raise ValueError(
            f"delta_timestamps must be a non-empty mapping {{feature: [seconds, ...]}}, got {delta!r}"
        )
    arrays: dict[str, tuple[str, tuple[float, ...]]] = {}
    images: dict[str, tuple[float, ...]] = {}
    for feature, values in delta.items():
        if not isinstance(feature, str):
            raise TypeError(f"delta_timestamps keys must be feature names (str), got {feature!r}")
        offsets = _seconds_of(feature, values)
        cam = _camera_of(feature, all_cams)
        if cam is not None:
            images[cam] = offsets
        elif feature in _ALIASES:
            name, key = _ALIASES[feature]
            arrays[key] = (name, offsets)
        else:  # an extra array, by its name (``observation.states`` is ``states``, keyed ``state``)
            name = feature.removeprefix("observation.")
            arrays[_ALIASES[name][1] if name in _ALIASES else name] = (
                _ALIASES.get(name, (name,))[0],
                offsets,
            )
    horizons = {"state": ("states", history), "action": ("actions", future)}
    frame_arrays = [key for key in horizons if key not in arrays]  # in order: the output's keys
    frame_images = [cam for cam in chosen or [] if cam not in images]
    arrays.update({key: horizons[key] for key in frame_arrays})
    images.update(dict.fromkeys(frame_images, history))
    return WindowSpec(arrays, images, True, frozenset(frame_arrays), frozenset(frame_images))


def _seconds_of(feature: str, values: Any) -> tuple[float, ...]:
    """``delta_timestamps[feature]`` as a tuple of finite floats, checked."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(
            f"delta_timestamps[{feature!r}] must be a list of seconds such as [-0.1, 0.0], got {values!r}"
        )
    try:
        offsets = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(
            f"delta_timestamps[{feature!r}] must be a list of seconds (numbers), got {values!r}"
        ) from None
    if not offsets or not all(math.isfinite(v) for v in offsets):
        raise ValueError(f"delta_timestamps[{feature!r}] must be a non-empty list of finite seconds")
    return offsets


def _camera_of(feature: str, cams: list[str]) -> str | None:
    if feature in ("image", "observation.image"):
        if not cams:
            raise KinodbError(f"delta_timestamps names {feature!r} but the data has no cameras")
        return cams[0]
    for prefix in ("observation.images.", "images.", ""):
        if feature.startswith(prefix) and feature[len(prefix) :] in cams:
            return feature[len(prefix) :]
    if feature.startswith("observation.images."):
        raise KinodbError(f"delta_timestamps names camera {feature!r}; the data has cameras {cams}")
    return None
