"""gRPC's own log records (a request that is no protobuf) as ``kino-serve:`` lines: one line
per event without a traceback, at most one per kind every few seconds, the traceback
only with ``--debug``."""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import grpc
import pytest

from _server_proc import ServerProcess
from kinodb._cli.serve import _GrpcLines

LINE = "kino-serve: warning: gRPC: Exception deserializing message! (DecodeError: "


def _send_malformed(addr: str, times: int) -> None:
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary("/kinodb.v1.KinoService/ServerInfo")
        for _ in range(times):
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff" * 8, timeout=10)  # a valid call whose bytes are no protobuf
            assert caught.value.code() is grpc.StatusCode.INTERNAL


def test_a_malformed_request_is_one_warning_line(main_kdb: Path) -> None:
    proc = ServerProcess([str(main_kdb)])
    _send_malformed(proc.addr, 3)
    assert proc.stop() == 0
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert all(line.startswith(LINE) for line in lines), proc.stderr
    assert "a client sent a request that is no kinodb message" in lines[0]
    # The first shown at once; the two within the next seconds in one line at the stop.
    assert len(lines) == 2 and re.search(r" \[1 more like it in the last [\d.]+ s\]$", lines[1]), proc.stderr


def test_debug_shows_each_one_with_its_traceback(main_kdb: Path) -> None:
    proc = ServerProcess(["--debug", str(main_kdb)])
    _send_malformed(proc.addr, 2)
    assert proc.stop() == 0
    assert proc.stderr.count(LINE) == 2 and proc.stderr.count("Traceback (most recent call last)") == 2
    assert "google.protobuf.message.DecodeError" in proc.stderr


def test_a_flood_shows_one_line_per_kind_per_interval() -> None:
    stream = io.StringIO()
    handler = _GrpcLines(debug=False, every=0.3)
    handler.setStream(stream)
    logger = logging.getLogger("grpc.kinodb_test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(5):
            logger.warning("one kind")
        logger.warning("another kind")
        time.sleep(0.4)
        logger.warning("one kind")  # after the interval: shown, counting the 4 left out
        logger.warning("one kind")
        handler.flush_held()
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["kino-serve: warning: gRPC: one kind", "kino-serve: warning: gRPC: another kind"]
    assert re.fullmatch(
        r"kino-serve: warning: gRPC: one kind \[4 more like it in the [\d.]+ s before, not shown\]", lines[2]
    )
    assert lines[3:] == ["kino-serve: warning: gRPC: one kind"]  # the one left out at the end
