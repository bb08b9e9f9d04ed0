"""LeRobot export statistics and the episodes table: exact, and in memory that does not grow
with the episodes (dataset stats as running totals, rows written as they come) nor with an
episode's frames (camera stats from per-channel histograms)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import _lerobot_stats as stats_
from kinodb.export import export
from kinodb.export import lerobot as lerobot_export

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _peak(run: Callable[[], Any]) -> int:
    """The most memory Python held (tracemalloc: NumPy's buffers included) while ``run`` ran."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _many(path: Path, episodes: int, *, width: int = 64) -> Path:
    rng = np.random.default_rng(episodes)
    with kinodb.Writer(path) as w:
        for k in range(episodes):
            w.add_episode(actions=rng.standard_normal((5, 7)).astype(np.float32),
                          extra_arrays={"emb": rng.standard_normal((5, width))}, task=f"t{k % 3}", fps=5.0)  # fmt: skip
    return path


def _episodes_table(root: Path) -> Any:
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


# -- memory ---------------------------------------------------------------------------------


def test_episode_rows_and_statistics_are_not_held_per_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lerobot_export, "EPISODE_ROWS_BYTES", 256 * 1024)  # rows written every ~20 episodes
    few, many = _many(tmp_path / "few.kdb", 100), _many(tmp_path / "many.kdb", 400)
    export(few, tmp_path / "warm", format="lerobot")  # imports and first-use caches, not measured
    peaks = [_peak(lambda src=src, k=k: export(src, tmp_path / f"out{k}", format="lerobot"))
             for k, src in enumerate((few, many))]  # fmt: skip
    # Each episode's stats and row hold ~12 KB here (a 64-wide array's ten statistics among
    # them): 300 more episodes would add ~3.6 MB if they were kept to the end.
    assert peaks[1] - peaks[0] < 600_000, peaks
    assert _episodes_table(tmp_path / "out1").num_rows == 400


def test_camera_statistics_memory_does_not_grow_with_the_episode(tmp_path: Path) -> None:
    pytest.importorskip("av")
    rng = np.random.default_rng(0)
    sources = []
    for T in (300, 1200):  # 100 and 204 frames sampled for the statistics
        path = tmp_path / f"cam{T}.kdb"
        with kinodb.Writer(path) as w:
            w.add_episode(actions=np.zeros((T, 2), np.float32), fps=10.0,
                          images={"front": rng.integers(0, 255, (T, 96, 128, 3), dtype=np.uint8)})  # fmt: skip
        sources.append(path)
    export(sources[0], tmp_path / "warm", format="lerobot")
    peaks = [_peak(lambda src=src, k=k: export(src, tmp_path / f"out{k}", format="lerobot"))
             for k, src in enumerate(sources)]  # fmt: skip
    # 104 more sampled frames are 3.8 MB; held whole and copied to float64 for the stats,
    # they made ~20 times that.
    assert peaks[1] - peaks[0] < 2_000_000, peaks


def test_image_stats_hold_a_bounded_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (64, 120, 160, 3), dtype=np.uint8)  # 3.7 MB
    monkeypatch.setattr(stats_, "_HISTOGRAM_VALUES", 1 << 16)
    peak = _peak(lambda: stats_.image_stats(frames))
    assert peak < frames.nbytes / 4, peak  # NumPy over all of them at once: ~19 times the frames


# -- exact ----------------------------------------------------------------------------------


def _numpy_image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """The definition: every value of each channel as float64, NumPy's mean, std and
    quantiles (method ``linear``), scaled to [0, 1]."""
    x = frames.reshape(-1, frames.shape[-1]).astype(np.float64)
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0)}
    out.update(zip(stats_.QUANTILES, np.quantile(x, list(stats_.QUANTILES.values()), axis=0), strict=True))
    return {k: (v / 255.0).reshape(-1, 1, 1) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["uniform", "constant", "narrow", "two_levels", "normal"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_image_stats_are_numpys_over_all_the_values(kind: str, channels: int) -> None:
    rng = np.random.default_rng(channels)
    for _ in range(8):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 20)), int(rng.integers(1, 20)), channels)
        frames = {
            "uniform": lambda s: rng.integers(0, 256, s),
            "constant": lambda s: np.full(s, rng.integers(0, 256)),
            "narrow": lambda s: rng.integers(100, 103, s),
            "two_levels": lambda s: rng.choice([0, 255], s),
            "normal": lambda s: rng.normal(128, 30, s).clip(0, 255),
        }[kind](shape).astype(np.uint8)
        got, want = stats_.image_stats(frames), _numpy_image_stats(frames)
        assert list(got) == ["min", "max", "mean", "std", *stats_.QUANTILES, "count"]
        assert got["count"].tolist() == [len(frames)]
        for key, value in want.items():
            assert got[key].dtype == np.float64 and got[key].shape == (channels, 1, 1), key
            if key == "std":  # exact integer sums, correctly rounded; NumPy's float sum is off by ~1e-13
                np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-15)
            else:  # the same values, bit for bit: the quantiles' interpolation too
                np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_image_stats_added_a_few_frames_at_a_time_are_those_of_all_at_once() -> None:
    frames = np.random.default_rng(2).integers(0, 256, (50, 9, 7, 3), dtype=np.uint8)
    acc = stats_.ImageStats()
    for start in range(0, 50, 7):
        acc.add(frames[start : start + 7])
    whole = stats_.image_stats(frames)
    for key, value in acc.result().items():
        np.testing.assert_array_equal(value, whole[key], err_msg=key)


def _two_pass(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """LeRobot's ``aggregate_feature_stats``: count-weighted, with the global mean first."""
    counts = np.array([s["count"][0] for s in episodes], np.float64).reshape(-1, 1)
    means = np.stack([s["mean"] for s in episodes])
    mean = (means * counts).sum(axis=0) / counts.sum()
    var = ((np.stack([s["std"] for s in episodes]) ** 2 + (means - mean) ** 2) * counts).sum(
        axis=0
    ) / counts.sum()
    out = {"min": np.stack([s["min"] for s in episodes]).min(axis=0),
           "max": np.stack([s["max"] for s in episodes]).max(axis=0), "mean": mean, "std": np.sqrt(var)}  # fmt: skip
    for key in stats_.QUANTILES:
        out[key] = (np.stack([s[key] for s in episodes]) * counts).sum(axis=0) / counts.sum()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.bool_])
def test_running_dataset_stats_are_those_of_all_episodes_at_once(dtype: Any) -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.normal(1000, 5, (int(rng.integers(1, 40)), 7)) for _ in range(300)]
    if dtype == np.bool_:
        arrays = [a > 1000 for a in arrays]
    episodes = [stats_.array_stats(a.astype(dtype)) for a in arrays]
    running = stats_.Running()
    for s in episodes:
        running.add(s)
    got, want = running.result(), _two_pass(episodes)
    assert got["count"].tolist() == [sum(len(a) for a in arrays)]
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        if key == "std":  # one pass instead of two: the same up to rounding
            np.testing.assert_allclose(got[key], value, rtol=1e-12)
        else:  # the same sums in the same order
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_running_stats_weigh_episodes_by_their_finite_values() -> None:
    rng = np.random.default_rng(4)
    parts = [rng.normal(size=(T, 3)) for T in (5, 8, 1, 6)]
    parts[0][1, 0] = np.nan
    parts[2][0, 0] = np.inf  # the only value of element 0 in that episode
    parts[3][:, 2] = np.nan
    running = stats_.Running()
    for p in parts:
        running.add(stats_.array_stats(p))
    got = running.result()
    every = np.concatenate(parts)
    for e in range(3):
        finite = every[:, e][np.isfinite(every[:, e])]
        np.testing.assert_allclose(got["mean"][e], finite.mean(), rtol=1e-12)
        np.testing.assert_allclose(got["std"][e], finite.std(), rtol=1e-12)
        assert got["min"][e] == finite.min() and got["max"][e] == finite.max()
    assert got["count"].tolist() == [len(every)]


def test_lerobot_aggregates_the_episode_rows_to_the_dataset_stats(tmp_path: Path) -> None:
    try:
        from lerobot.datasets.compute_stats import aggregate_stats
    except Exception as exc:  # ImportError, or a broken torchvision raising at import
        pytest.skip(f"lerobot is not importable ({type(exc).__name__}: {exc}); see docs/lerobot.md")
    import json

    src = _many(tmp_path / "src.kdb", 60, width=5)
    export(src, tmp_path / "lr", format="lerobot")
    rows = _episodes_table(tmp_path / "lr").to_pylist()
    per_episode = [
        {key: {name: np.array(row[f"stats/{key}/{name}"]) for name in ("min", "max", "mean", "std", "count",
                                                                         *stats_.QUANTILES)}
         for key in ("action", "observation.emb", "timestamp", "index")}
        for row in rows
    ]  # fmt: skip
    theirs = aggregate_stats(per_episode)
    ours = json.loads((tmp_path / "lr" / "meta" / "stats.json").read_text())
    for key, stats in theirs.items():
        for name, value in stats.items():
            np.testing.assert_allclose(ours[key][name], value, rtol=1e-12, err_msg=f"{key} {name}")


# -- the episodes table, written as it grows ------------------------------------------------


def test_the_episodes_table_is_the_same_in_row_groups_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _many(tmp_path / "src.kdb", 50, width=3)
    export(src, tmp_path / "whole", format="lerobot")
    monkeypatch.setattr(lerobot_export, "EPISODE_ROWS_BYTES", 16 * 1024)
    monkeypatch.setattr(lerobot_export, "DATA_FILES_SIZE_IN_MB", 0.02)  # ~20 KB of rows per file
    export(src, tmp_path / "parts", format="lerobot")
    files = sorted((tmp_path / "parts" / "meta" / "episodes").rglob("*.parquet"))
    assert len(files) > 2 and all(pq.ParquetFile(f).metadata.num_row_groups >= 1 for f in files)
    assert sum(pq.ParquetFile(f).metadata.num_row_groups for f in files) > len(files)  # several per file
    whole, parts = _episodes_table(tmp_path / "whole"), _episodes_table(tmp_path / "parts")
    where = ["meta/episodes/chunk_index", "meta/episodes/file_index"]
    assert parts.schema == whole.schema
    moved = [*where, "data/chunk_index", "data/file_index"]  # the data files are smaller too
    assert parts.drop_columns(moved).equals(whole.drop_columns(moved))
    located = list(zip(*(parts[c].to_pylist() for c in where), strict=True))
    for (chunk, file), f in zip(sorted(set(located)), files, strict=True):  # each row names its file
        assert f.name == f"file-{file:03d}.parquet" and f.parent.name == f"chunk-{chunk:03d}"
        rows = pq.read_table(f)
        assert set(zip(*(rows[c].to_pylist() for c in where), strict=True)) == {(chunk, file)}


def test_uint64_extremes_keep_one_column_type_across_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "u64.kdb"
    with kinodb.Writer(src) as w:
        for k in range(6):
            base = 2**63 + 5 if k == 4 else 7  # past int64 only in a late episode
            w.add_episode(actions=np.zeros((3, 2), np.float32),
                          extra_arrays={"big": np.arange(3, dtype=np.uint64) + np.uint64(base)})  # fmt: skip
    monkeypatch.setattr(lerobot_export, "EPISODE_ROWS_BYTES", 1)  # a row group per episode
    export(src, tmp_path / "lr", format="lerobot")
    table = _episodes_table(tmp_path / "lr")
    assert table.schema.field("stats/observation.big/min").type == pa.list_(pa.uint64())
    assert table["stats/observation.big/max"].to_pylist()[4] == [2**63 + 7]
    assert table["stats/observation.big/min"].to_pylist()[0] == [7]
