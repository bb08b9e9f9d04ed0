"""``kino query`` over several files: one query over all of them, matches listed per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import write_field_in_one_file
from kinodb._cli.main import main


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    """``a.kdb`` holds ``has_language`` (true, false, true; 4 frames each), ``b.kdb`` (5 and
    6 frames) does not."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_field_in_one_file(a, b)
    return a, b


def test_matches_are_listed_per_file_with_the_file_named(
    two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two
    assert main(["query", str(a), str(b), "num_frames >= 4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{a}: 3 matching episodes"
    assert out.index(f"{b}: 2 matching episodes") > 3
    assert out[-1] == "5 matching episodes in 2 files"
    rows = [line.split()[0] for line in out[:-1] if line.strip()[:1].isdigit()]
    assert rows == ["0", "1", "2", "0", "1"]
    # A field only a.kdb holds is null in b.kdb, as in a Mixture: no error, no match there.
    assert main(["query", str(a), str(b), "has_language = true", "--count"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{a}: 2", f"{b}: 0", "total: 2"]
    assert main(["query", str(b), str(a), "has_language IS NULL", "-c"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{b}: 2", f"{a}: 0", "total: 2"]


def test_limit_and_json_over_several_files(
    two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two
    assert main(["query", str(a), str(b), "num_frames > 0", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{a}: 3 matching episodes (showing the first 1)" in out
    assert f"{b}: 2 matching episodes (showing the first 1)" in out
    assert main(["query", str(a), str(b), "NOT has_language = false", "--json", "-l", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["query"] == "NOT has_language = false" and got["matches"] == 4  # null there: not false
    assert [(f["path"], f["matches"], f["positions"]) for f in got["files"]] == [
        (str(a), 2, [0]),
        (str(b), 2, [0]),
    ]
    assert got["files"][0]["episodes"][0]["has_language"] is True


def test_one_file_prints_as_before(two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = two
    assert main(["query", str(a), "has_language = true"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 matching episodes" and len(out) == 4
    assert main(["query", str(a), "has_language = true", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"path", "query", "matches", "positions", "episodes"}


def test_errors_over_several_files(
    two: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two
    assert main(["query", str(a), str(b), "sucess = true"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {a}: unknown field 'sucess' at position 0" and "did you mean success?" in err
    assert main(["query", str(a), str(b), "num_frames >"]) == 1
    assert capsys.readouterr().err.startswith("error: expected a value")  # the query's, no file
    c = tmp_path / "c.kdb"  # has_language holds strings here: a type error found in c.kdb
    with kinodb.Writer(c) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), extra={"has_language": "yes"})
    assert main(["query", str(a), str(c), "has_language = true", "--count"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {c}: ")
    assert main(["query", str(a), str(tmp_path / "missing.kdb"), "num_frames > 0"]) == 1
    assert "missing.kdb" in capsys.readouterr().err


def test_a_merged_file_names_its_sources_by_absolute_path(
    two: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two
    merged = tmp_path / "merged.kdb"
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 0
    capsys.readouterr()
    assert main(["query", str(merged), "source_file = 'b.kdb'", "-c"]) == 0
    assert capsys.readouterr().out == "0\n"
    assert main(["query", str(merged), "source_file ENDS WITH '/b.kdb'", "-c"]) == 0
    assert capsys.readouterr().out == "2\n"


# -- arguments in the wrong order: the query comes last ---------------------------------


def test_a_query_given_first_is_named_with_the_order(
    two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = two
    assert main(["query", "success = true", str(a)]) == 2
    err = capsys.readouterr().err
    assert f"'success = true' is not a file, and the last argument '{a}' is one: the query comes last" in err
    assert f"e.g. kino query {a} 'success = true'" in err


def test_a_forgotten_query_is_named(two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    assert main(["query", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"the last argument '{b}' is a .kdb file, but it is where the query goes: add one" in err


def test_a_missing_file_with_a_query_last_is_still_a_missing_file(
    two: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", str(tmp_path / "nope.kdb"), "success = true"]) == 1
    err = capsys.readouterr().err
    assert "nope.kdb" in err and "No such file" in err and "comes last" not in err
