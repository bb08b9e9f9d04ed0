"""Stopping a server always ends, even when a call in flight never returns: `KinoServer.stop`
waits a bounded time after cancelling calls, and ``kino-serve`` then exits without waiting for
the stuck handler (real gRPC servers; the stuck call is a handler blocked on an event)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _server_proc import SRC
from kinodb.remote import KinoClient, ServerTimeoutError
from kinodb.serve import server as server_module
from kinodb.serve._backend import Backend
from kinodb.serve.server import KinoServer


def test_stop_with_an_open_stream_ends_and_closes_the_source(main_kdb: Path) -> None:
    server = KinoServer(main_kdb, port=0).start()
    with KinoClient(server.address, timeout=10) as client:
        stream = client.stream_windows(8, batches_per_message=1)  # endless: only a cancel ends it
        next(stream)
        start = time.monotonic()
        server.stop(grace=0.5)
        assert time.monotonic() - start < server_module.STOP_WAIT_AFTER_CANCEL
        assert not server.stop_incomplete
        assert not [t for t in threading.enumerate() if t.name.startswith(server._threads + "_")]
        assert server._source._mm is None  # type: ignore[union-attr]
        stream.close()


def test_stop_gives_up_on_a_call_that_never_returns(
    main_kdb: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release, entered = threading.Event(), threading.Event()

    def stuck(self: Backend) -> object:
        entered.set()
        release.wait(60)  # a read that hangs (a dead network mount, say)
        raise RuntimeError("released")

    monkeypatch.setattr(Backend, "info", stuck)
    monkeypatch.setattr(server_module, "STOP_WAIT_AFTER_CANCEL", 1.0)
    server = KinoServer(main_kdb, port=0).start()
    try:
        with KinoClient(server.address, timeout=1) as client, pytest.raises(ServerTimeoutError):
            client.server_info()
        assert entered.wait(10)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="kinodb"):
            server.stop(grace=0.2)
        assert time.monotonic() - start < 5  # 0.2 s of grace, then 1 s of waiting for the handler
        assert server.stop_incomplete
        assert "calls in flight had not ended 1 s after they were cancelled" in caplog.text
        assert f"handler threads still running: {server._threads}_0" in caplog.text
        assert server._source._mm is not None  # type: ignore[union-attr]  # the stuck handler may read it
    finally:
        release.set()


def test_kino_serve_exits_although_a_call_never_returns(main_kdb: Path) -> None:
    program = textwrap.dedent(
        """
        import sys, threading
        from kinodb.serve import server
        from kinodb.serve._backend import Backend
        from kinodb._cli import serve

        server.STOP_WAIT_AFTER_CANCEL = 1.0
        Backend.info = lambda self: threading.Event().wait()  # a read that never returns
        sys.argv = ["kino-serve", *sys.argv[1:]]
        serve.entry()
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", program, str(main_kdb), "--port", "0", "--grace", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("kino-serve: serving "), ready
        addr = ready.split(" on ", 1)[1].split()[0]
        with KinoClient(addr, timeout=1) as client, pytest.raises(ServerTimeoutError):
            client.server_info()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # without the bound: never
        assert proc.returncode == 0, err
        assert out.splitlines()[-1] == "kino-serve: stopped"
        assert "kino-serve: warning: calls in flight had not ended 1 s after they were cancelled" in err
    finally:
        if proc.poll() is None:
            proc.kill()


# kino-serve with a Ctrl-C that lands around the server's start, just before the server's
# own stop handling takes over (here: where `_serve` makes its stop event). Raised once gRPC's
# threads run, it would leave them running unstopped, and the process could never exit.
_CTRL_C_AS_IT_STARTS = textwrap.dedent(
    """
    import os, signal, sys, threading, types
    from kinodb._cli import serve

    def event():
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode
        return threading.Event()

    serve.threading = types.SimpleNamespace(Event=event)
    sys.exit(serve.main(sys.argv[1:]))
    """
)


def _serve_until_it_exits(program: str, main_kdb: Path, cwd: Path) -> tuple[int, str, str]:
    """Run ``program`` on ``main_kdb``: its exit code, stdout and stderr; a failure if it
    has not exited 30 s on."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", program, str(main_kdb), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"kino-serve did not exit after its Ctrl-C: {out!r} {err!r}")
    return proc.returncode, out, err


def test_ctrl_c_as_kino_serve_starts_never_leaves_it_running(main_kdb: Path, tmp_path: Path) -> None:
    code, _, err = _serve_until_it_exits(_CTRL_C_AS_IT_STARTS, main_kdb, tmp_path)
    assert (code, err) == (130, "kino-serve: interrupted\n")  # before it served


# A Ctrl-C that lands the moment gRPC's server has started, before kinodb's server holds it
# (inside `KinoServer.start`): raised there, it would leave a running gRPC server that nothing
# stops, whose teardown then waits forever, and kino-serve would never exit.
_CTRL_C_AS_GRPC_STARTS = textwrap.dedent(
    """
    import os, signal, sys
    from kinodb.serve.server import KinoServer
    from kinodb._cli import serve

    make = KinoServer._grpc_server

    def grpc_server(self):
        server = make(self)
        start = server.start

        def start_then_ctrl_c():
            start()
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode

        server.start = start_then_ctrl_c
        return server

    KinoServer._grpc_server = grpc_server
    sys.exit(serve.main(sys.argv[1:]))
    """
)


def test_ctrl_c_the_moment_grpc_starts_stops_the_server_and_exits(main_kdb: Path, tmp_path: Path) -> None:
    code, out, err = _serve_until_it_exits(_CTRL_C_AS_GRPC_STARTS, main_kdb, tmp_path)
    assert code == 0, err
    assert out.splitlines()[-1] == "kino-serve: stopped"
