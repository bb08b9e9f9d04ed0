"""What an export says at the edges: an HDF5 export names which character or name HDF5
cannot hold and how to export the file all the same; a LeRobot export's statistics of
arrays holding signalling NaNs or both infinities leave NumPy's bare warnings unprinted."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import SIGNALLING_NANS, write_non_finite
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.export import export

h5py = pytest.importorskip("h5py")


def _write(path: Path, schema: dict[str, Any] | None = None, **episode: Any) -> Path:
    with kinodb.Writer(path, schema=schema) as w:
        w.add_episode(actions=np.zeros((2, 1), np.float32), states=np.zeros((2, 3), np.float32), **episode)
    return path


@pytest.mark.parametrize(
    ("episode", "schema", "said"),
    [
        ({"extra_arrays": {"obs/joint_pos": np.zeros(2)}}, None,
         "array 'obs/joint_pos' cannot be an HDF5 name: it holds '/', which HDF5 reads as a path separator. "
         "kinodb has no command that renames an array"),
        ({"extra_arrays": {".": np.zeros(2)}}, None,
         "array '.' cannot be an HDF5 name: HDF5 reads the name '.' as the group itself"),
        ({"extra_arrays": {"a\x00b": np.zeros(2)}}, None,
         "array 'a\\x00b' cannot be an HDF5 name: it holds a NUL character"),
        ({"images": {"wrist/left": np.zeros((2, 4, 4, 3), np.uint8)}}, None,
         "camera 'wrist/left' cannot be an HDF5 name: it holds '/'"),
        ({}, {"states": {"components": {"eef/pos": [0, 3]}}},
         "state component 'eef/pos' cannot be an HDF5 name: it holds '/'"),
        ({"extra": {"filter_keys": ["train/a"]}}, None,
         "filter key 'train/a' cannot be an HDF5 name: it holds '/'"),
    ],
)  # fmt: skip
def test_a_name_hdf5_cannot_hold_is_refused_saying_why_and_what_to_do(
    tmp_path: Path, episode: dict[str, Any], schema: dict[str, Any] | None, said: str
) -> None:
    src = _write(tmp_path / "a.kdb", schema, **episode)
    with pytest.raises(ConversionError) as info:
        export(src, tmp_path / "a.hdf5", format="hdf5")
    message = str(info.value)
    assert message.startswith(f"{src}: {said}")
    assert "export to --format numpy, which keeps every name" in message
    assert "and export the copy" in message
    assert "rename it" not in message and "NUL or '.'" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kdb"]


def test_a_slash_name_is_given_its_dotted_form(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.kdb", extra_arrays={"obs/joint_pos": np.zeros(2)})
    with pytest.raises(ConversionError, match=r"the array under its new name in extra_arrays\) and export the "
                       r"copy; 'obs\.joint_pos' would do, '/' written as '\.'"):  # fmt: skip
        export(src, tmp_path / "a.hdf5", format="hdf5")
    with pytest.raises(ConversionError) as info:
        export(
            _write(tmp_path / "b.kdb", extra_arrays={".": np.zeros(2)}), tmp_path / "b.hdf5", format="hdf5"
        )
    assert "would do" not in str(info.value)


def test_the_advice_works_a_dotted_name_exports(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.kdb", extra_arrays={"obs.joint_pos": np.arange(2.0), "a.b": np.ones(2)})
    export(src, tmp_path / "a.hdf5", format="hdf5")
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        assert f["data/demo_0/obs.joint_pos"][()].tolist() == [0.0, 1.0]
        assert f["data/demo_0/a.b"][()].tolist() == [1.0, 1.0]


def _lerobot() -> None:
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")


def test_lerobot_statistics_of_signalling_nans_and_infinities_warn_nothing(tmp_path: Path) -> None:
    _lerobot()
    src = write_non_finite(tmp_path / "a.kdb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(src, tmp_path / "lr", format="lerobot")
    stats = json.loads((tmp_path / "lr" / "meta" / "stats.json").read_text())
    # the finite values only: 0 and 1 of episode 0, the 0 of episode 1
    assert stats["next.reward"]["min"] == [0.0] and stats["next.reward"]["max"] == [1.0]
    for k in SIGNALLING_NANS:
        got = stats[f"observation.x_{k}"]
        assert (got["min"], got["max"], got["mean"]) == ([0.0], [1.0], [pytest.approx(1 / 3)])


def test_kino_export_lerobot_prints_no_bare_numpy_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _lerobot()
    src = write_non_finite(tmp_path / "a.kdb")
    assert main(["export", str(src), "-o", str(tmp_path / "lr"), "--format", "lerobot"]) == 0
    assert not re.search(r"invalid value|RuntimeWarning", capsys.readouterr().err)
