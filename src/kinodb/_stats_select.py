"""Streaming per-feature moments and exact percentiles by selection, for `kinodb.stats`.

`Moments` keeps each feature's count, mean, M2 (Chan's parallel update), minimum and
maximum over chunks of float64 values. `Selector` finds exact order statistics over the
bit patterns of the values (order-preserving unsigned keys, one for both zeros): each pass counts the values
of each feature in equal ranges of keys around the wanted ranks and keeps the ranges that
hold them, until they are few enough to collect and sort in memory (see `kinodb.stats`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_BINS", "Moments", "Selector"]

MAX_BINS = 4096
_SIGN = np.uint64(1 << 63)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]


# -- moments ------------------------------------------------------------------------------


_BIG_EXP = 480  # values scaled below 2**480: squares summed over 2**60 frames stay finite
_BIG = 2.0**_BIG_EXP


class Moments:
    """Per-feature count, mean, M2, min and max of the finite values seen so far."""

    def __init__(self, features: int) -> None:
        self.count: I64 = np.zeros(features, np.int64)
        self.mean: F64 = np.zeros(features)
        self.m2: F64 = np.zeros(features)
        self.lo: F64 = np.full(features, np.inf)
        self.hi: F64 = np.full(features, -np.inf)
        self.exp: I64 = np.zeros(features, np.int64)  # mean and M2 are held scaled by 2**-exp
        self.nonfinite = 0

    def values(self) -> tuple[F64, F64]:
        """Per-feature mean and (population) std of the finite values; NaN where there were none."""
        empty = self.count == 0
        mean = np.where(empty, np.nan, np.ldexp(self.mean, self.exp))
        var = np.divide(self.m2, self.count, out=np.full_like(self.m2, np.nan), where=~empty)
        return mean, np.ldexp(np.sqrt(var), self.exp)

    def update(self, x: F64) -> None:
        """Merge the chunk ``x`` (``(n, features)``) into the running moments (Chan et al.)."""
        finite = np.isfinite(x)
        n_b = finite.sum(axis=0)
        clean = n_b.sum() == x.size
        if clean:
            lo_b, hi_b = x.min(axis=0), x.max(axis=0)
        else:
            self.nonfinite += int(x.size - n_b.sum())
            lo_b, hi_b = np.where(finite, x, np.inf).min(axis=0), np.where(finite, x, -np.inf).max(axis=0)
        self.lo, self.hi = np.minimum(self.lo, lo_b), np.maximum(self.hi, hi_b)
        exp = self._rescale(np.maximum(np.abs(lo_b), np.abs(hi_b)))
        if exp is not None:  # sums of these values would overflow: work on them scaled by 2**-exp
            x = np.ldexp(x, -exp)
        if clean:
            mean_b = x.mean(axis=0)
            dev = x - mean_b
        else:
            mean_b = np.divide(
                np.where(finite, x, 0.0).sum(axis=0), n_b, out=np.zeros(x.shape[1]), where=n_b > 0
            )
            dev = np.where(finite, x - mean_b, 0.0)
        m2_b = np.einsum("ij,ij->j", dev, dev)
        n = self.count + n_b
        w = np.divide(n_b, n, out=np.zeros(len(n)), where=n > 0)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * w
        self.m2 = self.m2 + m2_b + delta * delta * self.count * w
        self.count = n

    def _rescale(self, magnitude: F64) -> I64 | None:
        """The scale exponents for a chunk whose finite values reach ``magnitude`` per feature
        (inf where a feature had none), the running moments brought to them; None while no
        value comes near overflowing a sum of squares (every feature then stays unscaled,
        so ordinary data gets exactly NumPy's moments)."""
        big = np.isfinite(magnitude) & (magnitude >= _BIG)
        if not big.any() and not self.exp.any():
            return None
        need = np.where(big, np.frexp(np.where(big, magnitude, 1.0))[1] - _BIG_EXP, 0)
        exp = np.maximum(self.exp, need)
        shift = self.exp - exp  # <= 0: earlier moments scaled down to the new exponents
        self.mean, self.m2, self.exp = np.ldexp(self.mean, shift), np.ldexp(self.m2, 2 * shift), exp
        return exp


# -- exact percentiles by selection -------------------------------------------------------


def _to_keys(x: F64) -> U64:
    """Unsigned keys that sort like the float64 values, equal values sharing a key.

    A positive value gets its bits with the sign bit set; a negative one the two's
    complement of its bits (``-u`` modulo 2**64: the bits flipped, plus one), so that -0.0
    gets the key of +0.0. The two zeros must share a key: NumPy's min and max return either
    (the ranges are keyed from them) and ``np.quantile`` treats them as one value.
    """
    u = np.ascontiguousarray(x, np.float64).view(np.uint64)
    out: U64 = np.where((u & _SIGN) != 0, -u, u | _SIGN)
    return out


def _from_keys(k: U64) -> F64:
    """The float64 values of keys from `_to_keys` (a zero comes back as +0.0)."""
    u = np.where((k & _SIGN) != 0, k & ~_SIGN, -k).astype(np.uint64)
    return u.view(np.float64)


def _lerp(a: F64, b: F64, t: F64) -> F64:
    """Linear interpolation exactly as ``np.quantile(method="linear")`` computes it."""
    d = b - a
    out: F64 = np.where(t >= 0.5, b - d * (1 - t), a + d * t)
    return out


class Selector:
    """Find given order statistics of every feature in a few passes with bounded memory.

    Each target (a feature and a rank) keeps a half-open range of keys ``[lo, hi)`` known to
    hold it, how many finite values lie below ``lo`` and how many inside. A pass either
    counts the values of a wide range into ``bins`` sub-ranges (then keeps the one holding
    the rank) or, once a range holds at most ``limit`` values, collects and sorts them.
    """

    def __init__(self, moments: Moments, quantiles: tuple[float, ...], budget: int) -> None:
        n = moments.count
        F, Q = len(n), len(quantiles)
        h = np.asarray(quantiles, np.float64)[None, :] * (n[:, None] - 1).astype(np.float64)
        k = np.floor(h)
        self.frac: F64 = h - k
        k = np.maximum(k, 0).astype(np.int64)
        # Targets: for each quantile, the order statistics floor(h) and the next (clipped).
        self.rank: I64 = np.stack([k, np.minimum(k + 1, np.maximum(n[:, None] - 1, 0))], axis=2).reshape(
            F, 2 * Q
        )
        R = 2 * Q
        lo_key = _to_keys(np.where(n > 0, moments.lo, 0.0))
        hi_key = _to_keys(np.where(n > 0, moments.hi, 0.0)) + np.uint64(1)
        self.lo: U64 = np.repeat(lo_key[:, None], R, axis=1)
        self.hi: U64 = np.repeat(hi_key[:, None], R, axis=1)
        self.below: I64 = np.zeros((F, R), np.int64)
        self.inside: I64 = np.repeat(n[:, None], R, axis=1)
        self.done = (n[:, None] == 0) | (self.hi - self.lo == 1)
        self.key: U64 = self.lo.copy()
        self.empty = n == 0
        self.limit = max(1, budget // (F * R))
        self.bins = int(min(MAX_BINS, max(16, budget // (F * R))))
        self.passes = 0
        self._begin()

    def finished(self) -> bool:
        return bool(self.done.all())

    def _begin(self) -> None:
        self.counting = ~self.done & (self.inside > self.limit)
        self.collecting = ~self.done & ~self.counting
        B = np.uint64(self.bins)
        self.width: U64 = (self.hi - self.lo + B - np.uint64(1)) // B
        self.hist = np.zeros((self.lo.shape[1], self.lo.shape[0] * self.bins), np.int64)
        self.found: list[list[tuple[NDArray[np.int32], U64]]] = [[] for _ in range(self.lo.shape[1])]
        # Targets whose ranges match an earlier target's for every feature share its pass work
        # (all do on the first pass; the two order statistics of one quantile usually do).
        self.same = list(range(self.lo.shape[1]))
        for r in range(1, len(self.same)):
            for s in range(r):
                if all(
                    np.array_equal(a[:, r], a[:, s])
                    for a in (self.lo, self.hi, self.counting, self.collecting)
                ):
                    self.same[r] = s
                    break

    def update(self, x: F64) -> None:
        """Count or collect the chunk's values in every open range."""
        keys = _to_keys(x)
        F = x.shape[1]
        for r in range(self.lo.shape[1]):
            counting, collecting = self.counting[:, r], self.collecting[:, r]
            if self.same[r] != r or not (counting.any() or collecting.any()):
                continue
            # Non-finite keys sort outside every range (ranges lie within [min, max] of the
            # finite values), so one unsigned comparison tests lo <= key < hi.
            offset = keys - self.lo[:, r]
            inside = offset < self.hi[:, r] - self.lo[:, r]
            if counting.any():
                rows, cols = np.nonzero(inside & counting)
                b = offset[rows, cols] // self.width[cols, r]
                flat = cols * self.bins + b.astype(np.int64)
                self.hist[r] += np.bincount(flat, minlength=F * self.bins)
            if collecting.any():
                rows, cols = np.nonzero(inside & collecting)
                self.found[r].append((cols.astype(np.int32), keys[rows, cols]))

    def end_pass(self) -> None:
        """Narrow the counted ranges, settle the collected ones, and prepare the next pass."""
        F = self.lo.shape[0]
        for r in range(self.lo.shape[1]):
            f = np.flatnonzero(self.counting[:, r])
            if len(f):
                self._narrow(r, f, self.hist[self.same[r]].reshape(F, self.bins)[f])
            f = np.flatnonzero(self.collecting[:, r])
            if len(f):
                self._settle(r, f, self.found[self.same[r]])
        self.passes += 1
        self._begin()

    def _narrow(self, r: int, f: I64, hist: I64) -> None:
        cum = np.cumsum(hist, axis=1)
        need = self.rank[f, r] - self.below[f, r]
        j = (cum <= need[:, None]).sum(axis=1)
        rows = np.arange(len(f))
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
        lo = self.lo[f, r] + j.astype(np.uint64) * self.width[f, r]
        self.hi[f, r] = np.minimum(lo + self.width[f, r], self.hi[f, r])
        self.lo[f, r] = lo
        self.below[f, r] += before
        self.inside[f, r] = hist[rows, j]
        single = self.hi[f, r] - lo == 1  # one key left: that value is the answer
        self.key[f[single], r] = lo[single]
        self.done[f[single], r] = True

    def _settle(self, r: int, f: I64, found: list[tuple[NDArray[np.int32], U64]]) -> None:
        cols = np.concatenate([c for c, _ in found]) if found else np.zeros(0, np.int32)
        keys = np.concatenate([k for _, k in found]) if found else np.zeros(0, np.uint64)
        order = np.lexsort((keys, cols))
        cols, keys = cols[order], keys[order]
        start = np.searchsorted(cols, f)
        self.key[f, r] = keys[start + self.rank[f, r] - self.below[f, r]]
        self.done[f, r] = True

    def values(self) -> F64:
        """The quantiles, ``(features, len(quantiles))``; NaN for features without finite values."""
        v = _from_keys(self.key)
        a, b = v[:, 0::2], v[:, 1::2]
        out = _lerp(a, b, self.frac)
        out[self.empty] = np.nan
        return out
