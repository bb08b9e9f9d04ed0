"""Check a ``.kdb`` file end to end: checksums, offsets, dimensions, images, NaN/Inf."""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from kinodb.errors import CorruptFileError, KinodbError
from kinodb.kdb._layout import (
    ALIGN,
    INDEX_MAGIC,
    SLOT_OFFSETS,
    SLOT_SIZE,
    Commit,
    align,
    crc32,
    pack_slot,
    parse_slot,
)
from kinodb.kdb._table import Columns, decode_index
from kinodb.kdb.legacy import LegacyDatabase
from kinodb.kdb.reader import Database, open_database


@dataclass
class Report:
    """What `validate` found. ``ok`` is True when there are no errors."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

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
    report = Report(os.fspath(path))
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        try:
            db = open_database(path)
        except KinodbError as exc:
            report.errors.append(f"open: {exc}")
            return report
        finally:
            report.warnings.extend(str(w.message).removeprefix(f"{report.path}: ") for w in raised)
    with db:
        report.passed.append(f"header and commit record (format {db.version()})")
        try:
            if isinstance(db, LegacyDatabase):
                report.warnings.append(
                    f"format {db.version()} has no checksums; run `kino upgrade` to get them"
                )
            else:
                _check_slots(db, report)
                _check_index(db, report)
            _check_schema(db, report)
        except KinodbError as exc:
            report.errors.append(f"index: {exc}")
            return report
        nonfinite: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, -1])
        for i in range(len(db)):
            _check_episode(db, i, report, nonfinite, decode_images)
        for name, (nan, inf, eps, first) in sorted(nonfinite.items()):
            report.warnings.append(
                f"{name}: {nan} NaN and {inf} Inf values in {eps} episode{'' if eps == 1 else 's'} (first: episode {first})"
            )
        if not report.errors:
            report.passed.append(f"{len(db)} episodes: arrays, dimensions and frame counts")
    return report


@dataclass(frozen=True, slots=True)
class HiddenCommit:
    """A newer commit that a damaged commit record hides (`hidden_commit`)."""

    record: str  # which record, and what is wrong with it
    index_offset: int  # where the hidden commit's index block starts
    generation: int
    num_episodes: int


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
        raw = mm[at : at + SLOT_SIZE]
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
                return HiddenCommit(text, at, found.generation, found.num_episodes)
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
    c, path = db._commit, db.path()
    raise CorruptFileError(
        f"{path}: {found.record}, and a complete index of {found.num_episodes} episodes (generation "
        f"{found.generation}) lies at byte offset {found.index_offset}, past the committed end "
        f"({c.end}): a newer commit is probably hidden, and the file reads as generation {c.generation} "
        f"({c.num_episodes} episodes). Nothing was appended: an append would discard every byte past the "
        f"committed end. Copy the file first; check it with: kino validate {path}; the {c.num_episodes} "
        f"committed episodes can be kept with: kino upgrade {path} NEW.kdb"
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
            f"({commit.num_episodes} episodes). Keep a copy of the file before appending: an append "
            "discards everything past the committed end, so kinodb refuses to append to it"
        )
        return
    damaged = [
        f"commit record {n} (byte offset {at})"
        for n, at in enumerate(SLOT_OFFSETS)
        if mm[at : at + SLOT_SIZE] != bytes(SLOT_SIZE) and parse_slot(mm[at : at + SLOT_SIZE]) is None
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
            f"{past} bytes after the last commit (byte offset {commit.end}), left by an append that did not "
            "finish (a Writer neither closed nor aborted, or a process killed while appending); they are "
            "not part of the file's episodes, and the next append removes them"
        )


def _check_index(db: Database, report: Report) -> None:
    commit = db._commit
    got = crc32(db._map()[commit.index_offset : commit.end].data)
    if got != commit.index_crc:
        report.errors.append(
            f"index checksum mismatch at byte offset {commit.index_offset} ({commit.index_length} bytes): "
            f"stored {commit.index_crc:08x}, computed {got:08x}"
        )
        db._verified = True  # reported: read on, to name what else is damaged
    else:
        report.passed.append(f"index checksum ({commit.index_length} bytes)")
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
    offs, lens = cols["payload_offset"].astype(np.int64), cols["payload_length"].astype(np.int64)
    order = np.argsort(offs)
    starts = np.concatenate([offs[order], [commit.index_offset]])
    ends = np.concatenate([[256], (offs + lens)[order]])
    gaps = starts - ends
    dead = int(gaps[gaps >= 64].sum()) if len(db) else 0
    if dead > 0:
        report.passed.append(f"{dead} bytes of superseded indexes from appends (reclaim with `kino upgrade`)")


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


def _check_episode(
    db: Database, i: int, report: Report, nonfinite: dict[str, list[int]], decode_images: bool
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
    except KinodbError as exc:
        report.errors.append(f"{where}: {exc}")


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
