"""``kino-serve`` / ``kino serve``: startup, shutdown on signals, and usage errors."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from _server_proc import ServerProcess

from kinodb._cli import main as kino_main
from kinodb._cli import serve as kino_serve
from kinodb.remote import KinoClient


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
