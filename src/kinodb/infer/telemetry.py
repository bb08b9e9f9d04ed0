"""NDJSON step telemetry in kinfer's format: a bounded, drop-on-full logger, and a reader.

One JSON object per step, with kinfer's keys so kinfer's tools read it: ``step_id``,
``t_us`` (wall clock after inference), ``joint_angles``, ``joint_vels``,
``projected_g``, ``accel``, ``gyro``, ``command`` (null when the model has no such
input) and ``output``; then inputs kinfer does not log, by their input names
(``quaternion``, ``initial_heading``, ``time``), and ``step_latency_us``. A NaN or
infinite value is written as a null element, as kinfer's serde_json writes it (NaN and
Infinity are not JSON), and read back as NaN.

Where the serialisation runs was measured (``benchmarks/infer.py``, docs/infer.md):
``json.dumps`` of a 20-joint record costs tens of microseconds, so on the control
thread it would double a fast policy's tick. The control thread therefore only copies
the inputs and the action into a preallocated ring row (about 1-2 us) and a writer
thread formats and writes rows in batches, preferably between a tick's end and shortly
before the next deadline (`NdjsonLogger.quiet_at`), so that it does not hold the GIL
when a tick starts. When those windows are too short to keep up (long ticks), it writes
anyway once a quarter of the ring is waiting, or a line has waited a second: a loop
that keeps its rate keeps its log. When the ring is full (the file's reader or the disk
stalled), the step's line is dropped and counted: the control loop never waits for the
disk.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import math
import os
import select
import stat
import threading
from collections.abc import Sequence
from time import monotonic, perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError

log = logging.getLogger(__name__)

# input name -> kinfer's log key, in kinfer's field order
KINFER_KEYS = {
    "joint_angles": "joint_angles",
    "joint_angular_velocities": "joint_vels",
    "projected_gravity": "projected_g",
    "accelerometer": "accel",
    "gyroscope": "gyro",
    "command": "command",
}
EXTRA_INPUTS = ("quaternion", "initial_heading", "time")  # logged by input name
INPUT_OF_KEY = {v: k for k, v in KINFER_KEYS.items()}
DEFAULT_CAPACITY = 1024  # kinfer's channel size
DEFAULT_FLUSH_EVERY = 100
QUIET_POLL_S = 2e-4
MAX_QUIET_S = 1.0  # a line waits at most this long for a quiet window before the writer takes the GIL anyway
CLOSE_STALL_S = 1.0  # at close, give up on a reader or disk that took no bytes for this long
PIPE_POLL_S = 0.05  # how often a writer waiting for a full pipe looks whether it should give up


class _Aborted(Exception):
    """Raised in the writer thread when `NdjsonLogger.close` gave up on a stalled reader."""


MAX_STAMP_SUFFIX = 9999  # runners starting in one second that each get a file of their own
LOG_SUFFIXES = (".ndjson", ".jsonl")  # a log_path ending so names the file; any other, a folder
LOG_PATH_TAKES = (
    "log_path takes a .ndjson or .jsonl file (appended to), or a folder (created if missing) to write "
    "<UTC time>.ndjson in"
)


def resolve_log_path(log_path: str | os.PathLike[str] | None) -> str | None:
    """The NDJSON file to write, or None when logging is off.

    ``log_path`` ending in ``.ndjson`` or ``.jsonl`` is the file; any other ``log_path``
    is a directory. Without ``log_path``, ``$KINFER_LOG_PATH`` names the directory
    (unset: no log). In a directory the file is ``$KINFER_LOG_UUID.ndjson``, else the UTC
    time ``YYYY-MM-DD_HH-MM-SS.ndjson``, as kinfer names it. Directories are created.
    A file named by the time is created here, empty and exclusively: when another runner
    took that name (it started in the same second), the file is
    ``YYYY-MM-DD_HH-MM-SS_1.ndjson`` (``_2``, ...), so each run has a file of its own.
    A file the caller named (``log_path``, ``$KINFER_LOG_UUID``) is left to be appended to.

    Raises:
        InferError: the folder cannot be created, a folder's path names a file (say
            ``run.json``), or the time-named file cannot be created in the folder; the
            message names the path and what ``log_path`` takes.
    """
    if log_path is None:
        directory = os.environ.get("KINFER_LOG_PATH")
        if not directory:
            return None
        label = f"$KINFER_LOG_PATH {directory}"
    else:
        path = os.fspath(log_path)
        if path.endswith(LOG_SUFFIXES):
            parent = os.path.dirname(os.path.abspath(path))
            _make_folder(parent, f"log_path {path}: its folder {parent}")
            if os.path.isdir(path):
                raise InferError(f"log_path {path} is a folder, not a log file; {LOG_PATH_TAKES}")
            return path
        directory, label = path, f"log_path {path}"
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise InferError(
            f"{label} is a file, not a folder, and not named .ndjson or .jsonl; {LOG_PATH_TAKES}"
        )
    _make_folder(directory, label)
    uuid = os.environ.get("KINFER_LOG_UUID")
    if uuid:  # a name the user chose: appended to, as kinfer does
        return os.path.join(directory, f"{uuid}.ndjson")
    return _create_stamped(directory, label)


def _create_stamped(directory: str, label: str) -> str:
    """Create ``<UTC time>.ndjson`` in ``directory``, or ``<UTC time>_1.ndjson``, ``_2``, ...
    where that is taken; the file is created exclusively, so two runners that start in the same
    second (threads, or processes sharing $KINFER_LOG_PATH) never append to one file."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for k in range(MAX_STAMP_SUFFIX + 1):
        path = os.path.join(directory, f"{stamp}.ndjson" if k == 0 else f"{stamp}_{k}.ndjson")
        try:
            os.close(os.open(path, flags, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only folder
            raise InferError(
                f"{label}: cannot create the log file {path} ({exc.strerror or exc}); {LOG_PATH_TAKES}"
            ) from None
        return path
    raise InferError(
        f"{label}: {stamp}.ndjson and {stamp}_1 ... _{MAX_STAMP_SUFFIX}.ndjson all exist; "
        "give each runner a log file of its own (a .ndjson log_path, or $KINFER_LOG_UUID)"
    )


def _make_folder(folder: str, label: str) -> None:
    up = folder
    while up and not os.path.lexists(up):  # the first part of the path that exists
        up = os.path.dirname(up) if os.path.dirname(up) != up else ""
    if up and not os.path.isdir(up):
        raise InferError(f"{label}: {up} is a file, not a folder; {LOG_PATH_TAKES}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InferError(
            f"{label}: cannot create the folder ({exc.strerror or exc}); {LOG_PATH_TAKES}"
        ) from None


class NdjsonLogger:
    """Write one NDJSON line per step from a writer thread; drop lines rather than block.

    Args:
        path: the file, opened in append mode (as kinfer does). A named pipe is opened
            without blocking: one that no process reads from is refused.
        inputs: ``(input name, size)`` of the logged inputs, in the order `record` gets them.
        num_joints: length of the action.
        capacity: lines that may wait for the writer; past it, lines are dropped.
        flush_every: lines per write and flush.
        serialize: ``"worker"`` (default) formats on the writer thread; ``"inline"``
            formats in `record` on the caller's thread (kept for measurement).
        poll_s: how often the idle writer looks for new lines.
        thread_priority: run the writer thread under ``SCHED_FIFO`` at this priority
            (Linux). A real-time control loop needs it: the writer holds the GIL while it
            formats, and if other processes preempt it then, the control thread waits.
        drain_at: lines waiting from which the writer writes even outside the quiet
            window (default a quarter of ``capacity``).

    Raises:
        InferError: ``path`` is a named pipe that no process has open for reading.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        inputs: Sequence[tuple[str, int]],
        num_joints: int,
        *,
        capacity: int = DEFAULT_CAPACITY,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        serialize: str = "worker",
        poll_s: float = 0.005,
        thread_priority: int | None = None,
        drain_at: int | None = None,
    ) -> None:
        if serialize not in ("worker", "inline"):
            raise ValueError(f"serialize must be 'worker' or 'inline', got {serialize!r}")
        if capacity < 1 or flush_every < 1:
            raise ValueError("capacity and flush_every must be at least 1")
        self.path = os.fspath(path)
        self.serialize = serialize
        self._cap, self._flush_every, self._poll = int(capacity), int(flush_every), float(poll_s)
        self._drain_at = max(1, int(capacity) // 4 if drain_at is None else int(drain_at))
        spans: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, size in inputs:
            spans[name] = (pos, pos + int(size))
            pos += int(size)
        # kinfer's keys in kinfer's order (null when the model lacks the input), then the others
        order = [*KINFER_KEYS, *(n for n, _ in inputs if n not in KINFER_KEYS)]
        self._fields: tuple[tuple[str, int, int] | tuple[str, None, None], ...] = tuple(
            (KINFER_KEYS.get(n, n), *spans[n]) if n in spans else (KINFER_KEYS[n], None, None) for n in order
        )
        self._out = (pos, pos + int(num_joints))
        self._ring = np.zeros((self._cap, pos + int(num_joints)), np.float32)
        self._ids = np.zeros((self._cap, 2), np.int64)
        self._lat = np.zeros(self._cap, np.float64)
        self._lines: list[bytes] = [b""] * self._cap
        self._head = 0  # lines handed over (control thread only writes it)
        self._tail = 0  # lines taken by the writer (writer thread only writes it)
        self.dropped = 0
        self.written = 0
        self._sent = 0  # bytes written: `close` tells a slow reader from a stalled one by it
        self._closing = False
        self._abort = False  # set by `close` when the reader stalled: the writer stops and closes its file
        # perf_counter time from which the writer leaves the GIL alone until it is moved on:
        # a control loop sets it to just before its next tick, so formatting does not delay a tick.
        self.quiet_at = math.inf
        self._wake = threading.Event()  # set by close: the idle writer need not finish its poll sleep
        self._fd = _open_log(self.path)  # closed by the writer thread, whenever it ends
        self._error: BaseException | None = None
        self._priority = thread_priority
        self._thread = threading.Thread(target=self._writer, name="kinodb-ndjson-writer", daemon=True)
        self._thread.start()

    @property
    def lines(self) -> int:
        """Lines accepted so far (written or waiting)."""
        return self._head

    @property
    def error(self) -> BaseException | None:
        """What stopped the writer (a write error, or a reader that stalled at close), or None."""
        return self._error

    def record(
        self, step_id: int, t_us: int, latency_us: float, sources: Sequence[npt.NDArray[np.float32]]
    ) -> bool:
        """Queue one step's line: ``sources`` are the logged inputs then the action (1-D each).

        Returns False when the queue was full and the line was dropped.
        """
        head = self._head
        if head - self._tail >= self._cap:
            self.dropped += 1
            return False
        k = head % self._cap
        if self.serialize == "inline":
            self._lines[k] = self._format(np.concatenate(sources), step_id, t_us, latency_us)
        else:
            np.concatenate(sources, out=self._ring[k])
            self._ids[k, 0] = step_id
            self._ids[k, 1] = t_us
            self._lat[k] = latency_us
        self._head = head + 1
        return True

    def _format(self, row: npt.NDArray[np.float32], step_id: int, t_us: int, latency_us: float) -> bytes:
        vals: list[Any] = row.tolist()
        # One sum tells whether any value is NaN or infinite (float32 values cannot overflow a
        # float64 sum); those are written as null, as kinfer's serde_json does.
        if not math.isfinite(sum(vals)):
            vals = [v if math.isfinite(v) else None for v in vals]
        rec: dict[str, Any] = {"step_id": step_id, "t_us": t_us}
        for key, a, b in self._fields:
            rec[key] = None if a is None else vals[a:b]
        rec["output"] = vals[self._out[0] : self._out[1]]
        rec["step_latency_us"] = round(latency_us, 2)
        return json.dumps(rec, separators=(",", ":"), allow_nan=False).encode() + b"\n"

    def _take(self, i: int) -> bytes:
        k = i % self._cap
        if self.serialize == "inline":
            line = self._lines[k]
            self._lines[k] = b""
            return line
        sid, tus = self._ids[k].tolist()
        return self._format(self._ring[k], sid, tus, float(self._lat[k]))

    def _writer(self) -> None:
        if self._priority is not None:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._priority))
            except (AttributeError, OSError) as exc:
                log.warning("%s: writer priority %d refused (%s)", self.path, self._priority, exc)
        try:
            self._drain()
        except _Aborted:
            pass  # `close` gave up on the reader and said so
        except BaseException as exc:  # a full disk: keep the loop running, report at close
            self._error = exc
            log.error("%s: the telemetry writer stopped: %s", self.path, exc)
        finally:
            try:
                os.close(self._fd)
            except OSError as exc:
                self._error = self._error or exc

    def _drain(self) -> None:
        """Take lines as they come: in the quiet window, or at once when too many wait or one
        has waited `MAX_QUIET_S` (ticks too long for the window); until closed."""
        batch: list[bytes] = []
        waiting_since = math.inf  # when lines began to wait with no window to take them in
        while True:
            head, tail = self._head, self._tail
            if head == tail:
                if batch:
                    self._write(batch)
                if self._closing and self._head == self._tail:
                    return
                waiting_since = math.inf
                self._wake.wait(self._poll)
                continue
            now = perf_counter()
            urgent = head - tail >= self._drain_at or now - waiting_since >= MAX_QUIET_S
            quiet = False
            for i in range(tail, head):
                if not urgent and perf_counter() >= self.quiet_at:
                    quiet = True
                    break
                batch.append(self._take(i))
                self._tail = i + 1
                if len(batch) >= self._flush_every:
                    self._write(batch)
            if not quiet:
                waiting_since = math.inf
                continue
            # not one line taken: the window was closed all along, and lines are waiting since then
            waiting_since = min(waiting_since, now) if self._tail == tail else math.inf
            self._wake.wait(QUIET_POLL_S)

    def _write(self, batch: list[bytes]) -> None:
        data = b"".join(batch)
        view, pos = memoryview(data), 0
        try:
            while pos < len(data):
                try:
                    n = os.write(self._fd, view[pos:])  # releases the GIL
                except BlockingIOError:  # a pipe whose reader is behind: wait, but not past `close`
                    if self._abort:
                        raise _Aborted from None
                    select.select([], [self._fd], [], PIPE_POLL_S)
                    continue
                pos += n
                self._sent += n
        finally:  # the whole lines that went out; a torn last line is the reader's to drop
            self.written += len(batch) if pos == len(data) else data.count(b"\n", 0, pos)
            batch.clear()

    def close(self, timeout: float = CLOSE_STALL_S) -> bool:
        """Write what is queued and close the file; give up on a reader that takes nothing.

        Waits as long as the writer makes progress; when no byte went out for ``timeout``
        seconds (a pipe nobody reads, a hung network disk), it stops waiting: the lines not written
        count as dropped and `error` says why. The writer thread is a daemon that closes its
        own file when it ends (a pipe's at once; a write blocked in the kernel, when it returns).

        Returns:
            False when it gave up; True when everything was written or failed with `error`.
        """
        self._closing = True
        self.quiet_at = math.inf
        self._wake.set()
        sent, since = self._sent, monotonic()
        while self._thread.is_alive():
            self._thread.join(min(0.05, timeout))
            if self._sent != sent:
                sent, since = self._sent, monotonic()
            elif monotonic() - since >= timeout:
                break
        if self._thread.is_alive():
            self._abort = True
            self._thread.join(4 * PIPE_POLL_S)  # a writer waiting on a pipe stops at once
            left = self._head - self.written
            self._error = self._error or InferError(
                f"{self.path}: the log's reader took no data for {timeout:g} s; {left} lines were not written"
            )
            log.warning("%s: the telemetry writer is blocked; %d lines not written", self.path, left)
            return False
        if self._error is not None:
            log.warning("%s: telemetry lines were lost: %s", self.path, self._error)
        return True

    def __enter__(self) -> NdjsonLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_log(path: str) -> int:
    """Open ``path`` for appending; a named pipe without blocking, so that one nobody reads
    cannot hang the caller (and a writer waiting on it can give up)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        is_pipe = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        is_pipe = False
    if not is_pipe:
        try:
            return os.open(path, flags, 0o666)
        except OSError as exc:  # /proc/log.ndjson, a read-only folder, a folder of that name
            raise InferError(
                f"log_path {path}: cannot open it for appending ({exc.strerror or exc}); {LOG_PATH_TAKES}"
            ) from None
    try:
        return os.open(path, flags | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # POSIX: no process has the pipe open for reading
            raise InferError(
                f"log_path {path} is a named pipe that no process reads: start its reader first "
                "(e.g. `cat PIPE > run.ndjson`), or log to a file"
            ) from None
        raise


# -- reading ------------------------------------------------------------------------------


def read_log(path: str | os.PathLike[str]) -> list[dict[str, npt.NDArray[Any]]]:
    """Read a kinfer NDJSON log into runs of columns.

    A file may hold several runs (kinfer appends); a run starts where ``step_id``
    goes back to 0. Each run maps ``step_id`` and ``t_us`` (int64), ``output`` and every
    logged input, by input name (``joint_vels`` becomes ``joint_angular_velocities``),
    to arrays with one row per line; inputs that are null throughout are left out. A
    null element inside an array is a NaN or infinite value (kinfer writes those as
    null) and reads as NaN. A torn last line (a killed writer) is dropped with a
    warning, and so is a torn line followed by the start of a new run (a killed run,
    then the next run appended to the same file). The file is read in blocks of whole
    lines, each parsed and added to growing columns, so the memory it takes is about that
    of the arrays it returns.

    Raises:
        InferError: the file is no kinfer log (its first line is not a JSON object with
            an integer ``step_id`` and ``output``: the message says what it holds and
            what a log line looks like), is not UTF-8 text (a binary file), a later line
            is not JSON (a torn line inside a run included) or lacks ``step_id``/``output``,
            a field is not numeric, changes length or becomes null mid-run, or ``step_id``
            goes back to another value than 0 (the lines of two runners that wrote to the
            file at the same time alternate: 0, 0, 1, 1, ...; they cannot be told apart);
            the message names the file and the line.
    """
    from kinodb.infer._logread import read_runs  # the reader lives in a module of its own

    return read_runs(path)
