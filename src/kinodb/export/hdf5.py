"""Export to the robomimic HDF5 layout, readable by robomimic and by ``kinodb.ingest``.

Layout::

    data                      attrs: total, env_args, [problem_info], kinodb_dataset, kinodb_export
                              (JSON text)
    data/demo_K               attrs: num_samples; ep_meta (JSON: the task as "lang", embodiment,
                              fps, success, total_reward, extra fields); the same fields as
                              attrs of their own (lists, nulls and text with NUL as JSON text)
        actions rewards       as stored (dtype kept)
        dones                 uint8, from is_terminal
        states                the ``sim_state`` extra array, when there is one
        timestamps <extra>    the other arrays, under their own names
        obs/<extra>           arrays ingested from ``obs/`` (depth, ...; the metadata's
                              ``hdf5.extra_arrays``) go back there
        obs/<component>       ``states`` split by the schema's named components (else obs/state),
                              each in the dtype and shape its HDF5 source had (the metadata's
                              ``hdf5.state_layout``) where that keeps the values
        obs/<camera>          uint8 (T, H, W, C), JPEG/PNG frames decoded, a window of
                              frames at a time
        next_obs/<key>        every obs key one frame later, the last frame repeated, as in
                              robomimic's own files (``next_obs=False``, ``kino export
                              --no-next-obs``: none, half the size)
    mask/<key>                demo names (bytes) from the ``filter_keys`` extra field

Image orientation: a file ingested with ``flip_images`` (``kino ingest --flip-images``,
for LIBERO, which stores frames upside down; the metadata's ``image_orientation`` is
``rotated_180``) holds its frames upright. By default what the ingest rotated is rotated
180 degrees back, so the export has the arrays and frames of the original file and ``kino
ingest --flip-images`` of the export gives back exactly the same file; the report says
so, and ``kinodb_dataset`` records ``image_orientation`` as ``as_stored`` (and no
``hdf5.rotated``). What the ingest rotated is its metadata's ``hdf5.rotated``: each
camera and extra array with its axes (``[1, 2]`` for ``(T, H, W[, C])``, ``[2, 3]`` for
channel-first frames); arrays it does not name stay as stored. The LeRobot and RLDS
ingests keep the same record as ``lerobot.rotated`` and ``rlds.rotated``: the record
read is that of the file's source format (`rotation_space`). Files ingested before the
record was kept have their cameras and 4-D extra arrays turned on axes 1 and 2, as the
HDF5 ingest did. A merge keeps a namespace only where its inputs agree on it; otherwise
each episode follows the record of the input it came from (its ``source_file``, the
metadata's ``merged_from``), and an episode whose input kept no record though it may
have rotated arrays (a merge of merges) is refused rather than written with wrong
pixels, as is a record that does not fit the file. A merge of files ingested with and
without ``--flip-images`` (``image_orientation`` ``mixed``) is exported one orientation
at a time: episodes whose frames stand differently are refused together, and a
``--filter`` on ``source_file`` picks those of one input. ``flip_images=False`` (``kino
export --keep-upright``) writes everything as the file holds it (frames upright),
recorded as ``rotated_180``, so that ingesting the export without ``--flip-images``
keeps them upright.

Demos are numbered ``demo_0``, ``demo_1``, ... in export order. robomimic takes each key's
shape from ``demo_0``, so the exported episodes must share the action and state dims and
each array's and camera's per-frame shape (a merge of robots is exported one robot at a
time, with ``--filter``). Arrays that only some episodes hold are left out, with a warning;
a camera that only some hold stays in those demos, which ``kinodb.ingest`` reads back (a
robomimic reader needs it left out of its obs keys), and so do per-frame tasks (the extra
field ``tasks`` with the array ``task_index``), which robomimic does not read.

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
from kinodb.kdb.reader import Database

logger = logging.getLogger(__name__)

SIM_STATE = "sim_state"  # the extra array that holds robomimic's flattened MuJoCo ``states``
FILTER_KEYS = "filter_keys"  # the extra field listing an episode's robomimic filter keys
ROBOSUITE_ENV_TYPE = 1  # robomimic EnvType.ROBOSUITE_TYPE
# The metadata's image_orientation, as the HDF5 ingest records it.
ORIENTATION_TURNED, ORIENTATION_AS_STORED = "rotated_180", "as_stored"
MERGE_FORMAT = "kinodb-merge"  # the source_format of a `kinodb.merge` output
MIXED = "mixed"  # a merge's image_orientation when its inputs' frames stand differently
# Where each ingest records what it rotated: ``<namespace>.rotated`` of its metadata.
_SPACES = ("hdf5", "lerobot", "rlds")
# Datasets and groups a demo already has: extra arrays must not take these names.
_DEMO_NAMES = frozenset(("actions", "rewards", "dones", "states", "obs", "next_obs", "action_dict"))
# kinodb's own arrays (and the simulator states), written where robomimic reads them.
_BUILTIN = frozenset(("actions", "states", "rewards", "is_terminal", "timestamps", SIM_STATE))
_META_ATTRS = ("embodiment", "task", "fps", "success", "total_reward")
_DERIVED = frozenset(("episode_id", "num_frames", "action_dim", "state_dim"))
# Demo attrs with a robomimic meaning: extra fields of these names are written as "extra.NAME".
_DEMO_ATTRS = frozenset(("num_samples", "model_file", "ep_meta", "camera_info"))

Split = list[tuple[str, int, int]]  # obs key, start, stop within ``states``
Turns = dict[str, tuple[int, ...]]  # camera or extra array -> the axes reversed to rotate it 180 degrees


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every demo of one export writes, decided before anything is written."""

    split: Split  # the obs keys ``states`` is split into
    paths: dict[str, str]  # extra arrays going back under obs/
    shapes: dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]]  # state keys' source layout
    skip: frozenset[str]  # arrays left out (only some episodes hold them)
    turns: dict[int, Turns]  # per episode, what to rotate 180 degrees back to the source's orientation
    next_obs: bool  # write next_obs beside obs


def write(
    db: Database, positions: list[int], out: str, facts: dict[str, Any], *, flip_images: bool = True,
    next_obs: bool = True,
) -> list[str]:  # fmt: skip
    """Write episodes ``positions`` of ``db`` to the new HDF5 file ``out``; return warnings.

    ``flip_images``: rotate frames that the ingest turned upright (metadata
    ``image_orientation`` ``rotated_180``) back to the source's orientation; False keeps
    them upright. Frames that were not turned are written as stored either way.
    ``next_obs``: write each demo's ``next_obs`` (every obs key one frame later, the last
    frame repeated), as robomimic's own files hold it; False halves the file.

    Raises:
        ConversionError: the episodes differ in action or state dims or in an array's or
            camera's per-frame shape (`check_layout`; nothing is written), a name cannot be
            an HDF5 name, names collide, or ``filter_keys`` is not a list of strings; or, with
            ``flip_images``, what the ingest rotated cannot be told (`_turn_back`).
        MissingExtraError: h5py is not installed.
    """
    h5py = require("h5py", extra="hdf5")
    partial, arrays, cameras = _check_layout(db, positions)
    # Per-frame tasks (task_index beside a list of tasks) stay in the demos that hold them:
    # robomimic reads only obs keys, actions, rewards and dones, and kinodb's ingest of an
    # export takes a demo-level array that some demos lack.
    if "task_index" in partial and _per_frame_tasks(db, arrays["task_index"]):
        del partial["task_index"]
    split, warnings = state_split(db, positions)
    merge = _merge_inputs(db)
    paths = _obs_paths(_array_paths(db, merge), split, cameras)
    _check_names(db, split, paths, arrays, cameras, frozenset(partial))
    for name, n in sorted(partial.items()):
        warnings.append(
            f"array {name!r} is in {n} of {len(positions)} exported episodes; left out, since every "
            "demo of a robomimic file holds the same datasets (export those episodes apart to keep it)"
        )
    orientation = _one_orientation(db, positions, merge)
    turns = _turn_back(db, positions, merge, warnings) if flip_images else {}
    plan = _Plan(split, paths, _state_layout(db), frozenset(partial), turns, next_obs)
    dataset, facts = exported_dataset(db, positions, {**facts, "next_obs": next_obs})
    with h5py.File(out, "x") as f:
        _write_file(f, db, positions, plan, _dataset_info(dataset, bool(turns), orientation), facts)
    for line in warnings:
        logger.info("%s", line)  # the report carries them; kino prints them once, as warnings
    return warnings


def _write_file(
    f: Any, db: Database, positions: list[int], plan: _Plan, dataset: dict[str, Any], facts: dict[str, Any]
) -> None:
    """Write the demos, the ``data`` attrs and the filter keys into the open HDF5 file ``f``."""
    data = f.create_group("data")
    masks: dict[str, list[str]] = {}
    total = 0
    for k, i in enumerate(positions):
        name = f"demo_{k}"
        total += _write_demo(data.create_group(name), db, i, plan)
        for key in _filter_keys(db, i):
            masks.setdefault(key, []).append(name)
    data.attrs["total"] = np.int64(total)
    env = env_args(db, positions)
    data.attrs["env_args"] = env if isinstance(env, str) else dumps(env)
    problem = db.metadata().get("problem_info")
    if problem is not None:
        data.attrs["problem_info"] = problem if isinstance(problem, str) else dumps(problem)
    data.attrs["kinodb_dataset"] = dumps(dataset)
    data.attrs["kinodb_export"] = dumps(facts)
    for key, demos in masks.items():
        f.create_dataset(f"mask/{_h5_name(key, 'filter key')}", data=np.array(demos, dtype="S"))


def _one_orientation(db: Database, positions: list[int], merge: dict[str, _Input] | None) -> Any:
    """The ``image_orientation`` that the episodes ``positions`` of a file whose frames stand
    differently (``mixed``) share; None for any other file.

    Each episode's is that of the merge input it came from (its ``source_file``); an
    episode without cameras has none.

    Raises:
        ConversionError: the episodes' frames stand differently, or how some stand cannot
            be told (the file is no merge, or their input is itself mixed or not listed).
    """
    if db.metadata().get("image_orientation") != MIXED:
        return None
    found: dict[Any, list[str]] = {}  # orientation -> the inputs whose episodes stand so
    for i in (i for i in positions if db.cameras(i)):
        path = db.read_meta(i).get("source_file")
        given = merge.get(path) if merge is not None and isinstance(path, str) else None
        meta = given.metadata if given is not None else None
        files = found.setdefault(MIXED if meta is None else meta.get("image_orientation"), [])
        files += [] if str(path) in files else [str(path)]
    if len(found) < 2 and MIXED not in found:
        return next(iter(found), None)
    what = "stand differently from episode to episode (image_orientation 'mixed')"
    if merge is None:
        raise ConversionError(
            f"{db.path()}: its camera frames {what}, and this file, no merge, does not say which stand how, so "
            "no one orientation can be written back: export to --format numpy or lerobot, which keep the frames "
            "as the file holds them"
        )
    listed = "; ".join(
        f"{o!r}: {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" for o, files in found.items()
    )
    lost = found.get(MIXED, [])
    again = f"; {lost[0]} is itself mixed (or not an input): export from it instead" if lost else ""
    example = next((files[0] for o, files in found.items() if o != MIXED), lost[0] if lost else "...")
    raise ConversionError(
        f"{db.path()}: the camera frames of the exported episodes {what}: a merge of files ingested with and "
        f"without --flip-images (image_orientation by source_file: {listed}), so no one orientation can be "
        f"written back: export the episodes of each source apart, e.g. with --filter "
        f"\"source_file = '{example}'\"{again}"
    )


def _turn_back(
    db: Database, positions: list[int], merge: dict[str, _Input] | None, warnings: list[str]
) -> dict[int, Turns]:
    """Per episode, the cameras and arrays to rotate back to the ingested source's orientation,
    saying so in ``warnings``.

    Raises:
        ConversionError: what the ingest rotated cannot be told: a record (``hdf5.rotated``,
            ``lerobot.rotated``, ``rlds.rotated``) that does not fit the file, or an episode
            whose input kept none though it may have rotated arrays.
    """
    own = _rotations(db.metadata(), db.path(), merge is not None, rotation_space(db.dataset_info()))
    if own.rotated is not None:
        merge = None  # kept by the merge: every input recorded the same
    elif merge is None and own.orientation != ORIENTATION_TURNED:
        return {}  # nothing was turned on ingest
    turns: dict[int, Turns] = {}
    for i in positions:
        source = own if merge is None else _input_of(db, i, merge, own)
        turned = _episode_turns(db, i, source)
        if turned:
            turns[i] = turned
    if turns:
        warnings.append(
            "camera frames (and the arrays turned with them) rotated 180 degrees back to the orientation of "
            "the ingested source (this .kdb holds them upright: it was ingested with --flip-images); ingest the export with --flip-images, "
            "as the original, to get the same frames, or export with --keep-upright (flip_images=False) "
            "to write them upright"
        )
    return turns


@dataclass(frozen=True, slots=True)
class _Rotations:
    """What one ingest rotated 180 degrees (``--flip-images``), as its metadata records it."""

    where: str  # the file the record is of, for messages
    orientation: Any  # its metadata's image_orientation
    rotated: Turns | None  # SPACE.rotated: each rotated camera and array with its axes; None: not recorded
    lost: str = ""  # why what it rotated cannot be told without a record (a merge kept none), else ""
    space: str = "hdf5"  # the metadata namespace the record is kept in


@dataclass(frozen=True, slots=True)
class _Input:
    """One input of a merge, as the merge's metadata and schema list it."""

    metadata: dict[str, Any] | None  # None: the path is listed twice, differently
    merged: bool  # the input was itself a merge
    space: str | None  # where its metadata keeps the record of what its ingest rotated (`rotation_space`)


_RECORD_FIX = "export with --keep-upright (flip_images=False) to write every array as this file holds it"
_NO_RECORD = (
    "a merge that kept no record (metadata hdf5.rotated, lerobot.rotated or rlds.rotated) of what its "
    "inputs' ingest rotated"
)


def rotation_space(info: dict[str, Any]) -> str | None:
    """Where the metadata of the file that ``info`` describes keeps the record of what its
    ingest rotated: ``lerobot`` for a LeRobot ingest, ``rlds`` for an RLDS one, ``hdf5``
    for any other (the HDF5 ingest, a file written directly).

    ``info`` is a dataset block (``db.dataset_info()``) or an entry of a merge's schema
    ``sources``. A merge's record is where its inputs' (those it holds episodes of) is,
    None when they keep it in different places.
    """
    fmt = info.get("source_format")
    if fmt != MERGE_FORMAT:
        fmt = fmt if isinstance(fmt, str) else ""
        return "lerobot" if fmt.startswith("lerobot") else "rlds" if fmt == "rlds" else "hdf5"
    schema = info.get("schema")
    sources = schema.get("sources") if isinstance(schema, dict) else None
    spaces = {
        rotation_space(s)
        for s in (sources if isinstance(sources, list) else [])
        if isinstance(s, dict) and s.get("episodes") != 0
    }
    return spaces.pop() if len(spaces) == 1 else None if spaces else "hdf5"


def _rotations(meta: dict[str, Any], where: str, merged: bool, space: str | None) -> _Rotations:
    """The record in ``meta`` (the metadata of ``where``, a merge if ``merged``) of what its
    ingest rotated, kept under ``space`` (None: no one place, no record).

    Raises:
        ConversionError: the record is not a map of names to two axes, or names frames
            rotated while ``image_orientation`` says they were not.
    """
    block = meta.get(space) if space is not None else None
    recorded = block.get("rotated") if isinstance(block, dict) else None
    orientation = meta.get("image_orientation")
    if recorded is None:
        return _Rotations(where, orientation, None, _NO_RECORD if merged else "", space or "hdf5")
    if not isinstance(recorded, dict):
        raise ConversionError(
            f"{where}: the metadata's {space}.rotated is {recorded!r}, not a map of cameras and arrays to the "
            f"axes the ingest rotated; {_RECORD_FIX}"
        )
    turns: Turns = {}
    for name, axes in recorded.items():
        if not (isinstance(axes, list) and len(axes) == 2 and all(type(a) is int for a in axes)) or not (
            0 < axes[0] < axes[1]
        ):
            raise ConversionError(
                f"{where}: the metadata's {space}.rotated[{name!r}] is {axes!r}, not two frame axes in "
                f"increasing order (such as [1, 2]); {_RECORD_FIX}"
            )
        turns[str(name)] = (axes[0], axes[1])
    if turns and orientation is not None and orientation != ORIENTATION_TURNED:
        raise ConversionError(
            f"{where}: the metadata's {space}.rotated names {', '.join(sorted(turns)[:6])} as rotated 180 "
            f"degrees on ingest, but its image_orientation is {orientation!r}, so the record does not "
            f"describe what the file holds; {_RECORD_FIX}"
        )
    return _Rotations(where, orientation, turns, space=str(space))


def _merge_inputs(db: Database) -> dict[str, _Input] | None:
    """A merge's inputs by absolute path (their episodes' ``source_file``); None if ``db`` is no merge."""
    info = db.dataset_info()
    if info.get("source_format") != MERGE_FORMAT:
        return None
    sources = (info.get("schema") or {}).get("sources")
    sources = [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []
    merges = {s.get("file") for s in sources if s.get("source_format") == MERGE_FORMAT}
    spaces: dict[Any, set[str | None]] = {}
    for s in sources:
        spaces.setdefault(s.get("file"), set()).add(rotation_space(s))
    listed = (info.get("metadata") or {}).get("merged_from")
    inputs: dict[str, _Input] = {}
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        path, meta = entry["file"], entry.get("metadata")
        meta = meta if isinstance(meta, dict) else None
        if path in inputs and inputs[path].metadata != meta:
            meta = None
        space = spaces.get(path, {"hdf5"})  # not listed in sources: as the record was read before
        inputs[path] = _Input(meta, path in merges, next(iter(space)) if len(space) == 1 else None)
    return inputs


def _input_of(db: Database, i: int, merge: dict[str, _Input], own: _Rotations) -> _Rotations:
    """The record of what the ingest of merged episode ``i``'s input rotated."""
    path = db.read_meta(i).get("source_file")
    given = merge.get(path) if isinstance(path, str) else None
    if given is None or given.metadata is None:
        why = "which is not one input (listed once) of the metadata's merged_from"
        return _Rotations(f"the source_file {path!r}", own.orientation, None, why)
    return _rotations(given.metadata, str(path), given.merged, given.space)


def _episode_turns(db: Database, i: int, source: _Rotations) -> Turns:
    """Episode ``i``'s cameras and arrays that ``source`` says its ingest rotated, with the axes.

    Raises:
        ConversionError: the record names an array with fewer axes than it says were
            rotated; or ``source`` kept no record and the episode holds arrays of 3 or 4
            dims, or camera frames of a merge whose frames stand differently.
    """
    cameras = {name: tuple(int(d) for d in cam["shape"]) for name, cam in db.cameras(i).items()}
    arrays = {name: arr.shape for name, arr in db._episode_arrays(i).items()}
    if source.rotated is not None:
        turns: Turns = {}
        for name, axes in source.rotated.items():
            shape = cameras.get(name, arrays.get(name))
            if shape is not None and axes[-1] >= len(shape):
                kind, held = "camera" if name in cameras else "array", ", ".join(map(str, shape[1:]))
                of = "" if source.where == db.path() else f" of its input {source.where}"
                raise ConversionError(
                    f"{db.path()}: episode {i} holds the {kind} {name!r} as (T, {held}), but the metadata's "
                    f"{source.space}.rotated{of} says it was rotated on axes {list(axes)}, which it does not "
                    f"have; {_RECORD_FIX}"
                )
            if shape is not None:
                turns[name] = axes
        return turns
    framed = sorted(name for name, shape in arrays.items() if len(shape) >= 3)
    if (source.lost and framed) or (source.orientation == MIXED and (cameras or framed)):
        why = (
            source.lost
            or "whose frames stand differently from episode to episode (image_orientation 'mixed')"
        )
        held = ", ".join(framed[:6]) + (", ..." if len(framed) > 6 else "") if framed else "cameras"
        raise ConversionError(
            f"{db.path()}: episode {i} comes from {source.where}, {why}; which of its arrays and frames "
            f"({held}) were rotated 180 degrees on ingest (--flip-images) cannot be told, so they cannot be "
            f"turned back: export its episodes from that file itself, or {_RECORD_FIX}"
        )
    if source.orientation != ORIENTATION_TURNED:
        return {}
    # Ingested before the record was kept: that ingest turned the cameras and every 4-D array.
    return {name: (1, 2) for name in [*cameras, *(n for n, shape in arrays.items() if len(shape) == 4)]}


def _per_frame_tasks(db: Database, seen: dict[tuple[int, ...], list[int]]) -> bool:
    """Whether every episode holding ``task_index`` (``seen``: by shape) has a list of tasks beside it."""
    return all(isinstance(db.read_meta(i).get("tasks"), list) for eps in seen.values() for i in eps)


def turned_upright(db: Database) -> bool:
    """Whether ``db``'s frames were rotated 180 degrees on ingest (``--flip-images``)."""
    return bool(db.metadata().get("image_orientation") == ORIENTATION_TURNED)


def _dataset_info(info: dict[str, Any], turned_back: bool, orientation: Any) -> dict[str, Any]:
    """The exported dataset info, its ``image_orientation`` that of the exported frames
    (``orientation``: that of the episodes exported from a ``mixed`` file, else None).

    The ingest reads it to tell upright frames from a LIBERO file's upside-down ones, and
    so whether to advise ``--flip-images``. Frames turned back are no longer rotated: the
    record of what was (``hdf5.rotated``, ``lerobot.rotated``, ``rlds.rotated``) is left out.
    """
    if turned_back:
        meta = {**info["metadata"], "image_orientation": ORIENTATION_AS_STORED}
        for space in _SPACES:
            if isinstance(meta.get(space), dict):
                meta[space] = {k: v for k, v in meta[space].items() if k != "rotated"}
        info = {**info, "metadata": meta}
    elif orientation is not None:
        info = {**info, "metadata": {**info["metadata"], "image_orientation": orientation}}
    return info


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
    taken = {key for key, _, _ in split} | set(cameras)
    return {name: path for name, path in paths.items() if path.split("/")[1] not in taken}


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
        target = _h5_name(name, "array")
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
        if _h5_name(name, "camera") in components:
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
    dims = set(db.episodes()["state_dim"][positions].tolist())
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
    return [(_h5_name(name, "state component"), a, b) for a, b, name in spans], []


def env_args(db: Database, positions: list[int]) -> dict[str, Any] | str:
    """robomimic's ``env_args``: the source's own when it had one, else a minimal one.

    The minimal one names the environment after the metadata's ``env_name`` (else the
    file), and records the robot (``robots``) and control rate (``control_freq``) in
    ``env_kwargs`` when every exported episode shares them, as robosuite does.
    """
    meta = db.metadata()
    given = meta.get("env_args")
    if isinstance(given, str):
        try:
            parsed = json.loads(given)
        except ValueError:
            return given  # keep the source's text as it was
        given = parsed
    if isinstance(given, dict):
        return given
    name = meta.get("env_name")
    if not isinstance(name, str) or not name:
        name = os.path.splitext(os.path.basename(db.path()))[0]
    table = db.episodes()
    kwargs: dict[str, Any] = {}
    robots = set(table["embodiment"][positions].tolist())
    if len(robots) == 1 and robots != {"unknown"}:
        kwargs["robots"] = robots.pop()
    rates = set(table["fps"][positions].tolist())
    if len(rates) == 1:
        kwargs["control_freq"] = rates.pop()
    return {"env_name": name, "type": ROBOSUITE_ENV_TYPE, "env_kwargs": kwargs}


def _array_paths(db: Database, merge: dict[str, _Input] | None) -> dict[str, str]:
    """Where extra arrays ingested from HDF5 came from (``obs/agentview_depth``, ...), so
    they go back there: robomimic reads every observation key under ``obs/``.

    A merge whose inputs' ``hdf5`` metadata differ keeps it with each input only: there the
    paths the inputs record are taken, but not a name that two inputs record differently.
    """
    meta = db.metadata()
    given = [meta] if merge is None or isinstance(meta.get("hdf5"), dict) else [
        m.metadata for m in merge.values() if m.metadata is not None
    ]  # fmt: skip
    out: dict[str, str] = {}
    clash: set[str] = set()
    for m in given:
        hdf5 = m.get("hdf5")
        recorded = hdf5.get("extra_arrays") if isinstance(hdf5, dict) else None
        for name, path in (recorded if isinstance(recorded, dict) else {}).items():
            if _obs_path(path) and out.setdefault(str(name), path) != path:
                clash.add(str(name))
    return {name: path for name, path in out.items() if name not in clash}


def _obs_path(path: Any) -> bool:
    """Whether ``path`` is ``obs/KEY`` with ``KEY`` one HDF5 name."""
    parts = path.split("/") if isinstance(path, str) else []
    return (
        len(parts) == 2
        and parts[0] == "obs"
        and bool(parts[1])
        and "\x00" not in parts[1]
        and parts[1] != "."
    )


def _state_layout(db: Database) -> dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]]:
    """Each state key's dtype and per-frame shape in the HDF5 file it was ingested from
    (the dtype None where the ingest cast the states to a dtype the user chose)."""
    meta = db.metadata()
    recorded = (meta.get("hdf5") or {}).get("state_layout")
    options = (meta.get("ingest") or {}).get("options") or {}
    cast = isinstance(options, dict) and options.get("dtype") is not None  # --dtype: keep the chosen one
    out: dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]] = {}
    for name, spec in (recorded if isinstance(recorded, dict) else {}).items():
        try:
            out[str(name)] = (None if cast else np.dtype(spec["dtype"]), tuple(int(d) for d in spec["shape"]))
        except (KeyError, TypeError, ValueError):
            continue  # not a layout this version wrote: the component keeps the states' form
    return out


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
    g.create_dataset("actions", data=ep.pop("actions"))
    g.create_dataset("rewards", data=ep.pop("rewards"))
    g.create_dataset("dones", data=ep.pop("is_terminal").astype(np.uint8))
    states = ep.pop("states")
    turns = plan.turns.get(i, {})
    obs = _Obs(g, plan.next_obs)
    if states.shape[1]:
        for key, a, b in plan.split:
            part = np.ascontiguousarray(states[:, a : b if b >= 0 else None])
            obs.put(key, _component(part, plan.shapes.get(key)))
    for name, arr in ep.items():  # timestamps and extra arrays
        if name in plan.skip:
            continue
        if name in plan.paths and plan.paths[name] not in g:  # back under obs/, where it was ingested from
            key = plan.paths[name].split("/")[1]
            if arr.ndim == 4 or name in turns:  # image-like (depth): the ingest may have turned it
                obs.put_frames(key, arr.shape, arr.dtype, _array_windows(arr), turn=turns.get(name, ()))
            else:
                obs.put(key, arr)
            continue
        target = "states" if name == SIM_STATE else _h5_name(name, "array")
        if name != SIM_STATE and target in _DEMO_NAMES:  # `_check_names` refused the others
            raise ConversionError(f"{db.path()}: episode {i}: array {name!r} would overwrite {target!r}")
        if arr.ndim == 4 or name in turns:
            _put_frames(g, None, target, arr.shape, arr.dtype, _array_windows(arr), turn=turns.get(name, ()))
        else:
            g.create_dataset(target, data=arr)
    for name, cam in db.cameras(i).items():
        shape = tuple(int(d) for d in cam["shape"])
        obs.put_frames(_h5_name(name, "camera"), shape, np.dtype(np.uint8), camera_windows(db, i, name, T),
                       turn=turns.get(name, ()))  # fmt: skip
    _write_attrs(g, meta)
    return T


class _Obs:
    """A demo's ``obs`` group and, when wanted, its ``next_obs``: each key one frame
    later, the last frame repeated (robomimic's own files: ``next_obs[t]`` is the
    observation after ``actions[t]``, and the last one, which no frame holds, is the last
    observation again)."""

    def __init__(self, g: Any, next_obs: bool) -> None:
        self.obs = g.create_group("obs")
        self.next = g.create_group("next_obs") if next_obs else None

    def put(self, key: str, values: np.ndarray) -> None:
        """Write a whole ``(T, ...)`` array under ``key``."""
        self.obs.create_dataset(key, data=values)
        if self.next is not None:
            self.next.create_dataset(key, data=np.concatenate([values[1:], values[-1:]]))

    def put_frames(self, key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                   windows: Iterator[tuple[int, np.ndarray]], *, turn: tuple[int, ...]) -> None:  # fmt: skip
        """Write frames under ``key`` a window at a time."""
        _put_frames(self.obs, self.next, key, shape, dtype, windows, turn=turn)


def _put_frames(
    group: Any, next_group: Any, key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
    windows: Iterator[tuple[int, np.ndarray]], *, turn: tuple[int, ...],
) -> None:  # fmt: skip
    """Write ``(start, frames)`` windows (``shape`` is the first dim and the per-frame shape)
    into a new dataset ``key`` of ``group``, and the frames one later into ``next_group``
    unless it is None; rotated 180 degrees on the axes ``turn`` names, if any."""
    ds = group.create_dataset(key, shape=shape, dtype=dtype)
    nds = None if next_group is None else next_group.create_dataset(key, shape=shape, dtype=dtype)
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
        nds[shape[0] - 1] = last


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
    fields, nulls kept. Each field is also an attr of its own, for people and tools;
    unknown ``success`` and ``total_reward`` are left out there (HDF5 attrs have no
    null), as are names HDF5 cannot hold (a NUL).
    """
    fields = {k: v for k, v in meta.items() if k not in _DERIVED and k != FILTER_KEYS}
    ep_meta = {"lang": fields.pop("task")}
    ep_meta.update((f"extra.{k}" if k == "lang" else k, v) for k, v in fields.items())
    g.attrs["ep_meta"] = dumps(ep_meta)
    g.attrs["task"] = _attr_value(ep_meta["lang"])
    for key, value in fields.items():
        if (value is None and key in _META_ATTRS) or "\x00" in key:
            continue
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


def _h5_name(name: str, what: str) -> str:
    """``name`` if it can be one HDF5 link name.

    Raises:
        ConversionError: it holds ``/`` or a NUL, or is empty or ``.``.
    """
    if not name or name == "." or "/" in name or "\x00" in name:
        raise ConversionError(
            f"{what} name {name!r} cannot be an HDF5 dataset name (no '/', NUL or '.'); rename it"
        )
    return name
