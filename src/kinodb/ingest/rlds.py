"""RLDS / TFDS TFRecord source (Open X-Embodiment): ``.kdb`` without TensorFlow.

Input: a TFDS dataset folder (``<name>/<version>/`` with ``features.json``,
``dataset_info.json`` and shards named by the TFDS template
``{DATASET}-{SPLIT}.tfrecord-{SHARD:05d}-of-{N:05d}`` or the older ``-{SHARD:05d}``), its
parent holding one version folder, a folder of ``*.tfrecord*`` files, or one shard file.
``options.split`` picks the shards (default ``train``, as ``tfds.load`` users expect); when
the dataset holds other splits, the report's notes name the split read and the others left
out, with their sizes where ``dataset_info.json`` gives them. Its shard lengths count
records (TFDS examples), as TFDS writes them: episodes, or steps in the per-step layout; a
shard holding fewer is reported as truncated. A TFDS slice (``train[:80%]``, ``train[:5]``,
``train+test``) is refused, its message naming the split and the ``episodes`` that select
what TFDS would read (computed as TFDS computes them, where ``dataset_info.json`` counts
the split's episodes), or saying to ingest each split and merge the files.

Layouts: one record per episode with flattened ``steps/...`` features (what TFDS
writes), or one record per step with top-level ``is_first``/``is_last``/``action``...
features, split into episodes at ``is_first`` (and after ``is_last``). Episode keys are
``"<shard file>:<record>"``, or ``"<shard file>:<first>-<last>"`` for per-step records.
A per-step episode still open at the end of a shard (no ``is_last`` yet) goes on in the
next shard, in shard order, when that one does not start with ``is_first``: its steps are
joined, and its key lists each shard's part (``"<shard>:5-8+<next shard>:0-2"``).
``is_first`` and ``is_last`` are checked, not stored: an episode's record has
``is_first`` at step 0 and nowhere else, and ``is_last`` nowhere but at its last step
(an episode cut off has none); a record of several episodes packed together, or without
its start, is refused (the per-step layout refuses an episode whose first record is not
``is_first`` alike).

Mapping (per-step features are ``(T, *shape)`` with shapes from ``features.json``, else
from the first record that holds steps):

- ``steps/action`` -> ``actions``; a dict of actions (``steps/action/*``) is concatenated
  in sorted key order, its slices recorded as action components.
- ``steps/observation/state`` -> ``states`` (or ``steps/observation`` itself when the
  observation is one float tensor, as in ``rlds_base`` and D4RL); without it every float
  observation key (except ``*embedding*`` keys) is concatenated in sorted order
  (``state_keys`` picks others), slices recorded as state components.
- image features -> cameras named by their key without ``steps/observation/`` (else
  ``steps/``), the JPEG/PNG bytes passed through unchanged (frame 0's height and width
  are checked against the declared shape). A camera reads back with the declared channel
  count, as ``tfds.load`` decodes it (``channels=shape[-1]``), also where a frame's bytes
  hold another (a greyscale or RGBA JPEG/PNG under a 3-channel feature): grey is
  repeated, alpha dropped.
- ``steps/reward`` (a scalar, or a tensor of one value) -> ``rewards``; ``steps/is_terminal`` -> ``is_terminal``; every other
  numeric per-step feature (``discount``, ``language_embedding``, other observations) ->
  an extra array named by its key without ``steps/``.
- Without ``steps/is_terminal`` each episode's last step is stored as terminal (the
  writer's default), and the metadata's ``rlds.is_terminal`` is ``"last_step"`` (absent
  when the source has the flag). RLDS keeps ``is_last`` (the recording ends) apart from
  ``is_terminal`` (the task's end state): an episode cut off by a time limit is last but
  not terminal, which matters where RL code bootstraps from the final state, so such a
  dataset's ``is_terminal`` is a guess.
- Camera and extra-array names write TFDS's ``/`` as ``.`` (``action_dict.joint_velocity``,
  ``observation.natural_language_embedding``), as the HDF5 source does, so kinodb's
  exporters take them; a name kinodb keeps for its own arrays (``timestamps``) or taken
  twice becomes the whole key so written (``steps.timestamps``). The metadata's
  ``rlds.roles`` maps every name back to its source key.
- ``steps/language_instruction`` (else ``steps/observation/natural_language_instruction``)
  -> ``task`` (step 0's text; the per-step list is kept as an extra field when it varies).
  Other per-step text -> extra fields (one string, or the per-step list if it varies).
- ``episode_metadata/*`` (and any other episode-level feature) -> extra fields named
  without the prefix (``/`` becomes ``.``): text decoded as UTF-8, a scalar as a number or
  bool, a ``Sequence`` or a tensor with dimensions as a list (also of one value or none),
  nested as ``tfds.load`` returns it: a ``(3, 3)`` tensor as three lists of three, a
  ``Sequence`` of ``(2,)`` tensors (also inside a ``Sequence`` of dicts) as a list of
  pairs. Without ``features.json`` the shapes are unknown and such a list stays flat.
  A float field holding NaN or infinity, which the metadata's JSON cannot store, is left
  out of that episode, whose extra field ``rlds.left_out`` lists its key
  (``["episode_metadata/score"]``), with a warning once per dataset and key.
- Features a ``.kdb`` file cannot hold are left out, with a warning, and listed with the
  reason in the metadata's ``rlds.left_out``: per-step lists of their own length (a
  ``Sequence`` inside ``steps``, stored ragged), episode-level lists of lists (also
  ragged: this reader does not rebuild them from their row lengths), per-step string
  tensors of several texts per step (``Tensor(shape=(2,), dtype=string)``), episode-level
  images (``episode_metadata/goal_image``), and images
  that are not 8-bit (16-bit PNG depth, float images bit-cast into PNG).
- ``success``: ``episode_metadata/success`` when present; else True when the final reward
  is > 0, False when it is not and the episode ends with ``is_last``, and None when the
  episode is cut off before its last step (no ``is_last``) or has no rewards.
- Floats stay float32 (a TFRecord FloatList is float32, even for float64 features);
  integers take their declared dtype; booleans become bool.
- Tensors TFDS stores as bytes (``Tensor(..., encoding='bytes')`` or ``'zlib'``: one
  ``arr.tobytes()``, zlib-compressed for ``zlib``, per step, per element of a
  ``Sequence``, else one) are decoded as ``tfds.load`` decodes them,
  ``np.frombuffer(bytes, dtype)`` in little-endian order, and keep their dtype (float64
  exactly), per step and at the episode level (where a tensor of several unknown
  dimensions takes the shape its record holds beside it). Those this reader cannot
  decode are left out, with a warning, and listed in ``rlds.left_out``: a dtype NumPy
  lacks (``bfloat16``), a per-step tensor of unknown shape (each step may hold another),
  a ``Sequence`` of tensors of unknown shape, an encoding TFDS does not write. Such
  actions or step flags refuse the dataset, naming it and saying how to write it anew.
- ``flip_images`` turns every camera 180 degrees (decoding its frames 32 at a time, and
  encoding each chunk when they are stored as JPEG or PNG); the metadata's
  ``image_orientation`` is then ``rotated_180``, else ``as_stored``, and ``rlds.rotated``
  names each camera turned, with its axes (``[1, 2]``), as the HDF5 source's
  ``hdf5.rotated`` does: the HDF5 exporter turns back exactly those.
- fps: ``options.fps``; else 5 Hz for Bridge, 3 Hz for RT-1 (fractal), 15 Hz for DROID
  (their recording rates, by dataset name); else 10 Hz. Those three also name the
  embodiment (widowx, google_robot, franka).

Every record's length and data CRC-32C are checked. A damaged or truncated record, a
shard shorter than ``dataset_info.json`` says, or a malformed Example is a
`ConversionError` naming the shard and the record, and saying to copy the shard again or
skip the episode, raised or (``on_error="skip"``) reported; the records around a damaged
one are still read. A per-step record that does
not read spoils only its episode, which then runs to the next ``is_first`` (or through
the next ``is_last``) and is reported once. ``features.json``, where present, declares
the features: a record with an undeclared one, or lacking a declared one, or one whose
values are not as declared, fails alone (the first record too), its message saying
where the declaration came from and how to mend it. Both JSON files have their types
checked as they are loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest import _tfrecord
from kinodb.ingest._base import SOURCE_WHERE, SourceInfo, SourceOptions
from kinodb.ingest._example import FeatureValue, parse_example
from kinodb.ingest._options import option_value, skip_advice
from kinodb.ingest._rlds_features import FLAG_KEYS, LEFT_OUT_FIELD, META, Plan, columns, convert, make_plan
from kinodb.ingest._rlds_kinodb import edited, exported, restore, restore_dataset
from kinodb.ingest._rlds_shards import (
    SHARD_RE,
    OtherSplit,
    Shard,
    check_split,
    has_dataset,
    has_shards,
    info_splits,
    is_tfrecord_file,
    listed_shards,
    listed_splits,
    load_json,
    resolve,
    split_shards,
    versions_below,
)
from kinodb.ingest._rlds_specs import STEPS, Spec, flatten_features, infer_spec

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (dataset, feature) left out and already warned about

DEFAULT_FPS = 10.0
KNOWN_DATASETS: dict[str, tuple[float, str]] = {
    "bridge": (5.0, "widowx"),
    "bridge_dataset": (5.0, "widowx"),
    "fractal20220817_data": (3.0, "google_robot"),
    "droid": (15.0, "franka"),
}


_NO_SKIP: frozenset[str] = frozenset()


def _recopy() -> str:
    """The fix of a damaged or short shard, to end the message of an episode in it."""
    return f"copy the shard again from the dataset's source{skip_advice()}"


def _merge_steps(
    steps: list[dict[str, FeatureValue]], labels: list[str], where: str
) -> dict[str, FeatureValue]:
    """One episode's features from its per-step records (keys as in the per-episode layout);
    ``labels`` name the records in messages (``record 4``)."""
    keys = list(steps[0])
    out: dict[str, FeatureValue] = {}
    for offset, feats in enumerate(steps[1:], 1):
        if set(feats) != set(keys):
            diff = sorted(set(feats) ^ set(keys))
            raise ConversionError(
                f"{where}: {labels[offset]} has other features than {labels[0]}: {diff[:5]}"
            )
    for key in keys:
        values = [feats[key] for feats in steps]
        if key.startswith(META):
            if any(not _same(v, values[0]) for v in values[1:]):
                raise ConversionError(f"{where}: {key} differs between the steps of one episode")
            out[key] = values[0]
        elif all(isinstance(v, list) for v in values):
            out[STEPS + key] = [b for v in values for b in v]  # type: ignore[union-attr]
        else:
            arrays: list[Any] = [np.zeros(0, np.float32) if isinstance(v, list) else v for v in values]
            if any(isinstance(v, list) and v for v in values):
                raise ConversionError(f"{where}: {key} holds bytes in some steps and numbers in others")
            out[STEPS + key] = np.concatenate(arrays)  # type: ignore[assignment]
    return out


def _same(a: FeatureValue, b: FeatureValue) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b if isinstance(a, list) and isinstance(b, list) else False
    return a.shape == b.shape and bool((a == b).all())


class RLDSSource:
    """RLDS episodes from TFRecord shards (see the module docstring for the mapping).

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("bridge_dataset/1.0.0", "bridge.kdb", format="rlds", split="train")

    Raises:
        ConversionError: the folder holds no readable RLDS dataset or split.
    """

    format: ClassVar[str] = "rlds"
    accepts_action_key: ClassVar[bool] = True  # steps/ACTION_KEY: a tensor, or a dict of tensors

    def __init__(self, path: str, options: SourceOptions) -> None:
        self._options = options
        self._root, single = resolve(os.fspath(path))
        self._single = single  # the one shard file given, else None
        self._info = load_json(self._root, "dataset_info.json") or {}
        self._features = load_json(self._root, "features.json")
        self._split: str | None = None  # the split read, where the shards name one
        self._others: list[OtherSplit] = []  # the dataset's splits not read
        self._shards = self._find_shards(single)
        self._keys: list[str] | None = None
        self._by_name = {s.name: s for s in self._shards}
        self._records: dict[str, list[_tfrecord.Record]] = {}
        self._fd: tuple[str, int] | None = None
        self._layout: str | None = None
        self._plan: Plan | None = None
        self._fps: float | None = None  # the episodes' (the option's, else the dataset's known rate)
        self._left_out: dict[str, str] = {}  # features a .kdb cannot hold, and why
        self._kinodb: dict[str, Any] | None = None  # a kinodb export's record (`_rlds_kinodb.exported`)
        self._kinodb_notes: list[str] = []
        self._kinodb_edited = False  # an episode the export's record no longer describes was warned of

    @classmethod
    def detect(cls, path: str) -> bool:
        """A shard file, or a folder with TFDS metadata or shards, or with TFDS version folders
        below it (a dataset folder or a TFDS data_dir)."""
        try:
            if os.path.isfile(path):
                return is_tfrecord_file(path)
            if not os.path.isdir(path):
                return False
            return has_dataset(path) or bool(versions_below(path))
        except OSError:
            return False

    def _find_shards(self, single: str | None) -> list[Shard]:
        split = self._options.split
        declared = (self._features or {}).get("featuresDict", {}).get("features", {})
        check_split(split, self._root if single is None else single, self._info, episodes="steps" in declared)
        if single is None:
            if self._info.get("splits"):
                self._split = split or "train"
                self._others = [  # listed and here: a sample or a partial copy may lack some
                    s
                    for s in info_splits(self._info, self._split)
                    if has_shards(self._root, self._info, s.name)
                ]
                return split_shards(self._root, self._info, self._split)
            shards = listed_shards(self._root, split)
            if (m := SHARD_RE.match(shards[0].name)) is not None:
                self._split = m["split"]
                self._others = listed_splits(self._root, self._split)
            return shards
        name = os.path.basename(single)
        m = SHARD_RE.match(name)
        if split is not None and m is not None and m["split"] != split:
            raise ConversionError(f"{single}: is a shard of split {m['split']!r}, not {split!r}")
        return [Shard(name, single, None)]

    def _split_note(self) -> str | None:
        """For the report: the split read, and the splits left out (None: the only split)."""
        if self._split is None or not self._others:
            return None
        n = len(self.episodes())
        unit = "step" if self._layout == "step" else "episode"  # TFDS shard lengths count records
        others = ", ".join(s.describe(unit) for s in self._others)
        passes = " or ".join(option_value("split", s.name) for s in self._others)
        which = "it" if len(self._others) == 1 else "one of them"
        return (
            f"read split {self._split!r} ({n} episode{'s' * (n != 1)}); also present: {others}: "
            f"pass {passes} to ingest {which}"
        )

    # -- records ------------------------------------------------------------------------

    def _scan(self, shard: Shard) -> list[_tfrecord.Record]:
        if shard.name not in self._records:
            self._records[shard.name] = _tfrecord.scan(shard.path)
        return self._records[shard.name]

    def _open(self, shard: Shard) -> int:
        if self._fd is not None and self._fd[0] == shard.name:
            return self._fd[1]
        self.close()
        fd = os.open(shard.path, os.O_RDONLY)
        self._fd = (shard.name, fd)
        return fd

    def _data(self, shard: Shard, index: int, *, fix: str | Callable[[], str] = "") -> bytes:
        """Record ``index``'s data; ``fix`` ends the message of a damaged one (`_recopy` where
        the record is an episode's, which can be skipped)."""
        records = self._scan(shard)
        if index < len(records):
            return _tfrecord.read_data(self._open(shard), shard.path, index, records[index], fix=fix)
        if shard.expected is not None and index < shard.expected:
            raise ConversionError(
                f"{shard.path}: record {index}: missing: the shard holds {len(records)} records, "
                f"dataset_info.json lists {shard.expected} (a truncated or replaced shard); {_recopy()}"
            )
        raise ConversionError(f"{shard.path}: no record {index}; the shard holds {len(records)}")

    def _parse(
        self,
        data: bytes,
        where: str,
        *,
        skip: frozenset[str] = frozenset(),
        fix: str | Callable[[], str] = "",
    ) -> dict[str, FeatureValue]:
        try:
            return parse_example(data, skip=skip)
        except ConversionError as exc:
            said = fix() if callable(fix) else fix
            raise ConversionError(f"{where}: {exc}{f'; {said}' if said else ''}") from None

    def _first_record(self) -> tuple[dict[str, FeatureValue], str]:
        """The first record that reads and parses and holds steps, for the layout and undeclared
        features (their widths); an episode of no steps only where every record is one."""
        faults = []
        empty: tuple[dict[str, FeatureValue], str] | None = None
        for shard in self._shards:
            for index in range(len(self._scan(shard))):
                where = f"{shard.path}: record {index}"
                try:
                    feats = self._parse(self._data(shard, index), where)
                except ConversionError as exc:
                    faults.append(str(exc))
                    continue
                if not _no_steps(feats):
                    return feats, where
                empty = empty or (feats, where)
        if empty is not None:
            return empty
        detail = f" ({faults[0]})" if faults else ""
        if self._single is not None:  # one shard: name it, not the folder around it
            raise ConversionError(f"{self._single}: no readable record{detail}")
        raise ConversionError(
            f"{self._root}: no readable record in split {self._options.split or 'train'!r}{detail}"
        )

    # -- features -----------------------------------------------------------------------

    def _setup(self) -> Plan:
        """Layout, feature specs and the role plan (the same in every worker)."""
        if self._plan is not None:
            return self._plan
        first, where = self._first_record()
        declared: dict[str, Any] = {}
        if self._features is not None:
            declared = dict(self._features.get("featuresDict", {}).get("features", {}))
        if declared:
            self._layout = "episode" if "steps" in declared else "step"
        elif any(k.startswith(STEPS) for k in first):
            self._layout = "episode"
        elif "is_first" in first or "is_last" in first:
            self._layout = "step"
        else:
            raise ConversionError(
                f"{where}: neither steps/... nor is_first/is_last features: not an RLDS record"
            )
        specs: dict[str, Spec] = {}
        unknown: set[str] = set()  # declared features of a class this reader does not know
        for name, node in declared.items():
            prefix = "" if self._layout == "episode" or name == META.rstrip("/") else STEPS
            flatten_features(
                node,
                f"{prefix}{name}/",
                specs,
                steps=self._layout == "episode" and name == "steps",
                unknown=unknown,
            )
        self._leave_out(specs)
        flags = [k for k in FLAG_KEYS if k in specs and specs[k].as_bytes]
        if self._layout == "step" and flags:  # the per-step scan reads the flags as plain values
            raise ConversionError(
                f"{self._root}: {flags[0]} is stored as bytes (encoding {specs[flags[0]].encoding!r}); in a "
                "dataset of one record per step kinodb reads is_first and is_last as plain values: write the "
                "dataset anew with them as tfds.features.Scalar(dtype=np.bool_)"
            )
        self._infer(specs, first, None if not declared else unknown)
        try:
            self._plan = make_plan(specs, self._options)
        except ConversionError as exc:
            raise ConversionError(f"{self._root}: {exc}") from None
        self._plan.left_out = tuple(self._left_out)
        self._plan.declared = bool(declared)
        if self._single is None and self._layout == "episode":
            self._kinodb = exported(self._root, set(self._plan.specs), self._kinodb_notes)
        return self._plan

    def _infer(
        self, specs: dict[str, Spec], first: dict[str, FeatureValue], unknown: set[str] | None
    ) -> None:
        """Add the specs of the first record's features that ``specs`` lacks, classified from
        their values: every one without ``features.json`` (``unknown`` None), else only those of
        a declared class this reader does not know. An undeclared feature is no part of the
        plan: a record holding one fails alone, the first record too (a damaged key name)."""
        if self._layout == "step":
            first = {k if k.startswith(META) else STEPS + k: v for k, v in first.items()}
        count = next((first[k] for k in ("steps/is_first", "steps/is_last") if k in first), None)
        steps = None if count is None else len(count)
        for key, value in first.items():
            if key in specs or any(key == g or key.startswith(f"{g}/") for g in self._left_out):
                continue
            if unknown is None or any(key == g or key.startswith(f"{g}/") for g in unknown):
                specs[key] = infer_spec(key, value, steps if key.startswith(STEPS) else None)
        self._leave_out(specs)  # undeclared features, classified from the first record

    def _leave_out(self, specs: dict[str, Spec]) -> None:
        """Move the features a ``.kdb`` file cannot hold from ``specs`` to ``self._left_out``.

        Raises:
            ConversionError: one this reader cannot decode holds the actions or a flag.
        """
        for key, why in _unsupported(specs).items():
            if specs[key].problem is not None and self._needed(key):
                raise ConversionError(
                    f"{self._root}: {key} is {why}; kinodb cannot ingest the dataset without it: write the "
                    "dataset anew with it as a tensor of fixed shape and a bool, integer or float dtype "
                    "(tfds.features.Tensor, encoding 'none', 'bytes' or 'zlib')"
                )
            del specs[key]
            self._left_out[key] = why
            if (self._root, key) not in _WARNED:  # once per dataset and feature in a process
                _WARNED.add((self._root, key))
                log.warning("%s: %s is left out: %s", self._root, key, why)

    def _needed(self, key: str) -> bool:
        """Whether feature ``key`` holds the actions or a step flag (``is_first``,
        ``is_last``, ``is_terminal``)."""
        action = STEPS + (self._options.action_key or "action").removeprefix(STEPS).strip("/")
        return key in (*FLAG_KEYS, STEPS + "is_terminal", action) or key.startswith(action + "/")

    def _skip(self, plan: Plan) -> frozenset[str]:
        if self._options.images:
            return _NO_SKIP
        keys = plan.cameras.values()
        return frozenset(k.removeprefix(STEPS) if self._layout == "step" else k for k in keys)

    # -- Source -------------------------------------------------------------------------

    def episodes(self) -> list[str]:
        """Every episode's key, in shard order; scans record headers only (per-step: flags too)."""
        if self._keys is None:
            self._keys = self._episode_keys()
        return list(self._keys)

    def _episode_keys(self) -> list[str]:
        self._setup()
        if self._layout == "step":
            return self._step_episodes()
        keys: list[str] = []
        for shard in self._shards:
            records = self._scan(shard)
            keys += [f"{shard.name}:{i}" for i in range(len(records))]
            found_n = len(records)
            if shard.expected is not None:
                keys += [f"{shard.name}:{i}" for i in range(found_n, shard.expected)]
                if found_n > shard.expected:
                    log.warning("%s: holds %d records, dataset_info.json lists %d; reading all",
                                shard.path, found_n, shard.expected)  # fmt: skip
        return keys

    def _step_episodes(self) -> list[str]:
        """Per-step records as episode keys, in shard order; an episode still open at the end
        of a shard is joined with the first steps of the next shard when these do not start
        with ``is_first``."""
        keys: list[str] = []
        pending: list[_Segment] = []  # the episode a shard left open
        for shard in self._shards:
            records = self._scan(shard)
            ranges, first_flag, open_end = self._step_ranges(shard, records)
            if not ranges and first_flag is None and shard.expected in (None, 0):
                continue  # an empty shard: an open episode may go on in the next one
            found: list[list[_Segment]] = [[(shard, a, b)] for a, b in ranges]
            if pending and found and first_flag is False:
                found[0] = pending + found[0]
            elif pending:
                keys.append(_step_key(pending))
            pending = found.pop() if open_end else []
            keys += [_step_key(segments) for segments in found]
            if shard.expected is not None and len(records) < shard.expected:  # TFDS counts records: steps
                keys.append(f"{shard.name}:missing")
        if pending:
            keys.append(_step_key(pending))
        return keys

    def _step_ranges(
        self, shard: Shard, records: list[_tfrecord.Record]
    ) -> tuple[list[tuple[int, int]], bool | None, bool]:
        """Split per-step records into episodes at is_first and after is_last.

        A record that does not read (its flags unknown) belongs to the episode open before
        it, else starts one; that episode then runs to the next ``is_first`` (or through the
        next ``is_last``), and reading it fails once, naming the record.

        Also whether record 0 is ``is_first`` (None: no record 0, or it does not read),
        and whether the last episode is still open: none of its records ``is_last``.
        """
        ranges: list[tuple[int, int]] = []
        start: int | None = None
        first_flag: bool | None = None
        for i in range(len(records)):
            try:
                flags = parse_example(self._data(shard, i), only=("is_first", "is_last"))
            except ConversionError:  # reported when its episode is read
                if start is None:
                    start = i
                continue
            if i == 0:
                first_flag = _flag(flags, "is_first")
            if _flag(flags, "is_first") and start is not None:
                ranges.append((start, i - 1))
                start = None
            if start is None:
                start = i
            if _flag(flags, "is_last"):
                ranges.append((start, i))
                start = None
        if start is not None:
            ranges.append((start, len(records) - 1))
        return ranges, first_flag, start is not None

    def info(self) -> SourceInfo:
        """Schema (action and state components), fps, embodiment and provenance."""
        plan = self._setup()
        name = self._dataset_name()
        fps, embodiment = KNOWN_DATASETS.get(name, (DEFAULT_FPS, None))
        rlds = {
            "dataset": name, "version": self._info.get("version"), "split": self._split_name(),
            "layout": self._layout, "shards": [s.name for s in self._shards],
            "description": self._info.get("description"), "roles": plan.roles(),
            "features": {k: s.describe() for k, s in sorted(plan.specs.items())},
            "left_out": dict(self._left_out) or None,
            "is_terminal": None if plan.terminal else "last_step",  # the writer's default, not the source's
        }  # fmt: skip
        if self._options.flip_images:  # what was turned, as the HDF5 source records it (hdf5.rotated)
            rlds["rotated"] = {cam: [1, 2] for cam in plan.cameras} if self._options.images else {}
        note = self._split_note()
        schema, metadata = restore_dataset(
            self._kinodb, plan.schema(), {"rlds": {k: v for k, v in rlds.items() if v is not None}}, plan.actions,
            plan.states,
        )  # fmt: skip
        return SourceInfo(
            "rlds", schema=schema, metadata=metadata, embodiment=embodiment,
            fps=self._options.fps or (None if self._kinodb is not None else fps),  # an export's: each episode's own
            notes=([note] if note else []) + self._kinodb_notes,
        )  # fmt: skip

    def _dataset_name(self) -> str:
        name = str(self._info.get("name") or "")
        if not name and (m := SHARD_RE.match(self._shards[0].name)):
            name = m["dataset"]
        return name

    def _split_name(self) -> str | None:
        m = SHARD_RE.match(self._shards[0].name)
        return self._options.split or (m["split"] if m else None)

    def read(self, key: str) -> dict[str, Any]:
        """`Writer.add_episode` arguments for episode ``key``.

        Raises:
            ConversionError: the key is unknown, a record is damaged, or a feature does
                not fit; names the shard, the record and the feature.
        """
        plan = self._plan or self._setup()
        skip = self._skip(plan)
        if self._layout == "step":
            segments = self._segments(key)
            where = " + ".join(f"{shard.path}: records {a}-{b}" for shard, a, b in segments)
            feats = self._read_steps(segments, where, skip)
        else:
            name, _, rest = key.rpartition(":")
            shard = self._by_name.get(name)
            if shard is None or not rest:
                raise ConversionError(f"{self._root}: no episode {key!r}")
            where = f"{shard.path}: record {rest}"
            # _recopy: said where an error is raised (it names options as the caller spells them)
            feats = self._parse(
                self._data(shard, _index(rest, key), fix=_recopy), where, skip=skip, fix=_recopy
            )
        args = convert(feats, plan, self._options, where)
        self._warn_non_finite(args["extra"].get(LEFT_OUT_FIELD, []), where)
        args["fps"] = self._episode_fps()
        if (
            self._kinodb is not None
            and not restore(
                args, self._kinodb, plan.arrays, plan.cameras, plan.fields, self._options.fps is not None
            )
            and not self._kinodb_edited
        ):
            self._kinodb_edited = True
            log.warning("%s", edited(self._root, self._kinodb, where))
        args[SOURCE_WHERE] = where
        return args

    def read_columns(self, keys: list[str], max_bytes: int) -> dict[str, Any] | None:
        """The first of episodes ``keys`` at once, as `_rlds_features.columns` gives them
        (with ``fps``): as many as have records of at most ``max_bytes`` in all (their
        ``lengths`` say how many), at least two. None where they cannot be read together:
        then `read` each (which says why where one cannot be read at all)."""
        plan = self._plan or self._setup()
        if self._layout != "episode" or self._kinodb is not None or plan.byte_keys:
            return None
        if self._options.images and plan.cameras:
            return None
        places = []
        size = 0
        for key in keys:
            name, _, rest = key.rpartition(":")
            shard = self._by_name.get(name)
            if shard is None or not rest.isdigit() or int(rest) >= len(self._scan(shard)):
                return None
            length = self._scan(shard)[int(rest)].length
            if size + length > max_bytes:
                break
            size += length
            places.append((shard, int(rest)))
        if len(places) < 2:
            return None
        skip = self._skip(plan)
        feats = []
        for shard, index in places:
            try:
                feats.append(parse_example(self._data(shard, index), skip=skip))
            except ConversionError:
                return None
        out = columns(feats, plan, self._options)
        if out is not None:
            out["fps"] = self._episode_fps()
        return out

    def _episode_fps(self) -> float:
        """The episodes' frame rate: the option's, else the dataset's known rate (or the default)."""
        if self._fps is None:
            self._fps = self._options.fps or KNOWN_DATASETS.get(self._dataset_name(), (DEFAULT_FPS, None))[0]
        return self._fps

    def _warn_non_finite(self, keys: list[str], where: str) -> None:
        """Warn, once per dataset and key, of episode-level values left out as not finite."""
        for key in keys:
            if (self._root, key) not in _WARNED:  # verify and every worker read episodes again
                _WARNED.add((self._root, key))
                log.warning("%s: %s holds NaN or infinity (first seen in %s), which the metadata's JSON cannot "
                            "store: it is left out of each such episode, whose extra field %s names it",
                            self._root, key, where, LEFT_OUT_FIELD)  # fmt: skip

    def _segments(self, key: str) -> list[_Segment]:
        """The records of a per-step episode: ``(shard, first, last)`` per shard, in order.

        Raises:
            ConversionError: the key names no episode, or the episodes a truncated shard lacks.
        """
        name, _, rest = key.rpartition(":")
        if rest == "missing" and name in self._by_name:
            shard = self._by_name[name]
            raise ConversionError(
                f"{shard.path}: missing records: the shard holds {len(self._scan(shard))} records (steps), "
                f"dataset_info.json lists {shard.expected} (a truncated or replaced shard); {_recopy()}"
            )
        pieces = [key] if name in self._by_name else key.split("+")  # a shard's name may hold a '+'
        segments: list[_Segment] = []
        for piece in pieces:
            name, _, rest = piece.rpartition(":")
            lo, _, hi = rest.partition("-")
            if name not in self._by_name or not (lo.isdigit() and hi.isdigit()):
                raise ConversionError(f"{self._root}: no episode {key!r}")
            segments.append((self._by_name[name], int(lo), int(hi)))
        return segments

    def _read_steps(
        self, segments: list[_Segment], where: str, skip: frozenset[str]
    ) -> dict[str, FeatureValue]:
        steps, labels = [], []
        fix = _recopy()
        for shard, a, b in segments:
            for i in range(a, b + 1):
                label = f"record {i}" if len(segments) == 1 else f"{shard.name} record {i}"
                prefix = f"{shard.path}: record {i}: "
                try:
                    steps.append(self._parse(self._data(shard, i, fix=fix), prefix[:-2], skip=skip, fix=fix))
                except ConversionError as exc:  # the whole episode fails, named by its records
                    raise ConversionError(f"{where}: {label}: {str(exc).removeprefix(prefix)}") from None
                labels.append(label)
        plan = self._setup()
        if "steps/is_first" in plan.specs and not _flag(steps[0], "is_first"):
            raise ConversionError(f"{where}: {labels[0]} is not is_first: the episode's start is missing")
        if "steps/is_last" in plan.specs and not _flag(steps[-1], "is_last"):
            raise ConversionError(f"{where}: {labels[-1]} is not is_last: the episode is cut off")
        return _merge_steps(steps, labels, where)

    def close(self) -> None:
        """Close the open shard."""
        if self._fd is not None:
            os.close(self._fd[1])
            self._fd = None


_Segment = tuple[Shard, int, int]  # a per-step episode's records in one shard: (shard, first, last)


def _step_key(segments: list[_Segment]) -> str:
    """A per-step episode's key: ``shard:first-last``, its parts joined by ``+`` across shards."""
    return "+".join(f"{shard.name}:{a}-{b}" for shard, a, b in segments)


def _no_steps(feats: dict[str, FeatureValue]) -> bool:
    """Whether a per-episode record holds no steps: its ``steps/is_first`` (or ``is_last``) is empty."""
    count = next((feats[k] for k in FLAG_KEYS if k in feats), None)
    return count is not None and len(count) == 0


def _flag(feats: dict[str, FeatureValue], name: str) -> bool:
    value = feats.get(name)
    return value is not None and not isinstance(value, list) and value.size > 0 and bool(value[0] != 0)


def _index(text: str, key: str) -> int:
    if not text.isdigit():
        raise ConversionError(f"no episode {key!r}: expected SHARD:RECORD")
    return int(text)


def _unsupported(specs: dict[str, Spec]) -> dict[str, str]:
    """Declared features a ``.kdb`` file cannot hold, and why: the rest of the dataset
    still converts, and the metadata's ``rlds.left_out`` lists these."""
    out: dict[str, str] = {}
    for key, spec in specs.items():
        steps = key.startswith(STEPS)
        if spec.problem is not None:
            out[key] = spec.problem
        elif spec.ragged and steps:
            out[key] = (
                "a list of its own length at every step (ragged); .kdb arrays have one width per episode"
            )
        elif spec.ragged:
            out[key] = (
                "a list of lists (TFDS stores it ragged: flat values, and row lengths as the lists may differ "
                "in length); this reader does not rebuild the lists from the row lengths, and the flat values "
                "alone would lose which value belongs to which list"
            )
        elif spec.kind == "image" and not steps:
            out[key] = (
                "an image of the whole episode, not one per step; .kdb cameras hold a frame per step and "
                "extra fields hold text and numbers"
            )
        elif spec.kind == "text" and steps and spec.shape != ():
            shape = "of unknown shape" if spec.shape is None else f"of shape {spec.shape}"
            out[key] = (
                f"a string tensor {shape} at every step, several texts per step; .kdb extra fields hold "
                "one text per step"
            )
        elif spec.kind == "image" and spec.dtype not in (None, "uint8"):
            out[key] = (
                f"a {spec.dtype} image (TFDS stores these as PNG: 16-bit, or float bit-cast into 4 "
                "channels); .kdb cameras hold 8-bit frames"
            )
    return out
