"""The ingest framework with a test-only source: selection, workers, policies, report."""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _fake_source import FakeSource, fake_arrays, write_fake

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import _base, ingest, parse_episodes, source_class


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_base._BUILTIN, "fake", "_fake_source:FakeSource")


@pytest.fixture
def src(tmp_path: Path) -> str:
    eps = [{"key": f"ep{k}", "frames": 3 + k % 4, "seed": 100 + k} for k in range(12)]
    return write_fake(tmp_path / "src", eps)


def _episodes(path: Path) -> list[dict[str, Any]]:
    with kinodb.open(path) as db:
        out = []
        for i in range(len(db)):
            ep = db.read_episode_actions_only(i)
            ep = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in ep.items()}
            ep["jpeg"] = [db.read_image_bytes(i, "cam", t) for t in range(ep["meta"]["num_frames"])]
            out.append(ep)
        return out


def test_ingest_is_exact_and_records_provenance(src: str, tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    report = ingest(src, out, image_codec="png")
    assert (report.episodes, report.format, report.skipped) == (12, "fake", [])
    assert report.frames == sum(3 + k % 4 for k in range(12)) and report.bytes == out.stat().st_size
    with kinodb.open(out) as db:
        for i in range(12):
            want = fake_arrays(100 + i, 3 + i % 4)
            ep = db.read_episode(i)
            assert ep["actions"].dtype == np.float64  # source dtype kept
            np.testing.assert_array_equal(ep["actions"], want["actions"])
            np.testing.assert_array_equal(ep["lang"], want["extra_arrays"]["lang"])
            np.testing.assert_array_equal(ep["images"]["cam"], want["images"]["cam"])  # png is lossless
            meta = ep["meta"]
            assert (meta["source_file"], meta["source_episode"], meta["seed"]) == (src, f"ep{i}", 100 + i)
            assert (meta["embodiment"], meta["task"], meta["fps"]) == ("bot", "stack", 15.0)
        assert db.schema()["states"]["components"] == {"xy": [0, 2]}
        assert db.dataset_info()["source_format"] == "fake-1"
        assert db.metadata()["origin"] == "test"


def test_workers_give_the_same_file(src: str, tmp_path: Path) -> None:
    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    ingest(src, one)
    ingest(src, two, workers=2)
    a, b = _episodes(one), _episodes(two)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b, strict=True):
        assert x["meta"] == y["meta"] and x["jpeg"] == y["jpeg"]
        for name in ("actions", "states", "rewards", "is_terminal", "lang"):
            np.testing.assert_array_equal(x[name], y[name])


def test_selection_overrides_and_dtype(src: str, tmp_path: Path) -> None:
    out = tmp_path / "sel.kdb"
    report = ingest(src, out, episodes="0-2,7", max_episodes=3, embodiment="ur5", task="", fps=30,
                    dtype="float32", images=False)  # fmt: skip
    assert report.episodes == 3
    with kinodb.open(out) as db:
        assert [db.read_meta(i)["source_episode"] for i in range(3)] == ["ep0", "ep1", "ep2"]
        meta = db.read_meta(0)
        assert (meta["embodiment"], meta["task"], meta["fps"]) == ("ur5", "", 30.0)
        assert db.read_array(0, "actions").dtype == np.float32
        assert db.read_array(0, "lang").dtype == np.float32
        assert db.read_array(0, "states").dtype == np.float32
        assert db.cameras(0) == {}
    with pytest.raises(ConversionError, match="has 12 episodes"):
        ingest(src, tmp_path / "x.kdb", episodes=[20])


def test_bad_episode_raises_and_leaves_nothing(tmp_path: Path) -> None:
    src = write_fake(
        tmp_path / "src",
        [{"key": "a", "frames": 3, "seed": 1}, {"key": "b", "frames": 3, "seed": 2, "bad": True}],
    )
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError, match="episode b: key 'actions'"):
        ingest(src, out)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert main(["ingest", src, "-o", str(out), "--format", "fake", "-q"]) == 1
    assert not out.exists()


def test_skip_reports_and_records_what_was_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = [{"key": f"e{k}", "frames": 2, "seed": k, "bad": k in (1, 3)} for k in range(5)]
    src = write_fake(tmp_path / "src", eps)
    out = tmp_path / "out.kdb"
    report = ingest(src, out, on_error="skip", workers=2)
    assert report.episodes == 3 and [k for k, _ in report.skipped] == ["e1", "e3"]
    assert "key 'actions'" in report.skipped[0][1]
    with kinodb.open(out) as db:
        assert [s["episode"] for s in db.metadata()["ingest"]["skipped"]] == ["e1", "e3"]
        assert [db.read_meta(i)["source_episode"] for i in range(3)] == ["e0", "e2", "e4"]
    assert (
        main(["ingest", src, "-o", str(tmp_path / "cli.kdb"), "-F", "fake", "--on-error", "skip", "-q"]) == 0
    )
    captured = capsys.readouterr()
    assert "skipped e1" in captured.out and "2 episodes skipped" in captured.err
    all_bad = write_fake(tmp_path / "bad", [{"key": "z", "frames": 2, "seed": 0, "bad": True}])
    with pytest.raises(ConversionError, match="no episode could be converted"):
        ingest(all_bad, tmp_path / "none.kdb", on_error="skip")
    assert not (tmp_path / "none.kdb").exists()


def test_when_every_episode_fails_the_error_gives_the_reasons_grouped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = [{"key": f"e{k}", "frames": 2, "seed": k, "bad": True} for k in range(6)]
    eps[4]["why"] = "the data file is truncated"
    src = write_fake(tmp_path / "src", eps)
    with pytest.raises(ConversionError) as caught:
        ingest(src, tmp_path / "none.kdb", on_error="skip")
    message = str(caught.value)
    assert message.startswith(
        f"{src}: no episode could be converted (all 6 episodes failed and were skipped)"
    )
    assert "nothing was written" in message and "\n" not in message
    assert f"[e0] {src}: episode e0: key 'actions' has 3 rows, 'states' has 4 (and 4 more episodes for the " \
        "same reason: e1, e2, ..., e5)" in message  # fmt: skip
    assert f"[e4] {src}: episode e4: the data file is truncated" in message
    assert "pass --on-error skip" not in message  # the advice already taken
    assert not (tmp_path / "none.kdb").exists()
    one = write_fake(tmp_path / "one", [{"key": "z", "frames": 2, "seed": 0, "bad": True}])
    assert (
        main(["ingest", one, "-o", str(tmp_path / "cli.kdb"), "-F", "fake", "--on-error", "skip", "-q"]) == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(the one episode failed and was skipped)" in err
    assert f"[z] {one}: episode z: key 'actions' has 3 rows" in err


def test_many_skips_of_one_kind_are_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eps = [{"key": f"e{k}", "frames": 2, "seed": k, "bad": k != 4} for k in range(12)]
    src = write_fake(tmp_path / "src", eps)
    report = ingest(src, tmp_path / "out.kdb", on_error="skip")
    bad = [f"e{k}" for k in range(12) if k != 4]
    assert [k for k, _ in report.skipped] == bad  # the report keeps every one
    lines = report.summary().splitlines()[1:]
    assert [line.split(":")[0] for line in lines[:5]] == [f"skipped {k}" for k in bad[:5]]
    assert all("key 'actions' has 3 rows" in line for line in lines[:5])
    assert lines[5:] == ["skipped 6 more episodes for the same reason (e6, e7, e8, ..., e11)"]
    assert report.summary(shown=20).count("key 'actions' has 3 rows") == 11
    with kinodb.open(tmp_path / "out.kdb") as db:
        assert [s["episode"] for s in db.metadata()["ingest"]["skipped"]] == bad
    assert (
        main(["ingest", src, "-o", str(tmp_path / "cli.kdb"), "-F", "fake", "--on-error", "skip", "-q"]) == 0
    )
    err = capsys.readouterr().err
    assert "warning: 11 episodes skipped (summarised above; every one is listed with its reason" in err


def test_skips_of_different_kinds_are_listed_per_kind(tmp_path: Path) -> None:
    from kinodb.ingest._run import IngestReport

    report = IngestReport("src", "out.kdb", "fake", episodes=1)
    report.skipped = [(f"ep{k}", f"src: episode ep{k}: missing file part-{k}.bin") for k in range(7)]
    report.skipped.insert(2, ("odd", "src: episode odd: actions hold NaN"))
    lines = report.summary(shown=2).splitlines()[1:]
    assert lines == [
        "skipped ep0: src: episode ep0: missing file part-0.bin",
        "skipped ep1: src: episode ep1: missing file part-1.bin",
        "skipped 5 more episodes for the same reason (ep2, ep3, ep4, ..., ep6)",
        "skipped odd: src: episode odd: actions hold NaN",
    ]
    report.skipped = report.skipped[:4]
    assert report.summary(shown=2).splitlines()[3] == "skipped 1 more episode for the same reason (ep2)"


def test_formats_detection_and_entry_points(
    src: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert source_class("auto", src) is FakeSource
    assert source_class("fake", src) is FakeSource
    with pytest.raises(ConversionError, match="unknown source format 'nope'"):
        source_class("nope", src)
    other = tmp_path / "plain.txt"
    other.write_text("hello")
    with pytest.raises(ConversionError, match="cannot tell its format"):
        source_class("auto", str(other))
    with pytest.raises(FileNotFoundError):
        source_class("auto", str(tmp_path / "missing"))
    monkeypatch.delitem(_base._BUILTIN, "fake")
    plugin = EntryPoint(name="thirdparty", value="_fake_source:FakeSource", group=_base.ENTRY_POINT_GROUP)
    looked_up: list[str] = []

    def entry_points(group: str) -> list[EntryPoint]:
        looked_up.append(group)
        return [plugin] if group == _base.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(_base, "entry_points", entry_points)
    _base._plugins.cache_clear()  # looked up by the calls above, before the plugin existed
    try:
        assert "thirdparty" in _base.formats()
        assert source_class("thirdparty", src) is FakeSource
        assert source_class("auto", src) is FakeSource
        # Once per process: the lookup reads every installed distribution's metadata.
        assert looked_up == [_base.ENTRY_POINT_GROUP]
    finally:
        _base._plugins.cache_clear()


def test_parse_episodes() -> None:
    assert parse_episodes("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    for bad in ("a", "1,,2", "-1", "2-x"):
        with pytest.raises(
            ValueError, match=r"bad episode selection episodes=.* use indices and ranges like 0-9,29"
        ):
            parse_episodes(bad)


def test_a_reversed_range_says_so() -> None:
    with pytest.raises(ValueError, match=r"the range '3-1' is reversed; write 1-3"):
        parse_episodes("0,3-1")


@pytest.mark.parametrize("episodes", ["1,1", "0-3,2", [2, 0, 2]])
def test_an_episode_selected_twice_is_a_usage_error(
    src: str, tmp_path: Path, episodes: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # Wrong whatever the source holds: a ValueError (exit 2), raised before the source is read.
    with pytest.raises(ValueError, match=r"episode (1|2) is selected more than once; list each episode once"):
        ingest(src, tmp_path / "a.kdb", episodes=episodes)
    assert not (tmp_path / "a.kdb").exists()
    assert main(["ingest", src, "-o", str(tmp_path / "b.kdb"), "--episodes", "0-2,1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "kino ingest: error: bad episode selection --episodes 0-2,1: episode 1 is selected more than once; "
        "list each episode once (ranges must not overlap)\n"
    )
    assert not (tmp_path / "b.kdb").exists()


def test_a_selection_beyond_the_source_names_its_episodes(
    src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Right as a spec, wrong for this source (12 episodes): a runtime error, exit 1.
    with pytest.raises(
        ConversionError, match=r"has 12 episodes \(positions 0..11\), but episodes='0-99' selects 88"
    ):
        ingest(src, tmp_path / "a.kdb", episodes="0-99")
    assert main(["ingest", src, "-o", str(tmp_path / "b.kdb"), "--episodes", "3,10-99", "-q"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {src} has 12 episodes (positions 0..11), but --episodes 3,10-99 selects 88 beyond the last position "
        "(12, 13, 14, 15, 16 and 83 more); select within 0..11\n"
    )
    with pytest.raises(
        ConversionError,
        match=r"has 12 episodes \(positions 0..11\), but episodes=\[3, 12\] selects 1 beyond the last position \(12\)",
    ):
        ingest(src, tmp_path / "a.kdb", episodes=[3, 12])
    assert not (tmp_path / "a.kdb").exists() and not (tmp_path / "b.kdb").exists()


def test_option_errors(src: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        ingest(src, tmp_path / "a.kdb", on_error="ignore")
    with pytest.raises(ValueError, match="floating dtype"):
        ingest(src, tmp_path / "a.kdb", dtype="int32")
    with pytest.raises(ValueError, match="workers"):
        ingest(src, tmp_path / "a.kdb", workers=0)
    ingest(src, tmp_path / "a.kdb", max_episodes=1)
    with pytest.raises(FileExistsError, match=r"a\.kdb exists; pass overwrite=True to replace it"):
        ingest(src, tmp_path / "a.kdb", max_episodes=1)
    ingest(src, tmp_path / "a.kdb", max_episodes=2, overwrite=True)


@pytest.mark.parametrize("fps", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_fps_zero_or_not_finite_is_an_error_not_unset(src: str, tmp_path: Path, fps: float) -> None:
    with pytest.raises(ValueError, match=r"fps must be a positive number, got"):
        ingest(src, tmp_path / "f.kdb", fps=fps)
    assert not (tmp_path / "f.kdb").exists()
    ingest(src, tmp_path / "f.kdb", fps=0.5, max_episodes=1)  # a slow rate is a rate: stored as given
    with kinodb.open(tmp_path / "f.kdb") as db:
        assert db.read_meta(0)["fps"] == 0.5 and db.metadata()["ingest"]["options"]["fps"] == 0.5


@pytest.mark.parametrize("max_episodes", [0, -1])
def test_max_episodes_must_be_positive(src: str, tmp_path: Path, max_episodes: int) -> None:
    with pytest.raises(ValueError, match=rf"max_episodes must be a positive integer, got {max_episodes}"):
        ingest(src, tmp_path / "m.kdb", max_episodes=max_episodes)


def test_cli_messages_name_the_options_and_python_messages_the_parameters(
    src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.kdb"
    assert main(["ingest", src, "-o", str(out), "-q", "--action-key", "act"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "kino ingest: error: --action-key names the actions of LeRobot, RLDS and zarr datasets; "
    )
    assert "whose converter takes no --action-key (its actions have a fixed place): leave it out" in err
    with pytest.raises(ValueError, match=r"^action_key names .* takes no action_key"):
        ingest(src, out, action_key="act")
    # verify: a dtype the ingest cast to is named as the caller would pass it
    ingest(src, out, dtype="float32", images=False, max_episodes=1)
    assert main(["verify", src, str(out), "--dtype", "float64"]) == 1
    text = capsys.readouterr().out
    assert (
        "actions is float32, the source float64 (if the ingest cast it, verify with --dtype float32)" in text
    )
    assert "dtype=" not in text
    from kinodb.ingest import verify

    problems = verify(src, out, dtype="float64").problems
    assert any("(if the ingest cast it, verify with dtype='float32')" in line for line in problems)


def test_options_a_format_ignores_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    pytest.importorskip("pyarrow")
    import _lerobot_fixtures as F

    from kinodb.ingest import verify

    lerobot = F.write_v2(tmp_path / "lr", F.make_episodes(np.random.default_rng(1), [3, 4]), images="PNG")
    log = tmp_path / "run.ndjson"
    log.write_text("".join(
        json.dumps({"step_id": k, "t_us": 20_000 * k, "joint_angles": [0.1, 0.2], "joint_vels": [0.0, 0.0],
                    "output": [0.5, -0.5]}) + "\n" for k in range(5)
    ))  # fmt: skip
    refused = [
        (lerobot, "lerobot", ["--split", "nope"], "takes no --split (a LeRobot dataset is read whole; select "
         "episodes with --episodes): leave it out"),
        (log, "kinfer-ndjson", ["--split", "nope"], "takes no --split (kinfer logs have no splits; select "
         "episodes with --episodes)"),
        (log, "kinfer-ndjson", ["--state-keys", "a,b"], "takes no --state-keys (its states are always the "
         "joint angles, then the joint velocities)"),
        (log, "kinfer-ndjson", ["--flip-images"], "takes no --flip-images (kinfer logs hold no camera frames)"),
    ]  # fmt: skip
    for path, fmt, options, why in refused:
        out = tmp_path / "o.kdb"
        assert main(["ingest", str(path), "-o", str(out), "-q", *options]) == 2
        err = capsys.readouterr().err
        assert (
            err
            == f"kino ingest: error: {path} is read as {fmt}, whose converter {why}"
            + ("" if why.endswith("leave it out") else ": leave it out")
            + "\n"
        )
        assert not out.exists()
    with pytest.raises(
        ValueError, match=r"is read as lerobot, whose converter takes no split \(.* with episodes\)"
    ):
        ingest(lerobot, tmp_path / "o.kdb", split="train")
    with pytest.raises(ValueError, match=r"is read as kinfer-ndjson, whose converter takes no state_keys"):
        ingest(log, tmp_path / "o.kdb", state_keys=["a"])
    for path in (lerobot, log):  # what applies still works, and verify refuses the same options
        ingest(path, tmp_path / "ok.kdb", overwrite=True)
        with pytest.raises(ValueError, match=r"whose converter takes no split"):
            verify(path, tmp_path / "ok.kdb", split="train")
        assert main(["verify", str(path), str(tmp_path / "ok.kdb"), "--split", "x"]) == 2
        assert "whose converter takes no --split" in capsys.readouterr().err


def test_an_output_that_is_the_source_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import h5py

    src = tmp_path / "demo.hdf5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data/demo_0/actions", data=np.zeros((3, 2)))
    before = src.read_bytes()
    with pytest.raises(ValueError, match=r"is the source itself; choose another output path"):
        ingest(src, src, overwrite=True)
    assert src.read_bytes() == before
    assert main(["ingest", str(src), "-o", str(src), "--force"]) == 2
    assert src.read_bytes() == before


@pytest.mark.parametrize("command", ["ingest", "verify"])
@pytest.mark.parametrize("dtype", ["foo", "int8", "bool"])
def test_a_dtype_that_is_not_floating_is_a_usage_error(
    src: str, tmp_path: Path, command: str, dtype: str, capsys: pytest.CaptureFixture[str]
) -> None:
    made = tmp_path / "made.kdb"
    ingest(src, made, max_episodes=2)
    argv = {
        "ingest": ["ingest", src, "-o", str(tmp_path / "x.kdb"), "-q"],
        "verify": ["verify", src, str(made)],
    }[command]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--dtype", dtype])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: kino {command} ") and "Traceback" not in err
    assert (
        f"argument --dtype: expected a floating dtype such as float32, float16 or float64, got {dtype!r}"
        in err
    )
    assert not (tmp_path / "x.kdb").exists()
    from kinodb.ingest import verify

    with pytest.raises(ValueError, match=rf"dtype must be a floating dtype such as 'float32', got '{dtype}'"):
        verify(src, made, dtype=dtype)


def test_exported_extra_fields_come_back_under_names_the_writer_takes() -> None:
    from kinodb.ingest._base import exported_extra

    meta = {"task": "t", "extra.success": "s", "extra.extra.foo": 1, "foo": 2, "bar": 3}
    # built-ins stay out; every extra. prefix goes; a name then taken gets '_' (no value lost)
    assert exported_extra(meta, frozenset({"task", "success"})) == {
        "success": "s",
        "foo_": 1,
        "foo": 2,
        "bar": 3,
    }
