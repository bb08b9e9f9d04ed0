"""What a client checks before sending anything, and what it says when it cannot connect."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kinodb.remote import KinoClient, ServerUnavailableError
from kinodb.serve import _errors


@pytest.fixture
def nowhere() -> str:
    """``127.0.0.1:PORT`` where nothing listens (a port just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_a_refused_connection_says_to_start_the_server_or_check_the_address(nowhere: str) -> None:
    with KinoClient(nowhere, timeout=10) as client, pytest.raises(ServerUnavailableError) as err:
        client.server_info()
    text = str(err.value)
    assert text.startswith(f"server {nowhere}: server unavailable: ") and "Connection refused" in text
    assert text.endswith(
        "; nothing listens at that address: start kino-serve there (its startup line, 'kino-serve: "
        "serving ... on HOST:PORT', names the address to connect to), or check the host and port (a "
        "server on another machine takes connections from others only when started with --bind 0.0.0.0)"
    )


@pytest.mark.parametrize(
    "details",
    [
        "errors resolving nosuchhost.invalid:50051: [field:hostname lookup error:address lookup failed "
        "for nosuchhost.invalid:50051: Domain name not found]",  # gRPC's c-ares resolver
        "DNS resolution failed for nosuchhost.invalid:50051: C-ares status is not ARES_SUCCESS",
        "failed to resolve: Name or service not known",  # the native resolver
    ],
)
def test_a_host_name_that_does_not_resolve_says_to_check_it(details: str) -> None:
    assert _errors.unreachable_hint(details).startswith("the host name does not resolve: check the host name")


def test_other_failures_get_no_guess() -> None:
    assert _errors.unreachable_hint("failed to connect to all addresses; last error: Socket closed") == ""


@pytest.mark.parametrize("kql", [123, None, b"success = true", ["success = true"]])
def test_query_text_is_checked_before_sending(nowhere: str, kql: object) -> None:
    # Nothing listens: a request that were sent would fail with ServerUnavailableError.
    with KinoClient(nowhere, timeout=10) as client:
        with pytest.raises(ValueError, match=rf"kql must be a str \(KQL text\), got {type(kql).__name__} "):
            client.query(kql)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"kql_filter must be a str or None \(KQL text\), got int 5"):
            client.get_windows(4, kql_filter=5)  # type: ignore[arg-type]


def test_a_remote_dataset_checks_its_address_when_made() -> None:
    pytest.importorskip("torch")
    from kinodb.remote import KinoRemoteDataset

    with pytest.raises(ValueError, match=r"the server address 'localhost' has no port; give host:port"):
        KinoRemoteDataset("localhost", batch_size=8)
    with pytest.raises(ValueError, match=r"the server address 'grpc://h:1' has a URL scheme"):
        KinoRemoteDataset("grpc://h:1", batch_size=8, windows={"obs_horizon": 2})
    KinoRemoteDataset("localhost:50051", batch_size=8)  # nothing is dialled yet


def test_an_unreadable_tls_ca_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"tls_ca names the PEM file of the CA that signed the server's"
    ):
        KinoClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
