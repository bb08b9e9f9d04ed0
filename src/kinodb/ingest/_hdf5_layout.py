"""Where each per-frame dataset of a robomimic/LIBERO HDF5 file's demos goes.

`scan_demos` lists every dataset path any demo holds and classifies it in the first demo
that holds it (low-dim ``obs/`` keys are states, 4-D uint8 ``obs/`` datasets are cameras,
other per-frame datasets are extra arrays); `arrange` turns that into a `Layout`: the
state keys and their components, the cameras, the extra arrays with their names, and what
is left out and why. State keys whose dtype the states' dtype cannot hold exactly are kept apart as
extra arrays, unless the caller named them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._exact import holds_exactly, significand_bits

# Demo members with a fixed meaning; everything else that is per-frame becomes an extra array.
_SPECIAL = frozenset({"actions", "rewards", "dones", "success"})
# Names the writer reserves, and the one this source gives the simulator states.
_RESERVED = frozenset(
    {"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images", "sim_state"}
)
# Demo attributes a .kdb file does not keep, listed in the metadata's left_out.
_UNSTORED_ATTRS = {
    "model_file": "the simulator model (MJCF XML) per demo: not stored; keep the source file to replay demos",
}


@dataclass(frozen=True, slots=True)
class Field:
    """A per-frame dataset that every demo must hold, and where it goes."""

    path: str  # inside the demo group, e.g. "obs/robot0_eef_pos"
    kind: str  # "state", "camera" or "array"
    trailing: tuple[int, ...]  # shape after the frame axis, in the first demo holding it
    dtype: np.dtype[Any]
    first: str  # the first demo (numeric order) that holds it
    holders: int  # how many demos hold it
    name: str = ""  # state component, camera or extra-array name


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
    apart: dict[str, str]  # extra-array name of a low-dim key kept out of the states -> why


def scan_demos(data: Any, demos: list[str], dataset_type: Any) -> tuple[list[Field], dict[str, str]]:
    """Every dataset path any demo of ``data`` holds, classified in the first demo that holds it.

    Only names are listed per demo; each path is opened once. ``dataset_type`` is
    ``h5py.Dataset``.
    """
    seen: dict[str, list[Any]] = {}
    for demo in demos:
        paths: list[str] = []
        data[demo].visit(paths.append)
        for path in paths:
            if path in seen:
                seen[path][1] += 1
            else:
                seen[path] = [demo, 1]
    fields: list[Field] = []
    left_out: dict[str, str] = {}
    for name in _UNSTORED_ATTRS:
        if any(name in data[demo].attrs for demo in demos):
            left_out[f"attrs/{name}"] = _UNSTORED_ATTRS[name]
    for path, (first, holders) in seen.items():
        if path == "next_obs":
            left_out[path] = "duplicates obs one step later"
        if path in _SPECIAL or path.startswith("next_obs/"):
            continue
        group = data[first]
        ds = group.get(path)
        if not isinstance(ds, dataset_type):
            continue
        kind = _classify(path, ds, _rows(group))
        if kind in ("state", "camera", "array"):
            fields.append(
                Field(path, kind, tuple(int(d) for d in ds.shape[1:]), np.dtype(ds.dtype), first, holders)
            )
        else:
            left_out[path] = kind
    return fields, left_out


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


def arrange(
    path: str, fields: list[Field], left_out: dict[str, str], state_keys: tuple[str, ...] | None, *,
    explicit: bool = False,
) -> Layout:  # fmt: skip
    """Sort every per-frame dataset into states, cameras and extra arrays, and name them.

    Raises:
        ConversionError: a requested state key is not a low-dim observation.
    """
    by_path = sorted(fields, key=lambda f: f.path)
    low_dim = {f.path[len("obs/") :]: f for f in by_path if f.kind == "state"}
    cameras = [replace(f, name=f.path[len("obs/") :]) for f in by_path if f.kind == "camera"]
    taken = set(_RESERVED) | {f.name for f in cameras}
    arrays: list[Field] = []
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
    return Layout(
        tuple(states),
        dtype,
        components,
        tuple(cameras),
        tuple(arrays),
        stamps[0] if stamps else None,
        left_out,
        reasons,
    )


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
    path: str, low_dim: dict[str, Field], state_keys: tuple[str, ...] | None, left_out: dict[str, str]
) -> list[Field]:
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
    for key in sorted(set(low_dim) - {f.name for f in chosen}):
        left_out[f"obs/{key}"] = "not among the chosen state keys"
    return chosen
