"""A LeRobot v3 recording stopped before ``LeRobotDataset.finalize()``: its parquet files
have no footer, or its episode metadata were never written. The errors say so."""

from __future__ import annotations

import shutil
from pathlib import Path

import _lerobot_fixtures as F
import numpy as np
import pytest

from kinodb.errors import ConversionError
from kinodb.ingest import ingest


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    eps = F.make_episodes(np.random.default_rng(3), [6, 5, 7], cameras={F.CAMERA: (16, 24)})
    return F.write_v3(tmp_path / "ds", eps, per_file=2)


def _cut_footer(path: Path) -> None:
    """What a parquet writer that was never closed leaves: the row groups, no footer."""
    data = path.read_bytes()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    path.write_bytes(data[:-footer])


def test_a_data_file_without_its_footer_names_finalize(dataset: Path, tmp_path: Path) -> None:
    data = sorted((dataset / "data").rglob("*.parquet"))[0]
    _cut_footer(data)
    with pytest.raises(ConversionError) as err:
        ingest(dataset, tmp_path / "out.kdb")
    said = str(err.value)
    assert f"{data}: not readable parquet" in said
    assert "cut short (copy it again) or never closed" in said and "LeRobotDataset.finalize()" in said
    assert not (tmp_path / "out.kdb").exists()


def test_episode_metadata_without_its_footer_names_finalize(dataset: Path, tmp_path: Path) -> None:
    meta = sorted((dataset / "meta" / "episodes").rglob("*.parquet"))[0]
    _cut_footer(meta)
    with pytest.raises(ConversionError, match=r"never closed by its writer.*LeRobotDataset\.finalize\(\)"):
        ingest(dataset, tmp_path / "out.kdb")


def test_no_episode_metadata_with_episodes_counted_names_finalize(dataset: Path, tmp_path: Path) -> None:
    shutil.rmtree(dataset / "meta" / "episodes")
    (dataset / "meta" / "episodes").mkdir()
    with pytest.raises(ConversionError) as err:
        ingest(dataset, tmp_path / "out.kdb")
    said = str(err.value)
    assert "no episode metadata (*.parquet)" in said
    assert (
        "info.json counts 3 episodes, so the recording was probably stopped before LeRobotDataset.finalize()"
        in said
    )


def test_other_damage_gets_no_finalize_advice(dataset: Path, tmp_path: Path) -> None:
    data = sorted((dataset / "data").rglob("*.parquet"))[0]
    data.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")  # a footer length past the file
    with pytest.raises(ConversionError, match="not readable parquet") as err:
        ingest(dataset, tmp_path / "out.kdb")
    assert "finalize" not in str(err.value)
