"""The one error-to-exit-code table of the command-line entry points (``kino``, ``kino-serve``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from typing import Any

from kinodb.errors import (
    CorruptFileError,
    FormatError,
    KinodbError,
    QuerySyntaxError,
    UnsupportedVersionError,
)
from kinodb.ingest._run import options_named

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
EXIT_HANGUP = 129  # 128 + SIGHUP: the terminal (or the ssh session) went away
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process whose reader went away

OPTION_NAMES = {"jpeg_quality": "--compress", "images": "--no-images", "overwrite": "--force"}
"""Library parameters whose option is not ``--`` and the name with dashes, for messages."""

# The argument that names what a command writes (every writer commits atomically) ...
_WRITES = {"ingest": "output", "export": "output", "merge": "output", "upgrade": "new", "create-test": "path"}
# ... or the file it reads and then updates in place.
_UPDATES = {"stats": "path"}
# Commands that write only temporary files, removed when they end (a run killed outright leaves them).
_TEMPORARY = {"bench"}


def dispatch(
    args: argparse.Namespace,
    *,
    error_prefix: str,
    usage_prefix: str,
    usage: argparse.ArgumentParser | None = None,
) -> int:
    """Run ``args.run(args)``: 0 ok, 1 kinodb or I/O error, 2 usage error.

    Errors print as one line, except KQL errors, which keep their lines: the query with a
    caret under the offending token, then the hint. ``--debug`` adds the traceback;
    ``usage`` prints that parser's usage line before a usage error. Messages name the
    library's parameters as the options (`OPTION_NAMES`). A reader that goes away (``kino
    validate ... | head``) ends the command quietly with its own failure code, else 141;
    Ctrl-C ends it with one line and 130; SIGTERM (``timeout``, ``docker stop``, Slurm)
    ends a command that writes a file, or temporary files (``kino bench``), the same way,
    with 143, and SIGHUP (its terminal closed) with 129. Log records of level WARNING and
    above print as ``{error_prefix}warning: ...`` (``error: ...``), as warnings do.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_Prefixed("%(message)s", prefix=error_prefix))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, handlers=[handler])
    written = {path: _stat(path) for path in _outputs(args, {**_WRITES, **_UPDATES})}
    sigterm = bool(written) or getattr(args, "command", None) in _TEMPORARY
    code: int | None = None
    try:
        with options_named(OPTION_NAMES), _signals_interrupt(sigterm):
            code = int(args.run(args))
        sys.stdout.flush()  # now, not at exit: a reader gone away is then handled here
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return code if code else EXIT_BROKEN_PIPE  # the output was cut short: never a success
    except (KinodbError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = _kql_lines(exc) if isinstance(exc, QuerySyntaxError) else one_line(exc)
        if isinstance(exc, FileExistsError) and getattr(args, "force", None) is False:
            # The library's advice is for Python callers (mode='w'); the command's is --force.
            where = exc.filename or str(exc).split(" exists", 1)[0]
            message = f"{where} exists; pass --force to replace it"
        else:
            message = _with_ingest_hint(exc, message, args)
        print(f"{error_prefix}error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError as exc:
        if args.debug:
            traceback.print_exc()
        what = f"out of memory ({one_line(exc)})" if str(exc) else "out of memory"
        print(f"{error_prefix}error: {_interrupted(written, what)}; rerun with less at once (fewer "
              "episodes or frames, fewer --workers) or where more memory is free", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    except ValueError as exc:  # bad option values that argparse cannot see
        if args.debug:
            traceback.print_exc()
        if usage is not None:
            usage.print_usage(sys.stderr)
        print(f"{usage_prefix}error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            if args.debug:
                traceback.print_exc()
            how = f"terminated ({exc.signame})" if isinstance(exc, Terminated) else "interrupted"
            print(f"{usage_prefix}{_interrupted(written, how)}", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED


class _Prefixed(logging.Formatter):
    """Log lines as the command's own: ``warning: ...`` and ``error: ...`` (``kino-serve: warning: ...``)."""

    def __init__(self, fmt: str, *, prefix: str) -> None:
        super().__init__(fmt)
        self._prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            level = "warning: " if record.levelno < logging.ERROR else "error: "
            if not text.lower().startswith(level):  # a message that names its level already
                text = level + text
        return text if text.startswith(self._prefix) else self._prefix + text


def one_line(exc: BaseException) -> str:
    """An exception as one line: ``FILE: reason`` for OS errors, whitespace collapsed."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _kql_lines(exc: QuerySyntaxError) -> str:
    """A KQL error as its own lines: collapsing them would move the caret off its token."""
    return str(exc).rstrip() or type(exc).__name__


# -- Ctrl-C, SIGTERM and SIGHUP -------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the command is, so that it cleans up as after Ctrl-C.

    Attributes:
        signum: the signal's number (its exit code is 128 + that).
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = int(signum)

    @property
    def signame(self) -> str:
        """The signal's name: ``SIGTERM``, ``SIGHUP``."""
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def _signals_interrupt(sigterm: bool) -> Iterator[None]:
    """Ctrl-C, and SIGTERM and SIGHUP while a command writes a file (``sigterm``), raise
    where the command is, never where Python would swallow the exception.

    Killed outright by SIGTERM (``timeout``, ``docker stop``, Slurm) or SIGHUP (its
    terminal or ssh session closed), a writer leaves its hidden temporary output behind;
    raised, the writers' cleanup runs as on Ctrl-C. An
    exception raised in a ``__del__`` or a weakref callback (h5py and the garbage collector
    run them at any time) is printed and dropped, and the command would go on; so may one
    raised in a module import that a compiled library starts and whose failure it ignores
    (pyarrow's lazy import of pandas). There the signal is sent again a moment later
    instead, until it lands elsewhere (or `_DEFER_S` has passed). Once raised, later
    signals of the kind are ignored while the cleanup runs (SIGKILL still ends it). A
    signal whose handler the application set itself is left alone, as is everything off
    the main thread.
    """
    wanted: dict[signal.Signals, Any] = {signal.SIGINT: signal.default_int_handler}
    if sigterm:
        wanted[signal.SIGTERM] = signal.SIG_DFL
        if hasattr(signal, "SIGHUP"):  # not on Windows
            wanted[signal.SIGHUP] = signal.SIG_DFL  # under nohup it is SIG_IGN, and left so
    if threading.current_thread() is not threading.main_thread():
        wanted = {}
    ours = [sig for sig, default in wanted.items() if signal.getsignal(sig) is default]
    # A put-off signal comes back through SIGALRM: arming the timer takes no lock, where
    # starting a thread from the handler could wait on a lock the interrupted code holds.
    # Only where SIGALRM is unused (its default kills the process, so no one relies on it).
    alarm = bool(ours) and hasattr(signal, "setitimer") and signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    raised: set[int] = set()
    deferred: dict[int, float] = {}  # signal -> when it was first put off
    pending: list[int] = []  # signals put off, for SIGALRM to take up again
    again: list[threading.Timer] = []  # without SIGALRM: the latest signal to be sent again

    def on_signal(signum: int, frame: Any) -> None:
        if signum in raised:
            return
        if _swallowed(frame) and time.monotonic() - deferred.setdefault(signum, time.monotonic()) < _DEFER_S:
            if alarm:
                if signum not in pending:
                    pending.append(signum)
                signal.setitimer(signal.ITIMER_REAL, 0.005)
            else:
                again[:] = [threading.Timer(0.005, os.kill, (os.getpid(), signum))]
                again[0].start()
            return
        raised.add(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def on_alarm(_: int, frame: Any) -> None:
        signums = pending[:]
        pending.clear()  # one put off again goes back in
        for signum in signums:
            on_signal(signum, frame)

    previous = {sig: signal.signal(sig, on_signal) for sig in ours}
    if alarm:
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
        late = [sig for sig in deferred if sig not in raised]
        if late:  # the command ended before the signal was sent again: never a success
            raised.add(late[0])
            raise KeyboardInterrupt if late[0] == signal.SIGINT else Terminated(late[0])
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for timer in again:  # a signal it sends now reaches `on_signal`, not the old handler
            timer.cancel()
            timer.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_DEFER_S = 10.0
"""How long a signal waits for a finalizer or an import to end (one that hangs ends then)."""


def _swallowed(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` may be dropped: in a finalizer, or an import.

    Python prints and drops what a ``__del__`` or weakref callback raises; an import run
    from compiled code may end with its caller ignoring the error (pyarrow's lazy pandas
    import does), and an import that Python code runs is over soon anyway.
    """
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename == weakref.__file__:
            return True
        if code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _outputs(args: argparse.Namespace, table: dict[str, str]) -> list[str]:
    """The path the command of ``args`` writes, per ``table`` (none for kino-serve)."""
    name = table.get(str(getattr(args, "command", "")))
    value = getattr(args, name, None) if name else None
    return [value] if isinstance(value, str) else []


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _interrupted(written: dict[str, tuple[int, int, int] | None], how: str = "interrupted") -> str:
    """``how``, and what became of the outputs (every writer commits atomically)."""
    if not written:
        return how
    notes = []
    for path, before in written.items():
        if _stat(path) != before:
            notes.append(f"{path} was written before the interruption")
        elif before is None:
            notes.append(f"nothing was written to {path}")
        else:
            notes.append(f"{path} was left as it was")
    return f"{how}; " + "; ".join(notes)


# -- a dataset of another format where a .kdb file was expected -----------------------------


def _with_ingest_hint(exc: BaseException, message: str, args: argparse.Namespace) -> str:
    """``message``, with the ``kino ingest`` command when ``exc`` says a dataset that ingest
    reads is not a .kdb file (any command that opens a .kdb file)."""
    path = _not_a_kdb(exc, args)
    if path is None:
        return message
    hint = ingest_hint(path)
    if hint is None:
        return message
    if isinstance(exc, IsADirectoryError):
        message = f"{path}: a folder, not a .kdb file"
    return f"{message}; {hint}"


def _not_a_kdb(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The path, among the command's arguments, that ``exc`` says is not a .kdb file."""
    if isinstance(exc, (CorruptFileError, UnsupportedVersionError)):
        return None  # a .kdb file after all: the hint would mislead
    outputs = {os.path.realpath(p) for p in _outputs(args, _WRITES)}
    if isinstance(exc, IsADirectoryError):
        named = exc.filename if isinstance(exc.filename, str) else None
        inputs = [named] if named is not None and os.path.realpath(named) not in outputs else []
    elif isinstance(exc, FormatError):
        inputs = [p for p in _arguments(args) if f"{p}: not a .kdb file" in str(exc)]
    else:
        return None
    return max(inputs, key=len, default=None)


def _arguments(args: argparse.Namespace) -> set[str]:
    """Every string argument, and of ``PATH:WEIGHT`` texts the path."""
    texts: list[Any] = []
    for value in vars(args).values():
        texts.extend(value if isinstance(value, list) else [value])
    out = {t for t in texts if isinstance(t, str)}
    return out | {t.rpartition(":")[0] for t in out if ":" in t}


def ingest_hint(path: str) -> str | None:
    """``it looks like FORMAT: convert it with kino ingest ...`` when ingest reads ``path``, else None."""
    from kinodb._cli.ingest import _KINDS  # deferred: only an error needs the ingest formats
    from kinodb.ingest._base import source_class

    try:
        fmt = source_class("auto", path).format
    except Exception:  # a hint only: no error of detection (a plug-in's) replaces the real one
        return None
    what = f"{fmt} ({_KINDS[fmt]})" if fmt in _KINDS else fmt
    out = (os.path.splitext(os.path.basename(os.path.abspath(path)))[0] or "out") + ".kdb"
    if os.path.realpath(out) == os.path.realpath(path):  # an HDF5 file named x.kdb
        out = out.removesuffix(".kdb") + "_ingested.kdb"
    return f"it looks like {what}: convert it with kino ingest {shlex.quote(path)} -o {shlex.quote(out)}"
