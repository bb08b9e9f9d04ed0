"""The telemetry writer: it drains without quiet windows, refuses a pipe nobody reads, and
gives up on a stalled reader at close without leaving a thread or a file open."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import MakePackage

from kinodb.infer import CallableProvider, InferError, NdjsonLogger, Runner, load_model

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")


def _constant(value: np.ndarray) -> Any:
    return lambda *_: value


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kinodb-ndjson-writer"]


def test_a_writer_that_never_gets_a_quiet_window_drains_anyway(tmp_path: Path) -> None:
    path = tmp_path / "busy.ndjson"
    logger = NdjsonLogger(path, [("joint_angles", 3)], 3, capacity=16, flush_every=1, poll_s=0.001)
    logger.quiet_at = 0.0  # the window closed long ago and never opens (ticks too long for it)
    zeros = np.zeros(3, np.float32)
    give_up = time.monotonic() + 30
    try:
        for k in range(200):
            assert logger.record(k, k, 1.0, [zeros, zeros]), f"line {k} dropped with a healthy disk"
            # a producer at the writer's pace: wait (boundedly) while half the ring is waiting
            while logger.lines - logger.written > 8 and time.monotonic() < give_up:
                time.sleep(0.001)
    finally:
        logger.quiet_at = float("inf")
        logger.close()
    assert (logger.written, logger.dropped) == (200, 0)
    assert [json.loads(line)["step_id"] for line in path.read_text().splitlines()] == list(range(200))


@needs_fifo
def test_a_named_pipe_nobody_reads_is_refused_before_the_first_tick(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    fifo = tmp_path / "nobody.ndjson"
    os.mkfifo(fifo)
    sent: list[np.ndarray] = []
    obs = built.random_obs(np.random.default_rng(0))
    provider = CallableProvider(
        **{n: _constant(v) for n, v in obs.items()}, take_action=lambda n, a: sent.append(a)
    )
    runner = Runner(load_model(built.path), provider, rate_hz=100, max_steps=5, log_path=fifo)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["stats"] = runner.run()
        except InferError as exc:
            outcome["error"] = exc

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    loop.join(30)
    try:
        assert not loop.is_alive(), "run() hangs opening a named pipe nobody reads"
    finally:
        if loop.is_alive():  # free the hung open: a reader appears and goes
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            loop.join(30)
    assert "named pipe that no process reads" in str(outcome.get("error"))
    assert sent == [] and not _writers()


@needs_fifo
def test_a_stalled_reader_costs_a_bounded_close_and_leaks_no_thread_or_file(
    make_package: MakePackage, tmp_path: Path
) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open files in /proc/self/fd (Linux)")
    built = make_package()
    fifo = tmp_path / "stalled.ndjson"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a consumer that never reads: the pipe fills
    try:
        import fcntl

        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # fill it after a few lines
    except (ImportError, AttributeError, OSError):
        pass
    obs = built.random_obs(np.random.default_rng(0))
    provider = CallableProvider(**{n: _constant(v) for n, v in obs.items()}, take_action=lambda n, a: None)
    model = load_model(built.path)
    try:
        open_files = len(os.listdir("/proc/self/fd"))
        runs = []
        for _ in range(2):  # the second finds the pipe full from the start
            stats = Runner(model, provider, rate_hz=1000, max_steps=400, log_path=fifo, log_capacity=64).run()
            assert stats["steps"] == 400
            assert stats["dropped_log_lines"] > 0
            assert stats["log_lines"] + stats["dropped_log_lines"] == 400
            assert "took no data" in stats["log_error"]
            for thread in _writers():  # the writer gave up and closed its own file
                thread.join(30)
            assert not _writers()
            assert len(os.listdir("/proc/self/fd")) == open_files
            runs.append(stats["log_lines"])
        received = bytearray()
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(reader)
    whole = received.split(b"\n")[:-1]  # a torn last line, cut where the pipe filled, is not counted
    assert len(whole) == sum(runs) and runs[0] > 0
    assert [json.loads(line)["step_id"] for line in whole] == list(range(runs[0])) + list(range(runs[1]))
