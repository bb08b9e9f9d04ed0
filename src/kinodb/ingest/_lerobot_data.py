"""LeRobot data files (parquet) read one episode at a time, each row group decoded once.

A v3.0 data file holds many episodes, and its row groups many episodes each: LeRobot's
ported datasets (written by ``DataFrame.to_parquet``) keep one row group per file, kinodb's
exporter up to 65,536 rows each. Reading an episode's row groups anew for every episode
would decode each group once per episode in it. `DataFiles` keeps:

- a few open files, each with its row-group index: the ``episode_index`` statistics of
  every row group, scanned once per file, which say the groups an episode may lie in;
- the decoded row groups of the last episode read (only those it needed), each with its
  ``episode_index`` values sorted once, so the next episode of the same group is a slice
  (or a ``take`` where the group's rows are not in episode order) of what is held.

Memory stays within what one episode's read needs: the groups it lies in (the whole file
where the statistics are absent, as one read of it would hold anyway).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._lerobot_columns import row_indices, to_numpy

FILES_KEPT = 4
"""How many data files stay open (with their row-group index)."""


@dataclass(frozen=True, slots=True)
class _File:
    """An open data file, the columns read from it, and its row-group index."""

    pf: Any  # pyarrow.parquet.ParquetFile
    columns: list[str]
    episodes: bool  # holds an episode_index column
    lows: np.ndarray | None  # per row group, the least episode_index (None: no statistics)
    highs: np.ndarray | None  # ... and the greatest

    def groups(self, e: int) -> list[int]:
        """The row groups whose statistics admit episode ``e`` (every group without them)."""
        if self.lows is None or self.highs is None:
            return list(range(self.pf.metadata.num_row_groups))
        return [int(g) for g in np.flatnonzero((self.lows <= e) & (e <= self.highs))]


@dataclass(frozen=True, slots=True)
class _Group:
    """A decoded row group and where each episode's rows lie in it."""

    table: Any  # pyarrow.Table
    keys: np.ndarray  # the group's episode_index values, sorted
    order: np.ndarray | None  # row positions in ``keys`` order (None: the rows are in that order)

    def rows(self, pa: Any, e: int) -> Any:
        """Episode ``e``'s rows of this group, in file order."""
        lo, hi = int(np.searchsorted(self.keys, e, "left")), int(np.searchsorted(self.keys, e, "right"))
        if self.order is None:
            return self.table.slice(lo, hi - lo)
        rows = self.order[lo:hi]  # ascending: the sort is stable
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:
            return self.table.slice(int(rows[0]), int(rows.size))
        return self.table.take(row_indices(pa, rows))


def _index(pf: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Every row group's ``episode_index`` min and max, from the statistics (None: a group
    has none, or they are not numbers)."""
    md = pf.metadata
    leaf = next((j for j in range(md.num_columns) if md.schema.column(j).path == "episode_index"), None)
    if leaf is None:
        return None
    lows, highs = [], []
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(leaf).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    low, high = np.asarray(lows), np.asarray(highs)
    if low.dtype.kind not in "iuf" or high.dtype.kind not in "iuf":
        return None
    return low, high


def _group(pa: Any, table: Any, where: str) -> _Group:
    keys = to_numpy(pa, table["episode_index"], "episode_index", where).reshape(-1)
    if keys.size < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return _Group(table, keys, None)
    order = np.argsort(keys, kind="stable")
    return _Group(table, keys[order], order)


class DataFiles:
    """The data files of one dataset, read episode by episode (see the module docstring).

    Args:
        pa: the ``pyarrow`` module.
        pq: the ``pyarrow.parquet`` module.
        skip: columns never read (image columns when images are left out).
        several: the files hold several episodes (v3.0): an ``episode_index`` column is
            required.
        missing: the error for a data file that does not exist, given its path and the
            episode wanted.
    """

    def __init__(
        self,
        pa: Any,
        pq: Any,
        *,
        skip: frozenset[str],
        several: bool,
        missing: Callable[[str, int], ConversionError],
    ) -> None:
        self._pa, self._pq = pa, pq
        self._skip, self._several, self._missing = skip, several, missing
        self._files: dict[str, _File] = {}
        self._groups: dict[tuple[str, int], _Group] = {}  # the last episode's row groups

    def rows(self, path: str, e: int) -> Any:
        """Episode ``e``'s rows of the data file ``path`` (every row when it has no
        ``episode_index`` column), in file order.

        Raises:
            ConversionError: the file is missing, not readable parquet, or (``several``)
                has no ``episode_index`` column; names the file.
        """
        file = self._file(path, e)
        try:
            if not file.episodes:
                return file.pf.read(columns=file.columns)
            groups = file.groups(e)
            if not groups:
                return file.pf.schema_arrow.empty_table().select(file.columns)
            # drop what the episode does not need before reading what it does
            self._groups = {k: g for k, g in self._groups.items() if k[0] == path and k[1] in groups}
            pieces = [self._group(file, path, g).rows(self._pa, e) for g in groups]
        except ConversionError:
            raise
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise ConversionError(f"{path}: not readable parquet ({exc})") from None
        return pieces[0] if len(pieces) == 1 else self._pa.concat_tables(pieces)

    def _group(self, file: _File, path: str, g: int) -> _Group:
        group = self._groups.get((path, g))
        if group is None:
            table = file.pf.read_row_group(g, columns=file.columns)
            group = self._groups[path, g] = _group(self._pa, table, f"{path}: row group {g}")
        return group

    def _file(self, path: str, e: int) -> _File:
        file = self._files.get(path)
        if file is not None:
            return file
        if not os.path.isfile(path):
            raise self._missing(path, e)
        try:
            pf = self._pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise ConversionError(f"{path}: not readable parquet ({exc})") from None
        try:
            names = pf.schema_arrow.names
            episodes = "episode_index" in names
            if not episodes and self._several:
                raise ConversionError(
                    f"{path}: no episode_index column; a v3 data file holds several episodes"
                )
            index = _index(pf) if episodes else None
        except ConversionError:
            pf.close()
            raise
        except Exception as exc:  # damaged metadata
            pf.close()
            raise ConversionError(f"{path}: not readable parquet ({exc})") from None
        if len(self._files) >= FILES_KEPT:
            self._files.pop(next(iter(self._files))).pf.close()
        file = self._files[path] = _File(
            pf, [n for n in names if n not in self._skip], episodes, *(index or (None, None))
        )
        return file

    def close(self) -> None:
        """Close the open files and let go of the decoded row groups."""
        for file in self._files.values():
            file.pf.close()
        self._files.clear()
        self._groups.clear()
