"""Read a folder written by ``kino export --format numpy`` back as an ingest `Source`.

The export's layout (`kinodb.export._numpy_dir`): ``dataset.json`` (the source file's
dataset block and the export's record), ``episodes.json`` (one entry per episode folder,
in order) and, per episode, ``meta.json`` (the episode's metadata, each array's file,
dtype and shape, each camera's codec, shape and files) beside the ``.npy`` arrays and the
frames. What goes where:

- Episodes are ``episodes.json``'s folders, in its order; an episode's key is its folder
  (``episode_000003``).
- ``actions``, ``states``, ``rewards``, ``is_terminal`` and ``timestamps`` are the arrays
  of those names; every other array is an extra array of its name. Arrays keep their
  dtype and values bit for bit. Each ``.npy`` file must hold the dtype and shape its
  ``meta.json`` entry says (else the file was changed after the export: an error names
  both).
- Cameras: JPEG and PNG frame files are passed through byte for byte (read back with the
  channel count the export recorded); a camera saved as one ``.npy`` array is raw pixels,
  stored with the ingest's ``image_codec`` (``raw`` or ``png`` keep it exact).
- Each episode's metadata comes back from ``meta.json``: embodiment, task, fps, success
  (null stays unknown), total reward (null stays null) and extra fields. Its earlier
  ``source_file``/``source_episode`` move to ``origin_file``/``origin_episode`` as a merge
  moves them (`kinodb._provenance`); the ingest names this folder afresh.
- The dataset metadata comes back from ``dataset.json``, less the record of the ingest that
  made the exported file, with the export's record as ``numpy.export``; so do the names and
  components of ``actions`` and ``states`` where they fit the data. Statistics are not
  carried over (run ``kino stats`` on the output).

``split``, ``state_keys``, ``flip_images`` and ``keep_model_file`` do not apply (the
framework refuses them). A JSON export (``--format json``) holds no arrays: it is named as
such when given to ``ingest``.
"""

from __future__ import annotations

import json
import logging
import os
import string
from typing import Any, ClassVar

import numpy as np

from kinodb._provenance import carried_on_ingest
from kinodb.errors import ConversionError
from kinodb.ingest._base import (
    TOTAL_UNKNOWN,
    SourceInfo,
    SourceOptions,
    checked_path,
    exported_extra,
    fitting_part,
    read_json,
    user_metadata,
)
from kinodb.ingest._options import skip_advice
from kinodb.kdb._codecs import EncodedFrames

log = logging.getLogger(__name__)

FORMAT = "numpy"
DATASET, INDEX, META = "dataset.json", "episodes.json", "meta.json"
_NAMED = ("actions", "states", "rewards", "is_terminal", "timestamps")  # add_episode's own arrays
_PROVENANCE = ("source_file", "source_episode")  # the ingest sets these anew
_BUILTIN_META = frozenset(
    ("episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim", "success", "total_reward")
)  # fmt: skip
_CODECS = ("jpeg", "png")  # encoded frame files the export writes
_REWRITE = "export the .kdb file again with kino export --format numpy"


class NumpyExportSource:
    """A folder written by ``kino export --format numpy`` (see the module docstring).

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("lift_npy", "lift.kdb", format="numpy", image_codec="png")

    Raises:
        ConversionError: ``dataset.json`` or ``episodes.json`` is missing or malformed;
            reading an episode, its ``meta.json``, an array or a frame that is missing,
            malformed or not what ``meta.json`` says (the message names the file).
    """

    format: ClassVar[str] = FORMAT

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        self._path = checked_path(
            type(self),
            path,
            f"a numpy export (the folder kino export --format numpy writes, holding {DATASET} and {INDEX})",
        )
        self._options = options or SourceOptions()
        self._dirs: list[str] | None = None
        self._listed: set[str] = set()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._path, self._options))

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` is a folder holding ``dataset.json`` and ``episodes.json``."""
        return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, n)) for n in (DATASET, INDEX))

    def _index(self) -> list[str]:
        if self._dirs is None:
            path = os.path.join(self._path, INDEX)
            index = read_json(path, f"; it lists the export's episode folders: {_REWRITE}")
            entries = index.get("episodes") if isinstance(index, dict) else None
            if not isinstance(entries, list):
                raise ConversionError(f"{path}: expected an object with a list 'episodes'; {_REWRITE}")
            dirs: list[str] = []
            seen: dict[str, int] = {}
            for k, entry in enumerate(entries):
                folder = entry.get("dir") if isinstance(entry, dict) else None
                if (
                    not isinstance(folder, str)
                    or folder in ("", ".", "..")
                    or os.path.basename(folder) != folder
                ):
                    raise ConversionError(
                        f"{path}: episodes[{k}] names no episode folder (its 'dir' is "
                        f"{json.dumps(folder)[:60]}; expected a folder name such as 'episode_000000'): {_REWRITE}"
                    )
                if folder in seen:
                    raise ConversionError(
                        f"{path}: episodes[{k}] names the folder {folder!r} again (episodes[{seen[folder]}]); "
                        f"each episode folder is listed once: {_REWRITE}"
                    )
                seen[folder] = k
                dirs.append(folder)
            self._dirs, self._listed = dirs, set(dirs)
        return self._dirs

    def episodes(self) -> list[str]:
        """Every episode folder, in ``episodes.json``'s order."""
        return list(self._index())

    def info(self) -> SourceInfo:
        """The exported file's dataset metadata and schema names, and the export's record."""
        path = os.path.join(self._path, DATASET)
        dataset = read_json(path, f"; it holds the exported file's schema and metadata: {_REWRITE}")
        if not isinstance(dataset, dict):
            raise ConversionError(f"{path}: expected a JSON object (the dataset block); {_REWRITE}")
        metadata = user_metadata(dataset.get("metadata"))
        export = dataset.get("export")
        own = metadata.get(FORMAT)
        if own is None or isinstance(own, dict):  # a dict of the file's own keeps its other keys
            metadata[FORMAT] = {**(own or {}), "export": export if isinstance(export, dict) else None}
        else:
            log.warning("%s: the exported file's metadata holds %r, so the export's record is not kept there",
                        path, FORMAT)  # fmt: skip
        return SourceInfo(FORMAT, schema=self._schema(dataset.get("schema")), metadata=metadata)

    def _schema(self, recorded: Any) -> dict[str, Any]:
        """The recorded names and components of ``actions`` and ``states`` that fit the
        first episode's widths (none when it cannot be read: its own read says why)."""
        dirs = self._index()
        if not isinstance(recorded, dict) or not dirs:
            return {}
        try:
            first = self._meta(dirs[0])
        except ConversionError:
            return {}
        out = {}
        for name in ("actions", "states"):
            entry = first["arrays"].get(name)
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if isinstance(shape, list) and len(shape) >= 1 and all(type(d) is int and d >= 0 for d in shape):
                part = fitting_part(recorded.get(name), int(np.prod(shape[1:], dtype=np.int64)))
                if part:
                    out[name] = part
        return out

    def _meta(self, key: str) -> dict[str, Any]:
        path = os.path.join(self._path, key, META)
        record = read_json(path, f"; it describes the episode's arrays and frames: {_REWRITE}{skip_advice()}")
        if not (
            isinstance(record, dict)
            and isinstance(record.get("meta"), dict)
            and isinstance(record.get("arrays"), dict)
            and isinstance(record.get("cameras", {}), dict)
        ):
            raise ConversionError(
                f"{path}: expected an object with 'meta', 'arrays' and 'cameras' objects; {_REWRITE}{skip_advice()}"
            )
        return record

    def read(self, key: str) -> dict[str, Any]:
        """`Writer.add_episode` arguments for episode folder ``key``.

        Raises:
            ConversionError: names the file that is missing, malformed or not as
                ``meta.json`` describes it.
        """
        self._index()
        if key not in self._listed:  # a set: a dataset of many episodes reads each in O(1)
            raise ConversionError(f"{self._path}: no episode folder {key!r} in {INDEX}")
        folder = os.path.join(self._path, key)
        record = self._meta(key)
        arrays = {name: self._array(folder, name, entry) for name, entry in record["arrays"].items()}
        if "actions" not in arrays:
            raise ConversionError(
                f"{os.path.join(folder, META)}: lists no 'actions' array; every episode has actions: "
                f"{_REWRITE}{skip_advice()}"
            )
        args: dict[str, Any] = {name: arrays.pop(name) for name in _NAMED if name in arrays}
        args["extra_arrays"] = arrays
        if self._options.images:
            args["images"] = {
                str(name): self._camera(folder, str(name), entry)
                for name, entry in record.get("cameras", {}).items()
            }
        self._restore(args, record["meta"], os.path.join(folder, META))
        said, position = record["meta"].get("episode_id"), record.get("position")
        if type(said) is int and type(position) is int and said != position:  # a format 0.1 file's own id
            args["extra"].setdefault("source_episode_id", said)
        return args

    def _array(self, folder: str, name: str, entry: Any) -> np.ndarray:
        """Array ``name`` from its ``.npy`` file, checked against its ``meta.json`` entry."""
        where = os.path.join(folder, META)
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or os.path.basename(file) != file:
            raise ConversionError(
                f"{where}: arrays.{name} names no file in the episode folder ({json.dumps(entry)[:80]}); "
                f"{_REWRITE}{skip_advice()}"
            )
        arr = _load_npy(os.path.join(folder, file))
        said = (entry.get("dtype"), entry.get("shape"))
        if said != (arr.dtype.name, list(arr.shape)):
            raise ConversionError(
                f"{os.path.join(folder, file)}: holds {arr.dtype.name} {tuple(arr.shape)}, and {where} says "
                f"{said[0]} {tuple(said[1]) if isinstance(said[1], list) else said[1]}: the file was changed "
                f"after the export; restore it, or make its arrays.{name} entry say what it holds{skip_advice()}"
            )
        return arr

    def _camera(self, folder: str, name: str, entry: Any) -> np.ndarray | EncodedFrames:
        """Camera ``name``'s frames: encoded files as stored, or a raw ``.npy`` array."""
        where = os.path.join(folder, META)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (
            isinstance(shape, list) and len(shape) == 4 and all(type(d) is int and d >= 0 for d in shape)
        ):
            raise ConversionError(
                f"{where}: cameras.{name} has no shape [T, H, W, C] ({json.dumps(entry)[:80]}); "
                f"{_REWRITE}{skip_advice()}"
            )
        pattern, file, codec = entry.get("frames"), entry.get("file"), entry.get("codec")
        if isinstance(pattern, str) and codec in _CODECS:
            _inside(_frame_name(pattern, where, name), where, f"cameras.{name}.frames")
            frames = []
            for t in range(shape[0]):
                path = os.path.join(folder, pattern.format(frame=t))
                try:
                    with open(path, "rb") as fh:
                        frames.append(fh.read())
                except OSError as exc:
                    raise ConversionError(
                        f"{path}: frame {t} of camera {name!r} cannot be read ({exc.strerror or exc}); "
                        f"{_REWRITE}{skip_advice()}"
                    ) from None
            return EncodedFrames(frames, shape[3])
        if isinstance(file, str) and codec == "raw":
            path = os.path.join(folder, _inside(file, where, f"cameras.{name}.file"))
            arr = _load_npy(path)
            if arr.dtype != np.uint8 or list(arr.shape) != shape:
                raise ConversionError(
                    f"{path}: holds {arr.dtype.name} {tuple(arr.shape)}, and {where} says uint8 {tuple(shape)} "
                    f"for camera {name!r}: the file was changed after the export; restore it{skip_advice()}"
                )
            return arr
        raise ConversionError(
            f"{where}: cameras.{name} is neither JPEG/PNG frame files ('codec' and a 'frames' pattern) nor raw "
            f"frames ('codec' 'raw' and a 'file'): {json.dumps(entry)[:80]}; {_REWRITE}{skip_advice()}"
        )

    def _restore(self, args: dict[str, Any], meta: dict[str, Any], where: str) -> None:
        """The episode's metadata from ``meta.json``'s ``meta`` (`Database.read_meta`'s dict)."""
        meta = dict(meta)
        if meta.get("total_reward") in _NON_FINITE:  # how the export writes a format 0.1 file's NaN total
            log.warning("%s: total_reward %s is not a number kinodb stores; it is stored as null (unknown)",
                        where, meta["total_reward"])  # fmt: skip
            meta["total_reward"] = None
        for name, types, expected in _META_TYPES:
            value = meta.get(name)
            if value is not None and (
                isinstance(value, bool) != (bool in types) or not isinstance(value, types)
            ):
                raise ConversionError(
                    f"{where}: meta.{name} is {json.dumps(value)[:60]}; expected {expected}{skip_advice()}"
                )
        if isinstance(meta.get("embodiment"), str):
            args["embodiment"] = meta["embodiment"]
        if isinstance(meta.get("task"), str):
            args["task"] = meta["task"]
        if meta.get("fps") is not None:
            args["fps"] = float(meta["fps"])
        args["success"] = meta.get("success")
        total = meta.get("total_reward")
        if total is not None:
            try:
                args["total_reward"] = float(total)
            except OverflowError:
                raise ConversionError(
                    f"{where}: meta.total_reward {str(total)[:40]} is too large for a float{skip_advice()}"
                ) from None
        elif "total_reward" in meta:
            args[TOTAL_UNKNOWN] = True  # unknown stays unknown, whatever the rewards
        extra = exported_extra(meta, _BUILTIN_META)
        kept = carried_on_ingest(extra)
        for name in _PROVENANCE:
            extra.pop(name, None)
        extra.update(kept)
        args["extra"] = extra

    def close(self) -> None:
        """Nothing is held open between reads."""
        self._dirs = None


_META_TYPES = (
    ("success", (bool,), "true, false or null"),
    ("total_reward", (int, float), "a number or null"),
    ("fps", (int, float), "a number"),
    ("embodiment", (str,), "a string"),
    ("task", (str,), "a string"),
)  # the fields `_restore` hands to the writer as they are


_NON_FINITE = ("NaN", "Infinity", "-Infinity")  # the export's JSON spelling of such floats


def _frame_name(pattern: str, where: str, name: str) -> str:
    """Frame 0's file name from a ``frames`` pattern, whose only field must be ``frame``.

    Raises:
        ConversionError: the pattern has another field, or one that does not format.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        if fields and set(fields) == {"frame"}:
            return pattern.format(frame=0)
    except (ValueError, KeyError, IndexError):
        pass
    raise ConversionError(
        f"{where}: cameras.{name}.frames is {json.dumps(pattern)[:80]}; expected a file name pattern whose one "
        f"field is {{frame}}, such as 'images/{name}/{{frame:06d}}.jpg': {_REWRITE}{skip_advice()}"
    )


def _inside(rel: str, where: str, field: str) -> str:
    """``rel``, a path that stays inside the episode folder.

    Raises:
        ConversionError: ``rel`` is absolute or climbs out with ``..``.
    """
    parts = rel.replace("\\", "/").split("/")
    if not rel or os.path.isabs(rel) or ".." in parts:
        raise ConversionError(
            f"{where}: {field} is {json.dumps(rel)[:80]}; expected a path inside the episode folder (no "
            f"absolute path, no '..'): {_REWRITE}{skip_advice()}"
        )
    return rel


def _load_npy(path: str) -> np.ndarray:
    """The array in ``path`` (no pickled objects).

    Raises:
        ConversionError: the file is missing, truncated or not a ``.npy`` file of plain data.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ConversionError(
            f"{path}: cannot be read ({exc.strerror or exc}); {_REWRITE}{skip_advice()}"
        ) from None
    except (ValueError, EOFError) as exc:
        raise ConversionError(
            f"{path}: not a readable .npy array ({exc}); restore the file or {_REWRITE}{skip_advice()}"
        ) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under the name
        arr.close()
        raise ConversionError(f"{path}: an .npz archive, not one .npy array; {_REWRITE}{skip_advice()}")
    return arr
