"""Export to a zarr replay buffer: diffusion_policy's ``ReplayBuffer`` layout, readable by
diffusion_policy, UMI and zarr itself, and by ``kinodb.ingest``.

Layout (zarr format 2, which zarr 2 and zarr 3 both read; a folder, or with an output
named ``*.zarr.zip`` a zip archive of one, entries stored uncompressed, as zarr's
``ZipStore`` writes them for diffusion_policy's ``save_to_store`` and UMI)::

    .zattrs                 fps (when every episode has the same), kinodb_export (the export's
                            facts and which array holds what), kinodb_dataset (the file's
                            dataset block: schema, metadata)
    kinodb_episodes.jsonl   each episode's metadata (task, embodiment, success, total reward,
                            extra fields), a JSON object a line, in row order
    data/action             (N, A) the actions, dtype kept
    data/state              (N, S) the states; or, where the schema's ``states.components``
                            tile them, one array per component (UMI's robot0_eef_pos, ...)
    data/timestamp          (N,) where the episodes hold timestamps
    data/reward             (N,) the rewards
    data/done               (N,) bool, the terminal flags
    data/<camera>           (N, H, W, C) uint8, every frame decoded (JPEG frames as kinodb's
                            readers decode them), as stored (frames an ingest turned upright
                            stay upright)
    data/<array>            the extra arrays, dtype and per-frame shape kept
    meta/episode_ends       (E,) int64, each episode's exclusive end row
    meta/<key>              an extra field ``meta.KEY`` (as a zarr ingest names the rows of
                            ``meta/`` arrays) that every episode holds as a number or a bool
                            (bool, int64, uint64 or float64)

Rows are the exported episodes' frames in export order. Every array is chunked along its
rows only (about 4 MiB a chunk, and no more rows than the export holds) and compressed
with Blosc LZ4 at level 5, as diffusion_policy's default compressor, with byte shuffle on
(diffusion_policy's leaves it off), which packs float arrays tighter.

An array must have one dtype and per-frame shape over all the episodes, and every
episode must hold every camera: episodes that differ (a merge of robots) are exported one
kind at a time, with ``--filter``, as the error says. An extra array that only some
episodes hold is left out, with a warning. A key that would be taken twice (an extra
array named ``reward``, a component named like a camera) gets ``_`` appended; the
``kinodb_export`` record says which array holds what, so that ``kinodb.ingest`` gives
back the file: arrays bit for bit, frames pixel for pixel (ingest with ``--image-codec
png`` or ``raw`` to keep them so), the states' components, the metadata.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.export._base import (
    array_forms,
    camera_windows,
    dumps,
    exported_dataset,
    one_value,
    shape_text,
    split_advice,
)
from kinodb.kdb.reader import Database

EPISODES = "kinodb_episodes.jsonl"
"""The store's file of episode metadata, one JSON object per episode, in row order."""
CHUNK_BYTES = 4 << 20  # uncompressed bytes per chunk, about; diffusion_policy's own are of this order
RESERVED = ("action", "state", "timestamp", "reward", "done")
_BUILTIN_ARRAYS = ("actions", "states", "rewards", "is_terminal", "timestamps")


def write(
    db: Database, positions: list[int], out: str, facts: dict[str, Any], *, zipped: bool = False
) -> list[str]:
    """Write episodes ``positions`` of ``db`` as a replay buffer at ``out``: a new folder, or
    with ``zipped`` a zip archive of one; return the warnings.

    Raises:
        ConversionError: the episodes differ in an array's dtype or shape, or in the
            cameras they hold; a name cannot be a zarr key.
        MissingExtraError: numcodecs is not installed.
    """
    numcodecs = require("numcodecs", extra="zarr")
    plan, warnings = _plan(db, positions)
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    info, facts = exported_dataset(db, positions, facts)
    table = db.episodes()
    fps = sorted({float(f) for f in table["fps"][positions].tolist()})
    episodes = [dict(db.read_meta(i)) for i in positions]
    root_attrs: dict[str, Any] = {"kinodb_export": {**facts, "layout": plan.record()}, "kinodb_dataset": info}
    if len(fps) == 1:
        root_attrs = {"fps": fps[0], **root_attrs}
    frames = int(table["num_frames"][positions].sum())
    with _Sink(out, zipped=zipped) as sink:
        sink.json(".zgroup", {"zarr_format": 2})
        sink.text(".zattrs", dumps(root_attrs))
        # One line per episode, beside the groups (zarr lists no plain file as a child): a
        # dataset of 100,000 episodes would make root attributes of tens of megabytes,
        # which every open of the store would parse.
        sink.text(EPISODES, "".join(dumps(e) + "\n" for e in episodes))
        for group in ("data", "meta"):
            sink.json(f"{group}/.zgroup", {"zarr_format": 2})
        arrays = {
            key: _ArrayWriter(sink, f"data/{key}", spec, frames, compressor)
            for key, spec in plan.data.items()
        }
        ends = np.empty(len(positions), np.int64)
        row = 0
        for k, i in enumerate(positions):
            T = int(table["num_frames"][i])
            for key, values in _episode_arrays(db, i, T, plan):
                arrays[key].append(values)
            row += T
            ends[k] = row
        for writer in arrays.values():
            writer.close()
        _whole(sink, "meta/episode_ends", ends, compressor)
        for key, values in plan.meta_fields(table, positions).items():
            _whole(sink, f"meta/{key}", values, compressor)
    return warnings


# -- what goes where ------------------------------------------------------------------------


@dataclass
class _Spec:
    """One ``data/`` array: where its values come from, its dtype and per-frame shape."""

    role: str  # "actions", "states", "state_part", "rewards", "is_terminal", "timestamps", "camera", "extra"
    name: str  # the kinodb name: the array's, the camera's, or the state component's
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    span: tuple[int, int] | None = None  # a state component's columns


@dataclass
class _Plan:
    data: dict[str, _Spec] = field(default_factory=dict)  # zarr key -> spec, in writing order
    fields: dict[str, tuple[str, np.dtype[Any]]] = field(default_factory=dict)  # meta/ key -> (field, dtype)

    def record(self) -> dict[str, Any]:
        """Which array holds what, for `kinodb.ingest.zarr_replay` to give the file back."""
        states = [k for k, s in self.data.items() if s.role in ("states", "state_part")]
        return {
            "actions": next(k for k, s in self.data.items() if s.role == "actions"),
            "states": states,
            "state_components": {k: s.name for k, s in self.data.items() if s.role == "state_part"},
            "timestamps": next((k for k, s in self.data.items() if s.role == "timestamps"), None),
            "rewards": next(k for k, s in self.data.items() if s.role == "rewards"),
            "is_terminal": next(k for k, s in self.data.items() if s.role == "is_terminal"),
            "cameras": {k: s.name for k, s in self.data.items() if s.role == "camera"},
            "extra_arrays": {k: s.name for k, s in self.data.items() if s.role == "extra"},
            "meta": {key: name for key, (name, _) in self.fields.items()},
        }

    def meta_fields(self, table: dict[str, Any], positions: list[int]) -> dict[str, np.ndarray]:
        """The ``meta/`` arrays: each field's values over ``positions`` (``table`` is
        ``db.episodes()``), in the dtype `_numeric_fields` chose."""
        return {
            key: np.asarray(list(table[name][positions]), dtype) for key, (name, dtype) in self.fields.items()
        }


def _plan(db: Database, positions: list[int]) -> tuple[_Plan, list[str]]:
    """Decide the arrays from every exported episode's arrays and cameras, before writing."""
    table = db.episodes()
    why = "a replay buffer's arrays hold one row shape for all episodes"
    one_value(db, table, positions, "action_dim", "action dims", why)
    state_dim = int(one_value(db, table, positions, "state_dim", "state dims", why))
    kinds, held = array_forms(db, table, positions, why)
    cameras: dict[str, dict[tuple[int, ...], list[int]]] = {}
    for i in positions:
        for cam, spec in db.cameras(i).items():
            cameras.setdefault(cam, {}).setdefault(tuple(int(d) for d in spec["shape"][1:]), []).append(i)
    warnings = []
    for name, sized in cameras.items():
        if len(sized) > 1 or sum(map(len, sized.values())) != len(positions):
            sizes = ", ".join(f"{shape_text(s)} in {len(g)}" for s, g in list(sized.items())[:4])
            group = max(sized.values(), key=len)
            raise ConversionError(
                f"{db.path()}: camera {name!r} is held by {sum(map(len, sized.values()))} of the {len(positions)} "
                f"episodes ({sizes}, as (H, W, C)); a replay buffer's camera holds a frame of one size for every "
                f"row: export them separately, {split_advice(table, group)}"
            )
    plan = _Plan()
    taken: set[str] = set()

    def key_for(name: str, wanted: str) -> str:
        _check_key(db, name, wanted)
        key = wanted
        while key in taken:
            key += "_"
        taken.add(key)
        return key

    def form(name: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
        return kinds[name]

    taken.update(RESERVED)
    plan.data["action"] = _Spec("actions", "actions", *form("actions"))
    if state_dim:
        dtype, _ = form("states")
        parts = _components(db.schema().get("states", {}), state_dim)
        if parts is None:
            plan.data["state"] = _Spec("states", "states", dtype, (state_dim,))
        else:
            taken.discard("state")
            for comp, (a, b) in parts:
                plan.data[key_for(comp, comp)] = _Spec("state_part", comp, dtype, (b - a,), (a, b))
    if "timestamps" in kinds and held["timestamps"] == len(positions):
        plan.data["timestamp"] = _Spec("timestamps", "timestamps", *form("timestamps"))
    elif "timestamps" in kinds:
        warnings.append(
            f"timestamps are held by {held['timestamps']} of the {len(positions)} episodes, and a replay buffer's "
            "arrays hold a row for every frame: left out (export the episodes that hold them with --filter to "
            "keep them)"
        )
    plan.data["reward"] = _Spec("rewards", "rewards", *form("rewards"))
    plan.data["done"] = _Spec("is_terminal", "is_terminal", *form("is_terminal"))
    for cam in sorted(cameras):
        (shape,) = cameras[cam]
        plan.data[key_for(cam, cam)] = _Spec("camera", cam, np.dtype(np.uint8), shape)
    for name in sorted(kinds):
        if name in _BUILTIN_ARRAYS:
            continue
        if held[name] != len(positions):
            warnings.append(
                f"the array {name!r} is held by {held[name]} of the {len(positions)} episodes, and a replay "
                "buffer's arrays hold a row for every frame: left out (export the episodes that hold it with "
                "--filter to keep it)"
            )
            continue
        plan.data[key_for(name, name)] = _Spec("extra", name, *form(name))
    meta_taken = {"episode_ends"}
    for name, dtype in _numeric_fields(db, positions, warnings).items():
        wanted = name.removeprefix("meta.")
        if not _valid_key(wanted):
            warnings.append(f"the field {name!r} cannot name a zarr array: left out of meta/ (each episode's "
                            "metadata keeps it)")  # fmt: skip
            continue
        key = wanted
        while key in meta_taken:
            key += "_"
        meta_taken.add(key)
        plan.fields[key] = (name, dtype)
    return plan, warnings


def _components(part: dict[str, Any], dim: int) -> list[tuple[str, tuple[int, int]]] | None:
    """The schema's state components in column order where they tile ``[0, dim)``, else None."""
    comps = part.get("components")
    if not isinstance(comps, dict) or not comps:
        return None
    spans = sorted(((int(v[0]), int(v[1])), str(k)) for k, v in comps.items())
    edge = 0
    for (a, b), _ in spans:
        if a != edge or b <= a:
            return None
        edge = b
    if edge != dim:
        return None
    return [(name, span) for span, name in spans]


_INT64 = np.iinfo(np.int64)
_UINT64 = np.iinfo(np.uint64)


def _numeric_fields(db: Database, positions: list[int], warnings: list[str]) -> dict[str, np.dtype[Any]]:
    """``meta.KEY`` fields (a zarr ingest's ``meta/`` rows) that every exported episode
    holds as a number, or every one as a bool, and the dtype of their ``meta/`` array:
    bool, int64, uint64 (whole numbers of 2**63 or more), else float64. Whole numbers that
    neither integer type holds stay in the episodes' metadata only, with a warning."""
    table = db.episodes()
    out: dict[str, np.dtype[Any]] = {}
    for column in sorted(c for c in table if c.startswith("meta.") and c != "meta."):
        values = table[column][positions]
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if all(isinstance(v, bool) for v in items):
            out[column] = np.dtype(bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            low, high = min(items), max(items)
            if _INT64.min <= low and high <= _INT64.max:
                out[column] = np.dtype(np.int64)
            elif low >= 0 and high <= _UINT64.max:
                out[column] = np.dtype(np.uint64)
            else:
                warnings.append(
                    f"the field {column!r} holds whole numbers that no 64-bit integer array holds: left out of "
                    "meta/ (each episode's metadata keeps it)"
                )
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            out[column] = np.dtype(np.float64)
    return out


def _valid_key(key: str) -> bool:
    return bool(key) and "/" not in key and not key.startswith(".") and "\x00" not in key


def _check_key(db: Database, name: str, key: str) -> None:
    if not _valid_key(key):
        raise ConversionError(
            f"{db.path()}: {name!r} cannot be a zarr key (empty, holding '/' or NUL, or starting with '.'); "
            "rename it (kino merge does not rename arrays: re-ingest with other names) or export another format"
        )


def _episode_arrays(db: Database, i: int, T: int, plan: _Plan) -> Iterable[tuple[str, np.ndarray]]:
    """Episode ``i``'s rows of every ``data/`` array: cameras a window of frames at a time."""
    arrays = db.read_episode_actions_only(i)
    for key, spec in plan.data.items():
        if spec.role == "camera":
            for _, frames in camera_windows(db, i, spec.name, T):
                yield key, frames
        elif spec.role == "state_part":
            a, b = spec.span or (0, 0)
            yield key, arrays["states"][:, a:b]
        else:
            yield key, arrays[spec.name]


# -- writing --------------------------------------------------------------------------------


class _Sink:
    """Where the store's files go: a folder, or a zip archive (entries stored, not deflated)."""

    def __init__(self, out: str, *, zipped: bool) -> None:
        self.out = out
        self._zip = zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) if zipped else None
        self._dirs: set[str] = set()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip is not None:
            self._zip.close()

    def put(self, key: str, data: bytes | memoryview) -> None:
        if self._zip is not None:
            self._zip.writestr(key, bytes(data))
            return
        folder, _, _ = key.rpartition("/")
        if folder and folder not in self._dirs:
            os.makedirs(os.path.join(self.out, *folder.split("/")), exist_ok=True)
            self._dirs.add(folder)
        with open(os.path.join(self.out, *key.split("/")), "wb") as fh:
            fh.write(data)

    def text(self, key: str, text: str) -> None:
        self.put(key, text.encode("utf-8"))

    def json(self, key: str, value: Any) -> None:
        self.text(key, json.dumps(value, indent=2))


class _ArrayWriter:
    """One format-2 array written a chunk of rows at a time, as rows come in."""

    def __init__(self, sink: _Sink, key: str, spec: _Spec, rows: int, compressor: Any) -> None:
        self.sink, self.key, self.spec, self.compressor = sink, key, spec, compressor
        row_bytes = max(1, spec.dtype.itemsize * int(np.prod(spec.shape, dtype=np.int64)))
        self.chunk = max(1, min(rows, CHUNK_BYTES // row_bytes))
        self.rows = rows
        self._pending: list[np.ndarray] = []
        self._held = 0
        self._next = 0  # the next chunk's number
        sink.json(
            f"{key}/.zarray", _zarray(spec.dtype, (rows, *spec.shape), (self.chunk, *spec.shape), compressor)
        )

    def append(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self._pending.append(values)
        self._held += len(values)
        while self._held >= self.chunk:
            self._flush(self.chunk)

    def close(self) -> None:
        if self._held:
            self._flush(self._held)
        written = self._next * self.chunk
        if min(written, self.rows) != self.rows:
            raise ConversionError(f"{self.key}: {written} rows written where {self.rows} were expected")

    def _flush(self, n: int) -> None:
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        take, rest = block[:n], block[n:]
        if n < self.chunk:  # the last chunk is stored whole, padded with the fill value
            full = np.zeros((self.chunk, *self.spec.shape), self.spec.dtype)
            full[:n] = take
            take = full
        data = np.ascontiguousarray(take, dtype=self.spec.dtype)
        ids = ".".join(["0"] * len(self.spec.shape))
        name = f"{self._next}.{ids}" if ids else str(self._next)
        self.sink.put(f"{self.key}/{name}", self.compressor.encode(data))
        self._next += 1
        self._pending = [rest] if len(rest) else []
        self._held = len(rest)


def _whole(sink: _Sink, key: str, values: np.ndarray, compressor: Any) -> None:
    """A small array written as one chunk."""
    spec = _Spec("meta", key, values.dtype, values.shape[1:])
    writer = _ArrayWriter(sink, key, spec, len(values), compressor)
    writer.append(values)
    writer.close()


def _zarray(
    dtype: np.dtype[Any], shape: tuple[int, ...], chunks: tuple[int, ...], compressor: Any
) -> dict[str, Any]:
    fill: Any = False if dtype.kind == "b" else (0.0 if dtype.kind in "fc" else 0)
    return {
        "zarr_format": 2, "shape": list(shape), "chunks": list(chunks), "dtype": dtype.str,
        "compressor": compressor.get_config(), "fill_value": fill, "order": "C", "filters": None,
        "dimension_separator": ".",
    }  # fmt: skip
