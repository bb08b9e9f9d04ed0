"""Ingest worker processes: a pool of spawned workers, each with a pipe of its own.

`Pool` sends episode keys to workers that `_run._work` runs and yields their answers in
key order. A worker that dies (killed for memory, a crash in compiled code) ends the
ingest with one line naming it, how it died and its episode; no worker outlives it.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from kinodb.errors import ConversionError

HELD = {signal.SIGINT, signal.SIGTERM} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())
# Held while workers are spawned: the command line sends a Ctrl-C that came during an import
# again through SIGALRM, whose handler would raise it inside a spawn.
SPAWN_HELD = HELD | ({signal.SIGALRM} if hasattr(signal, "SIGALRM") else set())
"""The signals that stop an ingest: the parent's to handle, ignored by its workers."""
STOP_S = 5.0
"""How long workers get to close their sources and exit once the ingest is done, before they are killed."""
GRACE_S = 0.5
"""How long idle workers get to exit after an error or an interruption; busy ones are killed then."""
_CRASHES = dict.fromkeys(("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT"), ": a crash in compiled code")


@dataclass
class _Worker:
    """A worker process, the parent's end of its pipe, and the keys sent to it, oldest first."""

    process: BaseProcess
    conn: Connection
    keys: collections.deque[str] = field(default_factory=collections.deque)


class Pool:
    """Worker processes that convert episodes, each with a pipe of its own.

    No lock or queue is shared between workers, so a worker that dies (killed, out of
    memory, a crash in a decoder) leaves no other stuck: its pipe ends, and the parent,
    which knows what each worker converts, says which episode it died on. Workers ignore
    Ctrl-C, SIGTERM and SIGHUP (the parent handles them for the whole ingest); `stop`
    ends each one for sure, with SIGKILL where it has to, and reaps it.
    """

    def __init__(
        self, target: Callable[[Connection, Any], None], job: Any, n: int, *, path: str, workers_option: str
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # sources hold file handles that must not be forked
        self.path, self.workers_option = path, workers_option
        self.workers: list[_Worker] = []
        try:
            # Signals held: one raised mid-spawn would cut a worker's start-up data short.
            with signals_held() as holding:
                if sys.platform != "win32":
                    # Started now, it keeps SIGHUP held: SIGHUP to the process group (an ssh
                    # session dropped) would kill it, and it would complain.
                    resource_tracker.ensure_running()
                    if holding:  # it lets SIGINT and SIGTERM go once started: the workers must not
                        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
                for i in range(n):
                    ours, theirs = ctx.Pipe()
                    process = ctx.Process(
                        target=target, args=(theirs, job), name=f"kinodb-ingest-{i}", daemon=True
                    )
                    try:
                        process.start()
                    finally:
                        theirs.close()  # the worker's end lives in the worker only: its death ends the pipe
                    self.workers.append(_Worker(process, ours))
        except BaseException:
            self.stop(finished=False)
            raise

    def converted(self, keys: list[str]) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
        """The workers' answers (``target``'s: `_run._convert_one`'s) in key order, with at most two episodes per worker in flight."""
        todo = iter(keys)
        order: collections.deque[str] = collections.deque()  # sent, not yet yielded
        done: dict[str, tuple[str, dict[str, Any] | None, str | None]] = {}
        self._feed(todo, order)
        while order:
            while order[0] not in done:
                self._receive(done)
            yield done.pop(order.popleft())
            self._feed(todo, order)

    def _feed(self, todo: Iterator[str], order: collections.deque[str]) -> None:
        while len(order) < 2 * len(self.workers):
            worker = min(self.workers, key=lambda w: len(w.keys))
            key = next(todo, None)
            if key is None:
                return
            try:
                worker.conn.send(key)
            except OSError:  # its pipe has ended
                raise self._died(worker, key) from None
            worker.keys.append(key)
            order.append(key)

    def _receive(self, done: dict[str, tuple[str, dict[str, Any] | None, str | None]]) -> None:
        """Wait for a busy worker's next answer and put it in ``done``; raise what the worker raised."""
        busy = [w for w in self.workers if w.keys]
        ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        for worker in busy:
            if worker.conn in ready:
                try:
                    answer = worker.conn.recv()
                except (EOFError, OSError):  # ended, or cut short: the worker died
                    raise self._died(worker) from None
                key = worker.keys.popleft()
                if isinstance(answer, Raised):
                    answer.reraise(f"{self.path}: episode {key}: ingest worker (pid {worker.process.pid})")
                done[key] = answer
                return
        for worker in busy:  # dead, its pipe still open (a process it started holds it)
            if worker.process.sentinel in ready:
                raise self._died(worker)

    def _died(self, worker: _Worker, key: str | None = None) -> ConversionError:
        worker.process.join(STOP_S)  # its pipe has ended: it is gone, or about to be
        key = worker.keys[0] if worker.keys else key
        return ConversionError(_death(worker.process, key, self.path, self.workers_option))

    def stop(self, *, finished: bool) -> None:
        """End every worker: finished ones are asked to exit; any left after a moment are killed; all are reaped."""
        for worker in self.workers:
            if finished:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
            worker.conn.close()  # an idle worker sees the end of its pipe and exits
        try:
            deadline = time.monotonic() + (STOP_S if finished else GRACE_S)
            alive = [w.process.sentinel for w in self.workers]
            while alive and deadline > time.monotonic():
                for sentinel in multiprocessing.connection.wait(alive, deadline - time.monotonic()):
                    alive.remove(sentinel)  # type: ignore[arg-type]
        finally:  # also after a second Ctrl-C: no worker outlives the ingest
            for worker in self.workers:
                if worker.process.exitcode is None:
                    worker.process.kill()  # it ignores SIGTERM
            for worker in self.workers:
                worker.process.join()
                worker.process.close()


def _death(process: BaseProcess, key: str | None, path: str, workers_option: str) -> str:
    """The error when a worker died: which, how, and the episode it was converting."""
    code = process.exitcode
    if code is None:
        how = "it closed its pipe"
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "an unknown signal"
        why = ": out of memory?" if name == "SIGKILL" else _CRASHES.get(name, "")
        how = f"signal {-code}, {name}{why}"
    else:
        how = f"exit code {code}"
    what = f"while converting episode {key}" if key is not None else "between episodes"
    memory = f"; if memory ran out, rerun with fewer {workers_option}" if code == -signal.SIGKILL else ""
    return f"ingest worker (pid {process.pid}) died ({how}) {what} of {path}; nothing was written{memory}"


@dataclass(frozen=True, slots=True)
class Raised:
    """An exception that a worker raised, sent back: itself where it pickles, its text, its traceback."""

    error: BaseException | None
    text: str
    trace: str

    @classmethod
    def of(cls, exc: BaseException) -> Raised:
        try:
            kept: BaseException | None = pickle.loads(pickle.dumps(exc))
        except Exception:  # a plug-in's exception holding a lock, say
            kept = None
        return cls(kept, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))

    def reraise(self, where: str) -> None:
        """Raise the exception in the parent, the worker's traceback as its cause.

        Raises:
            ConversionError: for what is no `Exception` (``sys.exit`` in a plug-in source).
        """
        exc = self.error
        if not isinstance(exc, Exception):
            raise ConversionError(f"{where} raised {self.text}") from _WorkerTraceback(self.trace)
        raise exc from _WorkerTraceback(self.trace)


class _WorkerTraceback(Exception):
    """A worker's traceback, shown as the cause of the exception raised again in the parent."""

    def __str__(self) -> str:
        return f"\n'''\n{self.args[0]}'''"


@contextlib.contextmanager
def signals_held() -> Iterator[bool]:
    """Within the block, hold SIGINT, SIGTERM, SIGHUP and SIGALRM (as: whether they are
    held): worker processes are spawned there.

    A spawned worker inherits the held signals, so a Ctrl-C (or a SIGTERM or SIGHUP sent
    to the process group) that reaches it while it still imports stays pending until it
    ignores them: no worker prints a traceback, and the parent alone sees the signal,
    delivered when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield False
        return
    # The mask holds the signals in this thread only: another thread (a BLAS pool) may still
    # take one, and Python would raise it here, mid-spawn. Handlers that note them cover that
    # (where Python handles the signal: a signal left to its default action stays held).
    noted: list[tuple[int, Any]] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: noted.append((signum, frame)))
        for sig in SPAWN_HELD
        if callable(signal.getsignal(sig))
    }
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SPAWN_HELD)
    try:
        yield True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal is noted now
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in noted[:1]:  # the parent's own handler decides (raises, as a rule)
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
