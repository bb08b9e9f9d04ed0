"""Synthetic robot episodes for demos, tests and benchmarks (`kino create-test`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from kinodb.kdb.writer import Writer

EMBODIMENTS = ("franka", "widowx", "aloha", "ur5")
TASKS = (
    "pick up the red block",
    "open the top drawer",
    "put the cup on the plate",
    "push the button",
    "fold the towel",
    "stack the green block on the blue block",
)
SCENES = ("lab", "kitchen", "sim")
STATE_COMPONENTS = {"joint_pos": [0, 7], "eef_pos": [7, 10], "eef_quat": [10, 14]}
ACTION_COMPONENTS = {"delta_pos": [0, 3], "delta_rot": [3, 6], "gripper": [6, 7]}
STATE_DIM, ACTION_DIM = 14, 7


def _frames(states: np.ndarray, size: int, hue: int) -> np.ndarray:
    """A moving square over a gradient, driven by the end-effector position."""
    T = len(states)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.empty((size, size, 3), np.uint8)
    base[..., 0] = (xx * 255 // max(size - 1, 1)).astype(np.uint8)
    base[..., 1] = (yy * 255 // max(size - 1, 1)).astype(np.uint8)
    base[..., 2] = hue
    frames = np.repeat(base[None], T, axis=0)
    side = max(size // 4, 1)
    angle = 2 * np.pi * np.arange(T) / T + hue
    circle = np.stack([np.sin(angle), np.cos(angle)], axis=1) * 0.35
    pos = np.clip((0.5 + circle + 0.1 * np.tanh(states[:, 7:9])) * (size - side), 0, size - side)
    for t, (py, px) in enumerate(pos.astype(int)):
        frames[t, py : py + side, px : px + side] = (255, 255 - 4 * (t % 64), 0)
    return frames


def episodes(
    n: int, frames: int, *, images: bool = False, seed: int = 0, image_size: int = 64
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` keyword dicts for `Writer.add_episode`, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        T = frames
        steps = rng.normal(0, 0.02, (T, STATE_DIM)).astype(np.float32)
        states = np.cumsum(steps, axis=0) + rng.normal(0, 0.5, STATE_DIM).astype(np.float32)
        actions = np.empty((T, ACTION_DIM), np.float32)
        actions[:-1, :6] = np.diff(states[:, 7:13], axis=0)
        actions[-1, :6] = 0
        actions[:, 6] = (np.arange(T) >= T * 2 // 3).astype(np.float32)
        success = None if i % 7 == 6 else bool(rng.random() < 0.7)
        rewards = np.zeros(T, np.float32)
        if success:
            rewards[-1] = 1.0
        ep: dict[str, Any] = {
            "actions": actions,
            "states": states,
            "rewards": rewards,
            "timestamps": np.arange(T, dtype=np.float64) / 10.0,
            "embodiment": EMBODIMENTS[i % len(EMBODIMENTS)],
            "task": TASKS[(i // len(EMBODIMENTS)) % len(TASKS)],
            "fps": 10.0,
            "success": success,
            "extra": {
                "scene": SCENES[int(rng.integers(len(SCENES)))],
                "operator": f"op{int(rng.integers(1, 4))}",
                "split": "val" if i % 10 == 9 else "train",
            },
        }
        if images:
            ep["images"] = {
                "front": _frames(states, image_size, 40 * (i % 6)),
                "wrist": _frames(states[::-1].copy(), image_size, 255 - 40 * (i % 6)),
            }
        yield ep


def create_test(
    path: str | os.PathLike[str],
    n: int = 10,
    frames: int = 50,
    *,
    images: bool = False,
    compress: int | None = None,
    seed: int = 0,
    mode: str = "x",
) -> int:
    """Write a synthetic dataset; return the number of episodes.

    Images are stored raw unless ``compress`` gives a JPEG quality (1-100).
    """
    if n < 1 or frames < 1:
        raise ValueError(f"need at least one episode and one frame, got n={n}, frames={frames}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    codec = "raw" if compress is None else "jpeg"
    schema = {
        "states": {"components": STATE_COMPONENTS},
        "actions": {"components": ACTION_COMPONENTS},
    }
    with Writer(path, mode=mode, image_codec=codec, jpeg_quality=compress or 95, schema=schema,
                source_format="synthetic", metadata={"generator": "kinodb.synthetic", "seed": seed}) as w:  # fmt: skip
        for ep in episodes(n, frames, images=images, seed=seed):
            w.add_episode(**ep)
    return n
