"""Write a small Push-T-like zarr replay buffer, laid out as diffusion_policy's ``ReplayBuffer``.

``data/`` holds one array per key with one row per frame (a 96x96 camera ``img``, the
agent and block pose ``state``, ``keypoint``, ``n_contacts``, the 2-D ``action``) and
``meta/episode_ends`` the exclusive end row of each episode: what
``pusht_cchi_v7_replay.zarr`` holds. ``kino ingest OUT -o pusht.kdb`` reads it.

Usage: python examples/pusht_zarr.py OUT.zarr [--episodes N]   (zarr 3's API; it writes zarr format 2)
"""

from __future__ import annotations

import argparse

import numpy as np
import zarr


def frames(agent: np.ndarray, block: np.ndarray) -> np.ndarray:
    """96x96 RGB frames: a grey T block and a blue agent disc on a white table."""
    yy, xx = np.mgrid[0:96, 0:96]
    out = np.full((len(agent), 96, 96, 3), 255, np.uint8)
    for t, ((ax, ay), (bx, by, _)) in enumerate(zip(agent, block[:, :3], strict=True)):
        bar = (np.abs(xx - bx) < 14) & (np.abs(yy - by) < 4)
        stem = (np.abs(xx - bx) < 4) & (yy - by >= 4) & (yy - by < 24)
        out[t][bar | stem] = (119, 136, 153)
        out[t][(xx - ax) ** 2 + (yy - ay) ** 2 < 16] = (65, 105, 225)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--episodes", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keys: dict[str, list[np.ndarray]] = {
        "img": [],
        "state": [],
        "keypoint": [],
        "n_contacts": [],
        "action": [],
    }
    ends, total = [], 0
    for _ in range(args.episodes):
        T = int(rng.integers(40, 80))
        target = rng.uniform(20, 76, 2)
        agent = np.cumsum(rng.normal(0, 1.5, (T, 2)), axis=0) + rng.uniform(20, 76, 2)
        agent = np.clip(agent + np.linspace(0, 1, T)[:, None] * (target - agent[0]), 0, 95)
        block = np.c_[np.linspace(rng.uniform(30, 66), 48, T), np.linspace(rng.uniform(30, 66), 40, T),
                      np.linspace(0, rng.uniform(-1, 1), T)]  # fmt: skip
        keys["img"].append(frames(agent, block))
        keys["state"].append(np.c_[agent, block].astype(np.float32))
        keys["keypoint"].append((block[:, None, :2] + rng.normal(0, 4, (T, 9, 2))).astype(np.float32))
        keys["n_contacts"].append(rng.integers(0, 3, (T, 1)).astype(np.float32))
        keys["action"].append(np.clip(agent + rng.normal(0, 2, (T, 2)), 0, 95).astype(np.float32))
        total += T
        ends.append(total)
    root = zarr.open_group(args.out, mode="w", zarr_format=2)  # the format diffusion_policy (zarr 2) writes
    data = root.require_group("data")
    for name, parts in keys.items():
        value = np.concatenate(parts)
        chunks = (161, *value.shape[1:]) if name == "img" else value.shape  # as the Push-T file chunks them
        data.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)[...] = value
    meta = root.require_group("meta")
    meta.create_array("episode_ends", shape=(len(ends),), dtype=np.int64, compressors=None)[...] = ends
    print(f"wrote {args.out}: {len(ends)} episodes, {total} frames; data/ {', '.join(sorted(keys))}")


if __name__ == "__main__":
    main()
