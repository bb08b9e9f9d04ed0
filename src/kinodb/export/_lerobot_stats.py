"""Feature statistics the way LeRobot v3.0 stores them: per episode, then aggregated.

Every feature gets ``min``, ``max``, ``mean``, ``std``, ``count`` and the quantiles
``q01 q10 q50 q90 q99``. Arrays are reduced over frames (one value per element); camera
frames per channel, scaled to [0, 1], with shape (C, 1, 1), over a subsample of frames
(as LeRobot's ``compute_stats`` does: 100 to 10,000 frames, downsampled to about 150 px).
The dataset stats combine the episodes' with count weights (LeRobot's ``aggregate_stats``):
mean and std exactly, quantiles as count-weighted means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
Stats = dict[str, np.ndarray]


def array_stats(values: np.ndarray) -> Stats:
    """Stats of a ``(T, *shape)`` array over its frames; each stat has ``shape``.

    ``min`` and ``max`` keep the array's dtype (bools and integers stay exact).
    """
    as_float = values.astype(np.float64, copy=False)
    stats: Stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": as_float.mean(axis=0),
        "std": as_float.std(axis=0),
        "count": np.array([len(values)], np.int64),
    }
    qs = np.quantile(as_float, list(QUANTILES.values()), axis=0)
    stats.update(zip(QUANTILES, qs, strict=True))
    return stats


def sample_indices(num_frames: int) -> np.ndarray:
    """The frames LeRobot samples for image stats: evenly spaced, 100 to 10,000 of them."""
    wanted = max(min(100, num_frames), min(int(num_frames**0.75), 10_000))
    return np.unique(np.round(np.linspace(0, num_frames - 1, wanted)).astype(np.int64))


def downsample(frames: np.ndarray) -> np.ndarray:
    """``(n, H, W, C)`` frames strided down to about 150 px when larger than 300 px.

    A strided result is a copy: callers keep the samples of a whole episode, and a view
    would keep every full-size frame it was cut from alive with it.
    """
    h, w = frames.shape[1:3]
    if max(h, w) < 300:
        return frames
    step = int(max(h, w) / 150)
    return np.ascontiguousarray(frames[:, ::step, ::step])


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of uint8 ``(n, H, W, C)`` frames, scaled to [0, 1], shape (C, 1, 1).

    ``frames`` are the sampled frames, already downsampled.
    """
    per_channel = frames.reshape(-1, frames.shape[-1])
    stats = array_stats(per_channel)
    out: Stats = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in stats.items() if k != "count"}
    out["count"] = np.array([len(frames)], np.int64)
    return out


def aggregate(episodes: Sequence[Stats]) -> Stats:
    """Combine one feature's per-episode stats into dataset stats."""
    counts = np.array([int(s["count"][0]) for s in episodes], np.float64)
    total = counts.sum()
    means = np.stack([s["mean"] for s in episodes])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * w).sum(axis=0) / total
    variances = np.stack([s["std"] for s in episodes]) ** 2
    var = ((variances + (means - mean) ** 2) * w).sum(axis=0) / total
    out: Stats = {
        "min": np.stack([s["min"] for s in episodes]).min(axis=0),
        "max": np.stack([s["max"] for s in episodes]).max(axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], np.int64),
    }
    for key in QUANTILES:
        out[key] = (np.stack([s[key] for s in episodes]) * w).sum(axis=0) / total
    return out


def to_lists(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    """Stats as nested Python lists, as ``meta/stats.json`` and the episodes table hold them."""
    return {feature: {k: v.tolist() for k, v in s.items()} for feature, s in stats.items()}
