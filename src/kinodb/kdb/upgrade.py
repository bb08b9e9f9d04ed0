"""Rewrite any readable ``.kdb`` file (format 0.1 or 1.x) as a format v1 file."""

from __future__ import annotations

import math
import os
import shlex
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kinodb._version import __version__
from kinodb.errors import ConversionError, CorruptFileError, FormatError, WriterError
from kinodb.kdb import _codecs
from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.writer import Writer

_BUILTIN_ARRAYS = ("actions", "states", "rewards", "is_terminal", "timestamps")
# Dataset keys the writer builds itself; a v1 source's other keys (created, modified,
# keys of later minor versions) are kept as they are, and its statistics too.
_REBUILT = frozenset(("format", "format_version", "writer", "source_format", "schema", "metadata", "stats"))
# Schema keys rebuilt from the episodes written; other keys (a merge's "sources") are kept.
_NOTED = frozenset(("actions", "states", "rewards", "is_terminal", "timestamps", "cameras", "arrays"))
_SHOWN = 5  # episodes or cameras named in one warning


def upgrade(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    on_error: str = "raise",
    commit: str | None = None,
) -> int:
    """Rewrite ``src`` as a format v1 file at ``dst``; return the number of episodes written.

    A v1 source is compacted: each episode's payload is copied byte for byte after its
    checksum is verified (the dead space that appends leave behind is dropped), and the
    dataset keeps its ``created`` and ``modified`` times, its statistics and its metadata.

    A 0.1 source's arrays are copied exactly and JPEG/PNG frames keep their stored bytes
    (under the channel count the 0.1 header states, which readers convert to); raw
    frames stay raw. A camera that cannot keep its bytes (frames that mix codecs, or
    whose headers do not fit the camera's size) is stored raw (decoded), with a warning.
    The dataset's ``source_format`` becomes ``"kinodb-0.1"`` and
    ``metadata["upgraded_from"]`` records the source file. An unknown ``total_reward``
    stays unknown (null), as does a NaN or infinite one, which v1 cannot store (with a
    warning): the sum of the rewards is never filled in.

    An episode that cannot be read or stored (damaged, 0 frames, fps <= 0) fails the
    upgrade, naming it; with ``on_error="skip"`` it is left out instead, listed in
    ``metadata["upgraded_from"]["skipped"]`` and in a warning. A failure to write ``dst``
    (a full disk) stops the upgrade with the writer's `WriterError` either way. ``dst``
    appears only once every episode is written.

    A v1 source whose newest commit record is damaged and hides a newer commit (see
    `kinodb.kdb.validate.hidden_commit`) is refused unless ``commit`` says which to keep:
    ``"newest"`` reads the hidden commit (the episodes of the last append), ``"committed"``
    the commit the other record names (what readers of the file see). The source is never
    changed.

    Example:
        >>> kinodb.kdb.upgrade.upgrade("old.kdb", "new.kdb")
        12

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        FormatError: ``src`` is not a readable ``.kdb`` file or its data is damaged (its
            index, or a v1 episode's payload, fails its checksum: `CorruptFileError`, nothing
            written); or a damaged record hides a newer commit and ``commit`` is None
            (`CorruptFileError`, naming both choices).
        ConversionError: ``src`` has no episodes, or an episode cannot be stored in v1.
        WriterError: writing ``dst`` failed (a full disk); or ``dst`` is ``src`` and another
            writer appended to it (or replaced it) during the upgrade; nothing was written.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if commit not in (None, "newest", "committed"):
        raise ValueError(f"commit must be 'newest', 'committed' or None, got {commit!r}")
    source = os.fspath(src)
    with open_database(src) as db:
        if isinstance(db, Database):
            _choose_commit(db, commit)
        inplace = same_file_inputs([db], os.fspath(dst))
        db._verify_index()  # a damaged index is never stored again under a valid checksum
        check_columns(db)
        if len(db) == 0:
            raise ConversionError(
                f"{source}: the source has 0 episodes, and a v1 file holds at least one; nothing was written"
            )
        info = db.dataset_info()
        version = db.version()
        metadata = _upgraded_metadata(db, source, info, version)
        schema = _rebuilt_schema(db)
        legacy = version.startswith("0.")
        notes: list[str] = []
        with Writer(
            dst,
            mode="w" if overwrite else "x",
            image_codec="raw",
            schema=schema,
            # a v1 file keeps its own (None for a file written directly); a 0.1 file's is its format
            source_format=info.get("source_format") or (f"kinodb-{version}" if legacy else None),
            metadata=metadata,
        ) as out:
            refuse_changed(inplace, os.fspath(dst), "upgrade")
            skipped = _copy_episodes(db, out, source, dst, legacy=legacy, notes=notes, on_error=on_error)
            if not len(out):
                first, reason = skipped[0]
                raise ConversionError(
                    f"{source}: every one of its {len(db)} episodes was skipped; nothing was written; "
                    f"the first, episode {first}: {reason}"
                )
            if skipped:
                out.metadata["upgraded_from"]["skipped"] = [{"episode": i, "reason": r} for i, r in skipped]
            if not legacy:
                _keep_dataset(info, db.schema(), out, stale=bool(skipped))
    _warn(source, notes, skipped)
    return len(db) - len(skipped)


def _choose_commit(db: Database, commit: str | None) -> None:
    """Read ``db`` at the commit a damaged record hides when ``commit`` is ``"newest"``;
    refuse to choose for the caller when one is hidden and ``commit`` is None."""
    from kinodb.kdb.validate import (
        hidden_commit,
        hidden_text,
        recover,
    )  # deferred: validate builds on the reader

    found = hidden_commit(db)
    if found is None or commit == "committed":
        return
    if commit == "newest":
        db._read_commit(found.commit)
        return
    raise CorruptFileError(
        f"{hidden_text(db, found)} Nothing was written. {recover(db.path(), found, db._commit.num_episodes)}"
    )


def _upgraded_metadata(db: Database, source: str, info: dict[str, Any], version: str) -> dict[str, Any]:
    """The source's metadata, with ``upgraded_from`` recording the source file."""
    metadata = dict(db.metadata())
    metadata["upgraded_from"] = {
        "path": os.path.abspath(source),
        "format_version": version,
        "created": info.get("created"),
        "writer": info.get("writer"),
        "source_format": info.get("source_format"),
        "tool": f"kinodb {__version__} upgrade",
    }
    return metadata


def _rebuilt_schema(db: Database) -> dict[str, Any]:
    """The source schema's ``components`` and ``names`` of the actions and the states, where it has any."""
    schema = {
        part: {k: v for k, v in db.schema().get(part, {}).items() if k in ("components", "names")}
        for part in ("actions", "states")
    }
    return {k: v for k, v in schema.items() if v}


def _copy_episodes(
    db: Database, out: Writer, source: str, dst: str | os.PathLike[str], *, legacy: bool, notes: list[str],
    on_error: str,
) -> list[tuple[int, str]]:  # fmt: skip
    """Write every episode of ``db`` to ``out``; the episodes skipped (``on_error="skip"``), with why.

    Raises:
        FormatError, ConversionError: an episode cannot be read or stored (`episode_error`).
        WriterError: writing ``out`` failed (a full disk), whatever ``on_error``.
    """
    skipped: list[tuple[int, str]] = []
    for i in range(len(db)):
        try:
            if legacy:  # an unknown total_reward stays null, not the sum of the rewards
                out._add_episode(**episode_args(db, i, notes=notes), sum_rewards=False)
            else:  # v1 payloads carry checksums: copy_episode never copies damage
                out.copy_episode(db, i)
        except (FormatError, WriterError, ConversionError) as exc:
            if out._closed:  # the output failed (a full disk) and closed itself, not the episode
                raise
            if on_error == "skip":
                skipped.append((i, skip_reason(exc, db, i, len(out))))
                continue
            advice = _upgrade_advice(db, i, source, os.fspath(dst))
            raise episode_error(unnamed(exc, len(out)), source, i, advice) from exc
    return skipped


Identity = tuple[int, int]  # (st_dev, st_ino): names one file under any path


def _identity(path: str) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file_inputs(dbs: Sequence[Database], output: str) -> list[tuple[Database, Identity]]:
    """The inputs among ``dbs`` that are the file at ``output`` (an in-place rewrite), each
    with that file's identity; call it as soon as they are open, for `refuse_changed`."""
    target = _identity(output)
    if target is None:
        return []
    return [(db, target) for db in dbs if _identity(db.path()) == target]


def refuse_changed(inplace: Sequence[tuple[Database, Identity]], output: str, doing: str) -> None:
    """Refuse to replace ``output`` when it is no longer what its ``inplace`` inputs read
    (`same_file_inputs`): an append committed to it since they were opened, or another
    file took its place, and replacing it would drop that silently.

    Call it while a Writer in mode ``"w"`` of ``output`` is open: its lock on the file keeps
    appenders out from then until the new file replaces it.

    Raises:
        WriterError: the file changed (the message says how); nothing was written.
    """
    for db, identity in inplace:
        now = _identity(output)
        if now is None:
            what = "it was removed"
        elif now != identity:
            what = "another file took its place"
        else:
            with open_database(output) as current:
                if current._commit == db._commit:
                    continue
                what = (
                    f"another writer committed to it: it held {db._commit.num_episodes} episodes when the "
                    f"{doing} read it and holds {current._commit.num_episodes} now"
                )
        raise WriterError(
            f"{output} changed while the {doing} was rewriting it in place ({what}); nothing was "
            f"written and the file was left as it is now: run the {doing} again, to read it as it is now"
        )


SKIP_ADVICE = "to leave it out, rerun with --on-error skip (Python: on_error='skip')"


def check_columns(db: Database) -> None:
    """Map every index column of ``db`` once, before any episode is copied: damage to a
    column (a dtype, a shape, a place the format does not give it) concerns every episode,
    so it stops the copy whatever ``on_error``, and leaving episodes out cannot help.

    Raises:
        CorruptFileError: a column is damaged (the message names it and says what to do).
    """
    cols = db._cols
    try:
        for name in cols:
            cols[name]
    except CorruptFileError as exc:
        raise CorruptFileError(
            f"{exc}; every episode depends on the index, so none can be copied or left out: "
            f"restore {db.path()} from a copy (kino validate {shlex.quote(db.path())} lists the damage)"
        ) from exc


def episode_error(exc: Exception, src: str, i: int, advice: str) -> Exception:
    """The error that stops a conversion (an upgrade, a merge) at episode ``i`` of ``src``:
    what went wrong, where, and ``advice``, the ways around it."""
    if isinstance(exc, FormatError):  # damage: the reader's message says what and where
        text = str(exc)
        if not text.startswith(src):
            text = f"{src}: episode {i}: {text}"
        return type(exc)(f"{text}; {advice}")
    return ConversionError(f"{src}: episode {i} cannot be stored as v1: {exc}; {advice}")


def unnamed(exc: Exception, n: int) -> Exception:
    """``exc`` without the writer's ``(adding episode N)``: ``n`` is the output's position,
    which a conversion's message does not show (it names the input file and its episode)."""
    text, suffix = str(exc), f" (adding episode {n})"
    return type(exc)(text[: -len(suffix)]) if text.endswith(suffix) else exc


def skip_reason(exc: Exception, db: Database, i: int, n: int) -> str:
    """Why episode ``i`` of ``db`` was left out (``on_error="skip"``), as listed after
    ``episode I: ``: the text of ``exc`` without the output's position ``n`` (`unnamed`) and
    without the reader's ``PATH: episode I: `` (or ``PATH: episode I, ``), which the list says."""
    text = str(unnamed(exc, n))
    named = f"{db.path()}: "
    text = text[len(named) :] if text.startswith(named) else text
    for said in (f"episode {i}: ", f"episode {i}, "):
        if text.startswith(said):
            return text[len(said) :]
    return text


def leave_out(db: Database, i: int) -> tuple[str, str] | None:
    """``(what, KQL filter)`` for episode ``i``'s kind of problem when a filter can leave out
    every episode that has it (0 frames, an fps that is not a positive number), else None."""
    if int(db._cols["num_frames"][i]) == 0:
        return "every empty episode", "num_frames > 0"
    fps = float(db._cols["fps"][i])
    if not (math.isfinite(fps) and fps > 0):
        return "every episode whose fps is not a positive number", "fps > 0"
    return None


def _upgrade_advice(db: Database, i: int, src: str, dst: str) -> str:
    """How to get past episode ``i``: a merge that leaves out its kind, or skipping it."""
    kind = leave_out(db, i)
    if kind is None:
        return SKIP_ADVICE
    what, kql = kind
    return f'to leave out {what}: kino merge {shlex.quote(src)} -o {shlex.quote(dst)} -F "{kql}"; or {SKIP_ADVICE}'


def _keep_dataset(info: dict[str, Any], schema: dict[str, Any], out: Writer, *, stale: bool) -> None:
    """Carry a v1 source's dataset keys, schema keys and statistics over to ``out``."""
    for key, value in info.items():
        if key not in _REBUILT:
            out._dataset[key] = value
    for key, value in schema.items():
        if key not in _NOTED:
            out.schema.setdefault(key, value)
    stats = info.get("stats")
    if isinstance(stats, dict):
        if stale:  # they describe episodes that were left out
            stats = {**stats, "stale": True}
        out.stats = stats  # set after the episodes: they describe them all


def _warn(src: str, notes: list[str], skipped: list[tuple[int, str]]) -> None:
    if notes:
        more = f"; and {len(notes) - _SHOWN} more" if len(notes) > _SHOWN else ""
        warnings.warn(
            f"{src}: {len(notes)} thing{'s' if len(notes) > 1 else ''} could not be kept as stored: "
            + "; ".join(notes[:_SHOWN])
            + more,
            stacklevel=3,
        )
    if skipped:
        shown = "; ".join(f"episode {i}: {reason}" for i, reason in skipped[:_SHOWN])
        more = f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        warnings.warn(
            f"{src}: {len(skipped)} episode{'s' if len(skipped) > 1 else ''} skipped "
            f"(listed in the output's metadata, upgraded_from.skipped): {shown}{more}",
            stacklevel=3,
        )


def episode_args(db: Database, i: int, *, notes: list[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `Writer.add_episode` that reproduce episode ``i``.

    ``total_reward`` is None when it is unknown or not finite: pass the arguments to
    ``Writer._add_episode(..., sum_rewards=False)`` to store that as null. ``notes``
    collects one line per camera stored raw although it held encoded frames, and per value
    that v1 cannot store as it was.
    """
    notes = [] if notes is None else notes
    ep = db.read_episode_actions_only(i)
    meta = ep.pop("meta")
    if meta["num_frames"] == 0:
        raise ConversionError("it has 0 frames, and v1 files hold no empty episodes")
    args: dict[str, Any] = {name: ep.pop(name) for name in _BUILTIN_ARRAYS if name in ep}
    total_reward = meta["total_reward"]
    if total_reward is not None and not math.isfinite(total_reward):
        notes.append(
            f"episode {i}: total_reward {total_reward} is not a finite number, which v1 cannot store; "
            "it is stored as null (unknown)"
        )
        total_reward = None
    args["extra_arrays"] = ep
    args["images"] = {name: _camera_frames(db, i, name, cam, notes) for name, cam in db.cameras(i).items()}
    extra = db._extra_fields(i)  # by stored name
    if meta["episode_id"] != i:
        extra.setdefault("source_episode_id", meta["episode_id"])
    args.update(
        embodiment=meta["embodiment"],
        task=meta["task"],
        fps=meta["fps"],
        success=meta["success"],
        total_reward=total_reward,
        extra=extra,
    )
    return args


def _camera_frames(
    db: Database, i: int, name: str, cam: dict[str, Any], notes: list[str]
) -> np.ndarray | _codecs.EncodedFrames:
    """Stored JPEG/PNG bytes when every frame can pass through unchanged, else uint8 frames."""
    T, h, w, c = cam["shape"]
    reason = None
    if cam["codec"] in ("jpeg", "png"):
        blobs = db.read_images_bytes(i, name, 0, T)
        reason = _unfit(blobs, (h, w))
        if reason is None:
            # Readers convert each frame to the camera's channels, as the 0.1 reader did
            # (greyscale JPEGs under a 3-channel header read as RGB).
            return _codecs.EncodedFrames(blobs, c)
    elif cam["codec"] != "raw":
        reason = "its frames mix raw and encoded ones (or JPEG and PNG)"
    frames: np.ndarray = db.read_frames(i, 0, T, cameras=[name])["images"][name]
    if reason is not None:
        notes.append(f"episode {i}, camera {name!r} stored raw (decoded, larger): {reason}")
    return frames


def _unfit(blobs: list[bytes], size: tuple[int, int]) -> str | None:
    """Why ``blobs`` cannot be stored unchanged under the (H, W) ``size``, or None."""
    for t, blob in enumerate(blobs):
        try:
            h, w, _ = _codecs.probe(blob)
        except (OSError, ValueError, SyntaxError, WriterError) as exc:
            return f"frame {t}'s header cannot be read ({_codecs.describe(exc)})"
        if (h, w) != size:
            return f"frame {t} is {h}x{w} (HxW), the camera's header says {size[0]}x{size[1]}"
    return None


__all__ = ["upgrade"]
