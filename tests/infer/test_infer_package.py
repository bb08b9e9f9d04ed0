"""Loading packages of every kinfer generation, the contract checks, and stepping."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_builders import (
    IR_VERSION,
    init_graph,
    metadata_bytes,
    step_graph,
    with_ir_version,
    with_props,
    write_archive,
)
from _kinfer_packages import COMMANDS, JOINTS, MakePackage, shapes_for

from kinodb.infer import InferError, load_model, read_package
from kinodb.infer._package import pack


@pytest.mark.parametrize("generation", ["0.6", "0.5", "0.4", "0.4-legacy", "onnx"])
def test_every_generation_loads_and_steps_like_the_reference(
    make_package: MakePackage, generation: str, rng: np.random.Generator
) -> None:
    commands = () if generation == "0.4-legacy" else COMMANDS
    inputs = None
    if generation == "0.4-legacy":
        inputs = ("joint_angles", "joint_angular_velocities", "projected_gravity", "carry")
    built = make_package(
        generation, commands=commands, inputs=inputs, carry=(2, 5) if generation == "0.5" else (8,)
    )
    model = load_model(built.path)
    sig = model.signature
    assert sig.generation == ("0.4" if generation == "0.4-legacy" else generation)
    assert sig.joint_names == JOINTS
    assert sig.num_commands == len(commands)
    assert sig.carry_shape == built.carry
    assert sig.input_names == built.order
    np.testing.assert_array_equal(model.carry, built.initial)
    carry = built.initial
    for _ in range(5):
        obs = built.random_obs(rng)
        want_action, carry = built.reference({**obs, "carry": carry})
        np.testing.assert_allclose(model.step(obs), want_action, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.carry, carry, rtol=1e-5, atol=1e-6)
    model.reset()
    np.testing.assert_array_equal(model.carry, built.initial)


def test_command_names_of_older_generations_are_numbered(make_package: MakePackage) -> None:
    model = load_model(make_package("0.5").path)
    assert model.signature.command_names == ("command_0", "command_1", "command_2")
    assert "quaternion" in model.signature.input_names and "initial_heading" in model.signature.input_names


def test_0_4_carry_shape_comes_from_init(make_package: MakePackage) -> None:
    built = make_package("0.4", carry=(3, 4))
    assert read_package(built.path).carry_size is None
    assert load_model(built.path).signature.carry_shape == (3, 4)


def test_plain_onnx_with_one_prop_per_key(tmp_path: Path) -> None:
    shapes = shapes_for(2, 0, (4,))
    step, _ = step_graph({n: shapes[n] for n in ("joint_angles", "carry")}, 2, (4,))
    path = tmp_path / "step.onnx"
    path.write_bytes(with_props(step, {"joint_names": '["a", "b"]', "carry_size": "[4]"}))
    model = load_model(path)
    assert model.signature.generation == "onnx"
    assert model.signature.joint_names == ("a", "b")
    np.testing.assert_array_equal(model.carry, np.zeros(4, np.float32))


def test_plain_onnx_without_joint_names_is_refused(tmp_path: Path) -> None:
    shapes = shapes_for(2, 0, (4,))
    step, _ = step_graph({"joint_angles": shapes["joint_angles"]}, 2, (4,))
    path = tmp_path / "bare.onnx"
    path.write_bytes(step)
    with pytest.raises(InferError, match=r"bare\.onnx.*joint_names"):
        load_model(path)


def test_extra_members_are_tolerated_with_a_warning(
    make_package: MakePackage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kinodb.infer"):
        built = make_package(extra_members=[("README.md", b"# walk"), ("sha256.txt", b"abc")])
        model = load_model(built.path)
    assert model.package.warnings
    assert "README.md" in model.package.warnings[0] and "sha256.txt" in model.package.warnings[0]
    assert "README.md" in caplog.text


# -- broken packages ----------------------------------------------------------------------


def _members(built_path: Path, **replace: bytes | None) -> list[tuple[str, bytes]]:
    import tarfile

    with tarfile.open(built_path) as tar:
        out = []
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            out.append((info.name, handle.read()))
    result = []
    for name, blob in out:
        key = name.replace(".", "_")
        if key in replace:
            if replace[key] is not None:
                result.append((name, replace[key]))
        else:
            result.append((name, blob))
    return result  # type: ignore[return-value]


def test_missing_member_is_named(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    broken = write_archive(tmp_path / "broken.kinfer", _members(built.path, step_fn_onnx=None))
    with pytest.raises(InferError, match=r"broken\.kinfer: missing member 'step_fn\.onnx'"):
        load_model(broken)
    no_meta = write_archive(tmp_path / "nometa.kinfer", _members(built.path, metadata_json=None))
    with pytest.raises(InferError, match=r"missing member 'metadata\.json'"):
        load_model(no_meta)


def test_a_damaged_gzip_stream_is_refused(make_package: MakePackage, tmp_path: Path) -> None:
    data = bytearray(make_package().path.read_bytes())
    crc = tmp_path / "crc.kinfer"
    data[-8] ^= 1  # the gzip trailer's CRC-32: tar reading stops before it
    crc.write_bytes(data)
    with pytest.raises(InferError, match=r"crc\.kinfer: truncated or corrupt archive \(CRC check failed"):
        load_model(crc)
    cut = tmp_path / "cut.kinfer"
    cut.write_bytes(data[:-8])
    with pytest.raises(InferError, match=r"cut\.kinfer: truncated or corrupt archive"):
        load_model(cut)


def test_archives_kinfer_itself_refuses_load_with_warnings(make_package: MakePackage, tmp_path: Path) -> None:
    import tarfile

    members = _members(make_package().path)
    plain = tmp_path / "plain.kinfer"
    with tarfile.open(plain, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    assert any("not gzip-compressed" in w for w in read_package(plain).warnings)
    dotted = write_archive(tmp_path / "dotted.kinfer", [(f"./{name}", blob) for name, blob in members])
    (warning,) = read_package(dotted).warnings
    assert "members named ['./init_fn.onnx', './step_fn.onnx', './metadata.json']" in warning
    assert "tar czf NAME.kinfer -C DIR init_fn.onnx step_fn.onnx metadata.json" in warning
    assert load_model(dotted).signature.joint_names == JOINTS


def test_bad_json_names_the_member_and_line(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    broken = write_archive(
        tmp_path / "badjson.kinfer", _members(built.path, metadata_json=b'{"joint_names": [\n')
    )
    with pytest.raises(InferError, match=r"badjson\.kinfer: metadata\.json: bad JSON at line 2"):
        load_model(broken)


def test_metadata_field_errors(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    cases = {
        b'{"command_names": [], "carry_size": [8]}': "missing required field 'joint_names'",
        b'{"joint_names": "hip", "command_names": [], "carry_size": [8]}': "'joint_names' must be a list",
        b'{"joint_names": ["a"], "command_names": [], "carry_size": [-1]}': "'carry_size' must be a list of non-negative",
        b'{"joint_names": ["a"], "command_names": ["x"], "num_commands": 2, "carry_size": [8]}': "'num_commands' is 2",
        b"[1, 2]": "expected a JSON object",
    }
    for k, (meta, message) in enumerate(cases.items()):
        path = write_archive(tmp_path / f"m{k}.kinfer", _members(built.path, metadata_json=meta))
        with pytest.raises(InferError, match=message):
            load_model(path)


def _package_with(tmp_path: Path, name: str, step: bytes, *, carry: tuple[int, ...] = (8,), joints: int = 4,
                  commands: int = 3, init: bytes | None = None) -> Path:  # fmt: skip
    meta = {
        "joint_names": list(JOINTS[:joints]),
        "command_names": list(COMMANDS[:commands]),
        "carry_size": list(carry),
    }
    members = [("init_fn.onnx", init or init_graph(np.zeros(carry, np.float32))), ("step_fn.onnx", step),
               ("metadata.json", metadata_bytes(meta))]  # fmt: skip
    return write_archive(tmp_path / name, members)


def test_wrong_input_shape_names_member_input_and_expected_shape(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_angles": [3], "carry": [8]}, 4, (8,))
    path = _package_with(tmp_path, "shape.kinfer", step)
    with pytest.raises(InferError) as err:
        load_model(path)
    text = str(err.value)
    assert "shape.kinfer: step_fn.onnx: input 'joint_angles' has shape [3]; expected [4]" in text
    assert "joint_names" in text


def test_command_shape_follows_command_names(tmp_path: Path) -> None:
    step, _ = step_graph({"command": [2], "carry": [8]}, 4, (8,))
    with pytest.raises(InferError, match=r"input 'command' has shape \[2\]; expected \[3\]"):
        load_model(_package_with(tmp_path, "cmd.kinfer", step))


def test_unknown_input_and_dynamic_shape_and_dtype(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_positions": [4]}, 4, (8,))
    with pytest.raises(InferError, match=r"unknown input 'joint_positions'"):
        load_model(_package_with(tmp_path, "unknown.kinfer", step))
    step, _ = step_graph({"joint_angles": ["n"], "carry": [8]}, 4, (8,))
    with pytest.raises(
        InferError, match=r"input 'joint_angles' has a dynamic shape.*expected the static shape \[4\]"
    ):
        load_model(_package_with(tmp_path, "dynamic.kinfer", step))
    from onnx import TensorProto

    step, _ = step_graph({"joint_angles": [4]}, 4, (8,), dtype=TensorProto.DOUBLE)
    with pytest.raises(InferError, match=r"input 'joint_angles' is tensor\(double\); expected float32"):
        load_model(_package_with(tmp_path, "double.kinfer", step))


def test_output_count_and_shapes(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_angles": [4], "carry": [8]}, 4, (8,), outputs=3)
    with pytest.raises(InferError, match=r"step_fn\.onnx: has 3 outputs; expected exactly 2"):
        load_model(_package_with(tmp_path, "three.kinfer", step))
    step, _ = step_graph({"joint_angles": [4], "carry": [8]}, 4, (8,), action_shape=[2, 2])
    with pytest.raises(InferError, match=r"output 0 \(action\) has shape \[2, 2\]; expected \[4\]"):
        load_model(_package_with(tmp_path, "action.kinfer", step))


def test_carry_must_match_init_output(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_angles": [4], "carry": [8]}, 4, (8,))
    path = _package_with(tmp_path, "carry.kinfer", step, init=init_graph(np.zeros(6, np.float32)))
    with pytest.raises(InferError, match=r"init_fn\.onnx: returns a carry of shape \[6\].*carry_size \[8\]"):
        load_model(path)
    step, _ = step_graph({"joint_angles": [4], "carry": [8]}, 4, (6,))  # carry in [8], out [6]
    with pytest.raises(InferError, match=r"input 'carry' has shape \[8\]; expected \[6\]"):
        load_model(_package_with(tmp_path, "carry2.kinfer", step, carry=(6,)))


def test_unsupported_ir_version_and_garbage(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_angles": [4], "carry": [8]}, 4, (8,))
    # An IR version no ONNX Runtime release reads (each release reads up to its own maximum).
    path = _package_with(tmp_path, "ir.kinfer", with_ir_version(step, 1000))
    with pytest.raises(InferError, match=r"ir\.kinfer: step_fn\.onnx: ONNX Runtime cannot load it"):
        load_model(path)
    junk = tmp_path / "junk.kinfer"
    junk.write_bytes(b"not a package at all")
    with pytest.raises(InferError, match=r"junk\.kinfer: not a gzip tar archive"):
        load_model(junk)
    torn = tmp_path / "torn.kinfer"
    torn.write_bytes(_package_with(tmp_path, "whole.kinfer", step).read_bytes()[:200])
    with pytest.raises(InferError, match=r"torn\.kinfer"):
        load_model(torn)


# -- stepping -----------------------------------------------------------------------------


def test_step_checks_observations(make_package: MakePackage) -> None:
    model = load_model(make_package().path)
    obs = make_package().random_obs(np.random.default_rng(1))
    del obs["gyroscope"]
    with pytest.raises(InferError, match=r"missing input 'gyroscope'"):
        model.step(obs)
    obs["gyroscope"] = np.zeros(4)
    with pytest.raises(InferError, match=r"input 'gyroscope' has shape \[4\]; the model expects \[3\]"):
        model.step(obs)
    obs["gyroscope"] = ["a", "b", "c"]
    with pytest.raises(InferError, match="gyroscope"):
        model.step(obs)


def test_step_accepts_lists_float64_and_scalar_time(make_package: MakePackage) -> None:
    built = make_package()
    model = load_model(built.path)
    obs = built.random_obs(np.random.default_rng(2))
    want = model.step(obs)
    model.reset()
    loose = {k: v.astype(np.float64).tolist() for k, v in obs.items()}
    loose["time"] = float(obs["time"][0])
    np.testing.assert_allclose(model.step(loose), want, rtol=1e-6)


def test_returned_action_is_a_fresh_array(make_package: MakePackage) -> None:
    built = make_package()
    model = load_model(built.path)
    rng = np.random.default_rng(3)
    first = model.step(built.random_obs(rng))
    kept = first.copy()
    model.step(built.random_obs(rng))
    np.testing.assert_array_equal(first, kept)


def test_pack_is_deterministic_and_in_kinfer_order(make_package: MakePackage, tmp_path: Path) -> None:
    import tarfile

    pkg = read_package(make_package().path)
    assert pkg.init_fn is not None
    meta = {"joint_names": list(pkg.joint_names), "command_names": list(pkg.command_names), "carry_size": [8]}
    a, b = pack(pkg.init_fn, pkg.step_fn, meta), pack(pkg.init_fn, pkg.step_fn, meta)
    assert a == b
    out = tmp_path / "packed.kinfer"
    out.write_bytes(a)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["init_fn.onnx", "step_fn.onnx", "metadata.json"]
        assert all(m.mtime == 0 and m.mode == 0o644 for m in tar.getmembers())
        handle = tar.extractfile("metadata.json")
        assert handle is not None
        assert json.loads(handle.read()) == meta
    assert load_model(out).signature.joint_names == pkg.joint_names


def test_importing_kinodb_infer_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, kinodb, kinodb.infer, kinodb.ingest.kinfer_ndjson, kinodb._cli.infer\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'torch', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- graphs whose outputs are their inputs --------------------------------------------------


def _graph(nodes: list[Any], inputs: dict[str, list[int]], outputs: dict[str, list[int]], **kw: Any) -> bytes:
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        nodes, "step_fn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        kw.get("initializer", []),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = IR_VERSION
    for k, v in kw.get("props", {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    checker.check_model(model)
    return bytes(model.SerializeToString())


def test_outputs_that_are_graph_inputs_pass_through(tmp_path: Path, rng: np.random.Generator) -> None:
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    both = _graph([], {"joint_angles": [4], "carry": [8]}, {"joint_angles": [4], "carry": [8]})
    one = _graph(
        [helper.make_node("Add", ["carry", "one"], ["next_carry"])],
        {"joint_angles": [4], "carry": [8]}, {"joint_angles": [4], "next_carry": [8]},
        initializer=[numpy_helper.from_array(np.ones(8, np.float32), "one")],
    )  # fmt: skip
    init = np.arange(8, dtype=np.float32)
    for name, step in (("both.kinfer", both), ("one.kinfer", one)):
        model = load_model(_package_with(tmp_path, name, step, init=init_graph(init)))
        sess = ort.InferenceSession(step, providers=["CPUExecutionProvider"])
        carry = init
        for _ in range(3):
            q = rng.normal(size=4).astype(np.float32)
            want_action, carry = sess.run(None, {"joint_angles": q, "carry": carry})
            np.testing.assert_array_equal(model.step({"joint_angles": q}), want_action)
            np.testing.assert_array_equal(model.carry, carry)


# -- kinfer <=0.3 single files, plain .onnx errors, metadata fields ---------------------------


def test_kinfer_0_3_single_file_models_are_named(tmp_path: Path) -> None:
    import base64

    schema = base64.b64encode(b"\x0a\x14\x0a\x0fjoint_positions").decode()  # a serialised ModelSchema
    cases = {
        "schema": {"kinfer_metadata": schema},
        "config": {"kinfer_metadata": json.dumps({"default_standing": [0.0] * 3, "dt": 0.02})},
        "names": {"kinfer_metadata": json.dumps({"joint_names": ["a", "b", "c"]})},
    }
    for name, props in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(_graph([], {"joint_positions": [3]}, {"joint_positions": [3]}, props=props))
        with pytest.raises(InferError) as err:
            load_model(path)
        text = str(err.value)
        assert text.startswith(f"{path}: ") and "step_fn.onnx" not in text
        assert "kinfer <=0.3" in text and "cannot read" in text and "export_torch" in text, text


def test_plain_onnx_errors_name_the_file_itself(tmp_path: Path) -> None:
    step, _ = step_graph({"joint_angles": [3], "carry": [8]}, 3, (8,))
    path = tmp_path / "policy.onnx"
    path.write_bytes(with_props(step, {"joint_names": '["a", "b", "c", "d"]', "carry_size": "[8]"}))
    with pytest.raises(InferError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: input 'joint_angles' has shape [3]; expected [4]")
    assert "step_fn.onnx" not in str(err.value)


def test_missing_carry_size_is_reported_missing(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    missing = write_archive(
        tmp_path / "missing.kinfer",
        _members(built.path, metadata_json=b'{"joint_names": ["a"], "command_names": []}'),
    )
    with pytest.raises(InferError) as err:
        load_model(missing)
    assert "metadata.json: missing required field 'carry_size'" in str(err.value)
    assert "null" not in str(err.value)
    null = write_archive(
        tmp_path / "null.kinfer",
        _members(
            built.path, metadata_json=b'{"joint_names": ["a"], "command_names": [], "carry_size": null}'
        ),
    )
    with pytest.raises(InferError, match=r"'carry_size' is null"):
        load_model(null)
