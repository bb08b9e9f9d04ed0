"""Feature statistics the way LeRobot v3.0 stores them: per episode, then aggregated.

Every feature gets ``min``, ``max``, ``mean``, ``std``, ``count`` and the quantiles
``q01 q10 q50 q90 q99``. Arrays are reduced over frames (one value per element); camera
frames per channel, scaled to [0, 1], with shape (C, 1, 1), over a subsample of frames
(as LeRobot's ``compute_stats`` does: 100 to 10,000 frames, downsampled to about 150 px).
The dataset stats combine the episodes' with count weights (LeRobot's ``aggregate_stats``):
mean and std exactly, quantiles as count-weighted means.

Non-finite values (NaN, +-inf) are left out of every statistic, as ``kino stats`` leaves
them out: an element's statistics are over its finite values, and the dataset stats weight
each episode by the finite values it had of that element (``count`` stays the number of
frames, as LeRobot counts). An element with no finite value in an episode has NaN stats
in that episode's row of the episodes table (Parquet holds NaN); one with none in the
whole dataset gets ``null`` in ``meta/stats.json``, which stays strict JSON (no ``NaN``
or ``Infinity`` tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
Stats = dict[str, np.ndarray]


class FiniteStats(dict[str, np.ndarray]):
    """Stats of an array that held non-finite values; ``finite`` counts each element's finite
    values. An attribute, not an item: the items are what gets written."""

    finite: np.ndarray


def array_stats(values: np.ndarray) -> Stats:
    """Stats of a ``(T, *shape)`` array over its frames; each stat has ``shape``.

    ``min`` and ``max`` keep the array's dtype (bools and integers stay exact). Non-finite
    values are left out (a `FiniteStats` then).
    """
    as_float = values.astype(np.float64, copy=False)
    if values.dtype.kind == "f" and len(values):
        finite = np.isfinite(as_float)
        if not finite.all():
            return _finite_stats(values, as_float, finite)
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


def _finite_stats(values: np.ndarray, as_float: np.ndarray, finite: np.ndarray) -> FiniteStats:
    """`array_stats` over the finite values of each element; NaN where an element has none.

    Computed with masks rather than NumPy's nan-functions, which warn on such elements.
    """
    T, shape = len(values), values.shape[1:]
    x, ok = as_float.reshape(T, -1), finite.reshape(T, -1)
    n = ok.sum(axis=0)
    has = n > 0
    zeroed = np.where(ok, x, 0.0)
    mean = np.divide(zeroed.sum(axis=0), n, out=np.full(len(n), np.nan), where=has)
    dev = np.where(ok, x - np.where(has, mean, 0.0), 0.0)
    var = np.divide((dev * dev).sum(axis=0), n, out=np.full(len(n), np.nan), where=has)
    lo = np.where(ok, x, np.inf).min(axis=0)
    hi = np.where(ok, x, -np.inf).max(axis=0)
    out = FiniteStats(
        min=np.where(has, lo, np.nan).astype(values.dtype).reshape(shape),
        max=np.where(has, hi, np.nan).astype(values.dtype).reshape(shape),
        mean=mean.reshape(shape),
        std=np.sqrt(var).reshape(shape),
        count=np.array([T], np.int64),
    )
    qs = np.full((len(QUANTILES), len(n)), np.nan)
    for f in np.flatnonzero(has).tolist():  # per element: each has its own finite values
        qs[:, f] = np.quantile(x[ok[:, f], f], list(QUANTILES.values()))
    out.update(zip(QUANTILES, (q.reshape(shape) for q in qs), strict=True))
    out.finite = n.reshape(shape)
    return out


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
    """Combine one feature's per-episode stats into dataset stats.

    Each episode weighs by its frames, or per element by its finite values where it had
    non-finite ones (`FiniteStats`); an element with no finite value anywhere gets NaN.
    """
    counts = np.array([int(s["count"][0]) for s in episodes], np.float64)
    frames = counts.sum()
    means = np.stack([s["mean"] for s in episodes])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    if any(isinstance(s, FiniteStats) for s in episodes):
        return _aggregate_finite(episodes, means, w, int(frames))
    mean = (means * w).sum(axis=0) / frames
    variances = np.stack([s["std"] for s in episodes]) ** 2
    var = ((variances + (means - mean) ** 2) * w).sum(axis=0) / frames
    out: Stats = {
        "min": np.stack([s["min"] for s in episodes]).min(axis=0),
        "max": np.stack([s["max"] for s in episodes]).max(axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(frames)], np.int64),
    }
    for key in QUANTILES:
        out[key] = (np.stack([s[key] for s in episodes]) * w).sum(axis=0) / frames
    return out


def _aggregate_finite(episodes: Sequence[Stats], means: np.ndarray, w: np.ndarray, frames: int) -> Stats:
    """`aggregate` weighting each episode's element by its finite values (0 where it had none)."""
    weights = np.stack([
        s.finite.astype(np.float64) if isinstance(s, FiniteStats) else np.broadcast_to(c, means.shape[1:])
        for s, c in zip(episodes, w, strict=True)
    ])  # fmt: skip
    total = weights.sum(axis=0)
    has = total > 0

    def weighted(v: np.ndarray) -> np.ndarray:  # episodes without values of an element weigh 0
        parts = np.where(weights > 0, v * weights, 0.0).sum(axis=0)
        out: np.ndarray = np.divide(parts, total, out=np.full(total.shape, np.nan), where=has)
        return out

    mean = weighted(means)
    centred = np.where(has, mean, 0.0)
    variances = np.stack([s["std"] for s in episodes]) ** 2
    out: Stats = {
        "min": np.fmin.reduce(np.stack([s["min"] for s in episodes]), axis=0),  # fmin: NaN only if all are
        "max": np.fmax.reduce(np.stack([s["max"] for s in episodes]), axis=0),
        "mean": mean,
        "std": np.sqrt(weighted(variances + (means - centred) ** 2)),
        "count": np.array([frames], np.int64),
    }
    for key in QUANTILES:
        out[key] = weighted(np.stack([s[key] for s in episodes]))
    return out


def to_lists(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    """Stats as nested Python lists for ``meta/stats.json``: non-finite values (an element
    with no finite value at all) become None, so the file stays strict JSON."""
    return {feature: {k: _json_list(v) for k, v in s.items()} for feature, s in stats.items()}


def _json_list(v: np.ndarray) -> Any:
    values = v.tolist()
    if v.dtype.kind != "f" or np.isfinite(v).all():
        return values

    def clean(x: Any) -> Any:
        return [clean(e) for e in x] if isinstance(x, list) else (x if math.isfinite(x) else None)

    return clean(values)
