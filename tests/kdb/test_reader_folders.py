"""A folder given where a .kdb file belongs: one error, a FormatError and an IsADirectoryError,
saying what to give instead (a .kdb file in it, or the kino ingest command for a dataset)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kinodb
from _factories import write_episodes
from kinodb.windows import FrameWindows


def _lerobot(folder: Path) -> Path:
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "info.json").write_text("{}")
    return folder


def test_opening_a_folder_is_a_format_error_and_an_is_a_directory_error(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    for opener in (kinodb.open, kinodb.Database, FrameWindows):
        with pytest.raises(kinodb.FormatError) as info:
            opener(folder)
        assert isinstance(info.value, IsADirectoryError) and info.value.filename == str(folder)
        assert str(info.value) == f"{folder}: a folder, not a .kdb file; give the path of a .kdb file"
    write_episodes(folder / "part-1.kdb", [3])
    write_episodes(folder / "part-0.kdb", [3])
    with pytest.raises(IsADirectoryError, match=re.escape(f"e.g. {folder / 'part-0.kdb'}") + "$"):
        kinodb.open(str(folder))


@pytest.mark.parametrize(
    ("layout", "kind"),
    [
        ({"meta/info.json": "{}"}, "a LeRobot dataset"),
        ({"dataset_info.json": "{}"}, "an RLDS/TFDS dataset"),
        ({"bridge-train.tfrecord-00000-of-00001": ""}, "an RLDS/TFDS dataset"),
        ({"bridge/1.0.0/dataset_info.json": "{}"}, "an RLDS/TFDS dataset"),  # a TFDS data_dir
    ],
)
def test_a_dataset_folder_says_how_to_convert_it(tmp_path: Path, layout: dict[str, str], kind: str) -> None:
    folder = tmp_path / "my demos"
    for name, text in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    with pytest.raises(kinodb.FormatError) as info:
        kinodb.open(folder)
    assert str(info.value) == (
        f"{folder}: a folder, not a .kdb file; it looks like {kind}: convert it with "
        f"kino ingest '{folder}' -o 'my demos.kdb'"
    )


def test_a_folder_of_hdf5_files_says_to_convert_each(tmp_path: Path) -> None:
    (tmp_path / "b.hdf5").write_bytes(b"")
    with pytest.raises(kinodb.FormatError, match=re.escape(
        f"give the path of a .kdb file; it holds an HDF5 file: convert it with kino ingest {tmp_path / 'b.hdf5'} -o b.kdb"
    )):  # fmt: skip
        kinodb.open(tmp_path)
    (tmp_path / "a.hdf5").write_bytes(b"")
    with pytest.raises(kinodb.FormatError, match=re.escape(
        f"it holds 2 HDF5 files: convert each, e.g. kino ingest {tmp_path / 'a.hdf5'} -o a.kdb"
    )):  # fmt: skip
        kinodb.open(tmp_path)


def test_a_mixture_names_the_source_and_keeps_the_advice(tmp_path: Path) -> None:
    good = tmp_path / "a.kdb"
    write_episodes(good, [3])
    folder = _lerobot(tmp_path / "lr")
    with pytest.raises(kinodb.FormatError) as info:
        kinodb.Mixture({str(good): 1, str(folder): 1})
    assert isinstance(info.value, IsADirectoryError) and info.value.filename == str(folder)
    assert str(info.value) == (
        f"{folder}: mixture source 1: a folder, not a .kdb file; it looks like a LeRobot dataset: "
        f"convert it with kino ingest {folder} -o lr.kdb"
    )


def test_a_tfds_version_folder_is_named_by_its_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "bridge_dataset" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    with pytest.raises(kinodb.FormatError, match=r"kino ingest \S+ -o bridge_dataset\.kdb$"):
        kinodb.open(folder)
