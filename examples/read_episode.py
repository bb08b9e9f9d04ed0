"""Open a .kdb file and read from it: the Python side of the demo.

Usage: python examples/read_episode.py PATH
"""

from __future__ import annotations

import sys

import numpy as np

import kinodb


def main(path: str) -> None:
    with kinodb.open(path) as db:
        print(f"{db!r}: {db.num_episodes()} episodes, {db.num_frames()} frames")
        ep = db.read_episode(0)
        print("episode 0 meta:", ep["meta"])
        for name in ("actions", "states", "rewards", "is_terminal"):
            arr = ep[name]
            print(
                f"  {name:<12} {arr.dtype} {arr.shape}  zero-copy read-only view: {not arr.flags.writeable}"
            )
        for cam, frames in ep["images"].items():
            print(f"  image {cam:<6} {frames.dtype} {frames.shape}")
        window = db.read_frames(0, 10, 14, cameras=["front"]) if ep["images"] else db.read_frames(0, 0, 2)
        print(
            "frames 10:14 of episode 0:",
            {k: getattr(v, "shape", None) or {c: f.shape for c, f in v.items()} for k, v in window.items()},
        )
        table = db.episodes()
        good = db.query("success = true AND num_frames > 20")
        print(f"successful episodes longer than 20 frames: {len(good)} of {len(db)}")
        per = {e: int((table["embodiment"] == e).sum()) for e in sorted(set(table["embodiment"]))}
        print("episodes per embodiment:", per)
        total = sum(float(np.abs(db.read_array(i, "actions")).sum()) for i in range(len(db)))
        print(f"sum |actions| over every episode: {total:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo/demo.kdb")
