"""The RLDS export: TFDS's folder layout (``dataset_info.json``, ``features.json``, TFRecord
shards of ``tf.train.Example`` episodes) that ``kinodb.ingest`` turns back into the same file.

``tests/export/test_export_rlds_tfds_read.py`` checks the bytes against what TensorFlow
Datasets itself read from an export."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import assert_same_file, smooth_frames
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.export import rlds as rlds_export
from kinodb.ingest import ingest
from kinodb.ingest._example import encode_example, parse_example
from kinodb.ingest._tfrecord import iter_records, write_records

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
LENGTHS = (23, 17, 31, 19)


def _source(path: Path, *, codec: str = "png", sizes: tuple[tuple[int, int], ...] = ((24, 20),),
            timestamps: bool = True, fps: tuple[float, ...] = (20.0,)) -> Path:  # fmt: skip
    rng = np.random.default_rng(7)
    comps = {"eef_pos": [0, 3], "gripper": [3, 5]}
    with kinodb.Writer(path, image_codec=codec, schema={"states": {"components": comps}},
                       metadata={"robot": {"name": "panda", "dof": 7}}) as w:  # fmt: skip
        for i, T in enumerate(LENGTHS):
            h, wd = sizes[i % len(sizes)]
            w.add_episode(
                actions=rng.normal(size=(T, 7)).astype(np.float32), states=rng.normal(size=(T, 5)),
                rewards=np.r_[np.zeros(T - 1), float(i % 2)].astype(np.float32),
                is_terminal=np.arange(T) == T - 1,
                images={"agentview": smooth_frames(rng, (T, h, wd, 3)), "wrist": smooth_frames(rng, (T, 8, 8, 1))},
                extra_arrays={"sim_state": rng.normal(size=(T, 9)), "contacts": rng.integers(0, 3, (T, 2, 2)).astype(np.int16),
                              "observation.ee_vel": rng.normal(size=(T, 3)).astype(np.float16),
                              "uid": np.arange(T, dtype=np.uint64) + 2**63},
                embodiment="panda", task=f"lift the cube {i}", fps=fps[i % len(fps)], success=bool(i % 2),
                extra={"filter_keys": [["train"], ["valid"]][i % 2], "meta.seed": 100 + i, "meta.scale": 0.5 * i,
                       "operator": None if i == 2 else f"op{i}", "scene": f"kitchen {i % 2}"},
                timestamps=np.arange(T) / 20.0 if timestamps else None,
            )  # fmt: skip
    return path


def _records(folder: Path) -> list[dict[str, object]]:
    """The episodes' features in shard order, decoded by kinodb's own TFRecord and Example readers."""
    shards = sorted(folder.glob("*.tfrecord-*"))
    return [parse_example(data) for shard in shards for data in iter_records(str(shard))]


@pytest.mark.parametrize("codec", ["png", "raw", "jpeg"])
def test_ingest_of_the_export_gives_back_the_file(tmp_path: Path, codec: str) -> None:
    src = _source(tmp_path / "src.kdb", codec=codec)
    out = tmp_path / "rlds" / "pick" / "1.0.0"
    out.parent.mkdir(parents=True)
    report = export(src, out, format="rlds")
    assert (report.format, report.episodes, report.frames, report.warnings) == ("rlds", 4, sum(LENGTHS), ())
    back = tmp_path / "back.kdb"
    got = ingest(out, back, image_codec="png", verify=True)
    assert got.format == "rlds" and got.notes == [] and got.verification is not None
    assert_same_file(src, back)
    with kinodb.open(back) as db:
        assert db.metadata()["robot"] == {"name": "panda", "dof": 7}
        assert db.query("filter_keys CONTAINS 'valid' AND meta.seed > 100").tolist() == [1, 3]
        assert db.read_meta(2)["operator"] is None and db.read_meta(1)["operator"] == "op1"


def test_the_layout_is_tfds(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", codec="raw")
    out = tmp_path / "pick" / "2.1.0"
    out.parent.mkdir()
    export(src, out, format="rlds")
    info = json.loads((out / "dataset_info.json").read_text())
    assert (info["name"], info["version"], info["fileFormat"]) == ("pick", "2.1.0", "tfrecord")
    (split,) = info["splits"]
    assert split["name"] == "train" and split["shardLengths"] == ["4"]
    assert split["filepathTemplate"] == "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    shard = out / "pick-train.tfrecord-00000-of-00001"
    assert int(split["numBytes"]) == shard.stat().st_size

    features = json.loads((out / "features.json").read_text())
    top = features["featuresDict"]["features"]
    assert set(top) == {"steps", "episode_metadata"}
    steps = top["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    assert top["steps"]["pythonClassName"].endswith("dataset_feature.Dataset")
    assert set(steps) == {"action", "observation", "reward", "is_first", "is_last", "is_terminal",
                          "language_instruction", "timestamp", "sim_state", "contacts", "uid"}  # fmt: skip
    obs = steps["observation"]["featuresDict"]["features"]
    assert set(obs) == {"state", "agentview", "wrist", "ee_vel"}
    assert obs["agentview"]["image"] == {"shape": {"dimensions": ["24", "20", "3"]}, "dtype": "uint8",
                                         "encodingFormat": "png"}  # fmt: skip
    assert obs["state"]["tensor"] == {"shape": {"dimensions": ["5"]}, "dtype": "float64", "encoding": "bytes"}
    assert obs["ee_vel"]["tensor"] == {"shape": {"dimensions": ["3"]}, "dtype": "float16", "encoding": "none"}
    assert steps["action"]["tensor"] == {
        "shape": {"dimensions": ["7"]},
        "dtype": "float32",
        "encoding": "none",
    }
    assert steps["contacts"]["tensor"]["encoding"] == "none" and steps["uid"]["tensor"]["encoding"] == "bytes"
    assert steps["reward"]["pythonClassName"].endswith("scalar.Scalar")
    assert steps["language_instruction"]["pythonClassName"].endswith("text_feature.Text")
    meta = top["episode_metadata"]["featuresDict"]["features"]
    assert set(meta) == {"kinodb", "success", "scene", "meta.seed", "meta.scale"}  # operator: not in all
    assert meta["meta.scale"]["tensor"] == {"shape": {}, "dtype": "float64", "encoding": "bytes"}
    assert meta["meta.seed"]["tensor"]["dtype"] == "int64"

    with kinodb.open(src) as db:
        for i, rec in enumerate(_records(out)):
            ep, T = db.read_episode(i), LENGTHS[i]
            assert np.array_equal(rec["steps/action"], ep["actions"].ravel())
            states = np.frombuffer(b"".join(rec["steps/observation/state"]), "<f8").reshape(T, 5)
            assert np.array_equal(states, ep["states"])
            assert np.array_equal(np.frombuffer(b"".join(rec["steps/uid"]), "<u8"), ep["uid"])
            assert np.array_equal(rec["steps/contacts"], ep["contacts"].ravel())
            assert np.array_equal(np.frombuffer(b"".join(rec["steps/timestamp"]), "<f8"), ep["timestamps"])
            assert rec["steps/is_first"].tolist() == [1] + [0] * (T - 1)
            assert rec["steps/is_last"].tolist() == [0] * (T - 1) + [1]
            assert rec["steps/language_instruction"] == [f"lift the cube {i}".encode()] * T
            pixels = np.stack([np.asarray(_png(b)) for b in rec["steps/observation/agentview"]])
            assert np.array_equal(pixels, ep["images"]["agentview"])
            assert rec["episode_metadata/success"].tolist() == [i % 2]
            assert rec["episode_metadata/meta.seed"].tolist() == [100 + i]
            assert np.frombuffer(rec["episode_metadata/meta.scale"][0], "<f8").tolist() == [0.5 * i]
            assert json.loads(rec["episode_metadata/kinodb"][0])["task"] == f"lift the cube {i}"


def _png(data: bytes) -> object:
    from PIL import Image

    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def test_jpeg_frames_pass_through_byte_for_byte(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", codec="jpeg")
    export(src, tmp_path / "pick", format="rlds")
    features = json.loads((tmp_path / "pick" / "features.json").read_text())
    steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    obs = steps["observation"]["featuresDict"]["features"]
    assert obs["agentview"]["image"]["encodingFormat"] == "jpeg"
    with kinodb.open(src) as db:
        for i, rec in enumerate(_records(tmp_path / "pick")):
            stored = [db.read_image_bytes(i, "agentview", t) for t in range(LENGTHS[i])]
            assert rec["steps/observation/agentview"] == stored


def test_several_shards_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rlds_export, "SHARD_BYTES", 20_000)
    src = _source(tmp_path / "src.kdb")
    export(src, tmp_path / "pick", format="rlds")
    shards = sorted(p.name for p in (tmp_path / "pick").glob("pick-train.tfrecord-*"))
    n = len(shards)
    assert n > 1 and shards == [f"pick-train.tfrecord-{k:05d}-of-{n:05d}" for k in range(n)]
    info = json.loads((tmp_path / "pick" / "dataset_info.json").read_text())
    lengths = [int(x) for x in info["splits"][0]["shardLengths"]]
    assert sum(lengths) == 4 and len(lengths) == n and all(lengths)
    assert not list((tmp_path / "pick").glob("*.partial"))
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick", back, image_codec="png")
    assert_same_file(src, back)


def test_per_frame_tasks_go_to_each_step(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path) as w:
        for T in (4, 3):
            w.add_episode(actions=np.zeros((T, 2), np.float32), states=np.zeros((T, 1), np.float32),
                          task="pick", extra={"tasks": ["pick", "place"]},
                          extra_arrays={"task_index": np.array([0, 0, 1, 1][:T], np.int64)})  # fmt: skip
    export(path, tmp_path / "t", format="rlds")
    rec = _records(tmp_path / "t")[1]
    assert rec["steps/language_instruction"] == [b"pick", b"pick", b"place"]
    ingest(tmp_path / "t", tmp_path / "back.kdb")
    assert_same_file(path, tmp_path / "back.kdb")


def test_cameras_of_several_sizes_and_rates(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", sizes=((24, 20), (16, 12)), fps=(20.0, 15.0))
    export(src, tmp_path / "pick", format="rlds")
    features = json.loads((tmp_path / "pick" / "features.json").read_text())
    steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    dims = steps["observation"]["featuresDict"]["features"]["agentview"]["image"]["shape"]["dimensions"]
    assert dims == ["-1", "-1", "3"]
    info = json.loads((tmp_path / "pick" / "dataset_info.json").read_text())
    assert "15-20 Hz" in info["description"]
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick", back, image_codec="png")
    assert_same_file(src, back)
    with kinodb.open(back) as db:
        assert db.episodes()["fps"].tolist() == [20.0, 15.0, 20.0, 15.0]


def test_a_merge_of_two_action_widths_is_refused_with_a_filter_that_works(tmp_path: Path) -> None:
    a = _source(tmp_path / "a.kdb")
    b = tmp_path / "b.kdb"
    with kinodb.Writer(b) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 5)), embodiment="pusht")
    merged = tmp_path / "m.kdb"
    kinodb.merge([a, b], merged)
    with pytest.raises(ConversionError, match=r"different action dims .*--filter") as err:
        export(merged, tmp_path / "rlds" / "m" / "1.0.0", format="rlds")
    assert not (tmp_path / "rlds").exists()  # the folders made for it are gone again
    kql = str(err.value).split("--filter '")[1].rstrip("'")
    assert kql == "action_dim = 2"
    assert export(merged, tmp_path / "m", format="rlds", filter=kql).episodes == 1


def test_a_camera_some_episodes_lack_is_refused_and_arrays_left_out(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 1)), timestamps=np.arange(3.0),
                      images={"cam": np.zeros((3, 4, 4, 3), np.uint8)}, extra_arrays={"x": np.ones((3, 2))})  # fmt: skip
        w.add_episode(actions=np.zeros((2, 2), np.float32), states=np.zeros((2, 1)),
                      images={"cam": np.zeros((2, 4, 4, 3), np.uint8)})  # fmt: skip
        w.add_episode(
            actions=np.zeros((2, 2), np.float32), states=np.zeros((2, 1)), extra_arrays={"x": np.ones((2, 2))}
        )
    with pytest.raises(ConversionError, match=r"camera 'cam' is held by 2 of the 3 episodes .*--filter"):
        export(path, tmp_path / "a", format="rlds")
    assert not (tmp_path / "a").exists()
    report = export(path, tmp_path / "a", format="rlds", filter="episode_id < 2")
    assert len(report.warnings) == 2
    assert "timestamps are held by 1 of the 2 episodes" in report.warnings[0]
    assert "'x' is held by 1 of the 2 episodes" in report.warnings[1]
    rec = _records(tmp_path / "a")[0]
    assert "steps/x" not in rec and "steps/timestamp" not in rec and "steps/observation/cam" in rec


def test_arrays_of_other_dtypes_or_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), extra_arrays={"x": np.ones((3, 2))})
        w.add_episode(actions=np.zeros((2, 2), np.float32), extra_arrays={"x": np.ones((2, 3))})
    with pytest.raises(ConversionError, match=r"the episodes' x differ in dtype or shape per frame "
                       r"\(float64 \(2\) in 1, float64 \(3\) in 1\).*--filter"):  # fmt: skip
        export(path, tmp_path / "x", format="rlds")
    assert not (tmp_path / "x").exists()


def test_a_camera_of_two_channels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"la": np.full((3, 4, 4, 2), 7, np.uint8)})
    with pytest.raises(
        ConversionError, match=r"camera 'la' has 2 channels, and a TFDS image has 1, 3 or 4 .*zarr"
    ):
        export(path, tmp_path / "la", format="rlds")
    assert not (tmp_path / "la").exists()


@pytest.mark.parametrize("where", ["camera", "array"])
def test_a_name_holding_a_slash_is_refused(tmp_path: Path, where: str) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        images = {"top/left": np.zeros((2, 4, 4, 3), np.uint8)} if where == "camera" else None
        arrays = {"force/z": np.ones((2, 1))} if where == "array" else None
        w.add_episode(actions=np.zeros((2, 2), np.float32), images=images, extra_arrays=arrays)
    with pytest.raises(ConversionError, match=rf"the {where} '[a-z]+/[a-z]+' cannot name an RLDS feature"):
        export(path, tmp_path / "s", format="rlds")
    assert not (tmp_path / "s").exists()


def test_names_that_clash_get_an_underscore_and_come_back(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="png") as w:
        for T in (3, 4):
            w.add_episode(actions=np.ones((T, 2), np.float32), states=np.zeros((T, 1)),
                          images={"state": np.full((T, 4, 4, 3), 9, np.uint8)},
                          extra_arrays={"reward": np.arange(T, dtype=np.int32), "observation": np.ones((T, 3)),
                                        "timestamp": np.ones(T)}, timestamps=np.arange(T) / 10)  # fmt: skip
    export(path, tmp_path / "c", format="rlds")
    rec = _records(tmp_path / "c")[0]
    assert {"steps/reward_", "steps/observation/state_", "steps/observation_", "steps/timestamp",
            "steps/timestamp_"} <= set(rec)  # fmt: skip
    ingest(tmp_path / "c", tmp_path / "back.kdb", image_codec="png")
    assert_same_file(path, tmp_path / "back.kdb")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("rlds/pick/1.0.0", ("pick", "1.0.0")),
        ("out/My-Pick Data", ("my_pick_data", "1.0.0")),
        ("out/2024_runs", ("dataset_2024_runs", "1.0.0")),
        ("out/bridge/0.1.0/", ("bridge", "0.1.0")),
        ("out/v1.0", ("v1_0", "1.0.0")),
    ],
)
def test_the_dataset_name_and_version_come_from_the_folder(target: str, expected: tuple[str, str]) -> None:
    assert rlds_export.dataset_name(target) == expected


def test_the_command_line_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path / "src.kdb")
    out = tmp_path / "rlds" / "pick" / "1.0.0"
    assert main(["export", str(src), "-o", str(out), "--format", "rlds"]) == 0  # makes rlds/pick/
    assert "rlds" in capsys.readouterr().out
    assert main(["export", str(src), "-o", str(out), "-F", "rlds", "--filter", "success = true"]) != 0
    assert "exists" in capsys.readouterr().err
    assert (
        main(["export", str(src), "-o", str(out), "-F", "rlds", "--filter", "success = true", "--force"]) == 0
    )
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["splits"][0]["shardLengths"] == ["2"]
    (out / "NOTES.md").write_text("mine")
    assert main(["export", str(src), "-o", str(out), "-F", "rlds", "--force"]) != 0
    assert "NOTES.md" in capsys.readouterr().err
    assert (out / "NOTES.md").read_text() == "mine"
    assert main(["ingest", str(out.parent.parent), "-o", str(tmp_path / "back.kdb")]) == 0  # found below
    with kinodb.open(tmp_path / "back.kdb") as db:
        assert len(db) == 2 and db.episodes()["success"].tolist() == [True, True]


def test_an_export_changed_afterwards_is_read_without_the_record(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    export(src, tmp_path / "pick", format="rlds")
    record_path = tmp_path / "pick" / "kinodb_export.json"
    record = json.loads(record_path.read_text())
    record["kinodb_export"]["layout"]["timestamps"] = "steps/time"  # a feature the dataset no longer holds
    record_path.write_text(json.dumps(record))
    report = ingest(tmp_path / "pick", tmp_path / "back.kdb", image_codec="png")
    assert any("changed since" in n for n in report.notes)
    with kinodb.open(tmp_path / "back.kdb") as db:
        assert "timestamp" in db.read_episode(0)  # read as any RLDS dataset's feature
        assert db.read_meta(0)["task"] == "lift the cube 0"


def test_episodes_edited_after_the_export_keep_their_features_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _source(tmp_path / "src.kdb")
    out = tmp_path / "pick"
    export(src, out, format="rlds")
    (shard,) = out.glob("*.tfrecord-*")
    records = [parse_example(data) for data in iter_records(str(shard))]
    for k in (1, 2):  # as if someone rewrote these episodes' metadata
        meta = json.loads(records[k]["episode_metadata/kinodb"][0])
        meta["num_frames"] += 1
        records[k]["episode_metadata/kinodb"] = [json.dumps(meta).encode()]
    write_records(shard, [encode_example(r) for r in records])
    with caplog.at_level(logging.WARNING, logger="kinodb"):
        ingest(out, tmp_path / "back.kdb", image_codec="png")
    edited = [r.getMessage() for r in caplog.records if "does not describe the episode" in r.getMessage()]
    assert len(edited) == 1 and "changed after the export" in edited[0]
    with kinodb.open(src) as a, kinodb.open(tmp_path / "back.kdb") as b:
        assert b.read_meta(0)["operator"] == "op0"  # given back
        assert (
            "operator" not in b.read_meta(1) and b.read_meta(1)["task"] == "lift the cube 1"
        )  # its features
        assert np.array_equal(a.read_episode(1)["states"], b.read_episode(1)["states"])


@pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"needs the Bridge sample at {BRIDGE}")
def test_the_bridge_sample_survives_export_and_ingest(tmp_path: Path) -> None:
    src = tmp_path / "bridge.kdb"
    ingest(BRIDGE, src)
    out = tmp_path / "bridge_dataset" / "1.0.0"
    out.parent.mkdir()
    export(src, out, format="rlds")
    back = tmp_path / "back.kdb"
    ingest(out, back, verify=True)
    assert_same_file(src, back)  # JPEG frames byte for byte
    rec = _records(out)[3]
    with kinodb.open(src) as db:  # the source's episode_metadata/episode_id, a field of another name here
        assert rec["episode_metadata/episode_id"].tolist() == [db.read_meta(3)["episode_metadata.episode_id"]]
    with kinodb.open(src) as a, kinodb.open(back) as b:
        for i in range(len(a)):
            for cam in a.cameras(i):
                assert a.read_image_bytes(i, cam, 0) == b.read_image_bytes(i, cam, 0)
