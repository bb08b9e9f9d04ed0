"""Where each per-frame dataset of a robomimic/LIBERO HDF5 file's demos goes.

`scan_demos` lists every dataset path any demo holds and classifies it in the first demo
that holds it (low-dim ``obs/`` keys are states; uint8 ``obs/`` datasets of frames a camera
holds, ``(T, H, W, C)`` with 1 to 4 channels, are cameras; other per-frame datasets,
channel-first or many-channel uint8 frames among them, are extra arrays); `arrange` turns
that into a `Layout`: the state keys and their components, the cameras, the extra arrays
with their names and the axes ``flip_images`` reverses, the ``next_obs/`` keys, and what is
left out and why. A ``next_obs/`` key is read per demo (`follows`): where it is its
``obs/`` key one frame later, only its last row is kept (`row_record`); else it is kept
whole, as the extra array its `Field` names.
State keys whose dtype the states' dtype cannot hold exactly are kept apart as extra
arrays, unless the caller named them; low-dim keys left out of the chosen state keys are
extra arrays too. The scan also finds which attributes of the demos are kept as extra
fields (`Scan.attrs`: ``model_file``, `MODEL_FILE`, too where it can be kept, for the
source to keep or leave out as its options say) and the dtype of the file's rewards
(`Scan.rewards`), from h5py's metadata, reading no frames. A demo h5py cannot open (a damaged object header in the demo
group, one of its members or attributes) is set aside (`Scan.unreadable`, with the object
and why), so that the other demos still convert; reading it then fails alone.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._exact import holds_exactly, significand_bits
from kinodb.ingest._hdf5_facts import attr_problem, attr_value

# Demo members with a fixed meaning; everything else that is per-frame becomes an extra array.
_SPECIAL = frozenset({"actions", "rewards", "dones", "success"})
# Names the writer reserves, and the one this source gives the simulator states.
_RESERVED = frozenset(
    {"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images", "sim_state"}
)
# Demo attributes the source reads for what they mean: the rest are kept as extra fields.
_READ_ATTRS = frozenset({"num_samples", "ep_meta", "success"})
MODEL_FILE = "model_file"
"""The demo attribute holding the simulator model (MJCF XML): kept only with ``keep_model_file``."""
# Why model_file is left out, in the metadata's left_out: the text earlier kinodb versions
# stored, so that verify of their outputs still finds the metadata the same.
MODEL_FILE_LEFT_OUT = (
    "the simulator model (MJCF XML) per demo: not stored; keep the source file to replay demos"
)
NEXT_OBS_LAST = "hdf5.next_obs_last"
"""The extra field holding a demo's last ``next_obs/`` row of each key that is its ``obs/`` key
one frame later: a list of `row_record` entries."""
_COMPARE_BYTES = 16 * 2**20  # rows of next_obs/ and obs/ compared at a time (`follows`)


@dataclass(frozen=True, slots=True)
class Field:
    """A per-frame dataset that every demo must hold, and where it goes."""

    path: str  # inside the demo group, e.g. "obs/robot0_eef_pos"
    kind: str  # "state", "camera", "array" or "next" (a next_obs/ key)
    trailing: tuple[int, ...]  # shape after the frame axis, in the first demo holding it
    dtype: np.dtype[Any]
    first: str  # the first demo (numeric order) that holds it
    holders: int  # how many demos hold it
    name: str = ""  # state component, camera or extra-array name
    turn: tuple[int, ...] = ()  # the (H, W) axes that flip_images reverses; () when it leaves it as is
    note: str = ""  # why uint8 frames are not a camera


@dataclass(frozen=True, slots=True)
class Layout:
    """What every demo of a file holds: state components, cameras, extra arrays."""

    states: tuple[Field, ...]
    state_dtype: np.dtype[Any] | None
    components: dict[str, list[int]]
    cameras: tuple[Field, ...]
    arrays: tuple[Field, ...]
    timestamps: Field | None
    left_out: dict[str, str]  # path -> why it is not stored
    apart: dict[str, str]  # extra-array name of a low-dim key its dtype keeps out of the states -> why
    unchosen: dict[str, str]  # extra-array name of a low-dim key not among the chosen state keys -> why
    not_cameras: dict[str, str]  # extra-array name of uint8 frames a camera cannot hold -> why
    nexts: tuple[Field, ...] = ()  # next_obs/ keys, named as the extra array each is when kept whole


@dataclass(frozen=True, slots=True)
class Scan:
    """What the demos of a file hold, listed once per file (`scan_demos`)."""

    fields: list[Field]  # every per-frame dataset, classified
    left_out: dict[str, str]  # path (a demo attribute: attrs/NAME) -> why it is not stored
    attrs: tuple[str, ...]  # demo attributes kept as the extra fields attrs.NAME, sorted
    rewards: np.dtype[Any] | None  # the dtype rewards are stored in (None: no demo holds them)
    unreadable: dict[str, tuple[str, str]]  # demo -> (the object h5py cannot open in it, h5py's error)
    source_dtypes: dict[str, str]  # "rewards", "dones" -> their dtype in the first demo holding them


# What h5py raises for an object whose bytes are damaged: KeyError (opening it), RuntimeError
# (its object info), OSError and ValueError (reading it).
H5_ERRORS = (KeyError, RuntimeError, OSError, ValueError)


class Damaged(Exception):
    """An object of a demo that h5py cannot open or read: its path inside the demo ("" for
    the demo group itself) and h5py's error."""

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(path, error)
        self.path, self.error = path, error


def h5_reason(error: BaseException) -> str:
    """h5py's error as ``Type: message`` (a KeyError's message without its quotes)."""
    reason = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"{type(error).__name__}: {reason}"


def scan_demos(data: Any, demos: list[str], dataset_type: Any, group_type: Any) -> Scan:
    """Every dataset path any demo of ``data`` holds, classified in the first demo that holds
    it, and the demo attributes kept.

    Only names are listed per demo (`member_paths`); each path is opened once. A demo
    h5py cannot open (`H5_ERRORS`) is left out of the rest of the scan and named in
    `Scan.unreadable`. ``dataset_type`` and ``group_type`` are ``h5py.Dataset`` and
    ``h5py.Group``.
    """
    seen: dict[str, list[Any]] = {}
    attrs: dict[str, str] = {}  # demo attribute -> why it cannot be kept ("" when it can)
    unreadable: dict[str, tuple[str, str]] = {}
    for demo in demos:
        try:
            group, paths, found = _open_demo(data, demo, group_type, attrs)
        except Damaged as exc:
            unreadable[demo] = (f"data/{demo}" + (f"/{exc.path}" if exc.path else ""), h5_reason(exc.error))
            continue
        for path in paths:
            if path in seen:
                seen[path][1] += 1
            else:
                seen[path] = [demo, 1]
        for name, why in found.items():
            if name not in attrs or (why and not attrs[name]):  # the first demo that cannot keep it
                attrs[name] = why
    fields: list[Field] = []
    left_out = {f"attrs/{name}": why for name, why in sorted(attrs.items()) if why}
    source_dtypes: dict[str, str] = {}
    for name in ("rewards", "dones"):
        ds = data[seen[name][0]].get(name) if name in seen else None
        if isinstance(ds, dataset_type) and ds.dtype.kind in "biuf":
            source_dtypes[name] = np.dtype(ds.dtype).name
    rewards = reward_dtype(np.dtype(source_dtypes["rewards"])) if "rewards" in source_dtypes else None
    for path, (first, holders) in seen.items():
        if path in _SPECIAL:
            continue
        group = data[first]
        ds = group.get(path)
        if not isinstance(ds, dataset_type):
            continue
        kind = _classify(path, ds, _rows(group))
        if kind == "array" and path.startswith("next_obs/"):
            kind = "next"
        if kind in ("state", "camera", "array", "next"):
            trailing = tuple(int(d) for d in ds.shape[1:])
            note = _not_a_camera(trailing) if kind == "array" and _frames_like(path, ds) else ""
            fields.append(Field(path, kind, trailing, np.dtype(ds.dtype), first, holders, note=note))
        else:
            left_out[path] = kind
    kept = tuple(sorted(n for n, why in attrs.items() if not why))
    return Scan(fields, left_out, kept, rewards, unreadable, source_dtypes)


def _open_demo(
    data: Any, demo: str, group_type: Any, known: dict[str, str]
) -> tuple[Any, list[str], dict[str, str]]:
    """A demo's group, its member paths (`member_paths`) and its attributes to keep, with why
    each cannot be kept ("" when it can: `_scan_attrs`; ``known``, the other demos' verdicts).

    Raises:
        Damaged: h5py cannot open the demo group, one of its members, or an attribute.
    """
    try:
        group = data[demo]
    except H5_ERRORS as exc:
        raise Damaged("", exc) from None
    paths = member_paths(group, group_type)
    found: dict[str, str] = {}
    try:
        _scan_attrs(demo, group.attrs, known, found)
    except H5_ERRORS as exc:
        raise Damaged("attrs", exc) from None
    return group, paths, found


def member_paths(group: Any, group_type: Any, prefix: str = "") -> list[str]:
    """Every path below ``group`` reached by hard links, as ``Group.visit`` lists them: each
    group's members in name order, a subgroup's own members right after it.

    Listed with ``keys()`` rather than ``visit``: HDF5's visit keeps memory for every group
    it walked until the file is closed (tens of kilobytes a demo), so a scan of thousands
    of demos grew by hundreds of megabytes. Each member's class is asked for, which reads
    its object header: a damaged one shows here.

    Raises:
        Damaged: h5py cannot list ``group`` or open one of its members (the path).
    """
    out: list[str] = []
    try:
        names = sorted(group.keys())  # HDF5's name index: byte order, as sorted() orders str
    except H5_ERRORS as exc:
        raise Damaged(prefix.rstrip("/"), exc) from None
    for name in names:
        try:
            if (
                group.get(name, getclass=True, getlink=True).__name__ != "HardLink"
            ):  # visit follows no other link
                continue
            out.append(prefix + name)
            member = group[name] if group.get(name, getclass=True) is group_type else None
        except H5_ERRORS as exc:
            raise Damaged(prefix + name, exc) from None
        if member is not None:
            out.extend(member_paths(member, group_type, f"{prefix}{name}/"))
    return out


def reward_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype rewards of ``dtype`` are stored in: a floating one as it is; integers and
    bools (LIBERO's uint8) as float32, or float64 for integers wider than 16 bits, so that
    every value stays exact."""
    if dtype.kind == "f":
        return dtype
    return np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)


def _scan_attrs(demo: str, attrs: Any, seen: dict[str, str], out: dict[str, str]) -> None:
    """Add to ``out`` each attribute of ``demo`` to keep, with why it cannot be kept ("" when
    it can); those that ``seen`` (the demos before) says cannot be kept are not read again.
    The first demo whose value cannot be kept decides: an attribute is kept in every demo or
    in none. Only floats are read (to find NaN or infinity)."""
    for name in attrs:
        if name in _READ_ATTRS or seen.get(name):
            continue
        aid = attrs.get_id(name)
        dtype, shape = aid.dtype, aid.shape  # h5py builds both anew on each access
        why = attr_problem(dtype, shape)
        if not why and dtype.kind == "f":
            value = np.empty(shape, dtype)
            aid.read(value)  # the low-level read: a third of what attrs[name] costs
            why = attr_value(value)[1]
        out[name] = (
            f"{why} ({demo}): not stored (extra fields hold text, numbers and bools, and lists of them); "
            "the source file keeps it"
            if why
            else ""
        )


def _rows(group: Any) -> int | None:
    """A demo's frame count: its actions' rows, else its num_samples attribute (when that is
    a count)."""
    actions = group.get("actions")
    if actions is not None and getattr(actions, "ndim", 0) >= 1:
        return int(actions.shape[0])
    n = group.attrs.get("num_samples")
    return count(n) if n is not None else None


def count(value: Any) -> int | None:
    """An attribute's value as a count of frames: one integer (or a float holding one), else None."""
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf":
        return None
    number = arr.item()
    if isinstance(number, float) and not number.is_integer():
        return None
    return int(number) if number >= 0 else None


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
    if _frames_like(path, ds) and 1 <= ds.shape[3] <= 4:
        return "camera"
    return "array"


def _frames_like(path: str, ds: Any) -> bool:
    """Whether ``ds`` is a 4-D uint8 ``obs/`` dataset: frames, camera or not."""
    return path.startswith("obs/") and ds.ndim == 4 and ds.dtype == np.uint8


def _channel_first(trailing: tuple[int, ...]) -> bool:
    """Whether 4-D uint8 frames of per-frame shape ``trailing`` are ``(C, H, W)``: their last
    axis is no channel count a camera holds, and their first is."""
    return len(trailing) == 3 and not 1 <= trailing[2] <= 4 and 1 <= trailing[0] <= 4


def _not_a_camera(trailing: tuple[int, ...]) -> str:
    """Why uint8 frames of per-frame shape ``trailing`` are not a camera."""
    shape = f"(T, {', '.join(map(str, trailing))})"
    if _channel_first(trailing):
        return (
            f"uint8 {shape} holds channel-first (T, C, H, W) frames and a camera holds (T, H, W, C) frames "
            "of 1 to 4 channels"
        )
    return f"uint8 {shape} holds frames of {trailing[2]} channels (stacked frames?) and a camera holds 1 to 4"


def _camera_fix(trailing: tuple[int, ...]) -> str:
    """How to make uint8 frames of per-frame shape ``trailing`` a camera."""
    if _channel_first(trailing):
        return "transpose it to (T, H, W, C) in the source file to ingest it as a camera"
    return "split it into datasets of 1 to 4 channels in the source file to ingest them as cameras"


def arrange(
    path: str, fields: list[Field], left_out: dict[str, str], state_keys: tuple[str, ...] | None, *,
    explicit: bool = False, keys_from: str = "the chosen state keys",
) -> Layout:  # fmt: skip
    """Sort every per-frame dataset into states, cameras and extra arrays, and name them.

    ``keys_from`` says where ``state_keys`` came from, for the record of the low-dim keys
    left out of them (which become extra arrays).

    Raises:
        ConversionError: a requested state key is not a low-dim observation.
    """
    by_path = sorted(fields, key=lambda f: f.path)
    low_dim = {f.path[len("obs/") :]: f for f in by_path if f.kind == "state"}
    cameras = [replace(f, name=f.path[len("obs/") :], turn=(1, 2)) for f in by_path if f.kind == "camera"]
    sizes = _frame_sizes(fields)
    taken = set(_RESERVED) | {f.name for f in cameras}
    arrays: list[Field] = []
    stamps = [f for f in fields if f.path == "timestamps" and f.kind == "array" and not f.trailing]
    # Simulator states first, then the demo's own datasets, then obs/ arrays, then the
    # low-dim keys kept out of the states: obs keys yield on a name clash (they become
    # "obs.KEY").
    for f in sorted(fields, key=lambda f: (f.path.startswith("obs/"), f.path != "states", f.path)):
        if f.kind == "array" and f not in stamps:
            name = "sim_state" if f.path == "states" else _free_name(f.path, taken)
            taken.add(name)
            arrays.append(replace(f, name=name, turn=_turn(f, sizes)))
    chosen, rest = _choose_states(path, low_dim, state_keys)
    states, apart = _exact_states(chosen, explicit)
    reasons: dict[str, dict[str, str]] = {"apart": {}, "unchosen": {}}
    for f, why, kind in [*((f, w, "apart") for f, w in apart), *((f, "", "unchosen") for f in rest)]:
        name = _free_name(f.path, taken)
        taken.add(name)
        arrays.append(replace(f, kind="array", name=name))
        why = why or f"not among {keys_from}"
        reasons[kind][name] = f"{why}; it is stored apart, as the extra array {name!r} with its own dtype"
    twins = {f.path: f for f in (*cameras, *arrays)}
    nexts = []
    for f in sorted((f for f in fields if f.kind == "next"), key=lambda f: f.path):
        name = _free_name(f.path, taken)
        taken.add(name)
        twin = twins.get("obs/" + f.path[len("next_obs/") :])  # turned as its obs/ key is
        nexts.append(replace(f, name=name, turn=twin.turn if twin is not None else _turn(f, sizes)))
    components: dict[str, list[int]] = {}
    start = 0
    for f in states:
        width = int(np.prod(f.trailing))
        components[f.name] = [start, start + width]
        start += width
    dtype = np.result_type(*(f.dtype for f in states)) if states else None
    return Layout(
        tuple(states),
        dtype,
        components,
        tuple(cameras),
        tuple(arrays),
        stamps[0] if stamps else None,
        left_out,
        reasons["apart"],
        reasons["unchosen"],
        {f.name: _kept_as(f) for f in arrays if f.note},
        tuple(nexts),
    )


def _kept_as(f: Field) -> str:
    """Why uint8 frames ``f`` are the extra array they are, and how to make them a camera."""
    return (
        f"{f.note}, so it is kept as the extra array {f.name!r}, exactly as stored; {_camera_fix(f.trailing)}"
    )


def _frame_sizes(fields: list[Field]) -> set[tuple[int, ...]]:
    """The ``(H, W)`` of every camera, and of the uint8 ``obs/`` frames no camera holds."""
    sizes: set[tuple[int, ...]] = set()
    for f in fields:
        if f.kind == "camera" or f.note:
            sizes.add(f.trailing[1:3] if _channel_first(f.trailing) else f.trailing[:2])
    return sizes


def _turn(f: Field, sizes: set[tuple[int, ...]]) -> tuple[int, ...]:
    """The axes of extra array ``f`` that ``flip_images`` reverses, as it does a camera's.

    An image-shaped array, ``(T, H, W)`` or ``(T, H, W, C)``, whose ``(H, W)`` is that of
    frames of the file (`_frame_sizes`), turns on axes 1 and 2; channel-first frames,
    ``(T, C, H, W)`` (uint8 frames `_channel_first` names so, or any array whose axes 2
    and 3 are the frames' size), on axes 2 and 3. Other arrays stay as stored.
    """
    t = f.trailing
    if len(t) not in (2, 3):
        return ()
    if f.note and _channel_first(t):
        return (2, 3)
    if t[:2] in sizes:
        return (1, 2)
    if len(t) == 3 and t[1:] in sizes:
        return (2, 3)
    return ()


def _exact_states(states: list[Field], explicit: bool) -> tuple[list[Field], list[tuple[Field, str]]]:
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
    path: str, low_dim: dict[str, Field], state_keys: tuple[str, ...] | None
) -> tuple[list[Field], list[Field]]:
    """The state keys in their order, and the low-dim keys left out of them (sorted)."""
    if state_keys is None:
        return [replace(low_dim[k], name=k) for k in sorted(low_dim)], []
    # "a, b" and "a,b," as typed on a command line: spaces around a key and empty entries
    # are not part of any key.
    given = [k.strip() for k in state_keys if k.strip()]
    if not given:
        raise ConversionError(
            f"{path}: state keys {list(state_keys)!r} name no key; give obs/ keys separated by "
            f"commas, e.g. {','.join(sorted(low_dim)[:2]) or 'robot0_eef_pos,robot0_eef_quat'}"
        )
    chosen: list[Field] = []
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
    rest = [low_dim[k] for k in sorted(set(low_dim) - {f.name for f in chosen})]
    return chosen, rest


def follows(obs: Any, nxt: Any, rows: int) -> bool:
    """Whether the h5py dataset ``nxt`` (``rows`` rows) is ``obs`` one frame later bit for bit:
    ``nxt[:-1]`` holds ``obs[1:]``, in the same dtype and shape. Read a slice at a time, so
    that frames are never all held."""
    if obs.dtype != nxt.dtype or obs.shape != nxt.shape or obs.shape[:1] != (rows,):
        return False
    step = max(1, _COMPARE_BYTES // max(1, nxt.dtype.itemsize * math.prod(nxt.shape[1:])))
    for start in range(0, rows - 1, step):
        stop = min(start + step, rows - 1)
        if nxt[start:stop].tobytes() != obs[start + 1 : stop + 1].tobytes():
            return False
    return True


def row_record(key: str, row: np.ndarray) -> list[Any]:
    """One row as the extra field `NEXT_OBS_LAST` keeps it: ``[key, dtype, shape, base64]``,
    the bytes little-endian (``dtype`` as NumPy spells it: ``<f8``, ``|u1``), bit for bit."""
    row = np.ascontiguousarray(row, row.dtype.newbyteorder("<"))
    return [key, row.dtype.str, list(row.shape), base64.b64encode(row.tobytes()).decode("ascii")]


def record_rows(value: Any) -> dict[str, np.ndarray]:
    """The rows a `NEXT_OBS_LAST` field holds (`row_record` entries), by key; an entry that is
    not one is passed over."""
    out: dict[str, np.ndarray] = {}
    for entry in value if isinstance(value, list) else ():
        try:
            key, dtype, shape, data = entry
            raw = base64.b64decode(str(data), validate=True)
            out[str(key)] = np.frombuffer(raw, np.dtype(str(dtype))).reshape([int(d) for d in shape])
        except (TypeError, ValueError):  # binascii.Error is a ValueError
            continue
    return out
