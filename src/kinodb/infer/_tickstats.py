"""Per-tick times summarised in fixed memory: log-scale histograms, exact count, max and mean.

A control loop can run for hours at 1 kHz; keeping every tick's times for the final
percentiles would grow without bound. Each quantity instead goes into a histogram of
bins 1% wide on a log scale from 1 ns to 1000 s (2,780 counts), updated in about 0.3 us
per value. The count, minimum, maximum and mean are exact. A percentile is taken as
NumPy's default (linear interpolation between the two nearest ranks) over the bins'
geometric midpoints and clamped to [min, max], so it lies within 0.5% of the exact
value (within 1 ns below 1 ns; at or above 1000 s, the maximum stands for the bin).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOOR_S = 1e-9  # values at or below it share the first bin
RATIO = 1.01  # each bin is 1% wider than the last: the midpoint is within 0.5% of anything in it
_LOG_FLOOR = math.log(FLOOR_S)
_INV_LOG_RATIO = 1.0 / math.log(RATIO)
TOP = math.ceil(math.log(1000.0 / FLOOR_S) * _INV_LOG_RATIO) + 1  # the bin of 1000 s and above
QUANTILES = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))


class Histogram:
    """Counts of positive durations in seconds in log-scale bins, with exact count, min, max and sum."""

    __slots__ = ("counts", "high", "low", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (TOP + 1)
        self.n = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, value: float, _log: Any = math.log) -> None:
        """Count one value (seconds)."""
        self.n += 1
        self.total += value
        if value > self.high:
            self.high = value
        if value < self.low:
            self.low = value
        if value > FLOOR_S:
            i = int((_log(value) - _LOG_FLOOR) * _INV_LOG_RATIO) + 1
            if i > TOP:
                i = TOP
        else:
            i = 0
        self.counts[i] += 1

    def summary_us(self) -> dict[str, float | None]:
        """``p50``, ``p99``, ``p99.9``, ``max`` and ``mean`` in microseconds (None when empty)."""
        if not self.n:
            return {"p50": None, "p99": None, "p99.9": None, "max": None, "mean": None}
        out: dict[str, float | None] = {k: self.quantile(q) * 1e6 for k, q in QUANTILES}
        out["max"] = self.high * 1e6
        out["mean"] = self.total / self.n * 1e6
        return out

    def quantile(self, q: float) -> float:
        """The ``q``-th percentile in seconds, as `numpy.percentile` would give it to within 0.5%."""
        cum = np.cumsum(self.counts)
        rank = q / 100.0 * (self.n - 1)
        lo = math.floor(rank)
        frac = rank - lo
        value = self._value(cum, lo)
        if frac:
            value += frac * (self._value(cum, lo + 1) - value)
        return min(max(value, self.low), self.high)

    def _value(self, cum: np.ndarray[Any, Any], k: int) -> float:
        """What stands for the ``k``-th smallest value (0-based): its bin's geometric midpoint."""
        i = int(np.searchsorted(cum, k, side="right"))
        if i == 0:
            return self.low
        if i >= TOP:
            return self.high
        return float(FLOOR_S * RATIO ** (i - 0.5))


class TickStats:
    """The loop's per-tick times: lateness, step latency and work, each a `Histogram`."""

    __slots__ = ("last_end", "latency", "lateness", "work")

    def __init__(self) -> None:
        self.lateness = Histogram()
        self.latency = Histogram()
        self.work = Histogram()
        self.last_end = 0.0  # when the last tick ended, in seconds since the start

    @property
    def steps(self) -> int:
        """Ticks counted."""
        return self.work.n

    def summary(self) -> dict[str, Any]:
        """``steps``, ``duration_s`` and the three summaries in microseconds."""
        return {
            "steps": self.steps,
            "duration_s": self.last_end,
            "step_latency_us": self.latency.summary_us(),
            "tick_lateness_us": self.lateness.summary_us(),
            "tick_work_us": self.work.summary_us(),
        }
