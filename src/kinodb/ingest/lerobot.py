"""LeRobot datasets (codebase v2.0, v2.1 and v3.0) as an ingest `Source`.

Input: a dataset folder holding ``meta/info.json``. Its ``codebase_version`` picks the
layout: v2.x keeps one parquet file per episode and one mp4 per episode and camera,
with ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``; v3.0 keeps many episodes per
parquet and mp4 file, with ``meta/episodes/*/*.parquet`` (file indices and video time
offsets) and ``meta/tasks.parquet`` (the task text as a ``task`` column or as the
pandas index). Paths come from the ``data_path`` and ``video_path`` templates of
``info.json``. Other versions raise `ConversionError` naming the version found.

Episodes are listed in ``episode_index`` order with keys ``episode_000029``; ``--episodes
29`` selects the 30th listed episode, which is episode_index 29 when every episode from 0
is listed. An episode whose data or video file is absent raises `ConversionError` naming
the file, so ``on_error="skip"`` skips exactly the episodes that are not there; so does an
episode whose entry in the list is malformed in a field of its own (``length``, ``tasks``,
v3 file indices or ``from_timestamp``: the message names the file, the line or row, the
episode and the field), or whose ``timestamp`` column holds NaN or infinity (whether or not
videos are decoded). Malformed dataset-level metadata (``info.json``'s ``data_path``,
``video_path``, ``chunks_size``, the action and state features' ``shape``) raises
`ConversionError` naming the file and field. When ``info.json``'s ``total_episodes`` is not
the number of episodes listed, a warning says so and names the episodes whose data is at
hand but not listed (they are not ingested).

Mapping (rows ordered by ``frame_index``; arrays keep their parquet dtype, or take the
dtype ``info.json`` declares where that cast keeps every value, as LeRobot's loader does:
float32 actions under a float64 feature become float64; a column wider than declared
stays as it is, with a warning):

- ``action`` -> ``actions`` (else ``actions``, as openpi's LIBERO port names it;
  ``action_key`` names another feature). ``observation.state`` -> ``states`` (else
  ``state`` or ``states`` when exactly one of them is a numeric feature; ``state_keys``
  concatenates other columns instead, recorded as state components, in their NumPy
  result type; an episode holding a value that type would round, such as an int64
  timestamp beyond 2**53 beside floats, is refused naming the column). A feature's
  ``names`` (a list, a nested list, or a dict of lists, whose keys become components)
  become the schema's ``names``; an action or state feature of another name (and no
  such dict) becomes one component named by its key. ``lerobot.action_key`` and
  ``lerobot.state_keys`` in the metadata record the choice.
- ``next.reward`` -> ``rewards``; ``next.done`` -> ``is_terminal``; ``next.success`` ->
  ``success`` (its last value); ``timestamp`` -> ``timestamps``; the first frame's
  ``task_index`` -> ``task``. When the task changes within an episode, the extra field
  ``tasks`` lists its texts in order of first appearance and the extra array
  ``task_index`` gives each frame's position in that list (kinodb's per-frame task
  convention, which the frame datasets and the LeRobot exporter read). A ``next.*`` feature
  that ``info.json`` declares wider than one value per frame (``next.reward`` of shape (2,):
  reward components) takes no role, for the whole dataset: it stays an extra array of its
  name, dtype and shape kept, the role keeps kinodb's default as for a dataset without it,
  and a warning and ``lerobot.no_role`` in the metadata say so (`wide_roles`).
- Every other numeric or bool column (``observation.environment_state``,
  ``complementary_info.*``) -> an extra array of the same name (``lerobot.<name>`` for
  the names kinodb keeps for its own arrays, such as ``states``); text -> an extra field
  (one value when every frame has it, else the per-frame list; a string feature of shape
  (N,) gives lists of N strings; nulls stay null). ``frame_index``, ``episode_index``
  and ``index`` are positions, not data;
  columns of other types (LeRobot's ``language_*`` structs) are left out, which the
  metadata's ``lerobot.left_out`` records.
- ``image`` features -> cameras, their PNG/JPEG bytes passed through unchanged. An
  ``image`` feature of 16-bit PNG frames (a depth map) is no camera (cameras hold 8-bit
  frames): 16-bit greyscale frames become the uint16 ``(T, H, W)`` extra array of the
  feature's name, bit for bit (``lerobot.not_cameras`` and the report's notes say so);
  16-bit colour frames are left out, with a warning and a ``lerobot.left_out`` entry.
  The dataset's first frame of the feature decides.
- ``video`` features -> cameras decoded with PyAV, frame-exact: frame t is the decoded
  frame whose time (``pts * time_base``) is nearest to its ``timestamp`` (v3: plus the
  episode's ``videos/<key>/from_timestamp``), within ``TOLERANCE_S`` = 1e-4 s
  (``|frame time - wanted| <= 1e-4``, LeRobot's own tolerance and rule). Each file is
  decoded once, in order; a v3 episode is reached with one seek to the keyframe before it.
  Frames that are to be stored as JPEG (``SourceOptions.jpeg_quality``) or PNG
  (``SourceOptions.image_codec``) come out as JPEG or PNG bytes, each encoded as soon as it
  is decoded (`_video.decode_at`), so an episode's pixels are never held at once;
  otherwise as uint8 RGB pixels.
- Every ``image`` and ``video`` feature is a camera, whatever its key (``image``,
  ``wrist_image``, ``observation.images.top``). Camera names drop the
  ``observation.images.`` (else ``observation.``) prefix; ``lerobot.cameras`` in the
  metadata maps them back to feature keys.
- ``fps`` and ``robot_type`` (the embodiment) come from ``info.json``.
- ``flip_images`` turns every camera (and 16-bit frame) 180 degrees; the metadata's
  ``image_orientation`` is then ``rotated_180``, else ``as_stored``, and
  ``lerobot.rotated`` names each camera and array turned, with its axes (as the HDF5
  source's ``hdf5.rotated``: the HDF5 exporter turns back exactly those). A kinodb
  export's own record comes back, turned once more by ``flip_images``.
- Columns are read from the arrow buffers, never through pandas (pyarrow imports it for
  ``to_numpy`` and drops a Ctrl-C or SIGTERM that lands meanwhile).
- A data file's row groups are each decoded once as its episodes are read in order
  (`DataFiles`: consecutive episodes of one row group are slices of it, and each file's
  ``episode_index`` statistics are scanned once); a selection reads only the row groups
  whose statistics admit its episodes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.export._hdf5_turns import rotation_space
from kinodb.ingest import _video
from kinodb.ingest._base import (
    SOURCE_PARTS,
    SOURCE_WHERE,
    FrameChunks,
    SourceInfo,
    SourceOptions,
    episodes_spec,
    lerobot_root,
    not_this_format,
    read_json,
)
from kinodb.ingest._lerobot_columns import (
    ACTION_KEYS,
    POSITIONS,
    STATE_KEYS,
    array_name,
    as_declared,
    by_frame_index,
    column_kind,
    concatenate,
    feature_dim,
    image_frames,
    make_plan,
    names_and_components,
    per_frame,
    png_depth,
    role_fix,
    text_value,
    wide_frames,
    wide_images,
    wide_roles,
)
from kinodb.ingest._lerobot_columns import to_numpy as _to_numpy
from kinodb.ingest._lerobot_data import (
    DataFiles,
    Episode,
    chunks_size,
    episodes_at_hand,
    episodes_v2,
    episodes_v3,
    path_template,
    read_jsonl,
    read_parquet,
    spelt,
    whole_number,
)
from kinodb.ingest._lerobot_kinodb import kinodb_export, restore, restore_dataset
from kinodb.ingest._options import option_flag, option_name, option_value, skip_advice

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
TOLERANCE_S = _video.TOLERANCE_S
_ROLES = {
    "next.reward": "rewards",
    "next.done": "is_terminal",
    "timestamp": "timestamps",
}
_AS_STORED, _ROTATED = "as_stored", "rotated_180"
_TURNED_AGAIN = {
    "as_stored": "rotated_180",
    "rotated_180": "as_stored",
}  # image_orientation, after flip_images


# -- metadata ---------------------------------------------------------------------------


def _check_root(root: str) -> None:
    """Refuse a path that is no dataset folder, saying what it is.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ConversionError: ``root`` is a file, a folder inside a dataset, or a folder
            without ``meta/info.json``.
    """
    if not os.path.exists(root):
        raise FileNotFoundError(2, "No such file or directory", root)
    if os.path.isfile(os.path.join(root, "meta", "info.json")):
        return
    inside = lerobot_root(root)
    if inside is not None:
        raise ConversionError(
            f"{root}: this is part of a LeRobot dataset; pass the dataset root DIR (the folder holding "
            f"meta/info.json): {inside}"
        )
    if not os.path.isdir(root):
        raise ConversionError(
            f"{root}: is a file, but a LeRobot dataset is a folder holding meta/info.json"
            f"{not_this_format(root, 'lerobot')}"
        )
    raise ConversionError(
        f"{root}: not a LeRobot dataset: a LeRobot dataset is a folder holding meta/info.json, and this "
        f"folder has none{not_this_format(root, 'lerobot')}"
    )


def _check_version(info: dict[str, Any], path: str) -> str:
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise ConversionError(
            f"{path}: LeRobot codebase_version {version!r} is not supported; this converter reads "
            f"{', '.join(SUPPORTED_VERSIONS)}"
        )
    return str(version)


def _tasks(root: str, version: str, pq: Any) -> dict[int, str] | None:
    """task_index -> text, from ``tasks.jsonl`` or ``tasks.parquet`` (None: neither exists)."""
    jsonl, parquet = os.path.join(root, "meta", "tasks.jsonl"), os.path.join(root, "meta", "tasks.parquet")
    order = (parquet, jsonl) if version == "v3.0" else (jsonl, parquet)
    for path in order:
        if not os.path.isfile(path):
            continue
        if path == jsonl:
            rows = [row for _, row in read_jsonl(path)]
            try:
                return {int(r["task_index"]): str(r["task"]) for r in rows}
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path}: every line needs task_index and task") from None
        return _tasks_parquet(path, pq)
    return None


def _tasks_parquet(path: str, pq: Any) -> dict[int, str]:
    table = read_parquet(path, pq)
    columns = table.column_names
    text = "task" if "task" in columns else None
    if text is None:  # written by pandas with the task text as the (unnamed) index
        pandas = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
        text = next((c for c in pandas.get("index_columns", []) if isinstance(c, str) and c in columns), None)
    if text is None or "task_index" not in columns:
        raise ConversionError(
            f"{path}: needs a task_index column and the task text as a 'task' column or the pandas "
            f"index; columns: {', '.join(columns)}"
        )
    return dict(
        zip((int(i) for i in table["task_index"].to_pylist()), map(str, table[text].to_pylist()), strict=True)
    )


# -- the source -------------------------------------------------------------------------


def _rotated(
    earlier: dict[str, Any] | None, turned: dict[str, list[int]] | None, root: str
) -> dict[str, list[int]] | None:
    """The metadata's ``lerobot.rotated``: each camera and array this ingest turned
    (``turned``, None without ``flip_images``), with its axes; None: nothing recorded.

    For a kinodb export (``earlier``: the dataset block it recorded, given back) the record
    also holds what the ingest of the export's source rotated, the record of that source's
    format (`rotation_space`): what is turned twice is as that source held it. Where that
    ingest turned frames and kept no record, none is kept either: the HDF5 exporter's rule
    for such files (cameras and 4-D arrays) stands.

    Raises:
        ConversionError: a camera or array would be turned on other axes than it was.
    """
    prior = None
    if earlier is not None:
        meta = earlier.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        space = rotation_space(earlier)
        block = meta.get(space) if space is not None else None
        prior = block.get("rotated") if isinstance(block, dict) else None
        if not isinstance(prior, dict):
            if meta.get("image_orientation") == _ROTATED:
                return None
            prior = None
    if prior is None or turned is None:
        return turned if prior is None else dict(prior)
    out = dict(prior)
    for name, axes in turned.items():
        if name not in out:
            out[name] = axes
        elif out.pop(name) != axes:
            raise ConversionError(
                f"{root}: {name!r} was rotated 180 degrees on axes {prior[name]} by the ingest of the file this "
                f"kinodb export was written from, and flip_images turns it on axes {axes}, which leaves it "
                f"turned both ways; ingest it with {option_flag('flip_images', False)}"
            )
    return out


_WARNED_UNLISTED: set[tuple[str, int]] = set()  # (info.json, its mtime) warned about, in this process
_WARNED_LEFT_OUT: set[tuple[str, int, str]] = set()  # (info.json, its mtime, column) not stored, warned about
_WARNED_NO_ROLE: set[tuple[str, int, str]] = set()  # (info.json, its mtime, feature) with no role, warned


def _info_ident(info_path: str) -> tuple[str, int]:
    """``info_path`` and its mtime: a dataset, as the warnings given once a process know it."""
    try:
        return info_path, os.stat(info_path).st_mtime_ns
    except OSError:
        return info_path, 0


class LeRobotSource:
    """A LeRobot dataset folder, read one episode at a time (see the module docstring).

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("unitree_g1_lerobot_v21", "g1.kdb", format="lerobot", episodes=[29])

    Raises:
        ConversionError: the path is no dataset folder (a file, or a folder inside a
            dataset: the message names the root to pass), ``meta/info.json`` is missing
            or of an unsupported version, or the metadata is malformed.
        MissingExtraError: pyarrow or PyAV is not installed.
    """

    format: ClassVar[str] = "lerobot"
    accepts_action_key: ClassVar[bool] = True  # SourceOptions.action_key names the actions

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        self._root = os.fspath(path)
        self._options = options or SourceOptions()
        self._pa: Any = require("pyarrow", extra="lerobot")
        self._pq: Any = require("pyarrow.parquet", extra="lerobot")
        _check_root(self._root)
        info_path = os.path.join(self._root, "meta", "info.json")
        info = read_json(info_path)
        if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
            raise ConversionError(f"{info_path}: expected a JSON object with 'features'")
        self._info: dict[str, Any] = info
        self._info_path = info_path
        self._ident = _info_ident(info_path)  # names this dataset in the warnings given once a process
        self._version = _check_version(info, info_path)
        self._data_template = path_template(info, "data_path", self._version, info_path)
        self._features: dict[str, dict[str, Any]] = info["features"]
        bad = [k for k, f in self._features.items() if not isinstance(f, dict)]
        if bad:
            raise ConversionError(f"{info_path}: feature {bad[0]!r} is not a JSON object")
        odd = next((k for k, f in self._features.items() if not isinstance(f.get("dtype", ""), str)), None)
        if odd is not None:
            raise ConversionError(
                f"{info_path}: features[{odd!r}].dtype is {spelt(self._features[odd]['dtype'])}; expected "
                'a type name such as "float32", "image" or "video": fix it'
            )
        self._plan = make_plan(self._features, self._options, info_path)
        # role features wider than one value per frame: extra arrays, no role (key -> why)
        self._no_role = wide_roles(self._features, (self._plan.action, *self._plan.state_keys))
        self._tasks = _tasks(self._root, self._version, self._pq)
        self._kinodb = kinodb_export(self._root)
        videos = list(self._plan.videos.values()) if self._options.images else []
        if self._version == "v3.0":
            eps = episodes_v3(self._root, info, videos, self._pq, info_path)
        else:
            eps = episodes_v2(self._root, info, videos, info_path, self._version)
        eps.sort(key=lambda ep: ep.index)
        self._episodes = {f"episode_{ep.index:06d}": ep for ep in eps}
        if len(self._episodes) != len(eps):
            raise ConversionError(f"{self._root}: the episode metadata lists an episode_index twice")
        skip = frozenset() if self._options.images else frozenset(self._plan.images.values())
        self._data = DataFiles(
            self._pa, self._pq, skip=skip, several=self._version == "v3.0", missing=self._missing
        )
        # v3: per video feature, the open file of the last episode read; the next episode of
        # the same file goes on decoding where it stopped.
        self._readers: dict[str, _video.VideoReader] = {}
        self._wide: dict[str, str | None] | None = None  # `_wide_images`, once probed
        self._counted = False  # `_warn_unlisted` has run

    @classmethod
    def detect(cls, path: str) -> bool:
        """A folder holding ``meta/info.json``."""
        return os.path.isdir(path) and os.path.isfile(os.path.join(path, "meta", "info.json"))

    def episodes(self) -> list[str]:
        """Every listed episode's key (``episode_000029``), in ``episode_index`` order.

        Warns (once) when ``info.json``'s ``total_episodes`` is not the number listed,
        naming the episodes that have data but no entry (`_warn_unlisted`).
        """
        if not self._counted:
            self._counted = True
            if self._ident not in _WARNED_UNLISTED:  # once per process, not again for `verify`'s source
                _WARNED_UNLISTED.add(self._ident)
                self._warn_unlisted()
        return list(self._episodes)

    def _warn_unlisted(self) -> None:
        """Warn when ``total_episodes`` and the episode list disagree, naming the episodes
        whose data is at hand but not listed (left out of the ingest)."""
        total, listed = whole_number(self._info.get("total_episodes")), len(self._episodes)
        if total is None or total == listed:
            return
        v3 = self._version == "v3.0"
        place = "meta/episodes/*.parquet" if v3 else "meta/episodes.jsonl"
        chunks = None if v3 else chunks_size(self._info, self._info_path)
        held = episodes_at_hand(
            self._pa, self._pq, self._root, self._data_template, chunks=chunks, below=total
        )
        unlisted = sorted(held - {ep.index for ep in self._episodes.values()})
        what = (
            f"episodes {episodes_spec(unlisted)} (episode_index) have data but no entry there, so they are not "
            f"ingested: add their entries to {place} to ingest them"
            if unlisted
            else "every episode whose data is at hand is listed"
        )
        log.warning("%s: total_episodes is %d, but %s lists %d episode%s; %s", self._info_path, total,
                    place, listed, "" if listed == 1 else "s", what)  # fmt: skip

    def _fps(self, *, dataset: bool = False) -> float:
        """The episode fps (``options.fps`` wins unless ``dataset``: the rate of the files)."""
        fps = self._info.get("fps") if dataset else self._options.fps or self._info.get("fps")
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
            raise ConversionError(
                f"{self._root}: meta/info.json has no usable fps ({fps!r}); pass {option_name('fps')}"
            )
        return float(fps)

    def _wide_images(self) -> dict[str, str | None]:
        """``image`` features whose frames are 16-bit PNG: feature key -> None when they are
        greyscale (kept as a uint16 extra array), else why they are left out.

        Frame 0 of the first episode at hand decides for the dataset: .kdb cameras hold
        8-bit frames, and 16-bit PNG (LeRobot's depth maps) would not pass them.
        """
        if self._wide is None:
            keys = list(self._plan.images.values()) if self._options.images else []
            ep = next((ep for ep in self._episodes.values() if os.path.isfile(ep.data)), None)
            self._wide = wide_images(self._pq, ep.data, keys) if keys and ep is not None else {}
        return self._wide

    def info(self) -> SourceInfo:
        """Schema (names and components), fps, embodiment and the dataset's LeRobot metadata."""
        schema: dict[str, Any] = {}
        key = self._plan.action
        action = self._features[key]
        names, comps = names_and_components(action.get("names"), feature_dim(action))
        if not comps and key != "action":  # the source key, as for a state feature of another name
            comps = {key: [0, feature_dim(action)]}
        actions = ({"names": names} if names is not None else {}) | ({"components": comps} if comps else {})
        if actions:
            schema["actions"] = actions
        states = self._state_schema()
        if states:
            schema["states"] = states
        robot = self._info.get("robot_type")
        wide = self._wide_images()
        lerobot = {
            "codebase_version": self._version, "info": self._info,
            "tasks": {str(k): v for k, v in sorted((self._tasks or {}).items())},
            "action_key": key, "state_keys": list(self._plan.state_keys),
            "cameras": {**{c: k for c, k in self._plan.images.items() if k not in wide}, **self._plan.videos},
            "left_out": {**self._plan.left_out, **{k: why for k, why in wide.items() if why is not None}},
            "video_tolerance_s": TOLERANCE_S,
        }  # fmt: skip
        not_cameras = {
            k: f"16-bit greyscale PNG frames: stored bit for bit as the uint16 (T, H, W) extra array "
            f"{array_name(k)!r}; .kdb cameras hold 8-bit frames"
            for k, why in wide.items()
            if why is None
        }
        if not_cameras:
            lerobot["not_cameras"] = not_cameras
        notes = [f"{k} is not a camera: {why}" for k, why in not_cameras.items()]
        notes += self._roles_not_taken(lerobot)
        for k, why in wide.items():
            if why is not None:
                log.warning("%s: %s is left out: %s", self._root, k, why)
                notes.append(f"{k} is left out: {why}")
        given = {"lerobot": lerobot}
        schema, metadata = restore_dataset(self._kinodb, schema, given, self._info, self._root)
        # restore_dataset hands back the metadata it was given when it gives nothing back
        earlier = self._kinodb["dataset"] if self._kinodb is not None and metadata is not given else None
        rotated = _rotated(earlier, self._turned(wide), self._root)
        if rotated is not None:
            metadata["lerobot"]["rotated"] = rotated
        if self._options.flip_images:  # turned once more than a kinodb export's frames had been
            turned = metadata.get("image_orientation", _AS_STORED)
            metadata["image_orientation"] = _TURNED_AGAIN.get(turned, turned)  # "mixed" stays mixed
        return SourceInfo(
            f"lerobot-{self._version}", schema=schema, metadata=metadata, fps=self._fps(),
            embodiment=str(robot) if robot else None, notes=notes,
        )  # fmt: skip

    def _roles_not_taken(self, lerobot: dict[str, Any]) -> list[str]:
        """Record the role features that take no role (`wide_roles`) as ``lerobot.no_role``
        and warn of each, once a process (`verify` reads the info again); the report's notes."""
        if not self._no_role:
            return []
        lerobot["no_role"] = dict(self._no_role)
        for key, done in self._no_role.items():
            if (*self._ident, key) not in _WARNED_NO_ROLE:
                _WARNED_NO_ROLE.add((*self._ident, key))
                log.warning("%s: %s takes no role: %s", self._info_path, key, done)
        return [f"{key} takes no role: {done}" for key, done in self._no_role.items()]

    def _turned(self, wide: dict[str, str | None]) -> dict[str, list[int]] | None:
        """What ``flip_images`` turns 180 degrees, with the axes: every camera and 16-bit
        greyscale array (``wide``: `_wide_images`) on (H, W); None without ``flip_images``."""
        if not self._options.flip_images:
            return None
        if not self._options.images:
            return {}
        cameras = [c for c, k in self._plan.images.items() if k not in wide] + list(self._plan.videos)
        return {name: [1, 2] for name in cameras + [array_name(k) for k, why in wide.items() if why is None]}

    def _state_schema(self) -> dict[str, Any]:
        keys = self._plan.state_keys
        if not keys:
            return {}
        if len(keys) == 1:
            feat = self._features[keys[0]]
            names, comps = names_and_components(feat.get("names"), feature_dim(feat))
            out: dict[str, Any] = {"names": names} if names is not None else {}
            if comps:
                out["components"] = comps
            elif keys[0] != "observation.state":
                out["components"] = {keys[0]: [0, feature_dim(feat)]}
            return out
        spans: dict[str, list[int]] = {}
        all_names: list[str] | None = []
        start = 0
        for key in keys:
            dim = feature_dim(self._features[key])
            spans[key] = [start, start + dim]
            start += dim
            names, _ = names_and_components(self._features[key].get("names"), dim)
            all_names = None if names is None or all_names is None else all_names + names
        return {"components": spans, **({"names": all_names} if all_names else {})}

    # -- reading ------------------------------------------------------------------------

    def _missing(self, path: str, e: int) -> ConversionError:
        """The error for episode ``e``'s data file ``path``, which does not exist."""
        listed = list(self._episodes.values())
        held = [k for k, ep in enumerate(listed) if os.path.isfile(ep.data)]
        spec = episodes_spec(held)
        select = option_value("episodes", spec, whole=True) if held else option_name("episodes")
        return ConversionError(
            f"{path}: missing data file of episode {e}; this copy holds the data of {len(held)} of its "
            f"{len(listed)} episodes ({spec or 'none'}): select them with {select} (positions in "
            f"meta/episodes){skip_advice()}"
        )

    def _table(self, ep: Episode) -> Any:
        """The episode's rows, ordered by ``frame_index``, image columns only when wanted.

        Consecutive episodes of one row group are slices of it, decoded once (`DataFiles`).
        """
        table = self._data.rows(ep.data, ep.index)
        where = f"{ep.data}: episode {ep.index}"
        if table.num_rows == 0:
            raise ConversionError(f"{where}: the file holds no rows of this episode")
        if table.num_rows != ep.length:
            raise ConversionError(
                f"{where}: the file holds {table.num_rows} rows of this episode, the episode metadata "
                f"says its length is {ep.length}"
            )
        return by_frame_index(self._pa, table, where) if "frame_index" in table.column_names else table

    def read(self, key: str) -> dict[str, Any]:
        """`Writer.add_episode` arguments for episode ``key``; videos are decoded here.

        Raises:
            ConversionError: the key is unknown, a data or video file is missing or short,
                a column does not fit; names the file, the episode and the column.
        """
        ep = self._episodes.get(key)
        if ep is None:
            raise ConversionError(f"{self._root}: no episode {key!r}")
        if ep.problem is not None:
            raise ConversionError(ep.problem)
        table = self._table(ep)
        where = f"{ep.data}: episode {ep.index}"
        args: dict[str, Any] = {"fps": self._fps(), "extra": {"episode_index": ep.index}}
        parts: dict[str, np.ndarray] = {}
        wide = self._wide_images()
        cams = {k: c for c, k in self._plan.images.items()} if self._options.images else {}
        absent = [k for k in cams if k not in table.column_names]
        if absent:
            raise ConversionError(f"{where}: no column for the image feature {absent[0]!r}")
        for name in table.column_names:
            column = table[name]
            if name in wide:  # 16-bit PNG: greyscale kept as a uint16 array, colour left out
                if wide[name] is None:
                    parts[name] = wide_frames(column, name, where, self._options.flip_images)
                continue
            if name in cams:
                frames = image_frames(column, name, where, self._options.flip_images)
                args.setdefault("images", {})[cams[name]] = frames
                continue
            kind = column_kind(self._pa, column.type)
            if kind == "text":
                args["extra"][name] = text_value(column)
            elif kind != "numeric":
                self._left_out(name, f"{column.type} is not numeric, text or an image")
            elif name not in POSITIONS:
                arr = _to_numpy(self._pa, column, name, where)
                parts[name] = as_declared(
                    arr, name, self._features.get(name, {}).get("dtype"), self._ident, self._root
                )
        self._assemble(ep, parts, args, where)
        if self._options.images and self._plan.videos:
            args.setdefault("images", {}).update(self._decode_videos(ep, args, where))
        if self._kinodb is not None:
            restore(args, self._kinodb, ep.index, self._root)
        args[SOURCE_WHERE] = where
        return args

    def _check_width(self, arr: np.ndarray, key: str, where: str) -> None:
        """Refuse an action or state column whose values per frame are not the ``shape``
        ``info.json`` declares for it (the schema's names and components come from there)."""
        feature = self._features[key]
        if "shape" not in feature:
            return
        got, declared = math.prod(arr.shape[1:]), feature_dim(feature)
        if got != declared:
            raise ConversionError(
                f"{where}: column {key!r} holds {got} values per frame, but meta/info.json declares shape "
                f"{json.dumps(feature['shape'])} for it; correct features[{key!r}] (its shape and names) in "
                "meta/info.json to match the data"
            )

    def _assemble(self, ep: Episode, parts: dict[str, np.ndarray], args: dict[str, Any], where: str) -> None:
        """Give every numeric column its role: actions, states, rewards, ..., extra arrays."""
        action = self._plan.action
        if action not in parts:
            raise ConversionError(f"{where}: no {action!r} column")
        keys = self._plan.state_keys
        missing = [k for k in keys if k not in parts]
        if missing:
            raise ConversionError(f"{where}: no state column {missing[0]!r}")
        for key in (action, *keys):
            self._check_width(parts[key], key, where)
        T = len(parts[action])
        args["actions"] = parts.pop(action).reshape(T, -1)
        if len(keys) == 1:
            args["states"] = parts.pop(keys[0]).reshape(T, -1)
        elif keys:
            own = {k: parts.pop(k) for k in keys}
            args["states"] = concatenate(own, T, where)
            args[SOURCE_PARTS] = {"states": own}
        for name, role in _ROLES.items():
            if name in parts and name not in self._no_role:  # else it stays an extra array
                args[role] = per_frame(parts.pop(name), name, where, role_fix(name, self._features))
        if "timestamps" in args:
            _check_times(args["timestamps"], where)
        if "is_terminal" in args and args["is_terminal"].dtype != np.bool_:
            args["is_terminal"] = args["is_terminal"] != 0
        success = "next.success"
        if success in parts and success not in self._no_role:  # the per-frame flag stays an extra array too
            args["success"] = bool(
                per_frame(parts[success], success, where, role_fix(success, self._features))[-1]
            )
        self._task(ep, parts, args, where)
        if parts:
            args["extra_arrays"] = {array_name(k): v for k, v in parts.items()}

    def _task(self, ep: Episode, parts: dict[str, np.ndarray], args: dict[str, Any], where: str) -> None:
        """The first frame's task text; a varying task index stays an extra array."""
        index = per_frame(parts.pop("task_index"), "task_index", where) if "task_index" in parts else None
        if index is not None and (index != index[0]).any():
            parts["task_index"] = index
        if index is None or self._tasks is None:
            args["task"] = ep.tasks[0] if ep.tasks else ""
            return
        unknown = sorted({int(i) for i in np.unique(index)} - set(self._tasks))
        if unknown:
            raise ConversionError(f"{where}: task_index {unknown[0]} is not in the dataset's tasks table")
        args["task"] = self._tasks[int(index[0])]
        if "task_index" in parts:  # per frame: positions in the episode's own `tasks` list
            values, firsts, inverse = np.unique(index, return_index=True, return_inverse=True)
            order = np.argsort(firsts, kind="stable")  # texts in order of first appearance
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            parts["task_index"] = rank[inverse.reshape(-1)].astype(index.dtype)
            args["extra"]["tasks"] = [self._tasks[int(values[k])] for k in order]

    def _decode_videos(
        self, ep: Episode, args: dict[str, Any], where: str
    ) -> dict[str, np.ndarray | list[bytes] | FrameChunks]:
        """Every video camera of the episode, frame-exact at the parquet timestamps.

        JPEG bytes when the frames are to be stored as JPEG (from the decoder's planes for
        4:2:0 BT.601 video, else from its RGB pixels as the writer encodes them: the same
        bytes), PNG bytes when they are to be stored as PNG (encoded as the writer encodes
        them), else RGB pixels (`_video.decode_at`): `FrameChunks` when the options ask for
        them, decoded only as they are iterated; turned 180 degrees with ``flip_images``.
        """
        quality = self._options.jpeg_quality
        codec = "jpeg" if quality is not None else self._options.image_codec
        if codec == "jpeg" and quality is None:  # JPEG at no quality the source knows: pixels
            codec = None
        stamps = args.get("timestamps")
        if stamps is None:  # LeRobot's default: frame_index / fps, at the dataset's own fps
            stamps = np.arange(len(args["actions"])) / self._fps(dataset=True)
        times = stamps.astype(np.float64)
        out: dict[str, np.ndarray | list[bytes] | FrameChunks] = {}
        for cam, key in self._plan.videos.items():
            if codec is None and self._options.frame_chunks:
                out[cam] = FrameChunks(len(times), functools.partial(self._video_chunks, ep, cam, key, times))
                continue
            video = ep.videos[key]
            try:
                out[cam] = _video.decode_at(
                    video.path, times + video.offset, seek=self._version == "v3.0", jpeg_quality=quality,
                    image_codec=codec, flip=self._options.flip_images, reader=self._reader(key, video.path),
                )  # fmt: skip
            except ConversionError as exc:
                raise _video_error(exc, ep, cam, key) from None
        return out

    def _video_chunks(
        self, ep: Episode, cam: str, key: str, times: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray]]:
        """A video camera's RGB pixels, decoded a chunk at a time (`FrameChunks`)."""
        video = ep.videos[key]
        chunks = _video.decode_chunks(
            video.path, times + video.offset, seek=self._version == "v3.0", flip=self._options.flip_images,
            reader=self._reader(key, video.path),
        )  # fmt: skip
        try:
            yield from chunks
        except ConversionError as exc:
            raise _video_error(exc, ep, cam, key) from None

    def _left_out(self, name: str, why: str) -> None:
        if (*self._ident, name) not in _WARNED_LEFT_OUT:  # once per process, as `_WARNED_UNLISTED`
            _WARNED_LEFT_OUT.add((*self._ident, name))
            log.warning("%s: column %r is not stored: %s", self._root, name, why)

    def _reader(self, key: str, path: str) -> _video.VideoReader | None:
        """The open reader of a v3 video feature's file (v2 files hold one episode: none)."""
        if self._version != "v3.0":
            return None
        reader = self._readers.get(key)
        if reader is None or reader.path != path:
            if reader is not None:
                reader.close()
            reader = self._readers[key] = _video.VideoReader(path)
        return reader

    def close(self) -> None:
        """Close the open parquet and video files."""
        self._data.close()
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _check_times(stamps: np.ndarray, where: str) -> None:
    """Refuse a ``timestamp`` column holding NaN or infinity (bad data, whatever the videos)."""
    bad = ~np.isfinite(stamps)
    if bad.any():
        t = int(np.argmax(bad))
        raise ConversionError(
            f"{where}: column 'timestamp' holds {stamps[t]} at frame {t} ({int(bad.sum())} of {len(stamps)} "
            f"frames are not finite); timestamps must be finite numbers of seconds: fix the data file{skip_advice()}"
        )


def _video_error(exc: ConversionError, ep: Episode, cam: str, key: str) -> ConversionError:
    """A video's decoding error, naming the episode, camera and feature (and, for a damaged
    file, how to go on without the episode)."""
    advice = skip_advice() if isinstance(exc, _video.DamagedVideoError) else ""
    return ConversionError(f"{exc} (episode {ep.index}, camera {cam!r}, feature {key!r}){advice}")


__all__ = [
    "ACTION_KEYS",
    "STATE_KEYS",
    "SUPPORTED_VERSIONS",
    "TOLERANCE_S",
    "LeRobotSource",
    "names_and_components",
    "png_depth",
]
