"""What a client sends: its address checked, long KQL taken (or refused before sending, or by
an older server's limit, with the fix), and long error messages brought back whole enough."""

from __future__ import annotations

from pathlib import Path

import pytest

import kinodb
from _server_proc import ServerProcess
from kinodb.errors import QuerySyntaxError
from kinodb.remote import InvalidRequestError, KinoClient
from kinodb.serve import KinoServer
from kinodb.serve import server as server_module
from kinodb.serve._errors import REQUEST_LIMIT, fit_message

LONG = 4_500_000  # characters of a KQL string literal: over gRPC's default 4 MiB for a request


def test_a_long_query_is_answered(server: ServerProcess, main_kdb: Path) -> None:
    text = "x" * LONG
    with KinoClient(server.addr, timeout=120) as client:
        assert client.query(f"task = '{text}'").tolist() == []
        got = client.get_windows(2, kql_filter=f"task = '{text}' OR success = true", seed=1)
        with kinodb.open(main_kdb) as db:
            assert set(got["episode_index"].tolist()) <= set(db.query("success = true").tolist())
        with pytest.raises(QuerySyntaxError) as err:  # its error, quoting the query, comes back too
            client.query(f"task = '{text}' AND")
    with kinodb.open(main_kdb) as db, pytest.raises(QuerySyntaxError) as local:
        db.query(f"task = '{text}' AND")
    assert err.value.position == local.value.position
    lines = str(err.value).split(": ", 1)[1].splitlines()
    assert lines[0] == str(local.value).splitlines()[0] and len(str(err.value)) < 2000
    query, caret = lines[1:3]  # the query around the caret, which stays under the same character
    assert caret.strip() == "^" and query[caret.index("^") - 4 : caret.index("^")] == " AND"


def test_a_request_over_the_limit_is_refused_before_sending(server: ServerProcess) -> None:
    with KinoClient(server.addr) as client:
        too_long = f"task = '{'x' * REQUEST_LIMIT}'"
        with pytest.raises(
            ValueError, match=r"kql is 64\.0 MiB, over the 64\.0 MiB a server takes for a request"
        ):
            client.query(too_long)
        with pytest.raises(ValueError, match=r"kql_filter is 64\.0 MiB, over the 64\.0 MiB"):
            client.get_windows(2, kql_filter=too_long)


def test_a_server_with_a_smaller_request_limit_says_so(
    main_kdb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "REQUEST_LIMIT", 1 << 20)  # as an earlier server's 4 MiB
    with KinoServer(main_kdb, port=0) as server, KinoClient(server.address) as client:
        with pytest.raises(InvalidRequestError) as err:
            client.query(f"task = '{'x' * (2 << 20)}'")
        assert err.value.code == "RESOURCE_EXHAUSTED"
        assert "the request is 2.0 MiB, over the 1.0 MiB the server takes for a request; shorten it" in str(
            err.value
        )
        assert client.query("success = true").tolist() == [0, 3, 6, 9, 12, 15, 18]


def test_status_messages_fit_a_header() -> None:
    for text in ("ä" * 10_000, "x" * 100_000, "line\n" * 5_000):
        fitted = fit_message(text)
        assert len(fitted.encode()) <= 8 << 10 and fitted.endswith("more characters cut)")
    assert fit_message("short\n  query\n  ^\nhint") == "short\n  query\n  ^\nhint"


@pytest.mark.parametrize(
    ("addr", "says"),
    [
        ("127.0.0.1", "the server address '127.0.0.1' has no port; give host:port, such as 127.0.0.1:50051"),
        ("127.0.0.1:99999", "the port '99999' is not a number in 1..65535"),
        ("127.0.0.1:http", "the port 'http' is not a number in 1..65535"),
        ("grpc://127.0.0.1:50051", "has a URL scheme; give host:port: '127.0.0.1:50051'"),
        ("::1:50051", "looks like an IPv6 address without brackets; write it as [address]:port"),
        (":50051", "has no host"),
        ("", "the server address must be 'host:port'"),
    ],
)
def test_the_address_is_checked(addr: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        KinoClient(addr)
    assert says in str(err.value)


def test_addresses_that_are_taken(server: ServerProcess) -> None:
    port = server.addr.rsplit(":", 1)[1]
    for addr in (f"localhost:{port}", f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}"):
        with KinoClient(addr) as client:
            assert client.server_info()["num_episodes"] == 20
    with KinoClient("[::1]:50051") as client:  # checked, not connected to
        assert client.addr == "[::1]:50051"
