"""Ingest of RLDS datasets written by TensorFlow Datasets itself (tensorflow-datasets 4.9.10).

The fixtures, ``tests/data/tfds_written/``, are what TFDS's ``GeneratorBasedBuilder``
leaves on disk (``tests/data/make_tfds_written.py`` writes them): the RLDS builder
template's features in a ``train`` and a ``val`` split, a variant with float64 and
float32 observation keys, float64 actions and rewards, a PNG camera and episode metadata,
and one with tensors stored as bytes (``encoding='zlib'``, ``Encoding.BYTES``), episode
metadata of several dimensions and no ``is_terminal``. ``expected.npz`` holds what
``tfds.builder_from_directory(...).as_dataset()`` returned, and the episodes TFDS reads
for some split slices (``train[:80%]``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import _rlds_features, ingest, verify

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "tfds_written"
CASES = [  # dataset, split, cameras (name: format), the source keys of the states in order
    ("template_rlds", "train", {"image": "jpeg", "wrist_image": "jpeg"}, ["state"]),
    ("template_rlds", "val", {"image": "jpeg", "wrist_image": "jpeg"}, ["state"]),
    ("obs_keys", "train", {"agentview": "png"}, ["gripper", "joint_pos"]),
]


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def _digest(b: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(b).digest(), np.uint8)


def _episodes(expected: dict[str, np.ndarray], name: str, split: str) -> int:
    return len({k.split("/")[2] for k in expected if k.startswith(f"{name}/{split}/")})


@pytest.mark.parametrize(
    ("name", "split", "cameras", "state_keys"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_every_episode_is_what_tfds_reads(
    name: str, split: str, cameras: dict[str, str], state_keys: list[str],
    expected: dict[str, np.ndarray], tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / f"{name}-{split}.kdb"
    report = ingest(FIXTURE / name / "1.0.0", out, split=split)
    n = _episodes(expected, name, split)
    assert n > 0 and report.episodes == n
    with kinodb.open(out) as db:
        assert len(db) == n
        for e in range(n):
            want = {
                k.split("/", 3)[3]: v for k, v in expected.items() if k.startswith(f"{name}/{split}/{e}/")
            }
            ep = db.read_episode(e)
            meta = ep["meta"]
            # TFDS stores every float as float32 and casts float64 features back on read:
            # kinodb keeps the float32 the record holds, equal to TFDS's values exactly.
            for ours, theirs in (("actions", "action"), ("rewards", "reward"), ("discount", "discount")):
                assert ep[ours].dtype == np.float32
                np.testing.assert_array_equal(ep[ours].astype(want[theirs].dtype), want[theirs])
            states = np.concatenate(
                [want[f"observation/{k}"].reshape(len(ep["actions"]), -1) for k in state_keys], 1
            )
            np.testing.assert_array_equal(ep["states"].astype(states.dtype), states)
            if "language_embedding" in want:
                np.testing.assert_array_equal(ep["language_embedding"], want["language_embedding"])
            np.testing.assert_array_equal(ep["is_terminal"], want["is_terminal"])
            assert "is_terminal" not in db.metadata()["rlds"]  # the source's own flags
            assert meta["task"] == str(want["language_instruction"][0])
            assert meta["total_reward"] == pytest.approx(float(want["reward"].sum()))
            assert meta["file_path"] == str(want["episode_metadata/file_path"])
            if "episode_metadata/success" in want:  # the dataset's own flag, not the final reward
                assert meta["success"] is bool(want["episode_metadata/success"])
                assert meta["episode_metadata.episode_id"] == int(want["episode_metadata/episode_id"])
            else:
                assert meta["success"] is bool(want["reward"][-1] > 0)
            for cam, fmt in cameras.items():
                frames = [db.read_image_bytes(e, cam, t) for t in range(meta["num_frames"])]
                assert np.array_equal(np.stack([_digest(f) for f in frames]), want[f"{cam}/encoded"]), (
                    cam,
                    e,
                )
                if fmt == "png":
                    pixels = np.stack([_digest(np.ascontiguousarray(f).tobytes()) for f in ep["images"][cam]])
                    assert np.array_equal(pixels, want[f"{cam}/pixels"]), (cam, e)
        schema = db.schema()
        if len(state_keys) > 1:
            assert list(schema["states"]["components"]) == state_keys
    assert verify(FIXTURE / name / "1.0.0", out).ok


def test_float64_features_come_back_as_float64_when_asked(
    expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """``dtype="float64"`` gives what ``tfds.load`` gives for float64 features, same values."""
    out = tmp_path / "obs_keys64.kdb"
    ingest(FIXTURE / "obs_keys" / "1.0.0", out, dtype="float64")
    with kinodb.open(out) as db:
        actions = db.read_array(0, "actions")
        assert actions.dtype == np.float64
        np.testing.assert_array_equal(actions, expected["obs_keys/train/0/action"])


SHAPED = FIXTURE / "shaped_bytes" / "1.0.0"


def test_tensors_stored_as_bytes_and_shaped_episode_metadata_are_what_tfds_reads(
    expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Per-step tensors of ``encoding='zlib'`` (float64) and ``Encoding.BYTES`` (int16) decode
    to TFDS's arrays bit for bit, with their dtypes; episode metadata keeps TFDS's nesting:
    a (3, 3) tensor, a Sequence of (2,) tensors, a Sequence of dicts, a zlib (2, 3) tensor."""
    out = tmp_path / "shaped.kdb"
    report = ingest(SHAPED, out)
    n = _episodes(expected, "shaped_bytes", "train")
    assert n == 3 and report.episodes == n
    with kinodb.open(out) as db:
        for e in range(n):
            want = {
                k.split("/", 3)[3]: v for k, v in expected.items() if k.startswith(f"shaped_bytes/train/{e}/")
            }
            ep = db.read_episode(e)
            meta = ep["meta"]
            np.testing.assert_array_equal(ep["actions"], want["action"])
            np.testing.assert_array_equal(ep["states"], want["observation/state"])
            np.testing.assert_array_equal(ep["rewards"], want["reward"])
            for name, key in (("observation.depth", "observation/depth"), ("counts", "counts")):
                assert ep[name].dtype == want[key].dtype and ep[name].shape == want[key].shape, name
                assert ep[name].tobytes() == want[key].tobytes(), name
            for name in ("intrinsics", "waypoints", "objects/pos", "objects/name", "calibration"):
                assert meta[name.replace("/", ".")] == want[f"episode_metadata/{name}"].tolist(), name
            assert np.asarray(meta["waypoints"]).shape == want["episode_metadata/waypoints"].shape
    assert verify(SHAPED, out).ok


def test_without_is_terminal_the_last_step_is_terminal_and_the_metadata_says_so(
    expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "shaped.kdb"
    ingest(SHAPED, out)
    with kinodb.open(out) as db:
        rlds = db.metadata()["rlds"]
        assert rlds["is_terminal"] == "last_step" and "terminal" not in rlds["roles"]
        for e in range(len(db)):
            T = len(expected[f"shaped_bytes/train/{e}/is_last"])
            np.testing.assert_array_equal(db.read_array(e, "is_terminal"), np.arange(T) == T - 1)


def test_verify_fails_an_episode_field_stored_without_its_nesting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "flat.kdb"
    with monkeypatch.context() as m:  # store the episode metadata's flat values, as TFRecord holds them
        m.setattr(_rlds_features, "_shaped", lambda arr, spec, where: arr)
        ingest(SHAPED, out)
    with kinodb.open(out) as db:
        assert db.read_episode(0)["meta"]["intrinsics"] == list(range(9))  # flat
    report = verify(SHAPED, out)
    assert not report.ok
    assert report.mismatches.get("extra_fields") == 3


def _slices(expected: dict[str, np.ndarray]) -> list[tuple[str, list[int]]]:
    n = len({k.split("/")[2] for k in expected if k.startswith("slices/template_rlds/")})
    return [
        (
            str(expected[f"slices/template_rlds/{i}/split"]),
            expected[f"slices/template_rlds/{i}/episodes"].tolist(),
        )
        for i in range(n)
    ]


def test_a_tfds_split_slice_is_refused_with_the_episodes_tfds_reads_for_it(
    expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """``train[:80%]``, ``train[-3:]``, ``train[:3]+train[5:]``...: the advised ``episodes``
    are those TFDS reads for the slice (its rounding of percentages included), and
    ingesting them gives those episodes."""
    cases = _slices(expected)
    assert len(cases) >= 8
    for spec, episodes in cases:
        with pytest.raises(ConversionError) as info:
            ingest(FIXTURE / "template_rlds" / "1.0.0", tmp_path / "x.kdb", split=spec)
        message = str(info.value)
        assert f"split {spec!r} uses TFDS's slicing syntax" in message
        found = re.search(r"pass split='(\w+)', episodes='([\d,-]+)'$", message)
        assert found is not None, message
        split, selection = found.groups()
        assert split == spec.split("[")[0]
        out = tmp_path / f"slice{len(episodes)}.kdb"
        ingest(FIXTURE / "template_rlds" / "1.0.0", out, split=split, episodes=selection, overwrite=True)
        with kinodb.open(out) as db:
            paths = [db.read_episode(e)["meta"]["file_path"] for e in range(len(db))]
        assert paths == [
            str(expected[f"template_rlds/{split}/{e}/episode_metadata/file_path"]) for e in episodes
        ]


def test_the_command_line_advises_split_and_episodes_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(FIXTURE / "template_rlds" / "1.0.0")
    assert main(["ingest", root, "-o", str(tmp_path / "x.kdb"), "--split", "train[:80%]"]) == 1
    assert "pass --split train --episodes 0-5" in capsys.readouterr().err
    assert main(["ingest", root, "-o", str(tmp_path / "x.kdb"), "--split", "train+val"]) == 1
    err = capsys.readouterr().err
    assert (
        "ingest each split to a file of its own (--split train and --split val)" in err
        and "kino merge" in err
    )
    assert main(["ingest", root, "-o", str(tmp_path / "x.kdb"), "--split", "train[:100]"]) == 1
    err = capsys.readouterr().err
    assert "pick episodes with --episodes" in err and "split 'train' holds 7 episodes" in err


def test_array_record_datasets_say_how_to_get_tfrecord(tmp_path: Path) -> None:
    """TFDS's other file format (``file_format='array_record'``): refused, saying how to
    get TFRecord shards, with nothing written."""
    import json
    import shutil

    src = tmp_path / "obs_keys" / "1.0.0"
    shutil.copytree(FIXTURE / "obs_keys" / "1.0.0", src)
    info = json.loads((src / "dataset_info.json").read_text())
    info["fileFormat"] = "array_record"  # what TFDS writes for it, with .array_record-NNNNN shards
    (src / "dataset_info.json").write_text(json.dumps(info))
    for shard in src.glob("*.tfrecord-*"):
        shard.rename(shard.with_name(shard.name.replace(".tfrecord-", ".array_record-")))
    with pytest.raises(kinodb.errors.ConversionError) as err:
        ingest(src, tmp_path / "out.kdb")
    said = str(err.value)
    assert "file format 'array_record' is not supported; kinodb reads TFRecord shards" in said
    assert f"tfds convert_format --dataset_version_dir={src} --out_file_format=tfrecord" in said
    assert "download_and_prepare(file_format='tfrecord')" in said
    assert not (tmp_path / "out.kdb").exists()
