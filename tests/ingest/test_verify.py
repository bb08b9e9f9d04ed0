"""Ingest verification: a correct ingest verifies, and every kind of damage is caught."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from kinodb._cli import verify as verify_cli
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import VerifyReport, ingest, verify
from kinodb.ingest._verify import frame_psnr, max_abs_diff
from kinodb.kdb._codecs import DAMAGED_ADVICE, EncodedFrames
from kinodb.kdb.upgrade import episode_args
from kinodb.kdb.validate import validate

h5py = pytest.importorskip("h5py")

from test_hdf5 import CAMERAS, write_robomimic  # noqa: E402  (needs h5py)
from test_rlds import SHARD0, _flip, _offsets, write_episode_layout  # noqa: E402
from test_rlds import make_episode as rlds_episode  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
LEROBOT = SAMPLES / "unitree_g1_lerobot_v21"


# -- fixtures -----------------------------------------------------------------------------


def smooth_cameras(f: Any) -> None:
    """Replace the fixture's noise frames by gradients, which JPEG keeps at a high PSNR."""
    rng = np.random.default_rng(3)
    for g in f["data"].values():
        T = g["actions"].shape[0]
        for key, (h, w) in CAMERAS.items():
            frames = smooth_frames(rng, (T + 1, h, w, 3))  # next_obs is obs one frame later
            del g[f"obs/{key}"]
            g[f"obs/{key}"] = frames[:-1]
            if f"next_obs/{key}" in g:
                del g[f"next_obs/{key}"]
                g[f"next_obs/{key}"] = frames[1:]


@pytest.fixture
def robomimic(tmp_path: Path) -> Path:
    return write_robomimic(tmp_path / "lift.hdf5", start=1, mutate=smooth_cameras)


@pytest.fixture
def noisy(tmp_path: Path) -> Path:
    """Random-noise frames: JPEG cannot keep them (PSNR ~12 dB)."""
    return write_robomimic(tmp_path / "noisy.hdf5", demos=3)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """The RLDS toy dataset of test_rlds: JPEG and PNG cameras, train (2 shards) and val."""
    rng = np.random.default_rng(7)
    train = [rlds_episode(rng, i, T, final_reward=float(i % 2)) for i, T in enumerate([3, 5, 4, 6, 2])]
    val = [rlds_episode(rng, 100 + i, 4) for i in range(2)]
    return write_episode_layout(tmp_path / "toy_dataset" / "1.0.0", {"train": train, "val": val})


def rewrite(
    src: Path,
    dst: Path,
    *,
    drop: Collection[int] = (),
    edit: Callable[[int, dict[str, Any]], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Copy a .kdb file episode by episode, dropping or editing some (a tampered output)."""
    with kinodb.open(src) as db:
        schema = {k: v for k, v in db.schema().items() if k in ("actions", "states")}
        meta = db.metadata() if metadata is None else metadata
        with kinodb.Writer(dst, mode="x", image_codec="png", schema=schema, metadata=meta) as w:
            for i in range(len(db)):
                if i in drop:
                    continue
                if edit is None:
                    w.copy_episode(db, i)
                else:
                    args = episode_args(db, i)
                    edit(i, args)
                    w.add_episode(**args)
    return dst


def flip_sign(path: Path, dst: Path, episode: int, name: str) -> float:
    """Copy ``path`` with the sign bit of ``name[0, 0]`` of one episode flipped; return that value."""
    with kinodb.open(path) as db:
        arr = np.array(db.read_array(episode, name))
    data = bytearray(path.read_bytes())
    at = data.find(arr.tobytes())
    assert at > 0 and data.find(arr.tobytes(), at + 1) == -1
    data[at + arr.itemsize - 1] ^= 0x80  # little-endian: the last byte holds the sign
    dst.write_bytes(bytes(data))
    return float(arr.flat[0])


def cli(*argv: Any) -> int:
    """Run ``kino verify ARGV`` through a parser built with `register`."""
    parser = argparse.ArgumentParser(prog="kino")
    verify_cli.register(parser.add_subparsers())
    args = parser.parse_args(["verify", *map(str, argv)])
    return int(args.run(args))


def assert_exact(report: VerifyReport) -> None:
    assert report.ok, report.summary()
    assert report.arrays and set(report.arrays.values()) == {0.0}
    assert not report.missing and not report.extra and not report.mismatches


# -- correct ingests verify ---------------------------------------------------------------


def test_hdf5_png_ingest_is_exact(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out, image_codec="png")
    report = verify(robomimic, out)
    assert_exact(report)
    assert (report.format, report.episodes_compared) == ("hdf5", 13)
    assert set(report.arrays) == {"actions", "states", "rewards", "is_terminal", "sim_state"}
    for cam in CAMERAS:
        check = report.cameras[cam]
        assert (
            check.codecs == {"png"}
            and check.frames == check.reencoded == check.exact == report.frames_compared
        )
        assert check.min_psnr == float("inf") and check.passed_through == 0
    assert cli(robomimic, out) == 0
    assert ": OK" in capsys.readouterr().out


def test_hdf5_jpeg_ingest_passes_the_psnr_threshold(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out)  # JPEG q95
    report = verify(robomimic, out)
    assert_exact(report)
    for cam in CAMERAS:
        assert report.cameras[cam].codecs == {"jpeg"}
        assert 35.0 <= report.cameras[cam].min_psnr < float("inf")
    assert cli(robomimic, out, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] and shown["cameras"]["agentview_image"]["min_psnr"] >= 35.0


def test_options_are_recorded_and_reused(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out, image_codec="png", dtype="float32", split="train", state_keys=["object", "robot0_eef_pos"],
           embodiment="panda-x", task="lift it", fps=7.5, episodes="1-4", max_episodes=3)  # fmt: skip
    with kinodb.open(out) as db:
        options = db.metadata()["ingest"]["options"]
        assert db.read_array(0, "actions").dtype == np.float32 and db.read_meta(0)["task"] == "lift it"
    assert options["dtype"] == "float32" and options["state_keys"] == ["object", "robot0_eef_pos"]
    assert (options["split"], options["episodes"], options["max_episodes"]) == ("train", "1-4", 3)
    report = verify(robomimic, out)
    assert_exact(report)
    assert report.episodes_compared == 3  # selected on purpose: the others are not missing
    # The cast matters: compared without it, the float64 source differs from the float32 output.
    uncast = verify(robomimic, out, dtype="float64")
    assert not uncast.ok and uncast.mismatches["dtype"] >= 3 and uncast.arrays["actions"] > 0


def test_rlds_frames_pass_through_byte_identical(tmp_path: Path, toy: Path) -> None:
    out = tmp_path / "toy.kdb"
    ingest(toy, out, format="rlds")
    report = verify(toy, out)
    assert_exact(report)
    assert report.format == "rlds" and report.episodes_compared == 5 and report.frames_compared == 20
    for cam, codec in (("image", "jpeg"), ("wrist_image", "png")):
        check = report.cameras[cam]
        assert check.codecs == {codec} and check.passed_through == check.byte_identical == check.decoded == 20
        assert check.reencoded == 0
    assert report.arrays.keys() >= {"discount", "language_embedding"}
    assert "20/20 passed through byte-identical, 20/20 decode" in report.summary()


def test_rlds_recorded_split_is_used(tmp_path: Path, toy: Path) -> None:
    out = tmp_path / "val.kdb"
    ingest(toy, out, format="rlds", split="val")
    assert_exact(verify(toy, out))
    wrong = verify(toy, out, split="train")  # the train episodes are not in the output
    assert not wrong.ok and len(wrong.extra) == 2 and len(wrong.missing) == 5


def test_episodes_skipped_by_the_ingest_are_not_missing(tmp_path: Path, toy: Path) -> None:
    shard = toy / SHARD0
    _flip(shard, _offsets(shard)[1] + 12 + 40)  # record 1: data CRC mismatch
    out = tmp_path / "toy.kdb"
    report = ingest(toy, out, format="rlds", on_error="skip")
    assert [k for k, _ in report.skipped] == [f"{SHARD0}:1"]
    checked = verify(toy, out)
    assert_exact(checked)
    assert checked.skipped == [f"{SHARD0}:1"] and checked.episodes_compared == 4
    dropped = verify(toy, rewrite(out, tmp_path / "dropped.kdb", drop={1}))  # SHARD0:2, after the skipped one
    assert dropped.missing == [f"{SHARD0}:2"] and dropped.mismatches == {"missing": 1}


@pytest.mark.integration
@pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"real Bridge RLDS sample not found at {BRIDGE}")
def test_real_bridge_sample(tmp_path: Path) -> None:
    out = tmp_path / "bridge.kdb"
    ingest(BRIDGE, out, format="rlds")
    report = verify(BRIDGE, out)
    assert_exact(report)
    assert report.episodes_compared == 25 and report.frames_compared == 250
    assert {c: (k.passed_through, k.byte_identical, k.decoded) for c, k in report.cameras.items()} == {
        f"image_{i}": (250, 250, 250) for i in range(4)
    }
    tampered = rewrite(out, tmp_path / "t.kdb", edit=lambda i, a: a.update(task="x") if i == 7 else None)
    assert verify(BRIDGE, tampered).mismatches == {"task": 1}


def test_a_third_party_source_verifies_through_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _fake_source import write_fake

    from kinodb.ingest import _base

    monkeypatch.setitem(_base._BUILTIN, "fake", "_fake_source:FakeSource")
    src = write_fake(tmp_path / "src", [{"key": f"ep{k}", "frames": 3 + k, "seed": k} for k in range(4)])
    out = tmp_path / "fake.kdb"
    ingest(src, out, format="fake", image_codec="png")
    report = verify(src, out)
    assert_exact(report)
    assert report.format == "fake" and "lang" in report.arrays


@pytest.fixture
def lerobot_fixtures() -> Any:
    """The LeRobot dataset writers (pyarrow and PyAV), and the converter they feed."""
    pytest.importorskip("av")
    pytest.importorskip("pyarrow")
    return pytest.importorskip("_lerobot_fixtures")


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_lerobot_video_frames_are_compared_by_psnr(tmp_path: Path, lerobot_fixtures: Any, codec: str) -> None:
    F = lerobot_fixtures
    root = F.write_v3(tmp_path / "ds", F.make_episodes(np.random.default_rng(5), [6, 9, 7]), per_file=2)
    out = tmp_path / "ds.kdb"
    ingest(root, out, format="lerobot", image_codec=codec)
    # Small frames with hard colour edges lose more to JPEG's chroma subsampling than camera frames.
    report = verify(root, out, psnr=30.0)
    assert_exact(report)
    assert report.format == "lerobot" and report.episodes_compared == 3
    (check,) = report.cameras.values()
    assert check.codecs == {codec} and check.reencoded == check.frames == 22 and check.passed_through == 0
    if codec == "png":  # decoded video stored losslessly: the same pixels when decoded again
        assert check.exact == 22 and check.min_psnr == float("inf")
    else:
        assert 30.0 <= check.min_psnr < float("inf")
        assert not verify(root, out, psnr=99.0).ok


def test_lerobot_image_frames_pass_through(tmp_path: Path, lerobot_fixtures: Any) -> None:
    F = lerobot_fixtures
    root = F.write_v2(tmp_path / "ds", F.make_episodes(np.random.default_rng(6), [5, 4]), images="PNG")
    out = tmp_path / "ds.kdb"
    ingest(root, out, format="lerobot")
    report = verify(root, out)
    assert_exact(report)
    (check,) = report.cameras.values()
    assert check.passed_through == check.byte_identical == 9 and check.reencoded == 0


@pytest.mark.integration
@pytest.mark.skipif(
    not (LEROBOT / "meta" / "info.json").is_file(), reason=f"real LeRobot sample not found at {LEROBOT}"
)
def test_real_lerobot_sample(tmp_path: Path, lerobot_fixtures: Any) -> None:
    out = tmp_path / "g1.kdb"
    ingest(LEROBOT, out, format="lerobot", episodes="29")  # the one episode the sample holds
    report = verify(LEROBOT, out)
    assert_exact(report)
    assert report.episodes_compared == 1 and report.cameras["cam_high"].min_psnr >= 35.0


# -- damage is caught ---------------------------------------------------------------------


@pytest.fixture
def lift(tmp_path: Path, robomimic: Path) -> Path:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out, image_codec="png")
    return out


def test_a_flipped_payload_float_is_caught(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    value = flip_sign(lift, tmp_path / "bad.kdb", 4, "actions")
    report = verify(robomimic, tmp_path / "bad.kdb")
    assert not report.ok and report.mismatches == {"arrays": 1}
    assert report.arrays["actions"] == 2 * abs(value) and report.arrays["states"] == 0.0
    assert report.problems == [
        f"episode 4 (demo_5): actions differs: max abs diff {2 * abs(value):.6g} at frame 0"
    ]
    assert cli(robomimic, tmp_path / "bad.kdb") == 1


def test_a_rewritten_array_value_is_caught(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    def nudge(i: int, args: dict[str, Any]) -> None:
        if i == 2:
            args["extra_arrays"]["sim_state"] = args["extra_arrays"]["sim_state"].copy()
            args["extra_arrays"]["sim_state"][3, 5] += 0.25

    report = verify(robomimic, rewrite(lift, tmp_path / "bad.kdb", edit=nudge))
    assert report.mismatches == {"arrays": 1} and report.arrays["sim_state"] == pytest.approx(0.25)
    assert "sim_state differs" in report.problems[0] and "at frame 3" in report.problems[0]


def test_a_dropped_episode_is_missing(
    tmp_path: Path, robomimic: Path, lift: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = rewrite(lift, tmp_path / "bad.kdb", drop={5})
    report = verify(robomimic, bad)
    assert report.missing == ["demo_6"] and report.mismatches == {"missing": 1} and not report.ok
    assert cli(robomimic, bad) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "1 missing" in out and "'demo_6' is not in the output" in out


def test_a_conversion_that_rounds_a_state_key_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A converter that concatenates an int64 key into float64 states without checking the
    # values (as kinodb's own did) rounds nanosecond stamps; re-running that conversion
    # gives the same rounded states, so verify compares each state component with the
    # key's values in the source instead.
    from test_hdf5 import STAMP0, write_stamped

    import kinodb.ingest.hdf5 as hdf5_source

    src = write_stamped(tmp_path / "stamped.hdf5")
    no_value_check = lambda arr, dtype: None  # noqa: E731
    monkeypatch.setattr(hdf5_source, "first_rounded", no_value_check, raising=False)
    out = tmp_path / "rounded.kdb"
    ingest(src, out, state_keys=["eef_pos", "stamp_ns"])
    with kinodb.open(out) as db:
        assert db.read_array(0, "states")[1, 3] == float(STAMP0 + 1) == float(STAMP0)  # merged by float64
    report = verify(src, out)
    assert not report.ok and report.mismatches == {"arrays": 3}
    assert report.problems[0] == (
        "episode 0 (demo_0): states component 'stamp_ns' differs from the source's int64 values at 4 "
        f"places: frame 0 holds {float(STAMP0)!r}, the source {STAMP0} (max abs diff 24)"
    )  # fmt: skip
    assert report.arrays["states"] > 0 and report.arrays["actions"] == 0.0
    monkeypatch.undo()
    ingest(src, out, state_keys=["eef_pos"], overwrite=True)  # the same file, converted exactly
    assert verify(src, out).ok


def test_extra_and_duplicate_output_episodes(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    bad = tmp_path / "bad.kdb"
    shutil.copy(lift, bad)
    with kinodb.open(lift) as db, kinodb.Writer(bad, mode="a") as w:
        w.copy_episode(db, 0)  # the same source episode twice
        w.copy_episode(db, 1, extra={"source_episode": "demo_99"})  # no such demo
        w.add_episode(actions=np.zeros((3, 7)), states=np.zeros((3, 19)))  # no provenance at all
    report = verify(robomimic, bad)
    assert report.mismatches == {"duplicate": 1, "extra": 2}
    assert report.extra == ["14 (demo_99)", "15 (None)"] and report.episodes_compared == 13


def test_changed_labels_are_caught(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    def relabel(i: int, args: dict[str, Any]) -> None:
        if i == 1:
            args["task"] = "stack the cubes"
        if i == 2:
            args.update(fps=30.0, success=not args["success"], embodiment="ur5")
        if i == 3:
            args["extra"]["filter_keys"] = ["made-up"]

    report = verify(robomimic, rewrite(lift, tmp_path / "bad.kdb", edit=relabel))
    assert report.mismatches == {"task": 1, "fps": 1, "success": 1, "embodiment": 1, "extra_fields": 1}
    assert "episode 1 (demo_2): task is 'stack the cubes', the source says ''" in report.problems


def test_lossy_frames_against_a_too_high_threshold(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out)  # JPEG
    assert verify(robomimic, out).ok
    strict = verify(robomimic, out, psnr=99.0)
    assert not strict.ok and strict.mismatches == {"images": 2 * 13}
    assert "below the threshold 99 dB" in strict.problems[0]
    assert cli(robomimic, out, "--psnr", "99") == 1
    assert "min PSNR" in capsys.readouterr().out


def test_lossless_frames_must_be_exact(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    def touch_pixel(i: int, args: dict[str, Any]) -> None:
        if i == 0:
            stored = args["images"]["agentview_image"]
            blobs = list(getattr(stored, "frames", stored))  # encoded frames, or with their channels
            with kinodb.open(lift) as db:
                frame = db.read_frames(0, 2, 3, cameras=["agentview_image"])["images"]["agentview_image"][0]
            frame = frame.copy()
            frame[0, 0, 0] ^= 1  # one pixel off by one: PSNR ~76 dB, above any threshold
            blobs[2] = encode_image(frame, "PNG")
            args["images"]["agentview_image"] = blobs

    report = verify(robomimic, rewrite(lift, tmp_path / "bad.kdb", edit=touch_pixel), psnr=10)
    assert report.mismatches == {"images": 1}
    assert "(png, lossless) differs at frame 2" in report.problems[0]
    assert report.cameras["agentview_image"].min_psnr > 70


def test_passed_through_bytes_must_be_identical(tmp_path: Path, toy: Path) -> None:
    out = tmp_path / "toy.kdb"
    ingest(toy, out, format="rlds")

    def reencode(i: int, args: dict[str, Any]) -> None:
        if i == 1:  # the same picture, other bytes: a pass-through that re-encoded
            with kinodb.open(out) as db:
                frames = db.read_frames(1, 0, 5, cameras=["image"])["images"]["image"]
            args["images"]["image"] = [encode_image(f, "JPEG", quality=100) for f in frames]

    report = verify(toy, rewrite(out, tmp_path / "bad.kdb", edit=reencode))
    assert report.mismatches == {"images": 1} and report.cameras["image"].byte_identical == 20 - 5
    assert "5 frames differ from the source's bytes (first: frame 0)" in report.problems[0]


# -- damaged frames in the source --------------------------------------------------------


def damaged_toy(tmp_path: Path, damage: Callable[[list[dict[str, Any]]], None]) -> Path:
    """The RLDS toy dataset (as the ``toy`` fixture writes it) after ``damage`` edits the
    train episodes' encoded frames; the records around them keep valid CRCs."""
    rng = np.random.default_rng(7)
    train = [rlds_episode(rng, i, T, final_reward=float(i % 2)) for i, T in enumerate([3, 5, 4, 6, 2])]
    val = [rlds_episode(rng, 100 + i, 4) for i in range(2)]
    damage(train)
    return write_episode_layout(tmp_path / "toy_dataset" / "1.0.0", {"train": train, "val": val})


def flip_idat(png: bytes, at: int = 12) -> bytes:
    """``png`` with one byte of its compressed image data inverted: every chunk still in place."""
    data = bytearray(png)
    data[data.find(b"IDAT") + 4 + at] ^= 0xFF
    return bytes(data)


def test_a_truncated_jpeg_in_an_rlds_record_is_refused_or_skipped(tmp_path: Path) -> None:
    def truncate(train: list[dict[str, Any]]) -> None:
        frames = train[1]["steps/observation/image"]
        frames[2] = frames[2][: len(frames[2]) - 10]  # a cut in the scan data

    toy = damaged_toy(tmp_path, truncate)
    out = tmp_path / "toy.kdb"
    key = f"{SHARD0}:1"
    why = r"camera 'image', frame 2 is a damaged jpeg frame: truncated: no JPEG end-of-image marker \(FF D9\)"
    with pytest.raises(ConversionError) as err:
        ingest(toy, out, format="rlds")
    assert re.search(rf"{re.escape(SHARD0)}: record 1: {why}.* \(it would be episode 1 of the output\); if the "
                    r"source's copy of the frame was damaged, copy the dataset again, or pass on_error='skip'\Z",
                    str(err.value)), str(err.value)  # fmt: skip
    assert not out.exists()
    report = ingest(toy, out, format="rlds", on_error="skip", verify=True)
    assert [k for k, _ in report.skipped] == [key]
    assert re.search(why, report.skipped[0][1])
    assert report.verification is not None and report.verification.ok, report.verification.summary()
    assert report.verification.skipped == [key] and report.verification.episodes_compared == 4
    assert validate(out).ok
    with kinodb.open(out) as db:
        for i in range(len(db)):
            db.read_episode(i)


def test_a_truncated_png_in_a_lerobot_image_column_is_skipped(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="the LeRobot fixtures write Parquet with pyarrow")
    pytest.importorskip("av", reason="the LeRobot fixtures import PyAV")
    import _lerobot_fixtures as F
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = F.write_v2(tmp_path / "ds", F.make_episodes(np.random.default_rng(3), [4, 6, 5]), images="PNG")
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    col = table[F.CAMERA].to_pylist()
    col[2] = {"bytes": col[2]["bytes"][: len(col[2]["bytes"]) // 2], "path": col[2]["path"]}
    at = table.column_names.index(F.CAMERA)
    pq.write_table(table.set_column(at, F.CAMERA, pa.array(col, table.schema.field(at).type)), path)
    out = tmp_path / "lr.kdb"
    why = r"camera 'top', frame 2 is a damaged png frame: truncated: no PNG IEND chunk"
    with pytest.raises(ConversionError, match=rf"episode_000001\.parquet: episode 1: {why}"):
        ingest(root, out)
    report = ingest(root, out, on_error="skip", verify=True)
    assert [k for k, _ in report.skipped] == ["episode_000001"] and re.search(why, report.skipped[0][1])
    assert report.verification is not None and report.verification.ok
    assert validate(out).ok


def test_stored_frames_that_do_not_decode_fail_verification(tmp_path: Path) -> None:
    """Damage inside a PNG's compressed data leaves its chunks in place: the writer's cheap
    check keeps it byte for byte, and only a full decode, which verify does, finds it."""

    def corrupt(train: list[dict[str, Any]]) -> None:
        wrist = train[1]["steps/observation/wrist_image"]
        wrist[2] = flip_idat(wrist[2])
        wrist = train[3]["steps/observation/wrist_image"]
        wrist[1], wrist[4] = flip_idat(wrist[1]), flip_idat(wrist[4])

    toy = damaged_toy(tmp_path, corrupt)
    out = tmp_path / "toy.kdb"
    ingest(toy, out, format="rlds")  # stored: its structure is whole
    report = verify(toy, out)
    assert not report.ok and report.mismatches == {"decode": 2}
    check = report.cameras["wrist_image"]
    assert check.passed_through == check.byte_identical == 20 and check.decoded == 17
    assert report.cameras["image"].decoded == 20
    assert report.problems[0] == (
        f"episode 1 ({SHARD0}:1): camera 'wrist_image', frame 2: image does not decode (OSError: broken data "
        f"stream when reading image file); {DAMAGED_ADVICE}"
    )
    assert report.problems[1] == (
        "episode 3 (toy_dataset-train.tfrecord-00001-of-00002:0): camera 'wrist_image': 2 stored frames do not "
        "decode (frames 1, 4); frame 1: image does not decode (OSError: broken data stream when reading image "
        f"file); {DAMAGED_ADVICE}"
    )
    assert "17/20 decode" in report.summary() and report.to_dict()["cameras"]["wrist_image"]["decoded"] == 17
    with pytest.raises(
        ConversionError, match=r"verification against .* failed with 2 mismatches \(episode 1"
    ):
        ingest(toy, tmp_path / "again.kdb", format="rlds", verify=True)
    assert (tmp_path / "again.kdb").exists()  # kept, as the message says


def test_frames_that_read_back_with_other_channels_are_caught(tmp_path: Path, toy: Path) -> None:
    out = tmp_path / "toy.kdb"
    ingest(toy, out, format="rlds")

    def as_grey(i: int, args: dict[str, Any]) -> None:
        if i == 2:  # the source's bytes, read back as greyscale
            stored = args["images"]["image"]
            args["images"]["image"] = EncodedFrames(list(getattr(stored, "frames", stored)), 1)

    report = verify(toy, rewrite(out, tmp_path / "bad.kdb", edit=as_grey))
    assert report.mismatches == {"cameras": 1} and report.cameras["image"].byte_identical == 20
    assert (
        "episode 2 (toy_dataset-train.tfrecord-00000-of-00002:2): camera 'image' reads back with 1 channels, "
        "the source's frames with 3" in report.problems[0]
    )


def test_a_missing_camera_is_caught(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    def drop_camera(i: int, args: dict[str, Any]) -> None:
        if i == 6:
            del args["images"]["robot0_eye_in_hand_image"]

    report = verify(robomimic, rewrite(lift, tmp_path / "bad.kdb", edit=drop_camera))
    assert report.mismatches == {"cameras": 1}
    assert "camera 'robot0_eye_in_hand_image' is missing from the output" in report.problems[0]


def test_older_output_without_recorded_options(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out, image_codec="png", split="train", max_episodes=4)
    with kinodb.open(out) as db:
        metadata = db.metadata()
    del metadata["ingest"]["options"]
    older = rewrite(out, tmp_path / "older.kdb", metadata=metadata)
    report = verify(robomimic, older, split="train")
    assert_exact(report)
    assert "older kinodb" in report.notes[0]
    short = verify(
        robomimic, rewrite(older, tmp_path / "short.kdb", drop={0}, metadata=metadata), split="train"
    )
    assert short.mismatches == {"missing": 1} and "only 3 are in the output" in short.problems[0]


# -- outputs that cannot be verified against SRC ------------------------------------------


def test_a_file_not_made_by_ingest_is_refused_once(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = tmp_path / "pick.kdb"
    assert main(["create-test", str(made), "-n", "4"]) == 0
    with pytest.raises(ConversionError, match=r"pick\.kdb was not made by kino ingest: it records source format "
                       r"'synthetic' and no ingest provenance .* nothing to verify it against"):  # fmt: skip
        verify(robomimic, made)
    plain = tmp_path / "plain.kdb"
    with kinodb.Writer(plain) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    with pytest.raises(ConversionError, match="records no source format and no ingest provenance"):
        verify(robomimic, plain)
    capsys.readouterr()
    assert main(["verify", str(robomimic), str(made)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert "not made by kino ingest" in captured.err and f"kino validate {made}" in captured.err
    assert "source_episode" not in captured.err and "older kinodb" not in captured.err


def test_a_merged_file_names_its_inputs(tmp_path: Path, robomimic: Path, lift: Path) -> None:
    merged = tmp_path / "merged.kdb"
    kinodb.merge([lift], merged)
    with pytest.raises(ConversionError, match=rf"made by kino merge \(of {lift}\), not by kino ingest"):
        verify(robomimic, merged)


def test_a_source_of_another_format_is_named(
    tmp_path: Path, robomimic: Path, lift: Path, toy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConversionError) as exc:
        verify(toy, lift)  # lift.kdb came from an HDF5 file; toy is an RLDS folder
    message = str(exc.value)
    assert message.startswith(f"{toy} is not a dataset of format hdf5 (it looks like rlds), but {lift} was")
    assert (
        f"ingested from one (its metadata records source format 'robomimic-hdf5', read from {robomimic})"
        in message
    )
    assert message.endswith(f"pass the dataset it was ingested from: kino verify {robomimic} {lift}")
    assert "missing" not in message
    text = tmp_path / "notes.txt"
    text.write_text("not a dataset")
    with pytest.raises(
        ConversionError, match=r"is not a dataset of format hdf5 \(no known format recognises it\)"
    ):
        verify(text, lift)
    with pytest.raises(
        ConversionError, match=r"was ingested from a source of format hdf5 .*, not rlds: leave format out"
    ):
        verify(toy, lift, format="rlds")
    assert main(["verify", str(toy), str(lift)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "looks like rlds" in err


def test_the_recorded_source_changed_keeps_its_readers_error(
    tmp_path: Path, robomimic: Path, lift: Path
) -> None:
    robomimic.write_text("overwritten")  # the very path the ingest read: its reader says what is wrong
    with pytest.raises(ConversionError) as exc:
        verify(robomimic, lift)
    assert "is not a dataset of format" not in str(exc.value)


@pytest.mark.integration
@pytest.mark.skipif(
    not (BRIDGE.is_dir() and (LEROBOT / "meta" / "info.json").is_file()),
    reason=f"real samples not found at {SAMPLES}",
)
def test_real_samples_swapped(tmp_path: Path, lerobot_fixtures: Any) -> None:
    g1, bridge = tmp_path / "g1.kdb", tmp_path / "bridge.kdb"
    ingest(LEROBOT, g1, format="lerobot", episodes="29", images=False)
    ingest(BRIDGE, bridge, images=False)
    with pytest.raises(ConversionError) as exc:
        verify(BRIDGE, g1)
    assert str(exc.value) == (
        f"{BRIDGE} is not a dataset of format lerobot (it looks like rlds), but {g1} was ingested from one "
        f"(its metadata records source format 'lerobot-v2.1', read from {LEROBOT}); pass the dataset it was "
        f"ingested from: kino verify {LEROBOT} {g1}"
    )
    with pytest.raises(ConversionError, match=r"is not a dataset of format rlds \(it looks like lerobot\)"):
        verify(LEROBOT, bridge)


# -- kino ingest --verify -----------------------------------------------------------------


def test_ingest_verify_ok(tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lift.kdb"
    report = ingest(robomimic, out, verify=True)
    assert report.verification is not None and report.verification.ok
    assert "verified" in report.summary()
    assert main(["ingest", str(robomimic), "-o", str(tmp_path / "cli.kdb"), "--verify", "-q"]) == 0
    assert ": OK" in capsys.readouterr().out


def _roll_frames_on_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ingest (not the verification) store every camera's frames one step late."""
    import types

    import kinodb.ingest._run as run
    from kinodb.kdb import _codecs

    def late(frames: np.ndarray, codec: str, quality: int) -> list[bytes]:
        return _codecs.encode(np.roll(frames, 1, axis=0), codec, quality)

    monkeypatch.setattr(run, "_codecs", types.SimpleNamespace(encode=late))
    import kinodb.ingest.hdf5 as hdf5  # encodes JPEG/PNG cameras itself, a slice at a time

    monkeypatch.setattr(hdf5, "_codecs", types.SimpleNamespace(encode=late))


def test_ingest_verify_mismatch_keeps_the_output(
    tmp_path: Path, noisy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _roll_frames_on_ingest(monkeypatch)
    out = tmp_path / "noisy.kdb"
    with pytest.raises(ConversionError, match=r"verification against .* failed .* the output file was kept"):
        ingest(noisy, out, verify=True)
    assert out.exists()
    code = main(["ingest", str(noisy), "-o", str(tmp_path / "cli.kdb"), "--verify", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "PSNR" in err and "kept" in err and (tmp_path / "cli.kdb").exists()


def test_frames_jpeg_cannot_keep_pass_against_a_fresh_encode(
    tmp_path: Path, noisy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "noisy.kdb"
    ingest(noisy, out)  # noise through JPEG q95: about 12 dB, far under the threshold
    report = verify(noisy, out)
    assert_exact(report)
    for cam in CAMERAS:
        check = report.cameras[cam]
        assert check.min_psnr < 20 and check.codec_limited == check.reencoded == report.frames_compared
    assert "within 1.5 dB of a fresh JPEG encode" in report.summary()
    strict = verify(noisy, out, psnr=35.0)  # an explicit threshold is an absolute floor
    assert not strict.ok and strict.mismatches == {"images": 2 * 3}
    assert cli(noisy, out) == 0 and cli(noisy, out, "--psnr", "35") == 1
    capsys.readouterr()


def test_a_frame_out_of_place_is_caught_where_jpeg_loses_much(
    tmp_path: Path, noisy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _roll_frames_on_ingest(monkeypatch)
    out = tmp_path / "late.kdb"
    ingest(noisy, out)
    report = verify(noisy, out)
    assert not report.ok and report.mismatches == {"images": 2 * 3}
    assert "below a fresh JPEG q95 encode of the source frame" in report.problems[0]
    assert "not the source's frame, or damaged" in report.problems[0]


# -- the numbers --------------------------------------------------------------------------


def test_max_abs_diff_treats_nan_and_inf_like_values() -> None:
    a = np.array([[1.0, np.nan], [np.inf, -2.0]])
    assert max_abs_diff(a, a.copy()) == (0.0, 0)
    b = a.copy()
    b[1, 1] = -2.5
    assert max_abs_diff(a, b) == (0.5, 1)
    b[0, 1] = 3.0
    assert max_abs_diff(a, b) == (float("inf"), 0)
    assert max_abs_diff(np.array([True, False]), np.array([True, True])) == (1.0, 1)
    assert max_abs_diff(np.zeros((0, 3)), np.zeros((0, 3))) == (0.0, 0)


def test_frame_psnr() -> None:
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[1] += 1  # mse 1: 20 log10(255)
    np.testing.assert_allclose(frame_psnr(a, b), [np.inf, 20 * np.log10(255)])
    c = a.copy()
    c[0] = 0  # mse 100**2
    assert frame_psnr(a, c)[0] == pytest.approx(20 * np.log10(2.55))


def test_verify_takes_state_keys_as_one_comma_separated_str(tmp_path: Path) -> None:
    """As `ingest` does: a str is the CLI's comma-separated list, not a sequence of letters."""
    src = tmp_path / "demo.hdf5"
    with h5py.File(src, "w") as f:
        demo = f.create_group("data/demo_0")
        demo["actions"] = np.arange(6, dtype=np.float32).reshape(3, 2)
        demo["obs/a"] = np.ones((3, 2), np.float64)
        demo["obs/b"] = np.zeros((3, 1), np.float64)
    out = tmp_path / "out.kdb"
    ingest(src, out, state_keys="b, a")
    report = verify(src, out, state_keys="b, a")
    assert report.ok, report.problems
    with pytest.raises(TypeError, match="state_keys"):
        verify(src, out, state_keys=7)  # type: ignore[arg-type]
