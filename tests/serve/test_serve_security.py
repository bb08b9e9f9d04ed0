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

from _server_proc import ServerProcess, self_signed_certificate
from kinodb.errors import FormatError
from kinodb.remote import AuthenticationError, KinoClient, RemoteError, ServerUnavailableError
from kinodb.serve import KinoServer
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


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
            f"kino-serve: error: cannot listen on 127.0.0.1:{port}: the port is in use (another server or "
            "program listens there); choose another --port"
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


def _kino_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kinodb._cli.serve", *args], capture_output=True, text=True,
                          timeout=30, env=env or _env(), stdin=subprocess.DEVNULL)  # fmt: skip


def test_a_token_no_header_can_carry_is_refused_at_startup(main_kdb: Path, tmp_path: Path) -> None:
    cases = {
        "utf8": ("pässwörd\n", "holds the non-ASCII character 'ä' at position 1"),
        "two-lines": ("line1\nline2\n", "holds a line break (it has 2 lines) at position 5"),
        "tab": ("a\tb", "holds a tab at position 1"),
        "blank": ("  \n", "is empty"),
    }
    for name, (text, says) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        run = _kino_serve(str(main_kdb), "--port", "0", "--token-file", str(path))
        assert run.returncode == 2 and run.stdout == "", run.stdout
        assert f"kino-serve: error: --token-file {path} {says}" in run.stderr
        assert "write the token in it as one line of printable ASCII" in run.stderr
    with pytest.raises(ValueError, match="the token holds a line break"):
        KinoServer(main_kdb, port=0, token="two\nlines")


def test_a_set_but_blank_or_unsendable_token_variable_is_a_usage_error(main_kdb: Path) -> None:
    for value, says in (
        ("   ", "$KINODB_TOKEN is set but blank; set it to the token, or unset it to serve without authentication"),
        ("caf\u00e9", "$KINODB_TOKEN holds the non-ASCII character 'é' at position 3, which a gRPC header cannot carry"),
    ):  # fmt: skip
        run = _kino_serve(str(main_kdb), "--port", "0", env=dict(_env(), KINODB_TOKEN=value))
        assert run.returncode == 2 and run.stdout == "", run.stdout
        assert f"kino-serve: error: {says}" in run.stderr


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def ip_only_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate whose subjectAltName is 127.0.0.1 alone (its common name,
    which name checks of the call's host ignore, is localhost)."""
    root = tmp_path_factory.mktemp("tls-ip")
    cert, key = root / "cert.pem", root / "key.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def test_a_certificate_for_other_names_is_a_connection_error_not_a_token_one(
    main_kdb: Path, ip_only_certificate: tuple[Path, Path], secure_server: ServerProcess,
    certificate: tuple[Path, Path],
) -> None:  # fmt: skip
    cert, key = ip_only_certificate
    with KinoServer(main_kdb, bind="localhost", port=0, tls_cert=cert, tls_key=key, token=TOKEN) as server:
        dialled = server.address  # localhost: the certificate names 127.0.0.1 only
        with (
            KinoClient(dialled, token=TOKEN, tls_ca=cert, timeout=10) as client,
            pytest.raises(ServerUnavailableError) as err,
        ):
            client.server_info()
        assert not isinstance(err.value, AuthenticationError)
        assert "authentication failed" not in str(err.value)
        assert "does not name the host this client dials" in str(err.value)
        assert "tls_server_name=" in str(err.value)
    with (
        KinoClient(secure_server.addr, token=TOKEN, tls_ca=certificate[0], tls_server_name="other.example",
                   timeout=10) as client,
        pytest.raises(ServerUnavailableError, match="does not name the host this client dials"),
    ):  # fmt: skip
        client.server_info()


def test_tls_ca_must_hold_a_certificate(
    certificate: tuple[Path, Path], main_kdb: Path, tmp_path: Path
) -> None:
    cert, key = certificate
    with pytest.raises(FormatError, match=rf"tls_ca {key} holds no PEM certificate \(it holds a private key"):
        KinoClient("127.0.0.1:50051", tls_ca=key)
    with pytest.raises(FormatError, match=rf"tls_ca {main_kdb} holds no PEM certificate; give the PEM file"):
        KinoClient("127.0.0.1:50051", tls_ca=main_kdb)
    with pytest.raises(FormatError, match=r"tls_ca \(bytes\) holds no PEM certificate"):
        KinoClient("127.0.0.1:50051", tls_ca=b"not a certificate")
    damaged = tmp_path / "damaged.pem"
    lines = cert.read_text().splitlines()
    damaged.write_text("\n".join([lines[0], "AAAA" + lines[1][4:][::-1], *lines[2:]]) + "\n")
    with pytest.raises(FormatError, match=rf"tls_ca {damaged}: its certificate does not load"):
        KinoClient("127.0.0.1:50051", tls_ca=damaged)
    with pytest.raises(FileNotFoundError):
        KinoClient("127.0.0.1:50051", tls_ca=tmp_path / "missing.pem")


def test_tls_mistakes_say_what_to_change(
    secure_server: ServerProcess, server: ServerProcess, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    with (
        KinoClient(secure_server.addr, token=TOKEN, timeout=10) as client,
        pytest.raises(ServerUnavailableError, match=r"if it serves TLS, connect with tls_ca="),
    ):
        client.server_info()
    with (
        KinoClient(server.addr, tls_ca=certificate[0], timeout=10) as client,
        pytest.raises(ServerUnavailableError, match="the server does not speak TLS: connect without tls_ca"),
    ):
        client.server_info()
    other = tmp_path / "other.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", str(tmp_path / "k.pem"), "-out", str(other))  # fmt: skip
    with (
        KinoClient(secure_server.addr, token=TOKEN, tls_ca=other, timeout=10) as client,
        pytest.raises(ServerUnavailableError, match="is not signed by the CA in tls_ca"),
    ):
        client.server_info()


_CLIENT = """
import sys
from kinodb.remote import KinoClient
for addr, ca in ((sys.argv[1], sys.argv[3]), (sys.argv[2], sys.argv[4])):
    try:
        KinoClient(addr, tls_ca=ca, timeout=10).server_info()
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_grpc_core_log_lines_stay_off_a_clients_stderr(
    secure_server: ServerProcess, server: ServerProcess, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", str(tmp_path / "k.pem"), "-out", str(other))  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", _CLIENT, server.addr, secure_server.addr, str(certificate[0]), str(other)],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # gRPC's core would log each failed handshake here
    lines = run.stdout.splitlines()  # kinodb's own errors are raised as ever
    assert len(lines) == 2 and all(line.startswith("ServerUnavailableError ") for line in lines)
    assert "does not speak TLS" in lines[0] and "not signed by the CA in tls_ca" in lines[1]


def _dated_certificate(root: Path, start: str, end: str) -> tuple[Path, Path]:
    """A self-signed certificate valid from ``start`` to ``end`` (YYYYMMDDHHMMSSZ), made by
    ``openssl ca``: ``openssl req`` takes no dates in the past or far future."""
    root.mkdir()
    (root / "ca.cnf").write_text(
        "[ ca ]\ndefault_ca = c\n[ c ]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial.txt\n"
        "default_md = sha256\npolicy = p\n[ p ]\ncommonName = supplied\n"
    )
    (root / "index.txt").write_text("")
    (root / "serial.txt").write_text("01\n")
    key, csr, cert = root / "key.pem", root / "req.csr", root / "cert.pem"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
             "-out", str(csr))  # fmt: skip
    subprocess.run(
        ["openssl", "ca", "-batch", "-notext", "-config", "ca.cnf", "-selfsign", "-keyfile", str(key), "-in",
         str(csr), "-out", str(cert), "-startdate", start, "-enddate", end],
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    return cert, key


def test_an_expired_or_future_certificate_is_warned_of_at_startup(
    main_kdb: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    expired = _dated_certificate(tmp_path / "expired", "20200101000000Z", "20200201000000Z")  # UTCTime
    future = _dated_certificate(tmp_path / "future", "20500101000000Z", "20510101000000Z")  # GeneralizedTime
    for (cert, key), says in (
        (expired, f"kino-serve: warning: the TLS certificate {expired[0]} expired on 2020-02-01 00:00 UTC: "
                  "clients refuse it (CERTIFICATE_VERIFY_FAILED); serve a renewed certificate"),
        (future, f"kino-serve: warning: the TLS certificate {future[0]} is not valid before 2050-01-01 00:00 UTC"),
        (certificate, None),
    ):  # fmt: skip
        proc = ServerProcess([str(main_kdb), "--tls-cert", str(cert), "--tls-key", str(key)], env=_env())
        assert proc.stop() == 0
        warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
        assert warnings == ([] if says is None else [warnings[0]]), proc.stderr
        if says is not None:
            assert warnings[0].startswith(says), proc.stderr


@pytest.fixture(scope="module")
def named_server(
    main_kdb: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    """A TLS server on 127.0.0.1 whose certificate names ``kinodb.test`` alone, and that certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed; it makes the test certificate")
    root = tmp_path_factory.mktemp("tls-named")
    cert, key, token_file = root / "cert.pem", root / "key.pem", root / "token"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=kinodb.test", "-addext", "subjectAltName=DNS:kinodb.test", "-keyout", str(key),
             "-out", str(cert))  # fmt: skip
    token_file.write_text(TOKEN + "\n")
    proc = ServerProcess(
        [str(main_kdb), "--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file)],
        env=_env(),
    )
    yield proc, cert
    assert proc.stop() == 0


def test_the_remote_dataset_checks_the_certificate_against_tls_server_name(
    named_server: tuple[ServerProcess, Path],
) -> None:
    pytest.importorskip("torch", reason="KinoRemoteDataset needs torch")
    from torch.utils.data import DataLoader

    from kinodb.remote import KinoRemoteDataset

    server, cert = named_server
    tls = dict(token=TOKEN, tls_ca=cert, timeout=10)
    ds = KinoRemoteDataset(server.addr, batch_size=5, mode="sequential", tls_server_name="kinodb.test", **tls)
    assert len(ds) == 20  # counted over TLS too
    assert [s["episode_index"] for s in DataLoader(ds, batch_size=None)] == list(range(20))
    dialled = KinoRemoteDataset(server.addr, batch_size=5, **tls)  # checked against 127.0.0.1
    with pytest.raises(ServerUnavailableError, match="does not name the host this client dials"):
        len(dialled)
    with pytest.raises(ServerUnavailableError, match="does not name the host this client dials"):
        next(iter(dialled))
