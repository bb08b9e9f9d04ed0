"""Where a LeRobot dataset's episodes lie, and its data files (parquet) read one episode at a time.

The episode list (``meta/episodes.jsonl`` in v2.x, ``meta/episodes/*/*.parquet`` in v3.0)
gives each episode's `Episode`: its length, tasks, data file and video files, the paths
filled in from ``info.json``'s ``data_path`` and ``video_path`` templates (`path_template`
checks them once). An entry that is malformed in a field of its own episode (``length``,
``tasks``, file indices, ``from_timestamp``) gives an episode whose read raises what is
wrong (``Episode.problem``), so that ``on_error="skip"`` leaves out that episode alone; one
without a usable ``episode_index``, or a template or column the whole list needs, fails
the dataset.

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

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._lerobot_columns import row_indices, to_numpy
from kinodb.ingest._options import _OPTION_NAMES, option_name, skip_advice

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
            raise ConversionError(f"{path}: not readable parquet ({exc}){_unfinished(exc)}") from None
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
            raise ConversionError(f"{path}: not readable parquet ({exc}){_unfinished(exc)}") from None
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
            raise ConversionError(f"{path}: not readable parquet ({exc}){_unfinished(exc)}") from None
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


# -- the episode list -------------------------------------------------------------------


_DEFAULT_PATHS = {
    "v2": ("data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
           "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"),
    "v3": ("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
           "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Video:
    """Where one camera of one episode lives."""

    path: str
    offset: float  # seconds added to the parquet timestamps (v3 ``from_timestamp``)


@dataclass(frozen=True, slots=True)
class Episode:
    """One episode as the metadata lists it."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data: str
    videos: dict[str, Video] = field(default_factory=dict)
    problem: str | None = None  # what is wrong with its entry: reading the episode raises it


def read_jsonl(path: str, advice: str = "") -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file, each with its line number (from 1); a message
    about the file ends with ``advice`` (``": fix it, or ..."``) when given."""
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise ConversionError(f"{path}: not readable ({exc}){advice}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConversionError(f"{path}: line {number} is not JSON ({exc}){advice}") from None
        if not isinstance(row, dict):
            raise ConversionError(f"{path}: line {number} is not a JSON object{advice}")
        rows.append((number, row))
    return rows


def spelt(value: Any) -> str:
    """A metadata value as JSON spells it (``null``, ``"many"``), cut short, for a message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def read_parquet(path: str, pq: Any, *, skip: str | None = None) -> Any:
    """A whole (small) parquet file as an arrow table, without columns starting with ``skip``.

    Read through ``ParquetFile``: ``pq.read_table`` imports ``pyarrow.dataset``, whose
    import pulls pandas in and drops a Ctrl-C or SIGTERM raised meanwhile.

    Raises:
        ConversionError: the file is not readable parquet.
    """
    try:
        with pq.ParquetFile(path) as pf:
            names = pf.schema_arrow.names
            return pf.read(columns=[n for n in names if skip is None or not n.startswith(skip)])
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ConversionError(f"{path}: not readable parquet ({exc}){_unfinished(exc)}") from None


def _unfinished(exc: Exception) -> str:
    """Advice for a parquet file without its footer: what a LeRobot recording leaves
    behind when it stops before ``LeRobotDataset.finalize()``."""
    if "magic bytes not found" not in str(exc):
        return ""
    return (
        "; a parquet file without its footer was cut short (copy it again) or never closed by its "
        "writer: LeRobot closes a v3 dataset's data and episode-metadata files in "
        "LeRobotDataset.finalize(), so a recording stopped before it (a crash, a kill) leaves them "
        "unreadable, to LeRobot too"
    )


class _BadEntry(ConversionError):
    """An episode's entry in the episode list is malformed: that episode fails, not the list."""


_FIELDS = {
    "v2": {"episode_chunk": 0, "episode_index": 0, "chunk_index": 0},
    "v3": {"chunk_index": 0, "file_index": 0},
}  # what LeRobot fills a path template with


def path_template(info: dict[str, Any], name: str, version: str, info_path: str) -> str:
    """``info.json``'s path template ``name`` (``data_path`` or ``video_path``), its default
    when absent, checked by filling it once.

    Raises:
        ConversionError: the template is no string or cannot be filled; names the field.
    """
    layout = "v3" if version == "v3.0" else "v2"
    default = _DEFAULT_PATHS[layout][name == "video_path"]
    value = info.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise ConversionError(
            f"{info_path}: {name} is {spelt(value)}; expected a path template string such as {default!r}: "
            f"fix {name}, or remove it to use that default"
        )
    fields = _FIELDS[layout] | ({"video_key": "KEY"} if name == "video_path" else {})
    try:
        value.format(**fields)
    except KeyError as exc:
        why = f"LeRobot has no value for its field {{{exc.args[0]}}}"
    except (IndexError, ValueError, AttributeError, TypeError) as exc:
        why = str(exc) or type(exc).__name__
    else:
        return value
    raise ConversionError(
        f"{info_path}: {name} {value!r} cannot be filled: {why}; LeRobot {version} fills "
        f"{', '.join('{' + f + '}' for f in fields)}: fix {name}, or remove it to use the default {default!r}"
    )


def fill_path(template: str, root: str, **fields: Any) -> str:
    """``template`` (checked by `path_template`) filled in, under ``root``."""
    return os.path.join(root, template.format(**fields))


def chunks_size(info: dict[str, Any], info_path: str) -> int:
    """``info.json``'s ``chunks_size`` (1000 when absent): v2 episodes per chunk folder."""
    value = info.get("chunks_size")
    size = 1000 if value is None else whole_number(value)
    if size is None or size < 1:
        raise ConversionError(
            f"{info_path}: chunks_size is {spelt(value)}; expected the number of episodes per chunk folder, "
            "a whole number >= 1 (LeRobot writes 1000): fix chunks_size, or remove it to use 1000"
        )
    return size


def _episode_index(row: dict[str, Any], where: str) -> int:
    """An entry's ``episode_index``: without it no episode can be named, so the list fails."""
    e = whole_number(row.get("episode_index"))
    if e is None or e < 0:
        got = spelt(row["episode_index"]) if "episode_index" in row else "missing"
        raise ConversionError(
            f"{where}: episode_index is {got}; expected the episode's index, a whole number >= 0 (episodes "
            "are named by it): fix this entry"
        )
    return e


def _count(row: dict[str, Any], key: str, where: str, meaning: str) -> int:
    """A whole number >= 0 of an episode's entry (``length``, file and chunk indices)."""
    value = whole_number(row.get(key))
    if value is None or value < 0:
        got = spelt(row[key]) if key in row else "missing"
        raise _BadEntry(f"{where}: {key} is {got}; expected {meaning}, a whole number >= 0: fix this entry"
                        f"{skip_advice()}")  # fmt: skip
    return value


def _task_texts(row: dict[str, Any], where: str) -> tuple[str, ...]:
    """An entry's ``tasks``: a list of task texts (none when absent or null)."""
    value = row.get("tasks")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _BadEntry(
            f"{where}: tasks is {spelt(value)}; expected a list of the episode's task texts, such as "
            f'["pick up the cube"]: fix this entry{skip_advice()}'
        )
    return tuple(value)


def _seconds(row: dict[str, Any], key: str, where: str) -> float:
    """A v3 entry's ``videos/KEY/from_timestamp``: finite seconds >= 0."""
    value = row.get(key)
    seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise _BadEntry(
            f"{where}: {key} is {spelt(value) if key in row else 'missing'}; expected the time in seconds "
            f"where the episode starts in its video file, a finite number >= 0: fix this entry{skip_advice()}"
        )
    return seconds


def episodes_v2(
    root: str, info: dict[str, Any], videos: list[str], info_path: str, version: str
) -> list[Episode]:
    path = os.path.join(root, "meta", "episodes.jsonl")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing; a LeRobot v2 dataset lists its episodes there")
    data_t = path_template(info, "data_path", version, info_path)
    video_t = path_template(info, "video_path", version, info_path) if videos else ""
    chunks = chunks_size(info, info_path)
    out = []
    for number, row in read_jsonl(path):
        e = _episode_index(row, f"{path}: line {number}")
        where = f"{path}: line {number} (episode {e})"
        place = {"episode_chunk": e // chunks, "episode_index": e, "chunk_index": e // chunks}
        data = fill_path(data_t, root, **place)
        vids = {k: Video(fill_path(video_t, root, video_key=k, **place), 0.0) for k in videos}
        try:
            length = _count(row, "length", where, "the episode's number of frames")
            out.append(Episode(e, length, _task_texts(row, where), data, vids))
        except _BadEntry as exc:
            out.append(Episode(e, 0, (), data, vids, problem=str(exc)))
    return out


_V3_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")
_V3_VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp")  # each under videos/KEY/


def _no_images() -> str:
    """``images=False`` as a Python caller passes it, or the ``--no-images`` flag."""
    return "images=False" if _OPTION_NAMES.get() is None else option_name("images")


def episodes_v3(root: str, info: dict[str, Any], videos: list[str], pq: Any, info_path: str) -> list[Episode]:
    folder = os.path.join(root, "meta", "episodes")
    files = sorted(
        os.path.join(dirpath, n)
        for dirpath, _, names in os.walk(folder)
        for n in names
        if n.endswith(".parquet")
    )
    if not files:
        counted = info.get("total_episodes")
        unfinished = (
            f"; info.json counts {counted} episodes, so the recording was probably stopped before "
            "LeRobotDataset.finalize(), which writes the episode metadata LeRobot holds back"
            if type(counted) is int and counted > 0 else ""
        )  # fmt: skip
        raise ConversionError(
            f"{folder}: no episode metadata (*.parquet); a LeRobot v3 dataset needs it{unfinished}"
        )
    templates = (
        path_template(info, "data_path", "v3.0", info_path),
        path_template(info, "video_path", "v3.0", info_path) if videos else "",
    )
    need = [*_V3_COLUMNS, *(f"videos/{k}/{c}" for k in videos for c in _V3_VIDEO_COLUMNS)]
    out = []
    for path in files:
        table = read_parquet(path, pq, skip="stats/")
        absent = [c for c in need if c not in table.column_names]
        if absent:
            hint = (
                f"; or pass {_no_images()} to leave the videos out" if absent[0].startswith("videos/") else ""
            )
            raise ConversionError(
                f"{path}: no column {absent[0]!r}; LeRobot v3 episode rows need episode_index, length, "
                f"data/chunk_index, data/file_index and, per video feature, videos/KEY/chunk_index, "
                f"file_index and from_timestamp{hint}"
            )
        for number, row in enumerate(table.to_pylist()):
            out.append(_episode_v3(row, f"{path}: row {number}", root, templates, videos))
    return out


def _episode_v3(
    row: dict[str, Any], where: str, root: str, templates: tuple[str, str], videos: list[str]
) -> Episode:
    """One row of ``meta/episodes/*.parquet``: its data file, and its video files with offsets;
    a malformed row gives an episode whose read raises what is wrong (``problem``)."""
    e = _episode_index(row, where)
    where = f"{where} (episode {e})"
    try:
        length = _count(row, "length", where, "the episode's number of frames")
        place = {
            "chunk_index": _count(
                row, "data/chunk_index", where, "the chunk of the file that holds the episode"
            ),
            "file_index": _count(
                row, "data/file_index", where, "the index of the file that holds the episode"
            ),
        }
        data = fill_path(templates[0], root, **place)
        vids = {}
        for key in videos:
            p = f"videos/{key}/"
            place = {
                "chunk_index": _count(row, p + "chunk_index", where, f"the chunk of {key}'s video file"),
                "file_index": _count(row, p + "file_index", where, f"the index of {key}'s video file"),
            }
            path = fill_path(templates[1], root, video_key=key, **place)
            vids[key] = Video(path, _seconds(row, p + "from_timestamp", where))
        return Episode(e, length, _task_texts(row, where), data, vids)
    except _BadEntry as exc:
        return Episode(e, 0, (), "", {}, problem=str(exc))


UNLISTED_SCANNED = 100_000
"""v2: the most episode indices whose data file is looked for (`episodes_at_hand`)."""


def episodes_at_hand(
    pa: Any, pq: Any, root: str, template: str, *, chunks: int | None, below: int
) -> set[int]:
    """The episode indices whose data is at hand, listed or not.

    v2 (``chunks``: episodes per chunk folder): each index below ``below`` (at most
    `UNLISTED_SCANNED` of them) whose data file, ``template`` (``info.json``'s
    ``data_path``) filled in, exists. v3 (``chunks`` None): the ``episode_index`` values of
    the parquet files under the folder ``template`` starts with (``data`` for
    ``data/chunk-{chunk_index:03d}/...``), never those under ``meta``; only that column is
    read, and a file that does not read holds none here (reading its episodes says why).
    """
    if chunks is not None:
        return {
            e for e in range(min(below, UNLISTED_SCANNED)) if os.path.isfile(
                fill_path(template, root, episode_chunk=e // chunks, episode_index=e, chunk_index=e // chunks))
        }  # fmt: skip
    folder = os.path.join(root, os.path.dirname(template.split("{", 1)[0]))
    meta = os.path.join(root, "meta")
    found: set[int] = set()
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if os.path.join(dirpath, d) != meta)
        for name in sorted(n for n in names if n.endswith(".parquet")):
            path = os.path.join(dirpath, name)
            try:
                with pq.ParquetFile(path) as pf:
                    if "episode_index" not in pf.schema_arrow.names:
                        continue
                    column = pf.read(columns=["episode_index"])["episode_index"]
                found.update(int(e) for e in np.unique(to_numpy(pa, column, "episode_index", path)))
            except Exception:  # pyarrow raises several types for damaged files
                continue
    return found
