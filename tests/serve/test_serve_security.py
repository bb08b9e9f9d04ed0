"""TLS with a self-signed certificate made here, and bearer-token authentication."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _server_proc import ServerProcess

from kinodb.remote import AuthenticationError, KinoClient, RemoteError, ServerUnavailableError
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed; it makes the test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secure_server(main_kdb: Path, certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:  # fmt: skip
    cert, key = certificate
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "KINODB_TOKEN"}
    proc = ServerProcess(
        [str(main_kdb), "--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file)],
        env=env,
    )
    yield proc
    assert proc.stop() == 0


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KINODB_TOKEN", raising=False)


def test_startup_line_says_tls_and_auth(secure_server: ServerProcess) -> None:
    assert "[TLS, token auth;" in secure_server.stdout[-1]


def test_tls_and_token_work(secure_server: ServerProcess, certificate: tuple[Path, Path]) -> None:
    with KinoClient(secure_server.addr, token=TOKEN, tls_ca=certificate[0]) as client:
        assert client.server_info()["num_episodes"] == 20
        assert len(client.get_batch(3, seed=1)) == 3
        assert len(list(client.stream_windows(4, num_batches=2, seed=1))) == 2
    with KinoClient(secure_server.addr, token=TOKEN, tls_ca=certificate[0].read_bytes()) as client:
        assert client.get_meta(0)["num_frames"] == 8


def test_missing_or_wrong_token_is_refused(
    secure_server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    for token, why in ((None, "no bearer token sent"), ("wrong", "wrong bearer token")):
        with KinoClient(secure_server.addr, token=token, tls_ca=certificate[0]) as client:
            with pytest.raises(AuthenticationError, match=f"authentication failed: {why}"):
                client.server_info()
            with pytest.raises(PermissionError):
                client.get_batch(2)
            with pytest.raises(AuthenticationError):
                next(client.stream_batches(2, num_batches=1))
    with grpc.secure_channel(
        secure_server.addr, grpc.ssl_channel_credentials(certificate[0].read_bytes())
    ) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.KinoServiceStub(ch).GetMeta(pb.MetaRequest(position=0), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_from_the_environment(secure_server: ServerProcess, certificate: tuple[Path, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("KINODB_TOKEN", TOKEN)
    with KinoClient(secure_server.addr, tls_ca=certificate[0]) as client:
        assert client.server_info()["num_sources"] == 1


def test_plaintext_or_untrusted_clients_cannot_talk_to_tls(
    secure_server: ServerProcess, tmp_path: Path
) -> None:
    with (
        KinoClient(secure_server.addr, token=TOKEN, timeout=5) as client,
        pytest.raises(ServerUnavailableError),
    ):
        client.server_info()
    other = tmp_path / "other.pem"  # a CA that did not sign the server's certificate
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
         "-keyout", str(tmp_path / "k.pem"), "-out", str(other)], check=True, capture_output=True,
    )  # fmt: skip
    with (
        KinoClient(secure_server.addr, token=TOKEN, tls_ca=other, timeout=5) as client,
        pytest.raises(RemoteError),
    ):
        client.server_info()


def test_server_token_from_the_environment(main_kdb: Path) -> None:
    env = dict(os.environ, KINODB_TOKEN="from-env")
    proc = ServerProcess([str(main_kdb)], env=env)
    try:
        assert "[plaintext, token auth;" in proc.stdout[-1]
        with KinoClient(proc.addr, token="from-env") as client:
            assert client.server_info()["num_episodes"] == 20
        with KinoClient(proc.addr, token="nope") as client, pytest.raises(AuthenticationError):
            client.query("success = true")
    finally:
        assert proc.stop() == 0


def test_a_wrong_tls_file_is_named_in_one_line(
    main_kdb: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    other_key = tmp_path / "other-key.pem"  # a valid key that does not belong to the certificate
    subprocess.run(["openssl", "genrsa", "-out", str(other_key), "2048"], check=True, capture_output=True)
    cases = [(main_kdb, key, str(main_kdb)), (cert, other_key, str(cert))]
    for bad_cert, bad_key, named in cases:
        run = subprocess.run(
            [sys.executable, "-m", "kinodb._cli.serve", str(main_kdb), "--port", "0",
             "--tls-cert", str(bad_cert), "--tls-key", str(bad_key)],
            capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr  # no gRPC core log lines
        assert named in lines[0] and "do not load as a PEM certificate chain and its private key" in lines[0]
        assert "port is in use" not in lines[0]


def test_an_encrypted_or_missing_tls_file_is_named(
    main_kdb: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    encrypted = tmp_path / "enc.pem"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
                   check=True, capture_output=True)  # fmt: skip
    missing = tmp_path / "nofile.pem"
    for bad_key, message in (
        (encrypted, f"the TLS key {encrypted} is encrypted, and gRPC cannot ask for its passphrase"),
        (missing, f"{missing}: No such file or directory"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "kinodb._cli.serve", str(main_kdb), "--port", "0",
             "--tls-cert", str(cert), "--tls-key", str(bad_key)],
            capture_output=True, text=True, timeout=60, env=_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], run.stderr


def test_a_busy_port_is_one_line_without_an_errno(main_kdb: Path) -> None:
    first = ServerProcess([str(main_kdb)])
    try:
        port = first.addr.rsplit(":", 1)[1]
        run = subprocess.run(
            [sys.executable, "-m", "kinodb._cli.serve", str(main_kdb), "--port", port],
            capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [
            f"kino-serve: error: cannot listen on 127.0.0.1:{port}: the port is in use or the address is not "
            "one of this machine's; choose another --port or --bind"
        ]
    finally:
        assert first.stop() == 0


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("KINODB_TOKEN", "GRPC_VERBOSITY")}
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def test_tokens_are_stripped_as_the_server_strips_them(
    secure_server: ServerProcess, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with KinoClient(secure_server.addr, token=f"  {TOKEN}\n", tls_ca=certificate[0]) as client:
        assert client.server_info()["num_episodes"] == 20  # as read from a token file
    monkeypatch.setenv("KINODB_TOKEN", f"{TOKEN}\r\n")
    with KinoClient(secure_server.addr, tls_ca=certificate[0]) as client:
        assert client.server_info()["num_episodes"] == 20
    with pytest.raises(ValueError, match="the token holds characters a gRPC header cannot carry"):
        KinoClient(secure_server.addr, token="two\nlines", tls_ca=certificate[0])
    monkeypatch.setenv("KINODB_TOKEN", "tab\tinside")
    with pytest.raises(ValueError, match=r"\$KINODB_TOKEN holds characters a gRPC header cannot carry"):
        KinoClient(secure_server.addr, tls_ca=certificate[0])


def test_the_clear_text_warning_is_a_kino_serve_line(main_kdb: Path) -> None:
    env = dict(_env(), KINODB_TOKEN="from-env")
    proc = ServerProcess([str(main_kdb), "--bind", "0.0.0.0"], env=env)
    assert proc.stop() == 0
    assert proc.stderr.strip().splitlines() == [
        "kino-serve: warning: the bearer token travels in clear text: serve TLS (--tls-cert/--tls-key) off "
        "loopback"
    ]
