"""``kino bench``: a quick synthetic benchmark of ``.kdb`` beside h5py, in a temporary directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kinodb._bench import BenchConfig, run_bench
from kinodb._cli._types import non_negative_int, positive_int


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "bench",
        help="quick synthetic benchmark: write, open, reads, metadata, KQL, windows (h5py alongside)",
        description=(
            "Write synthetic episodes as .kdb and as robomimic-layout HDF5 (when h5py is installed) "
            "in a temporary directory, time each operation (median of --repeats runs), print the "
            "table and the ratios, and remove the directory. The episodes are held in memory, so a "
            "size that needs more memory or temporary space than is free is refused before it "
            "starts. For the full comparison use benchmarks/bench_core.py."
        ),
    )
    p.add_argument("-n", "--num-episodes", type=positive_int, default=500, help="episodes (default: 500)")
    p.add_argument("-f", "--frames", type=positive_int, default=50, help="frames per episode (default: 50)")
    p.add_argument("--images", action="store_true", help="add two raw 64x64 RGB cameras and an image read")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per operation (default: 5)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-h5py", action="store_true", help="measure .kdb only")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 if the formats disagree on a result."""
    config = BenchConfig(
        episodes=args.num_episodes,
        frames=args.frames,
        images=args.images,
        repeats=args.repeats,
        seed=args.seed,
    )
    result = run_bench(config, peer=not args.no_h5py)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    bad = [op for op, check in result["checks"].items() if check["equal"] is False]
    if bad:
        print(f"error: .kdb and h5py disagree on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _print_table(result: dict[str, Any]) -> None:
    c, peer = result["config"], result["peer"]
    frames = c["episodes"] * c["frames"]
    print(
        f"kino bench: {_count(c['episodes'], 'episode')} x {_count(c['frames'], 'frame')} "
        f"({_count(frames, 'frame')}), images: {'2 raw 64x64 cameras' if c['images'] else 'none'}; "
        f"median of {_count(c['repeats'], 'run')}"
    )
    has_peer = peer["missing"] is None
    if has_peer:
        print(f"peer: h5py {peer['version']} (robomimic layout, contiguous, uncompressed)")
    else:
        print(f"peer: none ({peer['missing']})")
    head = f"\n{'OPERATION':<13}{'KDB':>11}"
    print(head + (f"{'H5PY':>11}{'H5PY/KDB':>10}" if has_peer else "") + "  WHAT")
    for row in result["rows"]:
        line = f"{row['op']:<13}{_ms(row['kdb']):>11}"
        if has_peer:
            ratio = row["ratio"]
            line += f"{_ms(row['h5py']):>11}{(f'{ratio:.1f}x' if ratio is not None else '-'):>10}"
        print(f"{line}  {row['what']}")
    sizes = result["sizes"]
    mib = 1 << 20
    size = f"\nfile size: .kdb {sizes['kdb'] / mib:.1f} MiB"
    if sizes["h5py"] is not None:
        size += f", HDF5 {sizes['h5py'] / mib:.1f} MiB"
    print(size)
    checked = [op for op, check in result["checks"].items() if check["equal"]]
    if checked:
        print(f"same results from both formats: {', '.join(checked)}")
    if has_peer:
        print("H5PY/KDB above 1 means .kdb is faster.")


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"
