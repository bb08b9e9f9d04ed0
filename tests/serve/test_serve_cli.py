"""``kino-serve`` / ``kino serve``: startup, shutdown on signals, and usage errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _server_proc import SRC, ServerProcess
from kinodb._cli import main as kino_main
from kinodb._cli import serve as kino_serve
from kinodb.errors import EpisodeNotFoundError, QuerySyntaxError
from kinodb.remote import AuthenticationError, InvalidRequestError, KinoClient


def test_sigterm_drains_a_stream_in_flight_and_exits_0(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb), "--grace", "30"])
    assert proc.stdout[-1].startswith(f"kino-serve: serving {main_kdb} (20 episodes, ")
    with KinoClient(proc.addr) as client:
        stream = client.stream_windows(64, num_batches=300, obs_horizon=2, action_horizon=8, seed=3)
        got = [next(stream)]
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the server has begun shutting down with the stream still open
        got.extend(stream)
    assert len(got) == 300 and all(len(b["index"]) == 64 for b in got)
    assert proc.stop(sig=None) == 0  # already signalled
    assert proc.stdout[-2:] == [
        "kino-serve: stopping; letting calls in flight finish (up to 30 s; Ctrl-C again stops at once)",
        "kino-serve: stopped",
    ]


def test_sigint_exits_0(other_kdb: Path) -> None:
    proc = ServerProcess([str(other_kdb)])
    with KinoClient(proc.addr) as client:
        assert client.server_info()["num_episodes"] == 6
    assert proc.stop(signal.SIGINT) == 0
    assert proc.stdout[-1] == "kino-serve: stopped"


@pytest.mark.parametrize("program", [["kinodb._cli.serve"], ["kinodb._cli.main", "serve"]])
def test_sigterm_while_the_stopped_server_exits_changes_nothing(other_kdb: Path, program: list[str]) -> None:
    """``kino-serve`` and ``kino serve`` alike."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", *program, str(other_kdb), "--port", "0", "--grace", "1"]
    for _ in range(5):  # a run where the process had exited before this test sent a signal proves nothing
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("kino-serve: serving ")
            proc.send_signal(signal.SIGTERM)
            lines = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
            assert lines[-1] == "kino-serve: stopped"
            sent = 0
            while proc.poll() is None:  # SIGTERM again and again while the process winds down
                proc.send_signal(signal.SIGTERM)
                sent += 1
                time.sleep(0.001)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        if sent:
            break
    assert sent >= 1


def test_usage_errors(main_kdb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_serve.main([]) == 2
    assert "nothing to serve: give FILE or one or more --source" in capsys.readouterr().err
    assert kino_serve.main([str(main_kdb), "--source", str(main_kdb)]) == 2
    assert "give FILE or --source, not both" in capsys.readouterr().err
    assert kino_serve.main([str(main_kdb), "--tls-cert", str(main_kdb)]) == 2
    assert "give both --tls-cert and --tls-key" in capsys.readouterr().err
    assert kino_serve.main(["--source", f"{main_kdb}:-1"]) == 2
    capsys.readouterr()
    assert kino_serve.main([str(tmp_path / "missing.kdb"), "--port", "0"]) == 1
    assert "missing.kdb: No such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        kino_serve.main([str(main_kdb), "--port", "70000"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        kino_serve.main([str(main_kdb), "--grace", "-1"])
    assert exit_.value.code == 2
    assert "--grace: expected a number of seconds >= 0, got -1" in capsys.readouterr().err
    assert kino_main.main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err


def test_a_busy_port_is_an_error(
    server: ServerProcess, main_kdb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = server.addr.rsplit(":", 1)[1]
    assert kino_serve.main([str(main_kdb), "--port", port]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_kino_serve_subcommand_is_registered() -> None:
    args = kino_main.build_parser().parse_args(["serve", "a.kdb", "--port", "0", "--max-batch", "64"])
    assert (
        args.run is kino_serve.run and args.max_batch == 64 and args.bind == "127.0.0.1" and args.seed == 42
    )


def test_a_wildcard_bind_names_what_it_listens_on_and_where_local_clients_connect(other_kdb: Path) -> None:
    proc = ServerProcess([str(other_kdb), "--bind", "0.0.0.0"])
    port = proc.addr.rsplit(":", 1)[1]
    assert f" on 0.0.0.0:{port} (local clients: 127.0.0.1:{port}) [" in proc.stdout[-1]
    assert proc.addr == f"127.0.0.1:{port}"
    with KinoClient(proc.addr) as client:
        assert client.server_info()["num_episodes"] == 6
    assert proc.stop() == 0


def test_kino_serve_version(capsys: pytest.CaptureFixture[str]) -> None:
    from kinodb import __version__

    with pytest.raises(SystemExit) as exit_:
        kino_serve.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"kino-serve {__version__}"


def test_debug_logs_each_failed_call(main_kdb: Path) -> None:
    def failing_calls(*args: str) -> str:
        proc = ServerProcess(
            [str(main_kdb), *args], env={k: v for k, v in os.environ.items() if k != "KINODB_TOKEN"}
        )
        with KinoClient(proc.addr, timeout=10) as client:
            assert client.server_info()["num_episodes"] == 20
            with pytest.raises(EpisodeNotFoundError):
                client.get_episode(99)
            with pytest.raises(QuerySyntaxError):
                client.query("success = = true")
            with pytest.raises(InvalidRequestError):
                next(client.stream_windows(4, obs_horizon=5000))
        assert proc.stop() == 0
        return proc.stderr

    logged = failing_calls("--debug")
    peer = r"from ipv4:127\.0\.0\.1:\d+"
    for line in (
        rf"kino-serve: kinodb\.v1\.KinoService/GetEpisode {peer} failed: OUT_OF_RANGE: episode 99 out of range",
        rf"kino-serve: kinodb\.v1\.KinoService/Query {peer} failed: INVALID_ARGUMENT: expected a value, got '='",
        rf"kino-serve: kinodb\.v1\.KinoService/StreamBatches {peer} failed: INVALID_ARGUMENT: obs_horizon and",
    ):
        assert re.search(line, logged), logged
    assert "ServerInfo" not in logged  # calls that succeed are not logged
    assert "failed" not in failing_calls()  # only with --debug


def test_debug_logs_refused_calls(main_kdb: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("right")
    proc = ServerProcess([str(main_kdb), "--debug", "--token-file", str(token)])
    with KinoClient(proc.addr, token="wrong", timeout=10) as client, pytest.raises(AuthenticationError):
        client.get_meta(0)
    assert proc.stop() == 0
    assert re.search(
        r"kino-serve: kinodb\.v1\.KinoService/GetMeta from ipv4:127\.0\.0\.1:\d+ refused: UNAUTHENTICATED: "
        r"wrong bearer token",
        proc.stderr,
    ), proc.stderr
