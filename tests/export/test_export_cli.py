"""``kino export``: the summary line, and errors through kino's exit-code table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import kinodb._cli.main as kino
from kinodb._cli import export as export_cli


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    if export_cli not in kino.COMMANDS:
        monkeypatch.setattr(kino, "COMMANDS", (*kino.COMMANDS, export_cli))


def test_export_prints_one_line(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(4)
    out = tmp_path / "npy"
    assert kino.main(["export", str(src), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exported 4 episodes (24 frames) to ")
    assert "as numpy" in lines[0] and (out / "episodes.json").is_file()


def test_formats_filter_and_force(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(4)
    out = tmp_path / "meta"
    args = ["export", str(src), "-o", str(out), "--format", "json", "--filter", "success = false"]
    assert kino.main(args) == 0
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
    assert kino.main([*args, "--force"]) == 0
    assert kino.main(["export", str(src), "-o", str(tmp_path / "d.hdf5"), "--format", "hdf5"]) == 0
    assert "1 files" in capsys.readouterr().out.splitlines()[-1]


def test_errors_exit_1_with_one_line(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "npy"
    out.mkdir()
    assert kino.main(["export", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert kino.main(["export", str(src), "-o", str(tmp_path / "x"), "--filter", "num_frames > 99"]) == 1
    assert "no episodes match" in capsys.readouterr().err
    assert kino.main(["export", str(tmp_path / "missing.kdb"), "-o", str(tmp_path / "y")]) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit) as exc:
        kino.main(["export", str(src), "-o", str(tmp_path / "z"), "--format", "csv"])
    assert exc.value.code == 2


def test_run_takes_a_namespace(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(2)
    args = argparse.Namespace(
        path=str(src), output=str(tmp_path / "m"), format="json", filter=None, force=False
    )
    assert export_cli.run(args) == 0
    info = json.loads((tmp_path / "m" / "dataset.json").read_text())
    assert info["export"]["format"] == "json" and "exported 2 episodes" in capsys.readouterr().out
