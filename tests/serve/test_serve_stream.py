"""Window streams that stack several batches per message, against a real server on 127.0.0.1.

Stacked or not, a stream gives the same batches; clients that do not ask (or predate the
option) get one batch per message, and the client reads servers that ignore it.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import kinodb
from _server_proc import ServerProcess
from kinodb.remote import KinoClient, RemoteError
from kinodb.serve._backend import _GROUP_BYTES, Backend
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc
from kinodb.serve._wire import decode_windows
from kinodb.serve.server import SERVICE
from kinodb.windows import FrameWindows


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KinoClient]:
    with KinoClient(server.addr) as c:
        yield c


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) == set(b)
    for key, value in b.items():
        if isinstance(value, np.ndarray):
            assert a[key].dtype == value.dtype, key
            np.testing.assert_array_equal(a[key], value, err_msg=key)
        else:
            assert a[key] == value, key


def _stream_request(batch: int, num: int, per_message: int, **spec: Any) -> pb.StreamRequest:
    return pb.StreamRequest(
        batch=pb.BatchRequest(batch_size=batch, seed=5, windows=pb.WindowSpec(**spec)),
        num_batches=num, batches_per_message=per_message,
    )  # fmt: skip


def test_stacked_batches_equal_one_per_message(client: KinoClient, main_kdb: Path) -> None:
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=3)
    kw: dict[str, Any] = dict(num_batches=11, obs_horizon=2, action_horizon=3, seed=4)
    one = list(client.stream_windows(16, batches_per_message=1, **kw))
    stacked = list(client.stream_windows(16, batches_per_message=4, **kw))
    default = list(client.stream_windows(16, **kw))
    assert len(one) == len(stacked) == len(default) == 11
    for a, b, c in zip(one, stacked, default, strict=True):
        _same(b, a)
        _same(c, a)
        assert len(b["index"]) == 16 and b["task"] == fw.tasks(b["index"])
        _same({k: b[k] for k in fw.lowdim(b["index"])}, fw.lowdim(b["index"]))
    assert stacked[0]["index"].tolist() == client.get_windows(16, obs_horizon=2, action_horizon=3,
                                                              seed=4)["index"].tolist()  # fmt: skip
    seq = client.stream_windows(3, num_batches=5, mode="sequential", offset=len(fw) - 4, stride=7,
                                batches_per_message=2)  # fmt: skip
    want = [(len(fw) - 4 + 7 * i + np.arange(3)) % len(fw) for i in range(5)]
    assert [b["index"].tolist() for b in seq] == [w.tolist() for w in want]


def test_messages_on_the_wire(server: ServerProcess, main_kdb: Path) -> None:
    """What a client built from the .proto alone sees: valid messages, `batches` when asked for."""
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=3)
    with grpc.insecure_channel(server.addr) as channel:
        stub = pb_grpc.KinoServiceStub(channel)
        plain = list(
            stub.StreamBatches(_stream_request(8, 10, 0, obs_horizon=2, action_horizon=3), timeout=30)
        )
        stacked = list(
            stub.StreamBatches(_stream_request(8, 10, 4, obs_horizon=2, action_horizon=3), timeout=30)
        )
        unary = stub.GetBatch(pb.BatchRequest(batch_size=8, seed=5, windows=pb.WindowSpec(obs_horizon=2,
                                                                                           action_horizon=3)))  # fmt: skip
    assert [m.batches for m in plain] == [0] * 10
    assert [m.batches for m in stacked] == [4, 4, 2]
    assert stacked[0].windows.arrays["index"].data == b"".join(
        m.windows.arrays["index"].data for m in plain[:4]
    )
    assert unary.windows == plain[0].windows
    for msg in stacked:
        arrays = decode_windows(msg.SerializeToString()).arrays
        assert arrays["index"].shape == (8 * msg.batches,)
        want = fw.lowdim(arrays["index"])
        for key, value in want.items():
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)
        tasks = np.array(list(msg.windows.tasks), dtype=object)[arrays["task_index"]].tolist()
        assert tasks == fw.tasks(arrays["index"])


def test_message_size_caps_the_stack(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        raw = channel.unary_stream(
            f"/{SERVICE}/StreamBatches", request_serializer=pb.StreamRequest.SerializeToString
        )
        plain = list(raw(_stream_request(64, 40, 1, obs_horizon=16, action_horizon=16), timeout=30))
        replies = list(raw(_stream_request(64, 40, 64, obs_horizon=16, action_horizon=16), timeout=30))
    counts = [decode_windows(r).batches or 1 for r in replies]
    assert sum(counts) == 40 and 2 <= max(counts) < 64
    per_batch = len(plain[0])
    assert max(len(r) for r in replies) <= _GROUP_BYTES + per_batch // 8
    assert (max(counts) + 1) * per_batch > _GROUP_BYTES  # as many as fit
    joined = np.concatenate([decode_windows(r).arrays["action"] for r in replies])
    np.testing.assert_array_equal(joined, np.concatenate([decode_windows(r).arrays["action"] for r in plain]))


def test_streams_with_images_are_not_stacked(
    client: KinoClient, server: ServerProcess, main_kdb: Path
) -> None:
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=1, cameras=["wrist"])
    got = list(client.stream_windows(4, num_batches=3, obs_horizon=2, seed=2, include_images=True,
                                     cameras=["wrist"], batches_per_message=8))  # fmt: skip
    assert len(got) == 3
    for batch in got:
        np.testing.assert_array_equal(batch["images"]["wrist"], fw.images(batch["index"])["wrist"])
    with grpc.insecure_channel(server.addr) as channel:
        req = _stream_request(4, 3, 8, obs_horizon=2)
        req.batch.include_images = True
        assert [m.batches for m in pb_grpc.KinoServiceStub(channel).StreamBatches(req, timeout=30)] == [
            0,
            0,
            0,
        ]


class _EarlierServer:
    """A real gRPC server whose StreamBatches ignores ``batches_per_message`` and sends
    protobuf-serialised messages, as a server built before the option did."""

    def __init__(self, path: Path, replies: Any = None) -> None:
        self.db = kinodb.open(path)
        backend = Backend(self.db, seed=42, max_batch=1024)

        def stream(req: pb.StreamRequest, context: grpc.ServicerContext) -> Iterator[Any]:
            if replies is not None:
                yield from replies
                return
            req.batches_per_message = 0  # a field it does not know
            for reply in backend.stream(req):
                yield pb.BatchResponse.FromString(reply)

        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "StreamBatches": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=pb.StreamRequest.FromString,
                response_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            )
        })  # fmt: skip
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(None).wait()
        self.db.close()


def test_client_reads_a_server_without_the_option(client: KinoClient, main_kdb: Path) -> None:
    earlier = _EarlierServer(main_kdb)
    try:
        with KinoClient(earlier.addr) as old:
            kw: dict[str, Any] = dict(num_batches=9, obs_horizon=2, action_horizon=3, seed=6)
            got = list(old.stream_windows(16, batches_per_message=4, **kw))
        want = list(client.stream_windows(16, batches_per_message=1, **kw))
        assert len(got) == len(want) == 9
        for a, b in zip(got, want, strict=True):
            _same(a, b)
    finally:
        earlier.close()


def test_malformed_replies_raise(main_kdb: Path) -> None:
    good = pb.BatchResponse(batches=3)
    good.windows.arrays["index"].dtype = "<i8"
    good.windows.arrays["index"].shape[:] = [4]
    good.windows.arrays["index"].data = np.arange(4).tobytes()  # 4 rows are not 3 batches of 2
    for replies, match in (([b"\x12\x03\x12\x01\xff"], "not UTF-8"), ([good], "not 3 batches of 2")):
        earlier = _EarlierServer(main_kdb, replies)
        try:
            with KinoClient(earlier.addr) as old, pytest.raises(RemoteError, match=match) as err:
                list(old.stream_windows(2, num_batches=3))
            assert err.value.code == "DATA_LOSS" and "malformed window batch" in str(err.value)
        finally:
            earlier.close()


def test_batches_per_message_is_checked(client: KinoClient) -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batches_per_message must be a positive int"):
            next(client.stream_windows(2, batches_per_message=bad))
