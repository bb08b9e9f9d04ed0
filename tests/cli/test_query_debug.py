"""``kino query --debug``: a query error prints its traceback first, as every command's does."""

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


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback_to_a_query_error(
    two: tuple[Path, Path], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two
    for files, query, first in (
        ([a], "num_frames >", "error: expected a value"),  # does not parse
        ([a, b], "sucess = true", f"error: {a}: unknown field 'sucess'"),  # a field no file has
    ):
        argv = ["query", *map(str, files), query]
        assert main(["--debug", *argv] if where == "before" else [*argv, "--debug"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):")
        assert "kinodb.errors.QuerySyntaxError" in err
        lines = err.splitlines()
        assert first in err and lines.index(next(x for x in lines if x.startswith("error: "))) > 2
        assert main(argv) == 1  # without --debug: the error lines alone
        assert capsys.readouterr().err.startswith(first)
