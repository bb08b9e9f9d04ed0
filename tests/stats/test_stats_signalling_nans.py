"""kino stats over arrays holding signalling NaNs or both infinities: the NaNs count as
non-finite, and NumPy's bare "invalid value" warnings are not printed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from _factories import SIGNALLING_NANS, write_non_finite
from kinodb._cli.main import main
from kinodb.stats import compute_stats


@pytest.mark.parametrize("chunk", [None, 2])  # 2: an episode longer than a chunk is read in slices
def test_signalling_nans_are_counted_as_non_finite_without_a_warning(
    tmp_path: Path, chunk: int | None
) -> None:
    path = write_non_finite(tmp_path / "a.kdb")
    names = ["rewards", *(f"x_{k}" for k in SIGNALLING_NANS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = compute_stats(path, arrays=names, **({} if chunk is None else {"chunk_frames": chunk}))
    for name in names:
        got = stats["arrays"][name]
        assert got["nonfinite"] == 3, name
        assert (got["min"].tolist(), got["max"].tolist()) == ([0.0], [1.0]), name
        assert got["mean"].tolist() == [pytest.approx(1 / 3)], name


def test_kino_stats_prints_no_bare_numpy_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_non_finite(tmp_path / "a.kdb")
    capsys.readouterr()
    assert main(["stats", str(path), "--arrays", "rewards,x_float16,x_float32,x_float64", "--dry-run"]) == 0
    assert "invalid value" not in capsys.readouterr().err
