"""A damaged or odd HDF5 file fails where it is damaged, naming the file, the demo and the
object, and the other demos still convert; JSON attributes holding NaN are kept as text."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError

h5py = pytest.importorskip("h5py")
from test_hdf5 import write_robomimic  # noqa: E402  (needs h5py)

from kinodb.export import export  # noqa: E402
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

DEMOS = 13


def damage(path: Path, target: str, n: int = 16) -> Path:
    """Overwrite the first ``n`` bytes of the object header of ``target`` with zeros."""
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[target].id).addr
    raw = bytearray(path.read_bytes())
    raw[addr : addr + n] = bytes(n)
    path.write_bytes(bytes(raw))
    return path


def source_episodes(out: Path) -> list[str]:
    with kinodb.open(out) as db:
        return [db.read_meta(i)["source_episode"] for i in range(len(db))]


DAMAGED = {  # the object whose header is damaged -> the demo
    "data/demo_2": "demo_2",
    "data/demo_2/actions": "demo_2",
    "data/demo_5/obs": "demo_5",
    "data/demo_7/obs/robot0_eef_pos": "demo_7",
}


@pytest.mark.parametrize("target", sorted(DAMAGED))
def test_a_damaged_object_header_fails_its_demo_alone_naming_it(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = DAMAGED[target]
    src = damage(write_robomimic(tmp_path / "lift.hdf5"), target)
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(src, out, image_codec="raw")
    message = str(err.value)
    assert message.startswith(f"{src}: {demo}: h5py cannot read {target} (")
    assert "bad object header" in message and "h5dump" in message and "on_error='skip'" in message
    assert not out.exists() and list(tmp_path.glob(".out.kdb*")) == []

    assert main(["ingest", str(src), "-o", str(out), "-q", "--image-codec", "raw"]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"error: {src}: {demo}: h5py cannot read {target}")
    assert err_lines[0].endswith(", or pass --on-error skip")
    assert not out.exists()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("target", ["data/demo_2", "data/demo_2/actions"])
def test_with_skip_the_damaged_demo_is_left_out_and_the_rest_converts(
    tmp_path: Path, target: str, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    src = damage(write_robomimic(tmp_path / "lift.hdf5"), target)
    out = tmp_path / "out.kdb"
    argv = ["ingest", str(src), "-o", str(out), "-q", "--image-codec", "raw", "--on-error", "skip"]
    assert main([*argv, "--workers", str(workers)]) == 0
    captured = capsys.readouterr()
    assert (
        "Traceback" not in captured.err and f"skipped demo_2: {src}: demo_2: h5py cannot read" in captured.out
    )
    assert source_episodes(out) == [f"demo_{i}" for i in range(DEMOS) if i != 2]
    with kinodb.open(out) as db:
        (skipped,) = db.metadata()["ingest"]["skipped"]
        assert skipped["episode"] == "demo_2" and target in skipped["reason"]


def test_num_samples_as_text_names_the_attribute_and_where_the_length_comes_from(tmp_path: Path) -> None:
    def text_count(f: Any) -> None:
        f["data/demo_4"].attrs["num_samples"] = "five"

    src = write_robomimic(tmp_path / "lift.hdf5", mutate=text_count)
    with pytest.raises(ConversionError) as err:
        ingest(src, tmp_path / "out.kdb", image_codec="raw")
    message = str(err.value)
    assert message.startswith(f"{src}: demo_4: attribute data/demo_4/attrs/num_samples is 'five'; expected")
    assert "an integer" in message and "the episode length comes from actions" in message
    assert "ValueError" not in message
    report = ingest(src, tmp_path / "out.kdb", image_codec="raw", on_error="skip")
    assert [k for k, _ in report.skipped] == ["demo_4"] and report.episodes == DEMOS - 1


def test_num_samples_as_a_whole_float_is_the_count(tmp_path: Path) -> None:
    def float_count(f: Any) -> None:
        demo = f["data/demo_4"]
        demo.attrs["num_samples"] = float(len(demo["actions"]))

    src = write_robomimic(tmp_path / "lift.hdf5", mutate=float_count)
    assert ingest(src, tmp_path / "out.kdb", image_codec="raw").episodes == DEMOS


def with_env_args(env_args: dict[str, Any]) -> Any:
    def mutate(f: Any) -> None:
        f["data"].attrs["env_args"] = json.dumps(env_args)  # json.dumps writes NaN and Infinity

    return mutate


def test_env_args_holding_nan_is_kept_as_the_files_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env_args = {"env_name": "Lift", "type": 1,
                "env_kwargs": {"robots": ["Panda"], "control_freq": 15, "reward_scale": float("nan"),
                               "limits": [0.5, float("-inf")]}}  # fmt: skip
    src = write_robomimic(tmp_path / "lift.hdf5", mutate=with_env_args(env_args))
    with h5py.File(src, "r") as f:
        stored = f["data"].attrs["env_args"]
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        report = ingest(src, out, image_codec="raw")
    assert report.episodes == DEMOS
    with kinodb.open(out) as db:
        meta = db.metadata()
        assert meta["env_args"] == stored  # the text, exactly
        why = meta["hdf5"]["as_text"]["data/attrs/env_args"]
        assert "env_kwargs.reward_scale (NaN)" in why and "env_kwargs.limits[1] (-Infinity)" in why
        assert meta["env_name"] == "Lift" and meta["env_type"] == 1
        assert db.read_meta(0)["embodiment"] == "Panda" and db.read_meta(0)["fps"] == 15.0
    warned = [r.getMessage() for r in caplog.records if "data/attrs/env_args" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{src}: data/attrs/env_args holds NaN")
    back = tmp_path / "back.hdf5"
    export(out, back, format="hdf5")
    with h5py.File(back, "r") as f:
        assert f["data"].attrs["env_args"] == stored  # exported as the source's text, exactly


def test_an_infinite_control_freq_is_no_fps(tmp_path: Path) -> None:
    env_args = {"env_name": "Lift", "env_kwargs": {"robots": "Panda", "control_freq": float("inf")}}
    src = write_robomimic(tmp_path / "lift.hdf5", mutate=with_env_args(env_args))
    out = tmp_path / "out.kdb"
    ingest(src, out, image_codec="raw")
    with kinodb.open(out) as db:
        assert db.read_meta(0)["fps"] == 10.0 and db.metadata()["hdf5"]["fps_from"] == "default"
        assert "Infinity" in db.metadata()["env_args"]


def test_problem_info_holding_nan_is_kept_as_text_too(tmp_path: Path) -> None:
    def mutate(f: Any) -> None:
        f["data"].attrs["problem_info"] = json.dumps({"language_instruction": "open it", "weight": np.nan})

    src = write_robomimic(tmp_path / "lift.hdf5", mutate=mutate)
    out = tmp_path / "out.kdb"
    ingest(src, out, image_codec="raw")
    with kinodb.open(out) as db:
        assert db.metadata()["problem_info"] == json.dumps(
            {"language_instruction": "open it", "weight": np.nan}
        )
        assert db.read_meta(0)["task"] == "open it"
        assert "weight (NaN)" in db.metadata()["hdf5"]["as_text"]["data/attrs/problem_info"]


def test_a_damaged_filter_key_is_named(tmp_path: Path) -> None:
    src = damage(write_robomimic(tmp_path / "lift.hdf5"), "mask/valid")
    with pytest.raises(ConversionError, match=r"h5py cannot read the filter key mask/valid \("):
        ingest(src, tmp_path / "out.kdb", image_codec="raw")


def test_demos_skipped_for_one_reason_are_one_reason(tmp_path: Path) -> None:
    """The advice on leaving a demo out (--episodes naming the others) is dropped once the
    demo is skipped: it differed per demo and split one cause into several reasons."""
    import h5py

    path = tmp_path / "some_bad.hdf5"
    with h5py.File(path, "w") as f:
        for k in range(8):
            f.create_dataset(f"data/demo_{k}/obs/x", data=np.zeros((4, 1)))
            if k % 3:  # demos 0, 3, 6 lack actions
                f.create_dataset(f"data/demo_{k}/actions", data=np.zeros((4, 2)))
    report = ingest(path, tmp_path / "out.kdb", on_error="skip")
    assert [k for k, _ in report.skipped] == ["demo_0", "demo_3", "demo_6"]
    assert all(why.endswith("every demo needs an actions dataset (T, A)") for _, why in report.skipped)
    from kinodb.ingest._run import _group_by_reason

    assert len(_group_by_reason(report.skipped)) == 1
