"""The `kino` command line: outputs, exit codes and error lines."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "12", "--frames", "20", "--images", "--compress", "80"]) == 0
    return path


def test_create_test_writes_varied_episodes(dataset: Path) -> None:
    with kinodb.open(dataset) as db:
        table = db.episodes()
        assert len(db) == 12 and db.num_frames() == 240
        assert len(set(table["embodiment"])) == 4
        assert {True, False, None} <= set(table["success"].tolist())
        front = db.read_episode(0)["images"]["front"]
        assert front.shape == (20, 64, 64, 3)
        # the content moves: consecutive frames differ
        assert np.abs(front[0].astype(int) - front[10].astype(int)).sum() > 0
        assert db.schema()["states"]["components"]["eef_pos"] == [7, 10]


def test_create_test_is_deterministic_in_seed(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.kdb" for n in "abc")
    main(["create-test", str(a), "-n", "3", "--seed", "5"])
    main(["create-test", str(b), "-n", "3", "--seed", "5"])
    main(["create-test", str(c), "-n", "3", "--seed", "6"])
    with kinodb.open(a) as da, kinodb.open(b) as db_, kinodb.open(c) as dc:
        assert np.array_equal(da.read_array(2, "states"), db_.read_array(2, "states"))
        assert not np.array_equal(da.read_array(2, "states"), dc.read_array(2, "states"))


def test_info_schema_validate_ok(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(dataset), "--episodes"]) == 0
    out = capsys.readouterr().out
    assert "episodes: 12" in out and "franka" in out and "EMBODIMENT" in out
    assert main(["info", str(dataset), "--json", "--episodes"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_episodes"] == 12 and len(info["episodes"]) == 12
    assert main(["schema", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "eef_pos" in out and "camera:front" in out and "jpeg" in out
    assert main(["schema", str(dataset), "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["sections"]["actions"]["bytes"] == 12 * 20 * 7 * 4
    assert main(["validate", str(dataset), "--verbose"]) == 0
    assert "OK (0 errors" in capsys.readouterr().out


def test_validate_fails_on_flipped_payload_byte(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kinodb.open(dataset) as db:
        off = int(db._cols["payload_offset"][5]) + 100  # inside episode 5's actions
    raw = bytearray(dataset.read_bytes())
    raw[off] ^= 0xFF
    dataset.write_bytes(bytes(raw))
    assert main(["validate", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "episode 5: payload checksum mismatch" in out and "FAILED" in out


def test_validate_fails_on_undecodable_frame(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "img.kdb"
    main(["create-test", str(path), "-n", "2", "--frames", "4", "--images", "--compress", "90"])
    with kinodb.open(path) as db:
        cam = db._episode_cameras(1)["wrist"]
        off = cam.data_offset + int(cam.frame_offsets[2]) + 20  # inside frame 2's JPEG header
    raw = bytearray(path.read_bytes())
    raw[off : off + 200] = bytes(200)
    path.write_bytes(bytes(raw))
    assert main(["validate", str(path), "--verbose"]) == 1
    out = capsys.readouterr().out
    assert "episode 1" in out and "'wrist'" in out and "frame 2" in out


def test_validate_warns_on_nan_but_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nan.kdb"
    acts = np.zeros((5, 3), np.float32)
    acts[2, 1] = np.nan
    acts[3, 0] = np.inf
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((5, 3), np.float32))
        w.add_episode(actions=acts)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "actions: 1 NaN and 1 Inf values in 1 episode (first: episode 1)" in out


def test_errors_are_one_line_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing.kdb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "No such file" in err
    bad = tmp_path / "bad.kdb"
    bad.write_bytes(b"not a kinodb file at all, just some text" * 4)
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a .kdb file" in err and "Traceback" not in err
    assert main(["--debug", "info", str(bad)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_info_on_a_source_of_another_format_says_how_to_convert_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    with h5py.File(tmp_path / "lift.hdf5", "w") as f:
        f["data/demo_0/actions"] = np.zeros((3, 7))
        f["data/demo_0/obs/robot0_eef_pos"] = np.ones((3, 3))
    assert main(["info", "lift.hdf5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lift.hdf5: not a .kdb file" in err
    assert (
        "it looks like hdf5 (robomimic/LIBERO HDF5): convert it with kino ingest lift.hdf5 -o lift.kdb" in err
    )
    command = err.split("convert it with ", 1)[1].strip()
    assert main([*shlex.split(command)[1:], "-q"]) == 0  # the advice works as printed
    capsys.readouterr()
    assert main(["info", "lift.kdb"]) == 0
    assert "episodes: 1" in capsys.readouterr().out
    (tmp_path / "my demos").mkdir()  # a LeRobot folder, with a space to quote
    (tmp_path / "my demos" / "meta").mkdir()
    (tmp_path / "my demos" / "meta" / "info.json").write_text("{}")
    assert main(["info", "my demos"]) == 1
    err = capsys.readouterr().err
    assert "my demos: a folder, not a .kdb file; it looks like lerobot" in err
    assert err.rstrip().endswith("kino ingest 'my demos' -o 'my demos.kdb'")
    assert main(["info", str(tmp_path)]) == 1  # a folder no format recognises: no advice
    assert "kino ingest" not in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello, not a dataset of any kind" * 4)
    assert main(["info", "notes.txt"]) == 1
    err = capsys.readouterr().err
    assert "not a .kdb file" in err and "kino ingest" not in err


def test_create_test_refuses_to_overwrite(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-test", str(dataset)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["create-test", str(dataset), "-n", "2", "--force"]) == 0
    with kinodb.open(dataset) as db:
        assert len(db) == 2


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["create-test", "x.kdb", "--compress", "101"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["create-test", "/nonexistent-dir-for-kino/x.kdb", "-n", "0"])
    assert exc.value.code == 2


@pytest.mark.integration
def test_console_script_runs(dataset: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "validate", str(dataset)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_upgrade_legacy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _legacy_encoder import encode, encoded_frames, random_episode

    rng = np.random.default_rng(3)
    eps = [random_episode(rng, 6, 4, 3, embodiment="widowx", task="wipe", success=2) for _ in range(3)]
    frames = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    eps[1].images = {"front": encoded_frames(frames)}
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode(eps))
    assert main(["validate", str(old)]) == 0
    assert "no checksums" in capsys.readouterr().out
    assert main(["upgrade", str(old), str(new)]) == 0
    assert "3 episodes" in capsys.readouterr().out
    with kinodb.open(old) as a, kinodb.open(new) as b:
        assert (a.version(), b.version()) == ("0.1", "1.0")
        for i in range(3):
            np.testing.assert_array_equal(a.read_array(i, "actions"), b.read_array(i, "actions"))
        assert a.read_image_bytes(1, "front", 4) == b.read_image_bytes(1, "front", 4)
    assert main(["validate", str(new)]) == 0
    capsys.readouterr()
    assert main(["upgrade", str(old), str(new)]) == 1  # exists: the command's own fix is named
    assert f"{new} exists; pass --force to replace it" in capsys.readouterr().err
    assert main(["upgrade", str(old), str(new), "--force"]) == 0
    assert main(["merge", str(new), str(new), "-o", str(old)]) == 1
    assert "exists; pass --force to replace it" in capsys.readouterr().err


def test_a_reader_that_closes_early_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    # `kino info --episodes PATH | head -1`: the pipe closes while kino still writes. No
    # traceback, but no success either: 141 (128 + SIGPIPE), as a shell reports `seq | head`.
    dataset = tmp_path / "many.kdb"  # a listing far larger than a pipe's buffer, so kino is still writing
    with kinodb.Writer(dataset) as w:
        for _ in range(4000):
            w.add_episode(actions=np.zeros((1, 1), np.float32), task="a task long enough to fill the pipe")
    code = (
        "import sys\n"
        "from kinodb._cli.main import main\n"
        "sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1, closefd=False)\n"
        f"sys.exit(main(['info', '--episodes', {str(dataset)!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()  # the reader is gone after one line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert err == b""


@pytest.mark.parametrize(
    "command",
    [
        ["query", "{src}", "sucess = true"],
        ["merge", "{src}", "-o", "{out}", "-F", "sucess = true"],
        ["export", "{src}", "-o", "{out}", "-F", "numpy", "--filter", "sucess = true"],
        ["mix", "-s", "{src}", "--filter", "sucess = true"],
    ],
    ids=["query", "merge", "export", "mix"],
)
def test_kql_errors_keep_the_caret_under_the_query(
    dataset: Path, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [a.format(src=dataset, out=out) for a in command]
    assert main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and "unknown field 'sucess' at position 0" in lines[0]
    at = lines.index("  sucess = true")
    assert lines[at + 1] == "  ^"  # under the 's' of 'sucess'
    assert "did you mean success?" in lines[at + 2 :]
    assert not out.exists()


def test_a_kql_type_error_points_at_the_value(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["merge", str(dataset), "-o", str(tmp_path / "m.kdb"), "-F", "success = 3"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and "type mismatch" in lines[0]
    at = lines.index("  success = 3")
    assert lines[at + 1].index("^") == lines[at].index("3")


def _mixed_dims(tmp_path: Path) -> Path:
    """A merge of 3 episodes with 7-d actions and 1 with 26-d actions (and 4-d vs 0-d states)."""
    a, b, merged = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "merged.kdb"
    with kinodb.Writer(a) as w:
        for _ in range(3):
            w.add_episode(actions=np.zeros((5, 7), np.float32), states=np.zeros((5, 4), np.float32))
    with kinodb.Writer(b) as w:
        w.add_episode(actions=np.zeros((6, 26), np.float64))
    assert main(["merge", str(a), str(b), "-o", str(merged)]) == 0
    return merged


def test_schema_shows_dims_that_differ_between_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = _mixed_dims(tmp_path)
    capsys.readouterr()
    assert main(["schema", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "dim None" not in out
    assert (
        "actions: dims differ between episodes: 7 (3 episodes), 26 (1 episode); "
        "dtypes differ between episodes: float32 (3 episodes), float64 (1 episode)"
    ) in out
    assert "states: dims differ between episodes: 0 (1 episode), 4 (3 episodes); float32" in out
    row = next(line for line in out.splitlines() if line.startswith("actions "))
    assert "float32|float64" in row and "(T, 7|26)" in row
    assert main(["schema", str(merged), "--json"]) == 0
    actions = json.loads(capsys.readouterr().out)["sections"]["actions"]
    assert actions["shape"] is None and actions["dtype"] is None and actions["episodes"] == 4
    assert actions["variants"] == [
        {"dtype": "float32", "shape": ["T", 7], "episodes": 3},
        {"dtype": "float64", "shape": ["T", 26], "episodes": 1},
    ]


def test_schema_of_uniform_episodes_shows_one_dim(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "actions: dim 7, float32" in out and "states: dim 14, float32" in out and "differ" not in out
    assert main(["schema", str(dataset), "--json"]) == 0
    actions = json.loads(capsys.readouterr().out)["sections"]["actions"]
    assert actions["shape"] == ["T", 7] and actions["variants"] == [
        {"dtype": "float32", "shape": ["T", 7], "episodes": 12}
    ]


def test_schema_columns_fit_long_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # robomimic's camera and state names: longer than the columns were once wide.
    path = tmp_path / "lift.kdb"
    comps = {"robot0_joint_pos_cos_and_sin": [0, 3], "robot0_gripper_qpos": [3, 5]}
    with kinodb.Writer(path, image_codec="png", schema={"states": {"components": comps}}) as w:
        w.add_episode(
            actions=np.zeros((3, 7), np.float32),
            states=np.zeros((3, 5), np.float32),
            images={"robot0_eye_in_hand_image": np.zeros((3, 12, 10, 3), np.uint8),
                    "agentview_image_with_a_much_longer_name_still": np.zeros((3, 4, 4, 3), np.uint8)},
        )  # fmt: skip
    assert main(["schema", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("SECTION"))) :]
    cells = [re.split(r" {2,}", line.strip()) for line in table]
    assert all(len(row) == 6 for row in cells), table  # every column at least two spaces apart
    by_name = {row[0]: row for row in cells}
    assert by_name["camera:robot0_eye_in_hand_image"][1:4] == ["camera", "png", "(T, 12, 10, 3)"]
    assert by_name["camera:agentview_image_with_a_much_longer_name_still"][1] == "camera"
    assert len({re.match(r"\S+ {2,}", line).end() for line in table}) == 1  # KIND lines up
    listed = [line.split() for line in lines if line.startswith("  ")]
    assert ["robot0_joint_pos_cos_and_sin", "[0:3]"] in listed
    assert ["robot0_eye_in_hand_image", "12x10x3", "png"] in listed
    assert ["agentview_image_with_a_much_longer_name_still", "4x4x3", "png"] in listed


@pytest.mark.parametrize("command", ["ingest", "verify"])
def test_an_unknown_source_format_is_a_usage_error(
    dataset: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "ingest": ["ingest", str(tmp_path), "-o", str(tmp_path / "x.kdb"), "--format", "tfrecord"],
        "verify": ["verify", str(tmp_path), str(dataset), "--format", "tfrecord"],
    }[command]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: kino {command}")
    assert "unknown format 'tfrecord'; accepted: auto (detect), hdf5 (robomimic/LIBERO HDF5)" in err
    assert "lerobot (" in err and "rlds (RLDS/TFDS TFRecord shards)" in err
    assert not (tmp_path / "x.kdb").exists()


def test_info_shows_the_frame_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _factories import write_episodes

    a, b, merged = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "m.kdb"
    write_episodes(a, [3, 4], fps=5.0)
    write_episodes(b, [5], fps=30.0)
    kinodb.merge([a, b], merged)
    assert main(["info", str(a)]) == 0
    assert "  fps: 5\n" in capsys.readouterr().out
    assert main(["info", str(merged)]) == 0
    assert "  fps: 5 (2 episodes), 30 (1 episode)\n" in capsys.readouterr().out


def test_create_test_into_a_folder_says_it_is_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["create-test", str(tmp_path)]) == 1
    assert f"{tmp_path} is a folder; give the path of a .kdb file" in capsys.readouterr().err


def test_info_json_is_strict_and_the_table_keeps_its_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _legacy_encoder import encode, random_episode

    rng = np.random.default_rng(0)
    legacy = tmp_path / "legacy.kdb"  # 0.1 files can hold a NaN or infinite total_reward
    legacy.write_bytes(
        encode([random_episode(rng, 3, 2, 2, total_reward=v) for v in (float("nan"), float("inf"), 1.5)])
    )
    capsys.readouterr()
    assert main(["info", str(legacy), "--json", "--episodes"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert [e["total_reward"] for e in doc["episodes"]] == [None, None, 1.5]

    odd = tmp_path / "odd.kdb"
    with kinodb.Writer(odd) as w:
        w.add_episode(actions=np.zeros((2, 1), np.float32), embodiment="日本ロボット", task="pick\nplace")
        w.add_episode(actions=np.zeros((3, 1), np.float32), embodiment="franka", task="pick")
    assert main(["info", str(odd), "--episodes"]) == 0
    out = capsys.readouterr().out
    assert "  tasks: 2: pick; pick place\n" in out
    rows = [line for line in out.splitlines() if line.endswith(("pick place", "  pick"))][-2:]
    assert rows == [
        "     0  日本ロボット        2    1     0  -       pick place",
        "     1  franka              3    1     0  -       pick",
    ]
