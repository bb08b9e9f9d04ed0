"""Percentiles of features holding both -0.0 and +0.0 equal NumPy's (the two zeros are one value)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.stats import compute_stats


def quantiles(col: np.ndarray) -> tuple[float, float]:
    """NumPy's 1st and 99th percentiles of a column's finite values (NaN when it has none)."""
    v = col.astype(np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.nan, np.nan
    q01, q99 = np.quantile(v, [0.01, 0.99])
    return float(q01), float(q99)


def write(path: Path, episodes: list[np.ndarray]) -> Path:
    with kinodb.Writer(path, mode="w") as w:
        for a in episodes:
            w.add_episode(actions=a, fps=10.0)
    return path


def summarise(
    path: Path, *, chunk_frames: int | None = None, select_budget: int = 1 << 21
) -> dict[str, np.ndarray]:
    stats = compute_stats(path, arrays=["actions"], chunk_frames=chunk_frames, select_budget=select_budget)
    entry: dict[str, np.ndarray] = stats["arrays"]["actions"]
    return entry


@pytest.mark.parametrize(
    "values",
    [[1.0, -0.0, 0.0], [-1.0, 0.0, -0.0], [0.0, -0.0, 0.0, 1.0], [-0.0, 0.0], [0.5, -0.0, *[0.0] * 200]],
)
def test_a_feature_holding_both_zeros_gets_numpys_percentiles(tmp_path: Path, values: list[float]) -> None:
    a = np.array(values, np.float32)[:, None]
    entry = summarise(write(tmp_path / "z.kdb", [a]))
    assert (entry["q01"][0], entry["q99"][0]) == quantiles(a[:, 0])


def test_zero_at_a_features_minimum_takes_no_value_of_another_feature(tmp_path: Path) -> None:
    col = np.array([1.0, -0.0, 0.0, 0.0, 0.0, -0.0, 0.0, 0.0, 1.0, -0.0, 0.0, -0.0, 1.0, 1.0,
                    1.0, 0.0, -0.0, -0.0, 0.0, -0.0, 0.0, 1.0, 0.0, -0.0, 1.0, 0.0, 1.0])  # fmt: skip
    other = np.linspace(-5.0, -1.0, len(col))  # every value below the first feature's
    a = np.stack([col, other], axis=1).astype(np.float32)
    entry = summarise(write(tmp_path / "z.kdb", [a]))
    for f in range(2):
        assert (entry["q01"][f], entry["q99"][f]) == quantiles(a[:, f])
    assert entry["q99"][0] == 1.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_signed_zeros_among_other_values_match_numpy(tmp_path: Path, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    pool = np.array([tiny, 0.5, 1e4, np.nan, np.inf])
    D = int(rng.integers(1, 4))
    # Per feature: values of one sign, of the other, or both, so that zero is often an extreme.
    sign = rng.choice([1.0, -1.0, 0.0], D)
    episodes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        T = int(rng.integers(1, 30))
        values = rng.choice(pool, (T, D)) * np.where(sign == 0, rng.choice([1.0, -1.0], (T, D)), sign)
        zeros = rng.choice([0.0, -0.0], (T, D))  # mostly zeros: a percentile often falls on one
        episodes.append(np.where(rng.random((T, D)) < 0.6, zeros, values).astype(dtype))
    x = np.concatenate(episodes)
    path = write(tmp_path / "z.kdb", episodes)
    for chunk, budget in [(None, 1 << 21), (3, 5), (1, 1)]:  # one pass; several; one value at a time
        entry = summarise(path, chunk_frames=chunk, select_budget=budget)
        for f in range(D):
            want = quantiles(x[:, f])
            np.testing.assert_array_equal([entry["q01"][f], entry["q99"][f]], want, err_msg=f"feature {f}")
