"""The committed golden files of every released format version read back exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.kdb.validate import validate

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
VERSIONS = sorted(p.stem for p in GOLDEN.glob("v*.kdb"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=VERSIONS)
def golden(request: pytest.FixtureRequest) -> tuple[kinodb.Database, dict[str, Any]]:
    expected = json.loads((GOLDEN / f"{request.param}.json").read_text())
    db = kinodb.open(GOLDEN / f"{request.param}.kdb")
    request.addfinalizer(db.close)
    return db, expected


def test_there_is_a_golden_file_per_version() -> None:
    assert "v1_0" in VERSIONS
    for stem in VERSIONS:
        assert (GOLDEN / f"{stem}.json").exists()
        assert (GOLDEN / f"{stem}.kdb").stat().st_size < 16 * 1024  # tiny on purpose


def test_file_level_facts(golden: tuple[kinodb.Database, dict[str, Any]]) -> None:
    db, expected = golden
    assert db.version() == expected["version"]
    assert (len(db), db.num_episodes(), db.num_frames()) == (
        expected["num_episodes"], expected["num_episodes"], expected["num_frames"]
    )  # fmt: skip
    assert db.dataset_info() == expected["dataset"]
    assert db.schema() == expected["dataset"]["schema"]
    assert db.metadata() == expected["dataset"]["metadata"]


def test_episode_metadata(golden: tuple[kinodb.Database, dict[str, Any]]) -> None:
    db, expected = golden
    for i, ep in enumerate(expected["episodes"]):
        assert db.read_meta(i) == ep["meta"]
    table = db.episodes()
    for key in ("episode_id", "embodiment", "task", "num_frames", "fps", "success"):
        assert table[key].tolist() == [ep["meta"][key] for ep in expected["episodes"]]


def test_arrays(golden: tuple[kinodb.Database, dict[str, Any]]) -> None:
    db, expected = golden
    for i, ep in enumerate(expected["episodes"]):
        got = db.read_episode_actions_only(i)
        assert set(got) - {"meta"} == set(ep["arrays"])
        for name, want in ep["arrays"].items():
            arr = db.read_array(i, name)
            assert arr.dtype.str == want["dtype"] and list(arr.shape) == want["shape"], name
            assert arr.tolist() == want["values"], name
            assert sha256(arr.tobytes()) == want["sha256"], name
            np.testing.assert_array_equal(got[name], arr)


def test_cameras(golden: tuple[kinodb.Database, dict[str, Any]]) -> None:
    db, expected = golden
    for i, ep in enumerate(expected["episodes"]):
        images = db.read_episode(i)["images"]
        assert set(images) == set(ep["cameras"])
        for name, want in ep["cameras"].items():
            assert db.cameras(i)[name] == {"codec": want["codec"], "shape": tuple(want["shape"])}
            assert sha256(images[name].tobytes()) == want["pixels_sha256"], name
            stored = [sha256(db.read_image_bytes(i, name, t)) for t in range(want["shape"][0])]
            assert stored == want["frames_sha256"], name
            T = want["shape"][0]
            window = db.read_frames(i, T - 1, T, cameras=[name])["images"][name]
            np.testing.assert_array_equal(window, images[name][T - 1 :])


def test_golden_files_validate(golden: tuple[kinodb.Database, dict[str, Any]]) -> None:
    db, _ = golden
    report = validate(db.path())
    assert report.ok, report.errors
