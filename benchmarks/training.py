#!/usr/bin/env python
"""End-to-end training with the data loading inside the timed loop: kinodb against the native loaders.

Two deterministic sets (benchmarks/_data.py), each in its native form and in ``.kdb``:

- PushT-like: one 96x96 camera, state 2, action 2, 200 episodes of ~150 frames. Native:
  LeRobot v3.0 with mp4 video (kinodb's LeRobot exporter), read by ``LeRobotDataset``
  (lerobot 0.4.4, pyav video backend).
- LIBERO-like: two 128x128 cameras, state 9, action 7, 100 episodes of ~120 frames.
  Native: robomimic/LIBERO HDF5 with raw uint8 frames, read by robomimic's
  ``SequenceDataset`` (robomimic 0.3.0).

Both native forms are ingested into ``.kdb`` three times: with PNG frames and with raw
frames (both lossless: the very frames the peer returns; raw needs no decoding), and with
JPEG frames (lossy, a speed row). All are read by ``kinodb.torch.KinoFrameDataset``.

Every loader serves the same windows (observation history 2, action chunk 8,
edge-padded, ``action_is_pad`` masks), float32 images in [0, 1] at the stored size, in
the same seeded order (one `FixedOrder` sampler per run), through the same DataLoader
settings. Before anything is timed, the first batches of the native loader and of each
lossless ``.kdb`` loader are compared tensor by tensor and must be bit-identical. Each
run then trains an MLP, CNN or ViT policy (benchmarks/_policies.py) for a few epochs
from seed 42, 123 or 456, timing dataset construction (``init_s``), every wait for a
batch (``data_s``) and forward/backward/step (``compute_s``). The losses of the native
and lossless ``.kdb`` runs of the same dataset, policy and seed must be identical; the
run fails otherwise and reports the largest difference.

Run ``.venv-bench/bin/python benchmarks/training.py`` (``--quick`` for a one-minute
check; ``--kinodb-only`` without the peers; ``bash benchmarks/setup_peers.sh`` builds
``.venv-bench``). See docs/benchmarks-training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _data  # noqa: E402
import _peers  # noqa: E402
import _training_support as ts  # noqa: E402
import kinodb  # noqa: E402
from _policies import POLICIES, PolicyShape  # noqa: E402

WINDOWS = {"obs_horizon": 2, "action_horizon": 8}
DATASETS = ("pusht", "libero")
NATIVE = {"pusht": "lerobot", "libero": "robomimic"}


@dataclass(frozen=True)
class Preset:
    """Set sizes ``{name: (episodes, mean frames)}`` and the training length of a run."""

    sizes: dict[str, tuple[int, int]]
    epochs: int
    samples: int
    batch_size: int


FULL = Preset({"pusht": (200, 150), "libero": (100, 120)}, epochs=3, samples=768, batch_size=64)
QUICK = Preset({"pusht": (8, 40), "libero": (6, 40)}, epochs=2, samples=64, batch_size=16)


def build_set(name: str, data_dir: Path, quick: bool) -> Any:
    """The set's paths (native form, PNG and JPEG ``.kdb``), built and cached by _data."""
    episodes, frames = (QUICK if quick else FULL).sizes[name]
    if name == "pusht":
        return _data.pusht_like(data_dir, episodes=episodes, frames=frames)
    return _data.libero_like(data_dir, episodes=episodes, frames=frames)


def shape_of(paths: Any) -> PolicyShape:
    spec = paths.spec
    return PolicyShape(spec.state_dim, spec.action_dim, WINDOWS["obs_horizon"], WINDOWS["action_horizon"],
                       tuple(spec.cameras), spec.image_size)  # fmt: skip


def machine() -> dict[str, Any]:
    """Versions and machine facts for the record."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "numpy": np.__version__, "kinodb": kinodb.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }  # fmt: skip
    info.update(_peers.available())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                            text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


# -- running -----------------------------------------------------------------------------------


def check_exact(
    loaders: list[ts.LoaderSpec], shape: PolicyShape, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Compare the first batches of every kinodb loader with the native one's (before timing)."""
    native = [spec for spec in loaders if spec.native]
    out: dict[str, Any] = {}
    if not native:
        return out
    order = ts.FixedOrder(n, args.check_batches * args.batch_size, args.seeds[0])
    for spec in loaders:
        if spec.native:
            continue
        problems, worst = ts.compare_loaders(native[0], spec, shape.cameras, order, args.batch_size,
                                             args.check_batches)  # fmt: skip
        out[spec.name] = {"batches": args.check_batches, "identical": not problems, "max_abs_diff": worst}
        verdict = "bit-identical" if not problems else f"differs (max abs {worst:.3g})"
        print(
            f"  check {spec.name} vs {native[0].name}: first {args.check_batches} batches {verdict}",
            flush=True,
        )
        if spec.exact and problems:
            for line in problems[:10]:
                print(f"  MISMATCH {line}", file=sys.stderr)
            raise SystemExit(
                f"{spec.name} does not yield the same tensors as {native[0].name}; nothing was timed"
            )
    return out


def run_dataset(
    name: str, args: argparse.Namespace, peers: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every run of one set: warm the page cache, check the tensors, then seeds x policies x loaders."""
    paths = build_set(name, args.data_dir, args.quick)
    shape = shape_of(paths)
    windows = _peers.Windows(WINDOWS["obs_horizon"], WINDOWS["action_horizon"], shape.cameras, None)
    raw = None if args.no_raw else ts.raw_kdb(paths, args.data_dir)
    loaders = ts.loaders_for(paths, windows, peers=peers, robomimic_cache=args.robomimic_cache,
                             decode_threads=args.decode_threads, raw=raw, uint8=args.uint8_frames)  # fmt: skip
    warmed = ts.warm_files([spec.path for spec in loaders])
    for spec in loaders:  # one untimed construction each: builds any cache a peer keeps on disk
        ts.close(spec.make())
    n = len(next(spec for spec in loaders if spec.name == "kinodb-png").make())
    norm = ts.normalization(paths.kdb_png)
    print(f"[{name}] {paths.spec.episodes} episodes, {n} windows; loaders: {', '.join(s.name for s in loaders)}; "
          f"page cache warmed with {warmed / 1e6:.0f} MB", flush=True)  # fmt: skip
    info = {"windows": n, "episodes": paths.spec.episodes, "spec": asdict(paths.spec), "warmed_bytes": warmed,
            "root": str(paths.root), "loaders": {s.name: {"form": s.form, "path": str(s.path)} for s in loaders},
            "exactness_check": check_exact(loaders, shape, n, args)}  # fmt: skip
    cfg = ts.RunConfig(args.epochs, args.samples, args.batch_size, args.workers, torch.device(args.device))
    records = []
    k = 0
    for seed in args.seeds:
        for policy in args.policies:
            if seed == args.seeds[0]:
                ts.warm_up(policy, shape, args.batch_size, cfg.device)
            k += 1
            for spec in loaders[k % len(loaders) :] + loaders[: k % len(loaders)]:  # rotate who goes first
                r = ts.train_run(spec, shape, policy, seed, norm, n, cfg)
                rec = {"dataset": name, "policy": policy, "loader": spec.name, "seed": seed, **r,
                       "native": spec.native, "form": spec.form, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                       "samples_per_epoch": min(cfg.samples, n), "workers": cfg.workers, "device": args.device,
                       "threads": args.threads, "frames": spec.frames}  # fmt: skip
                records.append(rec)
                print(f"  {name:6} {policy:3} seed {seed:3} {spec.name:11} init {r['init_s']:7.3f}s "
                      f"data {r['data_s']:7.2f}s compute {r['compute_s']:7.2f}s total {r['total_s']:7.2f}s "
                      f"loss {r['epoch_losses'][-1]:.5f}", flush=True)  # fmt: skip
    return records, info


# -- checks and summary ------------------------------------------------------------------------


def loss_checks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, policy, seed and kinodb loader: the largest step-loss difference to the native run."""
    native = {(r["dataset"], r["policy"], r["seed"]): r for r in records if r["native"]}
    out = []
    for r in records:
        ref = native.get((r["dataset"], r["policy"], r["seed"]))
        if r["native"] or ref is None:
            continue
        a, b = np.asarray(ref["step_losses"]), np.asarray(r["step_losses"])
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
        out.append({"dataset": r["dataset"], "policy": r["policy"], "seed": r["seed"], "loader": r["loader"],
                    "native": ref["loader"], "identical": a.shape == b.shape and bool(np.array_equal(a, b)),
                    "max_abs_diff": diff, "must_match": r["loader"] != "kinodb-jpeg"})  # fmt: skip
    return out


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, policy and kinodb loader: speedups over the native run of the same seed."""
    by = {(r["dataset"], r["policy"], r["loader"], r["seed"]): r for r in records}
    out = []
    for ds, pol, loader in sorted(
        {(r["dataset"], r["policy"], r["loader"]) for r in records if not r["native"]}
    ):
        seeds = sorted(
            r["seed"] for r in records if (r["dataset"], r["policy"], r["loader"]) == (ds, pol, loader)
        )
        mine = [by[(ds, pol, loader, s)] for s in seeds]
        row: dict[str, Any] = {"dataset": ds, "policy": pol, "loader": loader, "seeds": seeds,
                               "kinodb_total_s": statistics.median(r["total_s"] for r in mine),
                               "kinodb_data_share": statistics.median(r["data_s"] / r["total_s"] for r in mine),
                               "kinodb_loss": mine[0]["epoch_losses"][-1]}  # fmt: skip
        keys = [(ds, pol, NATIVE[ds], s) for s in seeds]
        if all(k in by for k in keys):
            nat = [by[k] for k in keys]
            ratio = {k: [n[k] / m[k] for n, m in zip(nat, mine, strict=True)]
                     for k in ("init_s", "data_s", "total_s", "total_cpu_s")}  # fmt: skip

            def spread(xs: list[float]) -> float:
                return statistics.stdev(xs) if len(xs) > 1 else 0.0

            row.update(native=NATIVE[ds], native_total_s=statistics.median(n["total_s"] for n in nat),
                       native_data_share=statistics.median(n["data_s"] / n["total_s"] for n in nat),
                       native_loss=nat[0]["epoch_losses"][-1],
                       init_speedup_median=statistics.median(ratio["init_s"]),
                       data_speedup_mean=statistics.fmean(ratio["data_s"]), data_speedup_std=spread(ratio["data_s"]),
                       total_speedup_mean=statistics.fmean(ratio["total_s"]),
                       total_speedup_std=spread(ratio["total_s"]), total_speedups=ratio["total_s"],
                       total_cpu_speedup_mean=statistics.fmean(ratio["total_cpu_s"]),
                       total_cpu_speedup_std=spread(ratio["total_cpu_s"]))  # fmt: skip
        out.append(row)
    return out


def table(summary: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The markdown table of the summary."""
    worst: dict[tuple[str, str, str], float] = {}
    for c in checks:
        key = (c["dataset"], c["policy"], c["loader"])
        worst[key] = max(worst.get(key, 0.0), c["max_abs_diff"])
    head = ("| dataset | policy | loader | native | init speedup | data speedup | total speedup | "
            "total speedup (CPU time) | total native -> kinodb | data share native -> kinodb | loss native / kinodb | max abs loss diff |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary:
        if "native" not in r:
            lines.append(f"| {r['dataset']} | {r['policy']} | {r['loader']} | – | – | – | – | – | "
                         f"– -> {r['kinodb_total_s']:.1f} s | – -> {r['kinodb_data_share']:.0%} | "
                         f"– / {r['kinodb_loss']:.5f} | – |")  # fmt: skip
            continue
        diff = worst.get((r["dataset"], r["policy"], r["loader"]), float("nan"))
        lines.append(
            f"| {r['dataset']} | {r['policy']} | {r['loader']} | {r['native']} | {r['init_speedup_median']:.0f}x | "
            f"{r['data_speedup_mean']:.1f}x ± {r['data_speedup_std']:.1f} | "
            f"{r['total_speedup_mean']:.1f}x ± {r['total_speedup_std']:.1f} | "
            f"{r['total_cpu_speedup_mean']:.1f}x ± {r['total_cpu_speedup_std']:.1f} | "
            f"{r['native_total_s']:.1f} s -> {r['kinodb_total_s']:.1f} s | "
            f"{r['native_data_share']:.0%} -> {r['kinodb_data_share']:.0%} | "
            f"{r['native_loss']:.5f} / {r['kinodb_loss']:.5f} | {diff:.3g} |"
        )
    return "\n".join(lines)


def targets(summary: list[dict[str, Any]]) -> list[str]:
    """Whether the MLP rows meet the stated targets (>= 8x total, >= 20x data), as lines."""
    out = []
    for r in summary:
        if r["policy"] != "mlp" or "native" not in r:
            continue
        ok = r["total_speedup_mean"] >= 8 and r["data_speedup_mean"] >= 20
        out.append(f"{r['dataset']} mlp {r['loader']} vs {r['native']}: total {r['total_speedup_mean']:.1f}x (target 8x), "
                   f"data {r['data_speedup_mean']:.1f}x (target 20x): {'met' if ok else 'MISSED'}")  # fmt: skip
    return out


# -- plots -------------------------------------------------------------------------------------


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``training_time_split.png`` (median init/data/compute per loader) and ``training_loss_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in records)]
    policies = [p for p in POLICIES if any(r["policy"] == p for r in records)]
    loaders = [
        lo
        for lo in ("lerobot", "robomimic", "kinodb-png", "kinodb-raw", "kinodb-jpeg")
        if any(r["loader"] == lo for r in records)
    ]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        labels, parts = [], []
        for pol in policies:
            for lo in loaders:
                rs = [r for r in records if (r["dataset"], r["policy"], r["loader"]) == (ds, pol, lo)]
                if rs:
                    labels.append(f"{pol} {lo}")
                    parts.append(
                        [statistics.median(r[k] for r in rs) for k in ("init_s", "data_s", "compute_s")]
                    )
        y = np.arange(len(labels))[::-1]
        left = np.zeros(len(labels))
        for k, (name, color) in enumerate((("init", "#999999"), ("data", "#d62728"), ("compute", "#1f77b4"))):
            vals = np.array([p[k] for p in parts])
            ax.barh(y, vals, left=left, color=color, label=name, height=0.7)
            left += vals
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel("seconds (median over seeds)", fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    split = out_dir / "training_time_split.png"
    fig.savefig(split, dpi=80)
    plt.close(fig)
    seed = min(r["seed"] for r in records)
    fig, axes = plt.subplots(len(datasets), len(policies), figsize=(3.0 * len(policies), 2.3 * len(datasets)),
                             squeeze=False)  # fmt: skip
    styles = {
        "lerobot": ("-", 3.0),
        "robomimic": ("-", 3.0),
        "kinodb-png": ("--", 1.2),
        "kinodb-raw": ("-.", 1.2),
        "kinodb-jpeg": (":", 1.2),
    }
    for i, ds in enumerate(datasets):
        for j, pol in enumerate(policies):
            ax = axes[i][j]
            for lo in loaders:
                rs = [
                    r
                    for r in records
                    if (r["dataset"], r["policy"], r["loader"], r["seed"]) == (ds, pol, lo, seed)
                ]
                if rs:
                    ls, lw = styles[lo]
                    ax.plot(rs[0]["step_losses"], ls, lw=lw, label=lo, alpha=0.9 if lw < 2 else 0.45)
            ax.set_title(f"{ds} {pol} (seed {seed})", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("step", fontsize=8)
    fig.tight_layout()
    curves = out_dir / "training_loss_curves.png"
    fig.savefig(curves, dpi=70)
    plt.close(fig)
    return [split, curves]


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="tiny sets, one seed, two short epochs (about a minute)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: benchmarks/results/training.json, training_quick.json with --quick)",
    )
    p.add_argument("--data-dir", type=Path, default=_data.DEFAULT_DATA_DIR)
    p.add_argument("--device", default="cpu", help="torch device for the policies (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for every run (default 1: on a small shared machine more "
                        "intra-op threads mostly add OpenMP barrier waits and noise)")  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers for every loader")
    p.add_argument(
        "--decode-threads", type=int, default=None, help="kinodb's decode threads (default: its own)"
    )
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default=None, help="comma-separated (default 42,123,456; --quick: 42)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--samples", type=int, default=None, help="windows per epoch (a seeded subset of all windows)"
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--check-batches", type=int, default=3, help="batches compared bit for bit before timing")
    p.add_argument("--robomimic-cache", default="none", choices=("none", "low_dim", "all"),
                   help="robomimic's hdf5_cache_mode (its caching runs in init_s)")  # fmt: skip
    p.add_argument("--no-raw", action="store_true", help="no raw-frame .kdb row")
    p.add_argument("--uint8-frames", action="store_true",
                   help="loaders that can hand frames over as uint8 (robomimic, kinodb) do, and the training "
                        "step makes them float, as robomimic's own training loop does")  # fmt: skip
    p.add_argument("--kinodb-only", action="store_true", help="skip the peers (no speedups, no loss check)")
    p.add_argument("--plots-dir", type=Path, default=None, help="write training_*.png here")
    args = p.parse_args(argv)
    # A smoke run never replaces the recorded full run.
    args.out = args.out or HERE / "results" / f"training{'_quick' if args.quick else ''}.json"
    preset = QUICK if args.quick else FULL
    args.seeds = [int(s) for s in (args.seeds or ("42" if args.quick else "42,123,456")).split(",")]
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.policies = [x for x in args.policies.split(",") if x]
    for key in ("epochs", "samples", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(preset, key))
    args.robomimic_cache = None if args.robomimic_cache == "none" else args.robomimic_cache
    bad = [d for d in args.datasets if d not in DATASETS] + [x for x in args.policies if x not in POLICIES]
    if bad:
        p.error(f"unknown dataset or policy: {', '.join(bad)}")
    return args


def peers_available(args: argparse.Namespace) -> bool:
    if args.kinodb_only:
        print("peers: skipped (--kinodb-only): no native rows, no speedups, no loss-equality check")
        return False
    versions = _peers.available()
    missing = [NATIVE[d] for d in args.datasets if versions[NATIVE[d]] is None]
    if missing:
        print(f"peers: {', '.join(missing)} not importable here (run benchmarks/setup_peers.sh and use "
              f".venv-bench/bin/python); only the kinodb rows run", file=sys.stderr)  # fmt: skip
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ts.configure_determinism(torch.device(args.device), args.threads)
    peers = peers_available(args)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    sets: dict[str, Any] = {}
    for name in args.datasets:
        recs, info = run_dataset(name, args, peers)
        records += recs
        sets[name] = info
    checks = loss_checks(records)
    summary = summarize(records)
    md = table(summary, checks)
    wall_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "quick": args.quick,
        "meta": {"machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "windows": WINDOWS, "page_cache": "warm: every file of every loader read once before a set's runs",
                 "wall_s": wall_s, "command": " ".join([Path(sys.executable).name, *sys.argv])},
        "sets": sets, "runs": records, "loss_checks": checks, "summary": summary, "table": md,
        "targets": targets(summary),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n" + md + "\n")
    for line in result["targets"]:
        print(line)
    if args.plots_dir is not None and records:
        for path in plot(records, args.plots_dir):
            print(f"plot: {path}")
    print(f"results: {args.out} ({len(records)} runs, {wall_s:.0f} s)")
    must = [c for c in checks if c["must_match"]]
    failed = [c for c in must if not c["identical"]]
    if must:
        worst = max(c["max_abs_diff"] for c in must)
        print(f"losses: {len(must) - len(failed)}/{len(must)} native vs lossless kinodb runs identical "
              f"(largest step-loss difference {worst:.3g})")  # fmt: skip
    if failed:
        for c in failed:
            print(f"LOSS MISMATCH {c['dataset']} {c['policy']} seed {c['seed']}: {c['loader']} vs {c['native']} "
                  f"max abs {c['max_abs_diff']:.3g}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
