"""Read a zarr replay buffer (diffusion_policy's ``ReplayBuffer`` layout) as an ingest `Source`.

The layout (diffusion_policy/common/replay_buffer.py; also UMI's datasets and LeRobot's
Push-T port): a zarr group holding ``data/`` (one array per key, every one with the same
number of rows, one per frame) and ``meta/episode_ends`` (the exclusive cumulative end
of each episode: episode ``i`` is rows ``episode_ends[i-1]`` (or 0) to
``episode_ends[i] - 1``). The store is a folder (``pusht_cchi_v7_replay.zarr``) or a zip
archive of one (``*.zarr.zip``), in zarr format 2 (what zarr 2 writes, and the reader
here; see `kinodb.ingest._zarr_store`) or 3 (read through zarr 3). What goes where:

- Episodes are ``episode_ends``' entries, in order; an episode's key is ``episode_I``.
  ``episode_ends`` must be non-decreasing and end within every array's rows (else an
  error says which entry or array is wrong); rows after the last end are in no episode
  and left out, with a note, as diffusion_policy's ``ReplayBuffer`` reads them. An
  episode of no rows is an error naming it (skip it with ``--on-error skip``).
- ``actions``: ``data/action`` (diffusion_policy's name), else ``data/actions``, or the
  array ``action_key`` names; a 1-D array is one column.
- ``states``: the arrays of ``state_keys`` in that order; else ``data/state`` (Push-T's
  agent and block pose) or ``data/states``, alone; else every other floating array of
  one or two dimensions, in sorted key order (UMI's ``robot0_eef_pos``,
  ``robot0_eef_rot_axis_angle``, ``robot0_gripper_width``). Several are concatenated
  (1-D as one column) in their NumPy result type, each key's ``[start, stop)`` recorded
  in the schema's ``states.components``; a value that type cannot hold exactly (an int64
  key named in ``state_keys`` beside floats) is refused, naming the key, the frame and the
  value.
- ``timestamps``: a 1-D floating ``data/timestamp`` or ``data/timestamps``.
  ``rewards``: a floating ``data/reward`` or ``data/rewards`` of one value per frame, and
  then success is whether the final reward is positive (else unknown). ``is_terminal``:
  ``data/done`` or ``data/dones`` (non-zero is true); else the last frame.
- Cameras: uint8 arrays of ``(N, H, W, C)`` frames with 1 to 4 channels (Push-T's
  ``img``, UMI's ``camera0_rgb``), named by their key, stored with the ingest's
  ``image_codec`` (``png`` or ``raw`` keep them exact); ``flip_images`` turns them 180
  degrees.
- Every other array of ``data/`` is an extra array named by its key, bit for bit with its
  own dtype and shape (Push-T's ``keypoint`` and ``n_contacts``); a name the writer
  reserves or a camera holds becomes ``data.KEY``. An array of text (strings or bytes per
  frame) or a scalar is left out, named in the report's notes.
- Each other array of ``meta/`` with one row per episode gives each episode the extra
  field ``meta.KEY`` (its row: a number, a bool, a string, or a list of them; NaN and
  infinity, which metadata cannot hold, become null, with a note); one that has another
  length is named in the report's notes and left out.
- The dataset metadata's ``zarr`` holds the store's kind and format, the root group's and
  ``data/``'s attributes, and each array's attributes where it has any.
- ``fps``: the ``fps`` option, else a number under the root group's attribute ``fps``,
  else 10 (Push-T's rate), which the report's notes say. ``task`` and ``embodiment`` come
  from the options: the layout holds neither.

A store written by ``kino export --format zarr`` (`kinodb.export.zarr`) records in its root
attributes what the layout has no place for; where that record still describes the store,
it decides the state keys and their order, the arrays' and cameras' names, and gives back
each episode's task, embodiment, fps, success, total reward and extra fields, and the
file's schema names and dataset metadata (`kinodb.ingest._zarr_kinodb`).

A chunk that is damaged (cut short, or not what its array's codec and metadata say) is an
error naming its file (in format 3 stores, for chunks whose last codec is Blosc, and what
zarr's codecs detect); a chunk that is absent reads as the array's fill value, as in
zarr, and the report's notes count such chunks. ``split`` and ``keep_model_file`` do not
apply (the framework refuses them).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._base import SOURCE_PARTS, SourceInfo, SourceOptions, checked_path
from kinodb.ingest._exact import first_rounded
from kinodb.ingest._options import option_name, skip_advice
from kinodb.ingest._zarr_kinodb import (
    ATTRS,
    EPISODES,
    component_names,
    exported,
    restore_dataset,
    restore_episode,
)
from kinodb.ingest._zarr_store import V2_ARRAY, V3_META, Array, Store, V2Array, V3Array, open_v3, store_format

FORMAT = "zarr"
DEFAULT_FPS = 10.0  # Push-T's control rate; the layout records none
ENDS = "meta/episode_ends"
_RESERVED = frozenset({"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images"})
_ACTIONS = ("action", "actions")
_STATES = ("state", "states")
_TIMESTAMPS = ("timestamp", "timestamps")
_REWARDS = ("reward", "rewards")
_DONES = ("done", "dones")


@dataclass
class _Layout:
    """Which array goes where, decided once from the store's metadata."""

    store: Store
    arrays: dict[str, Array]  # data/ arrays by key
    ends: np.ndarray
    actions: str
    states: list[str] = field(default_factory=list)
    state_dtype: np.dtype[Any] | None = None
    components: dict[str, list[int]] = field(default_factory=dict)
    timestamps: str | None = None
    rewards: str | None = None
    dones: str | None = None
    cameras: list[str] = field(default_factory=list)
    camera_names: dict[str, str] = field(default_factory=dict)  # key -> camera name, where not the key
    extra: dict[str, str] = field(default_factory=dict)  # extra array name -> key
    fields: dict[str, list[Any]] = field(default_factory=dict)  # meta.KEY -> one value per episode
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None  # what a kinodb export recorded (`_zarr_kinodb.exported`)


class ZarrSource:
    """A zarr replay buffer (``data/`` arrays and ``meta/episode_ends``; see the module docstring).

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("pusht_cchi_v7_replay.zarr", "pusht.kdb", embodiment="pusht", image_codec="png")

    Raises:
        ConversionError: the store is not a replay buffer, or its ``episode_ends`` or
            arrays do not agree; reading an episode whose chunk is damaged (names the
            chunk's file) or whose values the states cannot hold.
    """

    format: ClassVar[str] = FORMAT
    accepts_action_key: ClassVar[bool] = True  # data/KEY holds the actions

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        self._path = checked_path(
            type(self),
            path,
            f"a zarr replay buffer (a zarr group, or a zip archive of one, holding data/ arrays and {ENDS})",
        )
        self._options = options or SourceOptions()
        self._layout: _Layout | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._path, self._options))

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` is a zarr group, or a zip archive of one, with ``meta/episode_ends``."""
        marks = (f"{ENDS}/{V2_ARRAY}", f"{ENDS}/{V3_META}")
        if os.path.isdir(path):
            return any(os.path.isfile(os.path.join(path, *m.split("/"))) for m in marks)
        if path.lower().endswith(".zarr.zip"):
            return True  # named as one: a damaged archive is then named as such, not "unknown format"
        if not zipfile.is_zipfile(path):
            return False
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
        return any(m in names for m in marks)

    # -- the layout ------------------------------------------------------------------

    def _open(self) -> _Layout:
        if self._layout is None:
            store = Store(self._path)
            try:
                self._layout = self._decide(store)
            except BaseException:
                store.close()
                raise
        return self._layout

    def _decide(self, store: Store) -> _Layout:
        version = store_format(store)
        if version is None:
            raise ConversionError(f"{self._path}: no zarr group at its root (no .zgroup or zarr.json)")
        arrays, groups, meta_arrays, root_attrs, data_attrs = self._arrays(store, version)
        notes: list[str] = []
        for key, arr in list(arrays.items()):
            if not arr.numeric or not arr.shape:
                del arrays[key]
                text = "text" if arr.dtype.kind == "O" else f"text ({arr.dtype.str})"
                what = "a scalar" if not arr.shape else text
                notes.append(f"data/{key} holds {what}, not numbers per frame: left out")
        ends = self._ends(meta_arrays.pop("episode_ends", None), arrays, notes)
        record = exported(root_attrs, store.get(EPISODES), ends, set(arrays), notes)
        saved = record["layout"] if record is not None else {}
        actions = saved["actions"] if record is not None and self._options.action_key is None else None
        layout = _Layout(store, arrays, ends, actions=actions or self._action_key(arrays), notes=notes,
                         record=record)  # fmt: skip
        self._choose_states(layout, saved.get("states"))
        taken = {layout.actions, *layout.states}
        free = [k for k in sorted(arrays) if k not in taken]
        if record is not None:
            layout.timestamps, layout.rewards, layout.dones = (
                saved[k] if saved.get(k) in free else None for k in ("timestamps", "rewards", "is_terminal")
            )
        else:
            layout.timestamps = _first(
                free, _TIMESTAMPS, lambda a: a.dtype.kind == "f" and len(a.shape) == 1, arrays
            )
            layout.rewards = _first(free, _REWARDS, lambda a: a.dtype.kind == "f" and _per_frame(a), arrays)
            layout.dones = _first(free, _DONES, lambda a: a.dtype.kind in "biuf" and _per_frame(a), arrays)
        taken |= {k for k in (layout.timestamps, layout.rewards, layout.dones) if k is not None}
        cams: dict[str, str] = saved.get("cameras") or {}
        layout.cameras = [
            k for k in free if k not in taken and _is_camera(arrays[k]) and (record is None or k in cams)
        ]
        layout.camera_names = {k: cams[k] for k in layout.cameras if k in cams}
        names = set(_RESERVED) | {layout.camera_names.get(k, k) for k in layout.cameras}
        named: dict[str, str] = saved.get("extra_arrays") or {}
        for k in free:
            if k in named and k not in taken and k not in layout.cameras:
                layout.extra[named[k]] = k
                names.add(named[k])
        for k in free:
            if k in taken or k in layout.cameras or k in named:
                continue
            name = k if k not in names else f"data.{k}"
            while name in names:
                name += "_"
            names.add(name)
            layout.extra[name] = k
        n = len(ends)
        written = saved.get("meta") or {}  # the export's copies of fields its record gives back
        for key, arr in sorted(meta_arrays.items()):
            if key in written:
                continue
            if arr.shape[:1] == (n,):
                values, odd = _fields(arr.read(0, n))
                layout.fields[f"meta.{key}"] = values
                if odd:
                    layout.notes.append(
                        f"meta/{key} holds NaN or infinity for {odd} episode{'s' if odd != 1 else ''}, which "
                        "metadata cannot hold: stored as null"
                    )
            else:
                layout.notes.append(
                    f"meta/{key} ({'x'.join(map(str, arr.shape)) or 'scalar'}) has not one row per episode ({n}): "
                    "left out"
                )
        for key in groups:
            layout.notes.append(f"data/{key} is a group, not an array: left out")
        for key, arr in sorted(arrays.items()):
            if arr.missing_chunks:
                layout.notes.append(
                    f"data/{key}: {arr.missing_chunks} of {arr.chunk_count} chunks are absent and read as the "
                    "array's fill value (zarr leaves out chunks that hold only it); if the store was copied in "
                    "part, copy it again"
                )
        layout.metadata = {
            "store": store.kind,
            "zarr_format": version,
            "attrs": {k: v for k, v in root_attrs.items() if k not in ATTRS},
            "data_attrs": data_attrs,
            "array_attrs": {k: a.attrs for k, a in sorted(arrays.items()) if a.attrs},
            "arrays": {k: {"dtype": a.dtype.name, "shape": list(a.shape)} for k, a in sorted(arrays.items())},
        }
        return layout

    def _arrays(
        self, store: Store, version: int
    ) -> tuple[dict[str, Array], list[str], dict[str, Array], dict[str, Any], dict[str, Any]]:
        """The ``data/`` arrays, ``data/``'s subgroups, the ``meta/`` arrays, and the root's and
        ``data/``'s attributes."""
        arrays: dict[str, Array] = {}
        meta: dict[str, Array] = {}
        groups: list[str] = []
        if version == 2:
            for group, into in (("data", arrays), ("meta", meta)):
                for key in store.children(group):
                    if store.get(f"{group}/{key}/{V2_ARRAY}") is not None:
                        into[key] = V2Array(store, f"{group}/{key}")
                    elif group == "data" and store.get(f"{group}/{key}/.zgroup") is not None:
                        groups.append(key)
            return arrays, groups, meta, store.json(".zattrs") or {}, store.json("data/.zattrs") or {}
        root = open_v3(self._path, store)
        data_attrs: dict[str, Any] = {}
        for group, into in (("data", arrays), ("meta", meta)):
            if group not in root:
                continue
            node = root[group]
            if group == "data":
                data_attrs = dict(node.attrs)
                groups = sorted(node.group_keys())
            for key in sorted(node.array_keys()):
                into[key] = V3Array(node[key], f"{group}/{key}", store)
        return arrays, groups, meta, dict(root.attrs), data_attrs

    def _ends(self, arr: Array | None, arrays: dict[str, Array], notes: list[str]) -> np.ndarray:
        where = f"{self._path}: {ENDS}"
        if arr is None:
            raise ConversionError(
                f"{where} is missing; a replay buffer records where each episode ends there"
            )
        if len(arr.shape) != 1 or arr.dtype.kind not in "iu":
            raise ConversionError(f"{where} is {arr.dtype} {arr.shape}; expected a 1-D integer array")
        ends = arr.read(0, arr.shape[0]).astype(np.int64)
        if not arrays:
            raise ConversionError(f"{self._path}: data/ holds no arrays")
        if ends.size and int(ends[0]) < 0:
            raise ConversionError(f"{where}[0] is {int(ends[0])}; ends are row counts, 0 or more")
        down = np.flatnonzero(np.diff(ends) < 0)
        if down.size:
            i = int(down[0]) + 1
            raise ConversionError(
                f"{where}[{i}] is {int(ends[i])}, below {ENDS}[{i - 1}] ({int(ends[i - 1])}); the ends must not "
                "decrease"
            )
        last = int(ends[-1]) if ends.size else 0
        short = {k: a.shape[0] for k, a in sorted(arrays.items()) if a.shape[0] < last}
        if short:
            listed = ", ".join(f"data/{k} holds {n}" for k, n in short.items())
            raise ConversionError(
                f"{where} ends at row {last}, and {listed} rows; the store was written in part, or its arrays were "
                "changed after the episodes were recorded"
            )
        for k, a in sorted(arrays.items()):
            if a.shape[0] > last:  # diffusion_policy's ReplayBuffer reads the rows up to the last end
                notes.append(
                    f"data/{k} holds {a.shape[0]} rows, {a.shape[0] - last} after the last episode's end (row "
                    f"{last}): those are in no episode and left out"
                )
        return ends

    def _action_key(self, arrays: dict[str, Array]) -> str:
        named = self._options.action_key
        listed = ", ".join(sorted(arrays))
        if named is not None:
            if named not in arrays:
                raise ConversionError(
                    f"{self._path}: no array data/{named} for the actions (data/ holds {listed})"
                )
            key = named
        else:
            key = next((k for k in _ACTIONS if k in arrays), "")
            if not key:
                raise ConversionError(
                    f"{self._path}: no data/action or data/actions array (data/ holds {listed}); name the array "
                    f"that holds the actions with {option_name('action_key')} KEY"
                )
        arr = arrays[key]
        if len(arr.shape) not in (1, 2) or arr.dtype.kind not in "biuf":
            raise ConversionError(
                f"{self._path}: data/{key} is {arr.dtype} {arr.shape}; actions are one row of numbers per frame"
            )
        return key

    def _choose_states(self, layout: _Layout, exported: list[str] | None = None) -> None:
        """The state keys: ``state_keys``; else those a kinodb export recorded (``exported``),
        in its order; else ``data/state`` alone or the low-dim floats, sorted."""
        arrays = layout.arrays
        named = self._options.state_keys
        if named is None and exported is not None and layout.actions not in exported:
            named = tuple(exported)
        if named is not None:
            keys = [k.strip().removeprefix("data/") for k in named if k.strip()]
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise ConversionError(
                    f"{self._path}: {option_name('state_keys')} names {', '.join(missing)}, which data/ does not "
                    f"hold (it holds {', '.join(sorted(arrays))})"
                )
            if layout.actions in keys:
                raise ConversionError(
                    f"{self._path}: {option_name('state_keys')} names data/{layout.actions}, which holds the actions"
                )
            for k in keys:
                a = arrays[k]
                if len(a.shape) not in (1, 2) or a.dtype.kind not in "biuf":
                    raise ConversionError(
                        f"{self._path}: data/{k} is {a.dtype} {a.shape}; a state key holds one row of numbers "
                        "per frame (1 or 2 dimensions)"
                    )
        else:
            keys = next(([k] for k in _STATES if k in arrays and _low_dim(arrays[k])), [])
            if not keys:
                skip = {layout.actions, *_TIMESTAMPS, *_REWARDS, *_DONES}
                keys = sorted(
                    k
                    for k, a in arrays.items()
                    if k not in skip and a.dtype.kind == "f" and len(a.shape) in (1, 2)
                )
        if not keys:
            return
        layout.states = keys
        layout.state_dtype = np.result_type(*(arrays[k].dtype for k in keys))
        start = 0
        for k in keys:
            width = arrays[k].shape[1] if len(arrays[k].shape) == 2 else 1
            layout.components[k] = [start, start + width]
            start += width

    # -- the Source protocol -------------------------------------------------------------

    def episodes(self) -> list[str]:
        """``episode_0`` to ``episode_{n-1}``, one per entry of ``episode_ends``."""
        return [f"episode_{i}" for i in range(len(self._open().ends))]

    def info(self) -> SourceInfo:
        """Schema (state components), the store's metadata, fps and notes."""
        layout = self._open()
        notes = list(layout.notes)
        fps = self._options.fps
        attr = layout.metadata["attrs"].get("fps")
        if fps is None and isinstance(attr, (int, float)) and not isinstance(attr, bool) and attr > 0:
            fps = float(attr)
        if fps is None and layout.record is not None:
            pass  # each episode's own, from the export's record (`restore_episode`)
        elif fps is None:
            fps = DEFAULT_FPS
            notes.append(
                f"the store records no frame rate: {DEFAULT_FPS:g} fps assumed (Push-T's); pass {option_name('fps')} "
                "with the rate it was recorded at"
            )
        schema: dict[str, Any] = {}
        if len(layout.states) > 1 or any(len(layout.arrays[k].shape) == 1 for k in layout.states):
            schema["states"] = {"components": dict(layout.components)}
        metadata = {FORMAT: {**layout.metadata, "actions": layout.actions, "states": layout.states,
                             "cameras": layout.cameras, "extra_arrays": layout.extra}}  # fmt: skip
        schema, metadata = restore_dataset(layout.record, schema, metadata, layout.actions, layout.states)
        return SourceInfo(FORMAT, schema=schema, metadata=metadata, fps=fps, notes=notes)

    def read(self, key: str) -> dict[str, Any]:
        """`Writer.add_episode` arguments for episode ``key`` (``episode_I``).

        Raises:
            ConversionError: the episode holds no frames, a chunk it needs is damaged, or a
                state value does not fit the states' dtype.
        """
        layout = self._open()
        i = _position(key, len(layout.ends))
        if i is None:
            raise ConversionError(
                f"{self._path}: no episode {key!r} (it holds episode_0 to episode_{len(layout.ends) - 1})"
            )
        start = int(layout.ends[i - 1]) if i else 0
        stop = int(layout.ends[i])
        if stop == start:
            raise ConversionError(
                f"{self._path}: {key} holds no frames ({ENDS}[{i}] is {stop}, as is the end before it){skip_advice()}"
            )

        def rows(k: str) -> np.ndarray:
            try:
                return layout.arrays[k].read(start, stop)
            except ConversionError as exc:
                raise ConversionError(f"{exc} ({key}, rows {start}-{stop - 1}){skip_advice()}") from None

        actions = rows(layout.actions)
        args: dict[str, Any] = {"actions": actions.reshape(len(actions), -1)}
        if layout.states:
            args["states"], parts = self._states(layout, rows, key)
            if parts:
                renamed = component_names(layout.record, layout.states)
                args[SOURCE_PARTS] = {"states": {renamed.get(k, k): v for k, v in parts.items()}}
        if layout.timestamps is not None:
            args["timestamps"] = rows(layout.timestamps)
        if layout.rewards is not None:
            rewards = rows(layout.rewards).reshape(-1)
            args["rewards"] = rewards
            args["success"] = bool(rewards[-1] > 0)
        if layout.dones is not None:
            args["is_terminal"] = rows(layout.dones).reshape(-1) != 0
        if self._options.images:
            images = {}
            for k in layout.cameras:
                frames = rows(k)
                images[layout.camera_names.get(k, k)] = (
                    np.ascontiguousarray(frames[:, ::-1, ::-1]) if self._options.flip_images else frames
                )
            args["images"] = images
        args["extra_arrays"] = {name: rows(k) for name, k in layout.extra.items()}
        args["extra"] = {name: values[i] for name, values in layout.fields.items()}
        if layout.record is not None:
            restore_episode(args, layout.record, i, self._options.fps is not None)
        return args

    def _states(self, layout: _Layout, rows: Any, key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The states, and each key's rows as stored where several are joined (for `verify`)."""
        assert layout.state_dtype is not None
        if len(layout.states) == 1 and len(layout.arrays[layout.states[0]].shape) == 2:
            return rows(layout.states[0]), {}
        parts = {k: rows(k) for k in layout.states}
        T = len(next(iter(parts.values())))
        out = np.empty((T, layout.components[layout.states[-1]][1]), layout.state_dtype)
        for k, arr in parts.items():
            rounded = first_rounded(arr, out.dtype)
            if rounded is not None:
                at, value = rounded
                raise ConversionError(
                    f"{self._path}: data/{k} holds {value!r} at frame {at // max(1, arr[:1].size)} of {key} "
                    f"({arr.dtype}), which the {out.dtype} states cannot hold exactly; pass "
                    f"{option_name('state_keys')} without it to keep the states exact"
                )
            a, b = layout.components[k]
            out[:, a:b] = arr.reshape(T, b - a)
        return out, parts

    def close(self) -> None:
        """Close the store (an archive's file)."""
        if self._layout is not None:
            self._layout.store.close()
            self._layout = None


def _fields(rows: np.ndarray) -> tuple[list[Any], int]:
    """Each episode's row of a ``meta/`` array as an extra field's value (bytes decoded as
    UTF-8, NaN and infinity as None), and how many rows held NaN or infinity."""
    values, odd = [], 0
    for row in rows:
        value = _plain(row.tolist() if isinstance(row, (np.ndarray, np.generic)) else row)
        if _non_finite(value):
            odd += 1
            value = _finite(value)
        values.append(value)
    return values, odd


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not np.isfinite(value)
    return isinstance(value, list) and any(_non_finite(v) for v in value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    return [_finite(v) for v in value] if isinstance(value, list) else value


def _position(key: str, n: int) -> int | None:
    digits = key.removeprefix("episode_")
    if key.startswith("episode_") and digits.isdigit() and (digits == "0" or not digits.startswith("0")):
        i = int(digits)
        return i if i < n else None
    return None


def _per_frame(arr: Array) -> bool:
    return len(arr.shape) == 1 or (len(arr.shape) == 2 and arr.shape[1] == 1)


def _low_dim(arr: Array) -> bool:
    return len(arr.shape) in (1, 2) and arr.dtype.kind in "biuf"


def _is_camera(arr: Array) -> bool:
    return arr.dtype == np.uint8 and len(arr.shape) == 4 and 1 <= arr.shape[3] <= 4


def _first(keys: list[str], names: tuple[str, ...], fits: Any, arrays: dict[str, Array]) -> str | None:
    return next((k for k in names if k in keys and fits(arrays[k])), None)
