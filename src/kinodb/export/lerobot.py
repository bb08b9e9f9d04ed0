"""Export to a LeRobot v3.0 dataset, readable by ``LeRobotDataset`` and by ``kinodb.ingest``.

Layout (``chunk-CCC/file-FFF``: a new file once one reaches its size limit, 1000 files per
chunk folder)::

    meta/info.json                        codebase_version "v3.0", fps, robot_type, features,
                                          path templates, size limits, totals
    meta/stats.json                       per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                    the task texts (pandas index) and their task_index
    meta/episodes/chunk-000/file-000.parquet
                                          one row per episode: tasks, length, data file and
                                          frame range, each video's file and time span, stats
    meta/kinodb.json                      the source's dataset JSON, the export facts, and the
                                          kinodb array or camera behind each feature
    meta/kinodb_episodes.jsonl            per episode: source position, metadata, cameras
    data/chunk-000/file-000.parquet       one row per frame, episodes gathered into row groups
    videos/<key>/chunk-000/file-000.mp4   one stream per camera, episodes back to back

Features: ``actions`` -> ``action``, ``states`` -> ``observation.state`` (both left out when
0 wide), ``rewards`` -> ``next.reward``, ``is_terminal`` -> ``next.done``, other arrays ->
``observation.<name>`` (names already under ``observation.``, ``next.`` or
``complementary_info.`` are kept), camera ``c`` -> ``observation.images.c``. Dtypes are kept
(float64 stays float64). ``timestamp`` is ``float32(frame_index / fps)``, LeRobot's grid; a
``timestamps`` array that is not exactly that grid is kept as ``observation.timestamps``.
Episodes are renumbered 0..N-1 in export order.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError, KinodbError
from kinodb.export import _lerobot_stats as stats_
from kinodb.export._base import camera_windows as _windows  # one camera's frames, a window at a time
from kinodb.export._base import (
    dumps,
    episode_record,
    exported_dataset,
    holds_image,
    one_value,
    split_advice,
    write_json,
)
from kinodb.export._lerobot_tables import (
    Feature,
    RowGroupFile,
    array_column,
    data_schema,
    element_names,
    image_column,
    numpy_array,
    rows_table,
    tasks_table,
)
from kinodb.export._video_encode import CODECS, PIX_FMT, VideoCodec, VideoFile, frame_rate, unencodable
from kinodb.kdb import _codecs
from kinodb.kdb.reader import Database
from kinodb.windows import frame_tasks

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
IMAGES_AS = ("video", "image")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
KEPT_PREFIXES = ("observation.", "next.", "complementary_info.")
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_BUILTIN_ARRAYS = {"actions": "action", "states": "observation.state", "rewards": "next.reward",
                   "is_terminal": "next.done"}  # fmt: skip
_EXTENSIONS = {"png": "png", "jpeg": "jpg"}
# Row groups of the data files: at most this many rows and bytes (Arrow's count, before
# compression), an episode whole in one unless it alone is larger. Rows are held until
# they make one: not one row group per episode, whose metadata the writer would keep to
# the end (memory growing with the episodes) and every reader would parse. Smaller than
# the 100 MB of Hugging Face `datasets`: readers that take one episode (kinodb's ingest,
# LeRobotDataset(episodes=...) through the episode_index statistics) read its row group.
ROW_GROUP_ROWS = 2**16
ROW_GROUP_BYTES = 4 * 2**20
# Row groups of meta/episodes: at most ROW_GROUP_ROWS rows and this many Arrow bytes. Its
# rows are held as Python values (counted as their NumPy bytes plus an allowance per
# value) up to _EPISODE_ROWS_CONVERTED bytes, then as Arrow: the table is never held whole.
EPISODE_ROWS_BYTES = ROW_GROUP_BYTES
_EPISODE_ROWS_CONVERTED = 2**20
_VALUE_OVERHEAD = 160  # bytes of a small NumPy array or Python value and its key, held in a row


@dataclass(frozen=True, slots=True)
class Plan:
    """What the export writes, decided before anything is written.

    Attributes:
        fps: the one frame rate of every episode.
        features: the LeRobot features from kinodb data, in ``info.json`` order.
        robot_type: the one embodiment of every episode, else None.
        timestamps: where kinodb ``timestamps`` went (``"timestamp"`` when they are the
            grid, a feature key otherwise), or None when there are none.
        sources: each kinodb array's dtype and per-frame shape.
        warnings: what a reader of the export should know.
    """

    fps: float
    features: list[Feature]
    robot_type: str | None
    timestamps: str | None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def cameras(self) -> list[Feature]:
        """The video and image features."""
        return [f for f in self.features if f.is_camera]


def write(
    db: Database, positions: list[int], out: str, facts: dict[str, Any], *,
    video_codec: str = "h264", images_as: str = "video",
) -> list[str]:  # fmt: skip
    """Write episodes ``positions`` of ``db`` as a LeRobot v3.0 dataset into the empty folder ``out``.

    Returns warnings (e.g. a camera stored as images because it cannot be a video).

    Raises:
        ConversionError: the episodes differ in fps, dims, arrays or cameras, or a name
            cannot be a LeRobot feature.
        MissingExtraError: pyarrow (or, for videos, PyAV) is not installed.
    """
    if video_codec not in CODECS:
        raise ValueError(f"video_codec must be one of {', '.join(CODECS)}, got {video_codec!r}")
    if images_as not in IMAGES_AS:
        raise ValueError(f"images_as must be one of {', '.join(IMAGES_AS)}, got {images_as!r}")
    plan = make_plan(db, positions, images_as=images_as, video_codec=video_codec)
    exporter = _Exporter(out, plan, CODECS[video_codec])
    ok = False
    try:
        for k, i in enumerate(positions):
            exporter.add_episode(db, i, k)
        ok = True
    finally:
        exporter.close(flush=ok)
    exporter.write_meta(db, positions, {**facts, "video_codec": video_codec, "images_as": images_as})
    for line in plan.warnings:
        logger.info("%s", line)  # the report carries them; kino prints them once, as warnings
    return plan.warnings


# -- plan -----------------------------------------------------------------------------------


def make_plan(
    db: Database, positions: list[int], *, images_as: str = "video", video_codec: str = "h264"
) -> Plan:
    """Check that the episodes fit one LeRobot dataset and decide its features.

    Raises:
        ConversionError: the episodes differ in fps, action or state dims, arrays (names,
            dtypes, shapes) or cameras (names, shapes), or a name cannot be a feature key.
    """
    table = db.episodes()
    fps = one_value(db, table, positions, "fps", "fps", "a LeRobot dataset has one fps")
    for col, what in (("action_dim", "action"), ("state_dim", "state")):
        one_value(db, table, positions, col, f"{what} dims", "LeRobot features have one shape")
    arrays, cameras = _layout(db, positions)
    sources = {name: {"dtype": d.name, "shape": list(s)} for name, (d, s) in arrays.items()}
    warnings: list[str] = []
    timestamps = None
    if "timestamps" in arrays:
        on_grid = all(_on_grid(db.read_array(i, "timestamps"), fps) for i in positions)
        timestamps = "timestamp" if on_grid else _feature_key("timestamps")
        if on_grid:
            del arrays["timestamps"]
    recorded = _ingested(db).get("cameras")
    keys = recorded if isinstance(recorded, dict) else {}
    features = _array_features(db, arrays, positions) + _camera_features(
        cameras, images_as, warnings, keys, video_codec
    )
    _check_keys(features)
    warnings += _past_int64(db, arrays, positions)
    embodiments = sorted(set(table["embodiment"][positions].tolist()))
    robot_type = embodiments[0] if embodiments != ["unknown"] and len(embodiments) == 1 else None
    if len(embodiments) > 1:
        warnings.append(
            f"episodes have {len(embodiments)} embodiments ({', '.join(embodiments[:5])}); info.json "
            "robot_type is null, and each episode's embodiment is in meta/kinodb_episodes.jsonl"
        )
    if float(fps) != int(fps):
        warnings.append(f"fps {fps} is not a whole number; LeRobot's own writers use whole numbers")
    return Plan(float(fps), features, robot_type, timestamps, sources, warnings)


Arrays = dict[str, tuple[np.dtype[Any], tuple[int, ...]]]  # name -> dtype, per-frame shape
Cameras = dict[str, tuple[str, tuple[int, ...]]]  # name -> codec, (H, W, C)


def _layout(db: Database, positions: list[int]) -> tuple[Arrays, Cameras]:
    """Every episode's arrays (dtype, per-frame shape) and cameras (codec, (H, W, C)), checked equal.

    Raises:
        ConversionError: the episodes differ in arrays or cameras; the message counts the
            episodes of each kind and gives a ``--filter`` that keeps one kind.
    """
    groups: dict[frozenset[str], list[int]] = {}
    kinds: dict[frozenset[str], tuple[Arrays, Cameras]] = {}
    for i in positions:
        arrays = _arrays_of(db, i)
        cameras = {name: (cam["codec"], tuple(cam["shape"][1:])) for name, cam in db.cameras(i).items()}
        key = frozenset([f"array {k} {d.name}{list(s)}" for k, (d, s) in arrays.items()]
                        + [f"camera {k} {list(s)}" for k, (_, s) in cameras.items()])  # fmt: skip
        groups.setdefault(key, []).append(i)
        kinds.setdefault(key, (arrays, cameras))
    if len(groups) > 1:
        raise ConversionError(_mixed(db, groups))
    return next(iter(kinds.values()))


def _mixed(db: Database, groups: dict[frozenset[str], list[int]]) -> str:
    """Why episodes of different arrays or cameras cannot be one LeRobot dataset, and what to do."""
    common = frozenset.intersection(*groups)
    parts = []
    for held, eps in list(groups.items())[:6]:
        n = len(eps)
        what = ", ".join(sorted(held - common)) or "nothing more"
        parts.append(
            f"{n} episode{'' if n == 1 else 's'} (first: {eps[0]}) hold{'s' if n == 1 else ''} {what}"
        )
    more = f"; and {len(groups) - 6} other kinds" if len(groups) > 6 else ""
    return (
        f"{db.path()}: the episodes hold different arrays (dtype[per-frame shape]) or cameras ([H, W, C]): besides those every episode "
        f"holds, {'; '.join(parts)}{more}; a LeRobot dataset needs the same features in every episode: "
        f"export them separately, {split_advice(db.episodes(), next(iter(groups.values())))}"
    )


def _arrays_of(db: Database, i: int) -> Arrays:
    ep = db.read_episode_actions_only(i)
    # task_index beside a list of tasks (kinodb's per-frame tasks, whatever the list's
    # length) goes to LeRobot's own column, so episodes with and without it export
    # together; a task_index array without that list is an array like any other.
    per_frame = isinstance(ep["meta"].get("tasks"), list)
    return {
        k: (v.dtype, tuple(v.shape[1:]))
        for k, v in ep.items()
        if k != "meta" and not (per_frame and k == "task_index")
    }


def _describe(arrays: Arrays) -> str:
    return ", ".join(f"{k} {d.name}{list(s)}" for k, (d, s) in sorted(arrays.items()))


def _ingested(db: Database) -> dict[str, Any]:
    """What the LeRobot ingest recorded of the dataset it read (metadata ``lerobot``), else {}."""
    recorded = db.metadata().get("lerobot")
    return recorded if isinstance(recorded, dict) else {}


def _on_grid(ts: np.ndarray, fps: float) -> bool:
    """Whether ``ts`` is exactly LeRobot's float32 ``frame_index / fps`` grid, widened."""
    grid = (np.arange(len(ts)) / fps).astype(np.float32)
    return ts.dtype.kind == "f" and np.array_equal(ts.astype(np.float32).astype(ts.dtype), ts) and \
        np.array_equal(ts.astype(np.float32), grid)  # fmt: skip


def _feature_key(name: str) -> str:
    return name if name.startswith(KEPT_PREFIXES) else f"observation.{name}"


def _only_defaults(db: Database, positions: list[int], name: str) -> bool:
    """Whether every exported episode holds kinodb's default for ``name``: zero rewards,
    or a terminal flag on the last frame only (what an ingest fills in when the source
    has none)."""
    for i in positions:
        arr = db.read_array(i, name)
        if name == "rewards" and arr.any():
            return False
        if name == "is_terminal" and (not arr[-1] or arr[:-1].any()):
            return False
    return True


def _array_features(db: Database, arrays: Arrays, positions: list[int]) -> list[Feature]:
    schema = db.schema()
    ingested = _ingested(db)
    info = ingested.get("info")
    source = info.get("features") if isinstance(info, dict) else None
    no_role = ingested.get("no_role")
    no_role = no_role if isinstance(no_role, dict) else {}
    out = []
    for name, (dtype, shape) in arrays.items():
        if name in ("actions", "states") and shape == (0,):
            continue  # kinodb's "no states": a LeRobot feature cannot be 0 wide
        if (
            name in ("rewards", "is_terminal")
            and isinstance(source, dict)
            and (_BUILTIN_ARRAYS[name] not in source or _BUILTIN_ARRAYS[name] in no_role)
            and _only_defaults(db, positions, name)
        ):
            # ingested from a LeRobot dataset without it, or whose feature of that name took no
            # role (kept as the extra array of its name, exported as that feature again), and
            # still only kinodb's default
            continue
        key = _BUILTIN_ARRAYS.get(name) or _feature_key(name)
        lr_shape = shape or (1,)
        if len(lr_shape) > 5:
            raise ConversionError(
                f"{db.path()}: array {name!r} has {len(shape)} dimensions per frame; LeRobot features "
                "have at most 5"
            )
        if 0 in shape:
            raise ConversionError(
                f"{db.path()}: array {name!r} is {list(shape)} per frame, holding no values; a LeRobot "
                "feature holds at least one value per frame: export to another format, or write the file "
                "again without that array"
            )
        names = _names(schema.get(name) or {}, shape[0]) if name in ("actions", "states") else None
        out.append(Feature(key, name, dtype.name, lr_shape, names))
    order = list(_BUILTIN_ARRAYS.values())
    return sorted(out, key=lambda f: (order.index(f.key) if f.key in order else 1.5, f.key))


def _episode_tasks(db: Database, i: int, ep: dict[str, Any], T: int) -> tuple[list[str], np.ndarray]:
    """The episode's task texts and each frame's position among them: one text, or (where
    the task changes within the episode) the extra field ``tasks`` indexed frame by frame
    by the extra array ``task_index`` (`kinodb.windows.frame_tasks`)."""
    meta = ep["meta"]
    listed, codes = meta.get("tasks"), ep.get("task_index")
    if isinstance(listed, list) and codes is not None:
        try:
            texts, positions = frame_tasks(db, i, codes, T, db.path())
        except KinodbError as exc:
            raise ConversionError(str(exc)) from None
        return texts, positions
    return [str(meta["task"])], np.zeros(T, np.int64)


def _names(part: dict[str, Any], dim: int) -> list[str] | dict[str, list[str]] | None:
    """``info.json`` names from the schema's ``names`` and ``components``.

    Components that tile ``[0, dim)`` give a dict ``{component: its element names}`` (the
    form LeRobot's ported datasets use, which keeps the components); otherwise the element
    names as a list, spelt from the components when the schema has no ``names``; else None.
    """
    spelt = element_names(part, dim)
    if spelt is None:
        return None
    elems, comps, tiles = spelt
    return {name: elems[a:b] for a, b, name in comps} if tiles else elems


def _camera_features(cameras: Cameras, images_as: str, warnings: list[str],
                     keys: dict[str, Any], video_codec: str) -> list[Feature]:  # fmt: skip
    """One feature per camera, keyed ``observation.images.<camera>``, or by the LeRobot key
    it was ingested from (``keys``, the metadata's ``lerobot.cameras``)."""
    out = []
    for name, (codec, (h, w, c)) in sorted(cameras.items()):
        key = keys.get(name)
        key = key if isinstance(key, str) and key.startswith("observation.") else f"observation.images.{name}"
        dtype = images_as
        why = unencodable(h, w, c, codec=video_codec) if images_as == "video" else None
        if why:
            dtype = "image"
            how = f"its {codec.upper()} frames as stored" if codec in _EXTENSIONS else "its raw frames as PNG"
            warnings.append(f"camera {name!r} is stored as images ({how}), not video: {why}")
        out.append(Feature(key, name, dtype, (h, w, c), ["height", "width", "channels"]))
    return out


def _past_int64(db: Database, arrays: Arrays, positions: list[int]) -> list[str]:
    """Warnings for uint64 arrays holding values above the int64 maximum, which LeRobotDataset
    cannot read: it turns integer features into torch int64 tensors."""
    out = []
    top = np.iinfo(np.int64).max
    for name, (dtype, _shape) in arrays.items():
        if dtype != np.uint64:
            continue
        for i in positions:
            arr = db.read_array(i, name)
            if arr.size and arr.max() > top:
                out.append(
                    f"array {name!r} is uint64 and holds values above the int64 maximum (2**63 - 1), first in "
                    f"episode {i}: the export keeps them exactly, but LeRobotDataset reads integer features as "
                    "torch int64 and fails on the frames holding them; to read them with LeRobot, write the "
                    "array as another dtype (two uint32 halves, say)"
                )
                break
    return out


def _check_keys(features: list[Feature]) -> None:
    seen: dict[str, str] = {k: "LeRobot's own column" for k in _INDEX_COLUMNS}
    for f in features:
        what = f"{'camera' if f.is_camera else 'array'} {f.source!r}"
        if "/" in f.key:
            raise ConversionError(f"{what}: LeRobot feature names cannot hold '/' ({f.key!r}); rename it")
        if f.key in seen:
            raise ConversionError(
                f"{what} and {seen[f.key]} would both be the LeRobot feature {f.key!r}; rename one"
            )
        seen[f.key] = what


# -- output files ---------------------------------------------------------------------------


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    """The (chunk, file) after this one: ``CHUNKS_SIZE`` files per chunk folder."""
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class _DataFiles:
    """The frame Parquet files: episodes in row groups of `ROW_GROUP_ROWS` rows and
    `ROW_GROUP_BYTES` at most, a new file past the size limit."""

    def __init__(self, out: str, pa: Any, pq: Any) -> None:
        self._out, self._pa, self._pq = out, pa, pq
        self._file: RowGroupFile | None = None
        self._where = (0, 0)
        self._bytes = 0  # of the episodes given to the open file, as Arrow counts them

    def write(self, table: Any) -> tuple[int, int]:
        """Append one episode's rows; return the (chunk, file) that holds them."""
        if self._file is not None and self._bytes + table.nbytes > DATA_FILES_SIZE_IN_MB * 2**20:
            self.close()
            self._where = _next_file(*self._where)
        if self._file is None:
            path = os.path.join(
                self._out, DATA_PATH.format(chunk_index=self._where[0], file_index=self._where[1])
            )
            self._file = RowGroupFile(path, self._pa, self._pq, max_rows=ROW_GROUP_ROWS,
                                      max_bytes=ROW_GROUP_BYTES, compression="snappy", use_dictionary=True)  # fmt: skip
            self._bytes = 0
        self._file.add(table)
        self._bytes += table.nbytes
        return self._where

    def close(self, *, flush: bool = True) -> None:
        """Finish the open file (without ``flush``, the rows not yet written are dropped)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close(flush=flush)


class _VideoFiles:
    """One camera's mp4 files: episodes back to back, a new file once one reaches the limit."""

    def __init__(self, out: str, feature: Feature, codec: VideoCodec, fps: float) -> None:
        self._out, self._feature, self._codec, self._fps = out, feature, codec, fps
        self._file: VideoFile | None = None
        self._where = (0, 0)

    def start_episode(self) -> tuple[int, int, int]:
        """Get ready for an episode; return its (chunk, file, first frame in the file)."""
        if self._file is not None and self._file.bytes >= VIDEO_FILES_SIZE_IN_MB * 2**20:
            self.close()
            self._where = _next_file(*self._where)
        if self._file is None:
            chunk, file = self._where
            path = os.path.join(self._out, VIDEO_PATH.format(video_key=self._feature.key, chunk_index=chunk,
                                                             file_index=file))  # fmt: skip
            os.makedirs(os.path.dirname(path), exist_ok=True)
            h, w, _ = self._feature.shape
            self._file = VideoFile(
                path, self._codec, fps=self._fps, height=h, width=w, camera=self._feature.source
            )
        return (*self._where, self._file.frames)

    def add(self, frames: np.ndarray, *, episode_start: bool) -> None:
        """Encode frames of the current episode."""
        assert self._file is not None  # start_episode opened it
        self._file.add(frames, episode_start=episode_start)

    def close(self, *, flush: bool = True) -> None:
        """Finish the open file."""
        if self._file is not None:
            self._file.close(flush=flush)
            self._file = None


class _EpisodeRows:
    """The episodes table, ``meta/episodes/chunk-CCC/file-FFF.parquet``, written as it grows.

    Rows (each episode's stats among them) are held as Python values until they make
    `_EPISODE_ROWS_CONVERTED` bytes, then as Arrow until they make a row group
    (`ROW_GROUP_ROWS` rows, `EPISODE_ROWS_BYTES`); a new file starts once one reaches the
    data-file size limit. The columns are typed by the first rows (`rows_table`), except
    that the ``min`` and ``max`` of a uint64 feature are always uint64, which holds every
    value that feature's later rows may bring.
    """

    def __init__(self, out: str, pa: Any, pq: Any, uint64: set[str]) -> None:
        self._out, self._pa, self._pq = out, pa, pq
        self._uint64 = {f"stats/{key}/{name}" for key in uint64 for name in ("min", "max")}
        self._rows: list[dict[str, Any]] = []
        self._held = 0
        self._schema: Any = None
        self._file: RowGroupFile | None = None
        self._where = (0, 0)
        self._bytes = 0.0  # of the rows given to the open file, as Arrow counts them

    def add(self, row: dict[str, Any]) -> None:
        """Take one episode's row; pass the rows held on as Arrow once they are many."""
        self._rows.append(row)
        self._held += sum(
            _VALUE_OVERHEAD + (v.nbytes if isinstance(v, np.ndarray) else 0) for v in row.values()
        )
        if self._held >= min(_EPISODE_ROWS_CONVERTED, EPISODE_ROWS_BYTES):
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = rows_table(self._rows, self._pa)
        self._rows, self._held = [], 0
        if self._schema is None:
            self._schema = self._typed(table.schema)
        table = table.cast(self._schema)
        limit = DATA_FILES_SIZE_IN_MB * 2**20
        per_row = max(table.nbytes / table.num_rows, 1.0)
        start = 0
        while start < table.num_rows:
            if self._file is not None and self._bytes + per_row > limit:
                file, self._file = self._file, None
                file.close()
                self._where = _next_file(*self._where)
            part = table.slice(start, max(1, int((limit - self._bytes) // per_row)))
            self._write(part)
            self._bytes += part.num_rows * per_row
            start += part.num_rows

    def _write(self, table: Any) -> None:
        """Append rows to the file at ``_where``, with the columns that say which file that is."""
        n, pa = table.num_rows, self._pa
        for name, value in zip(("chunk_index", "file_index"), self._where, strict=True):
            table = table.append_column(f"meta/episodes/{name}", numpy_array(np.full(n, value, np.int64), pa))
        if self._file is None:
            chunk, file = self._where
            path = os.path.join(self._out, EPISODES_PATH.format(chunk_index=chunk, file_index=file))
            self._file = RowGroupFile(path, pa, self._pq, max_rows=ROW_GROUP_ROWS,
                                      max_bytes=EPISODE_ROWS_BYTES, compression="snappy")  # fmt: skip
            self._bytes = 0.0
        self._file.add(table)

    def _typed(self, schema: Any) -> Any:
        """``schema`` with the ``min`` and ``max`` columns of uint64 features as uint64 lists."""
        pa = self._pa
        columns = []
        for column in schema:
            if column.name in self._uint64:
                depth, t = 0, column.type
                while pa.types.is_list(t):
                    depth, t = depth + 1, t.value_type
                typed = pa.uint64()
                for _ in range(depth):
                    typed = pa.list_(typed)
                column = column.with_type(typed)
            columns.append(column)
        return pa.schema(columns)

    def close(self, *, flush: bool = True) -> None:
        """Write the rows still held (unless not ``flush``) and finish the open file."""
        try:
            if flush:
                self._flush()
        finally:
            self._rows = []
            if self._file is not None:
                file, self._file = self._file, None
                file.close(flush=flush)


# -- episodes -------------------------------------------------------------------------------


def _index_features() -> list[Feature]:
    return [Feature("timestamp", "", "float32", (1,))] + [
        Feature(key, "", "int64", (1,)) for key in _INDEX_COLUMNS[1:]
    ]


class _Exporter:
    """Writes episodes one after another, then the metadata that describes them."""

    def __init__(self, out: str, plan: Plan, codec: VideoCodec) -> None:
        self._pa = require("pyarrow", extra="lerobot")
        pq = self._pq = require("pyarrow.parquet", extra="lerobot")
        self._out, self._plan, self._codec = out, plan, codec
        self._features = plan.features + _index_features()
        self._schema = data_schema(self._features, self._pa)
        self._data = _DataFiles(out, self._pa, pq)
        self._videos = {
            f.key: _VideoFiles(out, f, codec, plan.fps) for f in plan.features if f.dtype == "video"
        }
        if self._videos:
            require("av", extra="lerobot")
        self._tasks: dict[str, int] = {}
        uint64 = {f.key for f in self._features if f.dtype == "uint64"}
        self._rows = _EpisodeRows(out, self._pa, pq, uint64)
        self._stats = {f.key: stats_.Running() for f in self._features}
        self._episodes = 0
        self._frames = 0

    def add_episode(self, db: Database, i: int, k: int) -> None:
        """Write episode ``i`` of ``db`` as episode ``k``: its rows, videos and metadata row."""
        ep = db.read_episode_actions_only(i)
        T = int(ep["meta"]["num_frames"])
        texts, per_frame = _episode_tasks(db, i, ep, T)
        codes = np.asarray([self._tasks.setdefault(t, len(self._tasks)) for t in texts], np.int64)
        values = {f.key: ep[f.source].reshape(T, *f.shape) for f in self._plan.features if not f.is_camera}
        values.update({
            "timestamp": (np.arange(T) / self._plan.fps).astype(np.float32).reshape(T, 1),
            "frame_index": np.arange(T, dtype=np.int64).reshape(T, 1),
            "episode_index": np.full((T, 1), k, np.int64),
            "index": np.arange(self._frames, self._frames + T, dtype=np.int64).reshape(T, 1),
            "task_index": codes[per_frame].reshape(T, 1),
        })  # fmt: skip
        ep_stats = {key: stats_.array_stats(v) for key, v in values.items()}
        columns = {
            key: array_column(v, f, self._pa)
            for f in self._features
            if (v := values.get(key := f.key)) is not None
        }
        row: dict[str, Any] = {"episode_index": k, "tasks": texts, "length": T}
        for f in self._plan.cameras:
            if f.dtype == "image":
                columns[f.key], ep_stats[f.key] = self._images(db, i, f, T)
            else:
                spans, ep_stats[f.key] = self._video(db, i, f, T)
                row.update(spans)
        table = self._pa.Table.from_arrays([columns[f.key] for f in self._features if f.dtype != "video"],
                                           schema=self._schema)  # fmt: skip
        chunk, file = self._data.write(table)
        row.update({"data/chunk_index": chunk, "data/file_index": file,
                    "dataset_from_index": self._frames, "dataset_to_index": self._frames + T})  # fmt: skip
        row = _ordered(row, self._plan.cameras)
        for f in self._features:
            self._stats[f.key].add(ep_stats[f.key])
            row.update({f"stats/{f.key}/{name}": v for name, v in ep_stats[f.key].items()})
        self._rows.add(row)
        self._episodes += 1
        self._frames += T

    def _images(self, db: Database, i: int, f: Feature, T: int) -> tuple[Any, stats_.Stats]:
        """An image feature's column (stored PNG/JPEG bytes as they are; raw frames as PNG)."""
        cam = db.cameras(i)[f.source]
        codec, shape = cam["codec"], cam["shape"][1:]
        samples = stats_.sample_indices(T)
        counted = stats_.ImageStats()
        blobs = db.read_images_bytes(i, f.source, 0, T) if codec in _EXTENSIONS else []
        if blobs and all(holds_image(blob, codec, shape) for blob in blobs):
            exts = [_EXTENSIONS[codec]] * T
            for t in samples.tolist():  # decoding only the frames the stats sample
                counted.add(
                    stats_.downsample(db.read_frames(i, t, t + 1, cameras=[f.source])["images"][f.source])
                )
        else:
            # Raw frames, and encoded ones whose bytes hold another shape than the camera
            # (greyscale JPEGs under 3 channels, as TFDS allows) or are no image at all (0.1
            # raw frames flagged as compressed): the episode's frames are written as the
            # reader returns them, as PNG, so every image holds the feature's shape and an
            # episode keeps one format. A frame that does not decode fails here, named.
            blobs = []
            for start, frames in _windows(db, i, f.source, T):
                blobs += _codecs.encode(frames, "png", 0)
                counted.add(_pick(frames, samples, start))
            exts = ["png"] * T
        paths = [f"frame-{t:06d}.{ext}" for t, ext in enumerate(exts)]
        return image_column(blobs, paths, self._pa), counted.result()

    def _video(self, db: Database, i: int, f: Feature, T: int) -> tuple[dict[str, Any], stats_.Stats]:
        """Append the episode to its camera's video; return its span there and its stats."""
        videos = self._videos[f.key]
        chunk, file, first = videos.start_episode()
        samples = stats_.sample_indices(T)
        counted = stats_.ImageStats()
        for start, frames in _windows(db, i, f.source, T):
            videos.add(frames, episode_start=start == 0)
            counted.add(_pick(frames, samples, start))
        rate = frame_rate(self._plan.fps)
        spans = {
            f"videos/{f.key}/chunk_index": chunk,
            f"videos/{f.key}/file_index": file,
            f"videos/{f.key}/from_timestamp": float(first / rate),
            f"videos/{f.key}/to_timestamp": float((first + T) / rate),
        }
        return spans, counted.result()

    def close(self, *, flush: bool = True) -> None:
        """Finish every open data, video and episodes file (without ``flush``, the rows
        not yet written are dropped: the export failed)."""
        try:
            try:
                self._data.close(flush=flush)
            finally:
                self._rows.close(flush=flush)
        finally:
            for videos in self._videos.values():
                videos.close(flush=flush)

    # -- metadata -----------------------------------------------------------------------------

    def write_meta(self, db: Database, positions: list[int], facts: dict[str, Any]) -> None:
        """Write everything under ``meta/``."""
        meta = os.path.join(self._out, "meta")
        os.makedirs(meta, exist_ok=True)
        write_json(os.path.join(meta, "info.json"), self._info(), indent=4)
        dataset_stats = {key: running.result() for key, running in self._stats.items()}
        with open(os.path.join(meta, "stats.json"), "w", encoding="utf-8", newline="\n") as fh:
            # Non-finite values are left out of the statistics (an element with none finite is
            # null), so the file is strict JSON.
            json.dump(stats_.to_lists(dataset_stats), fh, indent=4, ensure_ascii=False, allow_nan=False)
        self._pq.write_table(tasks_table(list(self._tasks), self._pa), os.path.join(meta, "tasks.parquet"))
        write_json(os.path.join(meta, "kinodb.json"), self._kinodb(db, positions, facts), indent=1)
        with open(os.path.join(meta, "kinodb_episodes.jsonl"), "w", encoding="utf-8", newline="\n") as fh:
            for k, i in enumerate(positions):
                fh.write(dumps({"episode_index": k, **episode_record(db, i)}))
                fh.write("\n")

    def _info(self) -> dict[str, Any]:
        fps = self._plan.fps
        features = {}
        for f in self._features:
            features[f.key] = f.info()
            if f.dtype == "video":
                h, w, c = f.shape
                features[f.key]["info"] = {
                    "video.height": h, "video.width": w, "video.codec": self._codec.name,
                    "video.pix_fmt": PIX_FMT, "video.is_depth_map": False, "video.fps": _number(fps),
                    "video.channels": c, "has_audio": False,
                }  # fmt: skip
        n = self._episodes
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": self._plan.robot_type,
            "total_episodes": n, "total_frames": self._frames, "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": _number(fps),
            "splits": {"train": f"0:{n}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._videos else None, "features": features,
        }  # fmt: skip

    def _kinodb(self, db: Database, positions: list[int], facts: dict[str, Any]) -> dict[str, Any]:
        """``meta/kinodb.json``: what a kinodb reader needs to restore the source exactly.

        The file's statistics are left out where they do not describe the export (see
        `exported_dataset`).
        """
        arrays = {f.key: {"array": f.source, **self._plan.sources[f.source]}
                  for f in self._plan.features if not f.is_camera}  # fmt: skip
        dataset, facts = exported_dataset(db, positions, facts)
        return {
            "dataset": dataset,
            "export": facts,
            "arrays": arrays,
            "cameras": {f.key: f.source for f in self._plan.cameras},
            "timestamps": self._plan.timestamps,
        }


def _ordered(row: dict[str, Any], cameras: list[Feature]) -> dict[str, Any]:
    """An episode row's columns in LeRobot's order: identity, data location, video spans."""
    keys = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index"]  # fmt: skip
    keys += [k for k in row if k.startswith("videos/")]
    return {k: row[k] for k in keys}


def _pick(frames: np.ndarray, samples: np.ndarray, start: int) -> np.ndarray:
    """The stats frames among ``frames`` (frames ``start..`` of the episode), downsampled:
    a copy, so that ``frames`` can go once the window is written."""
    chosen = samples[(samples >= start) & (samples < start + len(frames))] - start
    return stats_.downsample(frames[chosen])  # indexing with an array copies, so does downsample


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)
