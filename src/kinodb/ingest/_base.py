"""The ingest plug-in surface: the `Source` protocol, options, and the format registry.

A source lists its episodes as ordered keys and turns one key into the keyword
arguments of `kinodb.Writer.add_episode`. Everything else (selection, workers, dtype,
image encoding, error policy, provenance, the report) is the framework's job, in
`kinodb.ingest._run`, so a converter stays small.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shlex
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from kinodb.errors import ConversionError
from kinodb.ingest._options import option_name, option_value

ENTRY_POINT_GROUP = "kinodb.sources"
SOURCE_PARTS = "source_parts"
"""An optional key of what `Source.read` returns: ``{"states": {component: array}}`` (and
``"actions"`` alike), each component of a concatenated array as the source holds it, in its
own dtype and per-frame shape. The framework drops it before writing; `verify` compares
each component of the stored array with it, so a conversion that rounds shows."""
TOTAL_UNKNOWN = "total_reward_unknown"
"""An optional key of what `Source.read` returns: True stores the episode's total reward as
null (unknown) whatever its rewards, where `Writer.add_episode` would sum them (a kinodb
export's episode whose total was unknown). The framework drops it before writing; `verify`
expects the null."""
SOURCE_WHERE = "source_where"
"""An optional key of what `Source.read` returns: where the episode lies in the source, as
the source's own messages name it (``data/chunk-000/episode_000029.parquet: episode 29``,
``SHARD.tfrecord-00000-of-00004: record 3``). The framework drops it before writing; when
the writer refuses the episode, the message starts with it. Without it, the message names
the episode's provenance: the source's path and the episode's key."""


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What a source may need to know to read episodes (picklable, for worker processes).

    Attributes:
        images: read camera frames (False: skip them, and do not even decode them).
        state_keys: observation keys to concatenate into ``states``, in this order
            (None: the source's default, usually every low-dim key in sorted order).
        split: the dataset split to read, for sources that have splits.
        flip_images: rotate frames by 180 degrees (LIBERO stores them upside down).
        fps: frames per second when the source does not say.
        jpeg_quality: set when decoded frames will be stored as JPEG at this quality: a
            source that decodes video may then return a camera's frames already encoded
            (a list of JPEG bytes) instead of pixels. None: always pixels.
        action_key: the source feature that holds the actions, for sources whose
            datasets name it differently (None: the source's default, e.g. LeRobot's
            ``action``, else ``actions``). Only sources whose class sets
            ``accepts_action_key = True`` are given one; ``ingest`` refuses it for others.
        image_codec: the codec decoded frames will be stored with (``"jpeg"`` or
            ``"png"``): a source that decodes video may then return a camera's frames
            already encoded with it, as the writer encodes pixels (JPEG at
            ``jpeg_quality``), so that an episode's pixels are never all held at once.
            None: frames are stored raw (or, with ``jpeg_quality``, as JPEG).
        frame_chunks: a source that decodes video may return a camera's pixels as
            `FrameChunks`, decoded a few dozen frames at a time, rather than as one
            array. ``verify`` asks for them (it compares frames chunk by chunk);
            ``ingest`` never does (the writer takes arrays or encoded frames).
        keep_model_file: keep each HDF5 demo's ``model_file`` attribute (the simulator's
            MJCF XML, tens of kilobytes a demo) as its other attributes are kept, the
            extra field ``attrs.model_file``; False leaves it out, with a warning.
    """

    images: bool = True
    state_keys: tuple[str, ...] | None = None
    split: str | None = None
    flip_images: bool = False
    fps: float | None = None
    jpeg_quality: int | None = None
    action_key: str | None = None
    image_codec: str | None = None
    frame_chunks: bool = False
    keep_model_file: bool = False


class FrameChunks:
    """A camera's frames, decoded a chunk at a time: an episode's pixels are never all held.

    ``len()`` is the number of frames. Iterating decodes them afresh, in order, as
    ``(start, frames)``: uint8 ``(n, H, W, C)`` arrays holding frames ``start`` to
    ``start + n - 1``. A frame that cannot be decoded raises `ConversionError` while
    iterating, as reading the episode would have raised it.
    """

    __slots__ = ("_chunks", "_length")

    def __init__(
        self, length: int, chunks: Callable[[], Iterator[tuple[int, npt.NDArray[np.uint8]]]]
    ) -> None:
        self._length, self._chunks = length, chunks

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
        return self._chunks()


@dataclass
class SourceInfo:
    """Dataset-level facts a source reports once: schema, format name, metadata."""

    source_format: str
    schema: dict[str, Any] = field(default_factory=dict)  # {"states": {"components": ..., "names": ...}, ...}
    metadata: dict[str, Any] = field(default_factory=dict)
    fps: float | None = None
    embodiment: str | None = None
    task: str | None = None
    notes: list[str] = field(default_factory=list)  # for the report: what was done differently, and why


@runtime_checkable
class Source(Protocol):
    """A readable dataset in some other format.

    Implementations take ``(path, options)`` in ``__init__`` and must be re-creatable
    from those two alone (worker processes build their own). ``read`` raises
    `ConversionError` naming the file, the episode and the key at fault. A source that
    concatenates several of its keys into ``states`` or ``actions`` returns them apart
    too, under `SOURCE_PARTS`, for `verify`.
    """

    format: ClassVar[str]

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` looks like this format (cheap: no full parse)."""
        ...

    def episodes(self) -> list[str]:
        """Every episode's key, in the source's own order."""
        ...

    def info(self) -> SourceInfo:
        """Dataset-level facts."""
        ...

    def read(self, key: str) -> dict[str, Any]:
        """Keyword arguments for `Writer.add_episode` for episode ``key``."""
        ...

    def close(self) -> None:
        """Release files."""
        ...


_BUILTIN = {
    "hdf5": "kinodb.ingest.hdf5:HDF5Source",
    "rlds": "kinodb.ingest.rlds:RLDSSource",
    "lerobot": "kinodb.ingest.lerobot:LeRobotSource",
    "kinfer-ndjson": "kinodb.ingest.kinfer_ndjson:KinferNdjsonSource",
    "numpy": "kinodb.ingest.numpy_export:NumpyExportSource",
    "zarr": "kinodb.ingest.zarr_replay:ZarrSource",
}


def exported_extra(meta: Mapping[str, Any], builtin: frozenset[str]) -> dict[str, Any]:
    """The extra fields of an episode a kinodb export wrote, from its ``read_meta`` dict.

    ``read_meta`` spells an extra field named like a built-in ``extra.NAME``, and one an
    earlier writer stored as ``extra.NAME`` (today's writer refuses the prefix)
    ``extra.extra.NAME``: every ``extra.`` prefix goes, and a name that is then taken gets
    ``_`` appended, so no value is lost.
    """
    stored = {key.removeprefix("extra."): value for key, value in meta.items() if key not in builtin}
    out = {name: value for name, value in stored.items() if not name.startswith("extra.")}
    for name, value in stored.items():  # names today's writer refuses, after those it takes
        if name.startswith("extra."):
            while name.startswith("extra."):
                name = name.removeprefix("extra.")
            while name in out:
                name += "_"
            out[name] = value
    return out


def user_metadata(recorded: Any) -> dict[str, Any]:
    """The dataset metadata a kinodb export recorded, less the record of the ingest that made
    that file (an ingest of the export writes its own)."""
    return {k: v for k, v in recorded.items() if k != "ingest"} if isinstance(recorded, dict) else {}


def fitting_part(part: Any, dim: int) -> dict[str, Any] | None:
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


def read_json(path: str, advice: str = "") -> Any:
    """The JSON value in ``path``.

    Raises:
        ConversionError: the file is missing or is not JSON; names it, then ``advice``
            (``"; what to do"``).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing{advice}") from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: not readable JSON ({exc}){advice}") from None


def checked_path(cls: type[Source], path: str | os.PathLike[str], what: str) -> str:
    """``path`` as a str, once it exists and ``cls`` recognises it.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        ConversionError: ``cls.detect`` refuses it: ``PATH: not WHAT``, then what it is
            instead where that is known (`not_this_format`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if not cls.detect(path):
        raise ConversionError(f"{path}: not {what}{not_this_format(path, cls.format)}")
    return path


def episodes_spec(positions: list[int]) -> str:
    """Ascending positions as an ``--episodes`` spec: ``[0, 1, 2, 29]`` -> ``0-2,29``."""
    runs: list[list[int]] = []
    for k in positions:
        if runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _load(spec: str) -> type[Source]:
    module, _, name = spec.partition(":")
    cls: type[Source] = getattr(importlib.import_module(module), name)
    return cls


def formats() -> dict[str, Callable[[], type[Source]]]:
    """Every known format name, built-in and from the ``kinodb.sources`` entry points."""
    found: dict[str, Callable[[], type[Source]]] = {
        name: functools.partial(_load, spec) for name, spec in _BUILTIN.items()
    }
    for name, load in _plugins():
        found.setdefault(name, load)
    return found


@functools.cache
def _plugins() -> tuple[tuple[str, Callable[[], type[Source]]], ...]:
    """The ``kinodb.sources`` entry points, looked up once per process: the lookup reads
    the metadata of every installed distribution (some milliseconds, as much as ingesting
    a small shard), so a plugin installed while the process runs is seen by the next one."""
    return tuple((ep.name, ep.load) for ep in entry_points(group=ENTRY_POINT_GROUP))


def source_class(fmt: str, path: str) -> type[Source]:
    """The source class for ``fmt``, or the one that recognises ``path`` for ``"auto"``.

    Raises:
        ConversionError: the format is unknown, or nothing recognises ``path`` (the
            message says what it is when that is known: a ``.kdb`` file, a part of a
            LeRobot or RLDS dataset; see `what_it_is`).
    """
    known = formats()
    if fmt != "auto":
        if fmt not in known:
            raise ConversionError(f"unknown source format {fmt!r}; known formats: {', '.join(sorted(known))}")
        return known[fmt]()
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    for name in sorted(known):
        cls = known[name]()
        if cls.detect(path):
            return cls
    part = what_it_is(path)
    if part is not None:
        raise ConversionError(f"{path}: {part}")
    seen = sniff(path)
    raise ConversionError(
        f"{path}: cannot tell its format (tried {', '.join(sorted(known))}"
        f"{f'; {seen}' if seen else ''}); pass {option_name('format')} explicitly"
    )


# -- what a path is, for the messages of a source that cannot read it ---------------------

_KDB_MAGIC = b"KINO"  # format 1.x (kinodb.kdb._layout.MAGIC) and the earlier 0.1 alike
_KDB_VERSION = struct.Struct("<HH")  # major, minor, after the magic
# (offset, signature, what it is) of files often given where a dataset belongs
_SIGNATURES = (
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (0, b"PAR1", "a Parquet file"),
    (4, b"ftyp", "an MP4 video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"\x93NUMPY", "a NumPy .npy file"),
    (0, b"PK\x03\x04", "a zip archive"),
    (0, b"\x1f\x8b", "a gzip file"),
)
_LEROBOT_DEPTH = 4  # videos/KEY/chunk-000/file-000.mp4: a dataset file's folders below the root


def _head(path: str, n: int = 16) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return None


def sniff(path: str) -> str | None:
    """What a file's first bytes show, as a clause (``it is an HDF5 file``), or None."""
    if not os.path.isfile(path):
        return None
    head = _head(path)
    if head is None:
        return None
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(_KDB_MAGIC):
        return "it is a kinodb .kdb file"
    what = next((name for at, magic, name in _SIGNATURES if head[at : at + len(magic)] == magic), None)
    return f"it is {what}" if what else None


def _shown(found: str, given: str) -> str:
    """``found`` (absolute) spelled relative to the working folder when ``given`` was relative."""
    if os.path.isabs(given):
        return found
    rel = os.path.relpath(found)
    return found if rel.startswith("..") else rel


def lerobot_root(path: str) -> str | None:
    """The LeRobot dataset (a folder holding ``meta/info.json``) that ``path`` lies inside, or None.

    ``path`` itself does not count: this finds the root of a dataset's ``data/`` or
    ``meta/`` folder, or of one of its parquet or mp4 files.
    """
    return _enclosing(path, _LEROBOT_DEPTH, (os.path.join("meta", "info.json"),))


def _enclosing(path: str, depth: int, files: tuple[str, ...]) -> str | None:
    """The nearest folder above ``path``, at most ``depth`` levels up, holding all of ``files``."""
    folder = os.path.dirname(os.path.abspath(path))  # a file's folder; a folder's parent
    for _ in range(depth):
        if all(os.path.isfile(os.path.join(folder, n)) for n in files):
            return _shown(folder, path)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return None


_NUMPY_DEPTH = 4  # episode_000000/images/CAMERA/000000.jpg: a file's folders below the export


def numpy_export_root(path: str) -> str | None:
    """The kinodb numpy export (a folder holding ``dataset.json`` and ``episodes.json``)
    that ``path`` lies inside, or None; ``path`` itself does not count."""
    return _enclosing(path, _NUMPY_DEPTH, ("dataset.json", "episodes.json"))


_ZARR_DEPTH = (
    4  # data/img/0.0.0.0 (or data/img/c/0/0/0/0, found from its folders): a chunk's folders below the store
)
_ZARR_MARKS = ((".zgroup", "meta/episode_ends/.zarray"), ("zarr.json", "meta/episode_ends/zarr.json"))


def zarr_root(path: str) -> str | None:
    """The zarr replay buffer (a group holding ``meta/episode_ends``) that ``path`` lies
    inside, or None; ``path`` itself does not count."""
    for marks in _ZARR_MARKS:
        found = _enclosing(path, _ZARR_DEPTH, tuple(os.path.join(*m.split("/")) for m in marks))
        if found is not None:
            return found
    return None


def what_it_is(path: str) -> str | None:
    """Why ``path`` is not a source to ingest, and what to do instead, or None.

    Knows a kinodb ``.kdb`` file (by its magic), JSON export and part of a numpy export, a
    part or a group without ``meta/episode_ends`` of a zarr store, a part of a LeRobot dataset (its
    ``data/`` or ``meta/`` folder, a parquet or mp4 file of it), a metadata file of an
    RLDS (TFDS) dataset folder and a folder of HDF5 files (`hdf5_folder`).
    """
    if os.path.isfile(path):
        head = _head(path, 8) or b""
        if head.startswith(_KDB_MAGIC):
            major, minor = _KDB_VERSION.unpack(head[4:8]) if len(head) == 8 else (1, 0)
            q = shlex.quote(path)
            if major == 0:
                return (
                    f"this is a kinodb .kdb file of the earlier format 0.{minor}, not a dataset to ingest; "
                    f"rewrite it as format 1.0 with `kino upgrade {q} NEW.kdb` (and combine or filter .kdb "
                    "files with `kino merge`)"
                )
            return (
                f"this is already a kinodb .kdb file (format {major}.{minor}), not a dataset to ingest; to "
                f"combine .kdb files or filter their episodes, use `kino merge {q} [MORE.kdb ...] -o OUT.kdb "
                "[-F QUERY]`"
            )
    if os.path.isdir(path) and all(
        os.path.isfile(os.path.join(path, n)) for n in ("dataset.json", "episodes.jsonl")
    ):
        return (
            "this is a kinodb JSON export (kino export --format json), which holds episode metadata only, no "
            "arrays or frames; ingest the .kdb file it was exported from, or a numpy or HDF5 export of it "
            "(kino export --format numpy|hdf5)"
        )
    export = numpy_export_root(path)
    if export is not None:
        return f"this is part of a kinodb numpy export; pass the export's folder (holding episodes.json): {export}"
    store = zarr_root(path)
    if store is not None:
        return f"this is part of a zarr replay buffer; pass the store (the folder holding meta/episode_ends): {store}"
    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in (".zgroup", "zarr.json")):
        return (
            "this is a zarr group without meta/episode_ends; kinodb reads zarr stores laid out as diffusion_policy's "
            "replay buffer (data/ arrays of one row per frame, meta/episode_ends the end of each episode): record "
            "where the episodes end there, or pass the replay buffer's own folder"
        )
    root = lerobot_root(path)
    if root is not None:
        return (
            "this is part of a LeRobot dataset; pass the dataset root DIR (the folder holding "
            f"meta/info.json): {root}"
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "meta", "info.json")):
        data = os.path.join(path, "data")
        chunks = sorted(n for n in os.listdir(data) if n.startswith("chunk-")) if os.path.isdir(data) else []
        if chunks or os.path.isdir(os.path.join(path, "videos")):
            return (
                "this looks like a LeRobot dataset (data/chunk-*/ or videos/) without meta/info.json, which "
                "says its version, features and frame rate; copy the dataset again with its meta/ folder "
                "(huggingface-cli download ... --repo-type dataset fetches it whole)"
            )
    if os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        if any(os.path.isfile(os.path.join(folder, n)) for n in ("dataset_info.json", "features.json")):
            return (
                "this is part of an RLDS (TFDS) dataset; pass the folder holding dataset_info.json and "
                f"features.json ({_shown(folder, path)}), or one of its *.tfrecord* shards"
            )
    return hdf5_folder(path)


_HDF5_SUFFIXES = (".hdf5", ".h5", ".he5", ".hdf")


def hdf5_folder(path: str) -> str | None:
    """Why a folder of HDF5 files (a LIBERO suite of ``*_demo.hdf5``) is not one source,
    with the commands that ingest each file and merge them, or None for anything else."""
    try:
        names = sorted(
            n for n in os.listdir(path)
            if n.lower().endswith(_HDF5_SUFFIXES) and os.path.isfile(os.path.join(path, n))
        )  # fmt: skip
    except OSError:  # not a folder, or one that cannot be listed
        return None
    if not names:
        return None
    outs = [os.path.splitext(n)[0] + ".kdb" for n in names]
    each = [f"`kino ingest {shlex.quote(os.path.join(path, n))} -o {shlex.quote(o)}`"
            for n, o in zip(names[:2], outs[:2], strict=True)]  # fmt: skip
    more = ", ..." if len(names) > 2 else ""
    ins = " ".join(shlex.quote(o) for o in outs[:2]) + (" ..." if len(names) > 2 else "")
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"a folder of {len(names)} HDF5 file{'s' if len(names) != 1 else ''} ({listed}), and the HDF5 "
        f"converter reads one file: ingest each file ({', '.join(each)}{more}), then merge them with "
        f"`kino merge {ins} -o suite.kdb`"
    )


def other_format(path: str, besides: str) -> str | None:
    """The format whose source recognises ``path``, other than ``besides``, or None."""
    for name, load in sorted(formats().items()):
        if name == besides:
            continue
        try:
            if load().detect(path):
                return name
        except Exception:  # a hint only: a plug-in's failing detect must not replace the real error
            continue
    return None


def not_this_format(path: str, fmt: str) -> str:
    """What ``path`` is instead, for the message of source ``fmt`` refusing it (``""``: nothing known).

    Returns ``"; CLAUSE"``: a `what_it_is` sentence, else what its bytes show and the
    ``format`` that reads it. A file that source ``fmt`` itself recognises gives ``""``:
    it is of that format, only damaged, which the source's own message says.
    """
    part = what_it_is(path)
    if part is not None:
        return f"; {part}"
    known = formats().get(fmt)
    try:
        if known is not None and known().detect(path):
            return ""
    except Exception:  # a hint only: a plug-in's failing detect must not replace the real error
        pass
    seen, other = sniff(path), other_format(path, fmt)
    if other is None:
        return f"; {seen}" if seen else ""
    lead = seen or f"it looks like {other} data"
    return (
        f"; {lead}: pass {option_value('format', other)}, or leave {option_name('format')} out to detect it"
    )
