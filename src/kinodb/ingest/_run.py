"""Run an ingest: select episodes, convert them (in worker processes), write, report.

Beside it: `_options` (how messages name the options, and the checks of option values),
`_selection` (episode selection), `_progress` (the progress on stderr) and `_pool` (the
worker processes). The names of the first three stay importable from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from kinodb.errors import ConversionError, KinodbError, WriterError
from kinodb.ingest._base import (
    SOURCE_PARTS,
    SOURCE_WHERE,
    TOTAL_UNKNOWN,
    Source,
    SourceInfo,
    SourceOptions,
    source_class,
)
from kinodb.ingest._options import _OPTION_NAMES, skip_advice
from kinodb.ingest._options import check_dtype as check_dtype
from kinodb.ingest._options import check_positive as check_positive
from kinodb.ingest._options import name_list as name_list
from kinodb.ingest._options import option_name as option_name
from kinodb.ingest._options import option_value as option_value
from kinodb.ingest._options import options_named as options_named
from kinodb.ingest._options import refuse_unused as refuse_unused
from kinodb.ingest._pool import HELD, SPAWN_HELD, Pool, Raised
from kinodb.ingest._progress import QUIET_REFRESH_S as QUIET_REFRESH_S
from kinodb.ingest._progress import _Progress as _Progress
from kinodb.ingest._selection import _select as _select
from kinodb.ingest._selection import episode_indices as episode_indices
from kinodb.ingest._selection import parse_episodes as parse_episodes
from kinodb.kdb import _codecs
from kinodb.kdb._builder import drift_message, json_metadata
from kinodb.kdb._checks import mapping
from kinodb.kdb._files import not_regular, output_error, refuse_folder
from kinodb.kdb._layout import MAGIC
from kinodb.kdb.writer import Writer

if TYPE_CHECKING:
    from kinodb.ingest._verify import VerifyReport

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SKIPPED_SHOWN = 5  # skipped episodes listed per reason in a report's summary
ROTATED, AS_STORED = "rotated_180", "as_stored"
"""The metadata's ``image_orientation``: the frames were turned 180 degrees on ingest, or not."""
_DIGITS = re.compile(r"\d+")
# How to leave an episode out (`--episodes` naming the others): advice taken once it is skipped.
_LEAVE_OUT = re.compile(
    r"; to leave the demo out, select the others with .*? \(positions among the demos of [^)]*\)"
)
_ADDING = re.compile(r" \(adding episode (\d+)\)$")  # how the writer names the episode it refuses
_FRAME_AT = re.compile(r"images\[('[^']*'|\"[^\"]*\")\]\[(\d+)\]")  # how it names a frame
_DAMAGED_FRAME = re.compile(r"; pass complete \w+ bytes or the decoded pixels, or leave this episode out")


@dataclass
class IngestReport:
    """What an ingest did."""

    source: str
    output: str
    format: str
    episodes: int = 0
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (episode key, reason)
    notes: list[str] = field(default_factory=list)  # what the source did differently, and why
    verification: VerifyReport | None = None  # with ``verify=True``

    def summary(self, *, shown: int = SKIPPED_SHOWN) -> str:
        """One paragraph for people.

        Skipped episodes are grouped by reason (the reason with its numbers and the
        episode's key left out): the first ``shown`` of each group are listed with their
        reasons, the rest counted. ``skipped`` (and the file's metadata) keeps them all.
        """
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines = [
            f"ingested {self.episodes} episode{'' if self.episodes == 1 else 's'} ({self.frames} frames, "
            f"{self.bytes / 2**20:.1f} MiB) from "
            f"{self.source} ({self.format}) to {self.output} in {self.seconds:.2f} s ({rate:,.0f} frames/s)"
        ]
        lines += [f"note: {note}" for note in self.notes]
        for group in _group_by_reason(self.skipped):
            lines += [f"skipped {key}: {why}" for key, why in group[:shown]]
            rest = [key for key, _ in group[shown:]]
            if rest:
                keys = ", ".join(rest) if len(rest) <= 4 else f"{', '.join(rest[:3])}, ..., {rest[-1]}"
                lines.append(
                    f"skipped {len(rest)} more episode{'' if len(rest) == 1 else 's'} for the same reason ({keys})"
                )
        if self.verification is not None:
            lines.append(self.verification.summary())
        return "\n".join(lines)


def _group_by_reason(skipped: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """``skipped`` grouped by the reason's wording (key and numbers aside), in order of appearance."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, why in skipped:
        groups.setdefault(_DIGITS.sub("#", why.replace(key, "")), []).append((key, why))
    return list(groups.values())


def _nothing_converted(path: str, skipped: list[tuple[str, str]], *, shown: int = 3) -> str:
    """The error when every episode was skipped: why, grouped by reason, on one line."""
    groups = _group_by_reason(skipped)
    reasons = []
    for group in groups[:shown]:
        key, why = group[0]
        rest = [k for k, _ in group[1:]]
        if rest:
            keys = ", ".join(rest) if len(rest) <= 3 else f"{', '.join(rest[:2])}, ..., {rest[-1]}"
            why += (
                f" (and {len(rest)} more episode{'' if len(rest) == 1 else 's'} for the same reason: {keys})"
            )
        reasons.append(f"[{key}] {why}")
    if len(groups) > shown:
        more = sum(len(g) for g in groups[shown:])
        reasons.append(
            f"and {more} more episode{'' if more == 1 else 's'} for {len(groups) - shown} other reasons"
        )
    n = len(skipped)
    return (
        f"{path}: no episode could be converted ({'the one episode' if n == 1 else f'all {n} episodes'} "
        f"failed and {'was' if n == 1 else 'were'} skipped); nothing was written. Why: {'; '.join(reasons)}"
    )


def override_task(args: dict[str, Any], task: str) -> None:
    """Make ``task`` the task of every frame of an episode's ``add_episode`` arguments.

    The per-frame tasks of an episode whose task changes (the extra field ``tasks`` with
    the extra array ``task_index``) go too: they would contradict the task given.
    """
    args["task"] = task
    extra = args.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("tasks"), list):
        args["extra"] = {k: v for k, v in extra.items() if k != "tasks"}
        arrays = args.get("extra_arrays")
        if isinstance(arrays, dict) and "task_index" in arrays:
            args["extra_arrays"] = {k: v for k, v in arrays.items() if k != "task_index"}


@dataclass(frozen=True, slots=True)
class _Job:
    """What a worker needs to convert episodes on its own."""

    cls: type[Source]
    path: str
    options: SourceOptions
    image_codec: str
    jpeg_quality: int
    dtype: str | None
    names: Mapping[str, str] | None = None  # how messages name options (`options_named`), in workers too


def refuse_source_output(out: str, path: str) -> None:
    """Refuse an output that would replace the source or a file of it.

    That is the source itself, a file that a source folder holds (a LeRobot
    ``meta/info.json``, an RLDS shard), or a link to either, hard links included: replaced,
    the data being read would be gone. A new file in a source folder stays allowed, and so
    does a .kdb file there (an earlier ingest's output: no source reads those).

    Raises:
        ValueError: ``out`` is the source or one of its files; names both.
    """
    if os.path.realpath(out) == os.path.realpath(path):
        raise ValueError(f"the output {out} is the source itself; choose another output path")
    try:
        st = os.stat(out)
        if not stat.S_ISREG(st.st_mode) or _is_kdb(out):
            return
        if not os.path.isdir(path):
            same = path if os.path.isfile(path) and os.path.samestat(st, os.stat(path)) else None
        elif _inside(out, path):
            same = out
        else:
            same = _same_file_in(st, path)
    except OSError:  # no such output (a new file): nothing to replace
        return
    if same is not None:
        if same == out:
            what, suggestion = f"a file of the source {path}", os.path.normpath(path) + ".kdb"
        else:
            of = "" if same == path else f"{same} of "
            what = f"{of}the source {path} under another name (a link)"
            suggestion = (os.path.splitext(path)[0] if same == path else os.path.normpath(path)) + ".kdb"
        force = "overwrite=True" if _OPTION_NAMES.get() is None else option_name("overwrite")
        raise ValueError(
            f"the output {out} is {what}: {force} would replace it and break the source; write the output "
            f"elsewhere, e.g. {suggestion}"
        )


def _is_kdb(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _inside(path: str, folder: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top


def _same_file_in(st: os.stat_result, folder: str) -> str | None:
    """A file under ``folder`` (links followed) that is the file of ``st``, or None."""
    for root, _, files in os.walk(folder):
        for name in files:
            candidate = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.samestat(st, os.stat(candidate)):
                    return candidate
    return None


def ingest(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str = "auto",
    embodiment: str | None = None,
    task: str | None = None,
    fps: float | None = None,
    episodes: str | int | Iterable[int] | None = None,
    max_episodes: int | None = None,
    image_codec: str = "jpeg",
    jpeg_quality: int = 95,
    images: bool = True,
    dtype: str | None = None,
    state_keys: str | Sequence[str] | None = None,
    action_key: str | None = None,
    split: str | None = None,
    flip_images: bool = False,
    keep_model_file: bool = False,
    workers: int = 1,
    on_error: str = "raise",
    overwrite: bool = False,
    progress: bool = False,
    verify: bool = False,
) -> IngestReport:
    """Convert a dataset in another format into one ``.kdb`` file.

    Arrays keep their source dtype bit for bit unless ``dtype`` (e.g. ``"float32"``)
    asks for a cast of floating arrays; encoded JPEG/PNG frames pass through byte for
    byte; raw frames are encoded with ``image_codec``. Each episode records its source
    file and key in the extra fields ``source_file`` and ``source_episode``. ``episodes``
    selects by position in the source: a spec (``"0-9,29"``), one index, or indices.
    ``state_keys`` chooses and orders the source keys that make the states (a sequence,
    or one str of comma-separated keys, ``"robot0_eef_pos,robot0_gripper_qpos"``);
    ``action_key`` names the actions' source feature where a LeRobot dataset calls them
    something else than ``action`` or ``actions``, or an RLDS dataset something else than
    ``steps/action`` (a tensor, or a dict of tensors such as DROID's ``action_dict``).
    ``task`` replaces the task of every episode, and of every frame: the per-frame tasks
    of an episode whose task changes (the extra field ``tasks`` and extra array
    ``task_index``) are dropped. ``workers > 1`` converts in that many processes; the
    output is identical. The options are recorded in the metadata ``ingest.options``;
    ``verify`` then re-reads the source and compares every episode
    (`kinodb.ingest.verify`), on ``report.verification``. What a source did differently
    from its documented mapping (a state key kept apart to stay exact) is in
    ``report.notes``. The metadata's ``image_orientation`` says whether the frames were
    turned 180 degrees (``rotated_180``, by ``flip_images``) or not (``as_stored``),
    whatever the format, for `kinodb.merge` and the HDF5 export. ``keep_model_file`` keeps
    each robomimic HDF5 demo's ``model_file`` attribute (the simulator's MJCF XML, which
    robomimic's ``playback_dataset.py`` and ``dataset_states_to_obs.py`` need; tens of
    kilobytes a demo) as the extra field ``attrs.model_file``, which the HDF5 export
    writes back.

    Example:
        >>> kinodb.ingest.ingest("lift/ph/low_dim.hdf5", "lift.kdb", embodiment="panda")

    Raises:
        ConversionError: with ``on_error="raise"``, the first bad episode (no output is
            left behind); with ``on_error="skip"``, every episode failing (the message
            gives the reasons, grouped); always, a source that cannot be read at all; with
            ``verify``, a mismatch (the output file stays); a worker process that died.
        WriterError: ``out`` is a folder, or names one (``out/``), or its folder is missing,
            no folder or not writable (`refuse_unwritable`): before the source is read.
        ValueError: ``out`` is the source or a file of it (`refuse_source_output`), or an
            option is out of range; ``TypeError``: ``episodes`` is no selection
            (`episode_indices`).
    """
    episodes, keys_given = _check_options(on_error, state_keys, dtype, fps, workers, max_episodes, episodes)
    path = os.fspath(src)
    refuse_folder(out)  # now, not after reading the source
    refuse_unwritable(out)
    refuse_source_output(os.fspath(out), path)
    cls = source_class(format, path)
    refuse_unused(cls, path, {"action_key": action_key, "split": split, "state_keys": keys_given,
                              "flip_images": flip_images, "keep_model_file": keep_model_file})  # fmt: skip
    options = SourceOptions(images, tuple(keys_given) if keys_given else None, split, flip_images, fps,
                            jpeg_quality if image_codec == "jpeg" else None, action_key,
                            None if image_codec == "raw" else image_codec,
                            keep_model_file=bool(keep_model_file))  # fmt: skip
    job = _Job(cls, path, options, image_codec, jpeg_quality, dtype, _OPTION_NAMES.get())
    report = IngestReport(path, os.fspath(out), cls.format)
    t0 = time.perf_counter()
    keys, info = _scan_source(job, episodes, max_episodes)
    report.notes = list(getattr(info, "notes", None) or ())  # a plug-in's own SourceInfo may lack them
    overrides = {"embodiment": embodiment or info.embodiment, "task": task if task is not None else info.task,
                 "fps": fps if fps is not None else info.fps}  # fmt: skip
    recorded = _recorded(job, embodiment, task, episodes, max_episodes)
    metadata = _ingest_metadata(info, job, len(keys), recorded)
    with _create_writer(out, overwrite, job, info, metadata) as writer:
        _write_episodes(writer, job, keys, workers, overrides, on_error, report, progress, task)
        if report.skipped:
            writer.metadata["ingest"]["skipped"] = [{"episode": k, "reason": r} for k, r in report.skipped]
        if report.episodes == 0:
            raise ConversionError(_nothing_converted(path, report.skipped))
    report.seconds = time.perf_counter() - t0
    report.bytes = os.path.getsize(out)
    if verify:
        _verify_output(report, out)
    return report


def _check_options(
    on_error: str, state_keys: str | Sequence[str] | None, dtype: str | None, fps: float | None, workers: int,
    max_episodes: int | None, episodes: str | int | Iterable[int] | None,
) -> tuple[str | list[int] | None, list[str] | None]:  # fmt: skip
    """Check `ingest`'s option values before anything is read.

    Returns:
        ``episodes`` read once (an iterator of indices becomes a list; a spec stays a str,
        checked), and the ``state_keys`` given, as a list (`name_list`).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{option_name('on_error')} must be 'raise' or 'skip', got {on_error!r}")
    keys_given = name_list("state_keys", state_keys)
    check_dtype(dtype)
    check_positive("fps", fps)  # 0 is no frame rate at all, not "take the source's"
    if workers < 1:
        raise ValueError(f"{option_name('workers')} must be at least 1, got {workers}")
    integer = isinstance(max_episodes, (int, np.integer)) and not isinstance(max_episodes, bool)
    if max_episodes is not None and not (integer and max_episodes >= 1):
        raise ValueError(f"{option_name('max_episodes')} must be a positive integer, got {max_episodes!r}")
    if episodes is not None and not isinstance(episodes, str):  # read once (it may be an iterator)
        return episode_indices(episodes), keys_given
    if episodes is not None:  # what is wrong with the selection itself: before reading the source
        parse_episodes(episodes)
    return episodes, keys_given


def _scan_source(
    job: _Job, episodes: str | Sequence[int] | None, max_episodes: int | None
) -> tuple[list[str], SourceInfo]:
    """The keys of the selected episodes and the source's info, the source closed again.

    Raises:
        ConversionError: also for an error of another kind than kinodb's or an OSError that
            the source raises (a parser's KeyError or TypeError on malformed metadata): the
            message names the source, what was being done, and the error.
    """
    source: Source = _from_source(job, "open", lambda: job.cls(job.path, job.options))  # type: ignore[call-arg]
    try:
        keys = _select(
            _from_source(job, "list the episodes of", source.episodes), episodes, max_episodes, job.path
        )
        info = _from_source(job, "read the dataset metadata of", source.info)
    finally:
        source.close()
    return keys, info


def _from_source(job: _Job, what: str, call: Callable[[], _T]) -> _T:
    """``call()``, a source's own, with what it raises of another kind than kinodb's errors
    or an OSError as a `ConversionError` naming the source (the traceback under ``--debug``)."""
    try:
        return call()
    except (KinodbError, OSError, MemoryError):
        raise
    except Exception as exc:
        log.debug("%s: the %s source raised", job.path, job.cls.format, exc_info=True)
        raise ConversionError(
            f"{job.path}: cannot {what} the {job.cls.format} source: {_error_text(exc)}"
        ) from exc


def _error_text(exc: BaseException) -> str:
    """An exception as ``Type: message`` (a KeyError's message without its quotes)."""
    message = exc.args[0] if type(exc) is KeyError and len(exc.args) == 1 else exc
    return f"{type(exc).__name__}: {message}"


def _drifted(out: str, n: int, name: str, got: str, was: str) -> None:
    """Say that episode ``n`` holds array ``name`` in another dtype than the earlier ones,
    with the ingest's fix (``dtype=``, ``--dtype``) where one cast makes them alike."""
    try:
        floating = np.dtype(got).kind == np.dtype(was).kind == "f"
    except (TypeError, ValueError):
        floating = False
    fix = (
        f"ingest again with {option_value('dtype', was)} to store floating arrays as {was}"
        if floating
        else "convert the source's episodes to one dtype before ingesting"
    )
    log.warning(drift_message(out, n, name, got, was, fix))


def _ingest_metadata(info: SourceInfo, job: _Job, selected: int, recorded: dict[str, Any]) -> dict[str, Any]:
    """The output's metadata: the source's, with the ingest's record and the image orientation."""
    metadata = dict(info.metadata, ingest={"source": job.path, "format": job.cls.format, "selected": selected,
                                           "options": recorded})  # fmt: skip
    # A source may say it itself (HDF5 does; LeRobot gives back what a kinodb export recorded).
    metadata.setdefault("image_orientation", ROTATED if job.options.flip_images else AS_STORED)
    return metadata


def refuse_unwritable(out: str | os.PathLike[str]) -> None:
    """Refuse an output whose folder is missing, is no folder, or is not writable, as the
    `Writer` would (`output_error`), but before any source is read or converted.

    Raises:
        WriterError: the writer's message: names the output, its folder and the fix.
    """
    path = os.fspath(out)
    kind = not_regular(path)  # a device or a FIFO: --force must not replace it with a file
    if kind is not None:
        raise WriterError(f"{path} is {kind}, not a regular file; give the path of a .kdb file to write")
    target = os.path.realpath(path) if os.path.islink(path) else path  # where the writer puts its file
    folder = os.path.dirname(os.path.abspath(target))
    try:
        if not stat.S_ISDIR(os.stat(folder).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
        if not os.access(folder, os.W_OK | os.X_OK):
            read_only = os.statvfs(folder).f_flag & os.ST_RDONLY if hasattr(os, "statvfs") else 0
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code), folder)  # PermissionError for EACCES
    except OSError as exc:
        raise output_error(path, exc) from None


def _create_writer(
    out: str | os.PathLike[str], overwrite: bool, job: _Job, info: SourceInfo, metadata: dict[str, Any]
) -> Writer:
    """The output's `Writer`; an existing ``out`` without ``overwrite`` is refused naming the option.

    Raises:
        ConversionError: the dataset metadata or schema the source gives cannot be stored (a
            value JSON cannot store): names the source and the field. What the writer says
            of the output path itself (its folder, a lock) comes through as its `WriterError`.
    """
    try:  # the writer's own checks of these, made here to tell them from its output's errors
        json_metadata(metadata, "metadata")
        mapping(info.schema, "schema", "{'actions': {'names': [...]}}")
    except WriterError as exc:
        raise ConversionError(
            f"{job.path}: the dataset metadata or schema that the {job.cls.format} converter read from it cannot "
            f"be stored: {exc}; the converter must keep such a value as text, or leave it out"
        ) from None
    try:
        return Writer(out, mode="w" if overwrite else "x", image_codec=job.image_codec,
                      jpeg_quality=job.jpeg_quality, schema=info.schema, source_format=info.source_format,
                      metadata=metadata)  # fmt: skip
    except FileExistsError:
        if overwrite:
            raise
        # The writer's advice (mode='w') is for its own callers; ours pass overwrite.
        raise FileExistsError(
            f"{os.fspath(out)} exists; pass {option_value('overwrite', True)} to replace it"
        ) from None


def _verify_output(report: IngestReport, out: str | os.PathLike[str]) -> None:
    """Re-read the source and compare it with ``out``, on ``report.verification``.

    Raises:
        ConversionError: a mismatch (the output file stays).
    """
    from kinodb.ingest._verify import verify as verify_output  # deferred: it builds on this module

    report.verification = verify_output(report.source, out, format=report.format)
    if not report.verification.ok:
        raise ConversionError(report.verification.failure())


def _write_episodes(
    writer: Writer, job: _Job, keys: list[str], workers: int, overrides: Mapping[str, Any], on_error: str,
    report: IngestReport, progress: bool, task: str | None = None,
) -> None:  # fmt: skip
    """Convert ``keys`` (in ``workers`` processes) and add each episode, with ``overrides``, to ``writer``.

    ``task``, the caller's, replaces the per-frame tasks too (`override_task`).
    """
    path = job.path
    bar = _Progress(len(keys), progress)
    writer._on_drift = partial(_drifted, os.fspath(writer._path))  # Writer's own warning names its arguments
    # closing: an error (or Ctrl-C) stops the workers now, not when the generator is collected;
    # and the bar ends its line before the error is reported
    given = {name: value for name, value in overrides.items() if value is not None}

    def add(key: str, args: dict[str, Any] | None, error: str | None) -> None:
        if error is None:
            assert args is not None
            if given:
                args.update(given)
            if task is not None:
                override_task(args, task)
            where = args.pop(SOURCE_WHERE, None)
            args["extra"] = {**args.get("extra", {}), "source_file": path, "source_episode": key}
            unknown = bool(args.pop(TOTAL_UNKNOWN, False))
            try:
                if unknown:  # stored as null, not summed from the rewards
                    writer._add_episode(**{**args, "total_reward": None}, sum_rewards=False)
                else:
                    writer.add_episode(**args)
            except (WriterError, ValueError, TypeError) as exc:  # the episode's fault; an OSError is not
                # writing failed (a full disk): the output's fault, never skipped as the episode's
                if writer._failure is not None:
                    raise
                error = _refused(args["extra"], where, exc)
            else:
                report.episodes += 1
                report.frames += len(args["actions"])
        if error is not None:
            if on_error == "raise":
                raise ConversionError(error)
            # The advice is taken; the source wrote it as the caller spells it, as here.
            report.skipped.append((key, _LEAVE_OUT.sub("", error.replace(skip_advice(), ""))))
        bar(key)

    with contextlib.closing(bar), contextlib.closing(_convert_all(job, keys, workers)) as converted:
        for item in converted:
            if not isinstance(item, _Columns):
                add(*item)
            elif _add_columns(writer, item, given, path, task is not None):
                report.episodes += len(item.keys)
                report.frames += sum(item.values["lengths"])
                for key in item.keys:
                    bar(key)
            else:  # one by one, each episode added or said why it cannot be
                for key in item.keys:
                    add(*_convert_one(key))


@dataclass(frozen=True, slots=True)
class _Columns:
    """Episodes ``keys`` converted at once (`Source.read_columns`, in the calling process)."""

    keys: list[str]
    values: dict[str, Any]


# Episodes converted at once where the source can (`_Columns`), and the most bytes of their
# records. A run holds its records, and its values some three times over (parsed, joined,
# written), each up to 8 times the record's bytes (small int64 values take one byte there):
# some 25 MB at most.
COLUMN_EPISODES = 64
COLUMN_BYTES = 1 << 20


def _add_columns(
    writer: Writer, cols: _Columns, given: Mapping[str, Any], path: str, task_given: bool
) -> bool:
    """Add `_Columns` with the ingest's ``given`` values and provenance, as `add` adds each
    episode; False (nothing added) where the writer cannot take them at once, or where the
    caller's task (``task_given``) would take per-frame tasks out of some (`override_task`)."""
    values = cols.values
    n = len(cols.keys)
    if task_given and (
        "task_index" in values["extra_arrays"]
        or any(isinstance(e.get("tasks"), list) for e in values["extras"])
    ):
        return False
    task = given.get("task")
    tasks = [task] * n if task is not None else [t if t is not None else "" for t in values["tasks"]]
    extras = [
        {**extra, "source_file": path, "source_episode": key}
        for key, extra in zip(cols.keys, values["extras"], strict=True)
    ]
    return writer._add_columns(
        values["lengths"], actions=values["actions"], states=values["states"], rewards=values["rewards"],
        is_terminal=values["is_terminal"], extra_arrays=values["extra_arrays"],
        embodiment=given.get("embodiment", "unknown"), tasks=tasks, fps=given.get("fps", values["fps"]),
        successes=values["successes"], extras=extras,
    )  # fmt: skip


def _refused(extra: Mapping[str, Any], where: Any, exc: Exception) -> str:
    """Why the writer refuses a converted episode, naming it in its source: from the
    provenance the ingest gives it (``source_file``, ``source_episode``), or the source's own
    `SOURCE_WHERE` (a shard or data file and the record in it); the writer's position of the
    episode in the output follows, as that."""
    if not isinstance(where, str) or not where:
        where = f"{extra['source_file']}: episode {extra['source_episode']}"
    reason = str(exc) if isinstance(exc, WriterError) else _error_text(exc)
    # The writer speaks to its own callers (images['cam'][t], what to pass it); here the
    # frame is the source's, and the way out is to copy it again or to skip the episode.
    damaged = _DAMAGED_FRAME.search(reason) is not None
    reason = _DAMAGED_FRAME.sub("", _FRAME_AT.sub(r"camera \1, frame \2", reason))
    reason = _ADDING.sub(r" (it would be episode \1 of the output)", reason)
    fix = "; if the source's copy of the frame was damaged, copy the dataset again" if damaged else ""
    return f"{where}: {reason}{fix}{skip_advice()}"


def _recorded(
    job: _Job, embodiment: str | None, task: str | None, episodes: str | Sequence[int] | None,
    max_episodes: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The ingest's options for the metadata: what `verify` re-reads the source with."""
    out: dict[str, Any] = {f.name: getattr(job.options, f.name) for f in dataclasses.fields(job.options)}
    out.update(dtype=None if job.dtype is None else np.dtype(job.dtype).name, embodiment=embodiment, task=task,
               image_codec=job.image_codec, jpeg_quality=job.jpeg_quality, max_episodes=max_episodes,
               episodes=episodes if episodes is None or isinstance(episodes, str) else [int(i) for i in episodes])  # fmt: skip
    return out


# -- conversion (runs in the calling process or in workers) ------------------------------

_worker_source: Source | None = None
_worker_job: _Job | None = None


def _init_worker(job: _Job, quiet: bool = False) -> None:
    global _worker_source, _worker_job
    if quiet:  # a worker process: Ctrl-C, SIGTERM and SIGHUP are the parent's to handle (it stops the pool)
        for sig in HELD:
            signal.signal(sig, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SPAWN_HELD)  # held since the spawn
    if quiet and job.names is not None:  # a spawned process: messages name options as its parent's do
        _OPTION_NAMES.set(job.names)
    _worker_job = job
    _worker_source = job.cls(job.path, job.options)  # type: ignore[call-arg]


def _convert_one(key: str) -> tuple[str, dict[str, Any] | None, str | None]:
    """Episode ``key`` converted: ``(key, args, None)``, or ``(key, None, why)`` when it cannot
    be: the source's `ConversionError`, or any other error it raises, as ``FILE: episode KEY:
    Type: message`` (the traceback logged at debug level), so that it can be skipped."""
    assert _worker_source is not None and _worker_job is not None
    try:
        args = _worker_source.read(key)
        return key, _finish(args, _worker_job, key), None
    except (ConversionError, WriterError) as exc:
        return key, None, str(exc)
    except MemoryError:
        raise  # not the episode's fault: the command says so
    except Exception as exc:  # a reader library's own (h5py's KeyError, a parser's TypeError): this episode's
        log.debug("%s: episode %s", _worker_job.path, key, exc_info=True)
        return key, None, f"{_worker_job.path}: episode {key}: {_error_text(exc)}"


def _finish(args: dict[str, Any], job: _Job, key: str = "") -> dict[str, Any]:
    """Apply the dtype cast and encode raw frames (here, so workers share the work)."""
    args.pop(SOURCE_PARTS, None)  # for `verify` only: never shipped back from a worker
    if job.dtype is not None:
        _cast(args, np.dtype(job.dtype))
    if not job.options.images:
        args.pop("images", None)
    elif job.image_codec != "raw":
        for cam, frames in list(args.get("images", {}).items()):
            if isinstance(frames, np.ndarray):
                args["images"][cam] = _encode(frames, job, f"{job.path}: episode {key}: camera {cam!r}")
    return args


def _cast(args: dict[str, Any], target: np.dtype[Any]) -> None:
    """The ``dtype`` option: the float arrays of ``args`` (an episode's, or a run's) as ``target``."""
    for name in ("actions", "states", "rewards", "timestamps"):
        arr = args.get(name)
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "f":
            args[name] = arr.astype(target)
    for name, arr in list(args.get("extra_arrays", {}).items()):
        if arr.dtype.kind == "f":
            args["extra_arrays"][name] = arr.astype(target)


def _encode(frames: np.ndarray, job: _Job, where: str) -> list[bytes]:
    """A camera's raw frames encoded with the job's image codec.

    Raises:
        ConversionError: the frames are no camera's (a camera holds uint8 frames of 1 to 4
            channels), the codec cannot store them, or the encoder fails; names ``where``
            (file, episode, camera), the frames' dtype and shape, and what to pass.
    """
    stack = frames if frames.ndim == 4 else frames[..., None] if frames.ndim == 3 else None
    what = f"{frames.dtype} frames of shape {tuple(frames.shape[1:])}"
    if stack is None or frames.dtype != np.uint8 or not 1 <= stack.shape[-1] <= 4 or 0 in stack.shape[1:3]:
        no_images = "images=False" if _OPTION_NAMES.get() is None else option_name("images")
        raise ConversionError(
            f"{where}: {what} are no camera frames (a camera holds uint8 (H, W) or (H, W, C) frames of 1 to "
            f"4 channels, whatever the codec); leave the cameras out with {no_images}, or have the source "
            "keep these as an extra array"
        )
    if job.image_codec == "jpeg" and stack.shape[-1] not in (1, 3):
        raise ConversionError(
            f"{where}: {what} have {stack.shape[-1]} channels; JPEG stores 1 or 3: use "
            f"{option_value('image_codec', 'png')} or {option_value('image_codec', 'raw')}"
        )
    try:
        return _codecs.encode(stack, job.image_codec, job.jpeg_quality)
    except MemoryError:
        raise  # not the frames' fault: the command says so
    except Exception as exc:  # Pillow raises OSError, ValueError, TypeError for frames it cannot take
        codec = job.image_codec.upper()
        raise ConversionError(
            f"{where}: {codec} encoding of {what} failed ({type(exc).__name__}: {exc}); store them with "
            f"another codec ({option_value('image_codec', 'png' if codec == 'JPEG' else 'raw')})"
        ) from None


def _convert_all(
    job: _Job, keys: list[str], workers: int
) -> Generator[tuple[str, dict[str, Any] | None, str | None] | _Columns, None, None]:
    """Converted episodes in key order; at most a few episodes in flight.

    Raises:
        ConversionError: a worker process died (killed, out of memory, a crash in compiled
            code); the message names it, how it died, and the episode it was converting.
    """
    if workers == 1:
        _init_worker(job)
        try:
            yield from _converted_here(job, keys)
        finally:
            if _worker_source is not None:
                _worker_source.close()
        return
    pool = Pool(_work, job, min(workers, len(keys)), path=job.path, workers_option=option_name("workers"))
    finished = False
    try:  # an error, Ctrl-C, or the consumer closing early: the workers are stopped now
        yield from pool.converted(keys)
        finished = True
    finally:
        pool.stop(finished=finished)


def _converted_here(
    job: _Job, keys: list[str]
) -> Iterator[tuple[str, dict[str, Any] | None, str | None] | _Columns]:
    """`_convert_all` in this process: several episodes at once (`_Columns`) where the
    source reads them so (`read_columns`; in runs of `COLUMN_EPISODES`), else one by one."""
    assert _worker_source is not None
    read = getattr(_worker_source, "read_columns", None)
    at = 0
    while at < len(keys):
        chunk = keys[at : at + COLUMN_EPISODES]
        try:
            values = read(chunk, COLUMN_BYTES) if read is not None and len(chunk) > 1 else None
        except MemoryError:
            raise  # not the episodes' fault: the command says so
        except Exception:  # whatever it is, converting the episodes one by one says which and why
            log.debug(
                "%s: episodes %s..%s not converted at once", job.path, chunk[0], chunk[-1], exc_info=True
            )
            values = None
        if values is None:
            at += len(chunk)
            for key in chunk:
                yield _convert_one(key)
            continue
        taken = chunk[: len(values["lengths"])]  # the first of them, as many as COLUMN_BYTES allows
        at += len(taken)
        if job.dtype is not None:
            _cast(values, np.dtype(job.dtype))
        yield _Columns(taken, values)


# -- worker processes ------------------------------------------------------------------------


def _work(conn: Connection, job: _Job) -> None:
    """A worker process: answer each key that ``conn`` brings, until None or the pipe's end.

    An answer is `_convert_one`'s, or a `Raised`; one that the source's opening raised
    answers the first key.
    """
    try:
        _init_worker(job, quiet=True)
    except BaseException as exc:
        _answer(conn, Raised.of(exc))
        return
    try:
        while True:
            try:
                key = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if key is None:
                return
            try:
                answer: object = _convert_one(key)
            except BaseException as exc:
                answer = Raised.of(exc)
            if not _answer(conn, answer):
                return
    finally:
        if _worker_source is not None:
            _worker_source.close()


def _answer(conn: Connection, answer: object) -> bool:
    """Send ``answer`` (or why it could not be sent); False when the parent is gone."""
    try:
        conn.send(answer)
    except OSError:
        return False
    except Exception as exc:  # it does not pickle (a plug-in's odd value)
        try:
            conn.send(Raised.of(exc))
        except OSError:
            return False
    return True
