"""The RLDS export as TensorFlow Datasets reads it (tensorflow-datasets 4.9.10).

``tests/data/tfds_read_export/`` (written by ``tests/data/make_tfds_read_export.py``)
holds two small ``.kdb`` files, their RLDS exports, and in ``expected.npz`` what
``tfds.builder_from_directory(...).as_dataset("train")`` returned for them. These tests
check that today's export of those files is still byte for byte what TFDS read, that what
TFDS read is the files' data (dtypes, values, frames, per-step tasks, episode metadata),
and that ``kinodb.ingest`` gives the files back from those exports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import assert_same_episodes
from kinodb.export import export
from kinodb.ingest import ingest

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "tfds_read_export"
NAMES = ("raw", "jpeg")
EXTRA = {  # the feature TFDS read each extra array from
    "uid": "steps/uid", "contacts": "steps/contacts", "grasped": "steps/grasped", "sim_state": "steps/sim_state",
    "task_index": "steps/task_index", "observation.ee_vel": "steps/observation/ee_vel",
}  # fmt: skip


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", NAMES)
def test_the_export_is_still_what_tfds_read(tmp_path: Path, name: str) -> None:
    golden = FIXTURE / name / "1.0.0"
    out = tmp_path / name / "1.0.0"
    out.parent.mkdir()
    export(FIXTURE / f"{name}.kdb", out, format="rlds")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in golden.iterdir())
    assert json.loads((out / "features.json").read_text()) == json.loads(
        (golden / "features.json").read_text()
    )
    info, info_golden = (json.loads((d / "dataset_info.json").read_text()) for d in (out, golden))
    assert {**info, "description": ""} == {**info_golden, "description": ""}  # it names kinodb's version
    for shard in golden.glob("*.tfrecord-*"):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name
    layout = json.loads((out / "kinodb_export.json").read_text())["kinodb_export"]["layout"]
    assert layout == json.loads((golden / "kinodb_export.json").read_text())["kinodb_export"]["layout"]


@pytest.mark.parametrize("name", NAMES)
def test_what_tfds_read_is_the_files_data(expected: dict[str, np.ndarray], name: str) -> None:
    with kinodb.open(FIXTURE / f"{name}.kdb") as db:
        assert len({k.split("/")[1] for k in expected if k.startswith(name + "/")}) == len(db)
        for i in range(len(db)):
            got = {k.split("/", 2)[2]: v for k, v in expected.items() if k.startswith(f"{name}/{i}/")}
            ep, meta = db.read_episode(i), db.read_meta(i)
            T = len(ep["actions"])
            pairs = [("steps/action", ep["actions"]), ("steps/reward", ep["rewards"]),
                     ("steps/is_terminal", ep["is_terminal"]), ("steps/is_first", np.arange(T) == 0),
                     ("steps/is_last", np.arange(T) == T - 1)]  # fmt: skip
            if ep["states"].shape[1]:
                pairs.append(("steps/observation/state", ep["states"]))
            if "timestamps" in ep:
                pairs.append(("steps/timestamp", ep["timestamps"]))
            pairs += [(EXTRA[k], ep[k]) for k in EXTRA if k in ep]
            for key, want in pairs:
                assert got[key].dtype == want.dtype and np.array_equal(got[key], want), (i, key)
            tasks = meta.get("tasks")
            steps_tasks = [tasks[k] for k in ep["task_index"]] if tasks else [meta["task"]] * T
            assert [t.decode() for t in got["steps/language_instruction"]] == steps_tasks
            assert json.loads(got["episode_metadata/kinodb"][0]) == json.loads(json.dumps(meta))
            if name == "raw":
                assert got["episode_metadata/success"] == meta["success"]
                assert got["episode_metadata/scene"][0].decode() == meta["scene"]
                assert got["episode_metadata/meta.seed"] == meta["meta.seed"]
                assert got["episode_metadata/meta.scale"] == meta["meta.scale"]
            for cam, frames in ep["images"].items():
                key = f"steps/observation/{cam}"
                stored = [db.read_image_bytes(i, cam, t) for t in range(T)] if name == "jpeg" else None
                if stored is None:  # raw frames, exported as PNG: pixel for pixel
                    assert np.array_equal(got[key], frames), (i, cam)
                else:  # JPEG passed through: TFDS read the stored bytes; its decoder differs a little
                    digests = np.stack([np.frombuffer(hashlib.sha256(b).digest(), np.uint8) for b in stored])
                    assert np.array_equal(got[key + "#sha256"], digests)
                    assert got[key].shape == frames.shape
                    assert np.abs(got[key].astype(int) - frames).max() <= 8


@pytest.mark.parametrize("name", NAMES)
def test_ingest_of_the_export_tfds_read_gives_back_the_file(tmp_path: Path, name: str) -> None:
    back = tmp_path / "back.kdb"
    report = ingest(FIXTURE / name / "1.0.0", back, image_codec="png", verify=True)
    assert report.notes == [] and report.verification is not None
    assert_same_episodes(FIXTURE / f"{name}.kdb", back)
    with kinodb.open(FIXTURE / f"{name}.kdb") as a, kinodb.open(back) as b:
        assert b.schema()["states"] == a.schema()["states"]
        assert {k: b.metadata().get(k) for k in a.metadata()} == a.metadata()
