"""``kino schema``: the layout of a dataset, with bytes per section."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

from kinodb.kdb.reader import Database, open_database


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("schema", help="show dims, named components, cameras and bytes per section")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def describe(db: Database) -> dict[str, Any]:
    """Schema plus per-section byte totals, as one JSON-ready dict."""
    sections: dict[str, dict[str, Any]] = defaultdict(lambda: {"bytes": 0, "episodes": 0})
    for i in range(len(db)):
        for name, arr in db._episode_arrays(i).items():
            s = sections[name]
            s.update(kind="array", dtype=arr.dtype.name, shape=["T", *arr.shape[1:]])
            s["bytes"] += arr.nbytes
            s["episodes"] += 1
        for name, cam in db._episode_cameras(i).items():
            s = sections[f"camera:{name}"]
            s.update(kind="camera", codec=cam.codec, shape=["T", *cam.shape[1:]])
            s["bytes"] += int(cam.frame_offsets[-1])
            s["episodes"] += 1
    return {
        "path": db.path(),
        "format_version": db.version(),
        "file_bytes": db._size,
        "num_episodes": len(db),
        "num_frames": db.num_frames(),
        "schema": db.schema(),
        "sections": dict(sections),
    }


def run(args: argparse.Namespace) -> int:
    """Print the schema."""
    with open_database(args.path) as db:
        d = describe(db)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(
        f"{d['path']}: format {d['format_version']}, {d['num_episodes']} episodes, {d['num_frames']} frames, {d['file_bytes']} bytes"
    )
    schema = d["schema"]
    for part in ("actions", "states"):
        entry = schema.get(part, {})
        dim = entry.get("dim", "varies")
        print(f"\n{part}: dim {dim}, {entry.get('dtype', 'varies')}")
        for name, (a, b) in entry.get("components", {}).items():
            print(f"  {name:<24}[{a}:{b}]")
        if entry.get("names"):
            print("  names: " + ", ".join(entry["names"]))
    cams = schema.get("cameras", {})
    if cams:
        print("\ncameras:")
        for name, c in cams.items():
            print(f"  {name:<24}{c.get('height')}x{c.get('width')}x{c.get('channels')} {c.get('codec')}")
    total = sum(s["bytes"] for s in d["sections"].values()) or 1
    print(f"\n{'SECTION':<26}{'KIND':<8}{'DTYPE/CODEC':<13}{'SHAPE':<18}{'BYTES':>14}{'SHARE':>8}")
    for name, s in d["sections"].items():
        shape = "(" + ", ".join(str(x) for x in s["shape"]) + ")"
        kind = s.get("dtype") or s.get("codec")
        print(
            f"{name:<26}{s['kind']:<8}{kind:<13}{shape:<18}{s['bytes']:>14,}{100 * s['bytes'] / total:>7.1f}%"
        )
    return 0
