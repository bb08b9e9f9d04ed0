"""`kino query --count --json`: the JSON of --json without the positions and episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinodb._cli.main import main


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "6", "--frames", "5"]) == 0
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_count_json_of_one_file(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = json.loads(_run(["query", str(dataset), "num_frames > 0", "--json"], capsys))
    doc = json.loads(_run(["query", str(dataset), "num_frames > 0", "--count", "--json"], capsys))
    assert doc == {"path": str(dataset), "query": "num_frames > 0", "matches": 6}
    assert {k: full[k] for k in doc} == doc  # the same names as the full JSON


def test_count_json_of_several_files(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "e.kdb"
    assert main(["create-test", str(other), "-n", "2", "--frames", "5"]) == 0
    argv = ["query", str(dataset), str(other), "num_frames > 0"]
    full = json.loads(_run([*argv, "--json"], capsys))
    doc = json.loads(_run([*argv, "-c", "--json"], capsys))
    assert doc == {
        "query": "num_frames > 0",
        "matches": 8,
        "files": [{"path": str(dataset), "matches": 6}, {"path": str(other), "matches": 2}],
    }
    assert [{k: f[k] for k in ("path", "matches")} for f in full["files"]] == doc["files"]


def test_count_without_json_stays_a_number(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["query", str(dataset), "num_frames > 0", "--count"], capsys) == "6\n"
