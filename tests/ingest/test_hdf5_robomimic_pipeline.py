"""What robomimic's own pipeline writes (robosuite's gather_demonstrations_as_hdf5, then
convert_robosuite.py, dataset_states_to_obs.py and split_train_val.py), as the HDF5 ingest
reads it: each demo's ``model_file`` (kept on request, else warned about) and the fps of a
robosuite env whose ``env_args`` give no ``control_freq``.
The files are written with h5py in that layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main

h5py = pytest.importorskip("h5py")
from _robomimic_pipeline import DEMOS, ENV_ARGS, model_xml, write_robomimic_pipeline  # noqa: E402
from kinodb.ingest import ingest, verify  # noqa: E402  (after h5py is known to be installed)


def _model_file_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "model_file" in r.getMessage()]


# -- model_file ----------------------------------------------------------------------------------


def test_model_file_left_out_is_warned_about_once_with_its_size_and_the_option(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5")
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        ingest(src, out, image_codec="png", verify=True)
    warned = _model_file_warnings(caplog)
    assert len(warned) == 1, warned  # once per file, verify's reading included
    size = len(model_xml(1).encode())
    assert warned[0].startswith(f"{src}: the demo attribute model_file")
    assert f"{size / 1000:.0f} KB in demo_1" in warned[0]
    assert "playback_dataset.py" in warned[0] and "dataset_states_to_obs.py" in warned[0]
    assert "keep_model_file=True" in warned[0]
    with kinodb.open(out) as db:
        assert "MJCF XML" in db.metadata()["hdf5"]["left_out"]["attrs/model_file"]
        assert db.metadata()["ingest"]["options"]["keep_model_file"] is False
        assert all("attrs.model_file" not in db.read_meta(i) for i in range(DEMOS))


def test_the_command_line_warning_names_the_flag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_robomimic_pipeline(tmp_path / "cli.hdf5")
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        assert main(["ingest", str(src), "-o", str(tmp_path / "out.kdb"), "-q"]) == 0
    warned = _model_file_warnings(caplog)
    assert len(warned) == 1 and "pass --keep-model-file to keep it" in warned[0]


def test_keep_model_file_stores_the_xml_exactly_and_verify_compares_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5")
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        report = ingest(src, out, image_codec="png", keep_model_file=True, verify=True)
    assert report.verification is not None and report.verification.ok
    assert not _model_file_warnings(caplog)
    with h5py.File(src) as f, kinodb.open(out) as db:
        for i in range(DEMOS):
            assert db.read_meta(i)["attrs.model_file"] == f[f"data/demo_{i + 1}"].attrs["model_file"]
        assert "attrs/model_file" not in db.metadata()["hdf5"]["left_out"]
        assert db.metadata()["ingest"]["options"]["keep_model_file"] is True
    with h5py.File(src, "a") as f:  # the model of one demo changes: verify re-reads it and differs
        f["data/demo_3"].attrs["model_file"] = model_xml(3).replace("cube_main", "cube_moved")
    again = verify(src, out)
    assert not again.ok and again.mismatches["extra_fields"] == 1


def test_keep_model_file_on_the_command_line(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "cli.hdf5")
    out = tmp_path / "out.kdb"
    assert main(["ingest", str(src), "-o", str(out), "--keep-model-file", "-q"]) == 0
    with kinodb.open(out) as db:
        assert db.read_meta(0)["attrs.model_file"] == model_xml(1)
    assert main(["verify", str(src), str(out)]) == 0


# -- fps --------------------------------------------------------------------------------------------


def test_a_robosuite_env_without_control_freq_runs_at_robosuites_default_20(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5")
    out = tmp_path / "out.kdb"
    report = ingest(src, out, image_codec="png")
    with kinodb.open(out) as db:
        assert {db.read_meta(i)["fps"] for i in range(DEMOS)} == {20.0}
        assert db.metadata()["hdf5"]["fps_from"] == "robosuite default control_freq (20)"
    assert not [n for n in report.notes if "fps" in n]
    # LIBERO's env_args name a robosuite env too; its problem_info marks the file as LIBERO's,
    # whose default is 20 as well.
    libero = write_robomimic_pipeline(tmp_path / "libero.hdf5", env_args={**ENV_ARGS, "bddl_file": "x.bddl"})
    with h5py.File(libero, "a") as f:
        f["data"].attrs["problem_info"] = json.dumps({"language_instruction": "pick up the cube"})
    ingest(libero, tmp_path / "libero.kdb", image_codec="png")
    with kinodb.open(tmp_path / "libero.kdb") as db:
        assert db.read_meta(0)["fps"] == 20.0 and db.metadata()["hdf5"]["fps_from"] == "default (LIBERO)"


def test_a_raw_robosuite_file_without_control_freq_runs_at_20(tmp_path: Path) -> None:
    # gather_demonstrations_as_hdf5 writes env and env_info (the env's kwargs), no env_args.
    src = tmp_path / "demo.hdf5"
    with h5py.File(src, "w") as f:
        data = f.create_group("data")
        data.attrs["env"] = "Lift"
        data.attrs["env_info"] = json.dumps({"env_name": "Lift", "robots": "Panda"})
        g = data.create_group("demo_1")
        g.attrs["model_file"] = model_xml(1)
        g["states"] = np.zeros((4, 32))
        g["actions"] = np.zeros((4, 7))
    out = tmp_path / "out.kdb"
    ingest(src, out)
    with kinodb.open(out) as db:
        assert db.read_meta(0)["fps"] == 20.0
        assert db.metadata()["hdf5"]["fps_from"] == "robosuite default control_freq (20)"


@pytest.mark.parametrize(
    "env_args",
    [
        {"env_name": "Hopper-v2", "type": 2, "env_kwargs": {}},  # a gym env
        {"env_name": "Lift", "env_kwargs": {"robots": "Panda"}},  # no type: no robosuite env said
    ],
    ids=["gym", "no-type"],
)
def test_other_files_without_control_freq_get_the_default_10_with_a_note(
    tmp_path: Path, env_args: dict[str, Any]
) -> None:
    src = write_robomimic_pipeline(tmp_path / "env.hdf5", env_args=env_args)
    out = tmp_path / "out.kdb"
    report = ingest(src, out, image_codec="png")
    with kinodb.open(out) as db:
        assert db.read_meta(0)["fps"] == 10.0 and db.metadata()["hdf5"]["fps_from"] == "default"
    noted = [n for n in report.notes if n.startswith("fps is 10, kinodb's default")]
    assert len(noted) == 1 and noted[0].endswith("give the rate with fps")
    # Where the file gives a control_freq there is no note, and no default.
    kwargs = {**env_args.get("env_kwargs", {}), "control_freq": 15}
    given = write_robomimic_pipeline(tmp_path / "given.hdf5", env_args={**env_args, "env_kwargs": kwargs})
    report = ingest(given, tmp_path / "given.kdb", image_codec="png")
    assert not [n for n in report.notes if "fps" in n]
    with kinodb.open(tmp_path / "given.kdb") as db:
        assert db.read_meta(0)["fps"] == 15.0
