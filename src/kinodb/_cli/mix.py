"""``kino mix``: describe a weighted mixture of ``.kdb`` files and an epoch drawn from it."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import numpy as np

from kinodb._cli._types import non_negative_int
from kinodb.mixture import DEFAULT_SEED, Mixture


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "mix",
        help="inspect a weighted mixture of .kdb files",
        description="Describe a weighted mixture: per source the kept episodes and frames, the weight, "
        "and the effective share counted in episodes and in frames. Nothing is written.",
    )
    p.add_argument("-s", "--source", action="append", required=True, metavar="PATH[:WEIGHT]",
                   help="a source and its relative weight (default 1), after the last colon; repeat per source")  # fmt: skip
    p.add_argument(
        "--filter", metavar="KQL", help="keep only the episodes matching this query, in every source"
    )
    p.add_argument("--weight-by", choices=("episode", "frame"), default="episode",
                   help="what the shares count (default: episode)")  # fmt: skip
    p.add_argument(
        "--seed", type=non_negative_int, default=DEFAULT_SEED, help=f"seed (default: {DEFAULT_SEED})"
    )
    p.add_argument("--sample", type=non_negative_int, metavar="N",
                   help="also draw weighted_epoch(N) and show what it holds per source")  # fmt: skip
    p.add_argument("--epoch", type=non_negative_int, metavar="E",
                   help="epoch number of the --sample draw (default: 0)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def parse_source(text: str) -> tuple[str, float]:
    """Split ``PATH[:WEIGHT]`` on the last colon; a path that exists as given wins.

    Raises:
        ValueError: the text after the colon is not a positive finite number.
    """
    path, sep, tail = text.rpartition(":")
    if not (sep and path):
        return text, 1.0
    try:
        weight = float(tail)
    except ValueError:
        if os.path.exists(text):  # a colon inside the file name, no weight
            return text, 1.0
        raise ValueError(f"--source {text!r}: {tail!r} is not a weight; expected PATH[:WEIGHT]") from None
    if os.path.exists(text) and not os.path.exists(path):
        return text, 1.0
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"--source {text!r}: the weight must be a positive finite number, got {tail!r}")
    return path, weight


def run(args: argparse.Namespace) -> int:
    """Build the mixture, print its sources and, with ``--sample``, one epoch's make-up."""
    if args.epoch is not None and args.sample is None:
        raise ValueError("--epoch numbers the --sample draw: add --sample N or leave --epoch out")
    entries = [(*parse_source(text), args.filter) for text in args.source]
    with Mixture(entries, seed=args.seed, weight_by=args.weight_by) as mix:
        out: dict[str, Any] = {
            "weight_by": mix.weight_by, "seed": mix.seed, "filter": args.filter,
            "episodes": mix.num_episodes(), "frames": mix.num_frames(),
            "sources": [
                {"index": s.index, "path": s.path, "episodes": s.episodes, "frames": s.frames,
                 "weight": s.weight, "share": s.share, "episode_share": s.episode_share,
                 "frame_share": s.frame_share}
                for s in mix.sources()
            ],
        }  # fmt: skip
        if args.sample is not None:
            out["sample"] = _observe(mix, args.sample, args.epoch or 0)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(out)
    return 0


def _observe(mix: Mixture, n: int, epoch: int) -> dict[str, Any]:
    """What ``weighted_epoch(n, epoch_index=epoch)`` holds per source."""
    pairs = mix.weighted_epoch(n, epoch_index=epoch)
    rows: list[dict[str, Any]] = []
    for i in range(mix.num_sources()):
        positions = pairs[pairs[:, 0] == i, 1]
        lengths = np.asarray(mix.database(i)._int_columns()["num_frames"], dtype=np.int64)
        rows.append({"source": i, "draws": len(positions), "distinct_episodes": len(np.unique(positions)),
                     "frames": int(lengths[positions].sum())})  # fmt: skip
    frames = sum(r["frames"] for r in rows)
    for r in rows:
        r["fraction"] = r["draws"] / n if n else 0.0
        r["frame_fraction"] = r["frames"] / frames if frames else 0.0
    return {"method": "weighted_epoch", "n": n, "epoch_index": epoch, "by_source": rows}


def _print(out: dict[str, Any]) -> None:
    print(
        f"mixture of {len(out['sources'])} sources, weighted by {out['weight_by']}, seed {out['seed']}: "
        f"{out['episodes']} episodes, {out['frames']} frames kept"
    )
    if out["filter"]:
        print(f"filter: {out['filter']}")
    print(
        f"\n{'#':>3}  {'EPISODES':>8}  {'FRAMES':>8}  {'WEIGHT':>8}  {'EPISODE SHARE':>13}  {'FRAME SHARE':>11}  SOURCE"
    )
    for s in out["sources"]:
        print(f"{s['index']:>3}  {s['episodes']:>8}  {s['frames']:>8}  {s['weight']:>8g}  "
              f"{100 * s['episode_share']:>12.1f}%  {100 * s['frame_share']:>10.1f}%  {s['path']}")  # fmt: skip
    sample = out.get("sample")
    if sample is None:
        return
    print(
        f"\nweighted_epoch({sample['n']}), epoch {sample['epoch_index']}: stratified per-source counts, "
        "each source cycled without replacement;\nFRAMES READ counts every drawn episode whole"
    )
    if out["weight_by"] == "frame":
        print("(each draw stands for one frame of its source, so DRAWS % follows FRAME SHARE)")
    print(f"{'#':>3}  {'DRAWS':>8}  {'DRAWS %':>7}  {'DISTINCT':>8}  {'FRAMES READ':>11}  {'%':>6}  SOURCE")
    for r, s in zip(sample["by_source"], out["sources"], strict=True):
        print(f"{r['source']:>3}  {r['draws']:>8}  {100 * r['fraction']:>6.1f}%  {r['distinct_episodes']:>8}  "
              f"{r['frames']:>11}  {100 * r['frame_fraction']:>5.1f}%  {s['path']}")  # fmt: skip
