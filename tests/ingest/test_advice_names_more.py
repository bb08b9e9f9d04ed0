"""More of the ingest's advice names options as the caller gives them: keyword arguments
(``episodes='0-1,3-5'``, ``on_error='skip'``) to a Python caller, ``--options`` on the command
line; and a robomimic file's malformed ``data`` attribute is warned about once."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _fake_source import write_fake

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import _base, ingest, verify

h5py = pytest.importorskip("h5py")

from test_hdf5 import write_robomimic  # noqa: E402  (needs h5py)
from test_hdf5_attrs import write_broken  # noqa: E402
from test_lerobot import _rename_feature  # noqa: E402
from test_verify import _roll_frames_on_ingest  # noqa: E402

LENGTHS = [6, 7, 5, 6]
EPISODES_V3 = Path("meta") / "episodes" / "chunk-000" / "file-000.parquet"


def _kino(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 1) -> str:
    """What ``kino ARGV`` prints on stderr, when it exits with ``code``."""
    capsys.readouterr()
    assert main(list(argv)) == code
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A v2.1 dataset without cameras and a v3.0 dataset with a video camera, written once."""
    root = tmp_path_factory.mktemp("advice_lerobot")
    rng = np.random.default_rng(41)
    plain = F.make_episodes(rng, LENGTHS, cameras={})
    filmed = F.make_episodes(rng, LENGTHS, cameras={F.CAMERA: (16, 16)})
    return {"v2.1": F.write_v2(root / "v21", plain), "v3.0": F.write_v3(root / "v30", filmed, per_file=2)}


def _copy(written: dict[str, Path], version: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written[version], tmp_path / "src"))


def _edit_jsonl(path: Path, line: int, **changes: Any) -> None:
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    rows[line].update(changes)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- episodes to leave out, and on_error ------------------------------------------------------


def test_a_broken_hdf5_demo_names_episodes_and_on_error_as_the_caller_gives_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_broken(tmp_path / "broken.hdf5")
    where = "(positions among the demos of the file, in numeric order)"
    with pytest.raises(ConversionError) as err:
        ingest(src, tmp_path / "o.kdb", format="hdf5", episodes=[2])
    message = str(err.value)
    assert message.endswith(f"select the others with episodes='0-1,3-5' {where}, or pass on_error='skip'")
    assert "--" not in message
    err_text = _kino(capsys, "ingest", str(src), "-o", str(tmp_path / "c.kdb"), "--episodes", "2", "-q")
    assert err_text.rstrip().endswith(
        f"select the others with --episodes 0-1,3-5 {where}, or pass --on-error skip"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_python_skip_reasons_leave_out_the_advice_taken(tmp_path: Path, workers: int) -> None:
    src = write_broken(tmp_path / "broken.hdf5")  # demo_2 and demo_4 cannot be stored
    report = ingest(src, tmp_path / "o.kdb", on_error="skip", workers=workers)
    assert [k for k, _ in report.skipped] == ["demo_2", "demo_4"]
    for (
        key,
        why,
    ) in report.skipped:  # the advice is taken: neither on_error nor the episodes that leave it out
        assert why.startswith(f"{src}: {key}: ") and not why.endswith(")"), why
        assert "on_error" not in why and "--" not in why and "select the others" not in why, why
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert [s["reason"] for s in db.metadata()["ingest"]["skipped"]] == [why for _, why in report.skipped]


@pytest.mark.parametrize(
    "change",
    [{"length": "abc"}, {"tasks": "pick"}],
)
def test_a_bad_lerobot_entry_names_on_error_as_the_caller_gives_it(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any]
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    _edit_jsonl(root / "meta" / "episodes.jsonl", 2, **change)
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb")
    assert str(err.value).endswith("fix this entry, or pass on_error='skip'") and "--" not in str(err.value)
    report = ingest(root, tmp_path / "o.kdb", on_error="skip")
    assert [(k, why.endswith("fix this entry")) for k, why in report.skipped] == [("episode_000002", True)]
    err_text = _kino(capsys, "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q")
    assert err_text.rstrip().endswith("fix this entry, or pass --on-error skip")


def test_a_bad_v3_start_time_names_on_error_as_the_caller_gives_it(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    table = pq.read_table(root / EPISODES_V3)
    name = f"videos/{F.CAMERA}/from_timestamp"
    starts = pa.array([0.0, -1.0, 0.0, 0.5], pa.float64())
    pq.write_table(table.set_column(table.schema.get_field_index(name), name, starts), root / EPISODES_V3)
    with pytest.raises(
        ConversionError, match=r"from_timestamp is -1\.0; .*fix this entry, or pass on_error='skip'$"
    ):
        ingest(root, tmp_path / "o.kdb")
    err_text = _kino(capsys, "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q")
    assert err_text.rstrip().endswith("fix this entry, or pass --on-error skip")


def test_a_missing_v3_video_column_names_images_as_the_caller_gives_it(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    path = root / EPISODES_V3
    pq.write_table(pq.read_table(path).drop([f"videos/{F.CAMERA}/chunk_index"]), path)
    with pytest.raises(ConversionError, match=r"; or pass images=False to leave the videos out$"):
        ingest(root, tmp_path / "o.kdb")
    assert ingest(root, tmp_path / "o.kdb", images=False).episodes == len(LENGTHS)  # as advised
    err_text = _kino(capsys, "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q")
    assert err_text.rstrip().endswith("; or pass --no-images to leave the videos out")


def test_a_bad_export_record_names_on_error_as_the_caller_gives_it(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kdb = tmp_path / "ds.kdb"
    ingest(written["v2.1"], kdb)
    exported = tmp_path / "export"
    kinodb.export.export(kdb, exported, format="lerobot")
    _edit_jsonl(exported / "meta" / "kinodb_episodes.jsonl", 1, meta=[1])
    tail = "ingest the dataset without what kinodb's export recorded beside it"
    with pytest.raises(ConversionError, match=re.escape(f"{tail}, or pass on_error='skip'") + "$"):
        ingest(exported, tmp_path / "o.kdb")
    report = ingest(exported, tmp_path / "o.kdb", on_error="skip")
    assert [(k, why.endswith(tail)) for k, why in report.skipped] == [("episode_000001", True)]
    err_text = _kino(capsys, "ingest", str(exported), "-o", str(tmp_path / "c.kdb"), "-q")
    assert err_text.rstrip().endswith(f"{tail}, or pass --on-error skip")


# -- a LeRobot dataset's columns ---------------------------------------------------------------


def test_a_dataset_without_an_action_feature_names_action_key_and_state_keys(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    _rename_feature(root, "action", "motor_command")
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb")
    assert "with action_key='KEY', and the state with state_keys='K1,K2'; numeric features" in str(err.value)
    err_text = _kino(capsys, "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q")
    assert "with --action-key KEY, and the state with --state-keys K1,K2; numeric features" in err_text
    assert "kino ingest --action-key" not in err_text


@pytest.mark.parametrize(
    ("given", "python", "cli"),
    [
        ({"state_keys": "observation.state,action"}, "or another action_key$", "or another --action-key$"),
        ({"action_key": F.CAMERA}, "holds the actions as action_key; numeric", "holds the actions as --action-key; "),
    ],
)  # fmt: skip
def test_a_wrong_action_feature_names_action_key_as_the_caller_gives_it(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], given: dict[str, str],
    python: str, cli: str,
) -> None:  # fmt: skip
    root = written["v3.0"]
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb", **given)  # type: ignore[arg-type]
    assert re.search(python, str(err.value)) and "--" not in str(err.value), str(err.value)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in given.items()]
    err_text = _kino(capsys, "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q", *argv)
    assert re.search(cli, err_text.rstrip()), err_text


def _both_states(root: Path) -> None:
    """Give a dataset both a ``state`` and a ``states`` feature, neither of them observation.state."""
    _rename_feature(root, "observation.state", "state")
    for path in (root / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.append_column("states", table["state"]), path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["states"] = dict(info["features"]["state"])
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _narrow_actions(root: Path) -> None:
    """Write episode 1's actions as float64 while info.json declares float32."""
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    wide = pa.array(table["action"].to_pylist(), pa.list_(pa.float64(), 4))
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", wide), path)


@pytest.mark.parametrize(
    ("change", "python", "cli"),
    [
        (_both_states, "pass state_keys to choose", "pass --state-keys to choose"),
        (_narrow_actions, "pass dtype='float32' to store", "pass --dtype float32 to store"),
    ],
)
def test_lerobot_warnings_name_options_as_the_caller_gives_them(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, change: Any, python: str, cli: str,
) -> None:  # fmt: skip
    root = _copy(written, "v2.1", tmp_path)
    change(root)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        ingest(root, tmp_path / "o.kdb")
    assert python in caplog.text and "--" not in caplog.text, caplog.text
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "ingest", str(root), "-o", str(tmp_path / "c.kdb"), "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert run.returncode == 0 and cli in run.stderr, run.stderr


# -- episode selection -------------------------------------------------------------------------


def test_the_positions_to_select_are_written_out_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_base._BUILTIN, "fake", "_fake_source:FakeSource")
    # 50 episodes numbered ep0, ep2, ..., ep98: ep50 is at position 25, ep54 at 27, ...
    src = write_fake(tmp_path / "src", [{"key": f"ep{2 * k}", "frames": 2, "seed": k} for k in range(50)])
    asked = ",".join(str(n) for n in range(50, 99, 4))
    positions = ",".join(str(p) for p in range(25, 50, 2))
    assert len(positions) > 30  # longer than a shortened repr keeps
    with pytest.raises(ConversionError) as err:
        ingest(src, tmp_path / "o.kdb", format="fake", episodes=asked)
    assert f"which episodes={positions!r} selects" in str(err.value)
    assert ingest(src, tmp_path / "o.kdb", format="fake", episodes=positions).episodes == 13  # as advised
    err_text = _kino(
        capsys, "ingest", src, "-o", str(tmp_path / "c.kdb"), "-F", "fake", "--episodes", asked, "-q"
    )
    assert f"which --episodes {positions} selects" in err_text


# -- verify ------------------------------------------------------------------------------------


def test_verify_names_format_as_the_caller_gives_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=2)
    out = tmp_path / "lift.kdb"
    ingest(src, out, images=False)
    with pytest.raises(
        ConversionError, match=r"not rlds: leave format out to read the source as the ingest did$"
    ):
        verify(src, out, format="rlds")
    err_text = _kino(capsys, "verify", str(src), str(out), "--format", "rlds")
    assert err_text.rstrip().endswith("not rlds: leave --format out to read the source as the ingest did")


def test_a_failed_verification_points_at_verify_as_the_caller_runs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _roll_frames_on_ingest(monkeypatch)
    src = write_robomimic(tmp_path / "noisy.hdf5", demos=11)  # 2 cameras: 22 mismatched episodes' cameras
    out = tmp_path / "noisy.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(src, out, verify=True)
    assert str(err.value).endswith(
        f"the output file was kept: see kinodb.ingest.verify({str(src)!r}, {str(out)!r}, psnr=DB).summary(), or "
        "delete it"
    )
    summary = verify(src, out).summary()
    assert (
        summary.endswith("  ... 2 more (the report's problems hold the first 1000)")
        and "--json" not in summary
    )
    err_text = _kino(capsys, "ingest", str(src), "-o", str(tmp_path / "c.kdb"), "--verify", "-q")
    assert err_text.rstrip().endswith(
        f"the output file was kept: see 'kino verify {src} {tmp_path / 'c.kdb'} --psnr DB', or delete it"
    )
    capsys.readouterr()
    assert main(["verify", str(src), str(out)]) == 1
    assert "  ... 2 more (use --json for the first 1000)" in capsys.readouterr().out


# -- a data attribute that is not JSON ----------------------------------------------------------


def _not_json(f: Any) -> None:
    f["data"].attrs["env_args"] = "{not json"


def test_a_data_attribute_that_is_not_json_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=3, mutate=_not_json)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        ingest(src, tmp_path / "o.kdb", images=False, verify=True)  # the source is opened three times
    said = [r.getMessage() for r in caplog.records if "env_args" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{src}: data attribute env_args is not JSON ("), said
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert db.metadata()["env_args"] == "{not json"  # kept as text, as the warning says


@pytest.mark.parametrize("workers", ["1", "3"])
def test_kino_ingest_warns_once_of_a_data_attribute_that_is_not_json(tmp_path: Path, workers: str) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=4, mutate=_not_json)
    argv = ["ingest", str(src), "-o", str(tmp_path / "o.kdb"), "-q", "--no-images", "--workers", workers]
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", *argv],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        f"warning: {src}: data attribute env_args is not JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)); kept as text in the metadata"
    ]
