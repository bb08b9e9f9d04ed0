"""Runners that start in the same second: each gets a log file of its own, and a file whose
lines two runners wrote at once is refused by read_log (and ingest), not split into bogus runs."""

from __future__ import annotations

import datetime
import json
import os
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

from kinodb.infer import InferError, Runner, _logread, load_model, read_log, resolve_log_path, telemetry

STAMP = "2025-06-01_12-00-00"


class _Frozen(datetime.datetime):
    """A clock stopped at `STAMP`: every runner starts in the same second."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=tz)


@pytest.fixture
def same_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_dt", types.SimpleNamespace(datetime=_Frozen, timezone=datetime.timezone))
    monkeypatch.delenv("KINFER_LOG_UUID", raising=False)


def _line(step: int) -> str:
    return json.dumps({"step_id": step, "t_us": 1_750_000_000_000_000 + 1000 * step, "joint_angles": [0.5, step],
                       "output": [step, -step]})  # fmt: skip


@pytest.mark.usefixtures("same_second")
def test_runners_on_threads_started_in_one_second_log_to_files_of_their_own(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    folder = tmp_path / "logs"
    start = threading.Barrier(2)
    stats: dict[int, dict[str, Any]] = {}

    def arm(seed: int) -> None:
        runner = Runner(load_model(built.path), Served(built, seed).provider, rate_hz=1000, max_steps=60,
                        log_path=folder)  # fmt: skip
        start.wait()
        stats[seed] = runner.run()

    threads = [threading.Thread(target=arm, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = sorted(s["log_path"] for s in stats.values())
    assert paths == [str(folder / f"{STAMP}.ndjson"), str(folder / f"{STAMP}_1.ndjson")]
    assert sorted(p.name for p in folder.iterdir()) == [f"{STAMP}.ndjson", f"{STAMP}_1.ndjson"]
    for path in paths:
        runs = read_log(path)
        assert len(runs) == 1
        np.testing.assert_array_equal(runs[0]["step_id"], np.arange(60))


@pytest.mark.usefixtures("same_second")
def test_a_time_named_file_another_process_created_is_not_appended_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "logs"
    monkeypatch.setenv("KINFER_LOG_PATH", str(folder))
    folder.mkdir()
    (folder / f"{STAMP}.ndjson").write_text(_line(0) + "\n")  # another process's run, this second
    first, second = resolve_log_path(None), resolve_log_path(None)
    assert (first, second) == (str(folder / f"{STAMP}_1.ndjson"), str(folder / f"{STAMP}_2.ndjson"))
    for taken in (first, second):  # created here, so no later runner takes the name
        assert taken is not None and Path(taken).read_bytes() == b""
    assert (folder / f"{STAMP}.ndjson").read_text() == _line(0) + "\n"
    # A name the user chose is appended to, as kinfer does: it is not created here.
    monkeypatch.setenv("KINFER_LOG_UUID", "arm")
    assert resolve_log_path(None) == resolve_log_path(folder) == str(folder / "arm.ndjson")
    assert not (folder / "arm.ndjson").exists()


def test_a_time_named_file_that_cannot_be_created_names_the_folder(
    tmp_path: Path, same_second: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    real_open = os.open

    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        if str(path).startswith(str(folder)):  # as in a folder the user may not write to
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InferError) as err:
        resolve_log_path(folder)
    assert (
        f"log_path {folder}: cannot create the log file {folder / STAMP}.ndjson (Permission denied)"
        in str(err.value)
    )


INTERLEAVED = (
    [_line(k) for k in range(5)]  # an earlier run, appended to the file before
    + [_line(k) for k in range(4) for _ in range(2)]  # two runners at once: 0, 0, 1, 1, 2, 2, 3, 3
)
BATCHED = (  # two runners whose lines came out in batches
    [_line(k) for k in range(10)] + [_line(k) for k in range(10)]
    + [_line(k) for k in range(10, 15)] + [_line(k) for k in range(10, 15)]
)  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "line", "message", "start"),
    [
        (INTERLEAVED, 9, "step_id 1 follows step_id 1", 7),
        (BATCHED, 26, "step_id 10 follows step_id 14", 11),
    ],
)
def test_interleaved_runs_are_refused_naming_the_line_whatever_the_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], line: int, message: str, start: int
) -> None:
    path = tmp_path / "shared.ndjson"
    path.write_text("\n".join(lines) + "\n")
    for size in (64, 300, 1 << 21):
        monkeypatch.setattr(_logread, "BLOCK_BYTES", size)
        with pytest.raises(InferError) as err:
            read_log(path)
        text = str(err.value)
        assert text.startswith(f"{path}: line {line}: {message}: a run's step_id starts at 0 and only grows, "
                               f"so the lines of two or more runs are interleaved here, from line {start} or "
                               "before (runners wrote to this file at the same time)"), (size, text)  # fmt: skip
        assert f"head -n {start - 1} {path} > before.ndjson" in text
        assert "give each runner a log of its own: a folder log_path (or $KINFER_LOG_PATH)" in text


def test_consecutive_runs_still_split_where_step_id_goes_back_to_0(tmp_path: Path) -> None:
    path = tmp_path / "appended.ndjson"
    lines = [_line(0), _line(0), _line(0)] + [_line(k) for k in range(4)] + [_line(k) for k in (0, 1, 5, 9)]
    path.write_text("\n".join(lines) + "\n")
    runs = read_log(path)  # runs of one step each, then a run, then one with dropped lines
    assert [r["step_id"].tolist() for r in runs] == [[0], [0], [0], [0, 1, 2, 3], [0, 1, 5, 9]]


def test_kino_ingest_of_a_folder_with_interleaved_runs_exits_1_and_writes_nothing(
    kino: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / f"{STAMP}.ndjson").write_text("\n".join(INTERLEAVED) + "\n")
    out = tmp_path / "out.kdb"
    assert kino("ingest", folder, "--format", "kinfer-ndjson", "-o", out, "-q") == 1
    err = capsys.readouterr().err
    assert f"{folder / STAMP}.ndjson: line 9: step_id 1 follows step_id 1" in err and "interleaved" in err
    assert not out.exists()
