"""Check a ``.kdb`` file end to end: checksums, offsets, dimensions, images, NaN/Inf."""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from kinodb.errors import KinodbError
from kinodb.kdb._layout import ALIGN, INDEX_MAGIC, SLOT_OFFSETS, SLOT_SIZE, crc32, parse_slot
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


def _check_slots(db: Database, report: Report) -> None:
    """Report a commit record that is set but fails its checksum, and a complete index
    written after the committed end: together they mean a newer commit is hidden."""
    mm, commit = db._mm, db._commit
    assert mm is not None  # open
    damaged = []
    for n, at in enumerate(SLOT_OFFSETS):
        raw = mm[at : at + SLOT_SIZE]
        if int.from_bytes(raw[:8], "little") and parse_slot(raw) is None:
            damaged.append(f"commit record {n} (byte offset {at})")
    later = -1
    at = mm.find(INDEX_MAGIC, commit.end)
    while at >= 0:
        if at % ALIGN == 0:
            later = at
        at = mm.find(INDEX_MAGIC, at + 1)
    if damaged and later >= 0:
        report.errors.append(
            f"{' and '.join(damaged)} fails its checksum, and an index block at byte offset {later} lies past "
            f"the committed end ({commit.end}): a newer commit is probably hidden, and the file reads as "
            f"generation {commit.generation} ({commit.num_episodes} episodes). Keep a copy of the file before "
            "appending: an append discards everything past the committed end"
        )
    elif damaged:
        report.warnings.append(
            f"{' and '.join(damaged)} fails its checksum (a write torn by a crash, or damage); the file reads "
            f"as generation {commit.generation} from the other record"
        )
    elif later >= 0:
        report.passed.append(
            f"{mm.size() - commit.end} bytes past the committed end left by an interrupted append "
            "(the next append discards them)"
        )


def _check_index(db: Database, report: Report) -> None:
    commit, cols = db._commit, db._cols
    got = crc32(db._map()[commit.index_offset : commit.end].data)
    if got != commit.index_crc:
        report.errors.append(
            f"index checksum mismatch at byte offset {commit.index_offset}: stored "
            f"{commit.index_crc:08x}, computed {got:08x}"
        )
    else:
        report.passed.append(f"index checksum ({commit.index_length} bytes)")
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
