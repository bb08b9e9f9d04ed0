"""``kino infer``: inspect, replay, benchmark and plot kinfer policies and their logs."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import secrets
import sys
import time
from typing import Any

import numpy as np

from kinodb._cli._types import positive_int


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "infer",
        help="inspect, replay, benchmark and plot kinfer (.kinfer) policies",
        description="Tools for kinfer policy packages (.kinfer, any kinfer generation, or a plain .onnx "
        "step function) and their NDJSON step logs. Needs: pip install 'kinodb[infer]'.",
    )
    inner = p.add_subparsers(dest="infer_command", metavar="ACTION")
    inner.required = True

    q = inner.add_parser("inspect", help="signature, member sizes and ONNX opsets of a package")
    q.add_argument("package", help=".kinfer or .onnx file")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(run=run_inspect)

    r = inner.add_parser(
        "replay",
        help="per-joint error of the policy's actions against the recorded ones (open loop)",
        description="Step the policy through recorded episodes (carry reset per episode) and compare its "
        "actions with the recorded actions. Inputs are found as extra arrays or states components named "
        "after them (what recordings and ingested kinfer logs hold); map others with --state-map.",
    )
    r.add_argument("package", help=".kinfer or .onnx file")
    r.add_argument("data", help=".kdb file")
    r.add_argument("--episodes", metavar="SPEC", help="episodes by index, e.g. 0-9,29 (default: all)")
    r.add_argument("--state-map", nargs="+", action="extend", default=[], metavar="INPUT=SOURCE",
                   help="where an input comes from: ARRAY, ARRAY[START:STOP], states.COMPONENT, or 0 "
                        "for zeros; e.g. joint_angles=states[0:20] command=0")  # fmt: skip
    r.add_argument("--by-position", action="store_true",
                   help="use the joint columns and the recorded actions by position, not matched to the "
                        "policy's joints by name (for a file that names its joints differently)")  # fmt: skip
    r.add_argument("--json", action="store_true", help="print JSON instead of text")
    r.set_defaults(run=run_replay)

    b = inner.add_parser("bench", help="step latency back to back and inside a fixed-rate loop")
    b.add_argument("package", help=".kinfer or .onnx file")
    b.add_argument("--steps", type=positive_int, default=5000, help="back-to-back timed steps (default 5000)")
    b.add_argument("--rate", type=float, default=50.0, help="loop rate in Hz (default 50)")
    b.add_argument("--seconds", type=float, default=3.0, help="loop duration (default 3)")
    b.add_argument("--json", action="store_true", help="print JSON instead of text")
    b.set_defaults(run=run_bench)

    g = inner.add_parser("plot", help="plot an NDJSON step log to a PNG")
    g.add_argument("log", help="NDJSON log written by kinfer or kinodb")
    g.add_argument("-o", "--output", required=True,
                   help="image file to write; its suffix picks the format (.png, .svg, .pdf, ...)")  # fmt: skip
    g.add_argument(
        "--run", dest="run_index", type=int, default=-1, help="which run of the file (default: the last)"
    )
    g.add_argument("--skip", type=_seconds, default=0.0, metavar="S", help="leave out the first S seconds")
    g.add_argument("--package", help="the policy, to label joints and commands")
    g.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    g.set_defaults(run=run_plot)


def _seconds(text: str) -> float:
    """``--skip``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    return int(args.run(args))


# -- inspect ------------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:
    """Print the signature, the members and each graph's opset."""
    from kinodb.infer import load_model
    from kinodb.infer._package import INIT_MEMBER, STEP_MEMBER

    model = load_model(args.package)
    pkg, sig = model.package, model.signature
    graphs = {STEP_MEMBER: _graph_facts(pkg.step_fn)}
    if pkg.init_fn is not None:
        graphs[INIT_MEMBER] = _graph_facts(pkg.init_fn)
    out: dict[str, Any] = {
        "path": pkg.path, "bytes": os.path.getsize(pkg.path), "generation": sig.generation,
        "joint_names": list(sig.joint_names), "command_names": list(sig.command_names),
        "carry_shape": list(sig.carry_shape),
        "inputs": [{"name": i.name, "shape": list(i.shape)} for i in sig.inputs],
        "outputs": [{"name": o.name, "shape": o.shape} for o in model._sess.get_outputs()],
        "members": pkg.members, "graphs": graphs, "warnings": list(pkg.warnings),
        "metadata": pkg.metadata,
    }  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{pkg.path}: kinfer {sig.generation} package, {out['bytes']:,} bytes")
    print(f"joints ({sig.num_joints}): {', '.join(sig.joint_names)}")
    print(f"commands ({sig.num_commands}): {', '.join(sig.command_names) or '-'}")
    print(f"carry: {list(sig.carry_shape)}")
    print("inputs:")
    for i in sig.inputs:
        print(f"  {i.name:<26} {list(i.shape)}")
    print("outputs: " + ", ".join(f"{o['name']} {o['shape']}" for o in out["outputs"]))
    print("members:")
    for name, size in pkg.members.items():
        facts = graphs.get(name)
        extra = "" if not facts else "  " + ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None)
        print(f"  {name:<18} {size:>12,} bytes{extra}")
    for w in pkg.warnings:
        print(f"warning: {w}")
    return 0


def _graph_facts(data: bytes) -> dict[str, Any]:
    """Opset, IR version, producer, node and parameter counts (None without onnx)."""
    try:
        import onnx
    except ImportError:
        return {"opset": None}
    proto = onnx.load_from_string(data)
    opset = max((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in proto.graph.initializer)
    return {"opset": opset, "ir": int(proto.ir_version), "producer": proto.producer_name or None,
            "nodes": len(proto.graph.node), "parameters": params}  # fmt: skip


# -- replay -------------------------------------------------------------------------------


def run_replay(args: argparse.Namespace) -> int:
    """Replay the episodes and print per-joint errors."""
    from kinodb.infer import load_model, parse_state_map, replay
    from kinodb.ingest import parse_episodes
    from kinodb.kdb.reader import Database

    state_map = parse_state_map(args.state_map)
    episodes = parse_episodes(args.episodes) if args.episodes else None
    model = load_model(args.package)
    inputs = model.signature.observation_names
    unused = [n for n in state_map if n not in inputs]
    if unused:
        raise ValueError(
            f"--state-map {' '.join(f'{n}={state_map[n]}' for n in unused)}: {model.path} has no input "
            f"{' or '.join(repr(n) for n in unused)}; its observation inputs are {', '.join(inputs)}"
        )
    with Database(args.data) as db:
        if episodes is not None:
            _check_episodes(episodes, len(db), args.episodes, args.data)
        report = replay(
            model, db, episodes=episodes, state_map=state_map, by_name=not args.by_position
        ).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    n = len(report["episodes"])
    print(f"{n} episode{'' if n == 1 else 's'}, {report['frames']} frames: "
          f"MAE {_g(report['mae'])}, RMSE {_g(report['rmse'])}")  # fmt: skip
    print(f"{'JOINT':<28} {'MAE':>12} {'RMSE':>12} {'MAX':>12}")
    for j in report["joints"]:
        print(f"{j['joint']:<28} {_g(j['mae']):>12} {_g(j['rmse']):>12} {_g(j['max_abs']):>12}")
    first = report["first_nonfinite"]
    if first is not None:
        print(f"warning: the policy gave NaN or Inf for {report['nonfinite_predicted']} values, first at "
              f"episode {first['episode']} frame {first['frame']} joint {first['joint']!r}; those values "
              "are left out of the errors", file=sys.stderr)  # fmt: skip
    if report["nonfinite_recorded"]:
        print(f"warning: {report['nonfinite_recorded']} recorded action values are NaN or Inf (a logged "
              "null?) and were not compared", file=sys.stderr)  # fmt: skip
    return 0


def _check_episodes(episodes: list[int], count: int, spec: str, data: str) -> None:
    """Refuse an index past the file's last episode, in the terms of ``--episodes`` (which,
    as everywhere in ``kino``, takes indices from 0, not negative ones).

    Raises:
        EpisodeNotFoundError: an index is out of range.
    """
    from kinodb.errors import EpisodeNotFoundError

    bad = [i for i in episodes if i >= count]
    if bad:
        have = f"{count} episodes (0..{count - 1})" if count else "no episodes"
        raise EpisodeNotFoundError(
            f"--episodes {spec}: episode {bad[0]} out of range: {data} has {have}; use indices from that range"
        )


def _g(value: float | None) -> str:
    """An error for the text table: '-' where nothing was compared."""
    return "-" if value is None else f"{value:.6g}"


# -- bench --------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """Time the step back to back, then inside a fixed-rate loop."""
    from kinodb.infer import CallableProvider, Runner, load_model

    if not args.rate > 0 or not args.seconds > 0:
        raise ValueError("--rate and --seconds must be positive")
    model = load_model(args.package)
    sig = model.signature
    rng = np.random.default_rng(0)
    pool = [
        {n: rng.normal(size=sig.shape(n)).astype(np.float32) for n in sig.observation_names}
        for _ in range(256)
    ]
    for k in range(200):
        model.step(pool[k % 256])
    times = np.empty(args.steps)
    perf = time.perf_counter
    for k in range(args.steps):
        obs = pool[k % 256]
        t0 = perf()
        model.step(obs)
        times[k] = perf() - t0
    tick = {"k": 0}

    def pick(name: str) -> Any:
        def get(*_: Any) -> Any:
            return pool[tick["k"] % 256][name]

        return get

    def advance(names: Any, action: Any) -> None:
        tick["k"] += 1

    provider = CallableProvider(**{n: pick(n) for n in sig.observation_names}, take_action=advance)
    stats = Runner(model, provider, rate_hz=args.rate, duration_s=args.seconds).run()
    us = times * 1e6
    out: dict[str, Any] = {
        "package": model.path, "providers": list(model.providers),
        "back_to_back_us": {"steps": args.steps, "p50": float(np.percentile(us, 50)),
                            "p99": float(np.percentile(us, 99)), "max": float(us.max())},
        "loop": {"rate_hz": args.rate, "seconds": args.seconds, "steps": stats["steps"],
                 "duration_s": stats["duration_s"], "stopped_by": stats["stopped_by"],
                 "step_latency_us": stats["step_latency_us"], "tick_lateness_us": stats["tick_lateness_us"],
                 "overruns": stats["overruns"], "skipped_ticks": stats["skipped_ticks"]},
    }  # fmt: skip
    _print_bench(out, args)
    if stats["stopped_by"] == "interrupt":
        # The runner ends only its loop on Ctrl-C; the command ends as any interrupted one (130).
        raise KeyboardInterrupt
    return 0


def _print_bench(out: dict[str, Any], args: argparse.Namespace) -> None:
    """The bench results as JSON or text; a loop that Ctrl-C cut short is said to be."""
    if args.json:
        print(json.dumps(out, indent=2))
        return
    b, lp = out["back_to_back_us"], out["loop"]
    print(f"{out['package']} ({', '.join(out['providers'])})")
    print(f"step, back to back ({args.steps} steps):      p50 {b['p50']:8.1f} us   p99 {b['p99']:8.1f} us")
    s, late = lp["step_latency_us"], lp["tick_lateness_us"]
    print(
        f"step, in a {args.rate:g} Hz loop ({lp['steps']} steps): p50 {_us(s['p50'])} us   p99 {_us(s['p99'])} us"
    )
    print(f"tick lateness:                          p50 {_us(late['p50'])} us   p99 {_us(late['p99'])} us   "
          f"overruns {lp['overruns']}, skipped {lp['skipped_ticks']}")  # fmt: skip
    if lp["stopped_by"] == "interrupt":
        print(f"the loop was stopped early by Ctrl-C: {lp['duration_s']:.2f} s of {args.seconds:g} s")


def _us(value: float | None) -> str:
    """A latency for the text table: '-' where no tick ran."""
    return f"{'-':>8}" if value is None else f"{value:8.1f}"


# -- plot ---------------------------------------------------------------------------------

PANELS = (
    ("joint_angles", "joint angles"),
    ("joint_angular_velocities", "joint velocities"),
    ("projected_gravity", "projected gravity"),
    ("accelerometer", "accelerometer"),
    ("gyroscope", "gyroscope"),
    ("command", "command"),
    ("output", "output (action)"),
)


def run_plot(args: argparse.Namespace) -> int:
    """Draw joints, commands, IMU, outputs and a step-latency histogram to a PNG."""
    from kinodb._optional import require
    from kinodb.infer import read_log

    matplotlib = require("matplotlib", extra="plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="plot")
    fmt = _image_format(args.output, require("matplotlib.backend_bases", extra="plot"))
    if not args.force and os.path.lexists(args.output):
        raise FileExistsError(errno.EEXIST, "exists; pass --force to replace it", args.output)
    runs = read_log(args.log)
    if not -len(runs) <= args.run_index < len(runs):
        raise ValueError(f"--run {args.run_index}: {args.log} holds {len(runs)} runs (0..{len(runs) - 1})")
    cols = runs[args.run_index]
    labels = _labels(args.package, cols, args.log)
    t = (
        (cols["t_us"] - cols["t_us"][0]) / 1e6
        if "t_us" in cols
        else np.arange(len(cols["step_id"]), dtype=float)
    )
    keep = t >= args.skip
    if not keep.any():
        raise ValueError(f"--skip {args.skip}: the run lasts only {t[-1]:.3f} s")
    fig, axes = plt.subplots(4, 2, figsize=(14, 14), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS, strict=False):
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        if key not in cols:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            continue
        values = cols[key].reshape(len(t), -1)[keep]
        names = labels.get(key) or _default_names(key, values.shape[1])
        for k in range(values.shape[1]):
            ax.plot(t[keep], values[:, k], lw=0.8, label=names[k] if k < len(names) else str(k))
        if values.shape[1] <= 12:
            ax.legend(fontsize=6, ncol=2, loc="upper right")
    ax = axes.flat[-1]
    ax.set_title("step latency")
    if "step_latency_us" in cols:
        lat = cols["step_latency_us"][keep]
        ax.hist(lat, bins=60)
        p50, p99 = np.percentile(lat, [50, 99])
        ax.axvline(p50, color="k", ls="--", lw=0.8, label=f"p50 {p50:.0f} us")
        ax.axvline(p99, color="r", ls="--", lw=0.8, label=f"p99 {p99:.0f} us")
        ax.set_xlabel("us")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not logged (a kinfer log)", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{os.path.basename(args.log)}: {int(keep.sum())} steps")
    try:
        _save(fig, args.output, fmt, force=args.force)
    finally:
        plt.close(fig)
    print(f"wrote {args.output} ({int(keep.sum())} steps)")
    return 0


def _image_format(output: str, backend_bases: Any) -> str:
    """The image format that ``-o``'s suffix names, checked against what matplotlib writes.

    Raises:
        ValueError: no suffix, a suffix matplotlib cannot write, or a folder (a usage error).
    """
    supported: dict[str, str] = backend_bases.FigureCanvasBase.get_supported_filetypes()
    listed = ", ".join(f".{ext}" for ext in sorted(supported))
    if os.path.isdir(output):
        raise ValueError(f"-o {output}: is a folder; name the image file to write, e.g. "
                         f"{os.path.join(output, 'plot.png')}")  # fmt: skip
    ext = os.path.splitext(output)[1].lstrip(".").lower()
    if not ext:
        raise ValueError(
            f"-o {output}: no suffix to pick the image format from; name the file with one, e.g. "
            f"{output}.png (matplotlib writes {listed})"
        )
    if ext not in supported:
        raise ValueError(f"-o {output}: matplotlib cannot write .{ext} images; use one of {listed}")
    parent = os.path.dirname(output)
    if parent and not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (the folder of -o)", parent)
    return ext


def _save(fig: Any, output: str, fmt: str, *, force: bool) -> None:
    """Write the figure to a temporary file beside ``output``, then publish it in one step.

    Without ``force`` the file is published by a hard link, which fails rather than
    replace a file that appeared meanwhile.
    """
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(output)),
        f".{os.path.basename(output)}.{os.getpid()}.{secrets.token_hex(4)}.tmp",
    )
    try:
        fig.savefig(tmp, dpi=120, format=fmt)
        if force:
            os.replace(tmp, output)
            return
        try:
            os.link(tmp, output)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "exists; pass --force to replace it", output) from None
        except OSError:  # a file system without hard links: the check before drawing must do
            os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _labels(package: str | None, cols: dict[str, Any], log: str) -> dict[str, list[str]]:
    """Joint and command names of ``package`` per panel, checked against the log's widths.

    Raises:
        InferError: the log has another joint or command count than the package.
    """
    if package is None:
        return {}
    from kinodb.infer import InferError, read_package

    pkg = read_package(package)
    joints, commands = list(pkg.joint_names), list(pkg.command_names)
    labels = {
        "joint_angles": joints,
        "joint_angular_velocities": joints,
        "output": joints,
        "command": commands,
    }
    for key, names in labels.items():
        if key not in cols:
            continue
        width = int(np.prod(cols[key].shape[1:], dtype=np.int64))
        if width != len(names):
            what = "commands" if key == "command" else "joints"
            listed = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
            raise InferError(
                f"--package {package} has {len(names)} {what}{listed}, but the log {log} has {width} "
                f"values per step in {key!r}: it was not written by this policy. Pass the package the log "
                "was written with, or leave out --package (entries are then numbered)"
            )
    return labels


def _default_names(key: str, n: int) -> list[str]:
    if key in ("projected_gravity", "accelerometer", "gyroscope") and n == 3:
        return ["x", "y", "z"]
    return [str(k) for k in range(n)]
