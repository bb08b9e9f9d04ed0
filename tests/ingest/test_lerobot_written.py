"""Ingest of a LeRobot v3.0 dataset written by LeRobot itself (lerobot 0.4.4).

The fixture, ``tests/data/lerobot_written/``, is what ``LeRobotDataset.create`` /
``add_frame`` / ``save_episode`` / ``finalize`` leave on disk (``tests/data/
make_lerobot_written.py`` writes it): AV1 cameras whose episodes share mp4 files and
roll over into more files, differently per camera, an ``image`` feature stored as PNG
inside data parquet files that roll over too, two tasks, and an extra float feature.
``expected.npz`` holds what ``LeRobotDataset`` itself returned for every frame.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import kinodb
from kinodb.ingest import ingest, verify

pytest.importorskip("av")

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "lerobot_written"
CAMERAS = ("top", "side", "wrist")
H, W = 48, 64


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lerobot_written") / "koch.kdb"
    report = ingest(FIXTURE, out, image_codec="png")
    assert report.episodes == 4
    return out


def _episodes(db: kinodb.Database) -> list[dict[str, Any]]:
    return [db.read_episode(i) for i in range(len(db))]


def _source_pattern(camera: str, ep: int, t: int) -> np.ndarray:
    """What the fixture's script gave LeRobot for this frame (see make_lerobot_written.py)."""
    img = np.zeros((H, W, 3), np.uint8)
    if camera == "top":
        img[..., 1] = 40 * ep
        img[:, (3 * t) % W] = 255
    elif camera == "side":
        img[..., 2] = 255 - 40 * ep
        img[(2 * t) % H] = 200
    else:
        y, x = np.mgrid[0:H, 0:W]
        img = np.stack([(x * 4 + t) % 256, (y * 5 + 7 * ep) % 256, (x + y + t) % 256], axis=-1)
    return img.astype(np.uint8)


def test_the_fixture_is_what_lerobot_writes() -> None:
    """The layout the rest relies on: v3.0, shared and rolled-over files, PNG in parquet."""
    info = json.loads((FIXTURE / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["features"]["observation.images.wrist"]["dtype"] == "image"
    episodes = pq.read_table(FIXTURE / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    top = episodes["videos/observation.images.top/file_index"]
    side = episodes["videos/observation.images.side/file_index"]
    assert len(set(top)) < len(top) and len(set(side)) > 1 and top != side
    assert len(set(episodes["data/file_index"])) > 1


def test_arrays_labels_and_order_match_lerobot(ingested: Path, expected: dict[str, np.ndarray]) -> None:
    with kinodb.open(ingested) as db:
        eps = _episodes(db)
        assert db.num_frames() == len(expected["frame_index"]) == 94
        actions = np.concatenate([e["actions"] for e in eps])
        states = np.concatenate([e["states"] for e in eps])
        env = np.concatenate([e["observation.environment_state"] for e in eps])
        assert actions.dtype == states.dtype == env.dtype == np.float32
        np.testing.assert_array_equal(actions, expected["action"])
        np.testing.assert_array_equal(states, expected["observation.state"])
        np.testing.assert_array_equal(env, expected["observation.environment_state"])
        ep_index = np.concatenate([np.full(e["meta"]["num_frames"], i) for i, e in enumerate(eps)])
        frame_index = np.concatenate([np.arange(e["meta"]["num_frames"]) for e in eps])
        np.testing.assert_array_equal(ep_index, expected["episode_index"])
        np.testing.assert_array_equal(frame_index, expected["frame_index"])
        tasks = np.concatenate([[e["meta"]["task"]] * e["meta"]["num_frames"] for e in eps])
        assert tasks.tolist() == expected["task"].tolist()
        assert {e["meta"]["embodiment"] for e in eps} == {"koch"}
        assert {e["meta"]["fps"] for e in eps} == {30.0}
        names = db.schema()["states"]["names"]
        assert names[0] == "shoulder_pan" and names[-1] == "gripper"


def test_frames_are_the_ones_lerobot_decodes(ingested: Path, expected: dict[str, np.ndarray]) -> None:
    """Every frame of every camera: right episode, right frame, right pixels."""
    import av

    same_decoder = str(expected["av_version"]) == av.__version__ and tuple(
        expected["swscale_version"]
    ) == tuple(av.library_versions["libswscale"])
    with kinodb.open(ingested) as db:
        g = 0
        for i in range(len(db)):
            images = db.read_episode(i)["images"]
            for t in range(db.read_meta(i)["num_frames"]):
                for c in CAMERAS:
                    frame = images[c][t]
                    assert frame.shape == (H, W, 3)
                    if c == "wrist":  # PNG in the parquet: lossless, as given to LeRobot
                        np.testing.assert_array_equal(frame, _source_pattern(c, i, t))
                    else:  # AV1: near what was given, and nearer to it than to the neighbours
                        err = [
                            np.abs(frame.astype(int) - _source_pattern(c, i, u)).mean()
                            for u in (t - 1, t, t + 1)
                        ]
                        assert err[1] < 6 and err[1] < min(err[0], err[2]), (c, i, t, err)
                    if c == "wrist" or same_decoder:
                        digest = np.frombuffer(hashlib.sha256(frame.tobytes()).digest(), np.uint8)
                        assert np.array_equal(digest, expected[c][g]), f"camera {c}, episode {i}, frame {t}"
                g += 1
        assert g == len(expected["frame_index"])


def test_png_frames_pass_through_byte_for_byte(ingested: Path) -> None:
    with kinodb.open(ingested) as db:
        stored = [
            db.read_image_bytes(i, "wrist", t)
            for i in range(len(db))
            for t in range(db.read_meta(i)["num_frames"])
        ]
    rows = []
    for path in sorted((FIXTURE / "data").rglob("*.parquet")):
        rows += pq.read_table(path, columns=["observation.images.wrist"]).column(0).to_pylist()
    assert stored == [r["bytes"] for r in rows]


def test_verify_passes(ingested: Path) -> None:
    report = verify(FIXTURE, ingested)
    assert report.ok, report
