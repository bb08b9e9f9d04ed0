"""``kino query`` with its arguments in the wrong order says that the query comes last."""

from __future__ import annotations

from pathlib import Path

import pytest

from _factories import write_field_in_one_file
from kinodb._cli.main import main


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_field_in_one_file(a, b)
    return a, b


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
