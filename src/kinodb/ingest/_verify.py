"""Verify an ingest: re-read the source and compare every episode of the output with it.

The source is read by its own `Source` class, with the options the ingest recorded in
the output's metadata (``ingest.options``; keyword arguments override them), so
verification needs nothing format-specific. Each output episode is matched to the
source episode named by its ``source_episode`` extra field, one episode at a time:

- arrays: frame counts, dtypes and the max abs difference of every array (0 expected;
  a recorded ``dtype`` cast is applied to the source first, as the ingest did), and, for
  floats stored in the source's dtype with no cast recorded, every bit (`other_bits`: a
  NaN's payload, the sign of a zero); where a
  source concatenates several of its keys into the states or actions, each component of
  the stored array is also compared with that key's values as the source holds them
  (`SOURCE_PARTS`), exactly and without rounding either side, so a conversion that
  rounds (an int64 in float64) shows;
- cameras: frames the source holds encoded must be stored byte for byte, and each must
  decode in full as the reader decodes it (a damaged source frame stored unchanged is
  reported with the decoder's message); frames encoded from the source's pixels must
  decode exactly (``png``, ``raw``) or, for ``jpeg``, reach a PSNR threshold
  (`DEFAULT_PSNR`), or else come within `CODEC_MARGIN_DB` of what a fresh JPEG encode of
  the source frame at the recorded quality reaches (small or busy frames lose more to
  JPEG than camera frames do; a wrong frame does not get that close).
  A threshold given explicitly is an absolute floor;
- labels: embodiment, task, fps, success, total reward and the extra fields;
- the dataset metadata the converter reads from the source (attributes, info files,
  features): each of its keys stored with the same value;
- episodes of the source missing from the output (unless the ingest skipped them and
  listed them in the metadata), and output episodes with no source episode.

The report is `kinodb.ingest._verify_report`'s; the camera comparison lives in
`kinodb.ingest._verify_frames`.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from kinodb.errors import ConversionError, KinodbError, WriterError
from kinodb.ingest._base import (
    SOURCE_PARTS,
    TOTAL_UNKNOWN,
    Source,
    SourceInfo,
    SourceOptions,
    formats,
    source_class,
)
from kinodb.ingest._exact import exact_equal
from kinodb.ingest._hdf5_layout import NEXT_OBS_LAST, record_rows
from kinodb.ingest._run import (
    _select,
    check_dtype,
    check_positive,
    name_list,
    option_name,
    option_value,
    override_task,
    refuse_unused,
)
from kinodb.ingest._verify_frames import FrameChecker, frame_psnr
from kinodb.ingest._verify_report import (
    CODEC_MARGIN_DB,
    DEFAULT_PSNR,
    CameraCheck,
    VerifyReport,
    format_number,
)
from kinodb.ingest._verify_report import MAX_PROBLEMS as MAX_PROBLEMS  # re-exported: a public name
from kinodb.kdb._builder import json_metadata
from kinodb.kdb.reader import META_FIELDS, Database, open_database
from kinodb.kdb.writer import Writer

_PROVENANCE = ("source_file", "source_episode")
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(Writer.add_episode).parameters.items()
    if p.default is not inspect.Parameter.empty
}


# -- what the ingest did ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """The options the ingest ran with, as far as the output records them."""

    format: str | None
    options: SourceOptions
    dtype: str | None
    embodiment: str | None
    task: str | None
    episodes: str | list[int] | None
    max_episodes: int | None
    jpeg_quality: int  # what frames encoded as JPEG were encoded with
    selection_known: bool  # False: the output predates recorded options
    selected: int | None
    skipped: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """The options as JSON, for the report."""
        o = self.options
        return {
            "images": o.images, "state_keys": list(o.state_keys) if o.state_keys else None, "split": o.split,
            "flip_images": o.flip_images, "fps": o.fps, "dtype": self.dtype, "embodiment": self.embodiment,
            "task": self.task, "episodes": self.episodes, "max_episodes": self.max_episodes,
            "action_key": o.action_key, "keep_model_file": o.keep_model_file,
        }  # fmt: skip


def _recorded(metadata: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The ingest options from the metadata, and whether they were recorded as such.

    Files written before ``ingest.options`` existed give what their metadata still says:
    the source's own record of its split and state keys, the image orientation, and
    whether any camera was stored.
    """
    ingest = metadata.get("ingest")
    ingest = ingest if isinstance(ingest, Mapping) else {}
    options = ingest.get("options")
    if isinstance(options, Mapping):
        return dict(options), True
    own = metadata.get(str(ingest.get("format")))
    own = own if isinstance(own, Mapping) else {}
    return {
        "split": own.get("split"),
        "state_keys": own.get("state_keys") or None,
        "flip_images": metadata.get("image_orientation") == "rotated_180",
        "images": bool(schema.get("cameras")),
    }, False


def _plan(metadata: Mapping[str, Any], schema: Mapping[str, Any], overrides: Mapping[str, Any]) -> _Plan:
    """Recorded options, with the caller's non-None ``overrides`` on top."""
    rec, known = _recorded(metadata, schema)
    rec.update({k: v for k, v in overrides.items() if v is not None})
    ingest = metadata.get("ingest")
    ingest = ingest if isinstance(ingest, Mapping) else {}
    skipped = [s.get("episode") for s in ingest.get("skipped") or () if isinstance(s, Mapping)]
    keys = rec.get("state_keys")
    options = SourceOptions(
        images=bool(rec.get("images", True)),
        state_keys=tuple(str(k) for k in keys) if keys else None,
        split=rec.get("split"),
        flip_images=bool(rec.get("flip_images", False)),
        fps=rec.get("fps"),
        action_key=rec.get("action_key"),
        keep_model_file=bool(rec.get("keep_model_file", False)),
        frame_chunks=True,  # decoded video compared a chunk at a time, never held whole
    )
    selected, fmt = ingest.get("selected"), ingest.get("format")
    return _Plan(
        format=fmt if isinstance(fmt, str) else None,
        options=options,
        dtype=rec.get("dtype"),
        embodiment=rec.get("embodiment"),
        task=rec.get("task"),
        episodes=rec.get("episodes"),
        max_episodes=rec.get("max_episodes"),
        jpeg_quality=int(rec.get("jpeg_quality") or 95),
        selection_known=known or any(overrides.get(k) is not None for k in ("episodes", "max_episodes")),
        selected=selected if isinstance(selected, int) else None,
        skipped=tuple(str(k) for k in skipped if k is not None),
    )


# -- the entry point ----------------------------------------------------------------------


def verify(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str = "auto",
    images: bool | None = None,
    state_keys: str | Sequence[str] | None = None,
    split: str | None = None,
    flip_images: bool | None = None,
    fps: float | None = None,
    dtype: str | None = None,
    embodiment: str | None = None,
    task: str | None = None,
    episodes: str | Sequence[int] | None = None,
    max_episodes: int | None = None,
    psnr: float | None = None,
    action_key: str | None = None,
) -> VerifyReport:
    """Compare the ``.kdb`` file ``out`` with the dataset ``src`` it was ingested from.

    Options left at None come from the output's metadata (``ingest.options``); ``format``
    ``"auto"`` takes the recorded format, else detects it. Reads one episode at a time.
    ``psnr`` (dB) is the floor for frames stored as JPEG from the source's pixels; left at
    None, it is `DEFAULT_PSNR`, and a frame under it still passes when it is within
    `CODEC_MARGIN_DB` of a fresh JPEG encode of the source frame at the recorded quality.

    Example:
        >>> report = kinodb.ingest.verify("lift/ph/low_dim.hdf5", "lift.kdb")
        >>> report.ok, report.arrays["actions"]
        (True, 0.0)

    Raises:
        ConversionError: ``out`` was not written by an ingest (it records no source to
            compare with); ``src`` is not of the format ``out`` was ingested from; the
            source cannot be read at all, or its format is unknown.
        FormatError: ``out`` is not a readable ``.kdb`` file.
    """
    path, t0 = os.fspath(src), time.perf_counter()
    check_dtype(dtype)
    check_positive("fps", fps)
    check_positive("psnr", psnr)
    state_keys = name_list("state_keys", state_keys)
    overrides = {
        "images": images, "state_keys": state_keys, "split": split,
        "flip_images": flip_images, "fps": fps, "dtype": dtype, "embodiment": embodiment, "task": task,
        "episodes": episodes if episodes is None or isinstance(episodes, str) else list(episodes),
        "max_episodes": max_episodes, "action_key": action_key,
    }  # fmt: skip
    with open_database(out) as db:
        _require_ingest_record(db)
        plan = _plan(db.metadata(), db.schema(), overrides)
        _require_recorded_format(db, plan, format)
        cls = source_class(plan.format if format == "auto" and plan.format else format, path)
        refuse_unused(cls, path, {"action_key": action_key, "split": split, "state_keys": state_keys,
                                  "flip_images": flip_images})  # fmt: skip
        source = _open_source(cls, path, plan, db)
        report = VerifyReport(
            path,
            os.fspath(out),
            cls.format,
            DEFAULT_PSNR if psnr is None else float(psnr),
            options=plan.describe(),
        )
        report.codec_relative = psnr is None
        try:
            _Checker(db, source, plan, report).run()
        finally:
            source.close()
    report.seconds = time.perf_counter() - t0
    return report


def _first_difference(source: Any, stored: Any, path: str) -> str | None:
    """Where two JSON values first differ (``'hdf5'.'env_args': the source has ...``), or
    None when they are equal (``1`` and ``1.0`` differ: JSON keeps ints and floats apart)."""
    if isinstance(source, Mapping) and isinstance(stored, Mapping):
        for key in sorted(set(source) | set(stored)):
            if key not in stored:
                return f"{path}.{key!r}: the source gives it, the output lacks it"
            if key not in source:
                return f"{path}.{key!r}: the output holds it, the source does not give it"
            found = _first_difference(source[key], stored[key], f"{path}.{key!r}")
            if found is not None:
                return found
        return None
    if isinstance(source, list) and isinstance(stored, list) and len(source) == len(stored):
        for k, (a, b) in enumerate(zip(source, stored, strict=True)):
            found = _first_difference(a, b, f"{path}[{k}]")
            if found is not None:
                return found
        return None
    if type(source) is type(stored) and source == stored:
        return None
    return f"{path}: the source has {_short(source)}, the output {_short(stored)}"


# -- what the output was made from --------------------------------------------------------


def _require_ingest_record(db: Database) -> None:
    """Refuse a file no ingest wrote: with no recorded source there is nothing to compare.

    Every ingest records ``ingest`` (source, format, selection) in the dataset metadata;
    files written with `kinodb.Writer`, by ``kino create-test`` or by ``kino merge`` do not.
    """
    if isinstance(db.metadata().get("ingest"), Mapping):
        return
    out = db.path()
    made_by = db.dataset_info().get("source_format")
    if made_by == "kinodb-merge":
        inputs = [
            str(m.get("file")) for m in db.metadata().get("merged_from") or () if isinstance(m, Mapping)
        ]
        raise ConversionError(
            f"{out} was made by kino merge (of {', '.join(inputs) or 'other .kdb files'}), not by kino "
            "ingest: it records no source dataset, so there is nothing to verify it against; verify each "
            "merged input against the dataset it was ingested from, and check this file with: "
            f"kino validate {out}"
        )
    what = f"source format {made_by!r}" if made_by else "no source format"
    raise ConversionError(
        f"{out} was not made by kino ingest: it records {what} and no ingest provenance (no 'ingest' "
        "entry in its metadata), so there is nothing to verify it against; kino verify compares a "
        "file written by kino ingest with the dataset it read. To check this file's own integrity, "
        f"run: kino validate {out}"
    )


def _require_recorded_format(db: Database, plan: _Plan, format: str) -> None:
    """Refuse an explicit format other than the one the ingest recorded (keys would not match)."""
    if format == "auto" or plan.format is None or format == plan.format:
        return
    raise ConversionError(
        f"{db.path()} was ingested from a source of format {plan.format} ({_recorded_source(db)}), "
        f"not {format}: leave {option_name('format')} out to read the source as the ingest did"
    )


def _recorded_source(db: Database) -> str:
    """What the metadata says the ingest read: its format and its path."""
    info = db.dataset_info()
    ingest = db.metadata().get("ingest")
    source = ingest.get("source") if isinstance(ingest, Mapping) else None
    parts = (
        [f"its metadata records source format {info.get('source_format')!r}"]
        if info.get("source_format")
        else []
    )
    if isinstance(source, str):
        parts.append(f"read from {source}")
    return ", ".join(parts) or "as recorded in its metadata"


def _open_source(cls: type[Source], path: str, plan: _Plan, db: Database) -> Source:
    """``cls`` on ``path``; a source of another kind than the ingest read is named as such."""
    try:
        source: Source = cls(path, plan.options)  # type: ignore[call-arg]
    except (KinodbError, OSError) as exc:
        if plan.format is None or not os.path.exists(path) or _detects(cls, path):
            raise
        ingest = db.metadata().get("ingest")
        recorded = ingest.get("source") if isinstance(ingest, Mapping) else None
        if isinstance(recorded, str) and os.path.realpath(recorded) == os.path.realpath(path):
            raise  # the very source the ingest read: its own reader says what changed
        others = [
            name for name, load in sorted(formats().items()) if name != cls.format and _detects(load(), path)
        ]
        looks = f"it looks like {' or '.join(others)}" if others else "no known format recognises it"
        fix = f"kino verify {recorded} {db.path()}" if isinstance(recorded, str) else "kino verify SRC OUT"
        raise ConversionError(
            f"{path} is not a dataset of format {cls.format} ({looks}), but {db.path()} was ingested "
            f"from one ({_recorded_source(db)}); pass the dataset it was ingested from: {fix}"
        ) from exc
    return source


def _detects(cls: type[Source], path: str) -> bool:
    try:
        return bool(cls.detect(path))
    except (KinodbError, OSError, ValueError):
        return False


# -- comparing ----------------------------------------------------------------------------


class _Checker:
    """Walks the output's episodes, reads each one's source episode, records differences."""

    def __init__(self, db: Database, source: Source, plan: _Plan, report: VerifyReport) -> None:
        self.db, self.source, self.plan, self.report = db, source, plan, report
        self.renames: dict[str, str] = {}  # this version's camera/array names -> the output's
        self.task_field: str | None = None
        self.schema = db.schema()
        self.frames = FrameChecker(db, report, plan.jpeg_quality)

    def _earlier_rlds_names(self, info: SourceInfo) -> dict[str, str]:
        """Camera and array names of an RLDS file ingested by an earlier kinodb, which kept
        TFDS's ``/`` (``observation/natural_language_embedding``), by today's names (``.``),
        matched through the source keys each records in ``rlds.roles``."""
        stored = (self.db.metadata().get("rlds") or {}).get("roles")
        roles = (info.metadata.get("rlds") or {}).get("roles")
        if not isinstance(stored, Mapping) or not isinstance(roles, Mapping):
            return {}
        out: dict[str, str] = {}
        for part in ("cameras", "arrays"):
            then, now = stored.get(part), roles.get(part)
            if isinstance(then, Mapping) and isinstance(now, Mapping):
                by_key = {key: name for name, key in then.items()}
                out.update({name: by_key[key] for name, key in now.items() if by_key.get(key, name) != name})
        return out

    def run(self) -> None:
        """Compare every output episode, then list the source episodes nobody matched."""
        keys = self.source.episodes()
        info = self.source.info()
        self.renames = self._earlier_rlds_names(info)
        roles = (info.metadata.get("rlds") or {}).get("roles") or {}
        fields = roles.get("fields") if isinstance(roles, Mapping) else None
        self.task_field = next(
            (name for name, key in (fields or {}).items() if key == roles.get("task")), None
        )  # where files of earlier versions kept an instruction that changes within an episode
        known = set(keys)
        wanted = self._wanted(keys)
        skipped = set(self.plan.skipped)
        self.report.skipped = [k for k in keys if k in skipped]
        seen: set[str] = set()
        for i in range(len(self.db)):
            meta = self.db.read_meta(i)
            key = str(meta.get("source_episode"))
            why = _unmatched(meta.get("source_episode"), known, wanted)
            if why is not None:
                self.report.extra.append(f"{i} ({key})")
                self.report.add("extra", f"episode {i}: {why}")
            elif key in seen:
                self.report.add("duplicate", f"episode {i}: source episode {key!r} appears twice")
            else:
                seen.add(key)
                self._episode(i, key, meta, info)
        self._dataset_metadata(info)
        if wanted is None:
            self._count_only(len(seen))
            return
        for key in wanted:
            if key not in seen and key not in skipped:
                self.report.missing.append(key)
                self.report.add("missing", f"source episode {key!r} is not in the output")

    def _dataset_metadata(self, info: SourceInfo) -> None:
        """The dataset metadata the converter reads from the source now (its attributes,
        info files, features) against what the ingest stored: each key the converter gives
        must be stored with the same value. Keys only the output holds (``ingest``, ``stats``
        from ``kino stats``, a user's own) are not compared. A file an earlier kinodb
        ingested (its options unrecorded, or its names those of an earlier converter) keeps
        that converter's metadata: not compared, and the report says so."""
        if self.renames or not self.plan.selection_known:
            self.report.notes.append(
                "dataset metadata not compared: an earlier kinodb ingested this file, and its converter "
                "stored the metadata differently"
            )
            return
        try:
            fresh = json_metadata(info.metadata, "metadata")
        except WriterError as exc:
            self.report.add("metadata", f"the source's dataset metadata cannot be compared: {exc}")
            return
        stored = self.db.metadata()
        for key in sorted(fresh):
            if key not in stored:
                self.report.add(
                    "metadata", f"dataset metadata {key!r}: the source gives it, the output lacks it"
                )
                continue
            where = _first_difference(fresh[key], stored[key], repr(key))
            if where is not None:
                self.report.add("metadata", f"dataset metadata {where}")

    def _wanted(self, keys: list[str]) -> list[str] | None:
        """The source keys the ingest selected (None: the selection was not recorded)."""
        if not self.plan.selection_known:
            self.report.notes.append(
                "the output does not record the ingest's options (written by an older kinodb): "
                "options were recovered from its metadata, and missing episodes are only counted"
            )
            return None
        return _select(keys, self.plan.episodes, self.plan.max_episodes, self.report.source)

    def _count_only(self, matched: int) -> None:
        expected = self.plan.selected
        if expected is not None and matched + len(self.report.skipped) < expected:
            self.report.add(
                "missing",
                f"the ingest selected {expected} episodes and skipped {len(self.report.skipped)}, "
                f"but only {matched} are in the output",
            )

    def _episode(self, i: int, key: str, meta: dict[str, Any], info: SourceInfo) -> None:
        where = f"episode {i} ({key})"
        try:
            args = self.source.read(key)
        except (KinodbError, ValueError, KeyError, OSError) as exc:
            self.report.add("unreadable", f"{where}: the source episode cannot be read now: {exc}")
            return
        parts = args.pop(SOURCE_PARTS, None)
        if self.plan.task is not None:
            override_task(args, self.plan.task)
        want = _expected_arrays(args, self.plan.dtype)
        if self.renames:
            want = {self.renames.get(k, k): v for k, v in want.items()}
            if args.get("images"):
                args = {**args, "images": {self.renames.get(k, k): v for k, v in args["images"].items()}}
        T = len(want["actions"])
        if meta["num_frames"] != T:
            self.report.add("frames", f"{where}: {meta['num_frames']} frames, the source has {T}")
            return
        self.report.episodes_compared += 1
        self.report.frames_compared += T
        got = self.db.read_episode_actions_only(i)
        got.pop("meta")
        if "task_index" in want and "task_index" not in got and self.task_field:
            args, want = _texts_per_step(args, want, self.task_field)
        differ = self._arrays(where, got, want)
        if isinstance(parts, Mapping):
            self._components(where, got, parts, differ)
        images = (args.get("images") or {}) if self.plan.options.images else {}
        self.frames.compare(i, where, images)
        self._labels(where, meta, _expected_labels(args, want, self.plan, info))

    def _arrays(self, where: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> set[str]:
        """Compare every array; return the names of those that differ."""
        arrays = self.report.arrays
        differ: set[str] = set()
        for name in [*want, *(k for k in got if k not in want)]:
            a, b = got.get(name), want.get(name)
            if a is None or b is None:
                arrays[name] = math.inf
                side = "missing from the output" if a is None else "not in the source"
                self.report.add("arrays", f"{where}: array {name!r} is {side}")
                differ.add(name)
                continue
            if a.shape != b.shape:
                arrays[name] = math.inf
                self.report.add("arrays", f"{where}: {name} has shape {a.shape}, the source {b.shape}")
                differ.add(name)
                continue
            if a.dtype != b.dtype:
                cast = a.dtype.kind == b.dtype.kind == "f"  # what a dtype cast of the ingest makes
                hint = (
                    f" (if the ingest cast it, verify with {option_value('dtype', a.dtype.name)})"
                    if cast
                    else ""
                )
                self.report.add("dtype", f"{where}: {name} is {a.dtype}, the source {b.dtype}{hint}")
            diff, frame = max_abs_diff(a, b)
            arrays[name] = max(arrays.get(name, 0.0), diff)
            # float64 holds every float exactly, but not every int64: those compare exactly
            if diff > 0 or ("iu" in (a.dtype.kind, b.dtype.kind) and not exact_equal(a, b).all()):
                self.report.add(
                    "arrays", f"{where}: {name} differs: max abs diff {format_number(diff)} at frame {frame}"
                )
                differ.add(name)
            elif self.plan.dtype is None and a.dtype == b.dtype:  # no cast: the bits are the source's
                bits = other_bits(a, b)
                if bits is not None:
                    self.report.add("arrays", f"{where}: {name} {bits}")
                    differ.add(name)
        return differ

    def _components(
        self, where: str, got: dict[str, np.ndarray], parts: Mapping[str, Any], differ: set[str]
    ) -> None:
        """Each component of a concatenated array against the source key's own values (arrays
        already found to differ from the conversion are not reported twice)."""
        for array, keys in parts.items():
            stored = got.get(array)
            if stored is None or array in differ or not isinstance(keys, Mapping):
                continue
            spans = (self.schema.get(array) or {}).get("components") or {}
            for name, value in keys.items():
                source = np.asarray(value)
                source = source.reshape(len(source), -1)
                span = spans.get(name)
                width = int(np.prod(stored.shape[1:], dtype=np.int64))
                if span is None and len(keys) == 1 and source.shape[1] == width:
                    span = [0, width]  # one key made the whole array (a schema need not name it)
                if span is None or span[1] - span[0] != source.shape[1] or len(source) != len(stored):
                    self.report.arrays[array] = math.inf
                    self.report.add("arrays", f"{where}: {array} has no component {name!r} of "
                                    f"{source.shape[1]} values per frame, as the source's key has")  # fmt: skip
                    continue
                self._component(where, f"{array} component {name!r}", stored[:, span[0] : span[1]], source)

    def _component(self, where: str, what: str, part: np.ndarray, source: np.ndarray) -> None:
        """One stored component against the source's values: equal, without rounding either."""
        dtype = source.dtype
        if self.plan.dtype is not None and part.dtype.kind == "f":
            source = source.astype(part.dtype)  # the ingest's recorded cast
        same = exact_equal(part, source)
        if same.all():
            return
        bad = np.argwhere(~same)
        frame, col = (int(x) for x in bad[0])
        diff = max(_gap(x, y) for x, y in zip(part[~same].tolist(), source[~same].tolist(), strict=True))
        array = what.split(" ", 1)[0]
        self.report.arrays[array] = max(self.report.arrays.get(array, 0.0), diff)
        self.report.add(
            "arrays",
            f"{where}: {what} differs from the source's {dtype} values at {len(bad)} places: frame "
            f"{frame} holds {part[frame, col].item()!r}, the source {source[frame, col].item()!r} "
            f"(max abs diff {format_number(diff)})",
        )

    def _labels(self, where: str, meta: dict[str, Any], want: dict[str, Any]) -> None:
        for name, value in want.items():
            got = _extra_fields(meta) if name == "extra_fields" else meta.get(name)
            if got != value and not (name == "fps" and _same_float(got, value)):
                if isinstance(got, dict) and isinstance(value, dict):  # the extra fields
                    self.report.add(name, f"{where}: extra fields differ: {_fields_differ(got, value)}")
                else:
                    self.report.add(
                        name, f"{where}: {name} is {_short(got)}, the source says {_short(value)}"
                    )


# -- expected values (what the ingest would store) ----------------------------------------


def _texts_per_step(
    args: dict[str, Any], want: dict[str, np.ndarray], field: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The source episode as an RLDS ingest of an earlier kinodb stored it: an instruction
    that changes within the episode as the extra field ``field`` (one text per step), not
    as today's ``tasks`` and ``task_index``."""
    extra = dict(args.get("extra") or {})
    tasks = extra.pop("tasks", None)
    if not isinstance(tasks, list):
        return args, want
    extra[field] = [tasks[int(k)] for k in np.asarray(want["task_index"]).reshape(-1)]
    return {**args, "extra": extra}, {k: v for k, v in want.items() if k != "task_index"}


def _unmatched(key: Any, known: set[str], wanted: list[str] | None) -> str | None:
    """Why an output episode with this ``source_episode`` has no source episode (None: it has)."""
    if key is None:
        return "no source_episode field"
    if not isinstance(key, str) or key not in known:
        return f"source episode {key!r} is not in the source"
    if wanted is not None and key not in wanted:
        return f"source episode {key!r} was not selected by the ingest"
    return None


def _expected_arrays(args: Mapping[str, Any], dtype: str | None) -> dict[str, np.ndarray]:
    """The arrays `Writer.add_episode` stores for ``args``, after the ingest's dtype cast."""
    target = None if dtype is None else np.dtype(dtype)

    def norm(value: Any, default: type) -> np.ndarray:
        if isinstance(value, np.ndarray):
            arr = value.astype(target) if target is not None and value.dtype.kind == "f" else value
        else:
            arr = np.asarray(value, default)
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False)

    actions = norm(args["actions"], np.float32)
    T = len(actions)
    states, rewards, terminal = args.get("states"), args.get("rewards"), args.get("is_terminal")
    out = {
        "actions": actions,
        "states": np.zeros((T, 0), np.float32) if states is None else norm(states, np.float32),
        "rewards": np.zeros(T, np.float32) if rewards is None else norm(rewards, np.float32),
        "is_terminal": (np.arange(T) == T - 1) if terminal is None else np.asarray(terminal).astype(bool),
    }
    if args.get("timestamps") is not None:
        out["timestamps"] = norm(args["timestamps"], np.float64)
    for name, value in (args.get("extra_arrays") or {}).items():
        out[str(name)] = norm(value, np.float32)
    return out


def _expected_labels(
    args: Mapping[str, Any], arrays: Mapping[str, np.ndarray], plan: _Plan, info: SourceInfo
) -> dict[str, Any]:
    """Embodiment, task, fps, success, total reward and extra fields, as the ingest sets them."""
    overrides: dict[str, Any] = {"embodiment": plan.embodiment or info.embodiment,
                 "task": plan.task if plan.task is not None else info.task,
                 "fps": plan.options.fps or info.fps}  # fmt: skip
    labels = {k: args.get(k, _DEFAULTS[k]) if overrides[k] is None else overrides[k] for k in overrides}
    success = args.get("success")
    total = args.get("total_reward")
    if total is None and args.get("rewards") is not None and not args.get(TOTAL_UNKNOWN):
        # as `Writer.add_episode` stores it: unknown (None) when the sum is NaN or infinite
        total = float(arrays["rewards"].astype(np.float64).sum())
        total = total if math.isfinite(total) else None
    extra = {k: v for k, v in _plain(args.get("extra") or {}).items() if k not in _PROVENANCE}
    return {
        **labels,
        "fps": float(labels["fps"]),
        "success": None if success is None else bool(success),
        "total_reward": None if total is None else float(total),
        "extra_fields": extra,
    }


def _extra_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """An episode's extra fields by their own names, without the provenance ones."""
    out = {}
    for key, value in meta.items():
        if key in META_FIELDS:
            continue
        name = (
            key[len("extra.") :] if key.startswith("extra.") and key[len("extra.") :] in META_FIELDS else key
        )
        if name not in _PROVENANCE:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    """``value`` as it comes back from the file: NumPy scalars as Python, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fields_differ(got: dict[str, Any], want: dict[str, Any]) -> str:
    """The extra fields that differ, each with what it holds and what the source says; the
    rows of a `NEXT_OBS_LAST` field compared key by key (`_rows_differ`)."""
    said = []
    for name in sorted(set(got) | set(want), key=str):
        a, b = got.get(name), want.get(name)
        if a == b:
            continue
        if name == NEXT_OBS_LAST:
            said.append(f"{name}: {_rows_differ(record_rows(a), record_rows(b))}")
        else:
            said.append(f"{name!r} is {_short(a)}, the source says {_short(b)}")
    return "; ".join(said[:4]) + (f"; and {len(said) - 4} more" if len(said) > 4 else "")


def _rows_differ(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> str:
    """Which ``next_obs`` key's last row differs, and where (the first differing element)."""
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a is None or b is None:
            return (
                f"the output holds no last row of next_obs/{key}, which the source's next_obs/{key} (obs/{key} "
                "one frame later) has" if a is None else
                f"the output holds a last row of next_obs/{key}, but the source's next_obs/{key} is no longer "
                f"obs/{key} one frame later"
            )  # fmt: skip
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"next_obs/{key}'s last row is {a.dtype} {list(a.shape)}, the source's {b.dtype} {list(b.shape)}"
        if a.tobytes() != b.tobytes():
            flat = int(np.argmax(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8)) // a.itemsize)
            at = [int(i) for i in np.unravel_index(flat, a.shape)] if a.shape else []
            return (
                f"next_obs/{key}'s last row differs at element {at}: the output holds "
                f"{a.reshape(-1)[flat].item()!r}, the source {b.reshape(-1)[flat].item()!r}"
            )
    return "the records differ"


def _gap(x: float, y: float) -> float:
    """``|x - y|`` with neither rounded first (an int64 beside a float64); inf for NaN or inf."""
    try:
        return float(abs(Fraction(x) - Fraction(y)))
    except (ValueError, OverflowError):
        return math.inf


def _same_float(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- numbers ------------------------------------------------------------------------------


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """The largest ``|a - b|`` over two same-shaped arrays, and the frame where it is.

    NaN equals NaN and infinities equal themselves; NaN against a number counts as inf.
    """
    if a.size == 0:
        return 0.0, 0
    x, y = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - y)
    d[(x == y) | (np.isnan(x) & np.isnan(y))] = 0.0
    d[np.isnan(d)] = np.inf
    flat = int(d.argmax())
    return float(d.flat[flat]), int(np.unravel_index(flat, d.shape)[0])


def _places(n: int) -> str:
    return f"{n} place{'' if n == 1 else 's'}"


def other_bits(a: np.ndarray, b: np.ndarray) -> str | None:
    """Where two float arrays of one dtype whose values compare equal differ in their bits
    (a NaN's payload, the sign of a zero), as a phrase naming the first such element;
    None where every bit is the same (or the dtype is not a float of 2, 4 or 8 bytes)."""
    if a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        return None
    unsigned = np.dtype(f"u{a.dtype.itemsize}").newbyteorder(a.dtype.byteorder)
    x, y = a.view(unsigned), b.view(unsigned)
    same = x == y
    if same.all():
        return None
    at = np.unravel_index(int(np.argmin(same)), same.shape)
    digits = 2 * a.dtype.itemsize
    return (
        f"differs in its bits at {_places(int((~same).sum()))} where the values compare equal (a NaN's "
        f"payload or the sign of a zero): element {list(map(int, at))} (frame {int(at[0])}) holds "
        f"0x{int(x[at]):0{digits}x} ({a[at].item()!r}), the source 0x{int(y[at]):0{digits}x} ({b[at].item()!r})"
    )


__all__ = [
    "CODEC_MARGIN_DB",
    "DEFAULT_PSNR",
    "CameraCheck",
    "VerifyReport",
    "frame_psnr",
    "max_abs_diff",
    "other_bits",
    "verify",
]
