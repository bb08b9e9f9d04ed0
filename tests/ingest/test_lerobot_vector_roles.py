"""LeRobot role features (``next.reward``, ``next.done``, ``next.success``) wider than one
value per frame: extra arrays of their own name, the roles kinodb's defaults."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest, verify

LENGTHS = [6, 5, 7]
REWARD_NAMES = ["task_reward", "safety_reward"]
Episode = dict[str, Any]


def _widen(eps: list[Episode], rng: np.random.Generator, keys: tuple[str, ...]) -> None:
    """Make the role columns ``keys`` two values per frame, as LeRobot writes a feature of shape (2,)."""
    for ep in eps:
        T, cols = ep["length"], ep["columns"]
        if "next.reward" in keys:
            cols["next.reward"] = rng.normal(size=(T, 2)).astype(np.float32)
        for key in ("next.done", "next.success"):
            if key in keys:
                cols[key] = rng.random((T, 2)) < 0.5


def _name_rewards(root: Path) -> None:
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["next.reward"]["names"] = REWARD_NAMES
    info_path.write_text(json.dumps(info, indent=4))


def _dataset(tmp_path: Path, version: str, keys: tuple[str, ...], seed: int) -> tuple[Path, list[Episode]]:
    rng = np.random.default_rng(seed)
    eps = F.make_episodes(rng, LENGTHS, cameras={F.CAMERA: (16, 24)})
    _widen(eps, rng, keys)
    root = tmp_path / "ds"
    if version == "v3.0":
        F.write_v3(root, eps, per_file=2)
    else:
        F.write_v2(root, eps, version=version)
    if "next.reward" in keys:
        _name_rewards(root)
    return root, eps


def _no_role_warnings(text: str, key: str) -> int:
    return len(re.findall(rf"info\.json: {re.escape(key)} takes no role: shape \[2\] per frame", text))


@pytest.mark.parametrize(
    ("version", "wide"),
    [("v2.1", ("next.reward", "next.done")), ("v3.0", ("next.reward", "next.done", "next.success"))],
)
def test_wide_role_features_stay_extra_arrays_exactly(
    version: str, wide: tuple[str, ...], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, eps = _dataset(tmp_path, version, wide, seed=41)
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        report = ingest(root, out, image_codec="png", verify=True)
    assert report.episodes == len(LENGTHS)
    assert report.verification is not None and report.verification.ok
    for key in wide:  # one warning per feature, for the ingest and its verification together
        assert _no_role_warnings(caplog.text, key) == 1, caplog.text
    assert "for one reward per frame, combine its values" in caplog.text
    assert sorted(n.split(" takes no role")[0] for n in report.notes if "takes no role" in n) == sorted(wide)
    with kinodb.open(out) as db:
        no_role = db.metadata()["lerobot"]["no_role"]
        assert sorted(no_role) == sorted(wide)
        assert no_role["next.reward"].startswith(
            "shape [2] per frame, not one value: kept as the extra array 'next.reward' (task_reward, safety_reward)"
        )
        assert "is_terminal is kinodb's default" in no_role["next.done"]
        assert db.schema()["arrays"]["next.reward"] == {"shape": [2], "dtype": "float32"}
        for i, ep in enumerate(eps):
            cols, T = ep["columns"], ep["length"]
            for key in wide:  # the columns, exactly: dtype and shape kept
                got = db.read_array(i, key)
                assert got.dtype == cols[key].dtype and got.shape == (T, 2), key
                np.testing.assert_array_equal(got, cols[key], err_msg=key)
            rewards = db.read_array(i, "rewards")  # as for a dataset without next.reward
            assert rewards.dtype == np.float32 and not rewards.any()
            np.testing.assert_array_equal(db.read_array(i, "is_terminal"), np.arange(T) == T - 1)
            np.testing.assert_array_equal(db.read_array(i, "timestamps"), cols["timestamp"])
            np.testing.assert_array_equal(db.read_array(i, "actions"), cols["action"])
            meta = db.read_meta(i)
            assert meta["total_reward"] is None
            if "next.success" in wide:
                assert meta["success"] is None
            else:  # a one-value next.success keeps its role beside the wide ones
                assert meta["success"] is bool(cols["next.success"][-1])
    assert verify(root, out).ok
    assert main(["verify", str(root), str(out)]) == 0


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_one_value_reward_keeps_its_role_beside_a_wide_done(version: str, tmp_path: Path) -> None:
    root, eps = _dataset(tmp_path, version, ("next.done",), seed=43)
    out = tmp_path / "out.kdb"
    report = ingest(root, out, images=False, verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        assert sorted(db.metadata()["lerobot"]["no_role"]) == ["next.done"]
        for i, ep in enumerate(eps):
            cols = ep["columns"]
            rewards = db.read_array(i, "rewards")
            assert rewards.dtype == np.float32 and rewards.shape == (ep["length"],)
            np.testing.assert_array_equal(rewards, cols["next.reward"])
            assert db.read_meta(i)["total_reward"] == pytest.approx(float(cols["next.reward"].sum()))
            np.testing.assert_array_equal(db.read_array(i, "next.done"), cols["next.done"])
        assert "next.reward" not in db.schema()["arrays"]


def test_role_column_wider_than_declared_names_the_fix(tmp_path: Path) -> None:
    root, _ = _dataset(tmp_path, "v3.0", ("next.done",), seed=47)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["next.done"]["shape"] = [1]  # declared as one value, held as two: refused
    info_path.write_text(json.dumps(info, indent=4))
    with pytest.raises(ConversionError) as caught:
        ingest(root, tmp_path / "out.kdb", images=False)
    message = str(caught.value)
    assert (
        "file-000.parquet: episode 0: column 'next.done' has shape (2,) per frame; expected one value"
        in message
    )
    assert (
        "meta/info.json declares shape [1] for it; declare the data's shape as features['next.done'].shape"
        in message
    )


def test_wide_timestamp_fails_naming_the_fix(tmp_path: Path) -> None:
    rng = np.random.default_rng(53)
    eps = F.make_episodes(rng, [4, 3], cameras={})
    for ep in eps:
        ep["columns"]["timestamp"] = np.repeat(ep["columns"]["timestamp"][:, None], 2, axis=1)
    root = F.write_v2(tmp_path / "ds", eps)
    with pytest.raises(ConversionError) as caught:
        ingest(root, tmp_path / "out.kdb", images=False)
    message = str(caught.value)
    assert "episode_000000.parquet: episode 0: column 'timestamp' has shape (2,) per frame" in message
    assert "write one timestamp per frame in the data files" in message


def test_wide_roles_export_back_under_their_own_names(tmp_path: Path) -> None:
    """The extra arrays go back to LeRobot as the features they came from, and the built-in
    rewards and terminals, kinodb's defaults here, stay out: ingest, export, ingest again."""
    from kinodb.export import export

    root, eps = _dataset(tmp_path, "v3.0", ("next.reward", "next.done"), seed=5)
    ingest(root, tmp_path / "a.kdb")
    export(tmp_path / "a.kdb", tmp_path / "back", format="lerobot")
    features = json.loads((tmp_path / "back" / "meta" / "info.json").read_text())["features"]
    assert features["next.reward"]["shape"] == [2] and features["next.done"]["shape"] == [2]
    assert features["next.reward"]["dtype"] == "float32" and features["next.done"]["dtype"] == "bool"
    ingest(tmp_path / "back", tmp_path / "b.kdb")
    with kinodb.open(tmp_path / "a.kdb") as a, kinodb.open(tmp_path / "b.kdb") as b:
        assert len(a) == len(b) == len(eps)
        for i, ep in enumerate(eps):
            for key in ("next.reward", "next.done"):
                np.testing.assert_array_equal(b.read_array(i, key), ep["columns"][key])
                np.testing.assert_array_equal(a.read_array(i, key), b.read_array(i, key))
            assert b.read_meta(i)["total_reward"] is None
