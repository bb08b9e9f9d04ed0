"""read_log reads in blocks of lines: what it returns does not depend on where blocks end, and its
memory stays near the size of the arrays it returns."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kinodb.infer import InferError, NdjsonLogger, _logread, read_log

BLOCKS = (64, 333, 4096, 1 << 21)  # shorter than a line, a few lines, many lines, the whole file


def _line(step: int, *, joints: int = 3, gyro: Any = "auto", nan_at: int | None = None) -> str:
    angles: list[Any] = [step + 0.25 * j for j in range(joints)]
    if nan_at is not None:
        angles[nan_at] = None  # kinfer's NaN
    rec = {
        "step_id": step, "t_us": 1_700_000_000_000_000 + 20_000 * step, "joint_angles": angles,
        "joint_vels": None, "projected_g": [0.0, 0.0, -1.0], "accel": None,
        "gyro": [0.1 * step, 0.0, 0.0] if gyro == "auto" else gyro, "command": None,
        "time": [step / 50], "output": [-a if a is not None else 0.0 for a in angles], "step_latency_us": 40.5,
        "joint_order": "hip,knee,ankle",
    }  # fmt: skip
    return json.dumps(rec, separators=(",", ":"))


def _read_each(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, np.ndarray]]]:
    out = []
    for size in BLOCKS:
        monkeypatch.setattr(_logread, "BLOCK_BYTES", size)
        out.append(read_log(path))
    return out


def test_runs_torn_lines_and_nulls_read_the_same_whatever_the_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [_line(k) for k in range(40)]
    lines.append(_line(40)[:57])  # a killed run's torn last line, then the next run on the next line
    lines += [_line(k, nan_at=1 if k == 3 else None) for k in range(25)]
    lines.append("")  # a blank line
    lines.append(_line(25)[:31] + _line(0))  # torn, and the third run glued to it on the same line
    lines += [_line(k) for k in range(1, 30)]
    lines.append(_line(30)[:20])  # the file ends with a torn line
    path = tmp_path / "three.ndjson"
    path.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="kinodb.infer.telemetry"):
        results = _read_each(path, monkeypatch)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 * len(BLOCKS)  # each reading: the two torn ends of runs and the torn last line
    assert "line 41: skipped 57 bytes, the torn end of an interrupted run" in warnings[0]
    assert "starts on line 42" in warnings[0] and "starts on the same line" in warnings[1]
    assert "line 98: dropped the torn last line" in warnings[2]
    first = results[-1]
    assert [len(run["step_id"]) for run in first] == [40, 25, 30]
    assert list(first[0]) == ["step_id", "t_us", "joint_angles", "projected_gravity", "gyroscope", "time", "output",
                              "step_latency_us"]  # fmt: skip
    assert np.isnan(first[1]["joint_angles"][3, 1]) and first[1]["joint_angles"].dtype == np.float32
    assert first[0]["step_latency_us"].dtype == np.float64 and first[0]["t_us"].dtype == np.int64
    for other in results[:-1]:
        assert len(other) == len(first)
        for a, b in zip(other, first, strict=True):
            assert list(a) == list(b)
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            _line(60, joints=2),
            "line 61: field 'joint_angles' changes length within a run: 2 values where line 1 has 3",
        ),
        (_line(60, gyro=None), "line 61: field 'gyro' is null or missing, but not in every line of the run"),
        (_line(60, gyro="x"), "line 61: field 'gyro' is not numeric"),
        (_line(60)[:-9] + "}}", "line 61: not JSON"),
    ],
)
def test_errors_name_the_same_line_whatever_the_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str, message: str
) -> None:
    lines = [_line(k) for k in range(60)] + [bad] + [_line(k) for k in range(61, 90)]
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines) + "\n")
    for size in BLOCKS:
        monkeypatch.setattr(_logread, "BLOCK_BYTES", size)
        with pytest.raises(InferError) as err:
            read_log(path)
        assert f"{path}: {message}" in str(err.value), (size, str(err.value))


def test_a_field_null_at_first_then_given_is_refused_at_its_first_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [_line(k, gyro=None) for k in range(50)] + [_line(k) for k in range(50, 60)]
    path = tmp_path / "late.ndjson"
    path.write_text("\n".join(lines) + "\n")
    for size in BLOCKS:
        monkeypatch.setattr(_logread, "BLOCK_BYTES", size)
        with pytest.raises(
            InferError, match=r"line 1: field 'gyro' is null or missing, but not in every line"
        ):
            read_log(path)


def test_memory_stays_near_the_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.ndjson"
    inputs = [("joint_angles", 12), ("joint_angular_velocities", 12), ("projected_gravity", 3)]
    steps = 6_000
    rows = rng.normal(size=(steps, 27 + 12)).astype(np.float32)
    with NdjsonLogger(path, inputs, 12, capacity=steps) as logger:
        for k in range(steps):
            logger.record(k, 1_700_000_000_000_000 + k, 40.0, [rows[k, :12], rows[k, 12:24], rows[k, 24:27],
                                                              rows[k, 27:]])  # fmt: skip
    size = path.stat().st_size
    monkeypatch.setattr(_logread, "BLOCK_BYTES", 1 << 16)
    tracemalloc.start()
    try:
        (run,) = read_log(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = sum(a.nbytes for a in run.values())
    np.testing.assert_array_equal(run["output"], rows[:, 27:])
    assert size > 5 * arrays  # JSON text is several times its float32 arrays ...
    assert peak < 2 * arrays + 2_000_000, (peak, arrays, size)  # ... and reading it takes about the arrays
