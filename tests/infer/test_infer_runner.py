"""Runner: step counts, stop conditions, missed ticks, telemetry lines, stats and recording."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage

import kinodb
from kinodb.infer import CallableProvider, InferError, KdbReplayProvider, Runner, load_model, replay

KINFER_ORDER = ["step_id", "t_us", "joint_angles", "joint_vels", "projected_g", "accel", "gyro", "command"]


class Served:
    """A provider from callables that serves seeded observations and keeps what it served."""

    def __init__(self, built: Built, seed: int = 0, *, on_action: Any = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.built = built
        self.served: list[dict[str, np.ndarray]] = []
        self.actions: list[np.ndarray] = []
        self._current: dict[str, np.ndarray] = {}
        self._on_action = on_action
        names = [n for n in built.order if n != "carry"]
        getters = {n: self._getter(n) for n in names}
        self.provider = CallableProvider(**getters, take_action=self._take)

    def _getter(self, name: str) -> Any:
        def get(*_: Any) -> np.ndarray:
            if not self._current:
                self._current = self.built.random_obs(self.rng)
                self.served.append(self._current)
            return self._current[name]

        return get

    def _take(self, names: Any, action: np.ndarray) -> None:
        self.actions.append(action)
        self._current = {}
        if self._on_action is not None:
            self._on_action(len(self.actions))


def test_steps_log_lines_and_stats(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    served = Served(built)
    log = tmp_path / "run.ndjson"
    stats = Runner(load_model(built.path), served.provider, rate_hz=1000, max_steps=200, log_path=log).run()
    assert stats["steps"] == 200 and stats["stopped_by"] == "max_steps"
    assert stats["log_path"] == str(log) and stats["log_lines"] == 200 and stats["dropped_log_lines"] == 0
    for key in ("step_latency_us", "tick_lateness_us", "tick_work_us"):
        s = stats[key]
        assert 0 <= s["p50"] <= s["p99"] <= s["max"]
    assert stats["overruns"] >= 0 and stats["skipped_ticks"] >= 0
    lines = log.read_text().splitlines()
    assert len(lines) == 200
    first = json.loads(lines[0])
    assert list(first)[: len(KINFER_ORDER)] == KINFER_ORDER
    assert list(first)[-2:] == ["output", "step_latency_us"]
    assert first["time"] is not None and first["step_latency_us"] > 0
    recs = [json.loads(line) for line in lines]
    assert [r["step_id"] for r in recs] == list(range(200))
    assert all(b["t_us"] >= a["t_us"] for a, b in itertools.pairwise(recs))
    np.testing.assert_array_equal(np.array([r["output"] for r in recs], np.float32), np.array(served.actions))
    np.testing.assert_array_equal(np.array([r["joint_vels"] for r in recs], np.float32),
                                  np.array([s["joint_angular_velocities"] for s in served.served]))  # fmt: skip
    np.testing.assert_array_equal(np.array([r["gyro"] for r in recs], np.float32),
                                  np.array([s["gyroscope"] for s in served.served]))  # fmt: skip


def test_absent_inputs_are_null_like_kinfer(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    stats = Runner(load_model(built.path), Served(built).provider, rate_hz=500, max_steps=3,
                   log_path=tmp_path / "n.ndjson").run()  # fmt: skip
    rec = json.loads((tmp_path / "n.ndjson").read_text().splitlines()[0])
    assert stats["steps"] == 3
    assert rec["joint_vels"] is None and rec["projected_g"] is None and rec["command"] is None
    assert "time" not in rec and len(rec["joint_angles"]) == 4


def test_duration_stop_and_stop_from_the_provider(make_package: MakePackage) -> None:
    built = make_package()
    model = load_model(built.path)
    stats = Runner(model, Served(built).provider, rate_hz=200, duration_s=0.1).run()
    assert stats["stopped_by"] == "duration" and 1 <= stats["steps"] <= 20
    holder: dict[str, Runner] = {}
    served = Served(built, on_action=lambda n: holder["r"].stop() if n == 10 else None)
    holder["r"] = Runner(model, served.provider, rate_hz=1000)
    stats = holder["r"].run()
    assert stats["stopped_by"] == "stop" and stats["steps"] == 10


def test_missed_ticks_are_skipped_not_burst(make_package: MakePackage) -> None:
    built = make_package()
    served = Served(built, on_action=lambda n: time.sleep(0.03) if n == 5 else None)
    stats = Runner(load_model(built.path), served.provider, rate_hz=1000, max_steps=40).run()
    assert stats["steps"] == 40
    assert stats["overruns"] >= 1
    assert stats["skipped_ticks"] >= 25  # 30 ms behind at 1 kHz
    # Bursting through the missed ticks would start the first one ~29 ms late; skipping starts
    # it on a later deadline. The bound leaves room for a busy machine's preemptions.
    assert stats["tick_lateness_us"]["max"] < 25_000


def test_prefetch_is_called_with_the_input_names(make_package: MakePackage) -> None:
    built = make_package()
    served = Served(built)
    calls: list[list[str]] = []
    served.provider.pre_fetch_inputs = lambda names: calls.append(list(names))  # type: ignore[attr-defined]
    stats = Runner(load_model(built.path), served.provider, rate_hz=200, max_steps=5, prefetch_s=0.001).run()
    assert stats["steps"] == 5 and len(calls) == 5
    assert calls[0] == [n for n in built.order if n != "carry"]
    with pytest.raises(InferError, match="pre_fetch_inputs"):
        Runner(load_model(built.path), Served(built).provider, rate_hz=200, prefetch_s=0.001)
    with pytest.raises(ValueError, match="prefetch_s"):
        Runner(load_model(built.path), served.provider, rate_hz=200, prefetch_s=0.01)


def test_missing_provider_method_is_named(make_package: MakePackage) -> None:
    built = make_package()
    provider = CallableProvider(joint_angles=lambda n: np.zeros(4))
    with pytest.raises(
        InferError, match=r"has no get_joint_angular_velocities\(\).*'joint_angular_velocities'"
    ):
        Runner(load_model(built.path), provider, rate_hz=50)


def test_recording_appends_episodes_that_replay_exactly(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    model = load_model(built.path)
    out = tmp_path / "rollouts.kdb"
    runs = []
    for seed in (1, 2):
        served = Served(built, seed)
        stats = Runner(model, served.provider, rate_hz=1000, max_steps=25 + seed, record_to=out,
                       embodiment="biped", task="walk").run()  # fmt: skip
        runs.append(served)
        assert stats["recorded_episode"] == seed - 1
    with kinodb.open(out) as db:
        assert len(db) == 2
        schema = db.schema()
        assert schema["states"]["components"] == {"joint_angles": [0, 4], "joint_angular_velocities": [4, 8]}
        assert schema["actions"]["names"] == list(built.joints)
        ep = db.read_episode(1)
        served = runs[1]
        assert (
            ep["meta"]["num_frames"] == 27
            and ep["meta"]["embodiment"] == "biped"
            and ep["meta"]["fps"] == 1000
        )
        assert ep["meta"]["policy"] == built.path.name and ep["meta"]["command_names"] == list(built.commands)
        np.testing.assert_array_equal(ep["actions"], np.array(served.actions))
        want_states = np.array(
            [np.concatenate([s["joint_angles"], s["joint_angular_velocities"]]) for s in served.served]
        )
        np.testing.assert_array_equal(ep["states"], want_states)
        for name in ("projected_gravity", "accelerometer", "gyroscope", "command", "time"):
            np.testing.assert_array_equal(ep[name], np.array([s[name] for s in served.served]), err_msg=name)
        assert ep["step_latency_us"].shape == (27,) and (np.diff(ep["timestamps"]) > 0).all()
        report = replay(model, db)
    assert report.frames == 53 and float(report.max_abs.max()) == 0.0


def test_replay_provider_ends_the_run(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    model = load_model(built.path)
    out = tmp_path / "r.kdb"
    Runner(model, Served(built).provider, rate_hz=1000, max_steps=30, record_to=out).run()
    provider = KdbReplayProvider(out, 0)
    stats = Runner(model, provider, rate_hz=2000).run()
    assert stats["stopped_by"] == "provider" and stats["steps"] == 30
    with kinodb.open(out) as db:
        np.testing.assert_array_equal(provider.predicted, db.read_array(0, "actions"))
    provider.close()
    bad = KdbReplayProvider(out, 0, state_map={"joint_angles": "nothing_here"})
    with pytest.raises(
        InferError, match=rf"^{re.escape(str(out))}: episode 0: --state-map joint_angles=nothing_here"
    ):
        Runner(model, bad, rate_hz=1000, max_steps=1)
    bad.close()


def test_env_names_the_log_like_kinfer(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = make_package()
    model = load_model(built.path)
    logs = tmp_path / "logs"
    monkeypatch.setenv("KINFER_LOG_PATH", str(logs))
    monkeypatch.setenv("KINFER_LOG_UUID", "run-42")
    stats = Runner(model, Served(built).provider, rate_hz=1000, max_steps=4).run()
    assert stats["log_path"] == str(logs / "run-42.ndjson")
    assert len((logs / "run-42.ndjson").read_text().splitlines()) == 4
    monkeypatch.delenv("KINFER_LOG_UUID")
    stats = Runner(model, Served(built).provider, rate_hz=1000, max_steps=2).run()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.ndjson", os.path.basename(stats["log_path"]))
    monkeypatch.delenv("KINFER_LOG_PATH")
    assert Runner(model, Served(built).provider, rate_hz=1000, max_steps=2).run()["log_path"] is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_stalled_disk_drops_lines_and_never_stalls_the_loop(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    fifo = tmp_path / "stall.ndjson"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read: the pipe fills
    steps = 1500
    finished = threading.Event()
    served = Served(built, on_action=lambda n: finished.set() if n == steps else None)
    runner = Runner(load_model(built.path), served.provider, rate_hz=1000, max_steps=steps, log_path=fifo,
                    log_capacity=64)  # fmt: skip
    result: dict[str, Any] = {}
    loop = threading.Thread(target=lambda: result.update(runner.run()))
    loop.start()
    assert finished.wait(60), "the control loop stalled behind the blocked log writer"
    received = bytearray()
    os.set_blocking(reader, True)
    while chunk := os.read(reader, 1 << 16):  # drain: the writer finishes, closes, and read gets EOF
        received += chunk
    loop.join(30)
    os.close(reader)
    assert not loop.is_alive()
    assert result["steps"] == steps
    assert result["dropped_log_lines"] > 0
    assert result["log_lines"] + result["dropped_log_lines"] == steps
    ids = [json.loads(line)["step_id"] for line in received.decode().splitlines()]
    assert len(ids) == result["log_lines"]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[-1] < steps


def test_realtime_priority_is_validated_and_reported(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    model = load_model(built.path)
    with pytest.raises(ValueError, match="realtime_priority"):
        Runner(model, Served(built).provider, rate_hz=100, realtime_priority=0)
    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    stats = Runner(model, Served(built).provider, rate_hz=1000, max_steps=20, realtime_priority=10,
                   log_path=tmp_path / "rt.ndjson").run()  # fmt: skip
    assert stats["steps"] == 20 and isinstance(stats["realtime"], bool)
    assert stats["log_lines"] == 20 and stats["dropped_log_lines"] == 0
    if before is not None:
        assert os.sched_getscheduler(0) == before  # the policy is restored after the run


def test_a_failing_provider_keeps_the_log_and_the_recording_up_to_the_failing_step(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    model = load_model(built.path)
    out, log = tmp_path / "rollouts.kdb", tmp_path / "run.ndjson"

    def fail(n: int) -> None:
        if n == 20:
            raise OSError("CAN bus timeout")

    served = Served(built, 3, on_action=fail)
    runner = Runner(model, served.provider, rate_hz=1000, max_steps=50, record_to=out, log_path=log)
    with pytest.raises(OSError, match="CAN bus timeout") as exc:
        runner.run()
    notes = " ".join(getattr(exc.value, "__notes__", []))
    if hasattr(exc.value, "add_note"):
        assert "stopped after 20 steps (step 19, the failing one, included)" in notes
        assert f"{out} episode 0 holds its steps" in notes
    with kinodb.open(out) as db:  # take_action failed in step 19: its step is kept, as its line is
        assert len(db) == 1 and db.read_meta(0)["num_frames"] == 20
        np.testing.assert_array_equal(db.read_array(0, "actions"), np.array(served.actions))
    assert len(log.read_text().splitlines()) == 20


def test_rates_above_2_khz_spin_the_whole_period_by_default(make_package: MakePackage) -> None:
    built = make_package()
    model = load_model(built.path)
    runner = Runner(model, Served(built).provider, rate_hz=5000, max_steps=5)
    assert runner.spin_s == pytest.approx(1 / 5000)
    assert runner.run()["steps"] == 5
    with pytest.raises(ValueError, match=r"spin_s must be in \[0, 0.0002\] \(one period at 5000 Hz\)"):
        Runner(model, Served(built).provider, rate_hz=5000, spin_s=5e-4)


def test_a_non_finite_action_is_never_sent_to_the_robot(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    model = load_model(built.path)
    served = Served(built, 4)
    real = served._getter

    def getter(name: str) -> Any:
        get = real(name)

        def poisoned(*args: Any) -> np.ndarray:
            value = get(*args)
            return (
                np.full_like(value, np.nan) if name == "joint_angles" and len(served.actions) == 5 else value
            )

        return poisoned

    served.provider = CallableProvider(
        **{n: getter(n) for n in built.order if n != "carry"}, take_action=served._take
    )
    with pytest.raises(
        InferError,
        match=r"step 5: the policy's action holds NaN or Inf \(the observations \['joint_angles'\]",
    ):
        Runner(model, served.provider, rate_hz=1000, max_steps=20, record_to=tmp_path / "r.kdb").run()
    assert len(served.actions) == 5  # the sixth action never reached the robot


def test_a_loop_that_falls_behind_says_so(
    make_package: MakePackage, caplog: pytest.LogCaptureFixture
) -> None:
    built = make_package()
    model = load_model(built.path)
    served = Served(built, 5, on_action=lambda n: time.sleep(0.012) if n % 5 == 0 else None)
    with caplog.at_level("WARNING", logger="kinodb.infer.runner"):
        stats = Runner(model, served.provider, rate_hz=200, max_steps=20).run()
    assert stats["overruns"] >= 3 and stats["skipped_ticks"] >= 3
    assert "the loop fell behind 200 Hz" in caplog.text and "were skipped" in caplog.text


def test_recording_into_a_file_of_another_robot_is_refused_before_the_run(
    make_package: MakePackage, tmp_path: Path
) -> None:
    out = tmp_path / "rollouts.kdb"
    first = make_package()
    Runner(load_model(first.path), Served(first, 1).provider, rate_hz=1000, max_steps=5, record_to=out).run()
    Runner(load_model(first.path), Served(first, 2).provider, rate_hz=1000, max_steps=5, record_to=out).run()
    other = make_package(joints=[f"other_{k}" for k in range(len(first.joints))])
    served = Served(other, 3)
    with pytest.raises(
        InferError,
        match=r"record_to .* holds episodes whose actions names are .*record this policy to a new file",
    ):
        Runner(load_model(other.path), served.provider, rate_hz=1000, max_steps=5, record_to=out).run()
    assert served.actions == []  # refused before any action was sent
    with kinodb.open(out) as db:
        assert len(db) == 2


def test_t_us_is_stamped_after_inference_before_the_action_is_sent(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    sent_at: list[int] = []

    def slow_send(n: int) -> None:
        sent_at.append(time.time_ns() // 1000)
        time.sleep(0.005)  # a slow actuator write must not move t_us

    log = tmp_path / "t_us.ndjson"
    Runner(load_model(built.path), Served(built, on_action=slow_send).provider, rate_hz=100, max_steps=4,
           log_path=log).run()  # fmt: skip
    t_us = [json.loads(line)["t_us"] for line in log.read_text().splitlines()]
    assert len(t_us) == len(sent_at) == 4
    assert all(t <= s for t, s in zip(t_us, sent_at, strict=True)), (t_us, sent_at)


def test_nan_observations_are_logged_as_null(tmp_path: Path) -> None:
    from _kinfer_builders import IR_VERSION, init_graph, metadata_bytes, write_archive
    from onnx import TensorProto, checker, helper

    # action = joint_angles; the gyroscope is an input no node reads, so a NaN there is harmless
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["joint_angles"], ["action"]), helper.make_node("Neg", ["carry"], ["next"])],
        "step_fn",
        [vi("joint_angles", TensorProto.FLOAT, [4]), vi("gyroscope", TensorProto.FLOAT, [3]),
         vi("carry", TensorProto.FLOAT, [2])],
        [vi("action", TensorProto.FLOAT, [4]), vi("next", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    step = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    step.ir_version = IR_VERSION
    checker.check_model(step)
    meta = {"joint_names": ["a", "b", "c", "d"], "command_names": [], "carry_size": [2]}
    path = write_archive(tmp_path / "nan.kinfer", [("init_fn.onnx", init_graph(np.zeros(2, np.float32))),
                         ("step_fn.onnx", step.SerializeToString()), ("metadata.json", metadata_bytes(meta))])  # fmt: skip
    provider = CallableProvider(
        joint_angles=lambda names: np.ones(4, np.float32),
        gyroscope=lambda: np.array([np.nan, np.inf, 0.5], np.float32),
    )
    log = tmp_path / "nan.ndjson"
    Runner(load_model(path), provider, rate_hz=200, max_steps=2, log_path=log).run()

    def refuse(token: str) -> None:
        raise AssertionError(f"the log holds the non-JSON token {token}")

    recs = [json.loads(line, parse_constant=refuse) for line in log.read_text().splitlines()]
    assert len(recs) == 2 and recs[0]["gyro"] == [None, None, 0.5] and recs[0]["output"] == [1.0] * 4


def test_a_record_to_that_cannot_take_the_run_is_refused_before_it(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    served = Served(built)
    model = load_model(built.path)
    cases = {
        tmp_path / "missing" / "r.kdb": r"the folder .*missing does not exist; create it first",
        tmp_path: r"is a folder; give the path of a \.kdb file",
    }
    seven = tmp_path / "seven.kdb"  # another robot's episodes, with no joint names to compare
    with kinodb.Writer(seven) as w:
        w.add_episode(actions=np.zeros((3, 7), np.float32))
    cases[seven] = r"holds episodes whose actions have dim 7, not this policy's 4"
    states = tmp_path / "states.kdb"  # the same joints, recorded by a policy that read no joint inputs
    lean = make_package(inputs=("projected_gravity", "carry"))
    Runner(load_model(lean.path), Served(lean).provider, rate_hz=1000, max_steps=3, record_to=states).run()
    cases[states] = r"holds episodes whose states have dim 0, not this policy's 8"
    if os.path.isdir("/proc/self"):  # a folder that takes no file, though os.access says yes to root
        cases[Path("/proc/r.kdb")] = r"record_to /proc/r\.kdb: cannot write in /proc \("
    log = tmp_path / "refused.ndjson"
    for target, message in cases.items():
        with pytest.raises(InferError, match=message):
            Runner(model, served.provider, rate_hz=1000, max_steps=5, record_to=target, log_path=log).run()
    assert served.actions == []  # refused before any action was sent
    assert not log.exists()  # before the log was opened: no telemetry writer left running
    assert not [t for t in threading.enumerate() if t.name == "kinodb-ndjson-writer"]


def test_sigterm_and_sys_exit_keep_the_log_and_the_recording(
    make_package: MakePackage, tmp_path: Path
) -> None:
    import subprocess
    import sys

    built = make_package()
    script = f"""
import os, signal, sys
import numpy as np
from kinodb.infer import CallableProvider, Runner, load_model
model = load_model({str(built.path)!r})
sig = model.signature
getters = {{n: (lambda n=n: lambda *_: np.zeros(sig.shape(n), np.float32))() for n in sig.observation_names}}
sent = []
def take(names, action):
    sent.append(action)
    if len(sent) == 20:
        os.kill(os.getpid(), signal.SIGTERM)
Runner(model, CallableProvider(**getters, take_action=take), rate_hz=500,
       log_path=sys.argv[1], record_to=sys.argv[2]).run()
print("not reached")
"""
    log, out = tmp_path / "term.ndjson", tmp_path / "term.kdb"
    done = subprocess.run(
        [sys.executable, "-c", script, str(log), str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -15, done.stderr  # ended by the signal, as without the runner
    assert "not reached" not in done.stdout
    assert len(log.read_text().splitlines()) == 20
    with kinodb.open(out) as db:
        assert db.read_meta(0)["num_frames"] == 20

    served = Served(built, on_action=lambda n: sys.exit(3) if n == 7 else None)
    with pytest.raises(SystemExit) as exc:
        Runner(load_model(built.path), served.provider, rate_hz=1000, record_to=out).run()
    assert exc.value.code == 3
    with kinodb.open(out) as db:
        assert len(db) == 2 and db.read_meta(1)["num_frames"] == 7  # the step that exited is kept
        np.testing.assert_array_equal(db.read_array(1, "actions"), np.array(served.actions))


def test_a_log_that_cannot_be_written_is_counted_as_lost(make_package: MakePackage, tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to play a full disk")
    built = make_package()
    log = tmp_path / "full.ndjson"
    log.symlink_to("/dev/full")
    stats = Runner(
        load_model(built.path), Served(built).provider, rate_hz=1000, max_steps=30, log_path=log
    ).run()
    assert (stats["log_lines"], stats["dropped_log_lines"]) == (0, 30)
    assert "No space left on device" in stats["log_error"]


@pytest.mark.parametrize(("rate", "duration", "steps"), [(100.0, 0.1, 10), (20.0, 0.3, 6), (3.0, 1.0, 3)])
def test_duration_runs_every_deadline_up_to_it(
    make_package: MakePackage, rate: float, duration: float, steps: int
) -> None:
    built = make_package()
    stats = Runner(load_model(built.path), Served(built).provider, rate_hz=rate, duration_s=duration).run()
    # every deadline of the schedule either ran or was skipped (a busy machine may force skips)
    assert stats["steps"] + stats["skipped_ticks"] == steps and stats["stopped_by"] == "duration"


def test_duration_must_hold_a_tick_and_end(make_package: MakePackage) -> None:
    model = load_model(make_package().path)
    provider = Served(make_package()).provider
    with pytest.raises(ValueError, match=r"duration_s 0.2 is shorter than one period \(2 s at 0.5 Hz\)"):
        Runner(model, provider, rate_hz=0.5, duration_s=0.2)
    with pytest.raises(ValueError, match="positive finite number"):
        Runner(model, provider, rate_hz=10, duration_s=float("inf"))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_steps", 2.5, r"max_steps must be an int of at least 1 \(or None\), got 2.5"),
        ("max_steps", True, r"max_steps must be an int of at least 1 \(or None\), got True"),
        ("max_steps", 0, r"max_steps must be an int of at least 1 \(or None\), got 0"),
        ("log_capacity", 0, r"log_capacity must be an int of at least 1, got 0"),
        ("log_capacity", 2.0, r"log_capacity must be an int of at least 1, got 2.0"),
    ],
)
def test_counts_are_checked_when_the_runner_is_made(
    make_package: MakePackage, option: str, value: object, message: str
) -> None:
    built = make_package()
    with pytest.raises(ValueError, match=message):
        Runner(load_model(built.path), Served(built).provider, rate_hz=10, **{option: value})
    stats = Runner(load_model(built.path), Served(built).provider, rate_hz=200, max_steps=np.int64(3)).run()
    assert stats["steps"] == 3
