"""Reading kinfer NDJSON logs back (`kinodb.infer.read_log`): streamed, in blocks of lines.

The file is read in blocks of whole lines (`BLOCK_BYTES`). Each block is parsed with one
``json.loads`` call (the lines joined as one JSON array; line by line only where that
fails, to find a torn line or say which line is wrong), split into runs where
``step_id`` goes back to 0 (back to another value, it is refused: the lines of runners that
wrote to one file at the same time), and each field of the block becomes one NumPy array appended to
its run's column. The parsed objects of a block are dropped before the next is read, so
the memory taken beyond the returned arrays is about one block's objects (some ten
times `BLOCK_BYTES`) plus, when a run ends, its largest column once more while the
column's pieces are joined.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError, describe_start
from kinodb.infer.telemetry import EXTRA_INPUTS, INPUT_OF_KEY, KINFER_KEYS

log = logging.getLogger("kinodb.infer.telemetry")  # the reader's warnings, under the module users know

BLOCK_BYTES = 1 << 21  # bytes read and parsed at once

# Fields kinfer and kinodb write as numbers: never left out, whatever the first line holds.
NUMERIC_KEYS = frozenset({*KINFER_KEYS.values(), *EXTRA_INPUTS, "output", "step_latency_us"})

Line = tuple[int, bytes]  # (line number from 1, the line without its newline)
Record = tuple[int, dict[str, Any]]


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, npt.NDArray[Any]]]:
    """`kinodb.infer.read_log`: the runs of a log as columns."""
    reader = _LogReader(os.fspath(path))
    with open(reader.path, "rb") as fh:
        for block, after, final, torn_tail in _blocks(fh, reader):
            reader.feed(block, after, final=final, torn_tail=torn_tail)
    return reader.finish()


def _blocks(fh: BinaryIO, reader: _LogReader) -> Iterator[tuple[list[Line], Line | None, bool, bool]]:
    """``(lines, the line after them, final, torn tail)``: the file's non-blank lines in
    blocks of about `BLOCK_BYTES`. The line after a block is the first of the next (a torn
    line is told from the next run by it); ``torn tail`` says the file does not end in a
    newline (only with ``final``)."""
    lineno = 0
    pending: list[Line] = []
    rest = b""
    while True:
        chunk = fh.read(BLOCK_BYTES)
        if not chunk:
            break
        if not reader.content and chunk.strip():
            reader.content = True
        buf = rest + chunk if rest else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:  # a line longer than a block: read on
            rest = buf
            continue
        rest = buf[cut + 1 :]
        for line in buf[:cut].split(b"\n"):
            lineno += 1
            if line.strip():
                pending.append((lineno, line))
        if len(pending) > 1:  # the last one waits, to be the line after this block
            yield pending[:-1], pending[-1], False, False
            pending = pending[-1:]
    torn_tail = bool(rest) or lineno == 0  # the file does not end in a newline (an empty one neither)
    if rest.strip():
        pending.append((lineno + 1, rest))
    yield pending, None, True, torn_tail


class _LogReader:
    """The state carried from block to block: the runs read, and the one being read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.content = False  # anything but whitespace in the file
        self.head: bytes | None = None  # the file's first non-blank line, for messages
        self.records = 0  # records taken so far
        self.parsed_last: int | None = None  # step_id of the last record parsed
        self.last: int | None = None  # step_id of the last record taken
        self.run_line = 0  # the line on which the run being read starts
        self.runs: list[dict[str, npt.NDArray[Any]]] = []
        self.run: _Run | None = None

    def feed(self, lines: list[Line], after: Line | None, *, final: bool, torn_tail: bool) -> None:
        """Parse a block of lines and add its records to the runs."""
        if not lines:
            return
        if self.head is None:
            self.head = lines[0][1]
        records = self._parse(lines, after, final=final, torn_tail=torn_tail)
        p, start = self.path, 0
        for k, (lineno, rec) in enumerate(records):
            if not self.records:
                fault = _shape_fault(rec)
                if fault is not None:
                    raise _not_a_log(p, lineno, fault)
            if not isinstance(rec, dict):
                raise InferError(f"{p}: line {lineno}: expected a JSON object")
            sid = rec.get("step_id")
            if not isinstance(sid, int) or isinstance(sid, bool) or "output" not in rec:
                raise InferError(f"{p}: line {lineno}: a kinfer log line needs 'step_id' (int) and 'output'")
            if self.last is None:
                self.run_line = lineno
            elif sid <= self.last:  # a new run
                if sid != 0:  # every run starts at 0: this is another runner's line
                    raise _interleaved(p, lineno, self.last, sid, self.run_line)
                self._add(records[start:k])
                self._end_run()
                start, self.run_line = k, lineno
            self.last = sid
            self.records += 1
        self._add(records[start:])

    def _add(self, records: list[Record]) -> None:
        if not records:
            return
        if self.run is None:
            self.run = _Run(self.path, records[0])
        self.run.add(records)

    def _end_run(self) -> None:
        if self.run is not None:
            self.runs.append(self.run.columns())
            self.run = None

    def finish(self) -> list[dict[str, npt.NDArray[Any]]]:
        """The runs; `InferError` for a file without a log line."""
        self._end_run()
        if not self.runs:
            raise InferError(f"{self.path}: holds no log lines" + ("" if self.content else " (it is empty)"))
        return self.runs

    def _parse(self, lines: list[Line], after: Line | None, *, final: bool, torn_tail: bool) -> list[Record]:
        try:
            recs = json.loads(b"[" + b",".join(ln for _, ln in lines) + b"]")  # one call for the block
            out = [(n, rec) for (n, _), rec in zip(lines, recs, strict=True)]
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            return self._parse_each(lines, after, torn_tail=final and torn_tail)
        for _, rec in reversed(out):
            sid = rec.get("step_id") if isinstance(rec, dict) else None
            if isinstance(sid, int):
                self.parsed_last = sid
                break
        return out

    def _parse_each(self, lines: list[Line], after: Line | None, *, torn_tail: bool) -> list[Record]:
        """Line by line, where the block does not parse at once: torn lines and wrong ones."""
        path = self.path
        _check_utf8(path, lines, self.head or b"", torn_tail=torn_tail)
        out: list[Record] = []
        for k, (n, line) in enumerate(lines):
            first = not out and not self.records  # no log line before it in the file
            try:
                rec = json.loads(line)
            except UnicodeDecodeError:  # only the torn last line gets here (`_check_utf8`)
                if first and not line.lstrip().startswith(b"{"):  # the only line, and no log line at all
                    raise _not_a_log(path, n, f"is not UTF-8 text; {describe_start(line)}") from None
                log.warning("%s: line %d: dropped the torn last line (%d bytes; the writer was killed mid-line)",
                            path, n, len(line))  # fmt: skip
                break
            except json.JSONDecodeError as exc:
                if k == len(lines) - 1 and torn_tail and (not first or line.lstrip().startswith(b"{")):
                    log.warning("%s: line %d: dropped the torn last line (%d bytes; the writer was killed mid-line)",
                                path, n, len(line))  # fmt: skip
                    break
                nxt = lines[k + 1] if k + 1 < len(lines) else after
                glued = _glued_record(line)
                later = glued[1] if glued is not None else (_record(nxt[1]) if nxt is not None else None)
                sid = later.get("step_id") if later is not None else None
                last = self.parsed_last
                if isinstance(sid, int) and not isinstance(sid, bool) and (last is None or sid <= last):
                    cut = glued[0] if glued is not None else len(line)
                    where = "on the same line" if glued is not None or nxt is None else f"on line {nxt[0]}"
                    log.warning(
                        "%s: line %d: skipped %d bytes, the torn end of an interrupted run (its writer was killed "
                        "mid-line); the next run, appended after it, starts %s; both runs are kept",
                        path, n, cut, where,
                    )  # fmt: skip
                    if glued is None:
                        continue
                    rec = glued[1]
                elif first:  # the file is no log, not a log with a torn line
                    raise _not_a_log(
                        path, n, f"is not JSON ({exc.msg} at column {exc.colno}): {_excerpt(line)}"
                    ) from None
                else:
                    raise InferError(
                        f"{path}: line {n}: not JSON ({exc.msg} at column {exc.colno}): a torn or incomplete "
                        "line inside a run (no new run starts after it). To read the rest, delete the line "
                        f"(sed -i '{n}d' {path}); the steps before and after it are kept, with a gap in step_id"
                    ) from None
            if first and (fault := _shape_fault(rec)) is not None:
                raise _not_a_log(path, n, fault)
            if not isinstance(rec, dict):
                raise InferError(f"{path}: line {n}: expected a JSON object")
            sid = rec.get("step_id")
            self.parsed_last = sid if isinstance(sid, int) else self.parsed_last
            out.append((n, rec))
        return out


class _Run:
    """One run's columns, growing a block at a time: the fields of its first line that are
    numbers, each kept as the arrays of the blocks, joined at the end."""

    def __init__(self, path: str, first: Record) -> None:
        self.path = path
        self.first = first
        rec = first[1]
        self.ids: list[npt.NDArray[np.int64]] = []
        self.t_us: list[npt.NDArray[np.int64]] | None = [] if "t_us" in rec else None
        self.keys: list[str] = []
        for key, value in rec.items():
            if key in ("step_id", "t_us"):
                continue
            if not _numeric(value):
                if key in NUMERIC_KEYS:
                    raise InferError(_bad_field(path, [first], key))
                continue  # text fields other loggers add (joint_order, ...)
            self.keys.append(key)
        self.parts: dict[str, list[npt.NDArray[Any]]] = {key: [] for key in self.keys}
        self.shapes = {key: np.shape(rec[key]) for key in self.keys}
        self.null_from: dict[
            str, int
        ] = {}  # the line from which a field has been null, while it has no value

    def add(self, records: list[Record]) -> None:
        """Append a block's records (all of this run)."""
        self.ids.append(np.array([r["step_id"] for _, r in records], np.int64))
        if self.t_us is not None:
            self.t_us.append(np.array([r.get("t_us", 0) for _, r in records], np.int64))
        for key in self.keys:
            values = [r.get(key) for _, r in records]
            parts = self.parts[key]
            if None in values:
                if key != "output" and not parts and values.count(None) == len(values):
                    self.null_from.setdefault(key, records[0][0])  # an input the model lacks, so far
                    continue
                self._null(key, records, values)
            if key in self.null_from:  # null on the lines before, a value now
                self._null(key, records, values)
            try:
                arr = np.array(values, np.float64 if key == "step_latency_us" else np.float32)
            except (ValueError, TypeError):
                raise InferError(_bad_field(self.path, [self.first, *records], key)) from None
            if arr.shape[1:] != self.shapes[key]:
                raise InferError(_bad_field(self.path, [self.first, *records], key))
            parts.append(arr)

    def _null(self, key: str, records: list[Record], values: list[Any]) -> None:
        bad = self.null_from.get(key)
        if bad is None:
            bad = next(n for (n, _), v in zip(records, values, strict=True) if v is None)
        what = "the action is on every line" if key == "output" else "but not in every line of the run"
        raise InferError(f"{self.path}: line {bad}: field {key!r} is null or missing, {what}")

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The run's columns; each field's pieces are joined and dropped in turn."""
        cols: dict[str, npt.NDArray[Any]] = {"step_id": _join(self.ids)}
        if self.t_us is not None:
            cols["t_us"] = _join(self.t_us)
        for key in self.keys:
            parts = self.parts.pop(key)
            if parts:  # else null throughout: an input the model lacks
                cols[INPUT_OF_KEY.get(key, key)] = _join(parts)
        return cols


def _join(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    parts.clear()
    return out


_JSON_KINDS = {
    list: "a JSON array",
    str: "a JSON string",
    bool: "JSON true or false",
    type(None): "JSON null",
}
LOG_LINE = '{"step_id":0,"t_us":1718000000000000,"joint_angles":[0.1,...],...,"output":[0.2,...]}'


def _not_a_log(path: str, n: int, found: str) -> InferError:
    """The error for a file whose first line is no log line: it is no kinfer log at all."""
    return InferError(
        f"{path}: not a kinfer NDJSON log: line {n} {found}; a log holds one JSON object per step, with "
        f"an integer 'step_id' and the action 'output', such as {LOG_LINE}"
    )


def _interleaved(path: str, n: int, last: int, sid: int, start: int) -> InferError:
    """The error for a ``step_id`` that goes back to another value than 0: runners that wrote
    to one file at the same time (their lines alternate: 0, 0, 1, 1, 2, 2, ...)."""
    keep = (
        f"To keep the lines before line {start}: head -n {start - 1} {path} > before.ndjson. "
        if start > 1
        else ""
    )
    return InferError(
        f"{path}: line {n}: step_id {sid} follows step_id {last}: a run's step_id starts at 0 and only "
        f"grows, so the lines of two or more runs are interleaved here, from line {start} or before "
        "(runners wrote to this file at the same time). Their lines cannot be told apart, and read as "
        f"runs they would make bogus runs of a step or two. {keep}To keep runs apart, give each runner "
        "a log of its own: a folder log_path (or $KINFER_LOG_PATH) gives every run its own file; a "
        ".ndjson log_path, or $KINFER_LOG_UUID, must differ from runner to runner"
    )


def _shape_fault(rec: Any) -> str | None:
    """What keeps a parsed line from being a log line (``is a JSON array, ...``), or None."""
    if not isinstance(rec, dict):
        what = _JSON_KINDS.get(type(rec), "a JSON number")
        return f"is {what}, not an object: {_excerpt(json.dumps(rec).encode())}"
    missing = [key for key in ("step_id", "output") if key not in rec]
    if missing:
        keys = ", ".join(repr(key) for key in list(rec)[:6]) + (", ..." if len(rec) > 6 else "")
        return (
            f"is a JSON object without {' or '.join(repr(key) for key in missing)} "
            f"(its keys: {keys or 'none'})"
        )
    sid = rec["step_id"]
    if not isinstance(sid, int) or isinstance(sid, bool):
        return f"has a 'step_id' that is no integer: {_excerpt(json.dumps(sid).encode())}"
    return None


def _excerpt(line: bytes, limit: int = 60) -> str:
    """The start of a line, quoted, for a message."""
    text = line.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_utf8(path: str, lines: list[Line], head: bytes, *, torn_tail: bool) -> None:
    """Refuse a file that is not UTF-8 text (a binary file given as a log), naming the line;
    ``head`` is the file's first line, shown when it is no log line.

    A torn last line may end inside a multi-byte character; it is left to the torn-line rule.
    """
    last = len(lines) - 1
    for k, (n, line) in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            if k == last and torn_tail:
                return
            # What the file is, when its first line is no log line (a .kdb file given as a log).
            start = "" if head.lstrip()[:1] == b"{" else f"; {describe_start(head)}"
            raise InferError(
                f"{path}: line {n}: not UTF-8 text: is it an NDJSON log? Byte {exc.start} of the line is "
                f"{line[exc.start : exc.start + 1]!r}{start}; a kinfer log holds one JSON object per line"
            ) from None


def _glued_record(line: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(offset, record)`` of a whole log record that starts inside ``line`` after a torn one."""
    pos = line.find(b"{", 1)
    while pos > 0:
        try:
            rec = json.loads(line[pos:])
        except ValueError:  # not JSON, or not UTF-8
            pos = line.find(b"{", pos + 1)
            continue
        return (pos, rec) if isinstance(rec, dict) and "step_id" in rec else None
    return None


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8 (a torn last line)
        return None
    return rec if isinstance(rec, dict) else None


def _bad_field(path: str, run: list[Record], key: str) -> str:
    """The message for a field that is not numeric, or changes length, naming the first bad line."""
    first_n, first = run[0][0], run[0][1][key]
    for n, rec in run:
        value: Any = rec.get(key)
        if not _numeric(value):
            return f"{path}: line {n}: field {key!r} is not numeric: {json.dumps(value)[:80]}"
        if np.shape(value) != np.shape(first):
            return (
                f"{path}: line {n}: field {key!r} changes length within a run: {_count(value)} where line "
                f"{first_n} has {_count(first)} (a new run starts only where step_id goes back)"
            )
    return f"{path}: lines {run[0][0]}-{run[-1][0]}: field {key!r} changes length or is not numeric"


def _count(value: Any) -> str:
    return f"{len(value)} values" if isinstance(value, list) else "a single value"


def _numeric(value: Any) -> bool:
    """A number, a list of numbers and nulls (NaN or Inf, as kinfer writes them), or null."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
    )
