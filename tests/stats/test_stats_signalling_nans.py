"""kino stats over arrays holding signalling NaNs or both infinities: the NaNs count as
non-finite, and NumPy's bare "invalid value" warnings are not printed."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.stats import compute_stats

SIGNALLING = {
    "float16": np.array([0x7C01, 0, 0x3C00], np.uint16).view(np.float16),
    "float32": np.array([0x7F800001, 0, 0x3F800000], np.uint32).view(np.float32),
    "float64": np.array([0x7FF0000000000001, 0, 0x3FF0000000000000], np.uint64).view(np.float64),
}


def _write(path: Path) -> Path:
    both = np.array([np.inf, 0.0, -np.inf])
    with warnings.catch_warnings(), kinodb.Writer(path) as w:
        warnings.simplefilter("ignore")  # the writer's own checks are not what is tested here
        w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=SIGNALLING["float32"],
                      extra_arrays={f"x_{k}": v for k, v in SIGNALLING.items()})  # fmt: skip
        w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=both.astype(np.float32),
                      extra_arrays={f"x_{k}": both.astype(k) for k in SIGNALLING})  # fmt: skip
    return path


@pytest.mark.parametrize("chunk", [None, 2])  # 2: an episode longer than a chunk is read in slices
def test_signalling_nans_are_counted_as_non_finite_without_a_warning(
    tmp_path: Path, chunk: int | None
) -> None:
    path = _write(tmp_path / "a.kdb")
    names = ["rewards", *(f"x_{k}" for k in SIGNALLING)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = compute_stats(path, arrays=names, **({} if chunk is None else {"chunk_frames": chunk}))
    for name in names:
        got = stats["arrays"][name]
        assert got["nonfinite"] == 3, name
        assert (got["min"].tolist(), got["max"].tolist()) == ([0.0], [1.0]), name
        assert got["mean"].tolist() == [pytest.approx(1 / 3)], name


def test_kino_stats_prints_no_bare_numpy_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "a.kdb")
    capsys.readouterr()
    assert main(["stats", str(path), "--arrays", "rewards,x_float16,x_float32,x_float64", "--dry-run"]) == 0
    assert "invalid value" not in capsys.readouterr().err
