"""RLDS ingest of damaged sources: one bad record costs one episode, once; metadata of the wrong
JSON types is a ConversionError naming the file and the field; a passed-through frame is
stored as the source holds it."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _rlds_writer as w
import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
needs_bridge = pytest.mark.skipif(
    not BRIDGE.is_dir(),
    reason=f"real Bridge RLDS sample not found at {BRIDGE} (see shared/samples/SOURCES.md)",
)
SHARD = "toy-train.tfrecord-00000-of-00001"
FEATURES = {
    "steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([2], "float32"),
        "reward": w.tensor([], "float32"), "discount": w.tensor([], "float32"),
        "observation": w.features_dict({"state": w.tensor([3], "float32"), "image": w.image([16, 12, 3], "jpeg")}),
    }),
}  # fmt: skip


def _episode(rng: np.random.Generator, T: int) -> dict[str, Any]:
    return {
        "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)], "steps/is_last": np.r_[np.zeros(T - 1, np.int64), 1],
        "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
        "steps/reward": np.r_[np.zeros(T - 1), 1.0].astype(np.float32), "steps/discount": np.ones(T, np.float32),
        "steps/observation/state": rng.normal(size=(T, 3)).astype(np.float32),
        "steps/observation/image": [encode_image(f, "JPEG", quality=90) for f in smooth_frames(rng, (T, 16, 12, 3))],
    }  # fmt: skip


def _episodes(lengths: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    return [_episode(rng, T) for T in lengths]


def _write(root: Path, records: list[bytes], features: dict[str, Any] | None = FEATURES) -> Path:
    return w.write_tfds(root, "toy", {"train": [records]}, features)


def _check(db: kinodb.Database, i: int, ep: dict[str, Any]) -> None:
    got = db.read_episode_actions_only(i)
    np.testing.assert_array_equal(got["actions"], ep["steps/action"])
    np.testing.assert_array_equal(got["states"], ep["steps/observation/state"])


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# -- a damaged feature name in the first record ------------------------------------------


def _renamed(ep: dict[str, Any], old: str, new: str | None) -> dict[str, Any]:
    out = {k: v for k, v in ep.items() if k != old}
    if new is not None:
        out[new] = ep[old]
    return out


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("Steps/reward", r"record 0: features not declared in features\.json: \['Steps/reward'\]"),
        (None, r"record 0: missing feature steps/reward"),
    ],
    ids=["renamed", "missing"],
)
def test_a_damaged_feature_name_in_the_first_record_fails_that_record_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new: str | None, message: str
) -> None:
    eps = _episodes([3, 4, 2, 5])
    records = [w.episode_example(_renamed(eps[0], "steps/reward", new))]
    root = _write(tmp_path / "d", records + [w.episode_example(e) for e in eps[1:]])
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(root), "-o", str(out), "-q"]) == 1
    assert re.search(rf"{SHARD}: {message}", _one_line_error(capsys))
    assert not out.exists()
    report = ingest(root, out, on_error="skip")
    assert report.episodes == 3 and [k for k, _ in report.skipped] == [f"{SHARD}:0"]
    with kinodb.open(out) as db:
        assert "rewards" in db.read_episode_actions_only(0)
        for i, ep in enumerate(eps[1:]):
            _check(db, i, ep)


def test_an_undeclared_feature_in_a_later_record_fails_with_the_same_message(tmp_path: Path) -> None:
    eps = _episodes([3, 4])
    records = [w.episode_example(eps[0]), w.episode_example(_renamed(eps[1], "steps/reward", "Steps/reward"))]
    report = ingest(_write(tmp_path / "d", records), tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1
    [(key, why)] = report.skipped
    assert key == f"{SHARD}:1" and "record 1: features not declared in features.json: ['Steps/reward']" in why


def test_without_features_json_the_first_record_still_declares_the_features(tmp_path: Path) -> None:
    eps = _episodes([3, 4])
    extra = dict(eps[0], **{"steps/gripper": np.zeros(3, np.float32)})
    root = _write(tmp_path / "d", [w.episode_example(extra), w.episode_example(eps[1])], features=None)
    report = ingest(root, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1 and "record 1: missing feature steps/gripper" in report.skipped[0][1]


def test_a_declared_feature_of_an_unknown_class_is_classified_from_the_first_record(tmp_path: Path) -> None:
    eps = _episodes([3, 4])
    for ep in eps:
        ep["steps/gripper"] = np.arange(len(ep["steps/action"]), dtype=np.float32)
    features = json.loads(json.dumps(FEATURES))
    steps = features["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    steps["gripper"] = {"pythonClassName": "my_robot.features.Gripper", "gripper": {"range": [0, 1]}}
    root = _write(tmp_path / "d", [w.episode_example(e) for e in eps], features)
    assert ingest(root, tmp_path / "o.kdb").episodes == 2
    with kinodb.open(tmp_path / "o.kdb") as db:
        np.testing.assert_array_equal(
            db.read_episode_actions_only(1)["gripper"], np.arange(4, dtype=np.float32)
        )


@needs_bridge
@pytest.mark.integration
def test_bridge_with_a_misnamed_feature_in_record_0_loses_only_that_episode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "bridge"
    root.mkdir()
    for name in ("features.json", "dataset_info.json"):
        shutil.copyfile(BRIDGE / name, root / name)
    shard = "bridge_dataset-train.tfrecord-00000-of-00001"
    records = w.read_records(BRIDGE / shard)
    first = records[0]
    at = first.find(b"steps/reward")
    records[0] = first[:at] + b"S" + first[at + 1 :]  # one flipped bit, the CRCs written anew
    w.write_shard(root / shard, records)
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(root), "-o", str(out), "-q", "--on-error", "skip"]) == 0
    with kinodb.open(out) as db:
        assert len(db) == 24
        assert [s["episode"] for s in db.metadata()["ingest"]["skipped"]] == [f"{shard}:0"]
        assert "['Steps/reward']" in db.metadata()["ingest"]["skipped"][0]["reason"]


# -- metadata of the wrong JSON types -----------------------------------------------------


def _action(f: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = f["featuresDict"]["features"]["steps"]["sequence"]["feature"]
    return node["featuresDict"]["features"]["action"]


_ACTION = "featuresDict.features.steps.sequence.feature.featuresDict.features.action"
_BAD_METADATA: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("features.json", "featuresDict", lambda f: f.update(featuresDict=[]), "featuresDict is an array"),
    ("features.json", "shape", lambda f: _action(f)["tensor"].update(shape=[7]), f"{_ACTION}.tensor.shape is an array"),
    ("features.json", "tensor", lambda f: _action(f).update(tensor="x"), f"{_ACTION}.tensor is a string"),
    ("features.json", "dims", lambda f: _action(f)["tensor"]["shape"].update(dimensions=["two"]),
     f"{_ACTION}.tensor.shape.dimensions is an array"),
    ("features.json", "class", lambda f: _action(f).update(pythonClassName=3), f"{_ACTION}.pythonClassName is a number"),
    ("dataset_info.json", "lengths", lambda i: i["splits"][0].update(shardLengths=25),
     "splits[0].shardLengths is a number (25)"),
    ("dataset_info.json", "lengths-text", lambda i: i["splits"][0].update(shardLengths=["abc"]),
     "splits[0].shardLengths is an array"),
    ("dataset_info.json", "splits", lambda i: i.update(splits={"train": 1}), "splits is an object"),
    ("dataset_info.json", "split", lambda i: i.update(splits=["train"]), "splits[0] is a string"),
    ("dataset_info.json", "num-shards", lambda i: i["splits"][0].update(numShards=[1]),
     "splits[0].numShards is an array"),
    ("dataset_info.json", "name", lambda i: i.update(name=None), "name is null"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [(n, e, m) for n, _, e, m in _BAD_METADATA],
    ids=[i for _, i, _, _ in _BAD_METADATA],
)
def test_metadata_of_the_wrong_types_names_the_file_and_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    edit: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    root = _write(tmp_path / "d", [w.episode_example(e) for e in _episodes([3, 4])])
    data = json.loads((root / name).read_text())
    edit(data)
    (root / name).write_text(json.dumps(data))
    out = tmp_path / "o.kdb"
    with pytest.raises(ConversionError) as caught:
        ingest(root, out, on_error="skip")
    text = str(caught.value)
    assert text.startswith(f"{root / name}: {message}") and "; expected " in text
    assert "tfds.folder_dataset.write_metadata" in text and "or remove it" in text
    assert main(["ingest", str(root), "-o", str(out), "-q", "--on-error", "skip"]) == 1
    assert f"{root / name}: {message}" in _one_line_error(capsys)
    assert not out.exists()
    (root / name).unlink()  # as the message says: the file is optional
    assert ingest(root, out).episodes == 2


# -- per-step records: one damaged step costs its episode, reported once ---------------


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]  # a malformed Example; the record's CRCs are written for it


@pytest.mark.parametrize("damage", ["crc", "cut"])
@pytest.mark.parametrize("bad", [3, 5, 7], ids=["is_first", "middle", "is_last"])
def test_a_damaged_step_record_skips_its_episode_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: int, damage: str
) -> None:
    eps = _episodes([3, 5, 4])  # records 0-2, 3-7, 8-11
    records = [r for e in eps for r in w.step_examples(e, len(e["steps/action"]))]
    path = tmp_path / "x.tfrecord"
    if damage == "cut":
        records[bad] = _cut(records[bad])
        w.write_shard(path, records)
    else:
        w.write_shard(path, records)
        buf = bytearray(path.read_bytes())
        buf[sum(16 + len(r) for r in records[:bad]) + 12 + 20] ^= 0x40
        path.write_bytes(bytes(buf))
    reason = "data CRC mismatch" if damage == "crc" else "not a valid tf.train.Example"
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(path), "-o", str(out), "-q"]) == 1
    assert f"x.tfrecord: records 3-7: record {bad}: {reason}" in _one_line_error(capsys)
    assert not out.exists()
    report = ingest(path, out, on_error="skip")
    assert report.episodes == 2
    [(key, why)] = report.skipped
    assert key == "x.tfrecord:3-7" and f"records 3-7: record {bad}: {reason}" in why
    with kinodb.open(out) as db:
        _check(db, 0, eps[0])
        _check(db, 1, eps[2])


def test_a_damaged_step_runs_its_episode_to_the_next_is_first(tmp_path: Path) -> None:
    eps = _episodes([3, 5, 4])
    steps = [w.step_examples(e, len(e["steps/action"])) for e in eps]
    records = steps[0] + steps[1][:-1] + steps[2]  # episode 1 has no is_last: it ends at the next is_first
    records[4] = _cut(records[4])
    path = tmp_path / "x.tfrecord"
    w.write_shard(path, records)
    report = ingest(path, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 2 and [k for k, _ in report.skipped] == ["x.tfrecord:3-6"]
    records = steps[0] + [_cut(steps[1][0])] + steps[1][1:] + steps[2][1:]  # nor a next is_first
    w.write_shard(path, records)
    report = ingest(path, tmp_path / "p.kdb", on_error="skip")
    assert report.episodes == 1 and [k for k, _ in report.skipped] == ["x.tfrecord:3-7", "x.tfrecord:8-10"]
    assert (
        "record 3: not a valid" in report.skipped[0][1] and "record 8 is not is_first" in report.skipped[1][1]
    )


# -- passed-through frames ----------------------------------------------------------------


def test_a_complete_but_undecodable_jpeg_is_stored_as_the_source_holds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = _episodes([3, 4])
    frame = bytearray(eps[1]["steps/observation/image"][0])
    sos = frame.find(b"\xff\xda")  # the scan header, then the compressed data
    scan = sos + 2 + int.from_bytes(frame[sos + 2 : sos + 4], "big")
    frame[scan : scan + 2] = b"\xff\x12"  # a marker no JPEG has, inside the scan data; FF D9 kept
    eps[1]["steps/observation/image"][0] = bytes(frame)
    root = _write(tmp_path / "d", [w.episode_example(e) for e in eps])
    out = tmp_path / "o.kdb"
    assert ingest(root, out).episodes == 2  # checked for completeness only, not decoded
    with kinodb.open(out) as db:
        assert db.read_image_bytes(1, "image", 0) == bytes(frame)
    capsys.readouterr()
    assert main(["validate", str(out)]) == 1
    assert "episode 1, camera 'image', frame 0: image does not decode" in capsys.readouterr().out
    assert main(["ingest", str(root), "-o", str(tmp_path / "v.kdb"), "-q", "--verify"]) == 1
    err = _one_line_error(capsys)
    assert "camera 'image', frame 0: image does not decode" in err and "output file was kept" in err


def test_a_frame_the_writer_refuses_is_named_by_shard_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = _episodes([3, 4, 2])
    frames = eps[1]["steps/observation/image"]
    frames[2] = encode_image(np.zeros((16, 12, 3), np.uint8), "PNG")  # one PNG among JPEG frames
    root = _write(tmp_path / "d", [w.episode_example(e) for e in eps])
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(root), "-o", str(out), "-q"]) == 1
    err = _one_line_error(capsys)
    assert re.match(
        rf"error: {re.escape(str(root / SHARD))}: record 1: camera .image., frame 2 is not jpeg bytes", err
    ), err
    assert not out.exists()
    report = ingest(root, out, on_error="skip")
    assert [k for k, _ in report.skipped] == [f"{SHARD}:1"] and report.episodes == 2
