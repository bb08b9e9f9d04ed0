"""Read robomimic and LIBERO HDF5 files (``data/demo_N`` groups) as an ingest `Source`.

What goes where:

- Episodes are the ``data/demo_N`` groups in numeric order (``demo_2`` before
  ``demo_10``); ``--split NAME`` keeps the demos listed in ``mask/NAME``.
- ``actions`` is required; arrays keep their source dtype bit for bit.
- ``states``: the low-dim ``obs/`` datasets (2-D, and 1-D as one column each), in sorted
  key order or the order of ``state_keys`` (spaces around each key and empty entries are
  ignored; an ``obs/`` prefix is optional), concatenated; each key's ``[start, stop)`` is
  recorded in the schema's ``states.components``. The low-dim keys left out of
  ``state_keys`` are not dropped: each is an extra array named by its key, bit for bit
  with its own dtype and shape, recorded in the metadata's ``hdf5.kept_apart``. Keys of
  different dtypes are cast to their NumPy result type (float32 and float64 give
  float64) where that keeps every value: a key whose dtype the states' dtype cannot hold
  exactly (an int64 or uint64 beside floats, such as a nanosecond timestamp, which
  float64 would round beyond 2**53) is kept apart, as an extra array named by its key
  with its own dtype; the metadata's ``hdf5.kept_apart`` and a note of the report say so. This goes by dtype, not by value,
  so every demo has the same layout. Keys named in ``state_keys`` all go into the states,
  and a demo holding a value the states' dtype would round (an int64 timestamp beyond
  2**53 in float64 states) is refused, naming the key, the frame and the value. Either
  way the states hold the source's values exactly.
- Cameras: uint8 ``obs/`` datasets of ``(T, H, W, C)`` frames with 1 to 4 channels
  (depth ``(T, H, W, 1)`` too), named by their key. Other 3-D and 4-D ``obs/`` datasets
  are extra arrays named by their key, exactly as stored: float or uint16 depth, ``(T, H,
  W)`` uint8 (a grey camera is ``(T, H, W, 1)``), channel-first ``(T, C, H, W)`` uint8
  frames (not transposed: the values stay as the file holds them) and frames of more than
  4 channels (stacked frames); the metadata's ``hdf5.not_cameras`` and a note of the report
  say why such uint8 frames are not a camera and how to make them one.
- Names: an extra array is named by its key (``obs/`` left out, ``/`` written as ``.``).
  Where that name is taken (by a name the writer reserves: ``actions``, ``states``,
  ``rewards``, ``is_terminal``, ``timestamps``, ``meta``, ``images``, ``sim_state``; by a
  camera; or by a dataset of the demo itself, which comes first) an ``obs/`` key becomes
  ``obs.KEY`` (a demo dataset ``demo.KEY``), with ``_`` appended until the name is free.
- The demo's ``states`` (simulator states) become the extra array ``sim_state``, a 1-D
  ``timestamps`` dataset the episode's timestamps; other per-frame datasets of the demo
  (LIBERO's ``robot_states``, ``action_dict/abs_pos``) become extra arrays (``/``
  written as ``.``).
- ``next_obs``: robomimic writes ``next_obs[t] = obs[t + 1]`` for ``t < T - 1``, and as
  ``next_obs[T - 1]`` the observation after the final action, which ``obs`` does not
  hold. Each ``next_obs/KEY`` that is ``obs/KEY`` one frame later bit for bit (same dtype
  and shape) keeps only its last row, exactly, in the demo's extra field
  ``hdf5.next_obs_last`` (``[KEY, dtype, shape, base64 bytes]`` entries; none where it is
  the last observation again); one that is not, or has no ``obs/KEY``, is kept whole as
  the extra array ``next_obs.KEY``. Decided per demo; ``hdf5.next_obs`` names the arrays.
- ``rewards`` keep a floating dtype; integer or bool rewards (LIBERO's uint8) become
  float32, or float64 for integers wider than 16 bits, so every value stays exact.
  ``dones`` become ``is_terminal`` (non-zero is true); without them the last frame is
  terminal. A demo without ``rewards`` in a file whose other demos hold them gets zeros
  of the dtype theirs are stored in (so the file has one rewards dtype: its total reward
  is then 0), and its success is not taken from them.
- ``success``: a demo attribute or dataset named ``success``, else the ``success`` of the
  demo's ``ep_meta`` JSON (null: unknown), else whether the final reward is positive,
  else unknown.
- ``task``: ``ep_meta``'s ``lang``, else LIBERO's ``problem_info``
  ``language_instruction`` (quotes stripped as LIBERO's reader does), else empty.
- ``embodiment``: ``ep_meta``'s ``embodiment`` (an empty one only in a kinodb export,
  which records it as the episode held it), else the robots of ``env_args``
  (``"Panda"``; several robots are joined with ``+``). ``fps``: the option, else
  ``ep_meta``'s ``fps``, else ``env_args`` ``control_freq``, else 20 for LIBERO files
  and for robosuite envs (``env_args`` ``type`` 1, which then run at robosuite's default
  ``control_freq``), and 10 otherwise (a note of the report names the ``fps`` option).
  The metadata's ``hdf5.fps_from`` says which.
- ``mask/`` filter keys become the list-valued extra field ``filter_keys`` of each
  episode (``filter_keys CONTAINS 'valid'``).
- Attributes: a demo's ``ep_meta`` is kept whole, as the text the file holds, in the
  extra field ``ep_meta`` (RoboCasa's ``layout_id``, ``style_id``, ``object_cfgs``...),
  besides the fields read from it above. Every other attribute of a demo but
  ``num_samples`` and ``success`` is the extra field ``attrs.NAME`` (a
  name no built-in field has): text, a number or a bool, or an array of at most
  `ATTR_VALUES` of them as a (nested) list, the values exact (not their HDF5 dtype).
  The ``data`` attributes that say nothing of the above (LIBERO's ``bddl_file_content``,
  ``num_demos``, robomimic's ``total``) are kept by name, likewise, in the metadata's
  ``hdf5.data_attrs``. What cannot be kept (a larger array, NaN or infinity, another
  dtype; in one demo is enough, so that every demo has the same fields) is named in
  ``hdf5.left_out`` as ``attrs/NAME`` or ``data/attrs/NAME`` with the reason, and warned
  about. ``model_file``, the simulator model (MJCF XML, tens of KB) of each demo, is kept
  only with ``keep_model_file``; else it is named there, with a warning (`_FileLevel`).
  A JSON ``data`` attribute (``env_args``, ``problem_info``) holding NaN or infinity
  (``json.dumps`` writes them) is kept in the metadata as the text the file holds, exactly,
  and named in ``hdf5.as_text`` with the paths of those values
  (``env_kwargs.reward_scale``), with a warning; the environment, robots and fps are still
  read from it.
- ``flip_images`` rotates by 180 degrees the cameras and every image-shaped extra array:
  ``(T, H, W)`` or ``(T, H, W, C)`` (depth of any dtype, segmentation) whose ``(H, W)``
  is that of a camera or of uint8 frames of the file, on axes 1 and 2; channel-first
  frames ``(T, C, H, W)`` on axes 2 and 3. Other arrays stay as stored. The metadata field
  ``image_orientation`` says whether frames were rotated, and ``hdf5.rotated`` names each
  camera and array rotated, with its axes.

- A kinodb export (``data`` attrs ``kinodb_export``, ``kinodb_dataset``) gives back what
  it recorded of its source: each demo's extra fields (``ep_meta``, or
  ``kinodb_ep_meta`` where ``ep_meta`` is its source's own), the dataset
  metadata (less the record of the ingest that made the source), and the names and
  components of ``actions`` and ``states`` where they fit the data (states the export
  wrote whole, as ``obs/state``, get no ``state`` component the source did not have);
  not when the file holds other demos or frames than the export wrote (a warning says so).
  `kinodb.ingest._hdf5_kinodb` holds that part.

Every demo must hold every per-frame key that any demo holds, with one row per action
(in a kinodb export, a camera or array may be absent from some demos); anything else
raises `ConversionError` naming the file, the demo and the key, and how to convert the
other demos (``--episodes`` with their positions, or ``--on-error skip``). So does a demo
h5py cannot read (a damaged object header in the demo group, or in one of its datasets or
attributes): the message names the object and h5py's reason, and the other demos still
convert. A ``num_samples`` attribute, where a demo has one, must be the number of its
actions' rows: the episode length comes from the actions.

This module reads demos; `kinodb.ingest._hdf5_layout` decides where each per-frame
dataset goes, `kinodb.ingest._hdf5_facts` reads the ``data`` group's attributes, and
`kinodb.ingest._hdf5_file` (`_FileLevel`, the base of `HDF5Source`) holds the file-level
facts: the filter keys, the scan of the demos, the layout.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
from typing import Any, ClassVar

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.ingest._base import (
    SOURCE_PARTS,
    SourceInfo,
    SourceOptions,
    hdf5_folder,
    not_this_format,
    user_metadata,
)
from kinodb.ingest._exact import first_rounded
from kinodb.ingest._hdf5_facts import ATTR_VALUES as ATTR_VALUES  # re-exported: public names
from kinodb.ingest._hdf5_facts import DEFAULT_FPS as DEFAULT_FPS
from kinodb.ingest._hdf5_facts import LIBERO_FPS as LIBERO_FPS
from kinodb.ingest._hdf5_facts import Facts, attr_value, exported_attrs, recorded_data_attrs, text
from kinodb.ingest._hdf5_file import _FileLevel
from kinodb.ingest._hdf5_kinodb import (
    exported_schema,
    exported_upright,
    recorded_dataset,
    restore_fields,
)
from kinodb.ingest._hdf5_layout import (
    H5_ERRORS,
    NEXT_OBS_LAST,
    Field,
    Layout,
    Scan,
    count,
    follows,
    h5_reason,
    reward_dtype,
    row_record,
)
from kinodb.ingest._options import option_flag, option_name
from kinodb.kdb import _codecs

log = logging.getLogger(__name__)
_WARNED_UPSIDE_DOWN: set[str] = set()  # LIBERO files already warned about in this process

SIGNATURE = b"\x89HDF\r\n\x1a\n"

_DEMO = re.compile(r"demo_(\d+)\Z")


# Demos read through one h5py handle before it is reopened: HDF5 keeps memory for every
# object opened until its file is closed (some 40 KB a demo), which would grow with the
# number of demos.
_REOPEN_EVERY = 256
# Camera frames read, turned and encoded at a time (`HDF5Source._encoded`).
_CAMERA_SLICE = 32


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


class HDF5Source(_FileLevel):
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
        if os.path.isdir(self._path):
            held = hdf5_folder(self._path) or "a folder, and the HDF5 converter reads one .hdf5 file"
            raise ConversionError(f"{self._path}: {held}")
        try:
            self._file: Any = self._h5py.File(self._path, "r")
        except OSError as exc:
            raise ConversionError(_unreadable(self._path, exc)) from None
        self._reads = 0  # demos read through this handle (`_REOPEN_EVERY`)
        try:
            data, names = self._open_data()
        except BaseException:
            self._file.close()
            raise
        self._data: Any = data
        numbered = sorted((int(m.group(1)), n) for n in names if (m := _DEMO.match(n)))
        self._demos = [n for _, n in numbered]
        self._others = sorted(set(names) - set(self._demos))
        self._layout_cache: Layout | None = None
        self._scan: Scan | None = None
        self._facts_cache: Facts | None = None
        self._masks_cache: dict[str, list[str]] | None = None
        self._actions_cache: list[tuple[int, int]] | None = None
        self._mask_entries: dict[str, int] = {}  # filter key -> entries (set with the masks)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._path, self._options))

    def _open_data(self) -> tuple[Any, list[str]]:
        """The ``data`` group and the names it holds.

        Raises:
            ConversionError: no ``data`` group, or one h5py cannot open or list (damaged).
        """
        try:
            if "data" in self._file:  # get() gives None for a group h5py cannot open
                data = self._file["data"]
                if isinstance(data, self._h5py.Group):
                    return data, list(data.keys())
            found = ", ".join(sorted(self._file.keys())) or "nothing"
        except H5_ERRORS as exc:
            raise ConversionError(
                f"{self._path}: h5py cannot read the data group ({h5_reason(exc)}): the file is damaged there; "
                f"look at it with `h5dump -H {shlex.quote(self._path)}` or h5py, and copy the file again "
                "from where it came from"
            ) from None
        raise ConversionError(
            f"{self._path}: no 'data' group; a robomimic/LIBERO file keeps its demos in "
            f"data/demo_N (top level holds: {found})"
        )

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
                f"filter keys that list demos: {', '.join(listing) or 'none'}: pick one with "
                f"{option_name('split')}, or leave {option_name('split')} out to read every demo"
            )
        return chosen

    def info(self) -> SourceInfo:
        """Schema (state components) and metadata; fps, embodiment and task come per demo."""
        layout, facts = self._layout(), self._facts(warn=True)
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
            "extra_arrays": {f.name: f.path for f in (*layout.arrays, *layout.nexts) if self._keeps(f)},
            "left_out": {**layout.left_out, **facts.left_out},
            "data_attrs": dict(facts.kept),
        }
        nexts = [f for f in layout.nexts if self._keeps(f)]
        if nexts:  # next_obs/KEY -> the extra array it is where it is not obs/KEY one frame later
            metadata["hdf5"]["next_obs"] = {f.path[len("next_obs/") :]: f.name for f in nexts}
        if self._scanned().source_dtypes:  # rewards and dones go back in them on export
            metadata["hdf5"]["source_dtypes"] = dict(self._scanned().source_dtypes)
        if facts.as_text:
            metadata["hdf5"]["as_text"] = dict(facts.as_text)
        self._warn_left_out(metadata["hdf5"]["left_out"])
        notes = []
        if layout.apart or layout.unchosen:
            metadata["hdf5"]["kept_apart"] = {**layout.apart, **layout.unchosen}
            notes = [f"{f.path} is not part of the states: {layout.apart[f.name]}"
                     for f in layout.arrays if f.name in layout.apart]  # fmt: skip
        not_cameras = {f.name: layout.not_cameras[f.name] for f in layout.arrays
                       if f.name in layout.not_cameras and self._keeps(f)}  # fmt: skip
        if not_cameras:
            metadata["hdf5"]["not_cameras"] = not_cameras
            notes += [f"{f.path} is not a camera: {not_cameras[f.name]}"
                      for f in layout.arrays if f.name in not_cameras]  # fmt: skip
        notes += self._fps_notes(facts)
        if self._options.flip_images:
            turned = [*(layout.cameras if self._options.images else ()), *filter(self._keeps, layout.arrays),
                      *nexts]  # fmt: skip
            metadata["hdf5"]["rotated"] = {f.name: list(f.turn) for f in turned if f.turn}
        counts = self._filter_key_counts()
        if counts:
            metadata["hdf5"]["filter_keys"] = counts
        if (
            facts.libero and layout.cameras and self._options.images and not self._options.flip_images
            and not exported_upright(self._data.attrs) and self._path not in _WARNED_UPSIDE_DOWN
        ):  # fmt: skip
            _WARNED_UPSIDE_DOWN.add(self._path)  # once per file: verify reads the info again
            log.warning("%s: LIBERO frames are stored upside down; pass %s to store them upright",
                        self._path, option_flag("flip_images"))  # fmt: skip
        schema: dict[str, Any] = {"states": {"components": layout.components}} if layout.components else {}
        exported = recorded_dataset(self._path, self._data.attrs, self._held)
        if exported is not None:  # a kinodb export: its own schema names and metadata come back
            schema = exported_schema(exported.get("schema"), schema, layout, self._action_widths())
            if "total" not in recorded_data_attrs(exported):  # the export's own count
                metadata["hdf5"]["data_attrs"].pop("total", None)
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
        self._reads += 1
        if self._reads > _REOPEN_EVERY:
            self._reopen()
        damage = self._scanned().unreadable.get(key)
        if damage is not None:
            raise self._fail(key, self._damaged(key, *damage))
        try:
            return self._read(key, layout, facts)
        except (OSError, RuntimeError) as exc:  # h5py's, reading what the scan did not: an attribute's value
            raise self._fail(key, self._damaged(key, f"data/{key}", h5_reason(exc))) from None

    def _read(self, key: str, layout: Layout, facts: Facts) -> dict[str, Any]:
        group = self._data.get(key) if _DEMO.match(key) else None
        if not isinstance(group, self._h5py.Group):
            raise ConversionError(f"{self._path}: {key}: no such demo group in data/")
        d = _Demo(key, group, self._h5py.Group)
        ep_meta, raw_ep_meta = self._ep_meta(d)
        actions = self._actions(d)
        T = len(actions)
        args: dict[str, Any] = {"actions": actions, **self._labels(d, ep_meta, facts)}
        states = self._states(d, T, layout)
        if states is not None:
            args["states"], args[SOURCE_PARTS] = states
        rewards = self._rewards(d, T)
        if rewards is not None:
            args["rewards"] = rewards
        elif self._scanned().rewards is not None:  # zeros of the file's dtype: one dtype per file
            args["rewards"] = np.zeros(T, self._scanned().rewards)
        if "dones" in d.members:
            args["is_terminal"] = self._column(d, "dones", T) != 0
        if layout.timestamps is not None:
            args["timestamps"] = self._dataset(d, "timestamps", T, layout.timestamps)
        args["success"] = self._success(d, T, rewards, ep_meta)
        images, arrays = self._frames(d, T, layout)
        whole, last = self._next_obs(d, T, layout)
        arrays.update(whole)
        if images:
            args["images"] = images
        if arrays:
            args["extra_arrays"] = arrays
        masks = self._masks()
        extra: dict[str, Any] = {"filter_keys": masks.get(key, [])} if masks else {}
        extra.update(self._attr_fields(d, ep_meta, raw_ep_meta))
        if last:
            extra[NEXT_OBS_LAST] = last
        if extra:
            args["extra"] = extra
        if "kinodb_export" in self._data.attrs:
            restore_fields(args, ep_meta)
        return args

    def _reopen(self) -> None:
        """Close the file and open it again, releasing what HDF5 kept of the demos read."""
        self._file.close()
        try:
            self._file = self._h5py.File(self._path, "r")
        except OSError as exc:
            raise ConversionError(_unreadable(self._path, exc)) from None
        self._data = self._open_data()[0]
        self._reads = 1

    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
            self._file = None

    # -- one demo -------------------------------------------------------------------------

    def _dataset(self, d: _Demo, path: str, T: int | None, field: Field | None = None) -> np.ndarray:
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
        if "num_samples" in d.attrs:
            self._check_num_samples(d, d.group.attrs["num_samples"], len(actions))
        return actions

    def _check_num_samples(self, d: _Demo, value: Any, T: int) -> None:
        """Refuse a ``num_samples`` attribute that is not the demo's ``T`` actions (an array,
        as some writers leave, says nothing and is let be)."""
        if np.ndim(value) != 0:
            return
        n = count(value)
        if n == T:
            return
        where = f"attribute data/{d.name}/attrs/num_samples"
        if n is not None:
            raise self._fail(d.name, f"{where} is {n}, actions has {T} rows")
        shown = text(value) if isinstance(value, (str, bytes, np.bytes_)) else value
        raise self._fail(
            d.name,
            f"{where} is {shown!r}; expected the demo's frame count, an integer ({T}, the rows of its "
            f"actions): the episode length comes from actions, so deleting the attribute or setting it "
            f"to {T} converts the demo",
        )

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
        # uint8 (LIBERO), bool or int16 are exact in float32; wider integers need float64.
        return rewards.astype(reward_dtype(rewards.dtype), copy=False)

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

    def _ep_meta(self, d: _Demo) -> tuple[dict[str, Any], str | None]:
        """The demo's labels (its ``ep_meta`` JSON attribute, or the record of a kinodb export
        that kept its source's ``ep_meta``: ``kinodb_ep_meta``; empty when absent), and the
        ``ep_meta`` attribute's text as the file holds it (None when absent)."""
        raw = text(d.group.attrs["ep_meta"]) if "ep_meta" in d.attrs else None
        name = "kinodb_ep_meta" if "kinodb_ep_meta" in d.attrs else "ep_meta"
        if name not in d.attrs:
            return {}, raw
        try:
            ep_meta = json.loads(raw if raw is not None and name == "ep_meta" else text(d.group.attrs[name]))
        except ValueError as exc:
            raise self._fail(d.name, f"attribute {name} is not JSON ({exc})") from None
        return (ep_meta if isinstance(ep_meta, dict) else {}), raw

    def _attr_fields(self, d: _Demo, ep_meta: dict[str, Any], raw: str | None) -> dict[str, Any]:
        """The extra fields of the demo's attributes: ``ep_meta`` (the text as stored) and
        ``attrs.NAME`` for each other attribute kept (`Scan.attrs`).

        In a kinodb export, the attributes it wrote from its record (``ep_meta``, which
        `restore_fields` gives back) are not read again; its source's ``ep_meta`` is.
        """
        out: dict[str, Any] = {}
        exported = "kinodb_export" in self._data.attrs
        if raw is not None and (not exported or "kinodb_ep_meta" in d.attrs):
            out["ep_meta"] = raw
        written = exported_attrs(ep_meta) if exported else frozenset()
        for name in self._kept_attrs():
            if name in d.attrs and name not in written:
                value, why = attr_value(d.group.attrs[name])
                if why:  # the scan read every float, so only a changed file gets here
                    raise self._fail(d.name, f"attribute {name} {why}")
                out[f"attrs.{name}"] = value
        return out

    def _labels(self, d: _Demo, ep_meta: dict[str, Any], facts: Facts) -> dict[str, Any]:
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
        # a kinodb export's record keeps "" as the episode held it; elsewhere "" names no robot
        if isinstance(embodiment, str) and (embodiment or "kinodb_export" in self._data.attrs):
            out["embodiment"] = embodiment
        elif facts.embodiment is not None:
            out["embodiment"] = facts.embodiment
        return out

    def _states(self, d: _Demo, T: int, layout: Layout) -> tuple[np.ndarray, dict[str, Any]] | None:
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

    def _rounded(self, f: Field, arr: np.ndarray, rounded: tuple[int, Any], dtype: np.dtype[Any]) -> str:
        """Why a state key's value cannot go into the states, and what to do."""
        at, value = rounded
        frame = at // max(1, arr[:1].size)
        own = f" ({f.first} has {f.dtype})" if arr.dtype != f.dtype else ""
        fix = (
            f"leave it out of {option_name('state_keys')} to keep the states exact"
            if self._options.state_keys is not None
            else f"pass {option_name('state_keys')} without it to keep the states exact"
        )
        return (
            f"{f.path} holds {value!r} at frame {frame} ({arr.dtype}{own}), which the {dtype} states "
            f"cannot hold exactly; {fix}"
        )

    def _frames(
        self, d: _Demo, T: int, layout: Layout
    ) -> tuple[dict[str, np.ndarray | list[bytes]], dict[str, np.ndarray]]:
        """Cameras (uint8 pixels, or frames encoded as they are to be stored: `_encoded`) and
        extra arrays, image-shaped ones rotated when ``flip_images`` asks for it."""
        images: dict[str, np.ndarray | list[bytes]] = {}
        # A kinodb export may hold episodes of several schemas (a merge of robots), so
        # there a camera or extra array may be absent from some demos; elsewhere it may not.
        optional = "kinodb_export" in self._data.attrs
        if self._options.images:
            for f in layout.cameras:
                if optional and d.get(f.path) is None:
                    continue
                encoded = self._encoded(d, f, T)
                if encoded is not None:
                    images[f.name] = encoded
                    continue
                arr = self._dataset(d, f.path, T, f)
                if arr.ndim != 4 or arr.dtype != np.uint8 or not 1 <= arr.shape[3] <= 4:
                    raise self._fail(
                        d.name,
                        f"{f.path} is {arr.dtype} {arr.shape}; {f.first} has uint8 (T, H, W, C) frames "
                        f"of {f.trailing[2]} channels, and every demo must hold the same kind of frames",
                    )
                images[f.name] = self._turned(d, f, arr)
        arrays: dict[str, np.ndarray] = {}
        for f in layout.arrays:
            if not self._keeps(f) or (optional and d.get(f.path) is None):
                continue
            arr = self._dataset(d, f.path, None, f)
            if f.path == "states" and arr.shape[:1] == (0,):
                continue  # an empty states dataset (non-robosuite data): nothing to keep
            self._check_rows(d, f.path, arr, T)
            arrays[f.name] = self._turned(d, f, arr)
        return images, arrays

    def _next_obs(self, d: _Demo, T: int, layout: Layout) -> tuple[dict[str, np.ndarray], list[list[Any]]]:
        """A demo's ``next_obs/`` keys: of each that is its ``obs/`` key one frame later bit for
        bit (`follows`), the last row (`row_record`), unless it is the last observation
        repeated (what the export writes without one); the others whole, as extra arrays. Rows
        and arrays are turned as their ``obs/`` keys are (``flip_images``)."""
        whole: dict[str, np.ndarray] = {}
        last: list[list[Any]] = []
        for f in filter(self._keeps, layout.nexts):
            ds = d.get(f.path)
            if ds is None and "kinodb_export" in self._data.attrs:
                continue  # a merge of robots may hold a key in some demos only
            if not isinstance(ds, self._h5py.Dataset) or ds.shape[:1] != (T,) or ds.dtype.kind not in "biuf":
                self._dataset(d, f.path, T, f)  # raises, naming what is wrong
            key = f.path[len("next_obs/") :]
            obs = d.get(f"obs/{key}")
            try:
                row = ds[T - 1 : T] if isinstance(obs, self._h5py.Dataset) and follows(obs, ds, T) else None
                repeated = row is not None and row.tobytes() == obs[T - 1 : T].tobytes()
            except (OSError, ValueError) as exc:
                raise self._fail(d.name, f"cannot read {f.path} or obs/{key}: {exc}") from None
            if row is None:
                whole[f.name] = self._turned(d, f, self._dataset(d, f.path, T, f))
            elif not repeated:
                last.append(row_record(key, self._turned(d, f, row)[0]))
        return whole, last

    def _image_codec(self, channels: int) -> str | None:
        """The codec frames of ``channels`` channels are to be stored with, when the source can
        encode them as the writer would (``"jpeg"``, ``"png"``); None: hand the writer pixels."""
        codec = "jpeg" if self._options.jpeg_quality is not None else self._options.image_codec
        if codec == "png" or (codec == "jpeg" and channels in (1, 3)):
            return codec
        return None  # raw, or JPEG of 2 or 4 channels: the writer stores or refuses them

    def _encoded(self, d: _Demo, f: Field, T: int) -> list[bytes] | None:
        """A camera's frames encoded as the writer encodes pixels (`_codecs.encode`), read,
        turned (``flip_images``) and encoded `_CAMERA_SLICE` frames at a time, so that the
        episode's pixels are never all held; the same bytes as encoding them whole.

        None when the frames are to be stored raw, or are not the camera's kind of frames
        (`_frames` then reads them whole, and says what is wrong).
        """
        ds = d.get(f.path)
        if (
            not isinstance(ds, self._h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 4
            or ds.shape[0] != T or not 1 <= ds.shape[3] <= 4 or 0 in ds.shape[1:3]
        ):  # fmt: skip
            return None
        codec = self._image_codec(int(ds.shape[3]))
        if codec is None:
            return None
        rows = ds.chunks[0] if ds.chunks else 1  # whole HDF5 chunks per slice: each decompressed once
        step = max(rows, _CAMERA_SLICE // rows * rows)
        quality = self._options.jpeg_quality or 95  # PNG: no quality
        out: list[bytes] = []
        for start in range(0, T, step):
            try:
                frames = ds[start : start + step]
            except (OSError, ValueError) as exc:
                raise self._fail(
                    d.name, f"cannot read {f.path} (frames {start}-{start + step - 1}): {exc}"
                ) from None
            if self._options.flip_images:
                frames = np.ascontiguousarray(frames[:, ::-1, ::-1])
            try:
                out += _codecs.encode(frames, codec, quality)
            except MemoryError:
                raise
            except Exception as exc:  # Pillow raises OSError, ValueError, TypeError
                raise self._fail(
                    d.name, f"{codec.upper()} encoding of {f.path} failed ({type(exc).__name__}: {exc})"
                ) from None
        return out

    def _turned(self, d: _Demo, f: Field, arr: np.ndarray) -> np.ndarray:
        """``arr`` rotated 180 degrees on the axes ``f.turn`` names, when ``flip_images`` asks for it."""
        if not self._options.flip_images or not f.turn:
            return arr
        if arr.ndim != len(f.trailing) + 1:
            raise self._fail(
                d.name,
                f"{f.path} has shape {arr.shape}; {f.first} has (T, {', '.join(map(str, f.trailing))}), "
                "and every demo must hold the same kind of frames",
            )
        index = [slice(None)] * arr.ndim
        for axis in f.turn:
            index[axis] = slice(None, None, -1)
        return np.ascontiguousarray(arr[tuple(index)])

    def _keeps(self, f: Field) -> bool:
        """Whether extra array ``f`` is stored: image-like arrays follow the images option."""
        return self._options.images or len(f.trailing) < 3


def _unreadable(path: str, exc: OSError) -> str:
    """Why h5py cannot open ``path``: locked by a writer, a damaged HDF5 file (its signature is
    there), or what it is."""
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(exc):
        return (
            f"{path}: locked by another process, which has it open for writing (still being written?); "
            "close it there and try again, or, if nothing writes to it any more, read it without HDF5's "
            f"file locking: set HDF5_USE_FILE_LOCKING=FALSE ({exc})"
        )
    if not HDF5Source.detect(path):
        return f"{path}: not a readable HDF5 file ({exc}){not_this_format(path, 'hdf5')}"
    what = "truncated" if "truncated file" in str(exc) else "damaged"
    size = os.path.getsize(path)
    return (
        f"{path}: a {what} HDF5 file: it starts as HDF5, but h5py cannot open it ({exc}; the file has "
        f"{size} bytes); copy it again from where it came from (an interrupted download or copy leaves "
        "such files), or regenerate it"
    )
