"""Feature statistics the way LeRobot v3.0 stores them: per episode, then aggregated.

Every feature gets ``min``, ``max``, ``mean``, ``std``, ``count`` and the quantiles
``q01 q10 q50 q90 q99``. Arrays are reduced over frames (one value per element); camera
frames per channel, scaled to [0, 1], with shape (C, 1, 1), over a subsample of frames
(as LeRobot's ``compute_stats`` does: 100 to 10,000 frames, downsampled to about 150 px),
counted into a 256-bin histogram per channel as they are decoded (`ImageStats`), which
gives exactly what NumPy gives over all of them at once without holding them. The
dataset stats combine the episodes' with count weights (LeRobot's ``aggregate_stats``):
mean and std exactly, quantiles as count-weighted means; `Running` combines them one
episode at a time, holding a few arrays per feature however many episodes there are.

The reductions are LeRobot's; not every value is. An array's ``min``, ``max``, ``mean``,
``std`` and ``count`` agree with LeRobot 0.4.4's ``compute_episode_stats`` to 1e-6, but the
quantiles are NumPy's linear ones (``np.quantile``), where LeRobot 0.4.4 interpolates in a
5000-bin histogram (``RunningQuantileStats``): they can differ by up to about the gap
between neighbouring values, noticeably on short episodes (12 to 30 frames), little on
long ones. A camera's ``std`` is the true one; LeRobot 0.4.4 squares uint8 pixels in uint8
(``batch**2`` overflows), so its own is wrong.

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
    with np.errstate(invalid="ignore"):  # a signalling NaN's cast flags it; the NaN is left out below
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
    dev = np.where(ok, zeroed - np.where(has, mean, 0.0), 0.0)  # no arithmetic on a (signalling) NaN
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


_HISTOGRAM_VALUES = 1 << 20  # pixel values counted at a time (an 8 MiB index array)


class ImageStats:
    """Per-channel stats of uint8 ``(n, H, W, C)`` frames added a few at a time.

    Each channel's values are counted into 256 bins, from which `result` gives exactly
    what `array_stats` gives over all the frames at once (min, max, mean and the
    quantiles bit for bit; std correctly rounded from exact integer sums, where NumPy's
    differs in the last bits by its order of summation), in memory that does not grow
    with the frames.
    """

    def __init__(self) -> None:
        self._hist: np.ndarray | None = None  # (C, 256) int64
        self._frames = 0

    def add(self, frames: np.ndarray) -> None:
        """Count ``frames`` (sampled and downsampled already)."""
        if frames.dtype != np.uint8:
            raise TypeError(f"camera frames must be uint8, got {frames.dtype}")
        channels = frames.shape[-1]
        if self._hist is None:
            self._hist = np.zeros((channels, 256), np.int64)
        per_frame = max(int(np.prod(frames.shape[1:])), 1)
        step = max(_HISTOGRAM_VALUES // per_frame, 1)
        offsets = np.arange(channels, dtype=np.uint16) * 256  # channel c counts into bins c*256 ...
        for start in range(0, len(frames), step):
            values = frames[start : start + step].reshape(-1, channels) + offsets
            self._hist += np.bincount(values.reshape(-1), minlength=256 * channels).reshape(channels, 256)
        self._frames += len(frames)

    def result(self) -> Stats:
        """The stats, scaled to [0, 1], each of shape (C, 1, 1); ``count`` is the frames.

        Raises:
            ValueError: no frames were added.
        """
        if self._hist is None or not self._frames:
            raise ValueError("no frames to compute image statistics of")
        hist = self._hist
        n = int(hist[0].sum())  # values per channel
        levels = np.arange(256, dtype=np.int64)
        nonzero = hist > 0
        low = nonzero.argmax(axis=1)
        high = 255 - nonzero[:, ::-1].argmax(axis=1)
        sums = [int(x) for x in hist @ levels]
        squares = [int(x) for x in hist @ (levels * levels)]
        mean = np.array(sums, np.float64) / n  # exact sums: NumPy's float sums of uint8 are too
        var = np.array([(n * sq - sm * sm) / (n * n) for sm, sq in zip(sums, squares, strict=True)])
        stats: Stats = {
            "min": low.astype(np.float64),
            "max": high.astype(np.float64),
            "mean": mean,
            "std": np.sqrt(var),
        }
        stats.update(zip(QUANTILES, _histogram_quantiles(hist, n), strict=True))
        out: Stats = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in stats.items()}
        out["count"] = np.array([self._frames], np.int64)
        return out


def _histogram_quantiles(hist: np.ndarray, n: int) -> np.ndarray:
    """``np.quantile(values, QUANTILES, axis=0)`` (method ``linear``) of the values that
    ``hist`` (C, 256) counts per channel, ``n`` per channel: the same index arithmetic and
    the same interpolation, with the sorted values read off the cumulative counts."""
    q = np.array(list(QUANTILES.values()))
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1  # the last value, as NumPy takes it
    previous[above] = following[above] = -1
    previous[virtual < 0] = following[virtual < 0] = 0
    prev_i, next_i = previous.astype(np.intp), following.astype(np.intp)
    gamma = (virtual - prev_i).reshape(-1, 1)
    cumulative = np.cumsum(hist, axis=1)

    def sorted_at(index: np.ndarray) -> np.ndarray:  # (len(q), C): the index-th smallest value
        index = np.where(index < 0, n + index, index)
        found = [np.searchsorted(c, index, side="right") for c in cumulative]
        return np.stack(found, axis=1).astype(np.float64)

    a, b = sorted_at(prev_i), sorted_at(next_i)
    diff = b - a
    out: np.ndarray = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=np.broadcast_to(gamma >= 0.5, out.shape))
    return out


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of uint8 ``(n, H, W, C)`` frames, scaled to [0, 1], shape (C, 1, 1).

    ``frames`` are the sampled frames, already downsampled (see `ImageStats` to add them
    a few at a time).
    """
    acc = ImageStats()
    acc.add(frames)
    return acc.result()


class Running:
    """One feature's dataset stats, combined from its episodes' stats one episode at a time.

    What LeRobot's ``aggregate_stats`` computes over every episode's stats at once, in
    memory that does not grow with the episodes: running sums of the count-weighted means
    and quantiles, in episode order (as NumPy sums a stack of them, except for a feature of
    one element, which NumPy sums pairwise: equal up to rounding), and the variance from
    the episodes' variances and the spread of their means around the running mean (West's
    weighted update), equal to the two-pass result up to rounding. Each episode weighs by
    its frames, or per element by its finite values where it had non-finite ones
    (`FiniteStats`); an element with no finite value anywhere gets NaN.
    """

    def __init__(self) -> None:
        self._frames = 0
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None
        # Per element: the weight so far, the weighted sums of the means, variances and
        # quantiles, the running weighted mean of the means and their squared deviations.
        self._sums: dict[str, np.ndarray] = {}

    def add(self, stats: Stats) -> None:
        """Take one episode's stats into account."""
        count = int(stats["count"][0])
        mean = np.asarray(stats["mean"], np.float64)
        if isinstance(stats, FiniteStats):
            w = stats.finite.astype(np.float64)
        else:
            w = np.full(mean.shape, float(count))
        has = w > 0
        if self._lo is None or self._hi is None:
            self._lo, self._hi = stats["min"].copy(), stats["max"].copy()
            keys = ("weight", "mean", "var", *QUANTILES, "centre", "spread")
            self._sums = {k: np.zeros(mean.shape) for k in keys}
        else:
            self._lo = np.fmin(self._lo, stats["min"])  # fmin: NaN only where every episode's is
            self._hi = np.fmax(self._hi, stats["max"])
        sums = self._sums
        with np.errstate(invalid="ignore", over="ignore"):  # elements without values are masked out
            sums["mean"] = sums["mean"] + np.where(has, mean * w, 0.0)
            sums["var"] = sums["var"] + np.where(has, np.asarray(stats["std"], np.float64) ** 2 * w, 0.0)
            for key in QUANTILES:
                sums[key] = sums[key] + np.where(has, np.asarray(stats[key], np.float64) * w, 0.0)
            before, after = sums["weight"], sums["weight"] + w
            delta = np.where(has, mean - sums["centre"], 0.0)
            step = np.divide(delta * w, after, out=np.zeros(mean.shape), where=has)
        sums["centre"] = sums["centre"] + step
        sums["spread"] = sums["spread"] + before * delta * step
        sums["weight"] = after
        self._frames += count

    def result(self) -> Stats:
        """The dataset stats (LeRobot's ``aggregate_stats``, leaving non-finite values out).

        Raises:
            ValueError: no episode was added.
        """
        if self._lo is None or self._hi is None:
            raise ValueError("no episode statistics to combine")
        sums = self._sums
        total = sums["weight"]
        has = total > 0

        def weighted(v: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.divide(v, total, out=np.full(total.shape, np.nan), where=has)
            return out

        out: Stats = {
            "min": self._lo.copy(),
            "max": self._hi.copy(),
            "mean": weighted(sums["mean"]),
            "std": np.sqrt(weighted(sums["var"] + sums["spread"])),
            "count": np.array([self._frames], np.int64),
        }
        for key in QUANTILES:
            out[key] = weighted(sums[key])
        return out


def aggregate(episodes: Sequence[Stats]) -> Stats:
    """Combine one feature's per-episode stats into dataset stats (see `Running`)."""
    running = Running()
    for stats in episodes:
        running.add(stats)
    return running.result()


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
