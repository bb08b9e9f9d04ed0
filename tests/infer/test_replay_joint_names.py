"""Replay matches the joint inputs and the recorded actions the same way: by name or by position."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from _kinfer_builders import IR_VERSION, init_graph, metadata_bytes, write_archive
from onnx import TensorProto, checker, helper, numpy_helper

from kinodb.infer import InferError, KdbReplayProvider, load_model, replay
from kinodb.kdb.writer import Writer

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
G1 = SAMPLES / "unitree_g1_lerobot_v21"
JOINTS = ["hip", "knee", "ankle", "wrist"]


def _gain(joint: str) -> float:
    """A different gain for every joint name, the same whatever the joint order."""
    return 1.0 + (sum(map(ord, joint)) % 17) / 4.0


def _gain_policy(path: Path, joints: Sequence[str]) -> Path:
    """action[j] = gain(joint j) * joint_angles[j]: the same policy in any joint order."""
    J = len(joints)
    gain = np.array([_gain(j) for j in joints], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["joint_angles", "gain"], ["action"]),
            helper.make_node("Add", ["carry", "one"], ["next_carry"]),
        ],
        "step_fn",
        [
            helper.make_tensor_value_info("joint_angles", TensorProto.FLOAT, [J]),
            helper.make_tensor_value_info("carry", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, [J]),
            helper.make_tensor_value_info("next_carry", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(gain, "gain"), numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = IR_VERSION
    checker.check_model(model)
    meta = {"joint_names": list(joints), "command_names": [], "carry_size": [1]}
    return write_archive(
        path,
        [
            ("init_fn.onnx", init_graph(np.zeros(1, np.float32))),
            ("step_fn.onnx", model.SerializeToString()),
            ("metadata.json", metadata_bytes(meta)),
        ],
    )


def _write(path: Path, *, state_names: list[str] | None, action_names: list[str] | None) -> Path:
    """One episode whose recorded action is gain(joint) * state, joint by joint, in the file's order."""
    rng = np.random.default_rng(0)
    states = rng.standard_normal((40, len(JOINTS))).astype(np.float32)
    actions = states * np.array([_gain(j) for j in JOINTS], np.float32)
    schema = {}
    if state_names is not None:
        schema["states"] = {"names": state_names}
    if action_names is not None:
        schema["actions"] = {"names": action_names}
    with Writer(path, mode="x", image_codec="raw", schema=schema) as w:
        w.add_episode(actions=actions, states=states)
    return path


STATES = {"joint_angles": "states"}


def test_plain_joint_names_feed_and_score_by_name(tmp_path: Path) -> None:
    data = _write(tmp_path / "plain.kdb", state_names=JOINTS, action_names=JOINTS)
    for joints in (JOINTS, JOINTS[::-1], ["ankle", "hip", "wrist", "knee"]):
        model = load_model(_gain_policy(tmp_path / "pol.kinfer", joints))
        report = replay(model, data, state_map=STATES)
        assert report.joint_names == tuple(joints)
        assert float(report.max_abs.max()) == 0.0  # the right joint fed, the right joint compared
    reversed_model = load_model(_gain_policy(tmp_path / "rev.kinfer", JOINTS[::-1]))
    assert float(replay(reversed_model, data, state_map=STATES, by_name=False).max_abs.max()) > 0.1


def test_one_side_named_in_another_order_is_refused(tmp_path: Path) -> None:
    unnamed_states = _write(tmp_path / "a.kdb", state_names=None, action_names=JOINTS)
    unnamed_actions = _write(tmp_path / "b.kdb", state_names=JOINTS, action_names=None)
    other_states = _write(tmp_path / "c.kdb", state_names=["x", "y", "z", "w"], action_names=JOINTS)
    reversed_model = load_model(_gain_policy(tmp_path / "rev.kinfer", JOINTS[::-1]))
    same = load_model(_gain_policy(tmp_path / "same.kinfer", JOINTS))
    for data, moved, unnamed in (
        (unnamed_states, "the recorded actions", "the joint_angles columns (joint_angles=states)"),
        (unnamed_actions, "the joint_angles columns (joint_angles=states)", "the recorded actions"),
        (other_states, "the recorded actions", "the joint_angles columns (joint_angles=states)"),
    ):
        with pytest.raises(InferError) as err:
            replay(reversed_model, data, state_map=STATES)
        text = str(err.value)
        assert f"{data}: episode 0: {moved} name the policy's joints in another order" in text
        assert f"but {unnamed} name no joints" in text
        assert "kino infer replay --by-position" in text
        # in the policy's order, by name and by position agree: nothing to refuse
        assert float(replay(same, data, state_map=STATES).max_abs.max()) == 0.0


def test_index_names_on_both_sides_are_used_by_position(tmp_path: Path) -> None:
    numbered = [f"motor_{i}" for i in range(4)]
    data = _write(tmp_path / "n.kdb", state_names=numbered, action_names=numbered)
    reversed_model = load_model(_gain_policy(tmp_path / "rev.kinfer", JOINTS[::-1]))
    by_name = replay(reversed_model, data, state_map=STATES)
    by_position = replay(reversed_model, data, state_map=STATES, by_name=False)
    np.testing.assert_array_equal(by_name.mae, by_position.mae)


def test_plain_names_of_other_joints_are_refused(tmp_path: Path) -> None:
    data = _write(tmp_path / "p.kdb", state_names=["hip", "knee", "ankle", "elbow"], action_names=None)
    model = load_model(_gain_policy(tmp_path / "same.kinfer", JOINTS))
    provider = KdbReplayProvider(data, 0, state_map=STATES)
    with pytest.raises(
        InferError, match=r"joint_angles=states: the states columns name the joints .*'elbow'"
    ):
        provider.bind(model.signature)


def test_the_g1_sample_replays_the_same_in_any_joint_order(tmp_path: Path) -> None:
    if not G1.is_dir():
        pytest.skip(f"the real sample data is not at {G1}")
    from kinodb.ingest import ingest

    data = tmp_path / "g1.kdb"
    ingest(G1, data, episodes="29", images=False)
    from kinodb.kdb.reader import Database

    with Database(data) as db:
        names = list(db.schema()["actions"]["names"])
    assert names == list(db.schema()["states"]["names"])  # plain joint names on both sides
    same = replay(load_model(_gain_policy(tmp_path / "same.kinfer", names)), data, state_map=STATES)
    rev = replay(load_model(_gain_policy(tmp_path / "rev.kinfer", names[::-1])), data, state_map=STATES)
    assert rev.frames == same.frames > 100
    np.testing.assert_array_equal(rev.mae[::-1], same.mae)  # joint by joint, the same errors
    np.testing.assert_array_equal(rev.max_abs[::-1], same.max_abs)
