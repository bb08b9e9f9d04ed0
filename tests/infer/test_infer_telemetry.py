"""NdjsonLogger lines and the NDJSON reader: runs, torn lines, malformed logs."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kinodb.infer import InferError, NdjsonLogger, read_log


def _records(rng: np.random.Generator, n: int) -> list[tuple[int, int, float, list[np.ndarray]]]:
    return [
        (k, 1_700_000_000_000_000 + 20_000 * k, float(rng.uniform(10, 90)),
         [rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32),
          np.array([k / 50], np.float32), rng.normal(size=3).astype(np.float32)])
        for k in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("serialize", ["worker", "inline"])
def test_lines_hold_kinfer_fields_in_order(tmp_path: Path, rng: np.random.Generator, serialize: str) -> None:
    path = tmp_path / f"{serialize}.ndjson"
    inputs = [("joint_angles", 3), ("gyroscope", 3), ("time", 1)]
    records = _records(rng, 250)
    with NdjsonLogger(path, inputs, 3, serialize=serialize, flush_every=7) as logger:
        for r in records:
            assert logger.record(*r)
    assert logger.written == 250 and logger.dropped == 0
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["step_id", "t_us", "joint_angles", "joint_vels", "projected_g", "accel", "gyro",
                           "command", "time", "output", "step_latency_us"]  # fmt: skip
    assert first["joint_vels"] is None and first["command"] is None
    for line, (sid, t_us, lat, arrays) in zip(lines, records, strict=True):
        rec = json.loads(line)
        assert rec["step_id"] == sid and rec["t_us"] == t_us and rec["step_latency_us"] == round(lat, 2)
        np.testing.assert_array_equal(np.float32(rec["joint_angles"]), arrays[0])  # float32 values round-trip
        np.testing.assert_array_equal(np.float32(rec["gyro"]), arrays[1])
        np.testing.assert_array_equal(np.float32(rec["output"]), arrays[3])


def test_both_serialisations_write_the_same_bytes(tmp_path: Path, rng: np.random.Generator) -> None:
    records = _records(rng, 40)
    for mode in ("worker", "inline"):
        with NdjsonLogger(tmp_path / f"{mode}.ndjson", [("joint_angles", 3), ("gyroscope", 3), ("time", 1)], 3,
                          serialize=mode) as logger:  # fmt: skip
            for r in records:
                logger.record(*r)
    assert (tmp_path / "worker.ndjson").read_bytes() == (tmp_path / "inline.ndjson").read_bytes()


def test_full_queue_drops_and_counts(tmp_path: Path, rng: np.random.Generator) -> None:
    # poll_s long: the writer does not wake while the records arrive, so the ring fills.
    logger = NdjsonLogger(tmp_path / "d.ndjson", [("joint_angles", 3)], 3, capacity=10, poll_s=5.0)
    try:
        accepted = [
            logger.record(k, k, 1.0, [np.zeros(3, np.float32), np.zeros(3, np.float32)]) for k in range(25)
        ]
    finally:
        logger.close()
    assert accepted.count(True) >= 10 and logger.dropped == 25 - accepted.count(True)
    assert len((tmp_path / "d.ndjson").read_text().splitlines()) == accepted.count(True)


def _line(step: int, **fields: object) -> str:
    rec = {"step_id": step, "t_us": 1000 * step, "joint_angles": [0.1 * step, 0.2], "joint_vels": None,
           "projected_g": [0.0, 0.0, -1.0], "accel": None, "gyro": [0.1, 0.2, 0.3], "command": None,
           "output": [step, -step]}  # fmt: skip
    rec.update(fields)
    return json.dumps(rec)


def test_read_log_splits_runs_and_maps_kinfer_keys(tmp_path: Path) -> None:
    path = tmp_path / "two.ndjson"
    path.write_text("\n".join([_line(k) for k in range(5)] + [_line(k) for k in range(3)]) + "\n")
    runs = read_log(path)
    assert [len(r["step_id"]) for r in runs] == [5, 3]
    cols = runs[0]
    assert set(cols) == {"step_id", "t_us", "joint_angles", "projected_gravity", "gyroscope", "output"}
    assert cols["output"].dtype == np.float32 and cols["output"].shape == (5, 2)
    np.testing.assert_array_equal(cols["t_us"], [0, 1000, 2000, 3000, 4000])


def test_a_torn_last_line_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "torn.ndjson"
    path.write_text("\n".join(_line(k) for k in range(4)) + "\n" + _line(4)[:30])
    with caplog.at_level(logging.WARNING):
        runs = read_log(path)
    assert len(runs[0]["step_id"]) == 4 and "torn" in caplog.text


def test_malformed_logs_name_the_line(tmp_path: Path) -> None:
    cases = {
        "\n".join([_line(0), "{oops", _line(2)]): r"line 2: not JSON",
        "\n".join([_line(0), _line(1, gyro=None)]): r"line 2: field 'gyro' is null",
        "\n".join([_line(0), _line(1, output=[1.0])]): r"field 'output' changes length",
        json.dumps({"t_us": 5, "output": [1]}): r"not a kinfer NDJSON log: line 1 is a JSON object without 'step_id'",
        "\n".join([_line(0), json.dumps({"t_us": 5, "output": [1]})]): r"line 2: a kinfer log line needs 'step_id'",
        "": r"holds no log lines",
    }  # fmt: skip
    for k, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{k}.ndjson"
        path.write_text(text + "\n")
        with pytest.raises(InferError, match=message):
            read_log(path)


def test_the_writer_keeps_quiet_until_the_window_opens(tmp_path: Path) -> None:
    path = tmp_path / "q.ndjson"
    logger = NdjsonLogger(path, [("joint_angles", 3)], 3, flush_every=1, poll_s=0.001)
    logger.quiet_at = 0.0  # a deadline in the past: the writer must not take the GIL for lines
    for k in range(5):
        logger.record(k, k, 1.0, [np.zeros(3, np.float32), np.zeros(3, np.float32)])
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        assert logger.written == 0
        time.sleep(0.01)
    logger.quiet_at = float("inf")
    logger.close()
    assert logger.written == 5 and len(path.read_text().splitlines()) == 5


def _strict(text: str) -> dict[str, object]:
    """Parse as strict JSON (RFC 8259, serde_json): NaN and Infinity tokens are refused."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON token {token}")

    rec: dict[str, object] = json.loads(text, parse_constant=refuse)
    return rec


@pytest.mark.parametrize("serialize", ["worker", "inline"])
def test_nan_and_inf_are_written_as_null_and_read_back_as_nan(tmp_path: Path, serialize: str) -> None:
    path = tmp_path / f"nan_{serialize}.ndjson"
    gyro = np.array([np.nan, np.inf, 0.5], np.float32)
    action = np.array([1.0, -np.inf, 2.0], np.float32)
    with NdjsonLogger(path, [("joint_angles", 3), ("gyroscope", 3)], 3, serialize=serialize) as logger:
        for k in range(3):
            logger.record(k, 1000 * k, 1.0, [np.ones(3, np.float32), gyro, action])
    lines = path.read_text().splitlines()
    rec = _strict(lines[0])
    assert rec["gyro"] == [None, None, 0.5] and rec["output"] == [1.0, None, 2.0]
    assert rec["joint_angles"] == [1.0, 1.0, 1.0]
    cols = read_log(path)[0]
    np.testing.assert_array_equal(cols["gyroscope"], np.tile(np.float32([np.nan, np.nan, 0.5]), (3, 1)))
    np.testing.assert_array_equal(cols["output"], np.tile(np.float32([1.0, np.nan, 2.0]), (3, 1)))


def test_null_elements_read_as_nan_and_output_is_never_dropped(tmp_path: Path) -> None:
    path = tmp_path / "kinfer_nan.ndjson"
    lines = [_line(0, joint_angles=[None, 0.2], output=[0.5, None])] + [_line(k) for k in range(1, 4)]
    path.write_text("\n".join(lines) + "\n")
    cols = read_log(path)[0]
    assert {"joint_angles", "output", "gyroscope", "projected_gravity"} <= set(cols)
    np.testing.assert_array_equal(cols["joint_angles"][0], np.float32([np.nan, 0.2]))
    np.testing.assert_array_equal(cols["output"][:, 1], np.float32([np.nan, -1, -2, -3]))
    cases = {
        "\n".join([_line(0), _line(1, output=None)]): r"nullout\.ndjson: line 2: field 'output' is null",
        "\n".join([_line(0, output=None), _line(1, output=None)]): r"allnull\.ndjson: line 1: field 'output' is null",
        "\n".join([_line(0, output="fast"), _line(1)]): r"text\.ndjson: line 1: field 'output' is not numeric",
        "\n".join([_line(0), _line(1), _line(2, gyro=["x", 1, 2])]): r"textlater\.ndjson: line 3: field 'gyro' is not numeric",
        "\n".join([_line(0), _line(1), _line(2, output=[1.0])]): r"len\.ndjson: line 3: field 'output' changes length",
    }  # fmt: skip
    for text, message in cases.items():
        bad = tmp_path / (message.split("\\.")[0] + ".ndjson")
        bad.write_text(text + "\n")
        with pytest.raises(InferError, match=message):
            read_log(bad)


def test_a_torn_line_before_the_next_run_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "appended.ndjson"
    first = [_line(k) for k in range(3)]
    second = [_line(k, output=[10 + k, 0]) for k in range(4)]
    # a run killed mid-line, then the next run appended to the same file: the torn part and the
    # next run's first line share a line
    path.write_text("\n".join(first) + "\n" + _line(3)[:40] + "\n".join(second) + "\n")
    with caplog.at_level(logging.WARNING):
        runs = read_log(path)
    assert [len(r["step_id"]) for r in runs] == [3, 4]
    np.testing.assert_array_equal(runs[0]["output"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(runs[1]["output"][:, 0], [10, 11, 12, 13])
    assert "appended.ndjson: line 4" in caplog.text and "torn end of an interrupted run" in caplog.text
    # the torn part ended by a newline, the next run on the following line
    caplog.clear()
    path.write_text("\n".join([*first, _line(3)[:40], *second]) + "\n")
    with caplog.at_level(logging.WARNING):
        runs = read_log(path)
    assert [len(r["step_id"]) for r in runs] == [3, 4] and "starts on line 5" in caplog.text


def test_a_torn_line_inside_a_run_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "torn_mid.ndjson"
    path.write_text("\n".join([_line(0), _line(1), _line(2)[:30], _line(3), _line(4)]) + "\n")
    with pytest.raises(InferError) as err:
        read_log(path)
    text = str(err.value)
    assert "torn_mid.ndjson: line 3: not JSON" in text and "torn or incomplete" in text
    assert "delete the line" in text and "sed -i '3d'" in text
    path.write_text("\n".join([_line(0), _line(1), _line(3), _line(4)]) + "\n")  # as the advice says
    assert len(read_log(path)[0]["step_id"]) == 4


def test_a_binary_file_is_refused_as_not_utf8_text(tmp_path: Path, make_kdb: Any) -> None:
    kdb, _ = make_kdb(2)  # a real .kdb file given where a log belongs
    with pytest.raises(InferError, match=r"not UTF-8 text: is it an NDJSON log\?") as info:
        read_log(kdb)
    message = str(info.value)
    assert message.startswith(f"{kdb}: line ") and "b'KINO" in message
    # The same for a log whose later line holds bytes that are not UTF-8.
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(("\n".join(_line(k) for k in range(3)) + "\n").encode() + b'{"step_id": 3, \xff\xfe}\n')
    with pytest.raises(InferError, match=rf"^{re.escape(str(path))}: line 4: not UTF-8 text"):
        read_log(path)


def test_a_torn_last_line_cut_inside_a_character_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Other loggers add text fields; a killed writer can stop inside a multi-byte character.
    path = tmp_path / "torn_utf8.ndjson"
    whole = "\n".join(_line(k) for k in range(3)) + "\n"
    torn = '{"step_id": 3, "note": "\u00e9'.encode()[:-1]
    path.write_bytes(whole.encode() + torn)
    with caplog.at_level(logging.WARNING):
        runs = read_log(path)
    assert len(runs[0]["step_id"]) == 3 and "line 4: dropped the torn last line" in caplog.text


_NOT_A_LOG = "not a kinfer NDJSON log: line 1 "


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("log.csv", "step,angle\n0,0.1\n1,0.2\n", "is not JSON (Expecting value at column 1): 'step,angle'"),
        ("README.md", "# Robot logs\n\nThese are the logs.\n", "is not JSON (Expecting value at column 1): '# Robot logs'"),
        ("one_line.txt", "hello", "is not JSON (Expecting value at column 1): 'hello'"),  # no newline: no torn line
        ("array.ndjson", "[1, 2]\n{oops\n", "is a JSON array, not an object: '[1, 2]'"),
        ("other.ndjson", '{"a": 1}\n{oops\n', "is a JSON object without 'step_id' or 'output' (its keys: 'a')"),
        ("text_id.ndjson", '{"step_id": "x", "output": [1]}\n', "has a 'step_id' that is no integer: '\"x\"'"),
    ],
)  # fmt: skip
def test_a_file_whose_first_line_is_no_log_line_is_not_a_log(
    tmp_path: Path, name: str, text: str, found: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InferError) as err:
        read_log(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {_NOT_A_LOG}{found}; a log holds one JSON object per step")
    assert "'step_id'" in message and '"output":[' in message  # what a log line looks like
    assert "delete the line" not in message and "sed -i" not in message and "torn" not in message


def test_a_binary_file_without_newlines_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"  # one line, no newline, not UTF-8: no torn last line of a log
    path.write_bytes(b"PAR1\xff\xfe\x00\x01")
    with pytest.raises(InferError, match=r"not a kinfer NDJSON log: line 1 is not UTF-8 text; it starts with "
                                         r"b'PAR1.*\(a Parquet file\)"):  # fmt: skip
        read_log(path)


def test_torn_lines_of_real_logs_keep_their_advice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a torn line after valid lines: the advice to delete it stays
    path = tmp_path / "mid.ndjson"
    path.write_text("\n".join([_line(0), "step,angle", _line(2)]) + "\n")
    with pytest.raises(InferError, match=r"line 2: not JSON .*torn or incomplete.*sed -i '2d'"):
        read_log(path)
    # a first line torn, then a run: the torn part is skipped, the run is read
    path = tmp_path / "first_torn.ndjson"
    path.write_text("\n".join([_line(7)[:25], _line(0), _line(1)]) + "\n")
    with caplog.at_level(logging.WARNING):
        assert len(read_log(path)[0]["step_id"]) == 2
    assert "torn end of an interrupted run" in caplog.text
    # the only line, torn mid-record: a killed writer's log, dropped with a warning
    path = tmp_path / "only_torn.ndjson"
    path.write_text(_line(0)[:30])
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(InferError, match=r"holds no log lines$"):
        read_log(path)
    assert "dropped the torn last line" in caplog.text
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"")
    with pytest.raises(InferError, match=r"holds no log lines \(it is empty\)"):
        read_log(empty)
