"""`kino bench`: rows, JSON, the temporary directory, and running without h5py."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kinodb._bench import BenchConfig, run_bench
from kinodb._cli.main import main

SMALL = ["-n", "4", "--frames", "12", "--repeats", "1"]
LOWDIM_OPS = ["write", "open", "seq_read", "random_read", "meta_scan", "kql", "windows"]


@pytest.fixture
def temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route temporary directories into ``tmp_path`` and record the ones made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made: list[str] = []
    real = tempfile.TemporaryDirectory

    def recording(*args: Any, **kwargs: Any) -> tempfile.TemporaryDirectory[str]:
        tmp = real(*args, **kwargs)
        made.append(tmp.name)
        return tmp

    monkeypatch.setattr(tempfile, "TemporaryDirectory", recording)
    return made


def test_json_has_every_row_and_equal_results(
    temp_dirs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("h5py", reason="the h5py comparison needs h5py")
    assert main(["bench", *SMALL, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [row["op"] for row in doc["rows"]] == LOWDIM_OPS
    for row in doc["rows"]:
        assert row["kdb"] > 0 and row["h5py"] > 0, row
        assert row["ratio"] == pytest.approx(row["h5py"] / row["kdb"])
        assert row["what"]
    assert doc["config"]["episodes"] == 4 and doc["config"]["frames"] == 12
    assert doc["peer"]["missing"] is None and doc["peer"]["version"]
    assert all(check["equal"] is True for check in doc["checks"].values()), doc["checks"]
    assert doc["checks"]["meta_scan"]["kdb"] >= 0
    assert doc["checks"]["windows"]["kdb"]["action"]["shape"] == [8 * 256, 16, 7]
    assert doc["sizes"]["kdb"] > 0 and doc["sizes"]["h5py"] > 0
    # it worked in a fresh temporary directory and removed it
    assert len(temp_dirs) == 1 and Path(temp_dirs[0]).parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_table_output(temp_dirs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("h5py", reason="the h5py comparison needs h5py")
    assert main(["bench", *SMALL, "--images"]) == 0
    out = capsys.readouterr().out
    assert "kino bench: 4 episodes x 12 frames (48 frames)" in out
    assert "OPERATION" in out and "H5PY/KDB" in out
    for op in [*LOWDIM_OPS, "image_read"]:
        line = next(line for line in out.splitlines() if line.startswith(f"{op} "))
        assert " ms" in line and line.count("x ") >= 1, line
    assert "same results from both formats:" in out and "image_read" in out.split("same results")[1]
    assert list(tmp_path.iterdir()) == []


def test_runs_without_h5py(
    temp_dirs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    assert main(["bench", *SMALL, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "pip install 'kinodb[hdf5]'" in doc["peer"]["missing"]
    assert [row["op"] for row in doc["rows"]] == LOWDIM_OPS
    assert all(row["h5py"] is None and row["ratio"] is None and row["kdb"] > 0 for row in doc["rows"])
    assert all(check["equal"] is None for check in doc["checks"].values())
    assert doc["sizes"]["h5py"] is None
    assert main(["bench", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "peer: none" in out and "kinodb[hdf5]" in out and "H5PY" not in out
    assert list(tmp_path.iterdir()) == []


def test_the_directory_is_removed_when_a_run_fails(
    temp_dirs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kinodb._bench as bench

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setitem(bench._READS, "kql", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_bench(BenchConfig(episodes=2, frames=5, repeats=1), peer=False)
    assert len(temp_dirs) == 1 and list(tmp_path.iterdir()) == []


def test_bad_sizes_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench", "-n", "0"], ["bench", "--repeats", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        BenchConfig(episodes=0).check()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", *SMALL, "--seed", "-1"], "argument --seed: expected a non-negative integer, got -1"),
        (
            ["create-test", "x.kdb", "--seed", "-3"],
            "argument --seed: expected a non-negative integer, got -3",
        ),
        (
            ["create-test", "x.kdb", "--frames", "two"],
            "argument -f/--frames: expected a positive integer, got 'two'",
        ),
    ],
)
def test_bad_numbers_name_the_option(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.kdb").exists()


def test_library_refuses_a_negative_seed(tmp_path: Path) -> None:
    from kinodb.synthetic import create_test

    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        BenchConfig(seed=-1).check()
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        create_test(tmp_path / "x.kdb", 2, 3, seed=-1)
    assert not (tmp_path / "x.kdb").exists()


@pytest.mark.parametrize(
    ("argv", "sizes"),
    [
        (["-n", "100000000", "--frames", "100000000"], "100,000,000 episodes x 100,000,000 frames"),
        (["-n", str(10**21)], f"{10**21:,} episodes x 50 frames"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_generating(
    argv: list[str],
    sizes: str,
    temp_dirs: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import kinodb.synthetic

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("episodes were generated for a run that cannot fit")

    monkeypatch.setattr(kinodb.synthetic, "episodes", never)
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"kino bench: error: {sizes} would need about ")
    assert " EiB of memory; " in err and "is available (MemAvailable)" in err, err
    assert err.endswith("pass a smaller -n or --frames")
    assert temp_dirs == []


def test_room_is_checked_against_free_memory_and_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kinodb._bench as bench

    config = BenchConfig(episodes=10, frames=20)
    need = config.estimate(peer=True)
    assert need["memory"] > config.estimate(peer=False)["memory"] > 0
    assert need["disk"] > config.estimate(peer=False)["disk"] > 0
    bench.check_room(config, peer=True, tmpdir=str(tmp_path))  # a small run fits here
    monkeypatch.setattr(bench, "available_memory", lambda: need["memory"] - 1)
    with pytest.raises(ValueError, match=r"10 episodes x 20 frames would need about .* of memory; "):
        bench.check_room(config, peer=True, tmpdir=str(tmp_path))
    bench.check_room(config, peer=False, tmpdir=str(tmp_path))  # without HDF5 it needs less
    monkeypatch.setattr(bench, "available_memory", lambda: None)  # unknown: not checked
    monkeypatch.setattr(bench, "_free_space", lambda path: need["disk"] - 1)
    with pytest.raises(ValueError, match=rf"of space in {tmp_path}; .* is free there; .*set TMPDIR"):
        bench.check_room(config, peer=True, tmpdir=str(tmp_path))


def test_estimate_covers_the_files_written(temp_dirs: list[str]) -> None:
    pytest.importorskip("h5py", reason="the HDF5 file's size needs h5py")
    for config in (
        BenchConfig(episodes=30, frames=3, repeats=1, draws=5, batches=1, batch=4),
        BenchConfig(episodes=3, frames=40, images=True, repeats=1, draws=5, batches=1, batch=4),
    ):
        sizes = run_bench(config)["sizes"]
        assert sizes["kdb"] + sizes["h5py"] <= config.estimate(peer=True)["disk"], (config, sizes)
        assert sizes["kdb"] <= config.estimate(peer=False)["disk"], (config, sizes)


def test_image_check_compares_every_pixel(
    temp_dirs: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("h5py", reason="the h5py comparison needs h5py")
    from kinodb.kdb.reader import Database

    assert main(["bench", *SMALL, "--images", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["checks"]["image_read"]
    assert check["equal"] is True and check["kdb"]["shape"] == [4 * 12, 64, 64, 3]
    assert check["kdb"]["sum"] > 0

    real = Database.read_frames

    def flipped(self: Database, *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = real(self, *args, **kwargs)
        out["images"] = {cam: np.ascontiguousarray(v[:, ::-1]) for cam, v in out["images"].items()}
        return out

    # Upside-down frames keep the pixel sum and the bottom-right pixel: only a full comparison sees them.
    monkeypatch.setattr(Database, "read_frames", flipped)
    assert main(["bench", *SMALL, "--images", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checks"]["image_read"]["equal"] is False
    assert ".kdb and h5py disagree on image_read" in captured.err


def test_counts_of_one_are_singular(temp_dirs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "-n", "1", "--frames", "1", "--repeats", "1", "--no-h5py"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kino bench: 1 episode x 1 frame (1 frame), images: none; median of 1 run\n")
    config = BenchConfig(draws=1, batch=1, batches=1, obs_horizon=1, action_horizon=1)
    from kinodb._bench import _what

    assert _what("random_read", config) == "actions of 1 seeded random episode"
    assert _what("windows", config) == "1 window (1 state, 1 action), 1 per batch"
