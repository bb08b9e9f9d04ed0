"""RLDS / TFDS TFRecord ingest: framing, Example decoding, both layouts, the real Bridge sample."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _rlds_writer as w
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import kinodb
from _factories import tiny_robomimic_hdf5
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import SourceOptions, ingest, source_class
from kinodb.ingest import _tfrecord as tfr
from kinodb.ingest._example import encode_example, parse_example
from kinodb.ingest.rlds import RLDSSource
from kinodb.kdb import _codecs
from kinodb.kdb._codecs import header_shape

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
needs_bridge = pytest.mark.skipif(
    not BRIDGE.is_dir(),
    reason=f"real Bridge RLDS sample not found at {BRIDGE} (see shared/samples/SOURCES.md)",
)
Episode = dict[str, Any]


# -- fixtures -----------------------------------------------------------------------------


def _frames(rng: np.random.Generator, T: int, fmt: str) -> list[bytes]:
    out = []
    for _ in range(T):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def make_episode(rng: np.random.Generator, i: int, T: int, *, final_reward: float = 1.0) -> Episode:
    """Flattened RLDS features of one episode (OXE builder style, JPEG + PNG cameras)."""
    last = np.zeros(T, np.int64)
    last[-1] = 1
    return {
        "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)],
        "steps/is_last": last,
        "steps/is_terminal": last,
        "steps/action": rng.normal(size=(T, 7)).astype(np.float32),
        "steps/observation/state": rng.normal(size=(T, 5)).astype(np.float32),
        "steps/observation/image": _frames(rng, T, "JPEG"),
        "steps/observation/wrist_image": _frames(rng, T, "PNG"),
        "steps/language_instruction": [f"task {i % 3}".encode()] * T,
        "steps/language_embedding": rng.normal(size=(T, 8)).astype(np.float32),
        "steps/discount": np.ones(T, np.float32),
        "steps/reward": np.r_[np.zeros(T - 1), final_reward].astype(np.float32),
        "episode_metadata/file_path": [f"/data/run_{i}.npy".encode()],
        "episode_metadata/episode_id": np.array([1000 + i]),
    }


FEATURES = {
    "steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "is_terminal": w.tensor([], "bool"),
        "action": w.tensor([7], "float32"),
        "observation": w.features_dict({"state": w.tensor([5], "float32"), "image": w.image([16, 12, 3], "jpeg"),
                                        "wrist_image": w.image([16, 12, 3], "png")}),
        "language_instruction": w.text(), "language_embedding": w.tensor([8], "float32"),
        "discount": w.tensor([], "float32"), "reward": w.tensor([], "float32"),
    }),
    "episode_metadata": w.features_dict({"file_path": w.text(), "episode_id": w.tensor([], "int32")}),
}  # fmt: skip


@pytest.fixture
def episodes() -> dict[str, list[Episode]]:
    rng = np.random.default_rng(7)
    train = [make_episode(rng, i, T, final_reward=float(i % 2)) for i, T in enumerate([3, 5, 4, 6, 2])]
    val = [make_episode(rng, 100 + i, 4) for i in range(2)]
    return {"train": train, "val": val}


def write_episode_layout(root: Path, eps: dict[str, list[Episode]], **kw: Any) -> Path:
    """Train in two shards (3 + 2 episodes), val in one; unpacked lists in the second shard."""
    train = eps["train"]
    shards = {
        "train": [
            [w.episode_example(e) for e in train[:3]],
            [w.episode_example(e, packed=False) for e in train[3:]],
        ],
        "val": [[w.episode_example(e) for e in eps["val"]]],
    }
    return w.write_tfds(root, "toy_dataset", shards, kw.pop("features", FEATURES), **kw)


@pytest.fixture
def toy(tmp_path: Path, episodes: dict[str, list[Episode]]) -> Path:
    return write_episode_layout(tmp_path / "toy_dataset" / "1.0.0", episodes)


def check_episode(db: kinodb.Database, i: int, ep: Episode, *, images: bool = True) -> None:
    got = db.read_episode_actions_only(i)
    T = len(ep["steps/action"])
    np.testing.assert_array_equal(got["actions"], ep["steps/action"])
    assert got["actions"].dtype == np.float32
    np.testing.assert_array_equal(got["states"], ep["steps/observation/state"])
    np.testing.assert_array_equal(got["rewards"], ep["steps/reward"])
    np.testing.assert_array_equal(got["is_terminal"], ep["steps/is_terminal"] != 0)
    np.testing.assert_array_equal(got["discount"], ep["steps/discount"])
    np.testing.assert_array_equal(got["language_embedding"], ep["steps/language_embedding"])
    meta = got["meta"]
    assert meta["num_frames"] == T
    assert meta["task"] == ep["steps/language_instruction"][0].decode()
    assert meta["file_path"] == ep["episode_metadata/file_path"][0].decode()
    assert meta["episode_metadata.episode_id"] == int(ep["episode_metadata/episode_id"][0])
    assert meta["success"] is (float(ep["steps/reward"][-1]) > 0)
    if images:
        for cam in ("image", "wrist_image"):
            frames = ep[f"steps/observation/{cam}"]
            assert [db.read_image_bytes(i, cam, t) for t in range(T)] == frames


# -- framing and protobuf -----------------------------------------------------------------


@pytest.mark.parametrize("impl", [tfr.crc32c, tfr.crc32c_numpy])
def test_crc32c_matches_the_spec(impl: Callable[[bytes], int]) -> None:
    assert impl(b"123456789") == 0xE3069283  # the CRC-32C check value
    rnd = random.Random(3)
    for n in [0, 1, 3, 4, 5, 63, 64, 65, 1000, 4097, 70_001, 300_000]:
        data = rnd.randbytes(n)
        assert impl(data) == w.crc32c(data), n
    assert tfr.masked_crc32c(b"abc") == w.masked(b"abc")


def test_frame_and_scan_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.tfrecord"
    datas = [b"", b"a", os.urandom(1000)]
    assert tfr.frame(datas[2]) == w.record(datas[2])
    tfr.write_records(path, datas)
    assert list(tfr.iter_records(str(path))) == datas
    records = tfr.scan(str(path))
    assert [r.length for r in records] == [0, 1, 1000] and all(r.fault is None for r in records)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tfr.read_data(fd, str(path), 2, records[2]) == datas[2]
    finally:
        os.close(fd)


def test_parse_example_reads_every_wire_form() -> None:
    feats: dict[str, Any] = {"f": np.array([1.5, -2.0, 3.25], np.float32), "i": np.array([0, 1, -1, 2**40, -(2**63)]),
             "b": [b"", b"\x00\xff", "é".encode()], "e": np.zeros(0, np.float32)}  # fmt: skip
    for packed in (True, False):
        got = parse_example(w.example(feats, packed=packed))
        np.testing.assert_array_equal(got["f"], feats["f"])
        assert got["i"].tolist() == feats["i"].tolist()
        assert got["b"] == feats["b"]
        assert got["e"].size == 0
    assert parse_example(encode_example(feats))["i"].tolist() == feats["i"].tolist()
    assert parse_example(w.example(feats), skip={"b"}).keys() == {"f", "i", "e"}
    assert parse_example(w.example(feats), only={"i"}).keys() == {"i"}


_values = st.one_of(
    st.lists(st.binary(max_size=20), max_size=5),
    st.lists(st.floats(width=32, allow_nan=False), max_size=8).map(lambda v: np.array(v, np.float32)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8).map(lambda v: np.array(v, np.int64)),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=6), st.booleans())
def test_parse_example_inverts_an_independent_encoder(feats: dict[str, Any], packed: bool) -> None:
    got = parse_example(w.example(feats, packed=packed))
    assert got.keys() == feats.keys()
    for key, want in feats.items():
        if isinstance(want, list):
            assert got[key] == want or (not want and isinstance(got[key], list))
        else:
            assert np.asarray(got[key]).tolist() == want.tolist()


_encodable = st.one_of(
    st.lists(st.sampled_from([b"", b"pick", b"place", "é".encode()]), max_size=9),  # step texts repeat
    st.lists(st.floats(width=32, allow_nan=False), max_size=8).map(lambda v: np.array(v, np.float32)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8).map(lambda v: np.array(v, np.int64)),
    st.lists(st.integers(-3, 130), max_size=8).map(lambda v: np.array(v, np.int64)),  # around one byte
)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), _encodable, max_size=6))
def test_encode_example_writes_what_an_independent_encoder_writes(feats: dict[str, Any]) -> None:
    assert encode_example(feats) == w.example(feats, packed=True)


def test_encode_example_writes_bools_as_zero_and_one() -> None:
    flags = np.array([True, False, True])
    assert encode_example({"x": flags}) == w.example({"x": flags.astype(np.int64)}, packed=True)


def test_parse_example_skips_unknown_fields_and_merges_like_protobuf() -> None:
    unknown = w.varint((9 << 3) | 0) + w.varint(5) + w.field(7, b"junk")  # fields 9 (varint) and 7
    feature = w.field(
        2, w.field(1, np.float32([1.0]).tobytes()) + unknown + w.field(1, np.float32([2.0]).tobytes())
    )
    entry = w.field(1, w.field(1, b"k") + w.field(2, feature)) + w.field(
        1, w.field(1, b"k2") + w.field(2, b"")
    )
    got = parse_example(unknown + w.field(1, entry))
    assert got["k"].tolist() == [1.0, 2.0]  # two packed runs of one list concatenate
    assert got["k2"] == []  # a feature with no kind set is empty


@pytest.mark.parametrize("bad", [b"\x0a\x05\x0a\x03", b"\x0a", b"\x0a\x02\x0f\x00", b"\xff" * 11])
def test_parse_example_rejects_malformed_bytes(bad: bytes) -> None:
    with pytest.raises(ConversionError, match=r"not a valid tf\.train\.Example"):
        parse_example(bad)


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [("JPEG", "RGB", {}), ("JPEG", "L", {}), ("JPEG", "RGB", {"progressive": True}), ("PNG", "RGB", {}),
     ("PNG", "RGBA", {}), ("PNG", "L", {}), ("PNG", "LA", {}), ("PNG", "P", {}), ("PNG", "I;16", {})],
)  # fmt: skip
def test_header_shape_agrees_with_pillow(fmt: str, mode: str, kw: dict[str, Any]) -> None:
    buf = io.BytesIO()
    Image.new(mode, (13, 7)).save(buf, format=fmt, **kw)
    data = buf.getvalue()
    got = header_shape(data)
    if mode in ("P", "I;16"):
        assert got is None  # left to Pillow
    else:
        assert got == _codecs.probe(data) == (7, 13, len(mode))
    assert header_shape(b"\xff\xd8\xff\xe0\x00") is None and header_shape(b"GIF89a") is None


# -- the episode layout -------------------------------------------------------------------


def test_ingest_episode_layout_exactly(toy: Path, tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    out = tmp_path / "toy.kdb"
    report = ingest(toy, out)
    assert report.format == "rlds" and report.episodes == 5 and not report.skipped
    with kinodb.open(out) as db:
        assert len(db) == 5
        for i, ep in enumerate(episodes["train"]):
            check_episode(db, i, ep)
        meta = db.read_meta(0)
        assert meta["source_episode"] == "toy_dataset-train.tfrecord-00000-of-00002:0"
        assert db.read_meta(3)["source_episode"] == "toy_dataset-train.tfrecord-00001-of-00002:0"
        assert meta["fps"] == 10.0 and meta["embodiment"] == "unknown"
        schema = db.schema()
        assert (
            schema["cameras"]["image"]["codec"] == "jpeg"
            and schema["cameras"]["wrist_image"]["codec"] == "png"
        )
        assert schema["arrays"]["language_embedding"] == {"shape": [8], "dtype": "float32"}
        rlds = db.metadata()["rlds"]
        assert rlds["dataset"] == "toy_dataset" and rlds["split"] == "train" and rlds["layout"] == "episode"
        assert rlds["roles"]["cameras"] == {
            "image": "steps/observation/image",
            "wrist_image": "steps/observation/wrist_image",
        }


def test_success_is_unknown_when_the_episode_is_cut_off(
    tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    ep = dict(episodes["train"][0])
    ep["steps/is_last"] = np.zeros(3, np.int64)
    ep["steps/reward"] = np.zeros(3, np.float32)
    root = w.write_tfds(tmp_path / "d", "cut", {"train": [[w.episode_example(ep)]]}, FEATURES)
    ingest(root, tmp_path / "o.kdb")
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert db.read_meta(0)["success"] is None


def test_split_option_picks_shards(toy: Path, tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    ingest(toy, tmp_path / "val.kdb", split="val")
    with kinodb.open(tmp_path / "val.kdb") as db:
        assert len(db) == 2
        check_episode(db, 1, episodes["val"][1])
        assert db.metadata()["rlds"]["split"] == "val"
    with pytest.raises(ConversionError, match=r"no split 'test'.*train, val"):
        ingest(toy, tmp_path / "x.kdb", split="test")
    assert main(["ingest", str(toy), "-o", str(tmp_path / "v2.kdb"), "--split", "val", "-q"]) == 0
    with kinodb.open(tmp_path / "v2.kdb") as db:
        assert len(db) == 2


def test_no_images_skips_cameras(toy: Path, tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    assert main(["ingest", str(toy), "-o", str(tmp_path / "n.kdb"), "--no-images", "-q"]) == 0
    with kinodb.open(tmp_path / "n.kdb") as db:
        assert db.schema()["cameras"] == {}
        check_episode(db, 2, episodes["train"][2], images=False)
    source = RLDSSource(str(toy), SourceOptions(images=False))
    assert "images" not in source.read(source.episodes()[0])
    source.close()


def test_workers_give_the_same_file(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ingest(toy, tmp_path / "one.kdb", workers=1)
    ingest(toy, tmp_path / "two.kdb", workers=2)
    assert (tmp_path / "one.kdb").read_bytes() == (tmp_path / "two.kdb").read_bytes()


def test_options_fps_state_keys_and_flip(
    toy: Path, tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    out = tmp_path / "o.kdb"
    ingest(toy, out, fps=7.5, state_keys=["state"], flip_images=True, image_codec="png", max_episodes=1)
    ep = episodes["train"][0]
    with kinodb.open(out) as db:
        assert db.read_meta(0)["fps"] == 7.5
        got = db.read_episode(0)["images"]["wrist_image"]
        want = np.asarray(Image.open(io.BytesIO(ep["steps/observation/wrist_image"][1])))
        np.testing.assert_array_equal(got[1], want[::-1, ::-1])
    with pytest.raises(ConversionError, match=r"state key 'nope'.*numeric observation keys: state"):
        ingest(toy, tmp_path / "x.kdb", state_keys=["nope"])


def test_length_mismatch_names_record_and_key(tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    eps = episodes["train"][:2]
    bad = dict(eps[1])
    bad["steps/action"] = bad["steps/action"].reshape(-1)[:-1]
    root = w.write_tfds(
        tmp_path / "d", "bad", {"train": [[w.episode_example(eps[0]), w.episode_example(bad)]]}, FEATURES
    )
    with pytest.raises(
        ConversionError, match=r"bad-train\.tfrecord-00000-of-00001: record 1: steps/action has 34 values"
    ):
        ingest(root, tmp_path / "o.kdb")
    images = dict(eps[1])
    images["steps/observation/image"] = images["steps/observation/image"][:-1]
    root = w.write_tfds(tmp_path / "e", "bad", {"train": [[w.episode_example(images)]]}, FEATURES)
    with pytest.raises(
        ConversionError, match=r"record 0: steps/observation/image has 4 frames; the episode has 5"
    ):
        ingest(root, tmp_path / "o.kdb")


# -- the per-step layout, RT-1 style keys, no features.json ------------------------------


def test_step_layout_matches_episode_layout(
    tmp_path: Path, toy: Path, episodes: dict[str, list[Episode]]
) -> None:
    train = episodes["train"]
    records = [r for e in train for r in w.step_examples(e, len(e["steps/action"]))]
    step_features = {**FEATURES["steps"]["sequence"]["feature"]["featuresDict"]["features"],
                     "episode_metadata": FEATURES["episode_metadata"]}  # fmt: skip
    root = w.write_tfds(tmp_path / "steps", "toy_dataset", {"train": [records]}, step_features)
    ingest(root, tmp_path / "s.kdb")
    ingest(toy, tmp_path / "e.kdb")
    with kinodb.open(tmp_path / "s.kdb") as db, kinodb.open(tmp_path / "e.kdb") as ref:
        assert len(db) == len(ref) == 5
        for i, ep in enumerate(train):
            check_episode(db, i, ep)
        assert db.read_meta(1)["source_episode"] == "toy_dataset-train.tfrecord-00000-of-00001:3-7"
        assert db.metadata()["rlds"]["layout"] == "step"
    bare = tmp_path / "bare"  # no features.json, no dataset_info.json: inferred from the first record
    bare.mkdir()
    w.write_shard(bare / "steps.tfrecord", records)
    ingest(bare, tmp_path / "b.kdb")
    with kinodb.open(tmp_path / "b.kdb") as db:
        for i, ep in enumerate(train):
            check_episode(db, i, ep)


def test_step_layout_reports_an_episode_without_its_end(
    tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    a, b = episodes["train"][:2]
    records = w.step_examples(a, 3)[:2] + w.step_examples(b, 5)  # episode a loses its last step
    path = tmp_path / "x.tfrecord"
    w.write_shard(path, records)
    with pytest.raises(ConversionError, match=r"x\.tfrecord: records 0-1: record 1 is not is_last"):
        ingest(path, tmp_path / "o.kdb")
    report = ingest(path, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1 and report.skipped[0][0] == "x.tfrecord:0-1"


def test_step_layout_damaged_step_spoils_only_its_episode(
    tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    a, b = episodes["train"][:2]
    path = tmp_path / "x.tfrecord"
    w.write_shard(path, w.step_examples(a, 3) + w.step_examples(b, 5))
    _flip(path, _offsets(path)[4] + 30)  # step 1 of episode b
    report = ingest(path, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1
    [(key, why)] = report.skipped  # the damaged step's episode, once
    assert key == "x.tfrecord:3-7"
    assert "x.tfrecord: records 3-7: record 4: data CRC mismatch" in why
    with kinodb.open(tmp_path / "o.kdb") as db:
        check_episode(db, 0, a)


def test_rt1_style_action_dict_and_float_observations(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    T = 4
    ep = {
        "steps/is_first": np.r_[1, 0, 0, 0], "steps/is_last": np.r_[0, 0, 0, 1],
        "steps/action/world_vector": rng.normal(size=(T, 3)).astype(np.float32),
        "steps/action/rotation_delta": rng.normal(size=(T, 3)).astype(np.float32),
        "steps/action/open_gripper": np.array([1, 0, 1, 1]),
        "steps/observation/base_pose": rng.normal(size=(T, 2)).astype(np.float32),
        "steps/observation/joint_pos": rng.normal(size=(T, 4)).astype(np.float32),
        "steps/observation/natural_language_instruction": [b"open drawer"] * T,
        "steps/observation/natural_language_embedding": rng.normal(size=(T, 6)).astype(np.float32),
        "steps/observation/rgb": _frames(rng, T, "JPEG"),
    }  # fmt: skip
    features = {"steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"),
        "action": w.features_dict({"world_vector": w.tensor([3], "float32"), "rotation_delta": w.tensor([3], "float32"),
                                   "open_gripper": w.tensor([], "bool")}),
        "observation": w.features_dict({"base_pose": w.tensor([2], "float32"), "joint_pos": w.tensor([4], "float32"),
                                        "natural_language_instruction": w.text(),
                                        "natural_language_embedding": w.tensor([6], "float32"),
                                        "rgb": w.image([16, 12, 3], "jpeg")}),
    })}  # fmt: skip
    root = w.write_tfds(
        tmp_path / "bridge" / "1.0.0", "bridge", {"train": [[w.episode_example(ep)]]}, features
    )
    ingest(tmp_path / "bridge", tmp_path / "o.kdb")  # the parent folder holding one version
    with kinodb.open(tmp_path / "o.kdb") as db:
        got = db.read_episode_actions_only(0)
        want = np.concatenate([ep["steps/action/open_gripper"][:, None], ep["steps/action/rotation_delta"],
                               ep["steps/action/world_vector"]], axis=1).astype(np.float32)  # fmt: skip
        np.testing.assert_array_equal(got["actions"], want)
        np.testing.assert_array_equal(
            got["states"],
            np.concatenate([ep["steps/observation/base_pose"], ep["steps/observation/joint_pos"]], 1),
        )
        np.testing.assert_array_equal(
            got["observation.natural_language_embedding"], ep["steps/observation/natural_language_embedding"]
        )
        schema = db.schema()
        assert schema["actions"]["components"] == {
            "open_gripper": [0, 1],
            "rotation_delta": [1, 4],
            "world_vector": [4, 7],
        }
        assert schema["states"]["components"] == {"base_pose": [0, 2], "joint_pos": [2, 6]}
        meta = got["meta"]
        assert meta["task"] == "open drawer" and meta["success"] is None  # no rewards
        assert meta["fps"] == 5.0 and meta["embodiment"] == "widowx"  # Bridge's recording rate
        assert db.read_image_bytes(0, "rgb", 3) == ep["steps/observation/rgb"][3]
    assert root.is_dir()


def test_integer_features_join_float_states_and_actions_only_with_exact_values(tmp_path: Path) -> None:
    # TFDS stores integers as int64 (unless features.json declares a narrower dtype): the
    # concatenation is float32, as for RT-1's action dicts, where every value must stay exact.
    steps = dict(FEATURES["steps"]["sequence"]["feature"]["featuresDict"]["features"])
    steps["action"] = w.features_dict({"delta": w.tensor([3], "float32"), "terminate": w.tensor([], "int32")})
    observation = dict(steps["observation"]["featuresDict"]["features"])
    observation.update(stamp_ns=w.tensor([], "int64"), count=w.tensor([], "int64"))
    steps["observation"] = w.features_dict(observation)
    rng = np.random.default_rng(17)
    eps = []
    for i, T in enumerate([3, 4]):
        ep = make_episode(rng, i, T)
        del ep["steps/action"]
        ep["steps/action/delta"] = rng.normal(size=(T, 3)).astype(np.float32)
        ep["steps/action/terminate"] = (np.arange(T) == T - 1).astype(np.int64)
        ep["steps/observation/stamp_ns"] = 1_700_000_000_123_456_789 + np.arange(T, dtype=np.int64)
        ep["steps/observation/count"] = 2**24 - np.arange(T, dtype=np.int64)  # float32 holds these
        eps.append(ep)
    root = w.write_tfds(tmp_path / "ints" / "1.0.0", "ints", {"train": [[w.episode_example(e) for e in eps]]},
                        {**FEATURES, "steps": w.dataset(steps)})  # fmt: skip
    out = tmp_path / "ints.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(root, out, state_keys=["state", "stamp_ns"])
    assert (
        "steps/observation/stamp_ns holds 1700000000123456789 at step 0 (int64), which the float32 states of 2 "
        "features cannot hold exactly; leave 'stamp_ns' out of state_keys: it then stays an "
        "extra array, with its own dtype"
    ) in str(err.value)
    report = ingest(root, out, state_keys=["state", "count"], verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"state": [0, 5], "count": [5, 6]}
        for i, ep in enumerate(eps):
            got = db.read_episode_actions_only(i)
            assert got["states"].dtype == np.float32 == got["actions"].dtype
            assert got["states"][:, 5].astype(np.int64).tolist() == ep["steps/observation/count"].tolist()
            np.testing.assert_array_equal(got["actions"][:, 3], ep["steps/action/terminate"])
            assert got["observation.stamp_ns"].dtype == np.int64
            np.testing.assert_array_equal(got["observation.stamp_ns"], ep["steps/observation/stamp_ns"])
    eps[1]["steps/action/terminate"][0] = 2**24 + 1  # past float32's integers: the episode fails
    root = w.write_tfds(tmp_path / "big" / "1.0.0", "big", {"train": [[w.episode_example(e) for e in eps]]},
                        {**FEATURES, "steps": w.dataset(steps)})  # fmt: skip
    report = ingest(root, tmp_path / "big.kdb", on_error="skip")
    assert report.episodes == 1 and len(report.skipped) == 1
    assert "steps/action/terminate holds 16777217 at step 0 (int32)" in report.skipped[0][1]
    assert "name one tensor of the action dict with action_key; the others" in report.skipped[0][1]


# -- finding shards -----------------------------------------------------------------------


def test_detect_and_shard_templates(tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    eps = episodes
    old = write_episode_layout(tmp_path / "old", eps, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}")
    assert sorted(p.name for p in old.glob("*.tfrecord*"))[0] == "toy_dataset-train.tfrecord-00000"
    names = write_episode_layout(tmp_path / "names", eps, info=False, features=None)  # names only
    for root in (old, names):
        assert RLDSSource.detect(str(root)) and source_class("auto", str(root)) is RLDSSource
        ingest(root, root / "o.kdb", format="auto")
        with kinodb.open(root / "o.kdb") as db:
            assert len(db) == 5
            check_episode(db, 4, eps["train"][4])
    shard = next(names.glob("*-val.tfrecord-*"))
    assert RLDSSource.detect(str(shard))
    ingest(shard, tmp_path / "one.kdb")
    with pytest.raises(ConversionError, match="is a shard of split 'val', not 'train'"):
        ingest(shard, tmp_path / "x.kdb", split="train")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("hello")
    assert not RLDSSource.detect(str(tmp_path / "other"))
    assert not RLDSSource.detect(str(tmp_path / "other" / "a.txt"))


def test_a_tfds_data_dir_with_one_dataset_ingests_and_with_several_names_them(
    tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    data_dir = tmp_path / "tensorflow_datasets"
    write_episode_layout(data_dir / "toy_dataset" / "1.0.0", episodes)
    assert RLDSSource.detect(str(data_dir)) and source_class("auto", str(data_dir)) is RLDSSource
    ingest(data_dir, tmp_path / "o.kdb", format="auto")
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert len(db) == 5
        check_episode(db, 4, episodes["train"][4])
    write_episode_layout(data_dir / "other_dataset" / "0.1.0", episodes)
    with pytest.raises(
        ConversionError, match=r"several TFDS dataset versions \(other_dataset/0\.1\.0, toy_dataset/1\.0\.0\)"
    ):
        ingest(data_dir, tmp_path / "x.kdb")
    assert not (tmp_path / "x.kdb").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"in a TFDS version folder \(NAME/VERSION\) below it"):
        ingest(tmp_path / "empty", tmp_path / "y.kdb", format="rlds")


def test_compressed_shard_is_named(tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.tfrecord.gz").write_bytes(
        gzip.compress(w.record(w.episode_example(episodes["train"][0])))
    )
    with pytest.raises(ConversionError, match=r"x\.tfrecord\.gz: record 0: the shard is GZIP-compressed"):
        ingest(tmp_path / "d", tmp_path / "o.kdb")


def test_missing_shard_is_an_error(toy: Path, tmp_path: Path) -> None:
    (toy / "toy_dataset-train.tfrecord-00001-of-00002").unlink()
    with pytest.raises(
        ConversionError, match=r"split 'train' lists 2 shards but 1 is missing: .*00001-of-00002"
    ):
        ingest(toy, tmp_path / "o.kdb")


def test_a_file_of_another_format_is_named_as_no_tfrecord(
    tmp_path: Path, make_kdb: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    h5 = tiny_robomimic_hdf5(tmp_path / "robo.hdf5")
    out = tmp_path / "e.kdb"
    assert main(["ingest", str(h5), "-o", str(out), "--format", "rlds"]) == 1
    assert capsys.readouterr().err == (
        f"error: {h5}: not a TFRecord file (an RLDS shard): its first bytes are no TFRecord record header; "
        "it is an HDF5 file: pass --format hdf5, or leave --format out to detect it\n"
    )
    assert not out.exists()
    kdb, _ = make_kdb(1)
    with pytest.raises(ConversionError, match=rf"^{re.escape(str(kdb))}: not a TFRecord file .*; this is "
                                              r"already a kinodb \.kdb file .*kino merge"):  # fmt: skip
        RLDSSource(str(kdb), SourceOptions())
    logs = tmp_path / "logs"  # a folder that another source reads
    logs.mkdir()
    (logs / "run.ndjson").write_text('{"step_id": 0, "output": [1.0]}\n')
    with pytest.raises(ConversionError, match=r"^.*logs: not an RLDS dataset: no features\.json.*; it looks "
                                              r"like kinfer-ndjson data: pass format='kinfer-ndjson'"):  # fmt: skip
        RLDSSource(str(logs), SourceOptions())


def test_a_single_shard_without_a_readable_record_is_named_itself(
    toy: Path, tmp_path: Path, episodes: dict[str, list[Episode]]
) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shard = alone / "x.tfrecord"
    w.write_shard(shard, [w.episode_example(episodes["train"][0])])
    _flip(shard, 9)  # the length CRC of the only record
    with pytest.raises(ConversionError) as err:
        ingest(shard, tmp_path / "o.kdb", format="rlds")
    message = str(err.value)
    assert message.startswith(f"{shard}: no readable record (") and "length CRC mismatch" in message
    assert "split" not in message  # one shard has no split to name


# -- damaged shards -----------------------------------------------------------------------

SHARD0 = "toy_dataset-train.tfrecord-00000-of-00002"


def _offsets(path: Path) -> list[int]:
    out, pos = [], 0
    for data in w.read_records(path):
        out.append(pos)
        pos += 16 + len(data)
    return out


def _flip(path: Path, at: int) -> None:
    buf = bytearray(path.read_bytes())
    buf[at] ^= 0x40
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda off: off[1] + 12 + 40, r"record 1: data CRC mismatch"),
        (lambda off: off[1] + 1, r"record 1: length CRC mismatch at byte \d+ .*resumed at byte"),
        (lambda off: off[1] + 9, r"record 1: length CRC mismatch"),
    ],
    ids=["data", "length", "length-crc"],
)
def test_damaged_record_raises_or_is_skipped(
    toy: Path,
    tmp_path: Path,
    episodes: dict[str, list[Episode]],
    where: Callable[[list[int]], int],
    message: str,
) -> None:
    shard = toy / SHARD0
    _flip(shard, where(_offsets(shard)))
    out = tmp_path / "o.kdb"
    with pytest.raises(ConversionError, match=rf"{SHARD0}: {message}"):
        ingest(toy, out)
    assert not out.exists()
    report = ingest(toy, out, on_error="skip")
    assert [k for k, _ in report.skipped] == [f"{SHARD0}:1"]
    assert "CRC mismatch" in report.skipped[0][1]
    with kinodb.open(out) as db:
        assert len(db) == 4  # the records after the damaged one are still read
        for i, j in enumerate([0, 2, 3, 4]):
            check_episode(db, i, episodes["train"][j])
        assert db.metadata()["ingest"]["skipped"][0]["episode"] == f"{SHARD0}:1"


def test_truncated_shard_raises_or_is_skipped(
    toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = toy / SHARD0
    off = _offsets(shard)
    shard.write_bytes(shard.read_bytes()[: off[1] + 100])  # cut inside record 1
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(toy), "-o", str(out), "-q"]) == 1
    assert f"{SHARD0}: record 1: truncated" in capsys.readouterr().err
    assert not out.exists()
    report = ingest(toy, out, on_error="skip")
    assert [k for k, _ in report.skipped] == [f"{SHARD0}:1", f"{SHARD0}:2"]
    assert "truncated" in report.skipped[0][1] and "missing" in report.skipped[1][1]
    assert report.episodes == 3
    shard.write_bytes(shard.read_bytes()[: off[1]])  # cut at a record boundary: dataset_info.json tells
    with pytest.raises(ConversionError, match=rf"{SHARD0}: record 1: missing: the shard holds 1 records"):
        ingest(toy, tmp_path / "p.kdb")


def test_malformed_example_names_shard_and_record(tmp_path: Path, episodes: dict[str, list[Episode]]) -> None:
    good = w.episode_example(episodes["train"][0])
    root = w.write_tfds(tmp_path / "d", "m", {"train": [[good, b"\x0a\x05\x0a"]]}, FEATURES)
    with pytest.raises(
        ConversionError, match=r"m-train\.tfrecord-00000-of-00001: record 1: not a valid tf\.train\.Example"
    ):
        ingest(root, tmp_path / "o.kdb")


# -- the real Bridge sample ---------------------------------------------------------------


@needs_bridge
@pytest.mark.integration
def test_bridge_sample_ingests_exactly(tmp_path: Path) -> None:
    shard = BRIDGE / "bridge_dataset-train.tfrecord-00000-of-00001"
    want = [w.decode_example(r) for r in w.read_records(shard)]
    out = tmp_path / "bridge.kdb"
    assert main(["ingest", str(BRIDGE), "-o", str(out), "--format", "auto", "-q"]) == 0
    ingest(BRIDGE, tmp_path / "api.kdb", format="rlds")
    for path in (out, tmp_path / "api.kdb"):
        with kinodb.open(path) as db:
            assert len(db) == 25 and db.num_frames() == 250
            assert set(db.schema()["cameras"]) == {"image_0", "image_1", "image_2", "image_3"}
            for i, ex in enumerate(want):
                got = db.read_episode_actions_only(i)
                np.testing.assert_array_equal(
                    got["actions"], np.asarray(ex["steps/action"], np.float32).reshape(10, 7)
                )
                np.testing.assert_array_equal(
                    got["states"], np.asarray(ex["steps/observation/state"], np.float32).reshape(10, 7)
                )
                np.testing.assert_array_equal(
                    got["language_embedding"].reshape(-1),
                    np.asarray(ex["steps/language_embedding"], np.float32),
                )
                np.testing.assert_array_equal(got["discount"], np.asarray(ex["steps/discount"], np.float32))
                meta = got["meta"]
                assert meta["task"] == ex["steps/language_instruction"][0].decode()
                assert meta["file_path"] == ex["episode_metadata/file_path"][0].decode()
                assert meta["episode_metadata.episode_id"] == ex["episode_metadata/episode_id"][0]
                assert meta["fps"] == 5.0 and meta["embodiment"] == "widowx"
                assert meta["success"] is None  # the debug episodes are cut at 10 steps (no is_last)
                for cam in range(4):
                    frames = ex[f"steps/observation/image_{cam}"]
                    assert [db.read_image_bytes(i, f"image_{cam}", t) for t in range(10)] == frames


def _sequence(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "pythonClassName": w._PY + "sequence_feature.Sequence",
        "sequence": {"feature": node, "length": "-1"},
    }


def _png16(rng: np.random.Generator, T: int) -> list[bytes]:
    out = []
    for _ in range(T):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 65535, (16, 12), dtype=np.uint16)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def test_lists_stay_lists_and_what_a_kdb_cannot_hold_is_left_out_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As TFDS writes them: Sequence(Text) and Sequence(Scalar) episode fields, a
    # variable-length tensor, a ragged per-step list (flat values + row lengths) and a
    # 16-bit depth image.
    features = {**FEATURES}
    steps = dict(features["steps"]["sequence"]["feature"]["featuresDict"]["features"])
    obs = dict(steps["observation"]["featuresDict"]["features"])
    obs["objects"] = _sequence(w.tensor([], "float32"))
    depth = w.image([16, 12, 1], "png")
    depth["image"]["dtype"] = "uint16"
    obs["depth"] = depth
    steps["observation"] = w.features_dict(obs)
    features["steps"] = w.dataset(steps)
    features["episode_metadata"] = w.features_dict({
        "file_path": w.text(), "episode_id": w.tensor([], "int32"), "tags": _sequence(w.text()),
        "scores": _sequence(w.tensor([], "float32")), "vec": w.tensor([-1], "int64"),
    })  # fmt: skip
    rng = np.random.default_rng(3)
    eps = []
    for i, T in enumerate([3, 4, 2]):
        ep = make_episode(rng, i, T)
        lengths = rng.integers(0, 3, T)
        ep["steps/observation/objects/ragged_flat_values"] = rng.normal(size=int(lengths.sum())).astype(
            np.float32
        )
        ep["steps/observation/objects/ragged_row_lengths_0"] = lengths.astype(np.int64)
        ep["steps/observation/depth"] = _png16(rng, T)
        ep["episode_metadata/tags"] = [f"tag{k}".encode() for k in range(i)]  # none, one, two
        ep["episode_metadata/scores"] = np.arange(i, dtype=np.float32) / 2
        ep["episode_metadata/vec"] = np.arange(i, dtype=np.int64)
        eps.append(ep)
    root = w.write_tfds(
        tmp_path / "ds" / "1.0.0", "ds", {"train": [[w.episode_example(e) for e in eps]]}, features
    )
    out = tmp_path / "ds.kdb"
    with caplog.at_level("WARNING"):
        ingest(root, out, format="rlds", verify=True)
    assert "steps/observation/objects is left out" in caplog.text and "uint16 image" in caplog.text
    assert caplog.text.count("steps/observation/depth is left out") == 1  # once, not again by verify
    with kinodb.open(out) as db:
        left = db.metadata()["rlds"]["left_out"]
        assert (
            set(left) == {"steps/observation/objects", "steps/observation/depth"}
            and "ragged" in left["steps/observation/objects"]
        )
        assert set(db.schema()["cameras"]) == {"image", "wrist_image"}
        for i in range(3):
            meta = db.read_meta(i)
            assert meta["tags"] == [f"tag{k}" for k in range(i)]  # [], ['tag0'], ['tag0', 'tag1']
            assert meta["scores"] == [k / 2 for k in range(i)]
            assert meta["vec"] == list(range(i))
            np.testing.assert_array_equal(db.read_episode(i)["actions"], eps[i]["steps/action"])


def test_an_observation_that_is_one_tensor_is_the_state(tmp_path: Path) -> None:
    features = {**FEATURES}
    steps = dict(features["steps"]["sequence"]["feature"]["featuresDict"]["features"])
    steps["observation"] = w.tensor([5], "float32")
    features["steps"] = w.dataset(steps)
    rng = np.random.default_rng(4)
    eps = []
    for i, T in enumerate([3, 4]):
        ep = make_episode(rng, i, T)
        for cam in ("image", "wrist_image"):
            del ep[f"steps/observation/{cam}"]
        ep["steps/observation"] = ep.pop("steps/observation/state")
        eps.append(ep)
    root = w.write_tfds(
        tmp_path / "flat" / "1.0.0", "flat", {"train": [[w.episode_example(e) for e in eps]]}, features
    )
    out = tmp_path / "flat.kdb"
    ingest(root, out, format="rlds")
    with kinodb.open(out) as db:
        for i, ep in enumerate(eps):
            np.testing.assert_array_equal(db.read_episode(i)["states"], ep["steps/observation"])


def test_episode_level_images_and_lists_of_lists_are_left_out_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As TFDS writes them: an Image in episode_metadata is one bytes value; a
    # Sequence(Sequence(Text)) there has sequence rank 2, so it is stored ragged.
    meta = dict(FEATURES["episode_metadata"]["featuresDict"]["features"])
    meta["goal_image"] = w.image([16, 12, 3], "png")
    meta["objects"] = _sequence(_sequence(w.text()))
    features = {**FEATURES, "episode_metadata": w.features_dict(meta)}
    rng = np.random.default_rng(11)
    eps = []
    for i, T in enumerate([3, 4]):
        ep = make_episode(rng, i, T)
        ep["episode_metadata/goal_image"] = _frames(rng, 1, "PNG")
        ep["episode_metadata/objects/ragged_flat_values"] = [b"cup", b"bowl", b"plate"][: i + 2]
        ep["episode_metadata/objects/ragged_row_lengths_0"] = np.array([1, i + 1], np.int64)
        eps.append(ep)
    episode_root = w.write_tfds(
        tmp_path / "ep" / "ds" / "1.0.0", "ds", {"train": [[w.episode_example(e) for e in eps]]}, features
    )
    step_features = {**FEATURES["steps"]["sequence"]["feature"]["featuresDict"]["features"],
                     "episode_metadata": features["episode_metadata"]}  # fmt: skip
    records = [r for e in eps for r in w.step_examples(e, len(e["steps/action"]))]
    step_root = w.write_tfds(tmp_path / "step" / "ds" / "1.0.0", "ds", {"train": [records]}, step_features)
    for root in (episode_root, step_root):
        out = root.parent / "out.kdb"
        with caplog.at_level("WARNING"):
            ingest(root, out, format="rlds", verify=True)  # formerly: every episode failed
        with kinodb.open(out) as db:
            left = db.metadata()["rlds"]["left_out"]
            assert set(left) == {"episode_metadata/goal_image", "episode_metadata/objects"}
            assert "an image of the whole episode" in left["episode_metadata/goal_image"]
            assert "a list of lists (TFDS stores it ragged" in left["episode_metadata/objects"]
            assert set(db.metadata()["rlds"]["roles"]["fields"]) == {
                "language_instruction",
                "file_path",
                "episode_metadata.episode_id",
            }
            for i, ep in enumerate(eps):
                check_episode(db, i, ep)
    assert "episode_metadata/goal_image is left out: an image of the whole episode" in caplog.text
    bare = tmp_path / "bare"  # no features.json: the image is known by its bytes
    bare.mkdir()
    for ep in eps:
        del (
            ep["episode_metadata/objects/ragged_flat_values"],
            ep["episode_metadata/objects/ragged_row_lengths_0"],
        )
    w.write_shard(bare / "x.tfrecord", [w.episode_example(e) for e in eps])
    ingest(bare, tmp_path / "bare.kdb", verify=True)
    with kinodb.open(tmp_path / "bare.kdb") as db:
        assert list(db.metadata()["rlds"]["left_out"]) == ["episode_metadata/goal_image"]
        assert "goal_image" not in db.read_meta(0)


def _nested_observation_steps() -> dict[str, Any]:
    """The toy steps plus a language embedding and a nested camera among the observations."""
    steps = dict(FEATURES["steps"]["sequence"]["feature"]["featuresDict"]["features"])
    obs = dict(steps["observation"]["featuresDict"]["features"])
    obs["natural_language_embedding"] = w.tensor([4], "float32")
    obs["cameras"] = w.features_dict({"front": w.image([16, 12, 3], "jpeg")})
    steps["observation"] = w.features_dict(obs)
    return steps


def _nested_observation_episode(rng: np.random.Generator, i: int, T: int) -> Episode:
    ep = make_episode(rng, i, T)
    ep["steps/observation/natural_language_embedding"] = rng.normal(size=(T, 4)).astype(np.float32)
    ep["steps/observation/cameras/front"] = _frames(rng, T, "JPEG")
    return ep


def test_nested_feature_names_are_written_with_dots(tmp_path: Path) -> None:
    # RT-1 keeps a language embedding among the observations; DROID keeps action_dict/*.
    steps = _nested_observation_steps()
    steps["action_dict"] = w.features_dict(
        {"joint_velocity": w.tensor([7], "float32"), "gripper": w.tensor([], "float32")}
    )
    steps["timestamps"] = w.tensor([], "float32")  # "timestamps" is a name kinodb keeps for its own
    features = {**FEATURES, "steps": w.dataset(steps)}
    rng = np.random.default_rng(12)
    eps = []
    for i, T in enumerate([3, 5]):
        ep = _nested_observation_episode(rng, i, T)
        ep["steps/action_dict/joint_velocity"] = rng.normal(size=(T, 7)).astype(np.float32)
        ep["steps/action_dict/gripper"] = rng.normal(size=T).astype(np.float32)
        ep["steps/timestamps"] = np.arange(T, dtype=np.float32) / 5
        eps.append(ep)
    root = w.write_tfds(
        tmp_path / "ds" / "1.0.0", "ds", {"train": [[w.episode_example(e) for e in eps]]}, features
    )
    out = tmp_path / "ds.kdb"
    report = ingest(root, out, format="rlds", verify=True)
    names = {
        "action_dict.joint_velocity": "steps/action_dict/joint_velocity",
        "action_dict.gripper": "steps/action_dict/gripper",
        "observation.natural_language_embedding": "steps/observation/natural_language_embedding",
        "steps.timestamps": "steps/timestamps",
        "discount": "steps/discount",
        "language_embedding": "steps/language_embedding",
    }
    assert report.verification is not None and set(report.verification.arrays) == {
        "actions", "states", "rewards", "is_terminal", *names
    }  # fmt: skip
    with kinodb.open(out) as db:
        roles = db.metadata()["rlds"]["roles"]
        assert roles["arrays"] == names  # each name back to its source key
        assert roles["cameras"]["cameras.front"] == "steps/observation/cameras/front"
        assert set(db.schema()["arrays"]) == set(names)
        assert set(db.schema()["cameras"]) == {"image", "wrist_image", "cameras.front"}
        for i, ep in enumerate(eps):
            got = db.read_episode_actions_only(i)
            for name, key in names.items():
                np.testing.assert_array_equal(got[name], ep[key], err_msg=name)
            frames = ep["steps/observation/cameras/front"]
            assert [db.read_image_bytes(i, "cameras.front", t) for t in range(len(frames))] == frames
    from kinodb.export import export

    export(out, tmp_path / "lerobot", format="lerobot", images_as="image")  # refused '/' in names before
    export(out, tmp_path / "robomimic.hdf5", format="hdf5")
    info = json.loads((tmp_path / "lerobot" / "meta" / "info.json").read_text())
    assert {"observation.action_dict.joint_velocity", "observation.images.cameras.front"} <= set(
        info["features"]
    )
    assert (tmp_path / "robomimic.hdf5").is_file()


def test_files_ingested_with_slashed_names_still_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Earlier versions kept TFDS's '/' in camera and array names; verify matches them to
    # today's dotted names through the source keys that both record in rlds.roles.
    from kinodb.ingest import _rlds_features, verify

    steps = _nested_observation_steps()
    rng = np.random.default_rng(13)
    eps = []
    for i, T in enumerate([3, 4]):
        ep = _nested_observation_episode(rng, i, T)
        eps.append(ep)
    root = w.write_tfds(tmp_path / "ds" / "1.0.0", "ds", {"train": [[w.episode_example(e) for e in eps]]},
                        {**FEATURES, "steps": w.dataset(steps)})  # fmt: skip
    out = tmp_path / "old.kdb"
    with monkeypatch.context() as m:  # the earlier naming
        m.setattr(_rlds_features, "_section_name", lambda key, short, taken: short)
        ingest(root, out, format="rlds")
    with kinodb.open(out) as db:
        assert {"observation/natural_language_embedding"} <= set(db.schema()["arrays"])
        assert "cameras/front" in db.schema()["cameras"]
    report = verify(root, out)
    assert report.ok, report.problems
    assert report.arrays["observation/natural_language_embedding"] == 0
    assert report.cameras["cameras/front"].byte_identical == 7


def _encoded(rng: np.random.Generator, mode: str, fmt: str, size: tuple[int, int] = (16, 12)) -> bytes:
    """One frame in Pillow ``mode`` (``L``, ``RGB``, ``RGBA``) encoded as ``fmt``."""
    channels = len(mode)
    pixels = rng.integers(0, 255, (*size, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buf, format=fmt)
    return buf.getvalue()


def test_greyscale_and_rgba_frames_read_back_with_the_declared_channels(tmp_path: Path) -> None:
    # A TFDS Image feature keeps the bytes of a file it is given; tfds.load then decodes
    # every frame with channels=shape[-1]: grey repeated to RGB, alpha dropped.
    rng = np.random.default_rng(13)
    eps = [make_episode(rng, i, 4) for i in range(2)]
    eps[0]["steps/observation/image"] = [_encoded(rng, "L", "JPEG") for _ in range(4)]  # every frame grey
    eps[1]["steps/observation/image"][2] = _encoded(rng, "L", "JPEG")
    eps[1]["steps/observation/wrist_image"][1] = _encoded(rng, "RGBA", "PNG")
    eps[1]["steps/observation/wrist_image"][3] = _encoded(rng, "L", "PNG")
    root = w.write_tfds(
        tmp_path / "ds" / "1.0.0", "ds", {"train": [[w.episode_example(e) for e in eps]]}, FEATURES
    )
    out = tmp_path / "ds.kdb"
    report = ingest(root, out, format="rlds", verify=True)  # formerly: both episodes refused
    assert report.episodes == 2 and report.verification is not None
    assert report.verification.cameras["image"].byte_identical == 8
    with kinodb.open(out) as db:
        assert {c["channels"] for c in db.schema()["cameras"].values()} == {3}
        for i, ep in enumerate(eps):
            frames = db.read_episode(i)["images"]
            for cam in ("image", "wrist_image"):
                blobs = ep[f"steps/observation/{cam}"]
                assert [db.read_image_bytes(i, cam, t) for t in range(4)] == blobs  # bytes unchanged
                want = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
                np.testing.assert_array_equal(frames[cam], want)
        grey = db.read_episode(1)["images"]["image"][2]
        assert (grey == grey[..., :1]).all()
        rgba = np.asarray(Image.open(io.BytesIO(eps[1]["steps/observation/wrist_image"][1])))
        np.testing.assert_array_equal(db.read_episode(1)["images"]["wrist_image"][1], rgba[..., :3])
    ingest(root, tmp_path / "flip.kdb", format="rlds", flip_images=True, image_codec="png")
    with kinodb.open(tmp_path / "flip.kdb") as db, kinodb.open(out) as ref:
        np.testing.assert_array_equal(
            db.read_episode(1)["images"]["image"], ref.read_episode(1)["images"]["image"][:, ::-1, ::-1]
        )
    eps[0]["steps/observation/image"][0] = _encoded(rng, "RGB", "JPEG", (8, 8))  # another size: refused
    root = w.write_tfds(tmp_path / "bad" / "1.0.0", "ds", {"train": [[w.episode_example(eps[0])]]}, FEATURES)
    with pytest.raises(
        ConversionError,
        match=r"step 0 is \(8, 8, 3\) \(H, W, C\); expected \(16, 12, 3\); features\.json declares",
    ):
        ingest(root, tmp_path / "bad.kdb", format="rlds")


def test_an_instruction_that_changes_mid_episode_is_per_frame(tmp_path: Path) -> None:
    # kinodb's per-frame task convention (extra field `tasks`, array `task_index`), as the
    # LeRobot converter writes it: frame windows and the LeRobot export read each frame's.
    rng = np.random.default_rng(14)
    ep = make_episode(rng, 0, 6)
    ep["steps/language_instruction"] = (
        [b"wipe the table"] * 2 + [b"put the sponge down"] * 3 + [b"wipe the table"]
    )
    root = w.write_tfds(tmp_path / "d" / "1.0.0", "d", {"train": [[w.episode_example(ep)]]}, FEATURES)
    out = tmp_path / "d.kdb"
    report = ingest(root, out, format="rlds", verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        meta = db.read_meta(0)
        assert meta["task"] == "wipe the table" and meta["tasks"] == ["wipe the table", "put the sponge down"]
        np.testing.assert_array_equal(db.read_array(0, "task_index"), [0, 0, 1, 1, 1, 0])
    from kinodb.windows import FrameWindows

    fw = FrameWindows(out, obs_horizon=1, action_horizon=1)
    texts = [t.decode() for t in ep["steps/language_instruction"]]
    assert fw.tasks(np.arange(6)) == texts
    from kinodb.export import export

    export(out, tmp_path / "lr", format="lerobot", images_as="image")
    import pyarrow.parquet as pq

    tasks = pq.read_table(tmp_path / "lr" / "meta" / "tasks.parquet").to_pandas()
    by_index = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"], strict=True)}
    data = pq.read_table(tmp_path / "lr" / "data" / "chunk-000" / "file-000.parquet")
    assert [by_index[i] for i in data.column("task_index").to_pylist()] == texts


def test_a_step_text_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    # Each distinct text of a step feature is decoded once; a bad one is still named with
    # its feature and the byte where the decoding failed, and nothing is written.
    rng = np.random.default_rng(15)
    ep = make_episode(rng, 0, 5)
    ep["steps/language_instruction"] = [b"wipe"] * 3 + [b"wi\xffpe"] * 2
    root = w.write_tfds(tmp_path / "d" / "1.0.0", "d", {"train": [[w.episode_example(ep)]]}, FEATURES)
    out = tmp_path / "d.kdb"
    with pytest.raises(
        ConversionError, match=r"steps/language_instruction is not UTF-8 text \(.* at byte 2\)"
    ):
        ingest(root, out, format="rlds")
    assert not out.exists()


def test_files_of_earlier_versions_with_changing_instructions_still_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Earlier versions kept an instruction that changes within an episode as one text per
    # step in the extra field, without tasks/task_index.
    from kinodb.ingest import verify
    from kinodb.ingest.rlds import RLDSSource

    rng = np.random.default_rng(16)
    ep = make_episode(rng, 0, 4)
    ep["steps/language_instruction"] = [b"pick", b"pick", b"place", b"place"]
    root = w.write_tfds(tmp_path / "d" / "1.0.0", "d", {"train": [[w.episode_example(ep)]]}, FEATURES)
    read = RLDSSource.read

    def earlier(self: RLDSSource, key: str) -> dict:
        args = read(self, key)
        tasks, index = args["extra"].pop("tasks"), args["extra_arrays"].pop("task_index")
        args["extra"]["language_instruction"] = [tasks[k] for k in index]
        return args

    out = tmp_path / "old.kdb"
    with monkeypatch.context() as m:
        m.setattr(RLDSSource, "read", earlier)
        ingest(root, out, format="rlds")
    with kinodb.open(out) as db:
        assert db.read_meta(0)["language_instruction"] == ["pick", "pick", "place", "place"]
    report = verify(root, out)
    assert report.ok, report.problems


def test_action_key_names_a_dict_of_action_tensors(tmp_path: Path) -> None:
    # DROID keeps its actions in steps/action_dict/* with no steps/action.
    steps = dict(FEATURES["steps"]["sequence"]["feature"]["featuresDict"]["features"])
    del steps["action"]
    steps["action_dict"] = w.features_dict(
        {"cartesian_velocity": w.tensor([6], "float32"), "gripper_velocity": w.tensor([1], "float32")}
    )
    rng = np.random.default_rng(15)
    eps = []
    for i, T in enumerate([3, 4]):
        ep = make_episode(rng, i, T)
        del ep["steps/action"]
        ep["steps/action_dict/cartesian_velocity"] = rng.normal(size=(T, 6)).astype(np.float32)
        ep["steps/action_dict/gripper_velocity"] = rng.normal(size=(T, 1)).astype(np.float32)
        eps.append(ep)
    root = w.write_tfds(tmp_path / "droid" / "1.0.0", "droid", {"train": [[w.episode_example(e) for e in eps]]},
                        {**FEATURES, "steps": w.dataset(steps)})  # fmt: skip
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "no.kdb", format="rlds")
    text = str(err.value)
    assert (
        str(root) in text and "action_dict/cartesian_velocity" in text and "action_key='action_dict'" in text
    )
    out = tmp_path / "droid.kdb"
    report = ingest(root, out, format="rlds", action_key="action_dict", verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        for i, ep in enumerate(eps):
            want = np.concatenate(
                [ep["steps/action_dict/cartesian_velocity"], ep["steps/action_dict/gripper_velocity"]], 1
            )
            np.testing.assert_array_equal(db.read_array(i, "actions"), want)
