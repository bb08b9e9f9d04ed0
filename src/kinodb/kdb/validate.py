"""Check a ``.kdb`` file end to end: checksums, offsets, dimensions, images, NaN/Inf."""

from __future__ import annotations

import json
import math
import os
import shlex
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError, KinodbError
from kinodb.kdb._codecs import VALIDATE_ADVICE
from kinodb.kdb._layout import (
    ALIGN,
    DTYPE_CODE,
    DTYPES,
    FILE_ADVICE,
    INDEX_HEAD,
    INDEX_MAGIC,
    KIND_ARRAY,
    KIND_CAMERA,
    SLOT_OFFSETS,
    SLOT_SIZE,
    Commit,
    align,
    crc32,
    pack_slot,
    parse_slot,
)
from kinodb.kdb._sections import Directory, all_sections, camera_tables, typed_view, uniform_layout
from kinodb.kdb._table import Columns, decode_index, schema_layout
from kinodb.kdb.legacy import LegacyDatabase
from kinodb.kdb.reader import Database, open_database


@dataclass
class Report:
    """What `validate` found. ``ok`` is True when there are no errors.

    ``passed`` names each check that passed and what it covered; ``skipped`` each check
    that did not run, and why.
    """

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not self.errors


def validate(path: str | os.PathLike[str], *, decode_images: bool = True) -> Report:
    """Validate every checksum, offset, dimension and (optionally) image of a file.

    Never raises for a damaged file: problems are collected in the returned `Report`,
    a header that is not a ``.kdb`` header among them. What the reader only warns about
    on open (a 0.1 header whose counts disagree with its index) is a warning item.

    Raises:
        OSError: ``path`` cannot be read at all (missing, a folder, no permission): there
            is no file to validate.
    """
    report = _validate(path, decode_images=decode_images)
    # The readers' errors advise running `kino validate`, which this report is.
    report.errors = [_without_advice(t) for t in report.errors]
    report.warnings = [_without_advice(t) for t in report.warnings]
    return report


def _without_advice(text: str) -> str:
    return text.replace(FILE_ADVICE, "restore it from a copy").replace(f"; {VALIDATE_ADVICE}", "")


def _validate(path: str | os.PathLike[str], *, decode_images: bool) -> Report:
    report = Report(os.fspath(path))
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        try:
            db = open_database(path)
        except KinodbError as exc:
            if isinstance(exc, OSError):  # a folder: there is no file to validate
                raise
            report.errors.append(f"open: {exc}")
            return report
        finally:
            report.warnings.extend(str(w.message).removeprefix(f"{report.path}: ") for w in raised)
    with db:
        report.passed.append(f"header and commit record (format {db.version()})")
        # What a damaged index raises: past a failed index checksum anything may, and it is
        # reported as damage, never raised.
        damage: tuple[type[Exception], ...] = (KinodbError,)
        try:
            if isinstance(db, LegacyDatabase):
                report.warnings.append(
                    f"format {db.version()} has no checksums; run `kino upgrade` to get them"
                )
                report.skipped.append(f"index and payload checksums: format {db.version()} stores none")
            else:
                _check_slots(db, report)
                if not _check_index_crc(db, report):
                    damage = (Exception,)
                _check_index(db, report)
            _check_schema(db, report)
        except damage as exc:
            report.errors.append(f"index: {_damage(exc)}")
            return report
        nonfinite: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, -1])
        _check_episodes(db, report, nonfinite, decode_images, damage)
        for name, (nan, inf, eps, first) in sorted(nonfinite.items()):
            report.warnings.append(
                f"{name}: {nan} NaN and {inf} Inf values in {eps} episode{'' if eps == 1 else 's'} (first: episode {first})"
            )
        _report_coverage(db, report, decode_images, bool(nonfinite), damage)
    return report


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _report_coverage(
    db: Database, report: Report, decode_images: bool, nonfinite: bool, damage: tuple[type[Exception], ...]
) -> None:
    """Name what the episode checks covered where they passed (no errors), and each check
    that did not run: the same lines whichever way the episodes were checked."""
    try:
        covered = _coverage(db, damage)
    except damage:
        covered = None
    if covered is None:  # the errors name the damage; what the checks covered is unknown
        if not decode_images:
            report.skipped.append("frame decoding: frames not decoded (--no-decode, decode_images=False)")
        return
    arrays, frames, cameras = covered
    seen = f"{_plural(frames, 'frame')} of {_plural(cameras, 'camera')}"
    if not report.errors:
        report.passed.append(f"{len(db)} episodes: arrays, dimensions and frame counts")
        if not isinstance(db, LegacyDatabase):
            report.passed.append(
                f"{_plural(len(db), 'episode payload checksum')} {'match' if len(db) != 1 else 'matches'}, "
                "every section inside its payload"
            )
        if decode_images and frames:
            report.passed.append(f"{seen} decode to their recorded (H, W, C)")
        if arrays and not nonfinite:
            report.passed.append(f"no NaN or Inf in {_plural(arrays, 'float array')}")
    if not frames:
        report.skipped.append("frame decoding: the file holds no camera frames")
    elif not decode_images:
        report.skipped.append(f"frame decoding: {seen} not decoded (--no-decode, decode_images=False)")
    if not arrays:
        report.skipped.append("NaN/Inf scan: the file holds no float arrays")


# The dtype codes of floats, whose arrays the NaN/Inf scan covers.
_FLOAT_CODES = [k for k, d in enumerate(DTYPES) if np.dtype(d).kind == "f"]


def _coverage(db: Database, damage: tuple[type[Exception], ...]) -> tuple[int, int, int] | None:
    """The float arrays (one per episode holding it), the camera frames and the distinct
    cameras of ``db``, as its index records them; None where its section directory is
    damaged. Legacy episodes that raise ``damage`` count for nothing."""
    if isinstance(db, LegacyDatabase):  # no section directory: episode by episode (0.x files are small)
        arrays = frames = 0
        names: set[str] = set()
        for i in range(len(db)):
            try:
                arrays += sum(a.dtype.kind == "f" for a in db._episode_arrays(i).values())
                cams = db._episode_cameras(i)
            except damage:  # reported by the checks
                continue
            frames += sum(cam.shape[0] for cam in cams.values())
            names.update(cams)
        return arrays, frames, len(names)
    cols = db._cols
    counts = cols["sec_count"].astype(np.int64)
    kind = cols["sec.kind"]
    if (counts < 0).any() or int(counts.sum()) != len(kind):  # damaged: `_check_index` said so
        return None
    camera = kind == KIND_CAMERA
    rows_frames = np.repeat(cols["num_frames"].astype(np.int64), counts)
    floats = (kind == KIND_ARRAY) & np.isin(cols["sec.dtype"], _FLOAT_CODES)
    cameras = len(np.unique(cols["sec.name"][camera]))
    return int(floats.sum()), int(rows_frames[camera].sum()), cameras


@dataclass(frozen=True, slots=True)
class HiddenCommit:
    """A newer commit that a damaged commit record hides (`hidden_commit`)."""

    record: str  # which record, and what is wrong with it
    index_offset: int  # where the hidden commit's index block starts
    generation: int
    num_episodes: int
    commit: Commit  # the record a writer would have written for it


# A record that differs from the one a writer would have written for the index past the
# committed end in at most this many bytes is that record, damaged. A write torn by a
# crash keeps the old bytes from where it stopped, always the old checksum among them
# (4 bytes, of which more than 2 differ from the new one but for 1 time in ~10,000).
_DAMAGED_BYTES = 2


def hidden_commit(db: Database) -> HiddenCommit | None:
    """A newer commit of the v1 file ``db`` that a damaged commit record hides, or None.

    That is a record that fails its checksum, is zeroed where it should hold a commit (at
    generation 2 or more both records hold one), or repeats the other's generation (each
    commit has its own), while a complete index block holding at least the file's
    episodes lies past the committed end. A record that fails its checksum must besides
    differ in at most two bytes from the record a writer would have written for that
    block: damage, not a write torn by a crash, which keeps the old bytes from where it
    stopped, the old checksum among them. The usual leftovers of an interrupted append
    (both records valid, or the second record of a file committed once still empty) are
    no hidden commit. Cheap unless a record is damaged: only then is the file scanned
    past the committed end.
    """
    mm, commit = db._mm, db._commit
    if mm is None:
        raise ValueError(f"{db.path()}: the database is closed")
    suspects: list[tuple[str, bytes | None]] = []
    for n, at in enumerate(SLOT_OFFSETS):
        # The records as the file was opened: an append committing meanwhile rewrites one.
        raw = db._preamble[at : at + SLOT_SIZE]
        valid, where = parse_slot(raw), f"commit record {n} (byte offset {at})"
        if valid is not None:
            if n != db._slot and valid.generation == commit.generation:  # each commit has its own
                suspects.append((f"{where} repeats the other record's generation {commit.generation}", None))
            continue
        if raw != bytes(SLOT_SIZE):
            suspects.append((f"{where} fails its checksum", raw))
        elif commit.generation >= 2:
            suspects.append(
                (f"{where} is zeroed, though at generation {commit.generation} both records hold one", None)
            )
    if not suspects:
        return None
    for at in reversed(_blocks_after(db)):
        found = _next_commit(db, at)
        if found is None or found.num_episodes < commit.num_episodes:  # an append keeps every episode
            continue
        packed = pack_slot(found)
        for text, stored in suspects:
            if stored is None or sum(x != y for x, y in zip(packed, stored, strict=True)) <= _DAMAGED_BYTES:
                return HiddenCommit(text, at, found.generation, found.num_episodes, found)
    return None


def refuse_hidden_commit(db: Database) -> None:
    """Refuse to append to ``db`` when a damaged commit record hides a newer commit
    (`hidden_commit`): the append would truncate it away.

    Raises:
        CorruptFileError: a newer commit is hidden (says what was found and what to do).
    """
    found = hidden_commit(db)
    if found is None:
        return
    raise CorruptFileError(
        f"{hidden_text(db, found)} Nothing was appended: an append would discard every byte past the committed "
        f"end. {recover(db.path(), found, db._commit.num_episodes)}"
    )


def hidden_text(db: Database, found: HiddenCommit) -> str:
    """What was found: the damaged record, the newer commit past the committed end, and the
    commit the file reads as (a sentence naming the file)."""
    c = db._commit
    return (
        f"{db.path()}: {found.record}, and a complete index of {found.num_episodes} episodes (generation "
        f"{found.generation}) lies at byte offset {found.index_offset}, past the committed end ({c.end}): a "
        f"newer commit is probably hidden, and the file reads as generation {c.generation} ({c.num_episodes} "
        "episodes)."
    )


def recover(path: str, found: HiddenCommit, committed: int) -> str:
    """What to do with a file whose damaged record hides ``found``: copy it into a new file."""
    q = shlex.quote(path)
    return (
        f"Keep a copy of the file; write its {found.num_episodes} episodes of the hidden commit to a new file "
        f"with: kino upgrade {q} NEW.kdb --commit newest (or the {committed} committed ones with --commit "
        "committed)"
    )


def _blocks_after(db: Database) -> list[int]:
    """Offsets of the index magic at 64-byte boundaries past the committed end."""
    mm, out = db._mm, []
    assert mm is not None  # checked by the caller
    at = mm.find(INDEX_MAGIC, db._commit.end)
    while at >= 0:
        if at % ALIGN == 0:
            out.append(at)
        at = mm.find(INDEX_MAGIC, at + 1)
    return out


def _next_commit(db: Database, at: int) -> Commit | None:
    """The commit record a writer would have written for a complete index block at ``at``
    (the generation after the file's), or None if no such block lies there."""
    buf, size = db._map(), db._size
    try:
        cols = decode_index(buf, at, size - at, db.path()).columns
        assert isinstance(cols, Columns) and cols.sizes is not None  # decode_index made them
        length = align(cols.extent() - at)
        frames = int(cols["num_frames"].sum(dtype=np.uint64))
        episodes = cols.sizes[0]
    except (CorruptFileError, ValueError, OverflowError):
        return None
    if at + length > size:
        return None
    crc = crc32(buf[at : at + length].data)
    return Commit(db._commit.generation + 1, at, length, episodes, frames, crc)


def _check_slots(db: Database, report: Report) -> None:
    """Report a damaged commit record, and a newer commit it hides (`hidden_commit`)."""
    mm, commit = db._mm, db._commit
    assert mm is not None  # open
    hidden = hidden_commit(db)
    if hidden is not None:
        report.errors.append(
            f"{hidden.record}, and an index block at byte offset {hidden.index_offset} (generation "
            f"{hidden.generation}, {hidden.num_episodes} episodes) lies past the committed end ({commit.end}): "
            f"a newer commit is probably hidden, and the file reads as generation {commit.generation} "
            f"({commit.num_episodes} episodes); kinodb refuses to append to it (an append discards everything "
            f"past the committed end). {recover(db.path(), hidden, commit.num_episodes)}"
        )
        return
    damaged = [
        f"commit record {n} (byte offset {at})"
        for n, at in enumerate(SLOT_OFFSETS)
        if (raw := db._preamble[at : at + SLOT_SIZE]) != bytes(SLOT_SIZE) and parse_slot(raw) is None
    ]
    past = mm.size() - commit.end
    if damaged:
        report.warnings.append(
            f"{' and '.join(damaged)} fails its checksum (a write torn by a crash, or damage); the file reads "
            f"as generation {commit.generation} from the other record"
            + (f"; the next append discards the {past} bytes past the committed end" if past else "")
        )
    elif past and _blocks_after(db):
        report.passed.append(
            f"{past} bytes past the committed end left by an interrupted append (the next append discards them)"
        )
    elif past:  # no index among them: episodes an append wrote and never committed
        report.warnings.append(
            f"{past} bytes after the last commit (byte offset {commit.end}): an append in progress (a Writer "
            "still open on the file), or one that did not finish (a Writer neither closed nor aborted, or a "
            "process killed while appending); they are not part of the file's episodes, and the next append "
            "removes them"
        )


def _check_index_crc(db: Database, report: Report) -> bool:
    """Check the index block's CRC-32; report a mismatch and read on past it. Returns
    whether it matched."""
    commit = db._commit
    got = crc32(db._map()[commit.index_offset : commit.end].data)
    if got == commit.index_crc:
        report.passed.append(f"index checksum ({commit.index_length} bytes)")
        return True
    report.errors.append(
        f"index checksum mismatch at byte offset {commit.index_offset} ({commit.index_length} bytes): "
        f"stored {commit.index_crc:08x}, computed {got:08x}"
    )
    db._verified = True  # reported: read on, to name what else is damaged
    return False


def _damage(exc: Exception) -> str:
    """What ``exc`` says of the damage: a kinodb error's message; any other error, raised
    reading past a failed index checksum, with its type."""
    if isinstance(exc, KinodbError):
        return str(exc)
    return f"the damaged index cannot be read further ({type(exc).__name__}: {exc})"


def _check_index(db: Database, report: Report) -> None:
    commit = db._commit
    cols = db._cols
    frames = int(cols["num_frames"].astype(np.uint64).sum()) if len(db) else 0
    if frames != commit.num_frames:
        report.errors.append(f"commit record says {commit.num_frames} frames, episodes sum to {frames}")
    starts, counts = cols["sec_start"].astype(np.int64), cols["sec_count"].astype(np.int64)
    rows = len(cols["sec.name"])
    if len(db) and (
        starts[0] != 0 or (starts[1:] != (starts + counts)[:-1]).any() or starts[-1] + counts[-1] != rows
    ):
        report.errors.append(
            "section directory is not contiguous: sec_start/sec_count disagree with the table"
        )
        return
    _check_uniform(db, report)
    offs, lens = cols["payload_offset"].astype(np.int64), cols["payload_length"].astype(np.int64)
    order = np.argsort(offs)
    starts = np.concatenate([offs[order], [commit.index_offset]])
    ends = np.concatenate([[256], (offs + lens)[order]])
    gaps = starts - ends
    dead = int(gaps[gaps >= 64].sum()) if len(db) else 0
    if dead > 0:
        report.passed.append(f"{dead} bytes of superseded indexes from appends (reclaim with `kino upgrade`)")


def _check_uniform(db: Database, report: Report) -> None:
    """The table of contents' ``uniform`` entry, where it has one: under a TOC checksum
    that matches, and what the section directory says (readers trust it for every
    episode's arrays)."""
    commit = db._commit
    _, toc_len, toc_crc, _ = INDEX_HEAD.unpack_from(db._map().data, commit.index_offset)
    at = commit.index_offset + INDEX_HEAD.size
    toc = bytes(db._map()[at : at + toc_len])
    entry = json.loads(toc).get("uniform")
    if entry is None:
        return
    got = crc32(toc)
    if got != toc_crc:
        report.errors.append(
            f"table of contents checksum mismatch (index head at byte offset {commit.index_offset}: stored "
            f"{toc_crc:08x}, computed {got:08x}); readers ignore its uniform layout. Rewrite the file "
            f"with kino upgrade {db.path()} NEW.kdb"
        )
        return
    actual = uniform_layout(db._cols)
    if entry != actual:
        report.errors.append(
            f"the table of contents says every episode is laid out alike ({json.dumps(entry)[:200]}), but the "
            f"section directory says {'otherwise' if actual is None else json.dumps(actual)[:200]}: readers "
            f"would read arrays from the wrong place. Rewrite the file with kino upgrade {db.path()} NEW.kdb"
        )
    else:
        report.passed.append(f"uniform layout of the {len(db)} episodes (step {entry['step']} bytes)")


def _check_schema(db: Database, report: Report) -> None:
    schema = db.schema()
    table = db.episodes()
    for part, dim_col in (("actions", "action_dim"), ("states", "state_dim")):
        entry = schema.get(part, {})
        dims = table[dim_col]
        for name, (start, stop) in entry.get("components", {}).items():
            if len(dims) and stop > int(dims.min()):
                report.errors.append(
                    f"schema component {part}.{name} [{start}:{stop}] exceeds {dim_col} {int(dims.min())}"
                )
        if "names" in entry and len(dims) and (dims != len(entry["names"])).any():
            report.errors.append(f"schema {part}.names has {len(entry['names'])} names but {dim_col} differs")
    arrays = schema.get("arrays")
    entries = {
        **{part: schema.get(part) for part in ("actions", "states", "rewards", "is_terminal")},
        **(arrays if isinstance(arrays, dict) else {}),
    }
    declared = {}
    for name, entry in entries.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype is None:  # not recorded: the episodes vary
            continue
        try:
            ok = isinstance(dtype, str) and np.dtype(dtype).str in DTYPES
        except (TypeError, ValueError, SyntaxError):  # np.dtype parses some strings as code
            ok = False
        if not ok:
            report.errors.append(
                f"schema {name}.dtype {dtype!r} is not a dtype kinodb stores; the index is damaged"
            )
            continue
        layout = schema_layout(db._block.dataset, name) if not isinstance(db, LegacyDatabase) else None
        if layout is not None:
            declared[name] = layout
    if declared:
        _check_declared(db, declared, report)


# Episodes named one by one where their arrays disagree with the schema (then a count).
_SHOWN_UNLIKE = 10


def _check_declared(
    db: Database, declared: dict[str, tuple[np.dtype[Any], tuple[int, ...]]], report: Report
) -> None:
    """Each episode's arrays against the dtype and per-frame shape the dataset schema
    records for every episode (``declared``), as `Database.gather` checks them."""
    cols = db._cols
    counts = cols["sec_count"].astype(np.int64)
    kind, dt, ndim = (cols[c].astype(np.int64) for c in ("sec.kind", "sec.dtype", "sec.ndim"))
    if int(counts.sum()) != len(kind):  # the directory is damaged: `_check_index` said so
        return
    episode = np.repeat(np.arange(len(db)), counts)
    dims = cols["sec.dims"].astype(np.int64)
    names = np.array([declared.get(n) is not None for n in db._names] + [False])
    code = np.minimum(cols["sec.name"].astype(np.int64), len(db._names))
    # Rows whose codes are bad are damage `_check_episodes` names.
    usable = names[code] & (kind == KIND_ARRAY) & (dt < len(DTYPES)) & (ndim >= 1) & (ndim <= 4)
    unlike: list[str] = []
    for name, (dtype, trail) in declared.items():
        rows = np.flatnonzero(usable & (code == db._names.index(name)))
        want = np.array(trail + (0,) * (3 - len(trail)), np.int64)
        bad = rows[
            (dt[rows] != DTYPE_CODE[dtype])
            | (ndim[rows] != len(trail) + 1)
            | (dims[rows] != want).any(axis=1)
        ]
        for r in bad.tolist():
            shape = tuple(int(d) for d in dims[r, : max(int(ndim[r]) - 1, 0)])
            unlike.append(
                f"episode {int(episode[r])}: array {name!r} is {np.dtype(DTYPES[dt[r]])} {shape} per frame, but "
                f"the dataset schema says every episode holds it as {dtype} {trail}; the index is damaged"
            )
    report.errors.extend(unlike[:_SHOWN_UNLIKE])
    if len(unlike) > _SHOWN_UNLIKE:
        report.errors.append(f"and {len(unlike) - _SHOWN_UNLIKE} more arrays unlike the dataset schema")


def _check_episodes(
    db: Database,
    report: Report,
    nonfinite: dict[str, list[int]],
    decode_images: bool,
    damage: tuple[type[Exception], ...] = (KinodbError,),
) -> None:
    """`_check_episode` of every episode, with its findings in its order: what passes
    checked at once over the index's columns (`_sound`), the rest episode by episode.
    ``damage``: the errors reported as the damage of an episode (any, past a failed index
    checksum), not raised."""
    try:
        sound = None if isinstance(db, LegacyDatabase) else _sound(db, decode_images)
    except damage:
        sound = None
    if sound is None:
        for i in range(len(db)):
            _check_episode(db, i, report, nonfinite, decode_images, damage)
        return
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, -1])
    for i in sound.visit.tolist():
        if not sound.ok[i]:
            _check_episode(db, i, report, found, decode_images, damage)
            continue
        try:  # sound but for its frames, which decode one by one
            for cam, info in db._episode_cameras(i).items():
                db._decode(i, cam, info, 0, info.shape[0])
        except damage as exc:
            report.errors.append(f"episode {i}: {_damage(exc)}")
    for part in (found, sound.nonfinite):
        for name, (nan, inf, eps, first) in part.items():
            acc = nonfinite[name]
            acc[0], acc[1], acc[2] = acc[0] + nan, acc[1] + inf, acc[2] + eps
            acc[3] = first if acc[3] < 0 else min(acc[3], first)


@dataclass(frozen=True, slots=True)
class _Sound:
    """What `_sound` found: the episodes every check passes, and what remains to do."""

    ok: np.ndarray  # per episode: every check passes, but decoding its frames
    visit: np.ndarray  # ascending: the episodes not ok (checked one by one), and those with frames to decode
    nonfinite: dict[str, list[int]]  # as `validate` counts them, over the ok episodes' arrays


# Episodes whose metadata `_sound` reads at once (`Database._meta_columns`).
_META_CHUNK = 4096


def _sound(db: Database, decode_images: bool) -> _Sound | None:
    """The checks of `_check_episode` over the index's columns at once, with NumPy: the
    episodes where each passes, NaN and Inf counted in their arrays. Where one fails,
    the episode is left to `_check_episode`, which says what failed, as it always has.
    None where the columns cannot say (no usual directory): every episode is left so."""
    n, size = len(db), db._size
    try:
        cols = db._cols
        ok = np.ones(n, bool)
        for a in range(0, n, _META_CHUNK):
            ok[a : a + _META_CHUNK] = db._meta_columns(np.arange(a, min(a + _META_CHUNK, n))) is not None
        ok &= _payloads(db)
        d = all_sections(cols, db._names, size)
        if d is None:
            return None
        ok &= ~d.bad
        d = d.rows_where(ok[d.episode])
        camera = d.of_types(lambda t: t.kind == KIND_CAMERA)
        cams = d.episode[camera]
        frame_bytes, sound = camera_tables(db._map(), d.offset[camera], d.frames[cams], size)
        ok[cams[~sound]] = False
        end = d.offset + d.nbytes
        end[camera] += frame_bytes
        start = np.minimum(cols["payload_offset"], size + 1).astype(np.int64)
        stop = start + np.minimum(cols["payload_length"], size + 1).astype(np.int64)
        ok[d.episode[(d.offset < start[d.episode]) | (end > stop[d.episode])]] = False
        del end
        ok &= _arrays_as_declared(db, d)
        visit = ~ok
        if decode_images:
            raw = d.of_types(lambda t: t.codec == "raw")[camera]
            # Capped as `_nbytes` caps them: dims past the file size overflow no int64.
            pixels = np.array([min(math.prod(t.trail), size + 1) for t in d.types] or [0], np.int64)
            pixels, frames = pixels[d.type_of[camera]], d.frames[cams]
            fits = frames <= (size + 1) // np.maximum(pixels, 1)  # else more bytes than the file holds
            wrong = ~fits | (frame_bytes != pixels * np.where(fits, frames, 0))
            ok[cams[raw & wrong]] = False  # `Database._decode` raises
            visit = ~ok
            visit[cams[~raw]] = True  # compressed frames decode one by one
        nonfinite = _nonfinite(db, d.rows_where(ok[d.episode]))
    except KinodbError:
        return None
    return _Sound(ok, np.flatnonzero(visit), nonfinite)


def _payloads(db: Database) -> np.ndarray:
    """Per episode: its payload lies in the data area and matches its checksum."""
    cols, end = db._cols, db._commit.index_offset
    off = np.minimum(cols["payload_offset"], end + 1).astype(np.int64)
    length = np.minimum(cols["payload_length"], end + 1).astype(np.int64)
    ok = (off >= 256) & (off + length <= end)
    mv = db._map().data
    at = np.flatnonzero(ok)
    got = [crc32(mv[a:b]) for a, b in zip(off[at].tolist(), (off + length)[at].tolist(), strict=True)]
    ok[at] = np.array(got, np.int64) == cols["payload_crc"][at].astype(np.int64)
    return ok  # type: ignore[no-any-return]


# The arrays every episode holds, and the shape `_check_episode` expects of each: the rank,
# and the metadata column that gives the dim after the frames (None: no dim).
_EXPECTED = {
    "actions": (2, "action_dim"),
    "states": (2, "state_dim"),
    "rewards": (1, None),
    "is_terminal": (1, None),
}


def _arrays_as_declared(db: Database, d: Directory) -> np.ndarray:
    """Per episode: it holds each of `_EXPECTED` once, of the shape its metadata gives
    (`is_terminal` bool), and no array or camera name twice."""
    n, types = len(db), d.types
    ok = np.ones(n, bool)
    names = {name: k for k, name in enumerate(dict.fromkeys((t.kind, t.name) for t in types))}
    pairs = d.episode.astype(np.int64)
    pairs *= len(names)
    pairs += np.array([names[(t.kind, t.name)] for t in types] or [0], np.int64)[d.type_of]
    pairs.sort()
    ok[pairs[1:][pairs[1:] == pairs[:-1]] // max(len(names), 1)] = False  # a dict keeps one of them
    del pairs
    for name, (rank, column) in _EXPECTED.items():
        rows = np.flatnonzero(d.of_types(lambda t, name=name: t.kind != KIND_CAMERA and t.name == name))  # type: ignore[misc]
        episode, kinds = d.episode[rows], d.type_of[rows]
        ok &= np.bincount(episode, minlength=n) == 1
        wrong = np.array([len(t.trail) + 1 != rank for t in types] or [False])[kinds]
        if column is not None:
            dim = np.array([t.trail[0] if t.trail else -1 for t in types] or [0], np.int64)[kinds]
            wrong |= dim != db._cols[column].astype(np.int64)[episode]
        if name == "is_terminal":
            wrong |= np.array([t.dtype != np.bool_ for t in types] or [False])[kinds]
        ok[episode[wrong]] = False
    return ok


def _nonfinite(db: Database, d: Directory) -> dict[str, list[int]]:
    """NaN and Inf in the float arrays of rows ``d``, as `_check_episode` counts them per
    array name: ``[NaN, Inf, episodes holding some, the first of them]``."""
    out: dict[str, list[int]] = {}
    floats = [k for k, t in enumerate(d.types) if t.kind != KIND_CAMERA and t.dtype.kind == "f"]
    for dtype in {d.types[k].dtype for k in floats}:
        rows = np.isin(d.type_of, [k for k in floats if d.types[k].dtype == dtype])
        nan, inf = _count_nonfinite(db._map(), dtype, d.offset[rows], d.nbytes[rows])
        some = np.flatnonzero((nan > 0) | (inf > 0))
        for r, ep, k in zip(
            some.tolist(), d.episode[rows][some].tolist(), d.type_of[rows][some].tolist(), strict=True
        ):
            acc = out.setdefault(d.types[k].name, [0, 0, 0, -1])
            acc[0], acc[1], acc[2] = acc[0] + int(nan[r]), acc[1] + int(inf[r]), acc[2] + 1
            acc[3] = ep if acc[3] < 0 else min(acc[3], ep)
    return out


# Floats scanned at once, and the gap between two arrays below which the bytes between are
# scanned too (cheaper than a step of the Python loop over spans).
_SCAN, _GAP = 1 << 22, 1 << 12


def _count_nonfinite(
    buf: np.ndarray, dtype: np.dtype[Any], off: np.ndarray, nbytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """NaN and Inf counts of each array of ``dtype`` at byte offsets ``off`` (``nbytes``
    long): a scan over the spans the arrays cover, counting only where they lie."""
    nan, inf = np.zeros(len(off), np.int64), np.zeros(len(off), np.int64)
    item = dtype.itemsize
    loose = off % item != 0
    for r in np.flatnonzero(loose).tolist():  # no kinodb writer leaves an array unaligned
        arr = np.frombuffer(buf, dtype, int(nbytes[r]) // item, int(off[r]))  # type: ignore[call-overload]
        nan[r], inf[r] = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    at = np.flatnonzero(~loose & (nbytes > 0))  # an empty array holds nothing, wherever it lies
    if not len(at):
        return nan, inf
    order = at[np.argsort(off[at], kind="stable")]
    start, stop = off[order] // item, (off[order] + nbytes[order]) // item
    if (stop[:-1] > start[1:]).any():  # arrays that overlap (no writer's): one by one
        for r in order.tolist():
            arr = np.frombuffer(buf, dtype, int(nbytes[r]) // item, int(off[r]))  # type: ignore[call-overload]
            nan[r], inf[r] = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        return nan, inf
    flat = typed_view(buf, dtype)
    breaks = np.flatnonzero(start[1:] - stop[:-1] > _GAP // item) + 1
    for first, last in zip([0, *breaks.tolist()], [*breaks.tolist(), len(order)], strict=True):
        for a in range(int(start[first]), int(stop[last - 1]), _SCAN):
            b = min(a + _SCAN, int(stop[last - 1]))
            chunk = flat[a:b]
            odd = np.flatnonzero(~np.isfinite(chunk))
            if not len(odd):
                continue
            is_nan = np.isnan(chunk[odd])
            pos = odd + a
            k = np.searchsorted(start[first:last], pos, "right") - 1 + first
            inside = (k >= first) & (pos < stop[np.maximum(k, first)])
            rows = order[k[inside]]
            np.add.at(nan, rows, is_nan[inside])
            np.add.at(inf, rows, ~is_nan[inside])
    return nan, inf


def _check_episode(
    db: Database,
    i: int,
    report: Report,
    nonfinite: dict[str, list[int]],
    decode_images: bool,
    damage: tuple[type[Exception], ...] = (KinodbError,),
) -> None:
    where = f"episode {i}"
    try:
        meta = db.read_meta(i)
        if not isinstance(db, LegacyDatabase):
            _check_payload(db, i, report)
        arrays = db._episode_arrays(i)
        T = meta["num_frames"]
        expect = {
            "actions": (T, meta["action_dim"]),
            "states": (T, meta["state_dim"]),
            "rewards": (T,),
            "is_terminal": (T,),
        }
        for name, shape in expect.items():
            arr = arrays.get(name)
            if arr is None:
                report.errors.append(f"{where}: missing array {name!r}")
            elif arr.shape != shape:
                report.errors.append(f"{where}: {name} has shape {arr.shape}, metadata says {shape}")
        for name, arr in arrays.items():
            if arr.shape[:1] != (T,):
                report.errors.append(f"{where}: {name} has {arr.shape[0]} frames, episode has {T}")
            if arr.dtype.kind == "f":
                nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
                if nan or inf:
                    acc = nonfinite[name]
                    acc[0] += nan
                    acc[1] += inf
                    acc[2] += 1
                    acc[3] = i if acc[3] < 0 else acc[3]
        if arrays.get("is_terminal") is not None and arrays["is_terminal"].dtype != np.bool_:
            report.errors.append(
                f"{where}: is_terminal has dtype {arrays['is_terminal'].dtype}, expected bool"
            )
        for cam, info in db._episode_cameras(i).items():
            if info.shape[0] != T:
                report.errors.append(f"{where}, camera {cam!r}: {info.shape[0]} frames, episode has {T}")
            elif decode_images:
                db._decode(i, cam, info, 0, T)
    except damage as exc:
        report.errors.append(f"{where}: {_damage(exc)}")


def _check_payload(db: Database, i: int, report: Report) -> None:
    cols = db._cols
    off, length = int(cols["payload_offset"][i]), int(cols["payload_length"][i])
    if off < 256 or off + length > db._commit.index_offset:
        report.errors.append(
            f"episode {i}: payload at byte offset {off} ({length} bytes) lies outside the data area"
        )
        return
    got = crc32(db._map()[off : off + length].data)
    if got != int(cols["payload_crc"][i]):
        report.errors.append(
            f"episode {i}: payload checksum mismatch at byte offset {off}: stored "
            f"{int(cols['payload_crc'][i]):08x}, computed {got:08x}"
        )
    for sec in db._episode_sections(i):
        end = sec.offset + sec.nbytes
        if sec.kind == 1:  # a camera: its frames follow the offset table
            table = np.frombuffer(db._map(), "<u8", sec.shape[0] + 1, sec.offset)
            end += int(table[-1])
        if sec.offset < off or end > off + length:
            report.errors.append(f"episode {i}: section {sec.name!r} lies outside its payload")
