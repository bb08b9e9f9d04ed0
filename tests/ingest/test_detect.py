"""Format detection: what a path that no source reads as given is, and what to pass instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import _rlds_writer as w
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import source_class
from kinodb.ingest._base import lerobot_root, not_this_format, sniff, what_it_is

LEROBOT_PART = (
    "this is part of a LeRobot dataset; pass the dataset root DIR (the folder holding meta/info.json)"
)


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A v2.1 and a v3.0 dataset (one mp4 per camera), written once for the module."""
    root = tmp_path_factory.mktemp("lerobot")
    eps = F.make_episodes(np.random.default_rng(5), [4, 5], cameras={F.CAMERA: (16, 16)})
    return {"v2.1": F.write_v2(root / "v21", eps), "v3.0": F.write_v3(root / "v30", eps, per_file=2)}


def _refusal(path: Path) -> str:
    with pytest.raises(ConversionError) as err:
        source_class("auto", str(path))
    return str(err.value)


def test_a_kdb_file_points_to_merge(
    tmp_path: Path, make_kdb: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kdb, _ = make_kdb(2)
    message = _refusal(kdb)
    assert message.startswith(
        f"{kdb}: this is already a kinodb .kdb file (format 1.0), not a dataset to ingest"
    )
    assert f"`kino merge {kdb} [MORE.kdb ...] -o OUT.kdb [-F QUERY]`" in message
    assert "cannot tell its format" not in message
    out = tmp_path / "o5.kdb"
    assert main(["ingest", str(kdb), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {kdb}: this is already a kinodb .kdb file") and "kino merge" in err
    assert not out.exists()
    assert main(["ingest", str(kdb), "-o", str(out), "--format", "hdf5"]) == 1  # forced: the same hint
    err = capsys.readouterr().err
    assert "not a readable HDF5 file" in err and "this is already a kinodb .kdb file" in err


def test_a_format_01_kdb_file_points_to_upgrade(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([random_episode(rng, 3, 2, 2)]))
    message = _refusal(old)
    assert message.startswith(f"{old}: this is a kinodb .kdb file of the earlier format 0.1")
    assert f"`kino upgrade {old} NEW.kdb`" in message


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_parts_of_a_lerobot_dataset_name_its_root(lerobot: dict[str, Path], version: str) -> None:
    root = lerobot[version]
    parts = [root / "data", root / "meta", root / "videos", root / "meta" / "info.json",
             next((root / "data").rglob("*.parquet")), next((root / "videos").rglob("*.mp4"))]  # fmt: skip
    if version == "v3.0":  # four folders deep: meta/episodes/chunk-000/file-000.parquet
        parts.append(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    for part in parts:
        assert _refusal(part) == f"{part}: {LEROBOT_PART}: {root}", part
        assert lerobot_root(str(part)) == str(root)
    assert lerobot_root(str(root)) is None  # the root itself is no part of a dataset


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_a_lerobot_root_without_its_info_json_is_named_as_such(
    lerobot: dict[str, Path], version: str, tmp_path: Path
) -> None:
    import shutil

    root = shutil.copytree(lerobot[version], tmp_path / "copy")
    (root / "meta" / "info.json").unlink()
    assert _refusal(root) == (
        f"{root}: this looks like a LeRobot dataset (data/chunk-*/ or videos/) without meta/info.json, which says "
        "its version, features and frame rate; copy the dataset again with its meta/ folder (huggingface-cli "
        "download ... --repo-type dataset fetches it whole)"
    )


def test_the_root_is_spelled_as_the_path_was(
    lerobot: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = lerobot["v2.1"]
    monkeypatch.chdir(root.parent)
    assert _refusal(Path(root.name) / "data") == f"{root.name}/data: {LEROBOT_PART}: {root.name}"


def test_a_cli_ingest_of_a_lerobot_part_exits_1_naming_the_root(
    lerobot: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = lerobot["v2.1"]
    assert main(["ingest", str(root / "data"), "-o", str(tmp_path / "o.kdb")]) == 1
    assert capsys.readouterr().err == f"error: {root / 'data'}: {LEROBOT_PART}: {root}\n"


def test_a_metadata_file_of_an_rlds_dataset_names_its_folder(tmp_path: Path) -> None:
    step = {
        "is_first": w.tensor([], "bool"),
        "is_last": w.tensor([], "bool"),
        "action": w.tensor([2], "float32"),
    }
    ep = {"steps/is_first": np.array([1, 0]), "steps/is_last": np.array([0, 1]),
          "steps/action": np.zeros((2, 2), np.float32)}  # fmt: skip
    root = w.write_tfds(tmp_path / "tiny" / "1.0.0", "tiny", {"train": [[w.episode_example(ep)]]},
                        {"steps": w.dataset(step)})  # fmt: skip
    for name in ("features.json", "dataset_info.json"):
        message = _refusal(root / name)
        assert message.startswith(f"{root / name}: this is part of an RLDS (TFDS) dataset; pass the folder")
        assert f"({root})" in message and "*.tfrecord* shards" in message
    shard = next(root.glob("*.tfrecord*"))  # a shard is read on its own: no refusal
    assert source_class("auto", str(shard)).format == "rlds"


def test_unknown_files_keep_the_generic_message(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert _refusal(text) == (
        f"{text}: cannot tell its format (tried hdf5, kinfer-ndjson, lerobot, numpy, rlds, zarr); pass format explicitly"
    )
    table = tmp_path / "table.parquet"  # a parquet file of no dataset: what it is, and the generic advice
    pq.write_table(pa.table({"a": [1, 2]}), table)
    assert _refusal(table) == (
        f"{table}: cannot tell its format (tried hdf5, kinfer-ndjson, lerobot, numpy, rlds, zarr; it is a Parquet file); "
        "pass format explicitly"
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "cannot tell its format" in _refusal(folder)
    assert what_it_is(str(folder)) is None and sniff(str(folder)) is None


def test_not_this_format_names_the_format_that_reads_it(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    path = tmp_path / "robo.hdf5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("data/demo_0/actions", data=np.zeros((3, 2), np.float32))
    assert not_this_format(str(path), "rlds") == (
        "; it is an HDF5 file: pass format='hdf5', or leave format out to detect it"
    )
    # the format's own source recognises it: only damaged, which that source's message says
    assert not_this_format(str(path), "hdf5") == ""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert not_this_format(str(empty), "rlds") == "; it is empty (0 bytes)"
