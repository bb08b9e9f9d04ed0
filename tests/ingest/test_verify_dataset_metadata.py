"""`verify` compares the dataset metadata the converter reads from the source (HDF5
attributes, RLDS dataset_info) with what the ingest stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.ingest import ingest, verify
from kinodb.ingest._verify import _first_difference

h5py = pytest.importorskip("h5py")

from test_hdf5 import write_robomimic  # noqa: E402  (needs h5py)
from test_rlds import make_episode, write_episode_layout  # noqa: E402


def test_a_changed_hdf5_attribute_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=3, mutate=None)
    out = tmp_path / "lift.kdb"
    ingest(src, out, images=False)
    assert verify(src, out).ok
    with h5py.File(src, "r+") as f:  # the source's environment changed since the ingest
        env = json.loads(f["data"].attrs["env_args"])
        env["env_kwargs"]["has_renderer"] = True
        f["data"].attrs["env_args"] = json.dumps(env)
    report = verify(src, out)
    assert not report.ok
    assert report.mismatches == {"metadata": 1}
    assert report.problems == [
        "dataset metadata 'env_args'.'env_kwargs'.'has_renderer': the source has True, the output False"
    ]
    capsys.readouterr()
    assert main(["verify", str(src), str(out)]) == 1
    assert "has_renderer': the source has True, the output False" in capsys.readouterr().out


def test_a_source_key_the_output_lacks_is_named(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=2)
    out = tmp_path / "lift.kdb"
    ingest(src, out, images=False)
    with kinodb.Writer(out, mode="a") as w:  # the stored value dropped after the ingest
        del w.metadata["env_args"]
    report = verify(src, out)
    assert report.problems == ["dataset metadata 'env_args': the source gives it, the output lacks it"]


def test_keys_only_the_output_holds_are_not_compared(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=2)
    out = tmp_path / "lift.kdb"
    ingest(src, out, images=False)
    assert main(["stats", str(out)]) == 0  # adds "stats"
    with kinodb.Writer(out, mode="a") as w:
        w.metadata["operator"] = "alice"
    assert verify(src, out).ok


def test_rlds_dataset_info_is_compared(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    eps = {"train": [make_episode(rng, i, 3) for i in range(4)], "val": [make_episode(rng, 9, 2)]}
    root = write_episode_layout(tmp_path / "toy" / "1.0.0", eps)
    out = tmp_path / "toy.kdb"
    ingest(root, out, format="rlds")
    assert verify(root, out).ok
    info = json.loads((root / "dataset_info.json").read_text())
    info["description"] = "test data, relabelled"  # the source's description changed since the ingest
    (root / "dataset_info.json").write_text(json.dumps(info))
    report = verify(root, out)
    assert report.mismatches == {"metadata": 1}
    assert report.problems == [
        "dataset metadata 'rlds'.'description': the source has 'test data, relabelled', the output 'test data'"
    ]


def test_first_difference_keeps_json_types_apart() -> None:
    assert _first_difference({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]}, "k") is None
    assert _first_difference({"a": 1}, {"a": 1.0}, "k") == "k.'a': the source has 1, the output 1.0"
    assert _first_difference([1, 2], [1], "k") == "k: the source has [1, 2], the output [1]"
    assert _first_difference({"a": 1}, {"a": 1, "b": 2}, "k") == (
        "k.'b': the output holds it, the source does not give it"
    )
    long = "x" * 200
    assert _first_difference(long, "y", "k") == f"k: the source has '{'x' * 76}..., the output 'y'"
