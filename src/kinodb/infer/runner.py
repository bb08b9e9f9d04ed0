"""The fixed-rate control loop: absolute deadlines, sleep then spin, missed ticks skipped.

Each tick waits for its deadline (a sleep until ``spin_s`` before it, then a busy spin,
as kinfer's ``wait_until`` does: plain sleep wakes 0.1-0.2 ms late), reads the provider,
steps the model, hands the action to the provider, and queues a telemetry line and a
recording row. The first deadline is one period after the start. A tick that ends past
the next deadline is an overrun and the next tick runs at once; when the loop falls more
than a period behind it skips the missed ticks rather than bursting through them
(kinfer 0.6's policy). `Runner.stop` and SIGTERM wake the wait at once: a stop asked for
between ticks starts no further tick.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kinodb.infer._errors import InferError
from kinodb.infer._recording import Recording
from kinodb.infer._tickstats import TickStats
from kinodb.infer.model import Model
from kinodb.infer.providers import BoundProvider, bind_provider
from kinodb.infer.telemetry import EXTRA_INPUTS, KINFER_KEYS, NdjsonLogger, resolve_log_path

log = logging.getLogger(__name__)

_DEADLINE_SLACK = 1e-6  # of a period: k * period may round past duration_s (0.05 * 6 > 0.3)
QUIET_MARGIN_S = 1e-4  # the telemetry writer stops this long before the spin starts (one line takes ~40 us)
_MAX_SLEEP_S = 3600.0  # one wait's longest sleep (select's timeout has a range)
_SIGNAL_POLL_S = 0.1  # the longest sleep when signals cannot wake it (another part owns the wakeup fd)
STUCK_TICK_S = 1.0  # a tick running this long (or two periods) when SIGTERM comes is ended by it

# Process-wide settings the loop changes (the GIL switch interval, gc.freeze), held by
# every running Runner and put back when the last one ends: two Runners may overlap in
# threads (two arms, a simulation beside a robot).
_SETTINGS_LOCK = threading.Lock()
_settings_users = 0
_saved_switch_s = 0.0


class Runner:
    """Run a model against a provider at a fixed rate.

    Example:
        >>> runner = Runner(model, provider, rate_hz=50, duration_s=30, record_to="rollouts.kdb")
        >>> stats = runner.run()
        >>> stats["tick_lateness_us"]["p99"], stats["dropped_log_lines"]

    Args:
        model: a loaded policy.
        provider: a provider with kinodb's per-input getters or kinfer 0.6.1's
            ``get_inputs`` (see `kinodb.infer.providers`).
        rate_hz: ticks per second.
        max_steps: stop after this many steps.
        duration_s: stop when the next deadline lies past this many seconds.
        prefetch_s: call ``provider.pre_fetch_inputs(input_names)`` (or kinfer's
            ``pre_fetch_inputs(input_types, metadata)``) at the tick, then wait this long
            before reading the inputs (kinfer's ``pre_fetch_time``); 0 pre-fetches with no
            wait, as kinfer does, and None (the default) does not pre-fetch.
        log_path: NDJSON telemetry: a ``.ndjson`` file or a directory (default:
            ``$KINFER_LOG_PATH``; unset means no log).
        record_to: a ``.kdb`` file to append each run to as one episode.
        spin_s: how long before a deadline to stop sleeping and spin (default 0.5 ms, or
            one period when that is shorter).
        embodiment: episode metadata for the recording.
        task: episode metadata for the recording.
        log_capacity: telemetry lines that may wait for the disk before lines are dropped.
        realtime_priority: run the control thread under ``SCHED_FIFO`` at this priority
            (1-99; Linux, needs CAP_SYS_NICE) for the loop's duration, and the telemetry
            writer one level below (it holds the GIL while formatting). Refused privileges log a warning and the
            loop runs at normal priority (``stats["realtime"]`` says which).
        log_serialize: where telemetry lines are formatted: ``"worker"`` (the writer
            thread; measured to be the better choice, docs/infer.md) or ``"inline"``.

    Without ``max_steps`` or ``duration_s`` the loop runs until `stop`, Ctrl-C, or a
    provider whose ``done()`` returns True. SIGTERM (with its default action, on the main
    thread) stops it at once when it waits between ticks, else after the tick; a second
    SIGTERM, or one while a tick has run past `STUCK_TICK_S` (a provider blocked in a
    read), ends the tick itself. The log and recording are written, then the signal ends
    the process as it would have. Ctrl-C ends only the loop: `run` returns with
    ``stats["stopped_by"] == "interrupt"``, and a caller that runs several episodes must
    check that to stop too; a Ctrl-C while the recording is written waits for it, then is
    raised. A recording that cannot be written is kept in a spill file, and the error says
    where (`kinodb.infer.append_spill`).
    """

    def __init__(
        self,
        model: Model,
        provider: Any,
        *,
        rate_hz: float,
        max_steps: int | None = None,
        duration_s: float | None = None,
        prefetch_s: float | None = None,
        log_path: str | os.PathLike[str] | None = None,
        record_to: str | os.PathLike[str] | None = None,
        spin_s: float | None = None,
        embodiment: str = "unknown",
        task: str = "",
        log_capacity: int = 1024,
        log_serialize: str = "worker",
        realtime_priority: int | None = None,
    ) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1
        ):
            raise ValueError(f"max_steps must be an int of at least 1 (or None), got {max_steps!r}")
        if (
            isinstance(log_capacity, bool)
            or not isinstance(log_capacity, (int, np.integer))
            or log_capacity < 1
        ):
            raise ValueError(f"log_capacity must be an int of at least 1, got {log_capacity!r}")
        period = 1.0 / rate_hz
        if duration_s is not None:
            if not (math.isfinite(duration_s) and duration_s > 0):
                raise ValueError(
                    f"duration_s must be a positive finite number (omit it to run until stop), got {duration_s}"
                )
            if duration_s < period * (1 - _DEADLINE_SLACK):
                raise ValueError(
                    f"duration_s {duration_s:g} is shorter than one period ({period:g} s at {rate_hz:g} Hz): "
                    "no tick would run"
                )
        if prefetch_s is not None and not 0 <= prefetch_s < period:
            raise ValueError(f"prefetch_s must be in [0, {period:g}) (one period), got {prefetch_s}")
        if spin_s is None:  # 0.5 ms, or the whole period at rates above 2 kHz
            spin_s = min(5e-4, period)
        if not 0 <= spin_s <= period:
            raise ValueError(
                f"spin_s must be in [0, {period:g}] (one period at {rate_hz:g} Hz), got {spin_s}"
            )
        self.model, self.provider = model, provider
        self.rate_hz, self.period = float(rate_hz), period
        self.max_steps, self.duration_s, self.prefetch_s = max_steps, duration_s, prefetch_s
        self.log_path, self.record_to = log_path, record_to
        self.spin_s, self.embodiment, self.task = float(spin_s), embodiment, task
        self.log_capacity = int(log_capacity)
        if log_serialize not in ("worker", "inline"):
            raise ValueError(f"log_serialize must be 'worker' or 'inline', got {log_serialize!r}")
        self.log_serialize = log_serialize
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f"realtime_priority must be in 1..99, got {realtime_priority}")
        self.realtime_priority = realtime_priority
        self._bound: BoundProvider = bind_provider(
            model.signature, provider, pre_fetch=prefetch_s is not None
        )
        self._stop = False
        self._waker: _Waker | None = None
        self._error: BaseException | None = None
        self._error_kept = False  # the failing tick's line and step were kept
        self._signal: int | None = None
        self._tick_started: float | None = None  # perf_counter time of the tick running, if one is
        self._stuck_s = max(STUCK_TICK_S, 2 * period)  # a tick running this long at a SIGTERM is stuck
        self._finishing = False  # the loop is over: the log and the recording are being written
        self._deferred_int = False  # a Ctrl-C came while they were written
        self._summary = ""
        self._log_was_empty = True  # the NDJSON log held nothing before the run

    def stop(self) -> None:
        """Ask a running loop to end (safe from other threads): at once when it waits for its
        next tick, else after the current tick. No tick starts after it."""
        self._stop = True
        waker = self._waker
        if waker is not None:
            waker.wake()

    def run(self) -> dict[str, Any]:
        """Reset the model, run the loop, then flush the log and append the recording.

        Returns:
            stats: ``steps``, ``duration_s``, ``step_latency_us`` / ``tick_lateness_us`` /
            ``tick_work_us`` (each ``p50``, ``p99``, ``p99.9``, ``max``, ``mean``; the
            percentiles within 0.5%, docs/infer.md), ``overruns``, ``skipped_ticks``,
            ``log_path``, ``log_lines``, ``dropped_log_lines``, ``log_error``,
            ``record_to``, ``recorded_episode``, ``realtime`` and ``stopped_by``
            (``max_steps``, ``duration``, ``stop``, ``provider``, ``interrupt`` or ``signal``).

        Raises:
            InferError: the recording target cannot take the run, ``log_path`` cannot be
                written (a file of another suffix, a named pipe nobody reads), another
                writer held the recording's file past the wait, or the policy's action
                holds NaN or Inf. What the provider or the policy raises is raised too,
                after the log and the recording are written; an error writing the
                recording is raised with notes on the run and where its steps were kept.
        """
        sig = self.model.signature
        recording = Recording(self.model, self.rate_hz) if self.record_to is not None else None
        if recording is not None and self.record_to is not None:
            recording.check_target(self.record_to)  # before any action is sent, not after the run
        self.model.reset()
        self._stop = False
        self._error, self._error_kept, self._signal = None, False, None
        self._tick_started, self._finishing, self._deferred_int, self._summary = None, False, False, ""
        logged = [n for n in KINFER_KEYS if n in sig.observation_names]
        logged += [n for n in EXTRA_INPUTS if n in sig.observation_names]
        path = resolve_log_path(self.log_path)
        self._log_was_empty = path is None or _empty(path)
        waker = _Waker()
        try:
            logger = self._open_log(path, logged) if path is not None else None  # before any action is sent
        except BaseException:
            waker.close()
            raise
        ticks = TickStats()
        restore: Callable[[], None] | None = None
        untrap = _noop
        # A thread waiting for the GIL waits up to the switch interval (5 ms by default) before
        # the holder is asked to let go; with a telemetry writer, keep that well inside the spin margin.
        _hold_process_settings(None if logger is None else max(self.spin_s / 4, 2e-5))
        try:
            try:
                if self.realtime_priority is not None:
                    restore = _enter_realtime(self.realtime_priority)
                self._waker = waker
                untrap = self._trap_signals(waker)
                waker.claim_signals()
                try:
                    stopped_by, counters = self._loop(logger, logged, recording, ticks, waker)
                except _Terminated:  # a second SIGTERM just as the loop ended
                    stopped_by, counters = "signal", {"overruns": 0, "skipped_ticks": 0}
            finally:
                self._finishing = True  # from here signals wait until the log and the recording are written
                self._waker = None
                waker.close()
                if restore is not None:
                    restore()
                _release_process_settings()
                if logger is not None:
                    logger.close()
            return self._finish(ticks, stopped_by, counters, logger, path, recording, restore)
        finally:
            untrap()
            self._finishing = False
            if self._signal is not None:  # the log and the recording are safe: now end as asked
                os.kill(os.getpid(), self._signal)
            if self._deferred_int:  # the Ctrl-C that came while they were written
                interrupt = KeyboardInterrupt()
                note = self._summary or "Ctrl-C while the run's log and recording were written"
                pending = sys.exc_info()[1]  # writing them failed: where the steps are is in its text
                if not self._summary and pending is not None:
                    told = "".join(f"; {n}" for n in getattr(pending, "__notes__", ()))
                    note = f"{note}, and that failed: {pending}{told}"
                _add_note(interrupt, note)
                raise interrupt

    def _open_log(self, path: str, logged: list[str]) -> NdjsonLogger:
        sig = self.model.signature
        return NdjsonLogger(
            path,
            [(n, sig.shape(n)[0]) for n in logged],
            sig.num_joints,
            capacity=self.log_capacity,
            serialize=self.log_serialize,
            thread_priority=None if self.realtime_priority is None else max(1, self.realtime_priority - 1),
        )

    def _trap_signals(self, waker: _Waker) -> Callable[[], None]:
        """On the main thread, handle SIGTERM and Ctrl-C for the run; return what puts the
        handlers back. Only signals with their default handling are taken over.

        SIGTERM (``systemctl stop``, ``docker stop``) stops the loop: at once when it waits,
        else at the end of the tick. A second SIGTERM during a tick, or one that comes while a
        tick has run longer than `STUCK_TICK_S` (a provider blocked in a read), ends the tick
        itself: it is raised out of the call that blocks, as Ctrl-C would be, and the run ends
        with the steps before it. The log and recording are written, then the process ends
        as SIGTERM would have ended it. Ctrl-C raises `KeyboardInterrupt` during the loop as
        usual; while the log and recording are written it waits for them (a wait for another
        writer of the recording then ends at once, its steps kept in a spill file) and is
        raised once they are. The handlers take no lock: they may run while this thread
        holds any lock.
        """
        if threading.current_thread() is not threading.main_thread():
            return _noop
        restore: list[tuple[int, Any]] = []

        def on_term(signum: int, frame: Any) -> None:
            started, second = self._tick_started, self._signal is not None
            self._signal, self._stop = signum, True
            waker.wake()  # no lock: a handler may run while the thread holds any lock
            if self._finishing or started is None:
                return
            if second or time.perf_counter() - started > self._stuck_s:
                raise _Terminated(signum)

        def on_int(signum: int, frame: Any) -> None:
            if self._finishing:
                self._deferred_int = True
                return
            raise KeyboardInterrupt

        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # else the application handles it
            signal.signal(signal.SIGTERM, on_term)
            restore.append((signal.SIGTERM, signal.SIG_DFL))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_int)
            restore.append((signal.SIGINT, signal.default_int_handler))

        def untrap() -> None:
            for signum, handler in restore:
                signal.signal(signum, handler)

        return untrap

    def _give_up(self) -> bool:
        """Whether the recording should stop waiting for another writer of its file: a
        SIGTERM, or a Ctrl-C while it is written."""
        return self._deferred_int or self._signal is not None

    def _finish(
        self, ticks: TickStats, stopped_by: str, counters: dict[str, int], logger: NdjsonLogger | None,
        path: str | None, recording: Recording | None, restore: Callable[[], None] | None,
    ) -> dict[str, Any]:  # fmt: skip
        """Stats, the recording, and the error of the loop (raised with a note)."""
        summary = ticks.summary()
        stats: dict[str, Any] = {
            "steps": summary.pop("steps"),
            "rate_hz": self.rate_hz,
            **summary,
            **counters,
        }
        written = 0 if logger is None else logger.written
        stats.update(
            stopped_by="signal" if self._signal is not None else stopped_by, log_path=path,
            log_lines=written, dropped_log_lines=0 if logger is None else logger.dropped + logger.lines - written,
            log_error=None if logger is None or logger.error is None else str(logger.error),
            record_to=None if self.record_to is None else os.fspath(self.record_to), recorded_episode=None,
            realtime=restore is not None and restore is not _noop,
        )  # fmt: skip
        if stats["skipped_ticks"] or stats["overruns"]:
            achieved = stats["steps"] / stats["duration_s"] if stats["duration_s"] else 0.0
            log.warning(
                "the loop fell behind %g Hz: %d ticks overran their period and %d were skipped (%.1f Hz "
                "achieved); tick_lateness_us counts only the ticks that ran",
                self.rate_hz, stats["overruns"], stats["skipped_ticks"], achieved,
            )  # fmt: skip
        error, self._error = self._error, None
        if recording is not None and self.record_to is not None and stats["steps"]:
            try:
                stats["recorded_episode"] = recording.write(
                    self.record_to, stats, embodiment=self.embodiment, task=self.task, give_up=self._give_up
                )
            except BaseException as exc:  # the steps are in a spill file, or lost: exc's notes say which
                if error is None:
                    _add_note(exc, self._kept(stats, path, error=False))
                    raise
                told = "".join(f"; {n}" for n in getattr(exc, "__notes__", ()))
                _add_note(error, f"recording the {stats['steps']} steps before it failed too: {exc}{told}")
        self._summary = self._kept(stats, path, error=error is not None)
        if error is not None:  # the steps before it are logged and recorded; say so with the error
            _add_note(error, self._summary)
            raise error
        if stats["stopped_by"] == "interrupt":  # run returns: say what was kept, as an error's note does
            kept = self._where(stats, path)
            log.warning(
                "the run stopped on Ctrl-C after %d steps%s", stats["steps"], "".join(f"; {k}" for k in kept)
            )
        return stats

    def _kept(self, stats: dict[str, Any], path: str | None, *, error: bool) -> str:
        """The run in a line, and where its steps are: the note added to what `run` raises."""
        kept = self._where(stats, path)
        if error:
            which = f" (step {stats['steps'] - 1}, the failing one, included)" if self._error_kept else ""
        else:
            late = stats["tick_lateness_us"]["p99"]
            which = (
                f" (stopped by {stats['stopped_by']}, {stats['duration_s']:.3f} s at {self.rate_hz:g} Hz; "
                f"{stats['overruns']} overruns, {stats['skipped_ticks']} skipped ticks"
                + ("" if late is None else f", tick lateness p99 {late:.0f} us")
                + ")"
            )
        return f"the run stopped after {stats['steps']} steps{which}" + (
            f"; {'; '.join(kept)}" if kept else ""
        )

    def _where(self, stats: dict[str, Any], path: str | None) -> list[str]:
        """Where the run's steps went: the NDJSON log's lines and the recorded episode."""
        kept = []
        if path is not None:
            lines = stats["log_lines"]
            kept.append(
                f"the NDJSON log {path} holds {lines} lines"
                if self._log_was_empty
                else f"this run appended {lines} lines to the NDJSON log {path}"
            )
            if stats["log_error"] is not None:
                kept[-1] += f" ({stats['dropped_log_lines']} lost: {stats['log_error']})"
        if stats["recorded_episode"] is not None:
            kept.append(f"{self.record_to} episode {stats['recorded_episode']} holds its steps")
        elif self.record_to is not None and not stats["steps"]:
            kept.append(f"no episode was added to {self.record_to}")
        return kept

    def _wait_tick(self, deadline: float, waker: _Waker) -> float | None:
        """Sleep until ``spin_s`` before ``deadline``, then spin to it: the tick's start time,
        or None as soon as a stop is asked for (`stop` and SIGTERM wake the sleep)."""
        perf, spin = time.perf_counter, self.spin_s
        remain = deadline - perf()
        while remain > spin and not self._stop:
            waker.sleep(remain - spin)
            remain = deadline - perf()
        if self._stop:
            return None
        while perf() < deadline:
            pass
        t_tick = perf()
        return None if self._stop else t_tick  # asked for during the spin: still no tick

    def _loop(
        self, logger: NdjsonLogger | None, logged: list[str], recording: Recording | None, ticks: TickStats,
        waker: _Waker,
    ) -> tuple[str, dict[str, int]]:  # fmt: skip
        """The ticks, until a stop condition; the provider's or the policy's error is kept in
        ``self._error`` (after its tick's line and step, when the action was reached)."""
        done = getattr(self.provider, "done", None)
        views = self.model.inputs()
        sources: list[Any] = [views[n] for n in logged] + [None]  # the log line's arrays, the action last
        counters = {"overruns": 0, "skipped_ticks": 0}
        try:
            stopped_by = self._ticks(logger, sources, recording, ticks, waker, done if callable(done) else None,
                                     counters)  # fmt: skip
        except _Terminated:  # SIGTERM ended a stuck tick: the steps before it are kept
            stopped_by = "signal"
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        except (
            BaseException
        ) as exc:  # the provider or the policy failed, or sys.exit: keep what ran, then raise
            stopped_by, self._error = "error", exc
        finally:
            self._tick_started = None
        return stopped_by, counters

    def _ticks(
        self, logger: NdjsonLogger | None, sources: list[Any], recording: Recording | None, ticks: TickStats,
        waker: _Waker, done: Callable[[], Any] | None, counters: dict[str, int],
    ) -> str:  # fmt: skip
        """Run ticks until a stop condition and say which; the overruns and the skipped ticks go
        into ``counters``, also when a tick raises."""
        perf, wall = time.perf_counter, time.time_ns
        fetch, step, take = self._bound.fetch, self.model.step, self._bound.take_action
        spin, period = self.spin_s, self.period
        prefetch, prefetch_s = self._bound.pre_fetch, self.prefetch_s or 0.0
        max_steps = self.max_steps if self.max_steps is not None else sys.maxsize
        lateness, latency, work = ticks.lateness, ticks.latency, ticks.work
        overruns = skipped = steps = 0
        start = perf()
        end = start + self.duration_s + _DEADLINE_SLACK * period if self.duration_s is not None else math.inf
        last_tick = int((end - start) // period) if math.isfinite(end) else sys.maxsize  # the schedule's last
        tick = 1  # deadlines are start + tick * period: no rounding error builds up
        deadline = start + period
        quiet_margin = spin + QUIET_MARGIN_S
        if logger is not None:
            logger.quiet_at = deadline - quiet_margin
        try:
            while True:
                t_tick = self._wait_tick(deadline, waker)
                if t_tick is None:  # asked to stop while waiting or spinning: no further tick
                    return "stop"
                self._tick_started = t_tick
                if prefetch is not None:
                    prefetch()
                    _wait(t_tick + prefetch_s, spin)
                obs = fetch()
                t0 = perf()
                action = step(obs)
                t1 = perf()
                t_us = wall() // 1000  # kinfer's t_us: the wall clock after inference, before the send
                failure: BaseException | None = None
                if not np.isfinite(action).all():  # never sent to the robot
                    failure = _nonfinite(steps, obs)
                else:
                    try:
                        take(action)
                    except BaseException as exc:  # logged and recorded below, as kinfer logs in step()
                        failure = exc
                if logger is not None:
                    sources[-1] = action
                    logger.record(steps, t_us, (t1 - t0) * 1e6, sources)
                if recording is not None:
                    recording.add(action, t_tick - start, t_tick - deadline, t1 - t0)
                steps += 1
                t_end = perf()
                lateness.add(t_tick - deadline)
                latency.add(t1 - t0)
                work.add(t_end - t_tick)
                ticks.last_end = t_end - start
                self._tick_started = None
                if failure is not None:
                    self._error_kept = True
                    raise failure
                tick += 1
                deadline = start + tick * period
                if t_end > deadline:
                    overruns += 1
                if steps >= max_steps:
                    return "max_steps"
                behind = t_end - deadline
                if behind > period:  # more than a period behind: skip, do not burst
                    missed = int(behind // period) + 1
                    skipped += max(0, min(missed, last_tick - tick + 1))  # not the deadlines past the end
                    tick += missed
                    deadline = start + tick * period
                if logger is not None:
                    logger.quiet_at = deadline - quiet_margin
                if deadline > end:
                    return "duration"
                if self._stop:
                    return "stop"
                if done is not None and done():
                    return "provider"
        finally:  # the counts so far, however the loop ends
            counters["overruns"], counters["skipped_ticks"] = overruns, skipped


class _Terminated(BaseException):
    """Raised by the SIGTERM handler out of a tick that SIGTERM ends (a second SIGTERM, or a
    stuck tick); caught by the loop, never seen by the caller."""


class _Waker:
    """What the loop's wait sleeps on: `wake` (from `Runner.stop` on any thread, or from a
    signal handler: it takes no lock) ends the sleep at once."""

    def __init__(self) -> None:
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)
        self.max_sleep = _MAX_SLEEP_S
        self._claimed = False

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed (the run ended)
            self._send.send(b"\0")

    def sleep(self, seconds: float) -> None:
        ready, _, _ = select.select((self._recv,), (), (), min(seconds, self.max_sleep))
        if ready:  # a stop, or a signal: drain, so that a stray signal does not wake every sleep
            with contextlib.suppress(OSError):
                while self._recv.recv(4096):
                    pass

    def claim_signals(self) -> None:
        """On the main thread, make every signal with a Python handler (SIGTERM, Ctrl-C) wake
        the sleep: the process may deliver it to another thread, and then the sleep would not
        be interrupted and the handler would not run until it ended. Where another part of the
        program has the wakeup fd (an event loop), sleep in short slices instead."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals are handled by the main thread, which this loop does not block
        try:
            previous = signal.set_wakeup_fd(self._send.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            self.max_sleep = _SIGNAL_POLL_S
            return
        if previous != -1:
            signal.set_wakeup_fd(previous)
            self.max_sleep = _SIGNAL_POLL_S
            return
        self._claimed = True

    def close(self) -> None:
        if self._claimed:
            signal.set_wakeup_fd(-1)
            self._claimed = False
        self._send.close()
        self._recv.close()


def _hold_process_settings(switch_s: float | None) -> None:
    """Freeze the GC (and lower the GIL switch interval to ``switch_s``) for a running loop."""
    global _settings_users, _saved_switch_s
    with _SETTINGS_LOCK:
        if _settings_users == 0:
            _saved_switch_s = sys.getswitchinterval()
            gc.collect()
        _settings_users += 1
        if switch_s is not None:
            sys.setswitchinterval(min(sys.getswitchinterval(), switch_s))
        gc.freeze()  # what exists now is never scanned again: young collections stay short


def _release_process_settings() -> None:
    """Undo `_hold_process_settings` when the last running loop ends."""
    global _settings_users
    with _SETTINGS_LOCK:
        _settings_users -= 1
        if _settings_users == 0:
            gc.unfreeze()
            sys.setswitchinterval(_saved_switch_s)


def _noop() -> None:
    pass


def _empty(path: str) -> bool:
    """Whether the log at ``path`` holds nothing yet (or does not exist)."""
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return True


def _nonfinite(step: int, obs: Mapping[str, Any]) -> InferError:
    with np.errstate(over="ignore"):  # as the policy saw them: float32 (1e39 is inf there)
        bad = [name for name, value in obs.items() if not np.isfinite(np.asarray(value, np.float32)).all()]
    why = f"the observations {bad} hold NaN or Inf" if bad else "the observations were all finite"
    return InferError(
        f"step {step}: the policy's action holds NaN or Inf ({why}); it was not sent to the robot. "
        "Check the provider's values, or the policy for a division by zero"
    )


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where Python has it (3.11+); older ones keep the error as is."""
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)


def _enter_realtime(priority: int) -> Callable[[], None]:
    """Put the calling thread under SCHED_FIFO; return what restores its policy."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as exc:  # not Linux, or no CAP_SYS_NICE
        log.warning("realtime priority %d refused (%s); running at normal priority", priority, exc)
        return _noop

    def restore() -> None:
        os.sched_setscheduler(0, policy, param)

    return restore


def _wait(deadline: float, spin: float) -> None:
    remain = deadline - time.perf_counter()
    if remain > spin:
        time.sleep(remain - spin)
    while time.perf_counter() < deadline:
        pass
