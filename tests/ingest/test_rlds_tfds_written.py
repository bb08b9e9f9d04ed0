"""Ingest of RLDS datasets written by TensorFlow Datasets itself (tensorflow-datasets 4.9.10).

The fixtures, ``tests/data/tfds_written/``, are what TFDS's ``GeneratorBasedBuilder``
leaves on disk (``tests/data/make_tfds_written.py`` writes them): the RLDS builder
template's features in a ``train`` and a ``val`` split, and a variant with float64 and
float32 observation keys, float64 actions and rewards, a PNG camera and episode metadata.
``expected.npz`` holds what ``tfds.builder_from_directory(...).as_dataset()`` returned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.ingest import ingest, verify

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
