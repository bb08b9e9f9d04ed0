"""`compute_stats` equals NumPy over the concatenated arrays, whatever the chunking."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb.stats import compute_stats


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """NumPy's statistics of each feature (column) over its finite values."""
    x = x.astype(np.float64).reshape(len(x), -1)
    out: dict[str, list[float]] = {k: [] for k in ("mean", "std", "min", "max", "q01", "q99")}
    for col in x.T:
        v = col[np.isfinite(col)]
        if not len(v):
            for k in out:
                out[k].append(np.nan)
            continue
        q01, q99 = np.quantile(v, [0.01, 0.99])
        for k, value in zip(out, (v.mean(), v.std(), v.min(), v.max(), q01, q99), strict=True):
            out[k].append(value)
    return {k: np.array(v) for k, v in out.items()}


def check(entry: dict[str, Any], x: np.ndarray) -> None:
    want = reference(x)
    for key in ("mean", "std"):
        np.testing.assert_allclose(entry[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
    for key in ("min", "max", "q01", "q99"):  # exact: selection, not estimation
        np.testing.assert_array_equal(entry[key], want[key], err_msg=key)
    assert entry["nonfinite"] == int((~np.isfinite(x)).sum())
    assert entry["count"] == len(x)


def write(path: Path, episodes: list[dict[str, Any]]) -> Path:
    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        for ep in episodes:
            w.add_episode(**ep)
    return path


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int, int]:
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=8))
    adim, sdim = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    discrete = draw(st.booleans())  # few distinct values: many ties at the percentiles
    holes = draw(st.booleans())
    rng = np.random.default_rng(seed)
    eps = []
    for T in lengths:
        if discrete:
            acts = rng.integers(-2, 3, (T, adim)).astype(np.float32)
        else:
            acts = (rng.standard_cauchy((T, adim)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
        states = rng.normal(size=(T, sdim)).astype(np.float32)
        if holes:
            acts[rng.random((T, adim)) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
        eps.append({
            "actions": acts, "states": states, "rewards": rng.random(T).astype(np.float32),
            "extra_arrays": {"grip": rng.normal(size=(T, 2, 2)).astype(np.float16)},
        })  # fmt: skip
    chunk = draw(st.integers(1, 100))
    budget = draw(st.sampled_from([1, 7, 64, 1000, 1 << 21]))
    return eps, chunk, budget


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_stats_equal_numpy_over_the_concatenated_arrays(case: tuple[list[dict[str, Any]], int, int]) -> None:
    eps, chunk, budget = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "d.kdb", eps)
        with kinodb.open(path) as db:
            stats = compute_stats(db, chunk_frames=chunk, select_budget=budget)
    assert stats["num_frames"] == sum(len(ep["actions"]) for ep in eps)
    assert sorted(stats["arrays"]) == ["actions", "grip", "rewards", "states"]
    for name in ("actions", "states", "rewards"):
        check(stats["arrays"][name], np.concatenate([ep[name] for ep in eps]))
    grip = np.concatenate([ep["extra_arrays"]["grip"] for ep in eps])
    check(stats["arrays"]["grip"], grip)
    assert stats["arrays"]["grip"]["shape"] == [2, 2] and stats["arrays"]["grip"]["dtype"] == "float16"


def test_large_data_takes_the_multi_pass_path_and_stays_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    eps = [{"actions": rng.standard_cauchy((500, 3)).astype(np.float32)} for _ in range(40)]
    eps[7]["actions"][:, 1] = 0.25  # a spike of ties
    path = write(tmp_path / "big.kdb", eps)
    calls: list[int] = []
    from kinodb import stats as stats_module

    real = stats_module._Selector.end_pass

    def counted(self: Any) -> None:
        calls.append(1)
        real(self)

    stats_module._Selector.end_pass = counted  # type: ignore[method-assign]
    try:
        stats = compute_stats(path, arrays=["actions"], chunk_frames=1234, select_budget=512)
    finally:
        stats_module._Selector.end_pass = real  # type: ignore[method-assign]
    assert len(calls) >= 2  # the data (20,000 values a feature) is far above the budget
    check(stats["arrays"]["actions"], np.concatenate([ep["actions"] for ep in eps]))


def test_an_episode_longer_than_a_chunk_is_read_in_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    eps = [{"actions": rng.normal(size=(T, 2)).astype(np.float32)} for T in (3, 250, 1, 40)]
    path = write(tmp_path / "d.kdb", eps)
    stats = compute_stats(path, arrays=["actions"], chunk_frames=16)
    check(stats["arrays"]["actions"], np.concatenate([ep["actions"] for ep in eps]))


def test_non_float_and_non_feature_arrays_are_listed_as_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    eps = [{
        "actions": rng.normal(size=(5, 2)).astype(np.float32), "timestamps": np.arange(5) / 10.0,
        "extra_arrays": {"count": np.arange(5, dtype=np.int64), "flag": np.ones(5, bool)},
    }]  # fmt: skip
    path = write(tmp_path / "d.kdb", eps)
    stats = compute_stats(path)
    assert sorted(stats["arrays"]) == ["actions"]  # no rewards given: the writer's placeholder
    skipped = stats["skipped"]
    assert "placeholder" in skipped["rewards"]
    assert "not floating point" in skipped["count"] and "int64" in skipped["count"]
    assert "bool" in skipped["flag"] and "bool" in skipped["is_terminal"]
    assert "timestamps" in skipped["timestamps"] and "--arrays timestamps" in skipped["timestamps"]
    assert "no features" in skipped["states"]  # no states given: (T, 0)
    named = compute_stats(path, arrays=["timestamps"])
    check(named["arrays"]["timestamps"], eps[0]["timestamps"])
    assert list(named["arrays"]) == ["timestamps"] and named["skipped"] == {}


def test_arrays_that_vary_between_episodes_are_skipped_with_the_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    eps = [
        {
            "actions": rng.normal(size=(4, 2)).astype(np.float32),
            "extra_arrays": {"e": np.zeros((4, 3), np.float32)},
        },
        {
            "actions": rng.normal(size=(4, 3)).astype(np.float32),
            "extra_arrays": {"e": np.zeros((4, 5), np.float32)},
        },
        {"actions": rng.normal(size=(4, 3)).astype(np.float32)},
    ]
    path = write(tmp_path / "d.kdb", eps)
    stats = compute_stats(path)
    assert "shape varies" in stats["skipped"]["actions"]
    assert "shape varies" in stats["skipped"]["e"]


def test_an_array_absent_from_some_episodes_is_skipped(tmp_path: Path) -> None:
    eps = [
        {"actions": np.zeros((4, 2), np.float32), "extra_arrays": {"e": np.ones((4, 3), np.float32)}},
        {"actions": np.ones((4, 2), np.float32)},
    ]
    stats = compute_stats(write(tmp_path / "d.kdb", eps))
    assert "cannot be read as one array" in stats["skipped"]["e"] and "'e'" in stats["skipped"]["e"]
    check(stats["arrays"]["actions"], np.concatenate([ep["actions"] for ep in eps]))


def test_a_feature_without_finite_values_has_nan_statistics(tmp_path: Path) -> None:
    acts = np.array([[1.0, np.nan], [2.0, np.inf], [4.0, -np.inf]], np.float32)
    stats = compute_stats(write(tmp_path / "d.kdb", [{"actions": acts}]), arrays=["actions"])
    entry = stats["arrays"]["actions"]
    for key in ("mean", "std", "min", "max", "q01", "q99"):
        assert np.isfinite(entry[key][0]) and np.isnan(entry[key][1]), key
    assert entry["nonfinite"] == 3


@pytest.mark.parametrize("chunk", [1, 2, 4096])
def test_finite_values_near_the_float64_limit_keep_finite_moments(tmp_path: Path, chunk: int) -> None:
    # Sums of such values overflow; the moments are taken on the values scaled by a power of two.
    col0 = [1.0, 2.0, 1e308, 1.5e308, -1e308, 3.0]
    acts = np.array([[v, v / 1e300, 1.0] for v in col0], np.float64)
    eps = [{"actions": acts[k : k + 2]} for k in range(0, 6, 2)]
    entry = compute_stats(write(tmp_path / "d.kdb", eps), arrays=["actions"], chunk_frames=chunk)["arrays"][
        "actions"
    ]
    scaled = acts[:, 0] / 2.0**600
    assert entry["mean"][0] == pytest.approx(scaled.mean() * 2.0**600, rel=1e-12)
    assert entry["std"][0] == pytest.approx(scaled.std() * 2.0**600, rel=1e-12)
    assert (entry["min"][0], entry["max"][0], entry["nonfinite"]) == (-1e308, 1.5e308, 0)
    for f in (1, 2):  # features of ordinary size keep NumPy's moments exactly
        assert entry["mean"][f] == acts[:, f].mean() and entry["std"][f] == acts[:, f].std()


def test_unknown_array_names_raise(tmp_path: Path) -> None:
    path = write(tmp_path / "d.kdb", [{"actions": np.zeros((2, 2), np.float32)}])
    with pytest.raises(ValueError, match=r"no array 'nope'.*actions"):
        compute_stats(path, arrays=["nope"])
    with pytest.raises(ValueError, match="chunk_frames"):
        compute_stats(path, chunk_frames=0)


def test_legacy_files_can_be_summarised(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    eps = [random_episode(rng, T, 3, 2) for T in (5, 9, 2)]
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    stats = compute_stats(path, chunk_frames=4)
    check(stats["arrays"]["actions"], np.concatenate([ep.actions for ep in eps]))
    check(stats["arrays"]["states"], np.concatenate([ep.states for ep in eps]))
    # 0.1 rewards are strided views into interleaved records, gathered through a contiguous copy
    check(stats["arrays"]["rewards"], np.concatenate([ep.rewards for ep in eps]).reshape(-1, 1))
    assert stats["skipped"] == {"is_terminal": "dtype bool is not floating point"}
