"""Checks of a window source's kept episodes from the index alone, and the advice they give.

`_Sections` answers from the index's section columns (a few NumPy passes over the rows, no
episode read) which kept episodes hold an array or a camera, and with what layout.
`_EpisodeChecks`, the base of a window source, turns that into checks made when windows are
made (every kept episode holds the windowed arrays and cameras, with one layout) and into
messages that count and name the odd episodes and give the filter that leaves them out (by
embodiment, by episode_id ranges, or how to write one). `camera_mapping_hint` and
`off_grid_fix` give the fixes that concern the sources of several: a camera of each, a
filter of one's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import CorruptFileError, KinodbError, NameNotFoundError
from kinodb.kdb._layout import DTYPES, KIND_ARRAY, KIND_CAMERA
from kinodb.kdb.reader import Database
from kinodb.kql.ast import render_value


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
        start, count = np.asarray(cols["sec_start"])[kept], np.asarray(cols["sec_count"])[kept]
        bad = (start > rows) | (start + count > rows)  # u64: the first test keeps the sum from wrapping
        if bad.any():  # checked as a read checks them, before any row is looked up
            j = int(np.flatnonzero(bad)[0])
            first, last = int(start[j]), int(start[j]) + int(count[j])
            raise CorruptFileError(
                f"{db.path()}: episode {int(kept[j])}: section rows {first}..{last} do not exist (the section "
                f"directory has {rows} rows); the index is damaged: run kino validate {db.path()}"
            )
        self.start = start.astype(np.int64)
        self.end = self.start + count
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


class _EpisodeChecks:
    """What the index says about one window source's kept episodes, and how to leave some out.

    The base of `kinodb._window_sources._Source`: the arrays and cameras each kept episode
    holds, the episodes that differ from the others, and the messages naming them with the
    filter that leaves them out. ``context`` says how the file was given (``"file"``,
    ``"list"`` or ``"mixture"``), ``kql_filter`` the filter given for every source and
    ``own_filter`` a mixture source's own filter: with them a message gives the filter that
    leaves episodes out.
    """

    def __init__(
        self,
        db: Database,
        kept: NDArray[np.int64],
        where: str,
        *,
        context: str = "file",
        kql_filter: str | None = None,
        own_filter: str | None = None,
    ) -> None:
        self.db, self.kept, self.where = db, kept, where
        self.context, self.kql_filter, self.own_filter = context, kql_filter, own_filter
        self._sections: _Sections | bool | None = False  # False: not looked at yet
        self._cams: dict[int, dict[str, Any]] = {}

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
        raise NameNotFoundError(
            f"{self.where}: {self.count(~has)} have {what} ({self.named(~has)}); {self.leave_out(~has)}, "
            f"or pass image_key=False for {without}"
        )


def _layout_text(key: NDArray[np.int64]) -> str:
    """``"float32 (5,)"`` from an index key ``(dtype code, rank, dim, dim, dim)``."""
    code, rank = int(key[0]), int(key[1])
    dtype = str(np.dtype(DTYPES[code])) if code < len(DTYPES) else f"dtype code {code}"
    return f"{dtype} {tuple(int(d) for d in key[2 : 1 + rank])}"


class _WindowSource(Protocol):
    """What the messages below read of a window source (`kinodb._window_sources._Source`)."""

    index: int
    context: str
    own_filter: str | None
    kept: NDArray[np.int64]
    fps: NDArray[np.float64]
    db: Database

    def camera_names(self) -> list[str]: ...


def camera_mapping_hint(
    sources: Sequence[_WindowSource],
    given: int,
    camera: str,
    *,
    output: str | None = None,
    default: bool = False,
) -> str:
    """What to pass for windows of several sources whose cameras are named apart, with a
    mapping filled in from the sources: each source's ``camera`` where it has one, else
    its first camera (``output`` names the mapping's key, ``camera`` by default; ``default``
    says that no camera was asked for). ``given`` counts the sources given, ``sources``
    those the filters left episodes in."""
    names = [camera] * given
    for source in sources:
        have = source.camera_names()
        names[source.index] = camera if camera in have or not have else have[0]
    example = {output or camera: names}
    return (
        "Windows of several sources need a camera from each"
        + (" (by default, the first source's first camera)" if default else "")
        + ": pass image_key with cameras every source has, a mapping {output name: [camera of each source, "
        f"in order]}} such as image_key={example!r}, or image_key=False for windows without images"
    )


def off_grid_fix(
    source: _WindowSource, sources: Sequence[_WindowSource], fps: float, count: int, kql_filter: str | None
) -> str:
    """How to leave out ``source``'s ``count`` episodes at ``fps`` (off the grid of some
    ``delta_timestamps`` offset), ending in ``", "``.

    For a file or a list, ``kql_filter`` (no episode at ``fps`` fits the grid in any of
    ``sources``; empty when it would leave none). For a mixture, that source's own filter,
    since ``kql_filter`` would silently take every source's share of such episodes away;
    or leaving the source out, when all its episodes run at ``fps``.
    """
    query = f"fps != {render_value(float(fps))}"  # exact: 29.97002997002997
    if source.context != "mixture":
        if all((s.fps == fps).all() for s in sources):
            return ""
        given = f"({kql_filter}) AND {query}" if kql_filter else query
        return f'leave those episodes out with kql_filter="{given}", '
    if count == len(source.kept):
        return (
            f"leave this source out of the mixture (all {count} of its selected episodes run at {fps:g} "
            "fps), "
        )
    own = f"({source.own_filter}) AND {query}" if source.own_filter else query
    return (
        "leave those episodes out with this source's own filter, Mixture(..., "
        f"filters={{{source.db.path()!r}: {own!r}}}) (kql_filter applies to every source), "
    )
