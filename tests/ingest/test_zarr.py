"""Zarr replay buffers (diffusion_policy's layout), written by the zarr library, ingested exactly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

zarr = pytest.importorskip(
    "zarr", minversion="3", reason="needs zarr 3 to write the fixtures (pip install 'kinodb[zarr]')"
)
numcodecs = pytest.importorskip("numcodecs")

import kinodb  # noqa: E402
from _factories import smooth_frames  # noqa: E402
from kinodb.errors import ConversionError  # noqa: E402
from kinodb.ingest import ingest  # noqa: E402
from kinodb.ingest.zarr_replay import ZarrSource  # noqa: E402

ENDS = [23, 40, 71, 90]  # episodes of 23, 17, 31 and 19 frames: chunks of 16 rows straddle them


def _array(group: Any, name: str, value: np.ndarray, **kw: Any) -> None:
    arr = group.create_array(name, shape=value.shape, dtype=value.dtype, **kw)
    arr[...] = value


def _pusht(
    path: Path | Any, rng: np.random.Generator, *, zarr_format: int = 2, ends: list[int] = ENDS, **attrs: Any
) -> dict[str, np.ndarray]:
    """A Push-T-like replay buffer (img, state, keypoint, n_contacts, action), as
    diffusion_policy's ReplayBuffer lays it out; returns what it wrote."""
    n = ends[-1]
    data = {
        "img": smooth_frames(rng, (n, 24, 20, 3)),
        "state": rng.normal(size=(n, 5)).astype(np.float32),
        "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
    }
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    root.attrs.update(attrs)
    group = root.require_group("data")
    for name, value in data.items():
        _array(group, name, value, chunks=(16, *value.shape[1:]))
    _array(root.require_group("meta"), "episode_ends", np.array(ends, np.int64), compressors=None)
    return data


def _slices(ends: list[int]) -> list[slice]:
    return [slice(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _check_pusht(
    out: Path, data: dict[str, np.ndarray], ends: list[int] = ENDS, keys: list[int] | None = None
) -> None:
    with kinodb.open(out) as db:
        assert len(db) == len(ends)
        for i, rows in enumerate(_slices(ends)):
            ep = db.read_episode(i)
            assert (
                ep["actions"].dtype == np.float32
                and ep["actions"].tobytes() == data["action"][rows].tobytes()
            )
            assert ep["states"].tobytes() == data["state"][rows].tobytes()
            assert ep["keypoint"].shape == (rows.stop - rows.start, 9, 2)
            assert ep["keypoint"].tobytes() == data["keypoint"][rows].tobytes()
            assert ep["n_contacts"].tobytes() == data["n_contacts"][rows].tobytes()
            assert np.array_equal(ep["images"]["img"], data["img"][rows])
            assert ep["is_terminal"].tolist() == [False] * (rows.stop - rows.start - 1) + [True]
            meta = ep["meta"]
            assert (
                meta["source_episode"] == f"episode_{(keys or list(range(len(ends))))[i]}"
                and meta["fps"] == 10.0
            )
            assert meta["success"] is None


@pytest.mark.parametrize("store", ["directory", "zip"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_pusht_replay_buffer_comes_in_exactly(tmp_path: Path, store: str, zarr_format: int) -> None:
    rng = np.random.default_rng(0)
    if store == "zip":
        path = tmp_path / "pusht.zarr.zip"
        zs = zarr.storage.ZipStore(path, mode="w")
        data = _pusht(zs, rng, zarr_format=zarr_format)
        zs.close()
    else:
        path = tmp_path / "pusht.zarr"
        data = _pusht(path, rng, zarr_format=zarr_format)
    out = tmp_path / "pusht.kdb"
    report = ingest(path, out, image_codec="png", embodiment="pusht", task="push the T", verify=True)
    assert report.format == "zarr" and report.episodes == 4 and report.frames == 90
    assert report.verification.ok
    assert any("10 fps assumed" in n for n in report.notes)
    _check_pusht(out, data)
    with kinodb.open(out) as db:
        recorded = db.dataset_info()["metadata"]["zarr"]
        assert recorded["store"] == store and recorded["zarr_format"] == zarr_format
        assert recorded["states"] == ["state"] and recorded["cameras"] == ["img"]
        assert recorded["extra_arrays"] == {"keypoint": "keypoint", "n_contacts": "n_contacts"}
        assert {db.read_meta(i)["embodiment"] for i in range(4)} == {"pusht"}


def test_chunks_codecs_and_orders_are_read_as_zarr_reads_them(tmp_path: Path) -> None:
    """Chunks across every dimension, Fortran order, filters, big-endian and several codecs:
    each episode's rows equal what the zarr library itself reads."""
    rng = np.random.default_rng(1)
    n = ENDS[-1]
    path = tmp_path / "mixed.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    data = root.require_group("data")
    values = {
        "action": rng.normal(size=(n, 7)),  # float64 stays float64
        "state": rng.normal(size=(n, 6)).astype(">f4"),
        "img": rng.integers(0, 255, (n, 10, 14, 3), dtype=np.uint8),
        "depth": rng.integers(0, 5000, (n, 10, 14), dtype=np.uint16),
        "counter": np.arange(n, dtype=np.int64) * 3,
        "flags": rng.integers(0, 2, (n, 2)).astype(bool),
    }
    _array(data, "action", values["action"], chunks=(7, 3), compressors=numcodecs.Zstd(level=3))
    _array(data, "state", values["state"], chunks=(11, 6), compressors=numcodecs.Zlib(level=1))
    _array(data, "img", values["img"], chunks=(5, 4, 14, 3), order="F")
    _array(data, "depth", values["depth"], chunks=(9, 10, 14), compressors=None)
    _array(data, "counter", values["counter"], chunks=(13,), filters=[numcodecs.Delta(dtype="<i8")])
    _array(data, "flags", values["flags"], chunks=(50, 2), compressors=numcodecs.LZ4())
    _array(root.require_group("meta"), "episode_ends", np.array(ENDS, np.int64))
    out = tmp_path / "mixed.kdb"
    ingest(path, out, image_codec="raw", verify=True)
    again = zarr.open_group(path, mode="r")["data"]
    with kinodb.open(out) as db:
        for i, rows in enumerate(_slices(ENDS)):
            ep = db.read_episode(i)
            assert ep["actions"].dtype == np.float64 and np.array_equal(ep["actions"], again["action"][rows])
            assert ep["states"].dtype == np.float32 and np.array_equal(ep["states"], again["state"][rows])
            assert np.array_equal(ep["images"]["img"], again["img"][rows])
            for name in ("depth", "counter", "flags"):
                assert ep[name].dtype == values[name].dtype, name
                assert np.array_equal(ep[name], again[name][rows]), name


def test_a_umi_like_buffer_joins_its_low_dim_keys_and_keeps_per_episode_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = ENDS[-1]
    path = tmp_path / "umi.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs["fps"] = 60
    data = root.require_group("data")
    values = {
        "robot0_eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
        "robot0_eef_rot_axis_angle": rng.normal(size=(n, 3)).astype(np.float32),
        "robot0_gripper_width": rng.uniform(size=(n, 1)).astype(np.float32),
        "timestamp": np.arange(n) / 60.0,
        "stage": rng.integers(0, 3, n).astype(np.int64),
        "camera0_rgb": smooth_frames(rng, (n, 16, 16, 3)),
        "action": rng.normal(size=(n, 7)).astype(np.float32),
        "reward": np.where(np.isin(np.arange(n), [22, 89]), 1.0, 0.0),
        "done": np.isin(np.arange(n), [22, 39, 70, 89]).astype(np.uint8),
    }
    for name, value in values.items():
        _array(data, name, value, chunks=(32, *value.shape[1:]))
    meta = root.require_group("meta")
    _array(meta, "episode_ends", np.array(ENDS, np.int64))
    _array(meta, "operator", np.array([3, 1, 4, 1], np.int32))
    _array(meta, "start_pose", rng.normal(size=(4, 2)))
    _array(meta, "calibration", np.zeros(9))  # not one row per episode
    out = tmp_path / "umi.kdb"
    report = ingest(path, out, image_codec="png", verify=True)
    assert report.verification.ok
    assert any("meta/calibration (9)" in n and "left out" in n for n in report.notes)
    keys = ["robot0_eef_pos", "robot0_eef_rot_axis_angle", "robot0_gripper_width"]
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {
            "robot0_eef_pos": [0, 3], "robot0_eef_rot_axis_angle": [3, 6], "robot0_gripper_width": [6, 7]
        }  # fmt: skip
        for i, rows in enumerate(_slices(ENDS)):
            ep = db.read_episode(i)
            want = np.concatenate([values[k][rows] for k in keys], axis=1)
            assert ep["states"].tobytes() == want.tobytes()
            assert ep["timestamps"].tobytes() == values["timestamp"][rows].tobytes()
            assert ep["stage"].dtype == np.int64 and np.array_equal(ep["stage"], values["stage"][rows])
            assert ep["rewards"].tobytes() == values["reward"][rows].tobytes()
            assert ep["is_terminal"].tolist() == (values["done"][rows] != 0).tolist()
            m = ep["meta"]
            assert m["fps"] == 60.0 and m["success"] is (i in (0, 3))
            assert m["meta.operator"] == [3, 1, 4, 1][i]
            assert m["meta.start_pose"] == meta["start_pose"][i].tolist()
        assert db.query("meta.operator = 1").tolist() == [1, 3]


def test_state_keys_choose_and_order_and_refuse_what_would_round(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "k.zarr"
    data = _pusht(path, rng)
    out = tmp_path / "k.kdb"
    ingest(path, out, state_keys="n_contacts,state", images=False)
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"n_contacts": [0, 1], "state": [1, 6]}
        for i, rows in enumerate(_slices(ENDS)):
            want = np.concatenate([data["n_contacts"][rows], data["state"][rows]], axis=1)
            assert db.read_episode(i)["states"].tobytes() == want.tobytes()
            assert "img" not in db.read_episode(i)["images"]
    big = zarr.open_group(path, mode="a")["data"]
    _array(big, "stamp_ns", np.full(ENDS[-1], 2**60 + 1, np.int64))
    with pytest.raises(
        ConversionError, match=r"data/stamp_ns holds 1152921504606846977 at frame 0 of episode_0"
    ):
        ingest(path, tmp_path / "round.kdb", state_keys="state,stamp_ns", images=False)
    with pytest.raises(ConversionError, match=r"state_keys names nope, which data/ does not hold"):
        ingest(path, tmp_path / "nope.kdb", state_keys="nope")


def test_the_command_line_detects_a_store_and_takes_an_action_key(tmp_path: Path) -> None:
    from kinodb._cli.main import main

    rng = np.random.default_rng(4)
    path = tmp_path / "p.zarr"
    data = _pusht(path, rng)
    out = tmp_path / "p.kdb"
    assert (
        main(["ingest", str(path), "-o", str(out), "--image-codec", "png", "-q", "--verify", "--fps", "10"])
        == 0
    )
    _check_pusht(out, data)
    alt = tmp_path / "alt.kdb"
    assert main(["ingest", str(path), "-o", str(alt), "--no-images", "-q", "--action-key", "keypoint"]) == 1
    group = zarr.open_group(path, mode="a")["data"]
    _array(group, "target", data["action"] * 2)
    assert main(["ingest", str(path), "-o", str(alt), "--no-images", "-q", "--action-key", "target"]) == 0
    with kinodb.open(alt) as db:
        assert db.read_episode(1)["actions"].tobytes() == (data["action"][23:40] * 2).tobytes()
        assert db.read_episode(1)["action"].tobytes() == data["action"][23:40].tobytes()  # kept as extra


def test_episodes_selection_workers_and_flipped_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "p.zarr"
    data = _pusht(path, rng)
    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    ingest(path, one, image_codec="raw", episodes="1-3", flip_images=True)
    ingest(path, two, image_codec="raw", episodes="1-3", flip_images=True, workers=2)
    with kinodb.open(one) as a, kinodb.open(two) as b:
        assert len(a) == len(b) == 3
        for i, rows in enumerate(_slices(ENDS)[1:]):
            x, y = a.read_episode(i), b.read_episode(i)
            assert np.array_equal(x["images"]["img"], data["img"][rows][:, ::-1, ::-1])
            assert np.array_equal(x["images"]["img"], y["images"]["img"])
            assert x["actions"].tobytes() == y["actions"].tobytes() == data["action"][rows].tobytes()
            assert x["meta"]["source_episode"] == f"episode_{i + 1}"


def test_the_source_pickles_by_path(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(6))
    source = ZarrSource(path)
    source.episodes()
    again = pickle.loads(pickle.dumps(source))
    assert again.episodes() == ["episode_0", "episode_1", "episode_2", "episode_3"]
    assert again.read("episode_2")["actions"].shape == (31, 2)
    source.close()
    again.close()


# -- what is refused, and how ---------------------------------------------------------------


def _ends(path: Path, ends: list[int]) -> None:
    meta = zarr.open_group(path, mode="a")["meta"]
    del meta["episode_ends"]
    _array(meta, "episode_ends", np.array(ends, np.int64))


@pytest.mark.parametrize(
    ("ends", "message"),
    [
        ([23, 40, 30, 90], r"episode_ends\[2\] is 30, below .*episode_ends\[1\] \(40\)"),
        (
            [23, 40, 71, 95],
            r"episode_ends ends at row 95, and data/action holds 90, data/img holds 90, .*rows; the "
            r"store was written in part",
        ),
        ([-1, 40, 71, 90], r"episode_ends\[0\] is -1"),
    ],
)
def test_episode_ends_that_do_not_fit_the_arrays_are_named(
    tmp_path: Path, ends: list[int], message: str
) -> None:
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(7))
    _ends(path, ends)
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError, match=message):
        ingest(path, out)
    assert not out.exists()


def test_arrays_of_different_lengths_and_a_missing_action_are_named(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(8))
    group = zarr.open_group(path, mode="a")["data"]
    _array(group, "short", np.zeros((50, 2), np.float32))
    with pytest.raises(ConversionError, match=r"episode_ends ends at row 90, and data/short holds 50 rows"):
        ingest(path, tmp_path / "a.kdb")
    del group["short"]
    del group["action"]
    with pytest.raises(ConversionError, match=r"no data/action or data/actions array \(data/ holds img, keypoint, "
                       r"n_contacts, state\); name the array that holds the actions with action_key"):  # fmt: skip
        ingest(path, tmp_path / "b.kdb")


def test_an_empty_episode_is_named_and_can_be_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    data = _pusht(path, np.random.default_rng(9))
    _ends(path, [23, 23, 71, 90])
    with pytest.raises(ConversionError, match=r"episode_1 holds no frames .*on_error='skip'"):
        ingest(path, tmp_path / "a.kdb")
    out = tmp_path / "b.kdb"
    report = ingest(path, out, on_error="skip", image_codec="png")
    assert [k for k, _ in report.skipped] == ["episode_1"]
    _check_pusht(out, data, ends=[23, 71, 90], keys=[0, 2, 3])


def _chunk(path: Path, name: str, index: str) -> Path:
    return path / "data" / name / index


def test_a_cut_short_blosc_chunk_is_an_error_not_garbage(tmp_path: Path) -> None:
    """numcodecs' Blosc (LZ4) decodes a truncated chunk without complaint: the reader checks
    each chunk's size against its header first."""
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(10))
    chunk = _chunk(path, "img", "1.0.0.0")
    raw = chunk.read_bytes()
    chunk.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(path, out, image_codec="png")
    text = str(err.value)
    assert f"{chunk}: {len(raw) // 2} bytes, where its Blosc header says {len(raw)}" in text
    assert "chunk [1, 0, 0, 0] of data/img" in text and "(episode_0, rows 0-22)" in text
    assert not out.exists()
    report = ingest(path, out, on_error="skip", image_codec="png")  # rows 16-31: episodes 0 and 1
    assert [k for k, _ in report.skipped] == ["episode_0", "episode_1"]


def test_a_damaged_or_wrong_sized_chunk_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    path = tmp_path / "p.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    data = root.require_group("data")
    _array(data, "action", rng.normal(size=(90, 2)), chunks=(30, 2), compressors=numcodecs.Zstd())
    _array(data, "state", rng.normal(size=(90, 3)), chunks=(30, 3), compressors=None)
    _array(root.require_group("meta"), "episode_ends", np.array(ENDS, np.int64))
    chunk = _chunk(path, "action", "2.0")
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(ConversionError, match=r"action.2\.0: cannot be decoded with zstd \(RuntimeError"):
        ingest(path, tmp_path / "a.kdb", episodes="2")
    state = _chunk(path, "state", "1.0")
    state.write_bytes(state.read_bytes()[:-8])
    with pytest.raises(ConversionError, match=r"state.1\.0: 712 bytes after decoding with no codec, where a chunk "
                       r"of data/state \(30x3 <f8\) holds 720"):  # fmt: skip
        ingest(path, tmp_path / "b.kdb", episodes="1")


def test_an_absent_chunk_reads_as_the_fill_value_and_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    data = _pusht(path, np.random.default_rng(12))
    os.remove(_chunk(path, "keypoint", "2.0.0"))
    report = ingest(path, tmp_path / "out.kdb", images=False)
    assert any("data/keypoint: 1 of 6 chunks are absent" in n for n in report.notes)
    with kinodb.open(tmp_path / "out.kdb") as db:
        got = db.read_episode(1)["keypoint"]  # rows 23-39; rows 32-39 were in the chunk
        assert np.array_equal(got[:9], data["keypoint"][23:32]) and not got[9:].any()


def test_an_unknown_codec_is_named_with_the_package_to_install(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(13))
    meta_file = path / "data" / "img" / ".zarray"
    meta = json.loads(meta_file.read_text())
    meta["compressor"] = {"id": "imagecodecs_jpegxl_kinodb_test", "level": 50}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConversionError, match=r"data/img is compressed with the codec 'imagecodecs_jpegxl_kinodb_test'.*"
                       r"pip install imagecodecs"):  # fmt: skip
        ingest(path, tmp_path / "a.kdb")


def test_what_is_not_a_replay_buffer_is_named(tmp_path: Path) -> None:
    path = tmp_path / "plain.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    _array(group.require_group("data"), "action", np.zeros((4, 2)))
    with pytest.raises(ConversionError, match=r"plain.zarr: this is a zarr group without meta/episode_ends; kinodb "
                       r"reads zarr stores laid out as diffusion_policy's replay buffer"):  # fmt: skip
        ingest(path, tmp_path / "a.kdb")
    with pytest.raises(ConversionError, match=r"not a zarr replay buffer \(a zarr group, or a zip archive of one, "
                       r"holding data/ arrays and meta/episode_ends\)"):  # fmt: skip
        ingest(path, tmp_path / "a.kdb", format="zarr")


@pytest.mark.parametrize("option", [{"split": "train"}, {"keep_model_file": True}])
def test_options_that_do_not_apply_are_refused(tmp_path: Path, option: dict[str, Any]) -> None:
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(14))
    with pytest.raises(ValueError, match=r"is read as zarr, whose converter takes no"):
        ingest(path, tmp_path / "a.kdb", **option)


def test_a_store_copied_into_a_folder_of_other_files_is_still_found(tmp_path: Path) -> None:
    """diffusion_policy's data folders hold the replay buffer beside videos and configs."""
    path = tmp_path / "task" / "replay_buffer.zarr"
    path.parent.mkdir()
    data = _pusht(path, np.random.default_rng(15))
    shutil.copy(__file__, path.parent / "notes.py")
    out = tmp_path / "t.kdb"
    ingest(path, out, image_codec="png")
    _check_pusht(out, data)


def test_a_part_of_a_store_is_named_with_the_store_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(16))
    for part in (path / "data", path / "data" / "img", path / "data" / "img" / "0.0.0.0", path / "meta"):
        with pytest.raises(ConversionError, match=r"this is part of a zarr replay buffer; pass the store \(the folder "
                           r"holding meta/episode_ends\): " + str(path)):  # fmt: skip
            ingest(part, tmp_path / "a.kdb")


def test_the_pusht_example_writes_a_buffer_that_ingests_exactly(tmp_path: Path) -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "pusht_zarr.py"
    path = tmp_path / "pusht.zarr"
    subprocess.run(
        [sys.executable, str(example), str(path), "--episodes", "3"], check=True, capture_output=True
    )
    report = ingest(path, tmp_path / "pusht.kdb", image_codec="png", fps=10, verify=True)
    assert report.episodes == 3 and report.verification.ok
    written = zarr.open_group(path, mode="r")
    assert report.frames == int(written["meta"]["episode_ends"][-1]) == written["data"]["img"].shape[0]


def test_strings_in_meta_become_fields_and_text_in_data_is_left_out_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    data = _pusht(path, np.random.default_rng(17))
    root = zarr.open_group(path, mode="a")
    _array(root["meta"], "task", np.array(["push", "pull", "turn", "push"]))
    _array(root["meta"], "score", np.array([0.5, np.nan, 1.0, np.inf]))
    root["meta"].create_array("operator", shape=(4,), dtype=str)[...] = np.array(
        ["ann", "bo", "", "cy"], object
    )
    _array(root["data"], "language", np.array(["go"] * ENDS[-1]))
    report = ingest(path, tmp_path / "out.kdb", image_codec="png")
    assert any("data/language holds" in n and "not numbers per frame: left out" in n for n in report.notes)
    assert any(
        "meta/score holds NaN or infinity for 2 episodes" in n and "stored as null" in n for n in report.notes
    )
    _check_pusht(tmp_path / "out.kdb", data)
    with kinodb.open(tmp_path / "out.kdb") as db:
        metas = [db.read_meta(i) for i in range(4)]
        assert [m["meta.task"] for m in metas] == ["push", "pull", "turn", "push"]
        assert [m["meta.operator"] for m in metas] == ["ann", "bo", "", "cy"]
        assert [m["meta.score"] for m in metas] == [0.5, None, 1.0, None]
        assert "language" not in db.read_episode(0)
        assert db.query("meta.task = 'push'").tolist() == [0, 3]


def test_rows_after_the_last_episode_are_left_out_with_a_note(tmp_path: Path) -> None:
    """diffusion_policy's ReplayBuffer reads the rows up to the last end."""
    path = tmp_path / "p.zarr"
    data = _pusht(path, np.random.default_rng(18))
    _ends(path, [23, 40, 71, 80])
    report = ingest(path, tmp_path / "out.kdb", image_codec="png")
    assert any(
        "data/action holds 90 rows, 10 after the last episode's end (row 80)" in n for n in report.notes
    )
    _check_pusht(tmp_path / "out.kdb", data, ends=[23, 40, 71, 80])


def test_format_3_blosc_chunks_cut_short_and_absent_chunks_are_caught(tmp_path: Path) -> None:
    rng = np.random.default_rng(19)
    path = tmp_path / "v3.zarr"
    root = zarr.open_group(path, mode="w")
    blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    _array(root.require_group("data"), "action", rng.normal(size=(90, 3)), chunks=(20, 3), compressors=blosc)
    _array(root["data"], "state", rng.normal(size=(90, 2)), chunks=(20, 2))
    _array(root.require_group("meta"), "episode_ends", np.array(ENDS, np.int64))
    os.remove(path / "data" / "state" / "c" / "4" / "0")
    report = ingest(path, tmp_path / "ok.kdb")
    assert any("data/state: 1 of 5 chunks are absent" in n for n in report.notes)
    chunk = path / "data" / "action" / "c" / "1" / "0"
    raw = chunk.read_bytes()
    chunk.write_bytes(raw[:-1])
    with pytest.raises(
        ConversionError, match=rf"{chunk}: {len(raw) - 1} bytes, where its Blosc header says {len(raw)}"
    ):
        ingest(path, tmp_path / "bad.kdb")
    assert not (tmp_path / "bad.kdb").exists()


def test_a_zip_with_folder_entries_counts_absent_chunks_and_a_cut_archive_is_named(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "p.zarr"
    _pusht(path, np.random.default_rng(20))
    os.remove(_chunk(path, "keypoint", "2.0.0"))
    archive = tmp_path / "p.zarr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for folder, _, files in os.walk(path):
            rel = os.path.relpath(folder, path)
            if rel != ".":
                zf.write(folder, rel + "/")  # the folder entries `zip -r` writes
            for name in files:
                zf.write(os.path.join(folder, name), os.path.normpath(os.path.join(rel, name)))
    report = ingest(archive, tmp_path / "z.kdb", images=False)
    assert any("data/keypoint: 1 of 6 chunks are absent" in n for n in report.notes)
    cut = tmp_path / "cut.zarr.zip"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"cut.zarr.zip: not a readable zip archive"):
        ingest(cut, tmp_path / "c.kdb")
