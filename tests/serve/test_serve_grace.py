"""A ``--grace`` longer than Python's threads can wait: refused by ``kino-serve``, clamped by
`KinoServer.stop`, never an OverflowError from gRPC's grace thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from kinodb._cli import serve as kino_serve
from kinodb.remote import KinoClient
from kinodb.serve.server import KinoServer


@pytest.mark.parametrize("grace", ["1e10", "1e300", "inf"])
def test_a_grace_over_the_longest_thread_wait_is_a_usage_error(
    main_kdb: Path, grace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        kino_serve.build_parser().parse_args([str(main_kdb), "--grace", grace])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--grace: expected at most {threading.TIMEOUT_MAX:.0f} seconds" in err and f"got {grace}" in err


def test_the_longest_grace_is_taken(main_kdb: Path) -> None:
    args = kino_serve.build_parser().parse_args([str(main_kdb), "--grace", str(int(threading.TIMEOUT_MAX))])
    assert args.grace == threading.TIMEOUT_MAX


@pytest.mark.parametrize("grace", [1e10, 1e300, float("inf")])
def test_stop_clamps_a_huge_grace(main_kdb: Path, grace: float, monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)  # gRPC's grace thread's errors
    server = KinoServer(main_kdb, port=0)
    server.start()
    with KinoClient(server.address, timeout=10) as client:
        stream = client.stream_windows(4, seed=1)  # endless
        next(stream)
        hurry = threading.Event()
        threading.Timer(0.5, hurry.set).start()  # as a second Ctrl-C would
        server.stop(grace, hurry=hurry)
    graces = [t for t in threading.enumerate() if "cancel_all_calls_after_grace" in t.name]
    for thread in graces:
        thread.join(5)
    assert not any(t.is_alive() for t in graces)
    assert [(r.exc_type, str(r.exc_value)) for r in raised] == []
