"""An episode's empty embodiment survives an HDF5 or LeRobot export and its ingest; a
source that records no embodiment still gets the file's robots, the option or "unknown"."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402

_NO_LEROBOT = not all(importlib.util.find_spec(m) for m in ("pyarrow", "av"))
FORMATS = ["hdf5", pytest.param("lerobot", marks=pytest.mark.skipif(
    _NO_LEROBOT, reason="the lerobot export needs pyarrow and PyAV (pip install 'kinodb[lerobot]')"))]  # fmt: skip


def _write(path: Path, embodiments: list[str]) -> Path:
    with kinodb.Writer(path) as w:
        for name in embodiments:
            w.add_episode(actions=np.zeros((3, 2), np.float32), embodiment=name, fps=10.0)
    return path


def _embodiments(path: Path) -> list[str]:
    with kinodb.open(path) as db:
        return [db.read_meta(i)["embodiment"] for i in range(len(db))]


def _round_trip(tmp_path: Path, fmt: str, embodiments: list[str], option: str | None = None) -> list[str]:
    src = _write(tmp_path / "src.kdb", embodiments)
    out = tmp_path / ("src.hdf5" if fmt == "hdf5" else "src_lerobot")
    export(src, out, format=fmt)
    back = tmp_path / "back.kdb"
    ingest(out, back, format=fmt, embodiment=option)
    return _embodiments(back)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "embodiments", [["", "franka"], ["", ""], ["", "unknown", "franka"], ["franka", "franka"]]
)
def test_each_episodes_embodiment_survives_export_and_ingest(
    tmp_path: Path, fmt: str, embodiments: list[str]
) -> None:
    assert _round_trip(tmp_path, fmt, embodiments) == embodiments


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_embodiment_option_still_names_every_episode(tmp_path: Path, fmt: str) -> None:
    assert _round_trip(tmp_path, fmt, ["", "franka"], option="ur5") == ["ur5", "ur5"]


def _robomimic(path: Path, ep_meta: dict[str, str] | None, robots: list[str] | None) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if robots is not None:
            data.attrs["env_args"] = json.dumps(
                {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": robots}}
            )
        g = data.create_group("demo_0")
        g.attrs["num_samples"] = 3
        g["actions"] = np.zeros((3, 2))
        if ep_meta is not None:
            g.attrs["ep_meta"] = json.dumps(ep_meta)
    return path


@pytest.mark.parametrize(
    ("ep_meta", "robots", "want"),
    [
        ({"embodiment": ""}, ["Panda"], "Panda"),  # another tool's empty text names no robot
        ({"embodiment": ""}, None, "unknown"),
        (None, ["Panda"], "Panda"),
        (None, None, "unknown"),
        ({"embodiment": "Sawyer"}, ["Panda"], "Sawyer"),
    ],
)
def test_an_hdf5_source_not_written_by_kinodb_keeps_its_fallbacks(
    tmp_path: Path, ep_meta: dict[str, str] | None, robots: list[str] | None, want: str
) -> None:
    src = _robomimic(tmp_path / "src.hdf5", ep_meta, robots)
    ingest(src, tmp_path / "back.kdb", format="hdf5")
    assert _embodiments(tmp_path / "back.kdb") == [want]
