"""A server that dies or stops during a call: the client says the connection was lost (or
the server stopped), never that it cannot connect, and gives no TLS advice (real
``kino-serve`` processes on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _server_proc import ServerProcess
from kinodb.remote import KinoClient, ServerUnavailableError
from kinodb.serve._errors import connection_hint, connection_lost

LOST = "the connection to the server was lost during the call"


def _assert_lost(err: ServerUnavailableError) -> None:
    text = str(err)
    assert LOST in text and "crashed, was killed or restarted" in text and "server's log" in text, text
    assert "cannot connect" not in text and "tls_ca" not in text and "TLS" not in text, text


def test_a_server_killed_during_a_stream_is_a_lost_connection(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb)])
    try:
        with KinoClient(proc.addr, timeout=10) as client:
            stream = client.stream_windows(8, obs_horizon=2, include_images=True, seed=3)
            for _ in range(3):
                next(stream)
            proc.proc.kill()
            proc.proc.wait(10)
            with pytest.raises(ServerUnavailableError) as caught:
                for _ in stream:
                    pass
        _assert_lost(caught.value)
    finally:
        proc.proc.kill()
        proc.proc.wait(10)


def test_a_server_killed_during_a_unary_call_is_a_lost_connection(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb)])
    try:
        with KinoClient(proc.addr, timeout=30) as client:
            assert client.server_info()["num_episodes"] == 20  # the connection is up
            os.kill(proc.proc.pid, signal.SIGSTOP)  # the next call is sent and never answered
            out: dict[str, Any] = {}

            def call() -> None:
                try:
                    client.get_batch(4, include_images=True, seed=1)
                except Exception as exc:  # looked at below
                    out["error"] = exc

            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            time.sleep(0.5)
            proc.proc.kill()  # ends a stopped process too
            proc.proc.wait(10)
            thread.join(20)
            assert not thread.is_alive()
        assert isinstance(out.get("error"), ServerUnavailableError), out
        _assert_lost(out["error"])
    finally:
        proc.proc.kill()
        proc.proc.wait(10)


def test_a_stream_cancelled_by_a_stopping_server_says_the_server_stopped(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb), "--grace", "0.5"])
    with KinoClient(proc.addr, timeout=10) as client:
        stream = client.stream_windows(4, obs_horizon=2, seed=3)  # endless
        next(stream)
        proc.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ServerUnavailableError) as caught:
            for _ in stream:
                pass
    assert proc.stop(None) == 0
    text = str(caught.value)
    assert "the server stopped during the call" in text and "--grace" in text, text
    assert "cannot connect" not in text and "tls_ca" not in text and LOST not in text, text


def test_the_tls_hint_is_for_a_connection_that_never_opened() -> None:
    # What gRPC says for a plaintext client dialling a TLS server, and for a call whose
    # server went away under it.
    at_connect = (
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
    )
    assert "tls_ca=" in connection_hint(at_connect, tls=False)
    assert not connection_lost(at_connect)
    for details, received in (("Stream removed (Socket closed)", False), ("Socket closed", True)):
        assert connection_lost(details, received=received)
        assert connection_hint(details, tls=False, received=received) == ""
    assert not connection_lost("Cancelling all calls", received=True)  # the server's own stop


def test_a_client_finds_a_restarted_server_soon_after_a_long_outage(main_kdb: Path) -> None:
    """After a 20 s outage (during which every call failed), the same client works again
    within a few seconds of the server's restart on the same port, not after gRPC's
    reconnect backoff has grown to many seconds."""
    proc = ServerProcess([str(main_kdb)])
    port = proc.addr.rsplit(":", 1)[1]
    try:
        with KinoClient(proc.addr, timeout=10) as client:
            assert client.server_info()["num_episodes"] == 20
            proc.proc.kill()
            proc.proc.wait(10)
            down = time.monotonic()
            while time.monotonic() - down < 20:
                with pytest.raises(ServerUnavailableError):
                    client.server_info()
                time.sleep(0.25)
            proc = ServerProcess([str(main_kdb), "--port", port])
            back = time.monotonic()
            while True:
                try:
                    client.server_info()
                    break
                except ServerUnavailableError:
                    assert time.monotonic() - back < 5, "the client did not find the restarted server in 5 s"
                    time.sleep(0.05)
    finally:
        proc.proc.kill()
        proc.proc.wait(10)
