"""-F is --format in export and --filter in merge: a mix-up is a usage error that says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinodb._cli.main import main


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "3", "--frames", "5"]) == 0
    return path


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("query", ["success = true", "num_frames > 3", "success == true"])
def test_export_F_given_a_query_names_filter(
    dataset: Path, tmp_path: Path, query: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["export", str(dataset), "-o", str(tmp_path / "out"), "-F", query], capsys)
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"kino export: error: argument -F/--format: {query!r} is a KQL query, not a format"
    )
    assert "-F is --format here (one of numpy, json, hdf5, lerobot, zarr, rlds)" in last
    assert f"use --filter '{query}'" in last
    assert not (tmp_path / "out").exists()


def test_export_F_with_an_unknown_word_lists_the_formats(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["export", str(dataset), "-o", str(tmp_path / "out"), "-F", "hdf"], capsys)
    last = err.strip().splitlines()[-1]
    assert "invalid choice: 'hdf'" in last and "--filter" not in last


def test_export_F_still_takes_a_format(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(dataset), "-o", str(tmp_path / "meta"), "-F", "json"]) == 0
    assert (tmp_path / "meta").is_dir()


@pytest.mark.parametrize("name", ["hdf5", "lerobot", "numpy", "rlds", "H5"])
def test_merge_F_given_an_export_format_names_filter_and_export(
    dataset: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.kdb"
    err = _usage_error(["merge", str(dataset), "-o", str(out), "-F", name], capsys)
    last = err.strip().splitlines()[-1]
    fmt = "hdf5" if name == "H5" else name
    assert last == (
        f"kino merge: error: argument -F/--filter: {name!r} is a format name, not a KQL query: -F is "
        f'--filter in kino merge (e.g. -F "success = true"), and merge always writes .kdb; to convert '
        f"the merged file: kino export OUT.kdb -o DEST --format {fmt}"
    )
    assert not out.exists()


@pytest.mark.parametrize("name", ["auto", "kinfer-ndjson"])
def test_merge_F_given_an_ingest_format_names_filter(
    dataset: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["merge", str(dataset), "-o", str(tmp_path / "m.kdb"), "-F", name], capsys)
    assert f"{name!r} is a format name, not a KQL query: -F is --filter in kino merge" in err
    assert "kino export" not in err


def test_merge_F_still_takes_a_query(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.kdb"
    assert main(["merge", str(dataset), "-o", str(out), "-F", "num_frames > 0"]) == 0
    assert "wrote 3 episodes" in capsys.readouterr().out
