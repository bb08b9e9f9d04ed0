#!/usr/bin/env python
"""kinodb.infer against a bare, tuned ONNX Runtime IOBinding call; then a 1 kHz loop with logging.

The policy is the kinfer reference's anchor: 20 joints, 6 commands, a 128-float carry;
``concat(obs, carry)`` -> Linear 256 -> ELU -> Linear 256 -> ELU, an action head and a
GRU-style gated carry update (about 264K parameters), exported with
`kinodb.infer.export_torch` to a kinfer 0.6 package.

1. Step latency, interleaved in blocks of 500 steps after 1,000 warm-up steps, the cyclic
   GC paused as timeit does: ``model.step(obs)``; the bare peer, a session with the same
   tuned options bound once to preallocated buffers (copy the observation in,
   ``run_with_iobinding``, copy the carry back); and, for context, ``session.run`` with a
   feed dict. Target: ``model.step`` p50 <= 1.2x the bare call.
2. Where telemetry lines are serialised: 1 kHz loops with the NDJSON log on, alternating
   ``json.dumps`` on the control thread ("inline") and on the writer thread ("worker"),
   tick work and lateness compared.
3. The 1 kHz loop for 60 s with logging on (the default, worker serialisation). Targets:
   tick lateness p99 <= 100 us, 0 dropped lines. Run twice: at normal priority, and with
   ``realtime_priority=50`` (SCHED_FIFO for the control thread, where permitted).

Run ``python benchmarks/infer.py`` (``--quick`` for a short run). Needs torch, onnx and
onnxruntime. Medians and ratios print; JSON goes to benchmarks/results/infer.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from kinodb.infer import CallableProvider, Runner, export_torch, load_model
from kinodb.infer._session import session_options

JOINTS = tuple(f"joint_{i:02d}" for i in range(20))
COMMANDS = ("vx", "vy", "wz", "height", "pitch", "roll")
CARRY = 128


class AnchorPolicy(torch.nn.Module):
    """The reference's anchor policy."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        n_in = 2 * len(JOINTS) + 3 + len(COMMANDS) + CARRY
        self.l1, self.l2 = torch.nn.Linear(n_in, hidden), torch.nn.Linear(hidden, hidden)
        self.action = torch.nn.Linear(hidden, len(JOINTS))
        self.zr = torch.nn.Linear(hidden + CARRY, 2 * CARRY)
        self.w, self.u = torch.nn.Linear(hidden, CARRY), torch.nn.Linear(CARRY, CARRY, bias=False)

    def forward(self, joint_angles: Any, joint_angular_velocities: Any, projected_gravity: Any, command: Any,
                carry: Any) -> tuple[Any, Any]:  # fmt: skip
        x = torch.cat([joint_angles, joint_angular_velocities, projected_gravity, command, carry])
        h = torch.nn.functional.elu(self.l2(torch.nn.functional.elu(self.l1(x))))
        z, r = torch.sigmoid(self.zr(torch.cat([h, carry]))).split(CARRY)
        n = torch.tanh(self.w(h) + self.u(r * carry))
        return self.action(h), (1 - z) * n + z * carry


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "torch": torch.__version__}  # fmt: skip


def pct(values_s: list[float] | np.ndarray) -> dict[str, float]:
    us = np.asarray(values_s) * 1e6
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "p99.9": float(np.percentile(us, 99.9)), "max": float(us.max())}  # fmt: skip


# -- 1. step latency ----------------------------------------------------------------------


def bare_iobinding(step_fn: bytes, pool: list[dict[str, np.ndarray]]) -> Callable[[int], None]:
    """What one would write by hand: a tuned session bound once to preallocated buffers."""
    sess = ort.InferenceSession(step_fn, session_options(), providers=["CPUExecutionProvider"])
    bufs = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()}
    outs = [np.zeros(o.shape, np.float32) for o in sess.get_outputs()]
    io = sess.io_binding()
    keep = []
    for name, buf in bufs.items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(buf))
        io.bind_ortvalue_input(name, keep[-1])
    for node, buf in zip(sess.get_outputs(), outs, strict=True):
        keep.append(ort.OrtValue.ortvalue_from_numpy(buf))
        io.bind_ortvalue_output(node.name, keep[-1])
    slots = [(n, b) for n, b in bufs.items() if n != "carry"]
    carry_in, carry_out = bufs["carry"], outs[1]

    def step(k: int) -> None:
        obs = pool[k & 255]
        for name, buf in slots:
            np.copyto(buf, obs[name])
        sess.run_with_iobinding(io)
        np.copyto(carry_in, carry_out)

    step.keep = keep  # type: ignore[attr-defined]
    return step


def ort_dict(step_fn: bytes, pool: list[dict[str, np.ndarray]]) -> Callable[[int], None]:
    sess = ort.InferenceSession(step_fn, session_options(), providers=["CPUExecutionProvider"])
    state = {"carry": np.zeros(CARRY, np.float32)}

    def step(k: int) -> None:
        out = sess.run(None, {**pool[k & 255], "carry": state["carry"]})
        state["carry"] = out[1]

    return step


def bench_step(path: str, step_fn: bytes, pool: list[dict[str, np.ndarray]], steps: int) -> dict[str, Any]:
    model = load_model(path)
    variants: dict[str, Callable[[int], None]] = {
        "kinodb_model_step": lambda k: model.step(pool[k & 255]),
        "bare_ort_iobinding": bare_iobinding(step_fn, pool),
        "ort_run_dict": ort_dict(step_fn, pool),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    perf = time.perf_counter
    for fn in variants.values():
        for k in range(1000):
            fn(k)
    block = 500
    gc.collect()
    gc.disable()
    try:
        k = 0
        while len(times["kinodb_model_step"]) < steps:
            for name, fn in variants.items():
                out = times[name]
                for _ in range(block):
                    t0 = perf()
                    fn(k)
                    out.append(perf() - t0)
                    k += 1
    finally:
        gc.enable()
    res: dict[str, Any] = {name: pct(v) for name, v in times.items()}
    # Per-block medians of the ratio, so slow phases of a shared machine hit both sides alike.
    a, b = np.asarray(times["kinodb_model_step"]), np.asarray(times["bare_ort_iobinding"])
    blocks = [
        float(np.median(a[i : i + block]) / np.median(b[i : i + block])) for i in range(0, len(a), block)
    ]
    res["ratio_p50_model_over_bare"] = res["kinodb_model_step"]["p50"] / res["bare_ort_iobinding"]["p50"]
    res["ratio_p50_median_of_blocks"] = statistics.median(blocks)
    res["steps_per_variant"] = len(a)
    return res


# -- 2 and 3. loops -----------------------------------------------------------------------


def provider_for(pool: list[dict[str, np.ndarray]]) -> CallableProvider:
    tick = [0]

    def getter(name: str) -> Callable[..., np.ndarray]:
        return lambda *_: pool[tick[0] & 255][name]

    def advance(names: Any, action: np.ndarray) -> None:
        tick[0] += 1

    return CallableProvider(**{n: getter(n) for n in pool[0]}, take_action=advance)


def loop(path: str, pool: list[dict[str, np.ndarray]], seconds: float, logdir: str, serialize: str,
         realtime: int | None = None) -> dict[str, Any]:  # fmt: skip
    model = load_model(path)
    log = os.path.join(logdir, f"{serialize}-{time.monotonic_ns()}.ndjson")
    t0 = time.process_time()
    stats = Runner(model, provider_for(pool), rate_hz=1000, duration_s=seconds, log_path=log,
                   log_serialize=serialize, realtime_priority=realtime).run()  # fmt: skip
    cpu = time.process_time() - t0
    with open(log, "rb") as fh:
        lines = sum(1 for _ in fh)
    size = os.path.getsize(log)
    os.unlink(log)
    stats["cpu_percent"] = 100 * cpu / max(stats["duration_s"], 1e-9)
    stats["lines_in_file"] = lines
    stats["bytes_per_line"] = size / max(lines, 1)
    stats["serialize"] = serialize
    return stats


def serialisation(
    path: str, pool: list[dict[str, np.ndarray]], seconds: float, rounds: int, logdir: str
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"inline": [], "worker": []}
    for _ in range(rounds):
        for mode in ("inline", "worker"):
            runs[mode].append(loop(path, pool, seconds, logdir, mode))
    out: dict[str, Any] = {}
    for mode, rs in runs.items():
        out[mode] = {
            "runs": len(rs), "seconds_each": seconds,
            "tick_work_p50_us": statistics.median(r["tick_work_us"]["p50"] for r in rs),
            "tick_work_p99_us": statistics.median(r["tick_work_us"]["p99"] for r in rs),
            "tick_lateness_p50_us": statistics.median(r["tick_lateness_us"]["p50"] for r in rs),
            "tick_lateness_p99_us": statistics.median(r["tick_lateness_us"]["p99"] for r in rs),
            "step_latency_p50_us": statistics.median(r["step_latency_us"]["p50"] for r in rs),
            "dropped_log_lines": sum(r["dropped_log_lines"] for r in rs),
            "cpu_percent": statistics.median(r["cpu_percent"] for r in rs),
            "bytes_per_line": statistics.median(r["bytes_per_line"] for r in rs),
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--quick", action="store_true", help="3,000 steps per variant, 5 s loop, 2 s serialisation loops"
    )
    ap.add_argument("--steps", type=int, default=20_000, help="timed steps per variant (default 20000)")
    ap.add_argument("--seconds", type=float, default=60.0, help="the 1 kHz loop's duration (default 60)")
    ap.add_argument(
        "--serialise-seconds", type=float, default=10.0, help="each serialisation loop (default 10)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/infer.json, infer_quick.json with --quick)",
    )
    args = ap.parse_args(argv)
    # A smoke run never replaces the recorded full run.
    results_dir = os.path.join(os.path.dirname(__file__), "results")
    args.out = args.out or os.path.join(results_dir, f"infer{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.steps, args.seconds, args.serialise_seconds = 3000, 5.0, 2.0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pool = [
        {"joint_angles": rng.normal(size=20).astype(np.float32),
         "joint_angular_velocities": rng.normal(size=20).astype(np.float32),
         "projected_gravity": rng.normal(size=3).astype(np.float32),
         "command": rng.normal(size=6).astype(np.float32)}
        for _ in range(256)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-infer-") as tmp:
        path = os.path.join(tmp, "anchor.kinfer")
        report = export_torch(
            AnchorPolicy(), path, joint_names=JOINTS, command_names=COMMANDS, carry_shape=(CARRY,)
        )
        model = load_model(path)
        step_fn = model.package.step_fn
        del model
        print(
            f"exported {path}: {report.bytes:,} bytes, opset {report.opset}, parity {report.max_abs_diff:.2g}"
        )
        step = bench_step(path, step_fn, pool, args.steps)
        print(f"\nstep latency, {step['steps_per_variant']} interleaved steps per variant (us):")
        print(f"{'variant':<22}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>10}")
        for name in ("kinodb_model_step", "bare_ort_iobinding", "ort_run_dict"):
            r = step[name]
            print(f"{name:<22}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['p99.9']:>9.1f}{r['max']:>10.1f}")
        print(f"ratio model.step / bare IOBinding at p50: {step['ratio_p50_model_over_bare']:.3f} "
              f"(median over blocks {step['ratio_p50_median_of_blocks']:.3f}; target <= 1.2)")  # fmt: skip
        ser = serialisation(path, pool, args.serialise_seconds, 2, tmp)
        print(f"\nserialisation at 1 kHz with logging, 2 alternating runs of {args.serialise_seconds:g} s each "
              "(medians of the runs, us):")  # fmt: skip
        print(
            f"{'where':<9}{'work p50':>10}{'work p99':>10}{'late p50':>10}{'late p99':>10}{'CPU %':>8}{'dropped':>9}"
        )
        for mode, r in ser.items():
            print(f"{mode:<9}{r['tick_work_p50_us']:>10.1f}{r['tick_work_p99_us']:>10.1f}{r['tick_lateness_p50_us']:>10.1f}"
                  f"{r['tick_lateness_p99_us']:>10.1f}{r['cpu_percent']:>8.1f}{r['dropped_log_lines']:>9}")  # fmt: skip
        loops = {
            "normal_priority": loop(path, pool, args.seconds, tmp, "worker"),
            "realtime_priority_50": loop(path, pool, args.seconds, tmp, "worker", realtime=50),
        }
    for name, main_loop in loops.items():
        late, lat = main_loop["tick_lateness_us"], main_loop["step_latency_us"]
        rt = (
            ""
            if name == "normal_priority"
            else f" (SCHED_FIFO {'on' if main_loop['realtime'] else 'refused'})"
        )
        print(f"\n1 kHz loop, {args.seconds:g} s, logging on, {name}{rt}: {main_loop['steps']} steps, "
              f"{main_loop['lines_in_file']} lines ({main_loop['bytes_per_line']:.0f} B each)")  # fmt: skip
        print(f"  tick lateness us: p50 {late['p50']:.1f}  p99 {late['p99']:.1f}  p99.9 {late['p99.9']:.0f}  "
              f"max {late['max']:.0f}   (target p99 <= 100)")  # fmt: skip
        print(f"  step latency us:  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.0f}")
        print(f"  overruns {main_loop['overruns']}, skipped ticks {main_loop['skipped_ticks']}, "
              f"dropped lines {main_loop['dropped_log_lines']} (target 0), CPU {main_loop['cpu_percent']:.0f}%")  # fmt: skip
    targets = {"step_p50_ratio_le_1.2": step["ratio_p50_model_over_bare"] <= 1.2}
    for name, main_loop in loops.items():
        targets[f"{name}_lateness_p99_le_100us"] = main_loop["tick_lateness_us"]["p99"] <= 100
        targets[f"{name}_zero_dropped_lines"] = main_loop["dropped_log_lines"] == 0
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at the end: {load}")
    recorded = {**vars(args), "out": os.path.relpath(args.out, os.path.dirname(os.path.dirname(__file__)))}
    meta = {"machine": machine_info(), "args": recorded, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "policy": {"joints": len(JOINTS), "commands": len(COMMANDS), "carry": CARRY, "bytes": report.bytes},
            "load_average_at_end": load}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"quick": args.quick, "meta": meta, "step": step, "serialisation": ser, "loop_1khz": loops,
                   "targets": targets}, fh, indent=1)  # fmt: skip
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
