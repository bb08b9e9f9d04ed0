"""Export to the robomimic HDF5 layout, readable by robomimic and by ``kinodb.ingest``.

Layout::

    data                      attrs: total, env_args, [problem_info], kinodb_dataset, kinodb_export
                              (JSON text); the source's other ``data`` attrs (the metadata's
                              ``hdf5.data_attrs``; ``num_demos`` counts the exported demos),
                              and those the HDF5 ingest read into the metadata's top level
                              (LIBERO's bddl_file_name, macros_image_convention; env_name
                              where there was no env_args)
    data/demo_K               attrs: num_samples; ep_meta (JSON: the task as "lang", embodiment,
                              fps, success, total_reward, extra fields); the same fields as
                              attrs of their own (lists, nulls and text with NUL as JSON text);
                              an ``attrs.NAME`` field (a source demo attr) as the attr NAME,
                              lists as arrays (``attrs.model_file``, the MJCF XML an ingest with
                              ``keep_model_file`` kept, as the attr model_file only, not in
                              ep_meta: it is large). An ``ep_meta`` field (the source's own text)
                              is written as the attr ep_meta, and the record above is then
                              the attr kinodb_ep_meta
        actions               as stored (dtype kept)
        rewards               as stored, or in the source's dtype where the ingest recorded it
                              (the metadata's ``hdf5.source_dtypes``) and it holds the values
        dones                 from is_terminal, in the source's dtype where recorded, else uint8
        states                the ``sim_state`` extra array, when there is one
        timestamps <extra>    the other arrays, under their own names
        obs/<extra>           arrays ingested from ``obs/`` (depth, ...; the metadata's
                              ``hdf5.extra_arrays``) go back there
        action_dict/<key>     so do arrays ingested from ``action_dict/`` (robomimic 0.4,
                              RoboCasa, MimicGen)
        obs/<component>       ``states`` split by the schema's named components (else obs/state),
                              each in the dtype and shape its HDF5 source had (the metadata's
                              ``hdf5.state_layout``) where that keeps the values
        obs/<camera>          uint8 (T, H, W, C), JPEG/PNG frames decoded, a window of
                              frames at a time
        next_obs/<key>        every obs key one frame later, as in robomimic's own files; the
                              last row the observation after the final action, as the HDF5
                              ingest kept it (``hdf5.next_obs_last``), else the last frame
                              repeated; a next_obs the ingest kept whole (``next_obs.KEY``) as
                              it is (``next_obs=False``, ``kino export --no-next-obs``: none)
    mask/<key>                demo names (bytes) from the ``filter_keys`` extra field; empty for
                              a filter key the source held empty (the metadata's
                              ``hdf5.filter_keys`` counts it 0, as robomimic's split_train_val
                              writes ``mask/valid`` for fewer than 10 demos), also with a
                              filter (no demo of the source was listed there); a key that lists
                              none of the exported demos but some of the source's is left out

Image orientation: a file ingested with ``flip_images`` (``kino ingest --flip-images``,
for LIBERO, which stores frames upside down; the metadata's ``image_orientation`` is
``rotated_180``) holds its frames upright. By default what the ingest rotated is rotated
180 degrees back, so the export has the arrays and frames of the original file and ``kino
ingest --flip-images`` of the export gives back exactly the same file; the report says
so, and ``kinodb_dataset`` records ``image_orientation`` as ``as_stored`` (and no
``hdf5.rotated``). Which cameras and arrays are turned, on which axes, is read from the
ingest's record (``hdf5.rotated``, ``lerobot.rotated``, ``rlds.rotated``), per merge input
for a merge, and a merge of files ingested with and without ``--flip-images`` is exported
one orientation at a time: `kinodb.export._hdf5_turns` says how. ``flip_images=False``
(``kino export --keep-upright``) writes everything as the file holds it (frames upright),
recorded as ``rotated_180``, so that ingesting the export without ``--flip-images`` keeps
them upright.

Demos are numbered ``demo_0``, ``demo_1``, ... in export order. robomimic takes each key's
shape from ``demo_0``, so the exported episodes must share the action and state dims and
each array's and camera's per-frame shape (a merge of robots is exported one robot at a
time, with ``--filter``). Arrays that only some episodes hold are left out, with a warning;
a camera that only some hold stays in those demos, which ``kinodb.ingest`` reads back (a
robomimic reader needs it left out of its obs keys), and so do per-frame tasks (the extra
field ``tasks`` with the array ``task_index``), which robomimic does not read.

Datasets are written uncompressed unless ``compression`` (``kino export --hdf5-compression``)
asks for ``gzip`` (level 4, as h5py's default and robomimic's ``dataset_states_to_obs.py
--compress``) or ``lzf``; robomimic reads either. A file ingested without
``keep_model_file`` has no ``model_file`` to write back: where its metadata says the source's
demos had one (``hdf5.left_out``), a warning says how to get it.

``kinodb_dataset`` holds the file's dataset block (schema, metadata), which the HDF5 ingest
gives back; its stored statistics only where they describe the export (every episode, not
stale), else ``kinodb_export`` says in ``stats_left_out`` why they were left out.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.export._base import WINDOW, camera_windows, dumps, exported_dataset, one_value, split_advice
from kinodb.export._hdf5_record import (
    MODEL_FILE,
    array_paths,
    empty_filter_keys,
    had_model_file,
    lifted_data_attrs,
    no_model_file,
    source_data_attrs,
    source_dtypes,
    state_layout,
)
from kinodb.export._hdf5_turns import MERGE_FORMAT as MERGE_FORMAT  # "X as X": still importable from here
from kinodb.export._hdf5_turns import MIXED as MIXED
from kinodb.export._hdf5_turns import ORIENTATION_AS_STORED as ORIENTATION_AS_STORED
from kinodb.export._hdf5_turns import ORIENTATION_TURNED as ORIENTATION_TURNED
from kinodb.export._hdf5_turns import (
    Turns,
    merge_inputs,
    one_orientation,
    oriented_info,
    turn_back,
)
from kinodb.export._hdf5_turns import rotation_space as rotation_space  # kinodb.ingest.lerobot imports it
from kinodb.export._hdf5_turns import turned_upright as turned_upright
from kinodb.export._run import HDF5_COMPRESSIONS
from kinodb.ingest._hdf5_layout import NEXT_OBS_LAST, record_rows
from kinodb.kdb.reader import Database

logger = logging.getLogger(__name__)

SIM_STATE = "sim_state"  # the extra array that holds robomimic's flattened MuJoCo ``states``
FILTER_KEYS = "filter_keys"  # the extra field listing an episode's robomimic filter keys
ROBOSUITE_ENV_TYPE = 1  # robomimic EnvType.ROBOSUITE_TYPE
# Datasets and groups a demo already has: extra arrays must not take these names.
_DEMO_NAMES = frozenset(("actions", "rewards", "dones", "states", "obs", "next_obs", "action_dict"))
# kinodb's own arrays (and the simulator states), written where robomimic reads them.
_BUILTIN = frozenset(("actions", "states", "rewards", "is_terminal", "timestamps", SIM_STATE))
_META_ATTRS = ("embodiment", "task", "fps", "success", "total_reward")
_DERIVED = frozenset(("episode_id", "num_frames", "action_dim", "state_dim"))
# Demo attrs with a robomimic meaning: extra fields of these names are written as "extra.NAME".
_DEMO_ATTRS = frozenset(("num_samples", "model_file", "ep_meta", "camera_info"))
EP_META = "ep_meta"  # the extra field holding a source demo's ep_meta attr, as its text
SOURCE_ATTR = "attrs."  # the prefix of the extra fields holding a source demo's other attrs
# Demo attrs this export writes itself: a source attr of one of these names keeps its field's name.
_OWN_ATTRS = frozenset(("num_samples", "ep_meta", "kinodb_ep_meta", "task", *_META_ATTRS))

COMPRESSIONS = HDF5_COMPRESSIONS  # what ``compression`` takes: h5py's filters (gzip at level 4), or none
Split = list[tuple[str, int, int]]  # obs key, start, stop within ``states``


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every demo of one export writes, decided before anything is written."""

    split: Split  # the obs keys ``states`` is split into
    paths: dict[str, str]  # extra arrays going back under obs/
    shapes: dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]]  # state keys' source layout
    skip: frozenset[str]  # arrays left out (only some episodes hold them)
    turns: dict[int, Turns]  # per episode, what to rotate 180 degrees back to the source's orientation
    next_obs: bool  # write next_obs beside obs
    dtypes: dict[str, np.dtype[Any]]  # "rewards", "dones" -> their dtype in the ingested HDF5 file
    store: dict[str, Any]  # h5py's create_dataset options of the demos' datasets (compression)


def write(
    db: Database, positions: list[int], out: str, facts: dict[str, Any], *, flip_images: bool = True,
    next_obs: bool = True, compression: str | None = None,
) -> list[str]:  # fmt: skip
    """Write episodes ``positions`` of ``db`` to the new HDF5 file ``out``; return warnings.

    ``flip_images``: rotate frames that the ingest turned upright (metadata
    ``image_orientation`` ``rotated_180``) back to the source's orientation; False keeps
    them upright. Frames that were not turned are written as stored either way.
    ``next_obs``: write each demo's ``next_obs`` (every obs key one frame later, its last
    row as the ingest kept it, else the last frame repeated: `_Obs`), as robomimic's own
    files hold it; False halves the file. ``compression`` (`COMPRESSIONS`: ``"gzip"``, at
    h5py's default level 4, or ``"lzf"``) compresses every dataset of the demos, as
    robomimic's ``dataset_states_to_obs.py --compress`` does its observations; None (or
    ``"none"``) writes them uncompressed. robomimic reads either.

    Raises:
        ConversionError: the episodes differ in action or state dims or in an array's or
            camera's per-frame shape (`check_layout`; nothing is written), a name cannot be
            an HDF5 name, names collide, or ``filter_keys`` is not a list of strings; or, with
            ``flip_images``, what the ingest rotated cannot be told (`_hdf5_turns.turn_back`).
        MissingExtraError: h5py is not installed.
    """
    store = dataset_options(compression)
    h5py = require("h5py", extra="hdf5")
    partial, arrays, cameras = _check_layout(db, positions)
    # Per-frame tasks (task_index beside a list of tasks) stay in the demos that hold them:
    # robomimic reads only obs keys, actions, rewards and dones, and kinodb's ingest of an
    # export takes a demo-level array that some demos lack.
    if "task_index" in partial and _per_frame_tasks(db, arrays["task_index"]):
        del partial["task_index"]
    split, warnings = state_split(db, positions)
    merge = merge_inputs(db)
    paths = _obs_paths(array_paths(db, merge), split, cameras)
    # A demo's next_obs/KEY kept whole (it was not obs/KEY one frame later) goes back to next_obs/,
    # in the demos that hold it; the others' next_obs/KEY comes from obs/KEY.
    nexts = sorted(name for name in arrays if paths.get(name, "").startswith("next_obs/"))
    for name in nexts:
        partial.pop(name, None)
    _check_names(db, split, paths, arrays, cameras, frozenset(partial))
    for name, n in sorted(partial.items()):
        warnings.append(
            f"array {name!r} is in {n} of {len(positions)} exported episodes; left out, since every "
            "demo of a robomimic file holds the same datasets (export those episodes apart to keep it)"
        )
    if nexts and not next_obs:
        warnings.append(
            f"next_obs arrays {', '.join(nexts)} (the source's next_obs, which is not obs one frame later) "
            "are left out with next_obs (--no-next-obs); export without it to keep them"
        )
    orientation = one_orientation(db, positions, merge)
    turns = turn_back(db, positions, merge, warnings) if flip_images else {}
    skip = frozenset(partial) | frozenset(() if next_obs else nexts)
    plan = _Plan(split, paths, state_layout(db), skip, turns, next_obs, source_dtypes(db), store)
    dataset, facts = exported_dataset(db, positions, {**facts, "next_obs": next_obs})
    with h5py.File(out, "x") as f:
        info = oriented_info(dataset, bool(turns), orientation)
        lacking = _write_file(f, db, positions, plan, info, facts, empty_filter_keys(db, merge))
    if lacking and had_model_file(db, merge):
        warnings.append(no_model_file(db, lacking, len(positions)))
    for line in warnings:
        logger.info("%s", line)  # the report carries them; kino prints them once, as warnings
    return warnings


def _write_file(
    f: Any, db: Database, positions: list[int], plan: _Plan, dataset: dict[str, Any], facts: dict[str, Any],
    empty: list[str],
) -> int:  # fmt: skip
    """Write the demos, the ``data`` attrs and the filter keys into the open HDF5 file ``f``
    (``empty``: those the source held empty, written so); return how many demos were written
    without a ``model_file`` attr."""
    data = f.create_group("data")
    for name, value in source_data_attrs(db).items():
        data.attrs[name] = np.int64(len(positions)) if name == "num_demos" else _source_attr(value)
    masks: dict[str, list[str]] = {}
    total = lacking = 0
    for k, i in enumerate(positions):
        name = f"demo_{k}"
        group = data.create_group(name)
        total += _write_demo(group, db, i, plan)
        lacking += MODEL_FILE not in group.attrs
        for key in _filter_keys(db, i):
            masks.setdefault(key, []).append(name)
    for key in empty:
        masks.setdefault(key, [])  # robomimic's split_train_val writes an empty mask/valid for few demos
    data.attrs["total"] = np.int64(total)
    env = env_args(db, positions)
    data.attrs["env_args"] = env if isinstance(env, str) else dumps(env)
    problem = db.metadata().get("problem_info")
    if problem is not None:
        data.attrs["problem_info"] = problem if isinstance(problem, str) else dumps(problem)
    for name, value in lifted_data_attrs(db).items():
        data.attrs[name] = value
    data.attrs["kinodb_dataset"] = dumps(dataset)
    data.attrs["kinodb_export"] = dumps(facts)
    for key, demos in masks.items():
        f.create_dataset(f"mask/{_h5_name(key, 'filter key', db.path())}", data=np.array(demos, dtype="S"))
    return lacking


def dataset_options(compression: str | None) -> dict[str, Any]:
    """h5py's ``create_dataset`` options for ``compression`` (`COMPRESSIONS`; None: none).

    Raises:
        ValueError: another ``compression``.
    """
    if compression is None or compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if compression == "lzf":
        return {"compression": "lzf"}
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)} (or None), got {compression!r}")


def _per_frame_tasks(db: Database, seen: dict[tuple[int, ...], list[int]]) -> bool:
    """Whether every episode holding ``task_index`` (``seen``: by shape) has a list of tasks beside it."""
    return all(isinstance(db.read_meta(i).get("tasks"), list) for eps in seen.values() for i in eps)


def check_layout(db: Database, positions: list[int]) -> dict[str, int]:
    """Check that the episodes fit one robomimic file; return the arrays only some hold.

    robomimic takes each obs key's shape from the first demo and batches demos together,
    so the episodes must share the action and state widths, and each array and camera
    one per-frame shape. Arrays that only some episodes hold are returned (with how many
    hold each) to be left out; cameras that only some hold stay in those demos.

    Raises:
        ConversionError: the episodes differ in action or state dims, or an array or a
            camera has different per-frame shapes in different episodes.
    """
    return _check_layout(db, positions)[0]


def _check_layout(db: Database, positions: list[int]) -> tuple[dict[str, int], Shapes, Shapes]:
    """`check_layout`, and each array's and camera's shapes with the episodes holding them."""
    table = db.episodes()
    why = "every demo of a robomimic file has the same actions and obs shapes"
    for col, what in (("action_dim", "action"), ("state_dim", "state")):
        one_value(db, table, positions, col, f"{what} dims", why)
    arrays, cameras = _shapes(db, positions)
    partial: dict[str, int] = {}
    for name, seen in arrays.items():
        held = sum(len(eps) for eps in seen.values())
        if held < len(positions):
            partial[name] = held
        else:
            _one_shape(db, table, f"array {name!r}", seen)
    for name, seen in cameras.items():
        _one_shape(db, table, f"camera {name!r}", seen)
    return partial, arrays, cameras


def _obs_paths(paths: dict[str, str], split: Split, cameras: Shapes) -> dict[str, str]:
    """``paths`` less the arrays whose ``obs/`` key a state component or a camera takes:
    those are written at the demo's top level, under their own names."""
    taken = {f"obs/{key}" for key, _, _ in split} | {f"obs/{name}" for name in cameras}
    return {name: path for name, path in paths.items() if path not in taken}


def _check_names(db: Database, split: Split, paths: dict[str, str], arrays: Shapes, cameras: Shapes,
                 skip: frozenset[str]) -> None:  # fmt: skip
    """Refuse, before anything is written, names that would take a place robomimic or a state key holds.

    Raises:
        ConversionError: an extra array has the name of a demo dataset robomimic reads
            (``dones``, ``obs``, ...), or a camera the name of a state component; the
            message says what can be done.
    """
    for name, seen in arrays.items():
        if name in skip or name in paths or name in _BUILTIN:
            continue
        target = _h5_name(name, "array", db.path())
        if target in _DEMO_NAMES:
            raise ConversionError(
                f"{db.path()}: array {name!r} ({_held(seen)}) would take the place of the robomimic dataset "
                f"{target!r} of each demo. kinodb has no command that renames an array: export to --format "
                "numpy or lerobot, which keep it under its name, or write a copy of the file with the array "
                "renamed (each episode's db.read_episode(i) added to a kinodb.Writer, the array under a new "
                "name in extra_arrays) and export the copy"
            )
    components = {key for key, _, _ in split}
    for name, seen in cameras.items():
        if _h5_name(name, "camera", db.path()) in components:
            raise ConversionError(
                f"{db.path()}: camera {name!r} ({_held(seen)}) and the state component {name!r} would both be "
                f"obs/{name}. kinodb has no command that renames either: export to --format numpy or lerobot, "
                "which keep both, or write a copy of the file whose schema names the component otherwise "
                "(kinodb.Writer(NEW, schema={'states': {'components': {...}}}), then Writer.copy_episode(db, i) "
                "for each episode, which copies the data byte for byte) and export the copy"
            )


def _held(seen: dict[tuple[int, ...], list[int]]) -> str:
    """Where ``seen`` (an array's or camera's episodes by shape) is held: "in 3 episodes, first 0"."""
    eps = sorted(i for group in seen.values() for i in group)
    return f"in {len(eps)} episode{'' if len(eps) == 1 else 's'}, first {eps[0]}"


def state_split(db: Database, positions: list[int]) -> tuple[Split, list[str]]:
    """The ``obs`` keys that ``states`` is split into, and why a schema could not be kept.

    The schema's state components become one obs key each when, sorted by start, they
    cover ``[0, state_dim)`` exactly for every exported episode; otherwise ``states`` is
    written whole as ``obs/state``.
    """
    dims = set(db._int_columns()["state_dim"][positions].tolist())
    comps = db.schema().get("states", {}).get("components") or {}
    whole: Split = [("state", 0, -1)]
    if not comps:
        return whole, []
    spans = sorted((int(a), int(b), str(name)) for name, (a, b) in comps.items())
    end = spans[-1][1]
    if spans[0][0] != 0 or any(p[1] != q[0] for p, q in pairwise(spans)) or dims - {0} != {end}:
        listed = ", ".join(f"{n} [{a}, {b})" for a, b, n in spans)
        return whole, [
            f"state components ({listed}) do not cover states exactly (dims {sorted(dims)}); "
            "states were written whole as obs/state"
        ]
    return [(_h5_name(name, "state component", db.path()), a, b) for a, b, name in spans], []


def env_args(db: Database, positions: list[int]) -> dict[str, Any] | str:
    """robomimic's ``env_args``: the source's own when it had one, else a minimal one.

    The minimal one names the environment after the metadata's ``env_name`` (else the
    file), and records the robot (``robots``) and control rate (``control_freq``) in
    ``env_kwargs`` when every exported episode shares them, as robosuite does.
    """
    meta = db.metadata()
    given = meta.get("env_args")
    if isinstance(given, str):  # the source's text, kept as it was (NaN values made ingest keep it so)
        try:
            parsed = json.loads(given)
        except ValueError:
            return given
        if isinstance(parsed, dict):
            return given
    if isinstance(given, dict):
        return given
    name = meta.get("env_name")
    if not isinstance(name, str) or not name:
        name = os.path.splitext(os.path.basename(db.path()))[0]
    table = db._columns(("embodiment", "fps"))
    kwargs: dict[str, Any] = {}
    robots = set(table["embodiment"][positions].tolist())
    if len(robots) == 1 and robots != {"unknown"}:
        kwargs["robots"] = robots.pop()
    rates = set(table["fps"][positions].tolist())
    if len(rates) == 1:
        kwargs["control_freq"] = rates.pop()
    return {"env_name": name, "type": ROBOSUITE_ENV_TYPE, "env_kwargs": kwargs}


def _exact_as(values: np.ndarray, dtype: np.dtype[Any] | None) -> np.ndarray:
    """``values`` in ``dtype`` where that keeps every value exactly (else as they are)."""
    if dtype is None or dtype == values.dtype:
        return values
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or out of range: compared below
        cast = values.astype(dtype)
        return cast if np.array_equal(cast.astype(values.dtype), values) else values


def _component(part: np.ndarray, layout: tuple[np.dtype[Any] | None, tuple[int, ...]] | None) -> np.ndarray:
    """A state component in its source dtype and shape, where that is exactly the same values."""
    if layout is None:
        return part
    dtype, shape = layout
    if math.prod(shape) != part.shape[1]:
        return part
    if dtype is None or dtype.kind not in "biuf":
        return part.reshape(len(part), *shape)
    cast = part.astype(dtype)
    if not np.array_equal(cast.astype(part.dtype), part, equal_nan=part.dtype.kind == "f"):
        return part  # the states were cast (--dtype) and the source's form would change values
    return cast.reshape(len(part), *shape)


Shapes = dict[str, dict[tuple[int, ...], list[int]]]  # name -> per-frame shape -> positions


def _shapes(db: Database, positions: list[int]) -> tuple[Shapes, Shapes]:
    """Each array's and each camera's per-frame shapes, with the episodes that have each."""
    arrays: Shapes = {}
    cameras: Shapes = {}
    for i in positions:
        for name, arr in db.read_episode_actions_only(i).items():
            if name != "meta":
                arrays.setdefault(name, {}).setdefault(tuple(arr.shape[1:]), []).append(i)
        for name, cam in db.cameras(i).items():
            shape = tuple(int(d) for d in cam["shape"][1:])
            cameras.setdefault(name, {}).setdefault(shape, []).append(i)
    return arrays, cameras


def _one_shape(
    db: Database, table: dict[str, np.ndarray], what: str, seen: dict[tuple[int, ...], list[int]]
) -> None:
    """Refuse ``what`` (an array or camera) when the episodes hold it in different shapes."""
    if len(seen) < 2:
        return
    tally = ", ".join(
        f"{list(shape)} in {len(eps)} episode{'' if len(eps) == 1 else 's'} (first: {eps[0]})"
        for shape, eps in list(seen.items())[:6]
    )
    raise ConversionError(
        f"{db.path()}: {what} has different per-frame shapes ({tally}); robomimic takes each key's "
        f"shape from the first demo: export them separately, {split_advice(table, next(iter(seen.values())))}"
    )


def _write_demo(g: Any, db: Database, i: int, plan: _Plan) -> int:
    """Write episode ``i`` into the demo group ``g``; return its number of frames.

    The cameras and arrays ``plan.turns`` names for the episode are rotated by 180 degrees
    on their axes, as the HDF5 ingest's ``flip_images`` did, back to the source's
    orientation. Frames (and 4-D arrays) are written a window at a time, so that an
    episode's decoded frames are never all in memory at once.
    """
    ep = db.read_episode_actions_only(i)
    meta = ep.pop("meta")
    T = int(meta["num_frames"])
    g.attrs["num_samples"] = np.int64(T)
    store = plan.store
    _new(g, "actions", store, data=ep.pop("actions"))
    _new(g, "rewards", store, data=_exact_as(ep.pop("rewards"), plan.dtypes.get("rewards")))
    _new(g, "dones", store, data=ep.pop("is_terminal").astype(plan.dtypes.get("dones", np.dtype(np.uint8))))
    states = ep.pop("states")
    turns = plan.turns.get(i, {})
    places = {
        name: plan.paths[name].split("/") for name in ep if name in plan.paths and name not in plan.skip
    }
    whole = {key for group, key in places.values() if group == "next_obs"}
    obs = _Obs(g, plan.next_obs, record_rows(meta.pop(NEXT_OBS_LAST, None)), whole, store)
    if states.shape[1]:
        for key, a, b in plan.split:
            part = np.ascontiguousarray(states[:, a : b if b >= 0 else None])
            obs.put(key, _component(part, plan.shapes.get(key)))
    for name, arr in ep.items():  # timestamps and extra arrays
        if name in plan.skip:
            continue
        turn = turns.get(name, ())
        if name in places and plan.paths[name] not in g:  # back where it was ingested from
            group, key = places[name]
            if group == "next_obs":
                obs.put_next(key, arr, turn)
            elif group == "obs" and (
                arr.ndim == 4 or turn
            ):  # image-like (depth): the ingest may have turned it
                obs.put_frames(key, arr.shape, arr.dtype, _array_windows(arr), turn=turn)
            elif group == "obs":
                obs.put(key, arr)
            else:
                _put_array(g.require_group(group), key, arr, turn or None, store)
            continue
        target = "states" if name == SIM_STATE else _h5_name(name, "array", db.path())
        if name != SIM_STATE and target in _DEMO_NAMES:  # `_check_names` refused the others
            raise ConversionError(f"{db.path()}: episode {i}: array {name!r} would overwrite {target!r}")
        _put_array(g, target, arr, turn if name in turns else None, store)
    for name, cam in db.cameras(i).items():
        shape = tuple(int(d) for d in cam["shape"])
        obs.put_frames(_h5_name(name, "camera", db.path()), shape, np.dtype(np.uint8),
                       camera_windows(db, i, name, T), turn=turns.get(name, ()))  # fmt: skip
    _write_attrs(g, meta)
    return T


def _put_array(
    group: Any, key: str, arr: np.ndarray, turn: tuple[int, ...] | None, store: dict[str, Any]
) -> None:
    """Write an extra array under ``key`` of ``group``: 4-D arrays, and those ``turn`` names
    (not None: the axes to rotate back, maybe none), a window at a time."""
    if arr.ndim == 4 or turn is not None:
        _put_frames(group, None, key, arr.shape, arr.dtype, _array_windows(arr), turn=turn or (), store=store)
    else:
        _new(group, key, store, data=arr)


def _new(
    group: Any, key: str, store: dict[str, Any], *, data: Any = None, shape: tuple[int, ...] | None = None,
    dtype: Any = None,
) -> Any:  # fmt: skip
    """A new dataset ``key`` of ``group``, created with ``store``'s options (compression)
    where HDF5 takes them: not on a scalar."""
    ndim = np.ndim(data) if shape is None else len(shape)
    return group.create_dataset(key, data=data, shape=shape, dtype=dtype, **(store if ndim else {}))


class _Obs:
    """A demo's ``obs`` group and, when wanted, its ``next_obs``: each key one frame later.

    robomimic's ``next_obs[t]`` is the observation after ``actions[t]``: ``obs[t + 1]``, and
    for the last frame the observation after the final action, which no frame of ``obs``
    holds. That last row is the one the ingest kept (``last``, from the episode's extra
    field ``hdf5.next_obs_last``); a key it did not keep it for (a file ingested by an
    earlier kinodb, or not from HDF5) gets its last observation repeated. The keys in
    ``whole`` are written from the arrays the ingest kept whole (`put_next`).
    """

    def __init__(
        self, g: Any, next_obs: bool, last: dict[str, np.ndarray], whole: set[str], store: dict[str, Any]
    ) -> None:
        self.obs = g.create_group("obs")
        self.next = g.create_group("next_obs") if next_obs else None
        self.last, self.whole, self.store = last, whole, store

    def _next_of(self, key: str) -> Any:
        """The ``next_obs`` group to write ``key`` one frame later into (None: not to)."""
        return None if key in self.whole else self.next

    def put(self, key: str, values: np.ndarray) -> None:
        """Write a whole ``(T, ...)`` array under ``key``."""
        _new(self.obs, key, self.store, data=values)
        nxt = self._next_of(key)
        if nxt is not None:
            final = _final(self.last.get(key), np.asarray(values[-1]), ())
            _new(nxt, key, self.store, data=np.concatenate([values[1:], final[None]]))

    def put_frames(self, key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                   windows: Iterator[tuple[int, np.ndarray]], *, turn: tuple[int, ...]) -> None:  # fmt: skip
        """Write frames under ``key`` a window at a time."""
        nxt, final = self._next_of(key), self.last.get(key)
        _put_frames(self.obs, nxt, key, shape, dtype, windows, turn=turn, final=final, store=self.store)

    def put_next(self, key: str, values: np.ndarray, turn: tuple[int, ...]) -> None:
        """Write ``key``'s ``next_obs`` as the ingest kept it whole."""
        if self.next is not None:
            _put_array(self.next, key, values, turn or None, self.store)


def _final(row: np.ndarray | None, last: np.ndarray, turn: tuple[int, ...]) -> np.ndarray:
    """``next_obs``'s last row: the ``row`` the ingest kept (turned as the key's frames are)
    where it fits the key as written (its dtype, or the float dtype the ingest cast it to),
    else ``last``, the last observation."""
    if row is None or row.shape != last.shape or row.dtype.kind != last.dtype.kind:
        return last
    if row.dtype != last.dtype and row.dtype.kind != "f":
        return last
    row = row.astype(last.dtype, copy=False)
    return _rotated(row[None], turn)[0] if turn else row


def _put_frames(
    group: Any, next_group: Any, key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
    windows: Iterator[tuple[int, np.ndarray]], *, turn: tuple[int, ...], final: np.ndarray | None = None,
    store: dict[str, Any],
) -> None:  # fmt: skip
    """Write ``(start, frames)`` windows (``shape`` is the first dim and the per-frame shape)
    into a new dataset ``key`` of ``group``, and the frames one later into ``next_group``
    unless it is None, its last row ``final`` (`_final`); rotated 180 degrees on the axes
    ``turn`` names, if any."""
    ds = _new(group, key, store, shape=shape, dtype=dtype)
    nds = None if next_group is None else _new(next_group, key, store, shape=shape, dtype=dtype)
    last = None
    for start, frames in windows:
        if turn:
            frames = _rotated(frames, turn)
        stop = start + len(frames)
        ds[start:stop] = frames
        if nds is not None:  # these frames follow the frames before them: next_obs[t] = obs[t + 1]
            ahead = frames[1:] if start == 0 else frames
            if len(ahead):
                nds[stop - len(ahead) - 1 : stop - 1] = ahead
        last = frames[-1]
    if nds is not None and last is not None:
        nds[shape[0] - 1] = _final(final, np.asarray(last, dtype), turn)


def _array_windows(arr: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, frames)``: a 4-D array, ``WINDOW`` frames at a time (views of the map)."""
    for start in range(0, len(arr), WINDOW):
        yield start, arr[start : start + WINDOW]


def _rotated(frames: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``frames`` turned 180 degrees on ``axes`` (their own inverse)."""
    index = [slice(None)] * frames.ndim
    for axis in axes:
        index[axis] = slice(None, None, -1)
    return np.ascontiguousarray(frames[tuple(index)])


def _write_attrs(g: Any, meta: dict[str, Any]) -> None:
    """Episode metadata as demo attrs.

    ``ep_meta`` is the complete record: one JSON object with the task as ``lang`` (as
    robomimic and RoboCasa readers expect), the other built-in fields and the extra
    fields, nulls kept (``filter_keys`` too, in the episode's order, which ``mask/``
    cannot keep). Each field is also an attr of its own, for people and tools; unknown
    ``success`` and ``total_reward`` are left out there (HDF5 attrs have no null), as are
    names HDF5 cannot hold (a NUL) and ``filter_keys`` (``mask/`` lists them). The field
    ``attrs.model_file`` (the simulator model, tens of kilobytes of XML) is written once, as
    the attr ``model_file`` robomimic reads, and left out of ``ep_meta``.
    """
    fields = {k: v for k, v in meta.items() if k not in _DERIVED}
    model = SOURCE_ATTR + MODEL_FILE
    once = isinstance(fields.get(model), str) and "\x00" not in fields[model] and MODEL_FILE not in fields
    ep_meta = {"lang": fields.pop("task")}
    ep_meta.update(
        (f"extra.{k}" if k == "lang" else k, v) for k, v in fields.items() if not (once and k == model)
    )
    source = fields.get(EP_META)
    if isinstance(source, str) and "\x00" not in source:  # the source's own, as it was
        g.attrs["ep_meta"] = source
        g.attrs["kinodb_ep_meta"] = dumps(ep_meta)
        del fields[EP_META]
    else:
        g.attrs["ep_meta"] = dumps(ep_meta)
    g.attrs["task"] = _attr_value(ep_meta["lang"])
    for key, value in fields.items():
        if (value is None and key in _META_ATTRS) or "\x00" in key or key == FILTER_KEYS:
            continue
        name = key.removeprefix(SOURCE_ATTR)
        if key.startswith(SOURCE_ATTR) and name and name not in _OWN_ATTRS and name not in fields:
            g.attrs[name] = _source_attr(value)  # back under the source's name
        else:
            g.attrs[f"extra.{key}" if key in _DEMO_ATTRS else key] = _attr_value(value)


def _attr_value(value: Any) -> Any:
    """An HDF5 attr value: bools, int64, float64 and text as such, anything else as JSON text."""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, str) and "\x00" not in value:  # HDF5 text cannot hold a NUL
        return value
    return dumps(value)


def _source_attr(value: Any) -> Any:
    """An HDF5 attr value for a source attr kept as JSON: lists of numbers or bools as
    arrays, of text as arrays of text, anything else as `_attr_value` writes it."""
    kinds = {type(v) for v in _leaves(value)} if isinstance(value, list) else set()
    if len(kinds) == 1 and kinds <= {bool, int, float, str}:  # one kind, as an array holds them
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged
            return _attr_value(value)
        if arr.dtype.kind in "biuf":
            return arr
        if arr.dtype.kind == "U" and "\x00" not in "".join(arr.reshape(-1).tolist()):
            return arr.astype(require("h5py", extra="hdf5").string_dtype())
    return _attr_value(value)


def _leaves(value: list[Any]) -> Iterator[Any]:
    """The values of a (nested) list that are not lists."""
    for v in value:
        if isinstance(v, list):
            yield from _leaves(v)
        else:
            yield v


def _filter_keys(db: Database, i: int) -> list[str]:
    value = db.read_meta(i).get(FILTER_KEYS)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ConversionError(
            f"{db.path()}: episode {i}: extra field {FILTER_KEYS!r} must be a list of filter-key "
            f"names, got {value!r}"
        )
    return list(dict.fromkeys(value))


_RENAMED = {  # how to write a copy of the file where the thing has another name
    "array": "each episode's db.read_episode(i) added to a kinodb.Writer, the array under its new name in "
    "extra_arrays",
    "camera": "each episode's db.read_episode(i) added to a kinodb.Writer, the camera's frames under its new "
    "name in images (they are encoded again)",
    "state component": "kinodb.Writer(NEW, schema={'states': {'components': {NEW_NAME: [start, end], ...}}}), "
    "then Writer.copy_episode(db, i) for each episode, which copies the data byte for byte",
    "filter key": "Writer.copy_episode(db, i, extra={'filter_keys': [...]}) for each episode, the key under its "
    "new name",
}


def _h5_name(name: str, what: str, path: str) -> str:
    """``name`` (of a ``what`` of the file at ``path``) if it can be one HDF5 link name.

    Raises:
        ConversionError: it holds ``/`` or a NUL, or is empty or ``.``; the message says
            which, and how to export the file all the same.
    """
    if name and name != "." and "/" not in name and "\x00" not in name:
        return name
    if "/" in name:
        why = "it holds '/', which HDF5 reads as a path separator"
    elif "\x00" in name:
        why = "it holds a NUL character, which HDF5 names cannot hold"
    else:
        why = "HDF5 names cannot be empty" if not name else "HDF5 reads the name '.' as the group itself"
    suggested = (
        f"; {name.replace('/', '.')!r} would do, '/' written as '.' as the HDF5 ingest names the paths it reads"
        if "/" in name and "\x00" not in name and name.replace("/", ".") != "."
        else ""
    )
    article = "an" if what == "array" else "a"
    raise ConversionError(
        f"{path}: {what} {name!r} cannot be an HDF5 name: {why}. kinodb has no command that renames {article} "
        f"{what}: export to --format numpy, which keeps every name, or write a copy of the file with the {what} "
        f"renamed ({_RENAMED[what]}) and export the copy{suggested}"
    )
