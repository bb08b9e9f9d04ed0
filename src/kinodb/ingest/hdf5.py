"""Read robomimic and LIBERO HDF5 files (``data/demo_N`` groups) as an ingest `Source`.

What goes where:

- Episodes are the ``data/demo_N`` groups in numeric order (``demo_2`` before
  ``demo_10``); ``--split NAME`` keeps the demos listed in ``mask/NAME``.
- ``actions`` is required; arrays keep their source dtype bit for bit.
- ``states``: the low-dim ``obs/`` datasets (2-D, and 1-D as one column each), in sorted
  key order or the order of ``state_keys`` (spaces around each key and empty entries are
  ignored; an ``obs/`` prefix is optional), concatenated; each key's ``[start, stop)`` is
  recorded in the schema's ``states.components``. Keys of different dtypes are cast to
  their NumPy result type (float32 and float64 give float64) where that keeps every
  value: a key whose dtype the states' dtype cannot hold exactly (an int64 or uint64
  beside floats, such as a nanosecond timestamp, which float64 would round beyond 2**53)
  is kept apart, as an extra array named by its key with its own dtype; the metadata's
  ``hdf5.kept_apart`` and a note of the report say so. This goes by dtype, not by value,
  so every demo has the same layout. Keys named in ``state_keys`` all go into the states,
  and a demo holding a value the states' dtype would round (an int64 timestamp beyond
  2**53 in float64 states) is refused, naming the key, the frame and the value. Either
  way the states hold the source's values exactly.
- Cameras: 4-D uint8 ``obs/`` datasets (``(T, H, W, C)``, depth ``(T, H, W, 1)`` too),
  named by their key. Other 3-D and 4-D ``obs/`` datasets (float or uint16 depth) are
  extra arrays named by their key.
- The demo's ``states`` (simulator states) become the extra array ``sim_state``, a 1-D
  ``timestamps`` dataset the episode's timestamps; other per-frame datasets of the demo
  (LIBERO's ``robot_states``, ``action_dict/abs_pos``) become extra arrays (``/``
  written as ``.``). ``next_obs`` duplicates ``obs`` and is not read.
- ``rewards`` keep a floating dtype; integer or bool rewards (LIBERO's uint8) become
  float32, or float64 for integers wider than 16 bits, so every value stays exact.
  ``dones`` become ``is_terminal`` (non-zero is true); without them the last frame is
  terminal.
- ``success``: a demo attribute or dataset named ``success``, else the ``success`` of the
  demo's ``ep_meta`` JSON (null: unknown), else whether the final reward is positive,
  else unknown.
- ``task``: ``ep_meta``'s ``lang``, else LIBERO's ``problem_info``
  ``language_instruction`` (quotes stripped as LIBERO's reader does), else empty.
- ``embodiment``: ``ep_meta``'s ``embodiment``, else the robots of ``env_args``
  (``"Panda"``; several robots are joined with ``+``). ``fps``: the option, else
  ``ep_meta``'s ``fps``, else ``env_args`` ``control_freq``, else 20 for LIBERO files
  and 10 otherwise.
- ``mask/`` filter keys become the list-valued extra field ``filter_keys`` of each
  episode (``filter_keys CONTAINS 'valid'``).
- ``flip_images`` rotates frames (and 4-D depth arrays) by 180 degrees; the metadata
  field ``image_orientation`` says whether that happened.

- A kinodb export (``data`` attrs ``kinodb_export``, ``kinodb_dataset``) gives back what
  it recorded of its source: each demo's extra fields (``ep_meta``), the dataset
  metadata (less the record of the ingest that made the source), and the names and
  components of ``actions`` and ``states`` where they fit the data (states the export
  wrote whole, as ``obs/state``, get no ``state`` component the source did not have);
  not when the file holds other demos or frames than the export wrote (a warning says so).

Every demo must hold every per-frame key that any demo holds, with one row per action
(in a kinodb export, a camera or array may be absent from some demos); anything else
raises `ConversionError` naming the file, the demo and the key.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.ingest._base import SOURCE_PARTS, SourceInfo, SourceOptions, exported_extra, not_this_format
from kinodb.ingest._exact import first_rounded, holds_exactly, significand_bits

log = logging.getLogger(__name__)
_WARNED_UPSIDE_DOWN: set[str] = set()  # LIBERO files already warned about in this process
_WARNED_CHANGED: set[str] = set()  # kinodb exports changed since, already warned about

SIGNATURE = b"\x89HDF\r\n\x1a\n"
LIBERO_FPS = 20.0
DEFAULT_FPS = 10.0

_DEMO = re.compile(r"demo_(\d+)\Z")
# Demo members with a fixed meaning; everything else that is per-frame becomes an extra array.
_SPECIAL = frozenset({"actions", "rewards", "dones", "success"})
# Names the writer reserves, and the one this source gives the simulator states.
_RESERVED = frozenset(
    {"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images", "sim_state"}
)


# Recent scans in this process, by file identity: an ingest opens its source twice (to
# plan, then to convert), and a scan lists every demo of the file.
_SCANS: dict[tuple[str, int, int, int], tuple[list[_Field], dict[str, str]]] = {}
_SCANS_KEPT = 4


@dataclass(frozen=True, slots=True)
class _Field:
    """A per-frame dataset that every demo must hold, and where it goes."""

    path: str  # inside the demo group, e.g. "obs/robot0_eef_pos"
    kind: str  # "state", "camera" or "array"
    trailing: tuple[int, ...]  # shape after the frame axis, in the first demo holding it
    dtype: np.dtype[Any]
    first: str  # the first demo (numeric order) that holds it
    holders: int  # how many demos hold it
    name: str = ""  # state component, camera or extra-array name


@dataclass(frozen=True, slots=True)
class _Layout:
    """What every demo of a file holds: state components, cameras, extra arrays."""

    states: tuple[_Field, ...]
    state_dtype: np.dtype[Any] | None
    components: dict[str, list[int]]
    cameras: tuple[_Field, ...]
    arrays: tuple[_Field, ...]
    timestamps: _Field | None
    left_out: dict[str, str]  # path -> why it is not stored
    apart: dict[str, str]  # extra-array name of a low-dim key kept out of the states -> why


@dataclass(frozen=True, slots=True)
class _Facts:
    """Dataset-level facts from the ``data`` group's attributes."""

    libero: bool
    fps: float
    fps_from: str
    embodiment: str | None
    language: str | None
    metadata: dict[str, Any]


class _Demo:
    """One demo group, with its member and attribute names listed once.

    Small demos cost more in HDF5 name lookups than in reading, so names are listed
    once and ``obs/`` datasets are opened from the ``obs`` group.
    """

    def __init__(self, name: str, group: Any, group_type: Any) -> None:
        self.name = name
        self.group = group
        self.members = set(group.keys())
        obs = group.get("obs") if "obs" in self.members else None
        self.obs = obs if isinstance(obs, group_type) else None
        self.attrs = set(group.attrs.keys())

    def get(self, path: str) -> Any:
        """The object at ``path`` inside the demo, or None."""
        head, _, rest = path.partition("/")
        if head == "obs" and self.obs is not None:
            return self.obs.get(rest)
        if not rest:
            return self.group.get(path) if path in self.members else None
        return self.group.get(path)  # deeper paths: let HDF5 walk them


class HDF5Source:
    """A robomimic or LIBERO HDF5 file, read one demo at a time.

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("lift/ph/low_dim.hdf5", "lift.kdb", format="hdf5")

    Raises:
        ConversionError: the file is not HDF5, has no ``data`` group, or a demo is
            malformed (the message names the file, the demo and the key).
        MissingExtraError: h5py is not installed.
    """

    format: ClassVar[str] = "hdf5"

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        self._path = os.fspath(path)
        self._options = options or SourceOptions()
        self._h5py: Any = require("h5py", extra="hdf5")
        if not os.path.exists(self._path):
            raise FileNotFoundError(2, "No such file or directory", self._path)
        try:
            self._file: Any = self._h5py.File(self._path, "r")
        except OSError as exc:
            raise ConversionError(_unreadable(self._path, exc)) from None
        data = self._file.get("data")
        if not isinstance(data, self._h5py.Group):
            found = ", ".join(sorted(self._file.keys())) or "nothing"
            self._file.close()
            raise ConversionError(
                f"{self._path}: no 'data' group; a robomimic/LIBERO file keeps its demos in "
                f"data/demo_N (top level holds: {found})"
            )
        self._data: Any = data
        names = list(data.keys())
        numbered = sorted((int(m.group(1)), n) for n in names if (m := _DEMO.match(n)))
        self._demos = [n for _, n in numbered]
        self._others = sorted(set(names) - set(self._demos))
        self._layout_cache: _Layout | None = None
        self._facts_cache: _Facts | None = None
        self._masks_cache: dict[str, list[str]] | None = None
        self._actions_cache: list[tuple[int, int]] | None = None
        self._mask_entries: dict[str, int] = {}  # filter key -> entries (set with the masks)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._path, self._options))

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` starts with the HDF5 signature (also after a user block)."""
        try:
            if not os.path.isfile(path):
                return False
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                offset = 0
                while offset + len(SIGNATURE) <= size:
                    fh.seek(offset)
                    if fh.read(len(SIGNATURE)) == SIGNATURE:
                        return True
                    offset = 512 if offset == 0 else offset * 2  # user blocks are 512 * 2**k bytes
        except OSError:
            return False
        return False

    def episodes(self) -> list[str]:
        """The ``demo_N`` keys in numeric order (only those of ``mask/SPLIT`` with a split).

        Raises:
            ConversionError: no demo groups, or the split names no filter key or one
                that lists no demo of the file.
        """
        if not self._demos:
            raise ConversionError(
                f"{self._path}: data group holds no demo_N groups (it holds: {', '.join(self._others) or 'nothing'})"
            )
        split = self._options.split
        if split is None:
            return list(self._demos)
        masks = self._masks()
        entries = self._mask_entries
        if split not in entries:
            raise ConversionError(
                f"{self._path}: no filter key mask/{split}; filter keys: {', '.join(entries) or 'none'}"
            )
        chosen = [d for d in self._demos if split in masks.get(d, ())]
        if not chosen:
            what = (
                "is empty" if entries[split] == 0 else f"names {entries[split]} demos, none of them in data/"
            )
            listing = [f"{k} ({n})" for k, n in self._filter_key_counts().items() if n]
            raise ConversionError(
                f"{self._path}: filter key mask/{split} exists but lists no demos (the dataset {what}); "
                f"filter keys that list demos: {', '.join(listing) or 'none'}: pick one with --split, or "
                "leave --split out to read every demo"
            )
        return chosen

    def info(self) -> SourceInfo:
        """Schema (state components) and metadata; fps, embodiment and task come per demo."""
        layout, facts = self._layout(), self._facts()
        metadata = dict(facts.metadata)
        metadata["image_orientation"] = "rotated_180" if self._options.flip_images else "as_stored"
        metadata["hdf5"] = {
            "fps_from": facts.fps_from,
            "state_keys": [f.name for f in layout.states],
            # Each state key's own dtype and per-frame shape, for exporting it back as it was.
            "state_layout": {
                f.name: {"dtype": f.dtype.name, "shape": list(f.trailing)} for f in layout.states
            },
            "cameras": [f.name for f in layout.cameras] if self._options.images else [],
            "extra_arrays": {f.name: f.path for f in layout.arrays if self._keeps(f)},
            "left_out": dict(layout.left_out),
        }
        notes = []
        if layout.apart:
            metadata["hdf5"]["kept_apart"] = dict(layout.apart)
            notes = [f"{f.path} is not part of the states: {layout.apart[f.name]}"
                     for f in layout.arrays if f.name in layout.apart]  # fmt: skip
        counts = self._filter_key_counts()
        if counts:
            metadata["hdf5"]["filter_keys"] = counts
        if (
            facts.libero and layout.cameras and self._options.images and not self._options.flip_images
            and not self._exported_upright() and self._path not in _WARNED_UPSIDE_DOWN
        ):  # fmt: skip
            _WARNED_UPSIDE_DOWN.add(self._path)  # once per file: verify reads the info again
            log.warning("%s: LIBERO frames are stored upside down; pass flip_images (--flip-images) "
                        "to store them upright", self._path)  # fmt: skip
        schema: dict[str, Any] = {"states": {"components": layout.components}} if layout.components else {}
        exported = self._exported()
        if exported is not None:  # a kinodb export: its own schema names and metadata come back
            schema = _exported_schema(exported.get("schema"), schema, layout, self._action_widths())
            metadata = {**user_metadata(exported.get("metadata")), **metadata}
        return SourceInfo(
            source_format="libero-hdf5" if facts.libero else "robomimic-hdf5",
            schema=schema,
            metadata=metadata,
            # Per demo instead: a demo's ep_meta wins over the file's attributes.
            fps=None,
            embodiment=None,
            task=None,
            notes=notes,
        )

    def read(self, key: str) -> dict[str, Any]:
        """Keyword arguments of `Writer.add_episode` for demo ``key``.

        Raises:
            ConversionError: the demo misses a key or a key has the wrong length or kind.
        """
        layout, facts = self._layout(), self._facts()
        group = self._data.get(key) if _DEMO.match(key) else None
        if not isinstance(group, self._h5py.Group):
            raise ConversionError(f"{self._path}: {key}: no such demo group in data/")
        d = _Demo(key, group, self._h5py.Group)
        ep_meta = self._ep_meta(d)
        actions = self._actions(d)
        T = len(actions)
        args: dict[str, Any] = {"actions": actions, **self._labels(d, ep_meta, facts)}
        states = self._states(d, T, layout)
        if states is not None:
            args["states"], args[SOURCE_PARTS] = states
        rewards = self._rewards(d, T)
        if rewards is not None:
            args["rewards"] = rewards
        if "dones" in d.members:
            args["is_terminal"] = self._column(d, "dones", T) != 0
        if layout.timestamps is not None:
            args["timestamps"] = self._dataset(d, "timestamps", T, layout.timestamps)
        args["success"] = self._success(d, T, rewards, ep_meta)
        images, arrays = self._frames(d, T, layout)
        if images:
            args["images"] = images
        if arrays:
            args["extra_arrays"] = arrays
        masks = self._masks()
        if masks:
            args["extra"] = {"filter_keys": masks.get(key, [])}
        if "kinodb_export" in self._data.attrs:
            _restore_kinodb_fields(args, ep_meta)
        return args

    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
            self._file = None

    # -- one demo -------------------------------------------------------------------------

    def _fail(self, demo: str, message: str) -> ConversionError:
        return ConversionError(f"{self._path}: {demo}: {message}")

    def _dataset(self, d: _Demo, path: str, T: int | None, field: _Field | None = None) -> np.ndarray:
        """Read ``path`` of a demo whole, checking that it has ``T`` rows."""
        ds = d.get(path)
        if not isinstance(ds, self._h5py.Dataset):
            if ds is not None:
                raise self._fail(d.name, f"{path} is a group, not a dataset")
            if field is None:
                raise self._fail(d.name, f"{path} is missing")
            raise self._fail(
                d.name,
                f"{path} is missing; {field.holders} of {len(self._demos)} demos hold it "
                f"(first {field.first}), and every demo must hold the same keys",
            )
        try:
            arr: np.ndarray = ds[()]  # read first: h5py's shape and dtype queries cost as much
        except (OSError, ValueError) as exc:
            raise self._fail(d.name, f"cannot read {path}: {exc}") from None
        if T is not None:
            self._check_rows(d, path, arr, T)
        if arr.dtype.kind not in "biuf":
            raise self._fail(d.name, f"{path} has dtype {arr.dtype}; expected numbers")
        return arr

    def _check_rows(self, d: _Demo, path: str, arr: np.ndarray, T: int) -> None:
        if arr.shape[:1] != (T,):
            rows = arr.shape[0] if arr.shape else "no"
            raise self._fail(
                d.name,
                f"{path} has {rows} rows, actions has {T}; every per-frame key needs one row per action",
            )

    def _actions(self, d: _Demo) -> np.ndarray:
        if "actions" not in d.members:
            raise self._fail(d.name, "actions is missing; every demo needs an actions dataset (T, A)")
        actions = self._dataset(d, "actions", None)
        if actions.ndim == 1:
            actions = actions.reshape(-1, 1)
        if actions.ndim != 2:
            raise self._fail(d.name, f"actions has shape {actions.shape}; expected (T, A)")
        if len(actions) == 0:
            raise self._fail(d.name, "actions has 0 rows; empty demos cannot be stored")
        n = d.group.attrs["num_samples"] if "num_samples" in d.attrs else None
        if n is not None and np.ndim(n) == 0 and int(n) != len(actions):
            raise self._fail(d.name, f"attribute num_samples is {int(n)}, actions has {len(actions)} rows")
        return actions

    def _column(self, d: _Demo, path: str, T: int) -> np.ndarray:
        """A per-frame scalar dataset, (T,) or (T, 1), as (T,)."""
        arr = self._dataset(d, path, T)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise self._fail(d.name, f"{path} has shape {arr.shape}; expected ({T},)")
        return arr

    def _rewards(self, d: _Demo, T: int) -> np.ndarray | None:
        if "rewards" not in d.members:
            return None
        rewards = self._column(d, "rewards", T)
        if rewards.dtype.kind != "f":
            # uint8 (LIBERO), bool or int16 are exact in float32; wider integers need float64.
            rewards = rewards.astype(np.float32 if rewards.dtype.itemsize <= 2 else np.float64)
        return rewards

    def _success(self, d: _Demo, T: int, rewards: np.ndarray | None, ep_meta: dict[str, Any]) -> bool | None:
        if "success" in d.attrs:
            value = np.asarray(d.group.attrs["success"])
            if value.size != 1 or value.dtype.kind not in "biuf":
                raise self._fail(d.name, f"attribute success is {value!r}; expected one number or bool")
            return bool(value.reshape(-1)[0])
        if "success" in d.members:
            arr = self._dataset(d, "success", None)
            if arr.size == 0 or (arr.ndim > 0 and arr.shape[0] not in (1, T)):
                raise self._fail(d.name, f"success has shape {arr.shape}; expected a scalar or ({T},)")
            return bool(arr.reshape(-1)[-1])
        if "success" in ep_meta:  # null: explicitly unknown
            value = ep_meta["success"]
            if value is not None and not isinstance(value, (bool, int)):
                raise self._fail(d.name, f"ep_meta success is {value!r}; expected true, false or null")
            return None if value is None else bool(value)
        if rewards is not None:
            return bool(rewards[-1] > 0)
        return None

    def _ep_meta(self, d: _Demo) -> dict[str, Any]:
        """The demo's ``ep_meta`` JSON attribute (empty when absent)."""
        if "ep_meta" not in d.attrs:
            return {}
        try:
            ep_meta = json.loads(_text(d.group.attrs["ep_meta"]))
        except ValueError as exc:
            raise self._fail(d.name, f"attribute ep_meta is not JSON ({exc})") from None
        return ep_meta if isinstance(ep_meta, dict) else {}

    def _labels(self, d: _Demo, ep_meta: dict[str, Any], facts: _Facts) -> dict[str, Any]:
        """``task``, ``fps`` and ``embodiment`` of one demo: its ep_meta's, else the file's."""
        lang = ep_meta.get("lang")
        task = lang.strip() if isinstance(lang, str) and lang.strip() else facts.language or ""
        out: dict[str, Any] = {"task": task, "fps": facts.fps}
        fps = ep_meta.get("fps")
        if facts.fps_from != "option" and fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
                raise self._fail(d.name, f"ep_meta fps is {fps!r}; expected a positive number")
            out["fps"] = float(fps)
        embodiment = ep_meta.get("embodiment")
        if isinstance(embodiment, str) and embodiment:
            out["embodiment"] = embodiment
        elif facts.embodiment is not None:
            out["embodiment"] = facts.embodiment
        return out

    def _states(self, d: _Demo, T: int, layout: _Layout) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The states, and each state key's values as the file holds them (for `verify`)."""
        if not layout.states or layout.state_dtype is None:
            return None
        out = np.empty((T, layout.components[layout.states[-1].name][1]), layout.state_dtype)
        parts: dict[str, np.ndarray] = {}
        for f in layout.states:
            arr = parts[f.name] = self._dataset(d, f.path, T, f)
            start, stop = layout.components[f.name]
            if arr.ndim not in (1, 2) or arr.shape[1:] != f.trailing:
                raise self._fail(
                    d.name,
                    f"{f.path} has shape {arr.shape}; {f.first} has (T, {', '.join(map(str, f.trailing))})",
                )
            rounded = first_rounded(arr, out.dtype)
            if rounded is not None:
                raise self._fail(d.name, self._rounded(f, arr, rounded, out.dtype))
            out[:, start:stop] = arr.reshape(T, stop - start)
        return out, {"states": parts}

    def _rounded(self, f: _Field, arr: np.ndarray, rounded: tuple[int, Any], dtype: np.dtype[Any]) -> str:
        """Why a state key's value cannot go into the states, and what to do."""
        at, value = rounded
        frame = at // max(1, arr[:1].size)
        own = f" ({f.first} has {f.dtype})" if arr.dtype != f.dtype else ""
        fix = (
            "leave it out of state_keys (--state-keys) to keep the states exact"
            if self._options.state_keys is not None
            else "pass state_keys (--state-keys) without it to keep the states exact"
        )
        return (
            f"{f.path} holds {value!r} at frame {frame} ({arr.dtype}{own}), which the {dtype} states "
            f"cannot hold exactly; {fix}"
        )

    def _frames(
        self, d: _Demo, T: int, layout: _Layout
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Cameras (uint8) and extra arrays, rotated when ``flip_images`` asks for it."""
        images: dict[str, np.ndarray] = {}
        # A kinodb export may hold episodes of several schemas (a merge of robots), so
        # there a camera or extra array may be absent from some demos; elsewhere it may not.
        optional = "kinodb_export" in self._data.attrs
        if self._options.images:
            for f in layout.cameras:
                if optional and d.get(f.path) is None:
                    continue
                arr = self._dataset(d, f.path, T, f)
                if arr.ndim != 4 or arr.dtype != np.uint8:
                    raise self._fail(
                        d.name,
                        f"{f.path} is {arr.dtype} {arr.shape}; {f.first} has uint8 (T, H, W, C) frames",
                    )
                images[f.name] = self._rotated(arr)
        arrays: dict[str, np.ndarray] = {}
        for f in layout.arrays:
            if not self._keeps(f) or (optional and d.get(f.path) is None):
                continue
            arr = self._dataset(d, f.path, None, f)
            if f.path == "states" and arr.shape[:1] == (0,):
                continue  # an empty states dataset (non-robosuite data): nothing to keep
            self._check_rows(d, f.path, arr, T)
            arrays[f.name] = self._rotated(arr) if arr.ndim == 4 else arr
        return images, arrays

    def _rotated(self, frames: np.ndarray) -> np.ndarray:
        if not self._options.flip_images:
            return frames
        return np.ascontiguousarray(frames[:, ::-1, ::-1])

    def _keeps(self, f: _Field) -> bool:
        """Whether extra array ``f`` is stored: image-like arrays follow the images option."""
        return self._options.images or len(f.trailing) < 3

    # -- file-level facts (computed once per process) ---------------------------------------

    def _filter_key_counts(self) -> dict[str, int]:
        """Filter key -> how many demos of the file it lists (0 for an empty one), sorted."""
        masks = self._masks()
        counts = dict.fromkeys(self._mask_entries, 0)
        for keys in masks.values():
            for k in keys:
                counts[k] += 1
        return counts

    def _masks(self) -> dict[str, list[str]]:
        """Demo name -> sorted filter keys of ``mask/`` that list it.

        Also sets ``_mask_entries``: every filter key (a 1-D dataset of ``mask/``), sorted,
        and how many entries it holds.
        """
        if self._masks_cache is None:
            masks: dict[str, list[str]] = {}
            self._mask_entries = {}
            group = self._file.get("mask")
            if isinstance(group, self._h5py.Group):
                masks = {demo: [] for demo in self._demos}
                for name in sorted(group.keys()):
                    ds = group[name]
                    if not isinstance(ds, self._h5py.Dataset) or ds.ndim != 1:
                        continue
                    self._mask_entries[name] = len(ds)
                    unknown = 0
                    for entry in ds[()]:
                        keys = masks.get(_text(entry))
                        if keys is None:
                            unknown += 1
                        elif name not in keys:
                            keys.append(name)
                    if unknown:
                        log.warning(
                            "%s: mask/%s lists %d demos that data/ does not hold", self._path, name, unknown
                        )
            self._masks_cache = masks
        return self._masks_cache

    def _facts(self) -> _Facts:
        if self._facts_cache is None:
            self._facts_cache = _read_facts(self._path, self._data.attrs, self._options)
        return self._facts_cache

    def _layout(self) -> _Layout:
        if self._layout_cache is None:
            st = os.stat(self._path)
            ident = (os.path.realpath(self._path), st.st_ino, st.st_size, st.st_mtime_ns)
            scan = _SCANS.get(ident)
            if scan is None:
                scan = _SCANS[ident] = self._scan()
                while len(_SCANS) > _SCANS_KEPT:
                    del _SCANS[next(iter(_SCANS))]
            fields, left_out = scan[0], dict(scan[1])
            for name in self._others:
                left_out[f"data/{name}"] = "not a demo_N group"
            explicit = self._options.state_keys is not None  # the caller's keys: checked by value, not split
            state_keys = self._options.state_keys or self._exported_state_order(fields)
            self._layout_cache = _arrange(self._path, fields, left_out, state_keys, explicit=explicit)
        return self._layout_cache

    def _exported_upright(self) -> bool:
        """Whether this is a kinodb export of frames already turned upright on ingest."""
        try:
            info = json.loads(_text(self._data.attrs["kinodb_dataset"]))
            return bool(info["metadata"]["image_orientation"] == "rotated_180")
        except (KeyError, ValueError, TypeError):
            return False

    def _exported(self) -> dict[str, Any] | None:
        """The dataset block a kinodb export recorded (``data`` attr ``kinodb_dataset``), or None.

        None also when it no longer describes the file: its export facts (``kinodb_export``)
        count other demos or frames than the file holds (demos were added or removed since),
        which is warned about once.
        """
        attrs = self._data.attrs
        if "kinodb_dataset" not in attrs or "kinodb_export" not in attrs:
            return None
        try:
            dataset, facts = (
                json.loads(_text(attrs["kinodb_dataset"])),
                json.loads(_text(attrs["kinodb_export"])),
            )
        except ValueError:
            return None
        if not isinstance(dataset, dict) or not isinstance(facts, dict):
            return None
        held = (len(self._demos), sum(rows for rows, _ in self._action_shapes()))
        said = (facts.get("episodes"), facts.get("frames"))
        if said != held:
            if self._path not in _WARNED_CHANGED:
                _WARNED_CHANGED.add(self._path)
                log.warning(
                    "%s: the kinodb export that wrote this file recorded %s demos of %s frames, and the file "
                    "holds %d of %d: it was changed since, so the export's schema names and dataset metadata "
                    "(data attr kinodb_dataset) are not given back", self._path, *said, *held
                )  # fmt: skip
            return None
        return dataset

    def _action_shapes(self) -> list[tuple[int, int]]:
        """Each demo's actions rows and width (h5py reads only the shapes)."""
        if self._actions_cache is None:
            out = []
            for demo in self._demos:
                ds = self._data[demo].get("actions")
                shape = tuple(ds.shape) if isinstance(ds, self._h5py.Dataset) else (0, 0)
                out.append((int(shape[0]) if shape else 0, int(np.prod(shape[1:])) if len(shape) > 1 else 1))
            self._actions_cache = out
        return self._actions_cache

    def _action_widths(self) -> set[int]:
        return {width for _, width in self._action_shapes()}

    def _exported_state_order(self, fields: list[_Field]) -> tuple[str, ...] | None:
        """A kinodb export's state components in their original order (else sorted order)."""
        if "kinodb_dataset" not in self._data.attrs:
            return None
        try:
            components = json.loads(_text(self._data.attrs["kinodb_dataset"]))["schema"]["states"][
                "components"
            ]
            order = tuple(f"obs/{name}" for name, _ in sorted(components.items(), key=lambda kv: kv[1][0]))
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        have = {f.path for f in fields if f.kind == "state"}
        return order if set(order) == have else None

    def _scan(self) -> tuple[list[_Field], dict[str, str]]:
        """Every dataset path any demo holds, classified in the first demo that holds it.

        Only names are listed per demo; each path is opened once.
        """
        seen: dict[str, list[Any]] = {}
        for demo in self._demos:
            paths: list[str] = []
            self._data[demo].visit(paths.append)
            for path in paths:
                if path in seen:
                    seen[path][1] += 1
                else:
                    seen[path] = [demo, 1]
        fields: list[_Field] = []
        left_out: dict[str, str] = {}
        for name in _UNSTORED_ATTRS:
            if any(name in self._data[demo].attrs for demo in self._demos):
                left_out[f"attrs/{name}"] = _UNSTORED_ATTRS[name]
        for path, (first, holders) in seen.items():
            if path == "next_obs":
                left_out[path] = "duplicates obs one step later"
            if path in _SPECIAL or path.startswith("next_obs/"):
                continue
            group = self._data[first]
            ds = group.get(path)
            if not isinstance(ds, self._h5py.Dataset):
                continue
            kind = _classify(path, ds, _rows(group))
            if kind in ("state", "camera", "array"):
                fields.append(
                    _Field(
                        path, kind, tuple(int(d) for d in ds.shape[1:]), np.dtype(ds.dtype), first, holders
                    )
                )
            else:
                left_out[path] = kind
        return fields, left_out


def _unreadable(path: str, exc: OSError) -> str:
    """Why h5py cannot open ``path``: a damaged HDF5 file (its signature is there), or what it is."""
    if not HDF5Source.detect(path):
        return f"{path}: not a readable HDF5 file ({exc}){not_this_format(path, 'hdf5')}"
    what = "truncated" if "truncated file" in str(exc) else "damaged"
    size = os.path.getsize(path)
    return (
        f"{path}: a {what} HDF5 file: it starts as HDF5, but h5py cannot open it ({exc}; the file has "
        f"{size} bytes); copy it again from where it came from (an interrupted download or copy leaves "
        "such files), or regenerate it"
    )


# Demo attributes a .kdb file does not keep, listed in the metadata's left_out.
_UNSTORED_ATTRS = {
    "model_file": "the simulator model (MJCF XML) per demo: not stored; keep the source file to replay demos",
}


def _rows(group: Any) -> int | None:
    """A demo's frame count: its actions' rows, else its num_samples attribute."""
    actions = group.get("actions")
    if actions is not None and getattr(actions, "ndim", 0) >= 1:
        return int(actions.shape[0])
    n = group.attrs.get("num_samples")
    return int(n) if n is not None and np.ndim(n) == 0 else None


def _classify(path: str, ds: Any, rows: int | None) -> str:
    """``state``, ``camera``, ``array``, or why a demo's dataset is left out."""
    if ds.dtype.kind not in "biuf":
        return f"dtype {ds.dtype} is not numeric"
    if ds.ndim == 0:
        return "a scalar, not per-frame"
    if path == "states":
        return "array"
    if not path.startswith("obs/"):
        if rows is not None and ds.shape[0] == rows:
            return "array"
        return f"has {ds.shape[0]} rows and the demo {rows if rows is not None else 'an unknown number of'} frames, so it is not per-frame"
    if ds.ndim == 1 or (ds.ndim == 2 and ds.shape[1] > 0):
        return "state"
    if ds.ndim == 2:
        return "no columns"
    if ds.ndim == 4 and ds.dtype == np.uint8:
        return "camera"
    return "array"


def _text(value: Any) -> str:
    """An attribute or string-dataset entry as str (h5py gives bytes or str)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(-1)[0])
    return str(value)


def _json_attr(attrs: Any, name: str, path: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """Parse a JSON attribute; a malformed one is kept as text in the metadata, with a warning."""
    if name not in attrs:
        return None
    text = _text(attrs[name])
    try:
        value = json.loads(text)
    except ValueError as exc:
        log.warning("%s: data attribute %s is not JSON (%s); kept as text in the metadata", path, name, exc)
        metadata[name] = text
        return None
    if not isinstance(value, dict):
        metadata[name] = value
        return None
    return value


def _read_facts(path: str, attrs: Any, options: SourceOptions) -> _Facts:
    """Environment, robots, language and fps from the ``data`` group's attributes."""
    metadata: dict[str, Any] = {}
    env_args = _json_attr(attrs, "env_args", path, metadata)
    if env_args is None and "env" in attrs:
        # A raw robosuite demo.hdf5: robomimic's converter builds env_args from these.
        env_info = _json_attr(attrs, "env_info", path, metadata) or {}
        env_args = {"env_name": _text(attrs["env"]), "type": 1, "env_kwargs": env_info}
    problem = _json_attr(attrs, "problem_info", path, metadata)
    libero = problem is not None or "bddl_file_name" in attrs
    kwargs: dict[str, Any] = {}
    if env_args is not None:
        metadata["env_args"] = env_args
        raw_kwargs = env_args.get("env_kwargs")
        kwargs = raw_kwargs if isinstance(raw_kwargs, dict) else {}
        name = env_args.get("env_name")
        if name is not None:
            metadata["env_name"] = str(name)
        env_type = env_args.get("type", env_args.get("env_type"))  # robomimic writes "type"
        if env_type is not None:
            metadata["env_type"] = env_type
    if "env_name" not in metadata and "env_name" in attrs:
        metadata["env_name"] = _text(attrs["env_name"])
    language = None
    if problem is not None:
        metadata["problem_info"] = problem
        raw = problem.get("language_instruction")
        if raw is not None:
            language = (" ".join(map(str, raw)) if isinstance(raw, list) else str(raw)).strip().strip('"')
    for name in ("bddl_file_name", "macros_image_convention"):
        if name in attrs:
            metadata[name] = _text(attrs[name])
    fps, fps_from = _fps(options, env_args or {}, kwargs, libero)
    return _Facts(libero, fps, fps_from, _robots(kwargs.get("robots")), language or None, metadata)


def _fps(
    options: SourceOptions, env_args: dict[str, Any], kwargs: dict[str, Any], libero: bool
) -> tuple[float, str]:
    if options.fps:
        return float(options.fps), "option"
    for where, source in (("env_args.env_kwargs.control_freq", kwargs), ("env_args.control_freq", env_args)):
        value = source.get("control_freq")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value), where
    return (LIBERO_FPS, "default (LIBERO)") if libero else (DEFAULT_FPS, "default")


def _robots(robots: Any) -> str | None:
    """``"Panda"`` from ``"Panda"`` or ``["Panda"]``; several robots joined with ``+``."""
    if isinstance(robots, str) and robots:
        return robots
    if isinstance(robots, list) and robots and all(isinstance(r, str) and r for r in robots):
        return "+".join(robots)
    return None


def _arrange(
    path: str, fields: list[_Field], left_out: dict[str, str], state_keys: tuple[str, ...] | None, *,
    explicit: bool = False,
) -> _Layout:  # fmt: skip
    """Sort every per-frame dataset into states, cameras and extra arrays, and name them.

    Raises:
        ConversionError: a requested state key is not a low-dim observation.
    """
    by_path = sorted(fields, key=lambda f: f.path)
    low_dim = {f.path[len("obs/") :]: f for f in by_path if f.kind == "state"}
    cameras = [replace(f, name=f.path[len("obs/") :]) for f in by_path if f.kind == "camera"]
    taken = set(_RESERVED) | {f.name for f in cameras}
    arrays: list[_Field] = []
    stamps = [f for f in fields if f.path == "timestamps" and f.kind == "array" and not f.trailing]
    # Simulator states first, then the demo's own datasets, then obs/ arrays: obs keys
    # yield on a name clash (they become "obs.KEY").
    for f in sorted(fields, key=lambda f: (f.path.startswith("obs/"), f.path != "states", f.path)):
        if f.kind == "array" and f not in stamps:
            name = "sim_state" if f.path == "states" else _free_name(f.path, taken)
            taken.add(name)
            arrays.append(replace(f, name=name))
    states, apart = _exact_states(_choose_states(path, low_dim, state_keys, left_out), explicit)
    reasons: dict[str, str] = {}
    for f, why in apart:
        name = _free_name(f.path, taken)
        taken.add(name)
        arrays.append(replace(f, kind="array", name=name))
        reasons[name] = f"{why}; it is stored apart, as the extra array {name!r} with its own dtype"
    components: dict[str, list[int]] = {}
    start = 0
    for f in states:
        width = int(np.prod(f.trailing))
        components[f.name] = [start, start + width]
        start += width
    dtype = np.result_type(*(f.dtype for f in states)) if states else None
    return _Layout(
        tuple(states),
        dtype,
        components,
        tuple(cameras),
        tuple(arrays),
        stamps[0] if stamps else None,
        left_out,
        reasons,
    )


def _exact_states(states: list[_Field], explicit: bool) -> tuple[list[_Field], list[tuple[_Field, str]]]:
    """The state keys that one dtype holds exactly, and those kept apart (with why).

    By dtype, so that every demo has the same layout: a key the others' NumPy result type
    would round (an int64 beside floats) is kept apart. ``explicit`` state keys (the
    caller's) all stay; `HDF5Source._states` then refuses a demo whose values would be
    rounded.
    """
    if explicit:
        return list(states), []  # the caller's choice: each demo's values are checked instead
    kept, apart = list(states), []
    while kept:
        dtype = np.result_type(*(f.dtype for f in kept))
        out = [f for f in kept if not holds_exactly(f.dtype, dtype)]
        if not out:
            break
        bits = significand_bits(dtype)
        for f in out:
            rounds = f"which round {f.dtype} values beyond 2**{bits}" if bits else "which round them"
            apart.append(
                (f, f"with the other state keys, this {f.dtype} key would make {dtype} states, {rounds}")
            )
        kept = [f for f in kept if f not in out]
    return kept, apart


def _free_name(path: str, taken: set[str]) -> str:
    """The extra-array name of ``path``: its key, made unique (``/`` written as ``.``)."""
    base = (path[len("obs/") :] if path.startswith("obs/") else path).replace("/", ".")
    name = base if base not in taken else f"obs.{base}" if path.startswith("obs/") else f"demo.{base}"
    while name in taken:
        name += "_"
    return name


def _choose_states(
    path: str, low_dim: dict[str, _Field], state_keys: tuple[str, ...] | None, left_out: dict[str, str]
) -> list[_Field]:
    if state_keys is None:
        return [replace(low_dim[k], name=k) for k in sorted(low_dim)]
    # "a, b" and "a,b," as typed on a command line: spaces around a key and empty entries
    # are not part of any key.
    given = [k.strip() for k in state_keys if k.strip()]
    if not given:
        raise ConversionError(
            f"{path}: state keys {list(state_keys)!r} name no key; give obs/ keys separated by "
            f"commas, e.g. {','.join(sorted(low_dim)[:2]) or 'robot0_eef_pos,robot0_eef_quat'}"
        )
    chosen: list[_Field] = []
    for raw in given:
        key = raw[len("obs/") :] if raw.startswith("obs/") else raw
        if key not in low_dim:
            raise ConversionError(
                f"{path}: state key {raw!r} is not a low-dim obs/ dataset; "
                f"low-dim keys: {', '.join(sorted(low_dim)) or 'none'}"
            )
        if any(f.name == key for f in chosen):
            raise ConversionError(f"{path}: state key {raw!r} is given twice")
        chosen.append(replace(low_dim[key], name=key))
    for key in sorted(set(low_dim) - {f.name for f in chosen}):
        left_out[f"obs/{key}"] = "not among the chosen state keys"
    return chosen


def user_metadata(recorded: Any) -> dict[str, Any]:
    """The dataset metadata a kinodb export recorded, less the record of the ingest that made
    that file (an ingest of the export writes its own)."""
    return {k: v for k, v in recorded.items() if k != "ingest"} if isinstance(recorded, dict) else {}


def _exported_schema(
    recorded: Any, schema: dict[str, Any], layout: _Layout, action_widths: set[int]
) -> dict[str, Any]:
    """``schema`` with what a kinodb export recorded of its schema given back where it fits
    the data: the names and components of ``actions``, and of ``states`` when the state
    keys are the components the export wrote; states the export wrote whole (``obs/state``:
    no components, or components that do not tile them) get back their recorded names and
    components, or none, instead of the one component ``state``."""
    recorded = recorded if isinstance(recorded, dict) else {}
    out = dict(schema)
    if len(action_widths) == 1:
        part = _fitting(recorded.get("actions"), next(iter(action_widths)))
        if part:
            out["actions"] = part
    width = layout.components[layout.states[-1].name][1] if layout.states else 0
    states = recorded.get("states")
    part = _fitting(states, width) if width else None
    if part is None:
        return out
    comps = part.get("components", {})
    if _tiles(comps, width):
        same = comps == layout.components  # the export wrote these components as obs keys
    else:
        same = [f.name for f in layout.states] == ["state"]  # the export wrote states whole
    if same:
        out.pop("states", None)
        if part:
            out["states"] = part
    return out


def _fitting(part: Any, dim: int) -> dict[str, Any] | None:
    """A recorded schema part's ``names`` and ``components`` where they fit ``dim`` values
    (it recorded that ``dim``), else None."""
    if not isinstance(part, dict) or part.get("dim") != dim:
        return None
    out: dict[str, Any] = {}
    names, comps = part.get("names"), part.get("components")
    if names is not None:
        if not (isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names)):
            return None
        out["names"] = names
    if comps:
        if not isinstance(comps, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v) and 0 <= v[0] < v[1] <= dim
            for v in comps.values()
        ):
            return None
        out["components"] = {str(k): list(v) for k, v in comps.items()}
    return out


def _tiles(comps: dict[str, list[int]], dim: int) -> bool:
    """Whether components cover ``[0, dim)`` exactly, end to end (as the export splits them)."""
    spans = sorted(comps.values())
    return bool(spans) and spans[0][0] == 0 and spans[-1][1] == dim and all(
        a[1] == b[0] for a, b in pairwise(spans)
    )  # fmt: skip


_BUILTIN_META = frozenset(
    ("lang", "task", "embodiment", "fps", "success", "total_reward", "episode_id", "num_frames",
     "action_dim", "state_dim")
)  # fmt: skip


def _restore_kinodb_fields(args: dict[str, Any], ep_meta: dict[str, Any]) -> None:
    """Bring back what a kinodb export keeps in ``ep_meta``: extra fields and a null total."""
    extra = exported_extra(ep_meta, _BUILTIN_META)
    args["extra"] = {**extra, **args.get("extra", {})}
    if "total_reward" in ep_meta:
        total = ep_meta["total_reward"]
        rewards = args.get("rewards")
        if (
            total is None
            and rewards is not None
            and not (rewards != 0).any()
            and not np.signbit(rewards).any()
        ):
            del args["rewards"]  # all +0.0 with an unknown total: the writer stores zeros and keeps it null
        elif total is not None:
            args["total_reward"] = float(total)
