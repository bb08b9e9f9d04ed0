"""kinfer NDJSON logs as an ingest source: detection, mapping, runs, and replay of the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

import kinodb
from kinodb.errors import ConversionError
from kinodb.infer import Runner, load_model, replay
from kinodb.ingest import ingest, source_class, verify
from kinodb.ingest.kinfer_ndjson import KinferNdjsonSource


def _kinfer_line(step: int, rng: np.random.Generator) -> str:
    """A line as kinfer's Rust logger writes it: every known key, null when absent, no latency."""
    return json.dumps({
        "step_id": step, "t_us": 1_750_000_000_000_000 + 20_000 * step,
        "joint_angles": rng.normal(size=3).tolist(), "joint_vels": rng.normal(size=3).tolist(),
        "projected_g": [0.0, 0.0, -9.81], "accel": None, "gyro": rng.normal(size=3).tolist(),
        "command": [0.5, 0.0], "output": rng.normal(size=3).tolist(),
    })  # fmt: skip


def test_detect_claims_only_ndjson(tmp_path: Path, make_kdb: object) -> None:
    log = tmp_path / "a.ndjson"
    log.write_text("{}\n")
    other = tmp_path / "a.json"
    other.write_text("{}\n")
    assert KinferNdjsonSource.detect(str(log))
    assert not KinferNdjsonSource.detect(str(other))
    assert not KinferNdjsonSource.detect(str(tmp_path))  # a folder holding other files too
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "r1.ndjson").write_text("{}\n")
    (logs / "r2.ndjson").write_text("{}\n")
    assert KinferNdjsonSource.detect(str(logs))
    assert not KinferNdjsonSource.detect(str(tmp_path / "empty_missing"))
    assert source_class("auto", str(logs)) is KinferNdjsonSource


def test_a_kinfer_written_log_maps_to_states_extras_and_timestamps(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    log = tmp_path / "2025-06-22_10-00-00.ndjson"
    lines = [_kinfer_line(k, rng) for k in range(30)] + [_kinfer_line(k, rng) for k in range(12)]  # two runs
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "log.kdb"
    report = ingest(log, out, format="kinfer-ndjson", embodiment="kbot")
    assert report.episodes == 2 and report.frames == 42
    recs = [json.loads(line) for line in lines]
    with kinodb.open(out) as db:
        ep = db.read_episode(0)
        meta = ep["meta"]
        assert meta["fps"] == 50.0 and meta["embodiment"] == "kbot" and meta["kinfer_log"] == f"{log.name}#0"
        assert meta["t0_us"] == recs[0]["t_us"]
        np.testing.assert_array_equal(ep["actions"], np.float32([r["output"] for r in recs[:30]]))
        np.testing.assert_array_equal(
            ep["states"], np.float32([r["joint_angles"] + r["joint_vels"] for r in recs[:30]])
        )
        np.testing.assert_array_equal(ep["gyroscope"], np.float32([r["gyro"] for r in recs[:30]]))
        np.testing.assert_array_equal(ep["projected_gravity"][0], np.float32([0, 0, -9.81]))
        assert "accelerometer" not in ep and "step_latency_us" not in ep
        np.testing.assert_allclose(ep["timestamps"], np.arange(30) * 0.02)
        np.testing.assert_array_equal(ep["step_id"], np.arange(30))
        assert db.schema()["states"]["components"] == {
            "joint_angles": [0, 3],
            "joint_angular_velocities": [3, 6],
        }
        assert db.read_meta(1)["num_frames"] == 12
    assert verify(log, out, format="kinfer-ndjson").ok


def test_runner_log_ingests_and_replays_exactly(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    model = load_model(built.path)
    logs = tmp_path / "logs"
    for seed in (3, 4):
        Runner(model, Served(built, seed).provider, rate_hz=1000, max_steps=20,
               log_path=logs / f"run{seed}.ndjson").run()  # fmt: skip
    out = tmp_path / "from_logs.kdb"
    report = ingest(logs, out)  # auto-detected folder of logs
    assert report.format == "kinfer-ndjson" and report.episodes == 2
    result = replay(model, out)
    assert result.frames == 40 and float(result.max_abs.max()) == 0.0


def test_bad_logs_raise_conversion_errors(tmp_path: Path) -> None:
    log = tmp_path / "bad.ndjson"
    log.write_text('{"step_id": 0, "output": [1]}\n{"step_id": 1, "output": [1, 2]}\n')
    with pytest.raises(ConversionError, match=r"bad\.ndjson.*'output' changes length"):
        ingest(log, tmp_path / "o.kdb", format="kinfer-ndjson")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match=r"no \.ndjson \(or \.jsonl\) files"):
        KinferNdjsonSource(str(empty))


def test_null_elements_on_the_first_line_ingest_as_nan(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [json.loads(_kinfer_line(k, rng)) for k in range(5)]
    recs[0]["output"][1] = None  # kinfer writes a NaN action element as null
    recs[0]["joint_angles"][0] = None
    log = tmp_path / "nan.ndjson"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "nan.kdb"
    report = ingest(log, out, format="kinfer-ndjson")
    assert report.episodes == 1 and report.frames == 5
    with kinodb.open(out) as db:
        ep = db.read_episode(0)
        assert np.isnan(ep["actions"][0, 1]) and np.isnan(ep["states"][0, 0])
        np.testing.assert_array_equal(ep["actions"][1:], np.float32([r["output"] for r in recs[1:]]))
        assert db.schema()["states"]["components"]["joint_angles"] == [0, 3]
    nulled = tmp_path / "noout.ndjson"
    recs[2]["output"] = None
    nulled.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ConversionError, match=r"noout\.ndjson: line 3: field 'output' is null"):
        ingest(nulled, tmp_path / "noout.kdb", format="kinfer-ndjson")


def test_a_jsonl_log_is_detected_and_ingests_as_its_ndjson_twin(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    model = load_model(built.path)
    log = tmp_path / "run.jsonl"  # log_path takes .jsonl as a file name too
    Runner(model, Served(built, 5).provider, rate_hz=1000, max_steps=12, log_path=log).run()
    twin = tmp_path / "run.ndjson"
    twin.write_bytes(log.read_bytes())
    assert KinferNdjsonSource.detect(str(log))
    other = tmp_path / "labels.jsonl"  # JSON lines of something else
    other.write_text('{"text": "pick the cup"}\n')
    assert not KinferNdjsonSource.detect(str(other))
    report = ingest(log, tmp_path / "a.kdb")  # auto-detected
    assert report.format == "kinfer-ndjson" and report.frames == 12
    ingest(twin, tmp_path / "b.kdb")
    with kinodb.open(tmp_path / "a.kdb") as a, kinodb.open(tmp_path / "b.kdb") as b:
        for name in ("actions", "states"):
            np.testing.assert_array_equal(a.read_array(0, name), b.read_array(0, name))
