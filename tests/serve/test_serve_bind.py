"""Where a server listens: every address a name stands for, IPv6 in brackets, and errors that
say what is wrong (real servers and sockets on this machine's loopback)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _server_proc import ServerProcess
from kinodb._cli import serve as kino_serve
from kinodb.remote import KinoClient
from kinodb.serve import AddressError, KinoServer

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


def _listener(host: str, port: int = 0) -> socket.socket:
    """A socket listening on ``host:port``, as another program's server would."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4)
    return sock


@pytest.fixture
def taken_ipv4() -> Iterator[int]:
    """A port another program listens on at 127.0.0.1 only (free on ::1 where there is IPv6)."""
    for _ in range(20):
        sock = _listener("127.0.0.1")
        port = sock.getsockname()[1]
        if not _ipv6_loopback() or _free("::1", port):
            break
        sock.close()
    try:
        yield port
    finally:
        sock.close()


def _free(host: str, port: int) -> bool:
    try:
        _listener(host, port).close()
        return True
    except OSError:
        return False


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KINODB_TOKEN", "GRPC_VERBOSITY")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "kinodb._cli.serve", *args], capture_output=True, text=True,
                          timeout=30, env=env, stdin=subprocess.DEVNULL)  # fmt: skip


def test_localhost_is_refused_when_one_of_its_addresses_is_taken(main_kdb: Path, taken_ipv4: int) -> None:
    run = _run(str(main_kdb), "--bind", "localhost", "--port", str(taken_ipv4))
    assert run.returncode == 1, run.stdout
    assert run.stdout == ""  # never announced as serving
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(
        f"kino-serve: error: cannot listen on 127.0.0.1:{taken_ipv4} (one of the addresses localhost stands for: "
    )
    assert lines[0].endswith(
        "the port is in use (another server or program listens there); choose another --port"
    )
    with pytest.raises(AddressError) as err:
        KinoServer(main_kdb, bind="localhost", port=taken_ipv4).start()
    assert err.value.errno == errno.EADDRINUSE


@needs_ipv6
def test_localhost_listens_on_both_loopbacks_and_frees_them_on_failure(main_kdb: Path) -> None:
    with KinoServer(main_kdb, bind="localhost", port=0) as server:
        for addr in (server.address, f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
            with KinoClient(addr, timeout=10) as client:
                assert client.server_info()["num_episodes"] == 20
    taken = _listener("::1")
    port = taken.getsockname()[1]
    try:
        with pytest.raises(AddressError, match=rf"cannot listen on \[::1\]:{port} \(one of the addresses"):
            KinoServer(main_kdb, bind="localhost", port=port).start()
        assert _free("127.0.0.1", port)  # nothing was left listening on the address that was free
    finally:
        taken.close()


@needs_ipv6
def test_an_ipv6_address_in_brackets(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb), "--bind", "[::1]"])
    try:
        assert proc.addr.startswith("[::1]:")
        with KinoClient(proc.addr, timeout=10) as client:
            assert client.server_info()["num_episodes"] == 20
    finally:
        assert proc.stop() == 0


def test_bind_addresses_with_a_port_or_nothing_are_usage_errors(
    main_kdb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bind, says in (
        ("127.0.0.1:5000", "the bind address '127.0.0.1:5000' holds a port: give the address alone and the "
                           "port apart (kino-serve --bind 127.0.0.1 --port 5000"),
        ("[::1]:5000", "the bind address '[::1]:5000' holds a port"),
        ("", "the bind address is empty"),
        ("fe80::zz", "the bind address 'fe80::zz' is not an IP address or a host name"),
    ):  # fmt: skip
        assert kino_serve.main([str(main_kdb), "--port", "0", "--bind", bind]) == 2
        err = capsys.readouterr().err
        assert says in err, err
        assert "port is in use" not in err


def test_an_address_of_another_machine_or_an_unknown_name(main_kdb: Path) -> None:
    with pytest.raises(AddressError, match=r"192\.0\.2\.1 is not an address of this machine") as err:
        KinoServer(main_kdb, bind="192.0.2.1", port=0).start()  # TEST-NET-1: never local
    assert err.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(
        AddressError, match=r"cannot listen on no-such-host\.invalid: the name does not resolve"
    ):
        KinoServer(main_kdb, bind="no-such-host.invalid", port=0).start()
