"""Export to an RLDS dataset in TFDS's folder layout (Open X-Embodiment's), written without
TensorFlow: readable by ``tfds.builder_from_directory`` and ``tfds.load``, by the RLDS
loaders of Octo and OpenVLA, and by ``kinodb.ingest``.

Layout of the folder OUT (name it ``<name>/<version>``, ``rlds/pick/1.0.0``, for
``tfds.load("pick", data_dir="rlds")``; the dataset's name and version come from OUT's
name, else ``1.0.0``)::

    dataset_info.json          name, version, the ``train`` split's shard lengths and bytes
    features.json              the features, as TFDS writes them
    kinodb_export.json         the export's facts, which feature holds what, the file's dataset block
    NAME-train.tfrecord-00000-of-0000N
                               one ``tf.train.Example`` per episode, in export order, shards of
                               about 256 MiB

An episode's record holds TFDS's flattened features:

    steps/action                  (T, A), dtype kept
    steps/observation/state       (T, S), where the states have columns
    steps/observation/<camera>    a TFDS ``Image``: JPEG and PNG frames byte for byte as stored;
                                  raw frames as PNG (lossless)
    steps/reward                  the rewards
    steps/is_first, is_last       True at the first and at the last step
    steps/is_terminal             the terminal flags
    steps/language_instruction    each step's task: the episode's ``tasks`` at its ``task_index``
                                  where it holds both (kinodb's per-frame tasks), else its task
    steps/timestamp               where the episodes hold timestamps
    steps/<array>                 each extra array (``observation.X`` under ``steps/observation/``)
    episode_metadata/kinodb       the episode's metadata (``read_meta``) as JSON text
    episode_metadata/success      where every episode's success is known
    episode_metadata/<field>      each extra field every episode holds as text, a bool or a number
                                  (``episode_metadata.X``, the RLDS ingest's name for a
                                  source's clashing ``episode_metadata/X``, as X)

Values are exact: float32 and float16 arrays, bools and integers up to int64 are stored as
TFDS stores them (a FloatList or an Int64List, encoding ``none``); float64, uint64 and
other dtypes with TFDS's ``encoding='bytes'`` (each step's ``tobytes()``), which
``tfds.load`` decodes to the same values: a FloatList would round float64 to float32.
Episode-level numbers are int64, or float64 stored as bytes, likewise.

A feature has one dtype and per-step shape over all the episodes, and every episode must
hold every camera (with one channel count; heights and widths may differ): episodes that
differ are exported one kind at a time, with ``--filter``, as the error says. An extra
array that only some episodes hold is left out, with a warning. ``kinodb_export.json``
lets ``kinodb.ingest`` give back the file: arrays bit for bit, frames byte for byte (the
raw ones pixel for pixel, with ``--image-codec png`` or ``raw``), names, the states'
components, each episode's metadata and the dataset block.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.export._base import (
    array_forms,
    camera_windows,
    dumps,
    exported_dataset,
    holds_image,
    one_value,
    split_advice,
)
from kinodb.ingest._example import encode_example
from kinodb.ingest._tfrecord import frame
from kinodb.kdb import _codecs
from kinodb.kdb.reader import META_FIELDS, Database

SPLIT = "train"
RECORD = "kinodb_export.json"
"""The file beside the dataset's own that records the export (`kinodb.ingest` reads it)."""
EPISODE_FIELD = "episode_metadata/kinodb"
"""The feature holding each episode's metadata as JSON text."""
SHARD_BYTES = 256 << 20  # a shard is closed once it holds this much; TFDS's own are of this order
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_TFDS = "tensorflow_datasets.core.features."
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_OBS = "steps/observation/"
_STATES = _OBS + "state"
_BUILTIN = ("actions", "states", "rewards", "is_terminal", "timestamps")
_STEP_KEYS = ("steps/action", _STATES, "steps/reward", "steps/is_first", "steps/is_last", "steps/is_terminal",
              "steps/language_instruction")  # fmt: skip


def dataset_name(target: str) -> tuple[str, str]:
    """The TFDS name and version of an export to the folder ``target``: ``<name>/<version>``
    when its name is a version (``pick/1.0.0``), else its name and ``1.0.0``; the name in
    TFDS's form (lower case letters, digits and ``_``, starting with a letter)."""
    path = os.path.normpath(os.path.abspath(target))
    base, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    name, version = (parent, base) if _VERSION.fullmatch(base) and parent else (base, "1.0.0")
    name = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    if not name[:1].isalpha():
        name = f"dataset_{name}".rstrip("_")
    return name, version


def write(db: Database, positions: list[int], out: str, facts: dict[str, Any], *, target: str) -> list[str]:
    """Write episodes ``positions`` of ``db`` as an RLDS dataset in the new folder ``out``,
    named after ``target`` (the folder ``out`` becomes, `dataset_name`); return the warnings.

    Raises:
        ConversionError: the episodes differ in an array's dtype or shape, or in the
            cameras they hold; a name cannot be a feature's.
    """
    name, version = dataset_name(target)
    plan, warnings = _plan(db, positions)
    info, facts = exported_dataset(db, positions, facts)
    os.makedirs(out, exist_ok=True)
    table = db.episodes()
    shards = _Shards(out, name)
    try:
        for i in positions:
            shards.add(encode_example(_record(db, i, int(table["num_frames"][i]), plan, table)))
    finally:
        shards.close()
    fps = sorted({float(f) for f in table["fps"][positions].tolist()})
    rate = f"{fps[0]:g} Hz" if len(fps) == 1 else f"{fps[0]:g}-{fps[-1]:g} Hz"
    description = (
        f"Exported by {facts['exporter']} from {os.path.basename(db.path())}: {len(positions)} episodes at {rate} "
        f"(each episode's rate is in {EPISODE_FIELD}). {RECORD} records which feature holds what."
    )
    split = {"name": SPLIT, "shardLengths": [str(n) for n in shards.lengths], "numBytes": str(shards.bytes),
             "filepathTemplate": TEMPLATE}  # fmt: skip
    dataset_info = {"name": name, "version": version, "fileFormat": "tfrecord", "description": description,
                    "splits": [split]}  # fmt: skip
    _write_text(out, "dataset_info.json", json.dumps(dataset_info, indent=2))
    _write_text(out, "features.json", json.dumps(plan.features_json(), indent=2))
    record = {"kinodb_export": {**facts, "layout": plan.layout(name)}, "kinodb_dataset": info}
    _write_text(out, RECORD, dumps(record, indent=2))
    return warnings


def _write_text(out: str, name: str, text: str) -> None:
    with open(os.path.join(out, name), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text + "\n")


# -- what goes where ------------------------------------------------------------------------


@dataclass
class _Step:
    """One per-step feature: where its values come from and how TFDS declares it."""

    role: str  # actions, states, rewards, is_terminal, timestamps, first, last, text, camera, extra
    name: str  # the kinodb name: the array's or the camera's
    dtype: np.dtype[Any] | None = None
    shape: tuple[int, ...] = ()  # per step; a camera's (H, W, C), -1 where the episodes differ
    encoding: str = "none"
    image_format: str = "png"


@dataclass
class _Field:
    """One episode-level feature: an extra field or success (a column of ``db.episodes()``)."""

    column: str
    kind: str  # text, bool, int64, float64


@dataclass
class _Plan:
    steps: dict[str, _Step] = field(default_factory=dict)  # feature key -> what it holds, in record order
    fields: dict[str, _Field] = field(default_factory=dict)  # episode_metadata/ key -> the field
    legacy: bool = False  # a 0.1 file: its encoded frames are checked before they pass through

    def layout(self, name: str) -> dict[str, Any]:
        """Which feature holds what, for `kinodb.ingest` to give the file back."""
        by_role = {s.role: k for k, s in self.steps.items()}
        return {
            "dataset": name, "split": SPLIT, "actions": by_role["actions"], "states": by_role.get("states"),
            "rewards": by_role["rewards"], "is_terminal": by_role["is_terminal"],
            "timestamps": by_role.get("timestamps"), "task": by_role["text"], "episodes": EPISODE_FIELD,
            "cameras": {k: s.name for k, s in self.steps.items() if s.role == "camera"},
            "extra_arrays": {k: s.name for k, s in self.steps.items() if s.role == "extra"},
            "fields": {k: f.column for k, f in self.fields.items()},
        }  # fmt: skip

    def features_json(self) -> dict[str, Any]:
        """``features.json``: the steps as a TFDS ``Dataset`` of dicts, and ``episode_metadata``."""
        tree: dict[str, Any] = {}
        nodes = {key: _step_node(s) for key, s in self.steps.items()}
        nodes[EPISODE_FIELD] = _text_node("The episode's kinodb metadata (read_meta) as JSON.")
        nodes.update({key: _field_node(f) for key, f in self.fields.items()})
        for key, node in nodes.items():
            *path, leaf = key.split("/")
            d = tree
            for part in path:
                d = d.setdefault(part, {})
            d[leaf] = _Leaf(node)
        return _features_dict(tree, top=True)


@dataclass(frozen=True)
class _Leaf:
    node: dict[str, Any]


def _features_dict(tree: dict[str, Any], *, top: bool = False) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, _Leaf):
            features[key] = value.node
        elif top and key == "steps":
            features[key] = {"pythonClassName": _TFDS + "dataset_feature.Dataset",
                             "sequence": {"feature": _features_dict(value), "length": "-1"}}  # fmt: skip
        else:
            features[key] = _features_dict(value)
    return {"pythonClassName": _TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": features}}


def _tensor_node(dtype: np.dtype[Any], shape: tuple[int, ...], encoding: str) -> dict[str, Any]:
    cls = "scalar.Scalar" if not shape and encoding == "none" else "tensor_feature.Tensor"
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {
        "pythonClassName": _TFDS + cls,
        "tensor": {"shape": dims, "dtype": dtype.name, "encoding": encoding},
    }


def _text_node(description: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"pythonClassName": _TFDS + "text_feature.Text", "text": {}}
    if description:
        node["description"] = description
    return node


def _step_node(step: _Step) -> dict[str, Any]:
    if step.role == "camera":
        return {"pythonClassName": _TFDS + "image_feature.Image",
                "image": {"shape": {"dimensions": [str(d) for d in step.shape]}, "dtype": "uint8",
                          "encodingFormat": step.image_format}}  # fmt: skip
    if step.role == "text":
        return _text_node("The step's task.")
    if step.role in ("first", "last"):
        return _tensor_node(np.dtype(bool), (), "none")
    assert step.dtype is not None
    return _tensor_node(step.dtype, step.shape, step.encoding)


def _field_node(f: _Field) -> dict[str, Any]:
    if f.kind == "text":
        return _text_node()
    if f.kind == "float64":
        return _tensor_node(np.dtype(np.float64), (), "bytes")
    return _tensor_node(np.dtype(f.kind), (), "none")


def encoding(dtype: np.dtype[Any]) -> str:
    """TFDS's encoding that keeps ``dtype``'s values exact: ``none`` where a FloatList (float32
    and float16) or an Int64List (bools, integers but uint64) holds them, else ``bytes``."""
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return "none"
    if dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= (4 if dtype.kind == "u" else 8)):
        return "none"
    return "bytes"


def _plan(db: Database, positions: list[int]) -> tuple[_Plan, list[str]]:
    """Decide the features from every exported episode's arrays, cameras and fields, before writing."""
    table = db.episodes()
    why = "an RLDS feature has one shape for all episodes"
    one_value(db, table, positions, "action_dim", "action dims", why)
    state_dim = int(one_value(db, table, positions, "state_dim", "state dims", why))
    kinds, held = array_forms(db, table, positions, why)
    cameras: dict[str, dict[int, list[int]]] = {}  # camera -> channels -> episodes
    sizes: dict[str, set[tuple[int, int]]] = {}
    codecs: dict[str, set[str]] = {}
    for i in positions:
        for cam, spec in db.cameras(i).items():
            shape = tuple(int(d) for d in spec["shape"][1:])
            cameras.setdefault(cam, {}).setdefault(shape[2], []).append(i)
            sizes.setdefault(cam, set()).add((shape[0], shape[1]))
            codecs.setdefault(cam, set()).add(str(spec["codec"]))
    for cam, channels in cameras.items():
        count = sum(map(len, channels.values()))
        if len(channels) > 1 or count != len(positions):
            listed = ", ".join(f"{c} channels in {len(g)}" for c, g in list(channels.items())[:4])
            raise ConversionError(
                f"{db.path()}: camera {cam!r} is held by {count} of the {len(positions)} episodes ({listed}); an "
                "RLDS image feature is in every step of every episode, with one channel count: export them "
                f"separately, {split_advice(table, max(channels.values(), key=len))}"
            )
        (depth,) = channels
        if depth not in (1, 3, 4):
            raise ConversionError(
                f"{db.path()}: camera {cam!r} has {depth} channels, and a TFDS image has 1, 3 or 4 (TensorFlow "
                "decodes no other): export it to a format that keeps any channel count (--format zarr or numpy)"
            )
    warnings: list[str] = []
    plan = _Plan(legacy=db.version().startswith("0."))
    taken: set[str] = set(_STEP_KEYS)

    def key_for(name: str, wanted: str, what: str) -> str:
        if not name or "/" in name:
            raise ConversionError(
                f"{db.path()}: the {what} {name!r} cannot name an RLDS feature (empty, or holding '/'); rename it "
                "(re-ingest with other names) or export another format"
            )
        key = wanted
        while key in taken or any(t.startswith(key + "/") or key.startswith(t + "/") for t in taken):
            key += "_"
        taken.add(key)
        return key

    def step(role: str, name: str) -> _Step:
        dtype, shape = kinds[name]
        return _Step(role, name, dtype, shape, encoding(dtype))

    plan.steps["steps/action"] = step("actions", "actions")
    if state_dim:
        plan.steps[_STATES] = step("states", "states")
    for cam in sorted(cameras):
        depth = next(iter(cameras[cam]))
        (h, w), *others = sorted(sizes[cam])
        shape = (h, w, depth) if not others else (-1, -1, depth)
        fmt = "jpeg" if codecs[cam] == {"jpeg"} else "png"
        plan.steps[key_for(cam, _OBS + cam, "camera")] = _Step("camera", cam, shape=shape, image_format=fmt)
    plan.steps["steps/reward"] = step("rewards", "rewards")
    plan.steps["steps/is_first"] = _Step("first", "is_first")
    plan.steps["steps/is_last"] = _Step("last", "is_last")
    plan.steps["steps/is_terminal"] = step("is_terminal", "is_terminal")
    plan.steps["steps/language_instruction"] = _Step("text", "task")
    if "timestamps" in kinds and held["timestamps"] == len(positions):
        plan.steps[key_for("timestamp", "steps/timestamp", "array")] = step("timestamps", "timestamps")
    elif "timestamps" in kinds:
        warnings.append(
            f"timestamps are held by {held['timestamps']} of the {len(positions)} episodes, and an RLDS feature is "
            "in every episode: left out (export the episodes that hold them with --filter to keep them)"
        )
    for name in sorted(kinds):
        if name in _BUILTIN:
            continue
        dtype, _ = kinds[name]
        if held[name] != len(positions):
            warnings.append(
                f"the array {name!r} is held by {held[name]} of the {len(positions)} episodes, and an RLDS feature "
                "is in every episode: left out (export the episodes that hold it with --filter to keep it)"
            )
        elif dtype.kind not in "biuf":
            warnings.append(f"the array {name!r} is of dtype {dtype}, which no RLDS tensor holds: left out")
        else:
            obs = name.startswith("observation.") and len(name) > len("observation.")
            wanted = _OBS + name.removeprefix("observation.") if obs else "steps/" + name
            plan.steps[key_for(name, wanted, "array")] = step("extra", name)
    taken.update(("episode_metadata/kinodb", "episode_metadata/success"))
    if all(isinstance(v, bool) for v in table["success"][positions].tolist()):
        plan.fields["episode_metadata/success"] = _Field("success", "bool")
    for name, kind in _uniform_fields(table, positions).items():
        if not name or "/" in name:
            warnings.append(f"the field {name!r} cannot name an RLDS feature: left out of episode_metadata/ "
                            f"(each episode's {EPISODE_FIELD} keeps it)")  # fmt: skip
            continue
        # The RLDS ingest names a source's episode_metadata/X that clashes with kinodb's own
        # fields (episode_id) "episode_metadata.X": it goes back to episode_metadata/X.
        wanted = name.removeprefix("episode_metadata.") or name
        plan.fields[key_for(name, "episode_metadata/" + wanted, "field")] = _Field(name, kind)
    return plan, warnings


_INT64 = np.iinfo(np.int64)


def _uniform_fields(table: dict[str, Any], positions: list[int]) -> dict[str, str]:
    """The extra fields that every exported episode holds as text, every one as a bool, or
    every one as a number, and their feature's kind (``text``, ``bool``, ``int64``, ``float64``)."""
    out: dict[str, str] = {}
    for column in sorted(c for c in table if c not in META_FIELDS):
        values = table[column][positions]
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if all(isinstance(v, str) for v in items):
            out[column] = "text"
        elif all(isinstance(v, bool) for v in items):
            out[column] = "bool"
        elif all(
            isinstance(v, int) and not isinstance(v, bool) and _INT64.min <= v <= _INT64.max for v in items
        ):
            out[column] = "int64"
        elif all(  # numbers that float64 holds exactly
            isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53)
            for v in items
        ):
            out[column] = "float64"
    return out


# -- one episode ----------------------------------------------------------------------------


def _record(db: Database, i: int, T: int, plan: _Plan, table: dict[str, Any]) -> dict[str, Any]:
    """Episode ``i``'s features, ready for `encode_example` (``table`` is ``db.episodes()``)."""
    meta = db.read_meta(i)
    arrays = db._episode_arrays(i)
    steps = np.arange(T)
    feats: dict[str, Any] = {}
    for key, s in plan.steps.items():
        if s.role == "camera":
            feats[key] = _frames(db, i, s.name, T, legacy=plan.legacy)
        elif s.role == "first":
            feats[key] = steps == 0
        elif s.role == "last":
            feats[key] = steps == T - 1
        elif s.role == "text":
            feats[key] = _step_tasks(meta, arrays.get("task_index"), T)
        else:
            feats[key] = _values(np.asarray(arrays[s.name]), s.encoding)
    feats[EPISODE_FIELD] = [dumps(meta).encode("utf-8")]
    for key, f in plan.fields.items():
        value = table[f.column][i]
        if f.kind == "text":
            feats[key] = [str(value).encode("utf-8")]
        elif f.kind == "float64":
            feats[key] = [np.array(value, "<f8").tobytes()]
        else:
            feats[key] = np.array([value], dtype=np.dtype(f.kind))
    return feats


def _values(arr: np.ndarray, encoding: str) -> Any:
    """An array's feature value: itself (a FloatList or an Int64List), or each step's little-endian bytes."""
    if encoding == "none":
        return arr
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return [row.tobytes() for row in little]


def _step_tasks(meta: dict[str, Any], index: np.ndarray | None, T: int) -> list[bytes]:
    """Each step's task: ``tasks[task_index[t]]`` where the episode holds both and they fit
    (kinodb's per-frame tasks, as the LeRobot and RLDS ingests write them), else its task."""
    tasks = meta.get("tasks")
    if (
        isinstance(tasks, list)
        and tasks
        and all(isinstance(t, str) for t in tasks)
        and index is not None
        and index.shape == (T,)
        and index.dtype.kind in "iu"
        and (T == 0 or (int(index.min()) >= 0 and int(index.max()) < len(tasks)))
    ):
        texts = [t.encode("utf-8") for t in tasks]
        return [texts[k] for k in index.tolist()]
    task = meta.get("task")
    return [(task if isinstance(task, str) else "").encode("utf-8")] * T


def _frames(db: Database, i: int, camera: str, T: int, *, legacy: bool) -> list[bytes]:
    """A camera's frames: stored JPEG or PNG bytes as they are, else the decoded frames as PNG.

    A 0.1 file's encoded camera may hold raw frames flagged as encoded (see `holds_image`):
    its frames pass through only when every one is an image of the camera's height and width.
    """
    spec = db.cameras(i)[camera]
    codec, shape = str(spec["codec"]), spec["shape"][1:]
    if codec in ("jpeg", "png"):
        blobs = db.read_images_bytes(i, camera, 0, T)
        if not legacy or all(holds_image(b, codec, shape, channels=False) for b in blobs):
            return blobs
    out: list[bytes] = []
    for _, frames in camera_windows(db, i, camera, T):
        out += _codecs.encode(frames, "png", 0)
    return out


# -- shards ---------------------------------------------------------------------------------


class _Shards:
    """TFRecord shards written one after another; named ``NAME-train.tfrecord-K-of-N`` on close."""

    def __init__(self, out: str, name: str) -> None:
        self.out, self.name = out, name
        self.lengths: list[int] = []
        self.bytes = 0
        self._fh: Any = None
        self._size = 0

    def add(self, data: bytes) -> None:
        framed = frame(data)
        if self._fh is None or (self._size and self._size + len(framed) > SHARD_BYTES):
            self._next()
        self._fh.write(framed)
        self._size += len(framed)
        self.bytes += len(framed)
        self.lengths[-1] += 1

    def _next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = open(self._temp(len(self.lengths)), "wb")  # noqa: SIM115 (closed in _next or close)
        self.lengths.append(0)
        self._size = 0

    def _temp(self, k: int) -> str:
        return os.path.join(self.out, f"shard-{k}.partial")

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        n = len(self.lengths)
        for k in range(n):
            os.replace(
                self._temp(k), os.path.join(self.out, f"{self.name}-{SPLIT}.tfrecord-{k:05d}-of-{n:05d}")
            )
