"""`kino infer inspect|replay|bench|plot` and `kino ingest --format kinfer-ndjson`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage
from test_infer_runner import Served

import kinodb
from kinodb.infer import NdjsonLogger, Runner, load_model

Run = Callable[..., int]


@pytest.fixture
def recorded(make_package: MakePackage, tmp_path: Path) -> tuple[Built, Path, Path]:
    """A package, a .kdb of two recorded runs and the NDJSON log of the second."""
    built = make_package()
    model = load_model(built.path)
    data, log = tmp_path / "rollouts.kdb", tmp_path / "run.ndjson"
    for seed in (1, 2):
        Runner(model, Served(built, seed).provider, rate_hz=1000, max_steps=15, record_to=data,
               log_path=log if seed == 2 else None).run()  # fmt: skip
    return built, data, log


def test_inspect_text_and_json(
    kino: Run, make_package: MakePackage, capsys: pytest.CaptureFixture[str]
) -> None:
    built = make_package("0.5", carry=(2, 6), extra_members=[("README.md", b"hi")])
    assert kino("infer", "inspect", built.path) == 0
    out = capsys.readouterr().out
    assert "kinfer 0.5 package" in out and "carry: [2, 6]" in out
    assert "quaternion" in out and "opset 17" in out and "warning: ignored extra archive members" in out
    assert kino("infer", "inspect", built.path, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generation"] == "0.5" and data["joint_names"] == list(built.joints)
    assert data["graphs"]["step_fn.onnx"]["opset"] == 17 and data["graphs"]["step_fn.onnx"]["ir"] == 10
    assert data["members"]["README.md"] == 2
    assert [i["name"] for i in data["inputs"]] == list(built.order)


def test_broken_package_exits_1_with_one_line(
    kino: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.kinfer"
    junk.write_bytes(b"nope")
    assert kino("infer", "inspect", junk) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.kinfer: not a gzip tar archive" in err


def test_replay_reports_per_joint_error(kino: Run, recorded: tuple[Built, Path, Path],
                                        make_package: MakePackage, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    built, data, _ = recorded
    assert kino("infer", "replay", built.path, data, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 30 and report["mae"] == 0.0
    assert [j["joint"] for j in report["joints"]] == list(built.joints)
    other = make_package(seed=9)  # same signature, other weights: the error is no longer zero
    assert kino("infer", "replay", other.path, data, "--episodes", "1") == 0
    out = capsys.readouterr().out
    assert out.startswith("1 episode, 15 frames: MAE ") and "hip" in out
    mae = float(out.split("MAE ")[1].split(",")[0])
    assert mae > 0


def _with_nan(src: Path, out: Path, *, action: tuple[int, int], state: tuple[int, int]) -> None:
    """``src`` rewritten with one recorded action value and one state value of episode 1 NaN."""
    with kinodb.open(src) as db, kinodb.Writer(out, schema=db.schema()) as w:
        for i in range(len(db)):
            ep = db.read_episode(i)
            actions, states = ep["actions"].copy(), ep["states"].copy()
            if i == 1:
                actions[action] = states[state] = np.nan
            m = ep["meta"]
            w.add_episode(actions=actions, states=states, rewards=ep["rewards"], is_terminal=ep["is_terminal"],
                          timestamps=ep["timestamps"], extra_arrays={k: ep[k] for k in db.schema()["arrays"]},
                          embodiment=m["embodiment"], task=m["task"], fps=m["fps"])  # fmt: skip


def test_replay_leaves_nan_out_of_the_errors_and_says_where(
    kino: Run, recorded: tuple[Built, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built, data, _ = recorded
    nan_data = tmp_path / "nan.kdb"
    with kinodb.open(data) as db:
        hip = db.schema()["states"]["names"].index("joint_angles.hip")
    _with_nan(data, nan_data, action=(2, 1), state=(5, hip))
    assert kino("infer", "replay", built.path, nan_data, "--json") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # strict JSON: no NaN
    # The frame fed a NaN angle gives NaN for every joint, and the carry takes it to the
    # episode's last frame (15 frames); the recorded NaN is one value.
    assert report["first_nonfinite"] == {"episode": 1, "frame": 5, "joint": built.joints[0]}
    assert report["nonfinite_predicted"] == (15 - 5) * len(built.joints) and report["nonfinite_recorded"] == 1
    assert report["mae"] == 0.0  # every value compared still matches
    assert [j["nonfinite_recorded"] for j in report["joints"]] == [0, 1, 0, 0]
    assert report["per_episode"][1]["mae"] == 0.0
    assert kino("infer", "replay", built.path, nan_data, "--episodes", "1") == 0
    captured = capsys.readouterr()
    assert "MAE 0," in captured.out and "nan" not in captured.out.lower()
    assert "first at episode 1 frame 5 joint 'hip'" in captured.err
    assert "1 recorded action values are NaN or Inf" in captured.err


def test_replay_with_a_state_map(kino: Run, recorded: tuple[Built, Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    built, data, _ = recorded
    args = ["infer", "replay", built.path, data, "--json", "--state-map",
            "joint_angles=states[0:4]", "joint_angular_velocities=states.joint_angular_velocities"]  # fmt: skip
    assert kino(*args) == 0
    assert json.loads(capsys.readouterr().out)["mae"] == 0.0
    assert kino("infer", "replay", built.path, data, "--state-map", "command=0", "--json") == 0
    assert json.loads(capsys.readouterr().out)["mae"] > 0  # the commands were not zero when recorded
    assert kino("infer", "replay", built.path, data, "--state-map", "joint_angles=states[0:3]") == 1
    assert "gives 3 values per frame; the model's input 'joint_angles' takes 4" in capsys.readouterr().err
    assert kino("infer", "replay", built.path, data, "--state-map", "nonsense") == 2
    assert "expected INPUT=SOURCE" in capsys.readouterr().err


def test_bench_prints_both_latencies(
    kino: Run, make_package: MakePackage, capsys: pytest.CaptureFixture[str]
) -> None:
    built = make_package()
    assert (
        kino("infer", "bench", built.path, "--steps", "300", "--rate", "200", "--seconds", "0.2", "--json")
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["back_to_back_us"]["steps"] == 300 and out["back_to_back_us"]["p50"] > 0
    assert 1 <= out["loop"]["steps"] <= 40 and out["loop"]["step_latency_us"]["p99"] > 0


def test_plot_writes_a_png(kino: Run, recorded: tuple[Built, Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    built, _, log = recorded
    png = tmp_path / "log.png"
    assert kino("infer", "plot", log, "-o", png, "--package", built.path) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert capsys.readouterr().out == f"wrote {png} (15 steps)\n"
    assert kino("infer", "plot", log, "-o", png, "--run", "3", "--force") == 2


def test_kino_ingest_converts_a_log(kino: Run, recorded: tuple[Built, Path, Path], tmp_path: Path) -> None:
    _, _, log = recorded
    out = tmp_path / "log.kdb"
    assert kino("ingest", log, "--format", "kinfer-ndjson", "-o", out, "-q") == 0
    with kinodb.open(out) as db:
        assert len(db) == 1 and db.read_meta(0)["num_frames"] == 15


def test_a_binary_file_given_as_a_log_exits_1_naming_it(
    kino: Run, recorded: tuple[Built, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, _ = recorded
    assert kino("infer", "plot", data, "-o", tmp_path / "x.png") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: line 1: not UTF-8 text: is it an NDJSON log?")
    assert "(a kinodb .kdb file)" in err and "codec" not in err
    binary = tmp_path / "bin.ndjson"  # a binary file named like a log: ingest detects it as one
    binary.write_bytes(data.read_bytes())
    assert kino("ingest", binary, "-o", tmp_path / "bin.kdb", "-q") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {binary}: line 1: not UTF-8 text: is it an NDJSON log?")
    assert not (tmp_path / "bin.kdb").exists()


def test_inspect_says_what_a_file_that_is_no_package_is(
    kino: Run, recorded: tuple[Built, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, log = recorded
    assert kino("infer", "inspect", data) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: not a .kinfer package (a gzip tar of init_fn.onnx, step_fn.onnx, ")
    assert "nor an .onnx model" in err and "it starts with b'KINO" in err and "(a kinodb .kdb file)" in err
    assert "INVALID_PROTOBUF" not in err
    assert kino("infer", "inspect", log) == 1
    assert "it starts with b'{\"step_i' (JSON text)" in capsys.readouterr().err
    checkpoint = tmp_path / "policy.pt"
    checkpoint.write_bytes(b"PK\x03\x04" + bytes(60))
    assert kino("infer", "inspect", checkpoint) == 1
    assert "(a zip archive; a PyTorch checkpoint is one: export it with" in capsys.readouterr().err
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert kino("infer", "inspect", empty) == 1
    assert "empty.onnx: is empty (0 bytes)" in capsys.readouterr().err
    renamed = tmp_path / "data.kinfer"
    renamed.write_bytes(data.read_bytes())
    assert kino("infer", "inspect", renamed) == 1
    assert "not a gzip tar archive" in (err := capsys.readouterr().err) and "(a kinodb .kdb file)" in err


def test_replay_state_map_errors_name_what_exists(
    kino: Run, make_package: MakePackage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = make_package(inputs=("joint_angles", "gyroscope", "carry"), commands=())
    data = tmp_path / "nocommand.kdb"
    Runner(load_model(built.path), Served(built, 1).provider, rate_hz=1000, max_steps=5, record_to=data).run()
    assert kino("infer", "replay", built.path, data, "--state-map", "command=0") == 2
    err = capsys.readouterr().err
    assert "--state-map command=0:" in err and "has no input 'command'" in err
    assert "its observation inputs are joint_angles, gyroscope" in err
    assert kino("infer", "replay", built.path, data, "--state-map", "joint_angles=states.nope") == 1
    err = capsys.readouterr().err
    assert "states has no component 'nope'; its components are ['joint_angles']" in err


def test_plot_refuses_a_package_of_another_policy(
    kino: Run, recorded: tuple[Built, Path, Path], make_package: MakePackage, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    _, _, log = recorded  # 4 joints, 3 commands
    png = tmp_path / "log.png"
    arm = make_package(joints=[f"j{k}" for k in range(7)], commands=())
    assert kino("infer", "plot", log, "-o", png, "--package", arm.path) == 1
    err = capsys.readouterr().err
    assert f"--package {arm.path} has 7 joints (j0, j1, j2, j3, ...), but the log {log} has 4 values" in err
    assert not png.exists()
    fewer_commands = make_package(commands=("vx", "vy"))
    assert kino("infer", "plot", log, "-o", png, "--package", fewer_commands.path) == 1
    assert "has 2 commands (vx, vy), but the log" in capsys.readouterr().err
    assert kino("infer", "plot", log, "-o", png, "--package", make_package().path) == 0


def test_replay_by_position(kino: Run, recorded: tuple[Built, Path, Path], make_package: MakePackage,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, data, _ = recorded
    renamed = make_package(
        joints=("j0", "j1", "j2", "j3")
    )  # the recorded policy's weights, other joint names
    assert kino("infer", "replay", renamed.path, data) == 1
    err = capsys.readouterr().err
    assert "name the joints" in err and "kino infer replay --by-position" in err
    assert kino("infer", "replay", renamed.path, data, "--by-position", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 30 and report["mae"] == 0.0
    assert [j["joint"] for j in report["joints"]] == ["j0", "j1", "j2", "j3"]


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    """A 30-step log (0.6 s) written by kinodb's logger."""
    path = tmp_path / "logs" / "run.ndjson"
    path.parent.mkdir()
    rng = np.random.default_rng(3)
    with NdjsonLogger(path, [("joint_angles", 3), ("gyroscope", 3)], 3) as logger:
        for k in range(30):
            logger.record(k, 1_750_000_000_000_000 + 20_000 * k, 40.0,
                          [rng.normal(size=3).astype(np.float32) for _ in range(3)])  # fmt: skip
    return path


def test_plot_checks_its_output_before_drawing(
    kino: Run, small_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    out = tmp_path / "out"
    out.mkdir()
    before = set(os.listdir(out))
    bare = out / "adir"  # no suffix: matplotlib would write adir.png, not adir
    assert kino("infer", "plot", small_log, "-o", bare) == 2
    err = capsys.readouterr().err
    assert f"-o {bare}: no suffix to pick the image format from" in err and f"{bare}.png" in err
    assert kino("infer", "plot", small_log, "-o", out / "p.txt") == 2
    err = capsys.readouterr().err
    assert f"-o {out / 'p.txt'}: matplotlib cannot write .txt images; use one of" in err and ".png" in err
    assert kino("infer", "plot", small_log, "-o", out) == 2  # a folder
    assert f"-o {out}: is a folder; name the image file to write" in capsys.readouterr().err
    for skip in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_:  # argparse's usage error
            kino("infer", "plot", small_log, "-o", out / "p.png", "--skip", skip)
        assert exit_.value.code == 2
        assert f"--skip: expected a non-negative number of seconds, got '{skip}'" in capsys.readouterr().err
    assert kino("infer", "plot", small_log, "-o", out / "no" / "p.png") == 1
    assert f"{out / 'no'}: No such file or directory" in capsys.readouterr().err
    assert set(os.listdir(out)) == before  # nothing written, no temporary left


def test_plot_refuses_an_existing_output_without_force(
    kino: Run, small_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    png = tmp_path / "p.png"
    png.write_bytes(b"keep me")
    assert kino("infer", "plot", small_log, "-o", png) == 1
    assert capsys.readouterr().err == f"error: {png} exists; pass --force to replace it\n"
    assert png.read_bytes() == b"keep me"
    assert kino("infer", "plot", small_log, "-o", png, "--force", "--skip", "0.2") == 0
    assert capsys.readouterr().out == f"wrote {png} (20 steps)\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "p.svg"  # the suffix picks the format
    assert kino("infer", "plot", small_log, "-o", svg) == 0
    assert b"<svg" in svg.read_bytes()[:1000]
    assert sorted(os.listdir(tmp_path)) == ["logs", "p.png", "p.svg"]  # no temporary left


def test_a_file_that_is_no_log_is_named_as_such(
    kino: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    csv = tmp_path / "log.csv"
    csv.write_text("step,angle\n0,0.1\n1,0.2\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Logs\n\nRuns of the walking policy.\n")
    for path in (csv, readme):
        assert kino("infer", "plot", path, "-o", tmp_path / "p.png") == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: not a kinfer NDJSON log: line 1 is not JSON")
        assert "a log holds one JSON object per step" in err and "sed -i" not in err and "torn" not in err
    assert kino("ingest", csv, "--format", "kinfer-ndjson", "-o", tmp_path / "o.kdb", "-q") == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {csv}: not a kinfer NDJSON log: line 1 is not JSON") and "sed -i" not in err
    )
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "o.kdb").exists()
