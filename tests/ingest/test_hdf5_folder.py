"""A folder of HDF5 files (a LIBERO suite) is refused with the commands that convert it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest
from kinodb.ingest.hdf5 import HDF5Source

h5py = pytest.importorskip("h5py")


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    folder = tmp_path / "libero_10"
    folder.mkdir()
    for name in ("KITCHEN_stove_demo.hdf5", "LIVING_ROOM_bowl_demo.hdf5", "STUDY_book_demo.hdf5"):
        with h5py.File(folder / name, "w") as f:
            f["data/demo_0/actions"] = np.zeros((3, 7))
    return folder


@pytest.mark.parametrize("fmt", ["auto", "hdf5"])
def test_a_folder_of_hdf5_files_names_the_ingest_and_merge_commands(
    suite: Path, tmp_path: Path, fmt: str
) -> None:
    with pytest.raises(ConversionError) as err:
        ingest(suite, tmp_path / "x.kdb", format=fmt)
    message = str(err.value)
    assert "a folder of 3 HDF5 files" in message
    assert "the HDF5 converter reads one file" in message
    assert f"kino ingest {suite}/KITCHEN_stove_demo.hdf5 -o KITCHEN_stove_demo.kdb" in message
    assert "kino merge KITCHEN_stove_demo.kdb LIVING_ROOM_bowl_demo.kdb ... -o suite.kdb" in message


def test_the_source_refuses_a_folder(suite: Path) -> None:
    with pytest.raises(ConversionError, match="reads one file"):
        HDF5Source(suite)
    empty = suite / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match=r"a folder, and the HDF5 converter reads one \.hdf5 file"):
        HDF5Source(empty)


@pytest.mark.parametrize("extra", [[], ["--format", "hdf5"]])
def test_cli_says_how_to_convert_a_suite_folder(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert main(["ingest", str(suite), "-o", str(tmp_path / "x.kdb"), "-q", *extra]) == 1
    err = capsys.readouterr().err
    assert "kino merge" in err and "Is a directory" not in err and "pass --format" not in err
    assert not (tmp_path / "x.kdb").exists()
