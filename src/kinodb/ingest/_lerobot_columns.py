"""The columns of a LeRobot dataset: which feature takes which role, and each column as NumPy.

`make_plan` reads ``info.json``'s features: the action feature, the state keys, the
``image`` and ``video`` features that become cameras, and what has no place in a ``.kdb``
episode. The rest turns one episode's arrow columns into NumPy: numeric columns (nested
lists as trailing dimensions) read from the arrow buffers, never through ``to_numpy``
(which imports pandas and drops a Ctrl-C or SIGTERM that lands meanwhile); ``image``
structs as their encoded bytes, or decoded (16-bit greyscale PNG as uint16 ``(T, H,
W)``); text as extra fields; an episode's rows picked and ordered by ``frame_index``.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import ConversionError, CorruptFileError, WriterError
from kinodb.ingest._base import SourceOptions
from kinodb.ingest._exact import first_rounded, holds_exactly
from kinodb.ingest._options import option_name, option_value
from kinodb.kdb import _codecs

# The LeRobot source's logger: its warnings are filtered by that name.
log = logging.getLogger("kinodb.ingest.lerobot")

POSITIONS = frozenset({"frame_index", "episode_index", "index"})
ACTION_KEYS = ("action", "actions")  # the action feature, in order of preference
STATE_KEYS = ("observation.state", "state", "states")  # the state feature (the last two: one of them)
NOT_DATA = POSITIONS | {"timestamp", "task_index", "next.reward", "next.done", "next.success"}
# Names the writer keeps for its own arrays: a LeRobot feature of such a name that has no
# role (``states`` beside ``observation.state``) is stored as the extra array ``lerobot.<name>``.
RESERVED_ARRAYS = frozenset({"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images"})
NUMERIC = frozenset({"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
                      "uint8", "uint16", "uint32", "uint64"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    """Which feature goes where (from ``info.json``)."""

    action: str  # the feature that holds the actions
    state_keys: tuple[str, ...]
    images: dict[str, str]  # camera -> feature key (dtype image)
    videos: dict[str, str]  # camera -> feature key (dtype video)
    left_out: dict[str, str]  # feature key -> why it is not stored


def camera_names(keys: list[str]) -> dict[str, str]:
    """Camera name -> feature key: the key without ``observation.images.``/``observation.``."""
    short = [k.removeprefix("observation.images.") if k.startswith("observation.images.")
             else k.removeprefix("observation.") for k in keys]  # fmt: skip
    if len(set(short)) != len(short) or any(not s for s in short):
        return {k: k for k in keys}
    return dict(zip(short, keys, strict=True))


def make_plan(features: dict[str, Any], options: SourceOptions, path: str) -> Plan:
    visual = [k for k, f in features.items() if f.get("dtype") in ("image", "video")]
    cams = camera_names(visual)
    images = {c: k for c, k in cams.items() if features[k]["dtype"] == "image"}
    videos = {c: k for c, k in cams.items() if features[k]["dtype"] == "video"}
    action = action_key(features, options, path)
    if options.state_keys is not None:
        states = tuple(options.state_keys)
        unknown = [k for k in states if k not in features]
        if unknown:
            raise ConversionError(
                f"{path}: state keys {unknown} are not features; features: {', '.join(sorted(features))}"
            )
        if action in states:
            raise ConversionError(
                f"{path}: {action!r} holds the actions and cannot also be a state key; pass other "
                f"state keys, or another {option_name('action_key')}"
            )
    else:
        states = default_states(features, action, path)
    for key in (action, *states):
        check_shape(features[key], key, path)
    left_out = {
        k: f"dtype {f.get('dtype')!r} has no place in a .kdb episode"
        for k, f in features.items()
        if f.get("dtype") not in NUMERIC and f.get("dtype") not in ("image", "video", "string")
    }
    for key in videos.values():
        # v1 -> v2 ports keep the block under "video_info" instead of "info"
        video = features[key].get("info") or features[key].get("video_info") or {}
        if video.get("video.is_depth_map"):
            log.warning("%s: %s is a depth map; it is stored as 8-bit RGB, which loses depth precision",
                        path, key)  # fmt: skip
    return Plan(action, states, images, videos, left_out)


def numeric_features(features: dict[str, Any]) -> str:
    """The numeric features that could hold actions or states, for a message."""
    keys = sorted(k for k, f in features.items() if f.get("dtype") in NUMERIC and k not in NOT_DATA)
    return ", ".join(keys) or "none"


def action_key(features: dict[str, Any], options: SourceOptions, path: str) -> str:
    """The feature that holds the actions: ``options.action_key``, else ``action``, else ``actions``.

    Raises:
        ConversionError: that feature is absent or not numeric; names the option to pass.
    """
    key = options.action_key
    if key is None:
        key = next((k for k in ACTION_KEYS if k in features), None)
        if key is None:
            raise ConversionError(
                f"{path}: no action feature (neither {' nor '.join(map(repr, ACTION_KEYS))}); name the "
                f"feature that holds the actions with {option_value('action_key', 'KEY', whole=True)}, and the "
                f"state with {option_value('state_keys', 'K1,K2', whole=True)}; numeric features: "
                f"{numeric_features(features)}"
            )
    elif key not in features:
        raise ConversionError(
            f"{path}: action key {key!r} is not a feature; numeric features: {numeric_features(features)}"
        )
    dtype = features[key].get("dtype")
    if dtype not in NUMERIC:
        raise ConversionError(
            f"{path}: the action feature {key!r} has dtype {dtype!r}, not a number; pass the numeric "
            f"feature that holds the actions as {option_name('action_key')}; numeric features: "
            f"{numeric_features(features)}"
        )
    return key


def default_states(features: dict[str, Any], action: str, path: str) -> tuple[str, ...]:
    """``observation.state``, else ``state`` or ``states`` when exactly one is a numeric feature."""
    if "observation.state" in features:
        return ("observation.state",)
    found = [k for k in STATE_KEYS[1:] if k != action and features.get(k, {}).get("dtype") in NUMERIC]
    if len(found) > 1:
        log.warning(
            "%s: no observation.state, and both %s are features; neither is taken as the state (each "
            "stays an extra array): pass %s to choose",
            path, " and ".join(found), option_name("state_keys"),
        )  # fmt: skip
    return tuple(found) if len(found) == 1 else ()


def flat_names(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            sub = flat_names(item)
            if sub is None:
                return None
            out += sub
        return out
    return None


def names_and_components(names: Any, dim: int) -> tuple[list[str] | None, dict[str, list[int]]]:
    """Flat element names and ``{key: [start, stop)}`` components from a feature's ``names``.

    A list (also nested) names the elements; a dict of lists names them per key, and each
    key becomes a component. Names that do not count ``dim`` elements are dropped.
    """
    comps: dict[str, list[int]] = {}
    if isinstance(names, dict):
        flat: list[str] = []
        for key, value in names.items():
            sub = flat_names(value)
            if sub is None:
                return None, {}
            comps[str(key)] = [len(flat), len(flat) + len(sub)]
            flat += sub
    else:
        got = flat_names(names) if isinstance(names, list) else None
        if got is None:
            return None, {}
        flat = got
    if len(flat) != dim:
        return None, {}
    return flat, {k: v for k, v in comps.items() if v[0] < v[1]}


def check_shape(feature: dict[str, Any], key: str, path: str) -> None:
    """Refuse a ``shape`` that is not a list of whole numbers >= 0 (an absent one is ``[1]``).

    Raises:
        ConversionError: names the file (``path``, ``info.json``), the feature and what to write.
    """
    shape = feature.get("shape", [1])
    whole = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    if not whole or any(d < 0 for d in shape):
        raise ConversionError(  # the value came from JSON: it spells back as JSON
            f"{path}: features[{key!r}].shape is {json.dumps(shape)}; expected a list of whole numbers >= 0, the size of "
            f"each axis of one frame's value, such as [7]: fix it"
        )


def feature_dim(feature: dict[str, Any]) -> int:
    """The number of values per frame of a feature whose shape `check_shape` accepted."""
    return int(np.prod([int(d) for d in feature.get("shape", [1])]))


def to_numpy(pa: Any, column: Any, name: str, where: str) -> np.ndarray:
    """A numeric parquet column as a (T, *shape) array of its own dtype, bit for bit.

    Fixed-size and variable lists (equal lengths) become trailing dimensions. The values
    are read from the arrow buffers (`primitive`), never through ``to_numpy``.
    """
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(arr)
    shape: list[int] = []
    while True:
        if isinstance(arr.type, pa.ExtensionType):
            arr = arr.storage
        if arr.null_count:
            raise ConversionError(f"{where}: column {name!r} holds {arr.null_count} null values")
        if pa.types.is_fixed_size_list(arr.type):
            shape.append(arr.type.list_size)
            arr = arr.flatten()
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            lengths = primitive(arr.value_lengths())
            if lengths.size and (lengths != lengths[0]).any():
                raise ConversionError(f"{where}: column {name!r} holds lists of different lengths")
            shape.append(int(lengths[0]) if lengths.size else 0)
            arr = arr.flatten()
        else:
            break
    if str(arr.type) not in ARROW_DTYPES:
        raise ConversionError(f"{where}: column {name!r} is {column.type}, not numeric")
    return primitive(arr).reshape(n, *shape)


# Arrow's primitive types (little-endian, as arrow keeps them) as NumPy dtypes.
ARROW_DTYPES = {
    "bool": "?", "int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "<u1",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "halffloat": "<f2", "float": "<f4", "double": "<f8",
}  # fmt: skip


def primitive(arr: Any) -> np.ndarray:
    """A numeric or bool arrow array without nulls as NumPy, read from its buffers.

    ``Array.to_numpy`` (and ``numpy.asarray`` of an array) first imports pandas, lazily,
    and drops any exception raised meanwhile: a Ctrl-C or SIGTERM arriving in that import
    would be lost. The data buffer is taken as it is (a read-only view), bits unpacked.
    """
    n, start = len(arr), arr.offset
    dtype = np.dtype(ARROW_DTYPES[str(arr.type)])
    if n == 0:
        return np.empty(0, dtype)
    data = arr.buffers()[1]
    if dtype == np.bool_:
        bits = np.frombuffer(data, np.uint8, count=(start + n + 7) // 8)
        return np.unpackbits(bits, bitorder="little")[start : start + n].view(np.bool_)
    return np.frombuffer(data, dtype, count=n, offset=start * dtype.itemsize)


def row_indices(pa: Any, rows: np.ndarray) -> Any:
    """Row positions as an arrow int64 array for ``take`` (built from the buffer, not converted)."""
    flat = np.ascontiguousarray(rows, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(flat), [None, pa.py_buffer(flat)])


def column_kind(pa: Any, type_: Any) -> str:
    """``"numeric"``, ``"text"``, ``"image"`` or ``"other"`` for an arrow column type."""
    while isinstance(type_, pa.ExtensionType):
        type_ = type_.storage_type
    if pa.types.is_struct(type_):
        names = {type_.field(i).name for i in range(type_.num_fields)}
        return "image" if "bytes" in names else "other"
    while pa.types.is_fixed_size_list(type_) or pa.types.is_list(type_) or pa.types.is_large_list(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_):
        return "numeric"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text"
    return "other"


def text_value(column: Any) -> Any:
    """A text column as an extra field: its one value when every frame has it, else per frame.

    A value is a string, or for a list feature (LeRobot's string feature of shape (N,)) a
    list of strings; nulls stay None.
    """
    rows: list[Any] = column.to_pylist()
    first = rows[0]
    return first if all(row == first for row in rows) else rows


def image_blobs(column: Any, name: str, where: str) -> list[bytes]:
    """The encoded frames of an ``image`` column (structs of ``bytes`` and ``path``)."""
    arr = column.combine_chunks()
    fields = [arr.type.field(i).name for i in range(arr.type.num_fields)]
    data = arr.flatten()[fields.index("bytes")] if arr.null_count == 0 else None  # offsets applied
    if data is None or data.null_count:
        raise ConversionError(
            f"{where}: image column {name!r} has frames without bytes (only a path); "
            f"LeRobot embeds the image bytes in the parquet file"
        )
    blobs: list[bytes] = data.to_pylist()
    return blobs


def image_frames(column: Any, name: str, where: str, flip: bool) -> list[bytes] | np.ndarray:
    """The encoded bytes of an ``image`` column (decoded only if not PNG/JPEG or flipped)."""
    blobs = image_blobs(column, name, where)
    if not flip and _codecs.sniff(blobs[0]) is not None:
        return blobs  # PNG/JPEG: stored byte for byte (the writer checks every frame)
    try:  # another Pillow-readable format, or frames to rotate
        frames = _codecs.decode(blobs, _codecs.probe(blobs[0]), f"{where}: column {name!r}")
    except (CorruptFileError, WriterError, OSError) as exc:
        raise ConversionError(f"{where}: column {name!r}: {exc}") from None
    return np.ascontiguousarray(frames[:, ::-1, ::-1]) if flip else frames


def png_depth(blob: bytes) -> tuple[int, int] | None:
    """A PNG's bit depth and colour type (0 grey, 2 RGB, 4 grey and alpha, 6 RGBA), from its
    header; None for anything else."""
    if len(blob) < 26 or blob[:8] != b"\x89PNG\r\n\x1a\n" or blob[12:16] != b"IHDR":
        return None
    return blob[24], blob[25]


def wide_frames(column: Any, name: str, where: str, flip: bool) -> np.ndarray:
    """The 16-bit greyscale PNG frames of an ``image`` column as uint16 ``(T, H, W)``, bit for bit.

    Raises:
        ConversionError: a frame is no 16-bit greyscale PNG, does not decode, or differs
            in size from frame 0.
    """
    from PIL import Image  # deferred: importing kinodb stays light

    blobs = image_blobs(column, name, where)
    out: np.ndarray | None = None
    for t, blob in enumerate(blobs):
        if png_depth(blob) != WIDE_PNG:
            raise ConversionError(
                f"{where}: column {name!r}: frame {t} is not a 16-bit greyscale PNG, as the dataset's first "
                "frame of this feature is; the frames of one image feature must share one format"
            )
        try:
            with Image.open(io.BytesIO(blob)) as im:
                frame = np.asarray(im)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{where}: column {name!r}: frame {t} does not decode ({exc})") from None
        if out is None:
            out = np.empty((len(blobs), *frame.shape), np.uint16)
        if frame.shape != out.shape[1:] or frame.dtype.kind not in "ui" or frame.dtype.itemsize > 4:
            raise ConversionError(
                f"{where}: column {name!r}: frame {t} decodes to {frame.dtype} {frame.shape}, frame 0 to "
                f"uint16 {out.shape[1:]}"
            )
        out[t] = frame  # 'I;16' is uint16 already; 'I' (older Pillow) holds the same 16-bit values
    assert out is not None
    return np.ascontiguousarray(out[:, ::-1, ::-1]) if flip else out


WIDE_PNG = (16, 0)  # 16-bit greyscale (depth maps): kept, as uint16, in an extra array


def wide_images(pq: Any, path: str, keys: list[str]) -> dict[str, str | None]:
    """The ``image`` features among ``keys`` whose frames are 16-bit PNG, by the first row of
    the data file ``path``: feature key -> None when they are greyscale (kept as a uint16
    extra array), else why they are left out.

    .kdb cameras hold 8-bit frames, and 16-bit PNG (LeRobot's depth maps) would not pass
    them. A file that does not read gives none: the read of its episode says why.
    """
    try:
        with pq.ParquetFile(path) as pf:
            keys = [k for k in keys if k in pf.schema_arrow.names]
            batch = next(pf.iter_batches(batch_size=1, columns=keys), None) if keys else None
        firsts = {} if batch is None else {k: batch.column(k).to_pylist()[0] for k in keys}
    except Exception:  # pyarrow raises several types for damaged files
        return {}
    wide: dict[str, str | None] = {}
    for key, first in firsts.items():
        depth = png_depth(first["bytes"]) if isinstance(first, dict) and first.get("bytes") else None
        if depth == WIDE_PNG:
            wide[key] = None
        elif depth is not None and depth[0] == 16:
            wide[key] = (
                f"16-bit PNG frames of colour type {depth[1]} (not greyscale); .kdb cameras hold 8-bit "
                "frames, and only 16-bit greyscale frames are kept, as uint16 extra arrays"
            )
    return wide


# (meta/info.json, its mtime, column) warned about in this process: `verify` reads the source
# again through a new one, and must not repeat the warning.
_WARNED_DTYPES: set[tuple[str, int, str]] = set()


def as_declared(arr: np.ndarray, name: str, declared: Any, info: tuple[str, int], root: str) -> np.ndarray:
    """Column ``name`` in the dtype ``info.json`` declares for it, where that cast keeps every value.

    LeRobot's loader casts each column to its declared dtype; a file written otherwise
    (float32 actions under a float64 feature) would give episodes of different dtypes.
    A cast that could change values is not made: the column keeps its dtype, with a
    warning, once per column of a dataset in a process (``info``: the path of its
    ``meta/info.json`` and that file's mtime).
    """
    if declared not in NUMERIC or arr.dtype == np.dtype(declared):
        return arr
    want = np.dtype(declared)
    if holds_exactly(arr.dtype, want):
        return arr.astype(want)
    if (*info, name) not in _WARNED_DTYPES:
        _WARNED_DTYPES.add((*info, name))
        hint = (
            f"; pass {option_value('dtype', want.name, whole=True)} to store floating arrays as {want}"
            if want.kind == arr.dtype.kind == "f"
            else ""
        )
        log.warning(
            "%s: column %r holds %s values, but meta/info.json declares %s; they stay %s, as a cast "
            "could change them, and episodes of another dtype may not gather with these%s",
            root, name, arr.dtype, want, arr.dtype, hint,
        )  # fmt: skip
    return arr


def array_name(key: str) -> str:
    """The extra array that holds column ``key``: its own name, else ``lerobot.<key>``."""
    return f"lerobot.{key}" if key in RESERVED_ARRAYS else key


def by_frame_index(pa: Any, table: Any, where: str) -> Any:
    """The rows ordered by ``frame_index``, which must run 0..T-1."""
    fi = to_numpy(pa, table["frame_index"], "frame_index", where).reshape(-1)
    order = np.argsort(fi, kind="stable")
    if not (fi[order] == np.arange(len(fi))).all():
        raise ConversionError(f"{where}: frame_index is not 0..{len(fi) - 1} (frames repeat or are missing)")
    return table if (order == np.arange(len(order))).all() else table.take(row_indices(pa, order))


def concatenate(pieces: dict[str, np.ndarray], T: int, where: str) -> np.ndarray:
    """State columns side by side, in their NumPy result type, which must hold every value.

    Raises:
        ConversionError: a value that type would round (an int64 beyond 2**53 beside floats);
            names the column, the frame and what to do.
    """
    flat = {k: v.reshape(T, -1) for k, v in pieces.items()}
    dtype = np.result_type(*flat.values())
    for key, arr in flat.items():
        rounded = first_rounded(arr, dtype)
        if rounded is not None:
            at, value = rounded
            raise ConversionError(
                f"{where}: state key {key!r} holds {value!r} at frame {at // max(1, arr.shape[1])} "
                f"({arr.dtype}), which the {dtype} states of {', '.join(flat)} cannot hold exactly; leave "
                f"{key!r} out of {option_name('state_keys')}: it then stays an extra array, with its own dtype"
            )
    return np.concatenate([a.astype(dtype, copy=False) for a in flat.values()], axis=1)


def per_frame(arr: np.ndarray, name: str, where: str, fix: str = "") -> np.ndarray:
    """A column with one value per frame as a 1-D array (``fix``: what to do if it is not)."""
    if arr.size != len(arr):
        raise ConversionError(
            f"{where}: column {name!r} has shape {arr.shape[1:]} per frame; expected one value"
            + (f": {fix}" if fix else "")
        )
    return arr.reshape(len(arr))


ROLE_FEATURES = ("next.reward", "next.done", "next.success")  # each a role of one value per frame
_ROLE_DEFAULTS = {
    "next.reward": "rewards are kinodb's default (zeros, total_reward unknown)",
    "next.done": "is_terminal is kinodb's default (the last frame of each episode)",
    "next.success": "success is unknown (null)",
}


def _declared_shape(feature: dict[str, Any]) -> list[int] | None:
    """A feature's ``shape`` (absent: ``[1]``), None when it is no list of whole numbers >= 0."""
    shape = feature.get("shape", [1])
    if not isinstance(shape, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    return shape


def wide_roles(features: dict[str, Any], taken: tuple[str, ...]) -> dict[str, str]:
    """The numeric role features (`ROLE_FEATURES`) that ``info.json`` declares wider than one
    value per frame, each with what is done with it: feature key -> why, for the metadata.

    Such a feature takes no role: it stays the extra array of its name, its dtype and shape
    kept, and the role keeps kinodb's default, as for a dataset without the feature. The
    dataset decides, not each episode. ``taken``: the action and state keys, which keep
    their roles whatever their names.
    """
    out: dict[str, str] = {}
    for key in ROLE_FEATURES:
        feature = features.get(key)
        if key in taken or not isinstance(feature, dict) or feature.get("dtype") not in NUMERIC:
            continue
        shape = _declared_shape(feature)
        if shape is None or int(np.prod(shape)) <= 1:
            continue
        names = flat_names(feature.get("names")) if isinstance(feature.get("names"), list) else None
        held = f" ({', '.join(names)})" if names and len(names) == int(np.prod(shape)) else ""
        why = (
            f"shape {json.dumps(shape)} per frame, not one value: kept as the extra array {array_name(key)!r}"
            f"{held}, dtype and shape as stored; {_ROLE_DEFAULTS[key]}, as without {key}"
        )
        if key == "next.reward":
            why += (
                f"; for one reward per frame, combine its values, e.g. db.read_array(i, {key!r}).sum(axis=1)"
            )
        out[key] = why
    return out


def role_fix(name: str, features: dict[str, Any]) -> str:
    """What to do about a role column holding several values per frame: ``timestamp`` always
    takes its role; a ``next.*`` feature takes none when ``info.json`` declares it wider
    (`wide_roles`), which this one's declaration does not."""
    if name == "timestamp":
        return "LeRobot's timestamp is one time in seconds per frame: write one timestamp per frame in the data files"
    feature = features.get(name)
    said = (
        f"meta/info.json declares shape {json.dumps(feature.get('shape', [1]))} for it"
        if isinstance(feature, dict)
        else "meta/info.json has no such feature"
    )
    return (
        f"{said}; declare the data's shape as features[{name!r}].shape in meta/info.json: a feature "
        "declared wider than one value per frame takes no role and is kept as the extra array of its name"
    )
