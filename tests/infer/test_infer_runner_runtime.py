"""Runner's runtime: long ticks keep their log, bounded memory, stops between ticks, shared
process settings, the failing tick kept, skipped ticks within the schedule."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage

import kinodb
from kinodb.infer import CallableProvider, InferError, Runner, _recording, load_model, read_log
from kinodb.infer._recording import Recording
from kinodb.infer._tickstats import Histogram


def _provider(
    built: Built,
    *,
    on_action: Callable[[int, np.ndarray], None] | None = None,
    slow_s: float = 0.0,
    seed: int = 0,
) -> tuple[CallableProvider, list[np.ndarray]]:
    """Fixed random observations (nothing kept per tick but the actions, when asked); the
    joint-angle read blocks ``slow_s`` (a sensor read: the GIL is released, the CPU idle)."""
    obs = built.random_obs(np.random.default_rng(seed))
    actions: list[np.ndarray] = []

    def getter(name: str) -> Any:
        def get(*_: Any) -> np.ndarray:
            if slow_s and name == "joint_angles":
                time.sleep(slow_s)
            return obs[name]

        return get

    def take(names: Any, action: np.ndarray) -> None:
        actions.append(action)
        if on_action is not None:
            on_action(len(actions), action)

    getters = {n: getter(n) for n in built.order if n != "carry"}
    return CallableProvider(**getters, take_action=take), actions


def _constant(value: np.ndarray) -> Callable[..., np.ndarray]:
    return lambda *_: value


def test_a_loop_whose_ticks_leave_no_quiet_window_keeps_its_log(
    make_package: MakePackage, tmp_path: Path
) -> None:
    # Each tick blocks 16 ms in a sensor read at 50 Hz with a 5 ms spin: it ends after the
    # writer's quiet window closed (deadline - spin - 0.1 ms), so no window ever opens.
    built = make_package()
    provider, _ = _provider(built, slow_s=0.016)
    log = tmp_path / "long.ndjson"
    stats = Runner(load_model(built.path), provider, rate_hz=50, max_steps=60, spin_s=0.005, log_path=log,
                   log_capacity=16).run()  # fmt: skip
    assert stats["steps"] == 60
    assert (stats["log_lines"], stats["dropped_log_lines"], stats["log_error"]) == (60, 0, None)
    assert [json.loads(line)["step_id"] for line in log.read_text().splitlines()] == list(range(60))


def test_recording_grows_by_chunks_and_never_moves_what_it_holds(
    make_package: MakePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_recording, "CHUNK_ROWS", 8)
    built = make_package()
    model = load_model(built.path)
    rec = Recording(model, 100.0)
    rng = np.random.default_rng(7)
    feeds = [built.random_obs(rng) for _ in range(27)]
    first_chunk = None
    for k, feed in enumerate(feeds):
        action = model.step(feed)
        rec.add(action, k / 100, 1e-6, 2e-5)
        if first_chunk is None:
            first_chunk = rec._rows[0]
    assert first_chunk is not None
    assert len(rec._rows) == 4 and rec._rows[0] is first_chunk  # 8 + 8 + 8 + 3 rows; the first never copied
    assert all(len(chunk) == 8 for chunk in rec._rows)
    rows, times = rec._joined()
    assert rows.shape[0] == 27 and times.shape == (27, 3)
    np.testing.assert_array_equal(times[:, 0], np.arange(27) / 100)
    a, b = rec._spans["gyroscope"]
    np.testing.assert_array_equal(rows[:, a:b], np.array([f["gyroscope"] for f in feeds]))


def test_a_recording_across_chunks_is_the_run(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_recording, "CHUNK_ROWS", 8)
    built = make_package()
    model = load_model(built.path)
    served: list[dict[str, np.ndarray]] = []
    rng = np.random.default_rng(3)
    current: dict[str, np.ndarray] = {}

    def getter(name: str) -> Any:
        def get(*_: Any) -> np.ndarray:
            if not current:
                current.update(built.random_obs(rng))
                served.append(dict(current))
            return current[name]

        return get

    actions: list[np.ndarray] = []

    def take(names: Any, action: np.ndarray) -> None:
        actions.append(action)
        current.clear()

    provider = CallableProvider(**{n: getter(n) for n in built.order if n != "carry"}, take_action=take)
    chunks: list[np.ndarray] = []
    new_chunk = Recording._new_chunk

    def spy(self: Recording) -> None:
        new_chunk(self)
        chunks.append(self._rows[-1])

    monkeypatch.setattr(Recording, "_new_chunk", spy)
    out = tmp_path / "chunks.kdb"
    stats = Runner(model, provider, rate_hz=2000, max_steps=30, record_to=out).run()
    assert stats["recorded_episode"] == 0
    assert len(chunks) == 4 and len({id(c) for c in chunks}) == 4  # 8 + 8 + 8 + 6 steps, none copied
    with kinodb.open(out) as db:
        ep = db.read_episode(0)
    assert ep["meta"]["num_frames"] == 30
    np.testing.assert_array_equal(ep["actions"], np.array(actions))
    want = np.array([np.concatenate([s["joint_angles"], s["joint_angular_velocities"]]) for s in served])
    np.testing.assert_array_equal(ep["states"], want)
    for name in ("projected_gravity", "accelerometer", "gyroscope", "command", "time"):
        np.testing.assert_array_equal(ep[name], np.array([s[name] for s in served]), err_msg=name)
    assert ep["step_latency_us"].shape == (30,) and (np.diff(ep["timestamps"]) > 0).all()


def test_memory_does_not_grow_with_the_ticks(make_package: MakePackage) -> None:
    built = make_package()
    obs = built.random_obs(np.random.default_rng(0))
    traced: dict[int, int] = {}
    taken = [0]

    def take(names: Any, action: np.ndarray) -> None:  # keeps nothing: only the loop could grow
        taken[0] += 1
        if taken[0] in (1000, 5000):
            traced[taken[0]] = tracemalloc.get_traced_memory()[0]

    provider = CallableProvider(**{n: _constant(v) for n, v in obs.items()}, take_action=take)
    tracemalloc.start()
    try:
        stats = Runner(load_model(built.path), provider, rate_hz=5000, max_steps=5000).run()
    finally:
        tracemalloc.stop()
    assert stats["steps"] == 5000 and set(traced) == {1000, 5000}
    # a row kept per tick for the percentiles costs ~170 B: 4,000 ticks would add ~0.7 MB
    assert traced[5000] - traced[1000] < 64_000, traced


def test_tick_percentiles_are_within_half_a_percent() -> None:
    rng = np.random.default_rng(11)
    samples = [
        rng.lognormal(np.log(80e-6), 0.6, 20_000),  # step latencies around 80 us
        np.concatenate([rng.exponential(2e-6, 9_000), rng.uniform(1e-4, 5e-3, 100)]),  # lateness, a tail
        np.array([0.0, 0.0, 3e-10, 4e-5]),  # below 1 ns
        np.array([0.25]),
    ]
    for values in samples:
        hist = Histogram()
        for v in values:
            hist.add(float(v))
        got = hist.summary_us()
        assert got["max"] == pytest.approx(values.max() * 1e6, rel=1e-12)
        assert got["mean"] == pytest.approx(values.mean() * 1e6, rel=1e-9)
        for key, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9)):
            exact = float(np.percentile(values, q)) * 1e6
            value = got[key]
            assert value is not None and abs(value - exact) <= max(0.005 * exact, 1e-3), (key, value, exact)
    empty = Histogram().summary_us()
    assert empty == {"p50": None, "p99": None, "p99.9": None, "max": None, "mean": None}


def test_stop_while_waiting_for_the_next_tick_starts_no_tick(make_package: MakePackage) -> None:
    built = make_package()
    holder: dict[str, Runner] = {}

    def stop_soon(n: int, action: np.ndarray) -> None:
        if n == 1:  # the next deadline is a second away: the stop lands in the wait
            threading.Timer(0.1, holder["runner"].stop).start()

    provider, actions = _provider(built, on_action=stop_soon)
    holder["runner"] = Runner(load_model(built.path), provider, rate_hz=1, max_steps=10)
    stats = holder["runner"].run()
    assert stats["stopped_by"] == "stop" and stats["steps"] == 1 and len(actions) == 1
    if threading.current_thread() is threading.main_thread():  # the signal wake-up is handed back
        assert signal.set_wakeup_fd(-1) == -1
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="needs POSIX signals")
def test_sigterm_ends_kino_infer_bench_waiting_for_a_far_deadline(make_package: MakePackage) -> None:
    built = make_package()
    script = f"""
import signal, sys, threading, time
from kinodb._cli.main import main

def watch():  # say when the loop has taken SIGTERM over
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        time.sleep(0.01)
    print("trapped", flush=True)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(["infer", "bench", {str(built.path)!r}, "--steps", "10", "--rate", "1e-9", "--seconds", "1e9"]))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "trapped"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == -signal.SIGTERM, proc.stderr.read() if proc.stderr else ""


def test_overlapping_runners_keep_the_process_settings_until_the_last_ends(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    switch0, frozen0 = sys.getswitchinterval(), gc.get_freeze_count()
    a_started, b_started, a_ended, b_after_a = (threading.Event() for _ in range(4))
    seen: dict[str, Any] = {}

    def on_a(n: int, action: np.ndarray) -> None:
        a_started.set()

    def on_b(n: int, action: np.ndarray) -> None:
        b_started.set()
        if a_ended.is_set() and not b_after_a.is_set():  # A is over; B still runs
            seen.update(frozen=gc.get_freeze_count(), switch=sys.getswitchinterval())
            b_after_a.set()

    pa, _ = _provider(built, on_action=on_a)
    pb, _ = _provider(built, on_action=on_b)
    ra = Runner(load_model(built.path), pa, rate_hz=200, log_path=tmp_path / "a.ndjson")
    rb = Runner(load_model(built.path), pb, rate_hz=200, log_path=tmp_path / "b.ndjson")
    results: dict[str, dict[str, Any]] = {}
    ta = threading.Thread(target=lambda: results.update(a=ra.run()))
    tb = threading.Thread(target=lambda: results.update(b=rb.run()))
    ta.start()
    assert a_started.wait(30)
    lowered = sys.getswitchinterval()
    tb.start()
    assert b_started.wait(30)
    ra.stop()
    ta.join(30)
    a_ended.set()
    assert b_after_a.wait(30)
    rb.stop()
    tb.join(30)
    assert not ta.is_alive() and not tb.is_alive()
    assert results["a"]["stopped_by"] == results["b"]["stopped_by"] == "stop"
    assert lowered < switch0  # a loop with a log lowers it
    assert seen["frozen"] > 0 and seen["switch"] == lowered  # A's end left B's settings alone
    assert sys.getswitchinterval() == switch0 and gc.get_freeze_count() == frozen0


def test_the_tick_whose_action_fails_is_logged_and_recorded(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    model = load_model(built.path)

    def fail(n: int, action: np.ndarray) -> None:
        if n == 5:
            raise OSError("CAN bus write timeout")

    provider, actions = _provider(built, on_action=fail)
    log, out = tmp_path / "fail.ndjson", tmp_path / "fail.kdb"
    with pytest.raises(OSError, match="CAN bus write timeout"):
        Runner(model, provider, rate_hz=500, max_steps=50, log_path=log, record_to=out).run()
    run = read_log(log)[0]
    assert run["step_id"].tolist() == [0, 1, 2, 3, 4]  # step 4's line, as kinfer writes it in step()
    np.testing.assert_array_equal(run["output"], np.array(actions))
    with kinodb.open(out) as db:
        assert db.read_meta(0)["num_frames"] == 5
        np.testing.assert_array_equal(db.read_array(0, "actions"), np.array(actions))


def test_the_tick_with_a_non_finite_action_is_logged_and_recorded(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    model = load_model(built.path)
    good = built.random_obs(np.random.default_rng(1))
    sent: list[np.ndarray] = []

    def getter(name: str) -> Any:
        def get(*_: Any) -> np.ndarray:
            if name == "joint_angles" and len(sent) == 5:
                return np.full_like(good[name], np.nan)
            return good[name]

        return get

    provider = CallableProvider(
        **{n: getter(n) for n in built.order if n != "carry"}, take_action=lambda names, a: sent.append(a)
    )
    log, out = tmp_path / "nan.ndjson", tmp_path / "nan.kdb"
    with pytest.raises(InferError, match=r"step 5: the policy's action holds NaN or Inf") as exc:
        Runner(model, provider, rate_hz=500, max_steps=50, log_path=log, record_to=out).run()
    if hasattr(exc.value, "add_note"):
        assert "stopped after 6 steps (step 5, the failing one, included)" in " ".join(exc.value.__notes__)
    assert len(sent) == 5  # never sent
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step_id"] for r in lines] == list(range(6)) and set(lines[5]["output"]) == {None}
    with kinodb.open(out) as db:
        actions = db.read_array(0, "actions")
    assert actions.shape[0] == 6 and np.isnan(actions[5]).all()
    np.testing.assert_array_equal(actions[:5], np.array(sent))


@pytest.mark.parametrize(("limit", "skipped"), [({"duration_s": 0.3}, 2), ({"max_steps": 1}, 0)])
def test_skipped_ticks_are_deadlines_the_run_would_have_run(
    make_package: MakePackage, limit: dict[str, Any], skipped: int
) -> None:
    # 10 Hz: the first tick (0.1 s) blocks 0.35 s. The schedule for 0.3 s holds the deadlines
    # 0.1, 0.2 and 0.3: two were missed; the later ones lie past the end. With max_steps=1
    # the run was over after its one tick: nothing was skipped.
    built = make_package()
    provider, actions = _provider(built, slow_s=0.35)
    stats = Runner(load_model(built.path), provider, rate_hz=10, **limit).run()
    assert stats["steps"] == len(actions) == 1 and stats["overruns"] == 1
    assert stats["skipped_ticks"] == skipped
