"""A stalled server, more streams than the server serves, and shutdown under pressure:
each ends in a clear error or a prompt exit, never a hang (real ``kino-serve`` processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _server_proc import SRC, ServerProcess
from kinodb.errors import KinodbError
from kinodb.remote import KinoClient, ServerBusyError, ServerTimeoutError
from kinodb.serve.client import KEEPALIVE_OPTIONS as CLIENT_KEEPALIVE
from kinodb.serve.server import KEEPALIVE_OPTIONS as SERVER_KEEPALIVE


def _within(seconds: float, fn: Any) -> Any:
    """``fn()`` in a thread; fail (instead of hanging) if it takes longer than ``seconds``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def stoppable(main_kdb: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess([str(main_kdb)])
    yield proc
    os.kill(proc.proc.pid, signal.SIGCONT)
    assert proc.stop() == 0


def test_a_stalled_server_ends_a_stream_after_the_timeout(stoppable: ServerProcess) -> None:
    with KinoClient(stoppable.addr, timeout=2) as client:
        stream = client.stream_windows(64, obs_horizon=2, batches_per_message=1)  # endless
        assert len(next(stream)["index"]) == 64
        os.kill(stoppable.proc.pid, signal.SIGSTOP)
        last = time.monotonic()

        def drain() -> None:
            nonlocal last
            for _ in stream:  # what was in flight before the stall still arrives
                last = time.monotonic()

        with pytest.raises(ServerTimeoutError) as err:
            _within(60, drain)
        waited = time.monotonic() - last
        assert 1.5 < waited < 8, waited
        assert isinstance(err.value, TimeoutError) and isinstance(err.value, KinodbError)
        assert f"server {stoppable.addr}: sent no stream message within 2 s" in str(err.value)
        assert err.value.code == "DEADLINE_EXCEEDED"
        with pytest.raises(ServerTimeoutError, match=r"did not answer within 2 s \(the client's timeout\)"):
            _within(30, client.server_info)


def test_a_slow_reader_is_not_a_stalled_server(server: ServerProcess) -> None:
    with KinoClient(server.addr, timeout=1) as client:
        got = []
        for batch in client.stream_windows(8, num_batches=3, batches_per_message=1):
            got.append(batch["index"])
            time.sleep(1.5)  # longer than the timeout, between messages
        assert len(got) == 3


def test_keepalive_pings_are_within_what_the_server_takes() -> None:
    client, server = dict(CLIENT_KEEPALIVE), dict(SERVER_KEEPALIVE)
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_time_ms"] > 300_000  # what servers before these settings take
    assert client["grpc.keepalive_permit_without_calls"] == 0  # those refuse pings without calls
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_a_stream_beyond_workers_is_refused_at_once(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb), "--workers", "2"])
    try:
        with KinoClient(proc.addr, timeout=30) as client:
            open_streams = [client.stream_windows(4, seed=k) for k in range(2)]
            for stream in open_streams:
                assert len(next(stream)["index"]) == 4
            start = time.monotonic()
            with pytest.raises(ServerBusyError) as err:
                _within(20, lambda: next(client.stream_windows(4)))
            assert time.monotonic() - start < 10  # refused, not left waiting for the timeout
            assert err.value.code == "RESOURCE_EXHAUSTED"
            assert "2 streams are open, as many as it serves at once (kino-serve --workers 2" in str(
                err.value
            )
            with pytest.raises(ServerBusyError):
                _within(20, lambda: next(client.stream_batches(2)))
            assert _within(20, client.server_info)["num_episodes"] == 20  # other calls still served
            open_streams.pop().close()  # a stream that ends frees its place
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert len(_within(20, lambda: next(client.stream_windows(4)))["index"]) == 4
                    break
                except ServerBusyError:  # the server sees the cancellation a moment later
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
    finally:
        assert proc.stop() == 0


def test_a_second_signal_stops_at_once(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb), "--grace", "120"])
    try:
        client = KinoClient(proc.addr, timeout=30)
        stream = client.stream_windows(8, batches_per_message=1)  # endless: only a cancel ends it
        next(stream)
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(1)
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.stop(sig=None, timeout=20) == 0
        assert time.monotonic() - start < 15
        assert proc.stdout[-2:] == [
            "kino-serve: stopping; letting calls in flight finish (up to 120 s; Ctrl-C again stops at once)",
            "kino-serve: stopped, calls in flight cancelled",
        ]
        stream.close()
        client.close()
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()


def test_a_closed_stdout_does_not_change_the_exit_code(main_kdb: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kinodb._cli.serve", str(main_kdb), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("kino-serve: serving ")
        proc.stdout.close()  # the reader goes away; the server keeps serving
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
