"""The fixed-rate control loop: absolute deadlines, sleep then spin, missed ticks skipped.

Each tick waits for its deadline (``time.sleep`` until ``spin_s`` before it, then a busy
spin, as kinfer's ``wait_until`` does: plain sleep wakes 0.1-0.2 ms late), reads the
provider, steps the model, hands the action to the provider, and queues a telemetry
line and a recording row. The first deadline is one period after the start. A tick that
ends past the next deadline is an overrun and the next tick runs at once; when the loop
falls more than a period behind it skips the missed ticks rather than bursting through
them (kinfer 0.6's policy).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer._package import output_folder
from kinodb.infer.model import Model
from kinodb.infer.providers import BoundProvider, bind_provider
from kinodb.infer.telemetry import EXTRA_INPUTS, KINFER_KEYS, NdjsonLogger, resolve_log_path

log = logging.getLogger(__name__)

_DEADLINE_SLACK = 1e-6  # of a period: k * period may round past duration_s (0.05 * 6 > 0.3)
QUIET_MARGIN_S = 1e-4  # the telemetry writer stops this long before the spin starts (one line takes ~40 us)
STATE_INPUTS = (
    "joint_angles",
    "joint_angular_velocities",
)  # recorded as ``states``; the rest as extra arrays


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
            before reading the inputs (kinfer's ``pre_fetch_time``).
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
    thread) stops it after the tick; the log and recording are written, then the signal
    ends the process as it would have.
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
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
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
        self._bound: BoundProvider = bind_provider(model.signature, provider, pre_fetch=bool(prefetch_s))
        self._stop = False

    def stop(self) -> None:
        """Ask a running loop to end after the current tick (safe from other threads)."""
        self._stop = True

    def run(self) -> dict[str, Any]:
        """Reset the model, run the loop, then flush the log and append the recording.

        Returns:
            stats: ``steps``, ``duration_s``, ``step_latency_us`` / ``tick_lateness_us`` /
            ``tick_work_us`` (each ``p50``, ``p99``, ``p99.9``, ``max``, ``mean``), ``overruns``,
            ``skipped_ticks``, ``log_path``, ``log_lines``, ``dropped_log_lines``,
            ``record_to``, ``recorded_episode``, ``realtime`` and ``stopped_by``.
        """
        sig = self.model.signature
        recording = _Recording(self.model, self.rate_hz) if self.record_to is not None else None
        if recording is not None and self.record_to is not None:
            recording.check_target(self.record_to)  # before any action is sent, not after the run
        self.model.reset()
        self._stop = False
        self._error: BaseException | None = None
        self._signal: int | None = None
        logged = [n for n in KINFER_KEYS if n in sig.observation_names]
        logged += [n for n in EXTRA_INPUTS if n in sig.observation_names]
        path = resolve_log_path(self.log_path)
        logger = (
            NdjsonLogger(
                path,
                [(n, sig.shape(n)[0]) for n in logged],
                sig.num_joints,
                capacity=self.log_capacity,
                serialize=self.log_serialize,
                thread_priority=None
                if self.realtime_priority is None
                else max(1, self.realtime_priority - 1),
            )
            if path is not None
            else None
        )
        old_switch = sys.getswitchinterval()
        if logger is not None:
            # A thread waiting for the GIL waits up to the switch interval (5 ms by default)
            # before the holder is asked to let go; keep that well inside the spin margin.
            sys.setswitchinterval(min(old_switch, max(self.spin_s / 4, 2e-5)))
        gc.collect()
        gc.freeze()  # what exists now is never scanned again: young collections stay short
        restore = _enter_realtime(self.realtime_priority) if self.realtime_priority is not None else None
        untrap = self._trap_sigterm()
        try:
            try:
                times, stopped_by, counters = self._loop(logger, logged, recording)
            finally:
                if restore is not None:
                    restore()
                gc.unfreeze()
                sys.setswitchinterval(old_switch)
                if logger is not None:
                    logger.close()
            return self._finish(times, stopped_by, counters, logger, path, recording, restore)
        finally:
            untrap()
            if self._signal is not None:  # the log and the recording are safe: now end as asked
                os.kill(os.getpid(), self._signal)

    def _trap_sigterm(self) -> Callable[[], None]:
        """Turn SIGTERM (``systemctl stop``, ``docker stop``) into a stop at the end of the
        tick, so the log and recording are written before the process ends as it would have.
        Only where SIGTERM has its default action and this is the main thread; returns what
        puts the default back."""
        if threading.current_thread() is not threading.main_thread():
            return _noop
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return _noop  # the application handles SIGTERM itself

        def handler(signum: int, frame: Any) -> None:
            self._signal, self._stop = signum, True

        signal.signal(signal.SIGTERM, handler)

        def untrap() -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

        return untrap

    def _finish(
        self, times: npt.NDArray[np.float64], stopped_by: str, counters: dict[str, int],
        logger: NdjsonLogger | None, path: str | None, recording: _Recording | None,
        restore: Callable[[], None] | None,
    ) -> dict[str, Any]:  # fmt: skip
        """Stats, the recording, and the error of the loop (raised with a note)."""
        stats = _stats(times, counters, self.rate_hz)
        written = 0 if logger is None else logger.written
        stats.update(
            stopped_by="signal" if self._signal is not None else stopped_by, log_path=path,
            log_lines=written, dropped_log_lines=0 if logger is None else logger.dropped + logger.lines - written,
            log_error=None if logger is None or logger._error is None else str(logger._error),
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
                    self.record_to,
                    times,
                    stats,
                    embodiment=self.embodiment,
                    task=self.task,
                )
            except Exception as exc:
                if error is None:
                    raise
                _add_note(error, f"recording the {stats['steps']} steps before it failed too: {exc}")
        if error is not None:  # the steps before it are logged and recorded; say so with the error
            kept = [f"the NDJSON log {path} holds {stats['log_lines']} lines"] if path is not None else []
            if stats["log_error"] is not None:
                kept[-1] += f" ({stats['dropped_log_lines']} lost: {stats['log_error']})"
            if stats["recorded_episode"] is not None:
                kept.append(f"{self.record_to} episode {stats['recorded_episode']} holds its steps")
            _add_note(
                error,
                f"the run stopped after {stats['steps']} steps" + (f"; {'; '.join(kept)}" if kept else ""),
            )
            raise error
        return stats

    def _loop(
        self, logger: NdjsonLogger | None, logged: list[str], recording: _Recording | None
    ) -> tuple[npt.NDArray[np.float64], str, dict[str, int]]:
        model = self.model
        perf, sleep, wall = time.perf_counter, time.sleep, time.time_ns
        fetch, step, take = self._bound.fetch, model.step, self._bound.take_action
        spin, period = self.spin_s, self.period
        done = getattr(self.provider, "done", None)
        done = done if callable(done) else None
        prefetch, prefetch_s = self._bound.pre_fetch, self.prefetch_s or 0.0
        views = model.inputs()
        sources: list[Any] = [views[n] for n in logged] + [None]
        max_steps = self.max_steps if self.max_steps is not None else sys.maxsize
        rows: list[tuple[float, float, float, float]] = []  # tick time, lateness, latency, work
        obs: Mapping[str, Any] = {}
        overruns = skipped = 0
        stopped_by = "max_steps"
        start = perf()
        end = start + self.duration_s + _DEADLINE_SLACK * period if self.duration_s is not None else math.inf
        tick = 1  # deadlines are start + tick * period: no rounding error builds up
        deadline = start + period
        quiet_margin = spin + QUIET_MARGIN_S
        if logger is not None:
            logger.quiet_at = deadline - quiet_margin
        try:
            while True:
                remain = deadline - perf()
                if remain > spin:
                    sleep(remain - spin)
                while perf() < deadline:
                    pass
                t_tick = perf()
                if prefetch is not None:
                    prefetch()
                    _wait(t_tick + prefetch_s, spin)
                obs = fetch()
                t0 = perf()
                action = step(obs)
                t1 = perf()
                t_us = wall() // 1000  # kinfer's t_us: the wall clock after inference, before the send
                if not np.isfinite(action).all():  # never sent to the robot
                    raise _nonfinite(len(rows), obs)
                take(action)
                if logger is not None:
                    sources[-1] = action
                    logger.record(len(rows), t_us, (t1 - t0) * 1e6, sources)
                if recording is not None:
                    recording.add(len(rows), action)
                t_end = perf()
                rows.append((t_tick - start, t_tick - deadline, t1 - t0, t_end - t_tick))
                tick += 1
                deadline = start + tick * period
                if t_end > deadline:
                    overruns += 1
                    behind = t_end - deadline
                    if behind > period:  # more than a period behind: skip, do not burst
                        missed = int(behind // period) + 1
                        tick += missed
                        deadline = start + tick * period
                        skipped += missed
                if logger is not None:
                    logger.quiet_at = deadline - quiet_margin
                if len(rows) >= max_steps:
                    break
                if deadline > end:
                    stopped_by = "duration"
                    break
                if self._stop:
                    stopped_by = "stop"
                    break
                if done is not None and done():
                    stopped_by = "provider"
                    break
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        except (
            BaseException
        ) as exc:  # the provider or the policy failed, or sys.exit: keep what ran, then raise
            stopped_by, self._error = "error", exc
        times = np.array(rows, np.float64).reshape(-1, 4)
        return times, stopped_by, {"overruns": overruns, "skipped_ticks": skipped}


def _noop() -> None:
    pass


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


def _summary(values_s: npt.NDArray[np.float64]) -> dict[str, float | None]:
    if not len(values_s):
        return {"p50": None, "p99": None, "p99.9": None, "max": None, "mean": None}
    us = values_s * 1e6
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return {
        "p50": float(p50),
        "p99": float(p99),
        "p99.9": float(p999),
        "max": float(us.max()),
        "mean": float(us.mean()),
    }


def _stats(times: npt.NDArray[np.float64], counters: dict[str, int], rate_hz: float) -> dict[str, Any]:
    return {
        "steps": len(times),
        "rate_hz": rate_hz,
        "duration_s": float(times[-1, 0] + times[-1, 3]) if len(times) else 0.0,
        "step_latency_us": _summary(times[:, 2]),
        "tick_lateness_us": _summary(times[:, 1]),
        "tick_work_us": _summary(times[:, 3]),
        **counters,
    }


class _Recording:
    """Rows of observations and actions kept in preallocated, doubling arrays."""

    def __init__(self, model: Model, rate_hz: float) -> None:
        sig = model.signature
        self._model = model
        self._names = list(sig.observation_names)
        self._views = model.inputs()
        cap = 1024
        self._obs = {n: np.zeros((cap, *sig.shape(n)), np.float32) for n in self._names}
        self._act = np.zeros((cap, sig.num_joints), np.float32)
        self.rate_hz = rate_hz

    def add(self, i: int, action: npt.NDArray[np.float32]) -> None:
        if i >= len(self._act):
            self._grow()
        for n in self._names:
            self._obs[n][i] = self._views[n]
        self._act[i] = action

    def _grow(self) -> None:
        cap = 2 * len(self._act)
        self._act = np.concatenate([self._act, np.zeros_like(self._act)])[:cap]
        self._obs = {n: np.concatenate([a, np.zeros_like(a)])[:cap] for n, a in self._obs.items()}

    def schema(self) -> dict[str, Any]:
        """The schema the episode is written with: joint names, and the state components."""
        sig = self._model.signature
        comps, names, pos = {}, [], 0
        for n in [n for n in STATE_INPUTS if n in self._names]:
            comps[n] = [pos, pos + sig.num_joints]
            names += [f"{n}.{j}" for j in sig.joint_names]
            pos += sig.num_joints
        schema: dict[str, Any] = {"actions": {"names": list(sig.joint_names)}}
        if comps:
            schema["states"] = {"components": comps, "names": names}
        return schema

    def check_target(self, path: str | os.PathLike[str]) -> None:
        """Refuse, before the run, a ``record_to`` that cannot take this run's episode: a
        folder, a missing or read-only folder, or a file whose episodes have other dims,
        joint names, state components or extra arrays."""
        where = os.fspath(path)
        folder = output_folder(where, "record_to ", "a .kdb file")
        if not os.access(folder, os.W_OK):
            raise InferError(f"record_to {where}: cannot write in {folder} (permission denied)")
        if not os.path.exists(where):
            return
        from kinodb.kdb.reader import open_database  # deferred: recording is optional

        with open_database(where) as db:
            version, stored, table = db.version(), db.schema(), db.episodes()
        if version != "1.0":
            raise InferError(
                f"record_to {where} is a format {version} file and cannot be appended to; record to a new "
                f"file, or convert it first: kino upgrade {where} NEW.kdb"
            )
        sig = self._model.signature
        states = sum(n in self._names for n in STATE_INPUTS) * sig.num_joints
        for part, column, dim in (("actions", "action_dim", sig.num_joints), ("states", "state_dim", states)):
            dims = sorted(set(table[column].tolist()))
            if dims and dims != [dim]:
                raise InferError(
                    f"record_to {where} holds episodes whose {part} have dim {', '.join(map(str, dims))}, "
                    f"not this policy's {dim}: record this policy to a new file"
                )
        for part, spec in self.schema().items():
            for key, value in spec.items():
                have = stored.get(part, {}).get(key)
                if have is not None and have != value:
                    raise InferError(
                        f"record_to {where} holds episodes whose {part} {key} are {have!r}, not this "
                        f"policy's {value!r}: record this policy to a new file"
                    )
        arrays = {n: list(sig.shape(n)) for n in self._names if n not in STATE_INPUTS}
        arrays.update(step_latency_us=[], tick_lateness_us=[])
        for name, shape in arrays.items():
            have = stored.get("arrays", {}).get(name, {}).get("shape")
            if have is not None and list(have) != shape:
                raise InferError(
                    f"record_to {where} holds episodes whose {name} array has shape {tuple(have)} per step, "
                    f"not this policy's {tuple(shape)}: record this policy to a new file"
                )

    def write(
        self, path: str | os.PathLike[str], times: npt.NDArray[np.float64], stats: dict[str, Any], *,
        embodiment: str, task: str,
    ) -> int:  # fmt: skip
        """Append the run as one episode; return its index in the file."""
        from kinodb.kdb.writer import Writer  # deferred: recording is optional

        T = len(times)
        state_parts = [n for n in STATE_INPUTS if n in self._names]
        schema = self.schema()
        states = np.concatenate([self._obs[n][:T] for n in state_parts], axis=1) if state_parts else None
        extra_arrays = {n: self._obs[n][:T] for n in self._names if n not in state_parts}
        extra_arrays["step_latency_us"] = (times[:, 2] * 1e6).astype(np.float32)
        extra_arrays["tick_lateness_us"] = (times[:, 1] * 1e6).astype(np.float32)
        sig = self._model.signature
        extra = {
            "source": "kinodb.infer", "policy": os.path.basename(self._model.path),
            "kinfer_generation": sig.generation, "rate_hz": self.rate_hz, "overruns": stats["overruns"],
            "skipped_ticks": stats["skipped_ticks"], "dropped_log_lines": stats["dropped_log_lines"],
            "command_names": list(sig.command_names),
        }  # fmt: skip
        with Writer(path, mode="a", image_codec="raw", schema=schema) as w:
            return w.add_episode(
                actions=self._act[:T], states=states, timestamps=times[:, 0].copy(), extra_arrays=extra_arrays,
                embodiment=embodiment, task=task, fps=self.rate_hz, extra=extra,
            )  # fmt: skip
