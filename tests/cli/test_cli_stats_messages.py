"""`kino stats` errors name the file, and each skipped array with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinodb._cli.main import main


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "3", "--frames", "5"]) == 0
    return path


@pytest.mark.parametrize("json", [False, True])
def test_nothing_summarised_names_each_array_and_reason(
    dataset: Path, json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["stats", str(dataset), "--arrays", "is_terminal", *(["--json"] if json else [])]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: no array of {dataset} could be summarised: is_terminal (dtype bool is not floating "
        "point); name floating-point arrays with --arrays, or leave it out to summarise every one\n"
    )


def test_unknown_array_names_the_file(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["stats", str(dataset), "--arrays", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kino stats: error: {dataset}: no array 'nope' in this dataset; it has ["), err
