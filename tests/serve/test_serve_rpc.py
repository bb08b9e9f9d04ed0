"""Every RPC of a real server over one file, checked against local reads of the same file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import kinodb
from _server_proc import ServerProcess
from kinodb.errors import EpisodeNotFoundError, KinodbError, QuerySyntaxError
from kinodb.remote import BatchTooLargeError, InvalidRequestError, KinoClient
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc
from kinodb.windows import FrameWindows


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KinoClient]:
    with KinoClient(server.addr) as c:
        yield c


@pytest.fixture(scope="module")
def db(main_kdb: Path) -> Iterator[kinodb.Database]:
    with kinodb.open(main_kdb) as d:
        yield d


def _same_arrays(got: dict, want: dict) -> None:
    names = {k for k, v in want.items() if isinstance(v, np.ndarray)}
    assert names <= set(got)
    for name in names:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_server_info_describes_the_file(client: KinoClient, db: kinodb.Database, main_kdb: Path) -> None:
    info = client.server_info()
    assert info["num_episodes"] == len(db) == 20
    assert info["num_frames"] == db.num_frames()
    assert info["num_sources"] == 1 and info["sources"] == [str(main_kdb)]
    assert info["version"] == kinodb.__version__
    assert info["cameras"] == ["cam", "wrist"]
    assert info["max_batch"] == 1024
    # the largest allowed batch of whole episodes with decoded frames fits the limit
    assert info["max_message_bytes"] >= 1024 * 14 * (16 * 16 * 3 + 8 * 8 * 3 + 4 * (7 + 5 + 1))


def test_get_meta_equals_read_meta(client: KinoClient, db: kinodb.Database) -> None:
    for i in range(len(db)):
        assert client.get_meta(i) == db.read_meta(i)


def test_get_episode_equals_local_read(client: KinoClient, db: kinodb.Database) -> None:
    for i in (0, 7, 19):
        local = db.read_episode(i)
        got = client.get_episode(i)
        assert "images" not in got
        assert got["meta"] == local["meta"]
        _same_arrays(got, local)
        assert (got["source"], got["position"], got["index"]) == (0, i, i)
        decoded = client.get_episode(i, include_images=True)
        assert set(decoded["images"]) == {"cam", "wrist"}
        for cam, frames in local["images"].items():
            np.testing.assert_array_equal(decoded["images"][cam], frames)
        stored = client.get_episode(i, include_images=True, image_encoding="stored", cameras=["wrist"])
        assert list(stored["images"]) == ["wrist"] and stored["image_codecs"] == {"wrist": "jpeg"}
        T = local["meta"]["num_frames"]
        assert stored["images"]["wrist"] == [db.read_image_bytes(i, "wrist", t) for t in range(T)]


def test_get_batch_sequential_wraps_at_the_end(client: KinoClient, db: kinodb.Database) -> None:
    batch = client.get_batch(5, mode="sequential", offset=18)
    assert [ep["index"] for ep in batch] == [18, 19, 0, 1, 2]
    for ep in batch:
        _same_arrays(ep, db.read_episode_actions_only(ep["index"]))
        assert ep["meta"] == db.read_meta(ep["index"])
    assert [ep["index"] for ep in client.get_batch(3, mode="sequential", offset=45)] == [5, 6, 7]


def test_seeded_batches_are_reproducible(client: KinoClient) -> None:
    def draw(**kw: int | str) -> list[int]:
        return [ep["index"] for ep in client.get_batch(16, **kw)]  # type: ignore[arg-type]

    a, b, c = draw(seed=7), draw(seed=7), draw(seed=8)
    assert a == b and a != c
    assert all(0 <= i < 20 for i in a)
    assert draw(seed=7, mode="weighted") == draw(seed=7, mode="weighted")
    # seed 0 draws from the server's stream: successive batches differ
    assert draw(seed=0) != draw(seed=0)


def test_batch_with_images_over_the_default_grpc_limit(client: KinoClient, db: kinodb.Database) -> None:
    batch = client.get_batch(1024, mode="sequential", include_images=True)
    size = sum(f.nbytes for ep in batch for f in ep["images"].values())
    assert size > 4 << 20  # more than gRPC's default 4 MiB message limit
    ep = batch[21]
    assert ep["index"] == 1
    np.testing.assert_array_equal(ep["images"]["cam"], db.read_episode(1)["images"]["cam"])


def test_query_equals_local_query(client: KinoClient, db: kinodb.Database) -> None:
    for kql in ("success = true", "embodiment = 'widowx' AND num_frames > 10", "k >= 15"):
        np.testing.assert_array_equal(client.query(kql), db.query(kql))
        for limit in (0, 1, 2, np.int64(3), None):
            np.testing.assert_array_equal(client.query(kql, limit=limit), db.query(kql, limit=limit))
    with pytest.raises(QuerySyntaxError):
        client.query("sucess = true", limit=0)  # checked even when nothing is kept


def test_windows_equal_frame_windows(client: KinoClient, main_kdb: Path) -> None:
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=4)
    got = client.get_windows(64, obs_horizon=2, action_horizon=4, seed=3)
    idx = got["index"]
    assert len(idx) == 64 and idx.max() < len(fw)
    want = fw.lowdim(idx)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got["task"] == fw.tasks(idx)
    again = client.get_windows(64, obs_horizon=2, action_horizon=4, seed=3)
    np.testing.assert_array_equal(again["index"], idx)
    seq = client.get_windows(4, obs_horizon=2, action_horizon=4, mode="sequential", offset=len(fw) - 2)
    np.testing.assert_array_equal(seq["index"], [len(fw) - 2, len(fw) - 1, 0, 1])


def test_window_images_decoded_and_stored(client: KinoClient, main_kdb: Path) -> None:
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=1, pad="zero", cameras=["wrist"])
    got = client.get_windows(8, obs_horizon=2, pad="zero", seed=5, include_images=True, cameras=["wrist"])
    np.testing.assert_array_equal(got["images"]["wrist"], fw.images(got["index"])["wrist"])
    np.testing.assert_array_equal(got["image_is_pad"], fw.lowdim(got["index"])["image_is_pad"])
    small = client.get_windows(8, obs_horizon=2, seed=5, include_images=True, image_size=(4, 6))
    assert small["images"]["cam"].shape == (8, 2, 3, 4, 6)  # the first camera by default
    stored = client.get_windows(8, obs_horizon=2, seed=5, include_images=True, image_encoding="stored",
                                cameras=["wrist"])  # fmt: skip
    flat = [blob for sample in fw.encoded(stored["index"]) for blob in sample["wrist"]]
    assert stored["images"]["wrist"] == flat


def test_streams_continue_offsets_and_seeds(client: KinoClient) -> None:
    batches = list(client.stream_batches(4, num_batches=3, mode="sequential", offset=16))
    assert [[ep["index"] for ep in b] for b in batches] == [[16, 17, 18, 19], [0, 1, 2, 3], [4, 5, 6, 7]]
    strided = list(client.stream_windows(2, num_batches=3, mode="sequential", stride=10))
    assert [b["index"].tolist() for b in strided] == [[0, 1], [10, 11], [20, 21]]
    one = [b["index"].tolist() for b in client.stream_windows(8, num_batches=4, seed=11, action_horizon=3)]
    two = [b["index"].tolist() for b in client.stream_windows(8, num_batches=4, seed=11, action_horizon=3)]
    assert one == two and len({tuple(b) for b in one}) == 4
    # the first batch of a seeded stream is the seeded unary batch
    assert client.get_windows(8, seed=11, action_horizon=3)["index"].tolist() == one[0]


def test_abandoned_stream_is_cancelled(client: KinoClient) -> None:
    stream = client.stream_windows(4, num_batches=0, seed=1)  # endless
    for _ in range(3):
        assert len(next(stream)["index"]) == 4
    stream.close()
    assert client.server_info()["num_episodes"] == 20


def test_concurrent_clients_get_consistent_batches(server: ServerProcess, main_kdb: Path) -> None:
    fw = FrameWindows(main_kdb, obs_horizon=2, action_horizon=8)
    failures: list[str] = []

    def work(k: int) -> None:
        with KinoClient(server.addr) as c:
            for j in range(15):
                got = c.get_windows(32, obs_horizon=2, action_horizon=8, seed=1 + 100 * k + j)
                want = fw.lowdim(got["index"])
                if not all(np.array_equal(got[key], want[key]) for key in want):
                    failures.append(f"thread {k} batch {j}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_errors_map_to_local_exceptions(client: KinoClient, db: kinodb.Database) -> None:
    with pytest.raises(
        EpisodeNotFoundError, match=r"episode 20 out of range: the server has 20 episodes \(0\.\.19\)"
    ):
        client.get_meta(20)
    with pytest.raises(IndexError):
        client.get_episode(1000)
    with pytest.raises(QuerySyntaxError) as remote:
        client.query("success = = true")
    with pytest.raises(QuerySyntaxError) as local:
        db.query("success = = true")
    assert remote.value.position == local.value.position
    assert str(local.value) in str(remote.value)
    with pytest.raises(BatchTooLargeError, match="over this server's limit of 1024"):
        client.get_batch(1025)
    with pytest.raises(BatchTooLargeError, match="over this server's message limit"):
        client.get_windows(64, include_images=True, image_size=(512, 512))  # ~50 MB: refused before decoding
    with pytest.raises(InvalidRequestError, match="mode must be one of sequential, random, weighted"):
        client.get_batch(2, mode="shuffled")
    with pytest.raises(ValueError, match="no camera 'side'"):
        client.get_episode(0, include_images=True, cameras=["side"])
    with pytest.raises(ValueError, match="at most 4096"):
        client.get_windows(2, obs_horizon=5000)
    with pytest.raises(KinodbError, match="the filter 'num_frames > 1000' keeps no episode"):
        client.get_windows(2, kql_filter="num_frames > 1000")
    assert client.server_info()["num_episodes"] == 20  # still serving


def test_status_codes_on_the_wire(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        stub = pb_grpc.KinoServiceStub(channel)
        cases = [
            (stub.GetMeta, pb.MetaRequest(position=99), grpc.StatusCode.OUT_OF_RANGE),
            (stub.GetEpisode, pb.EpisodeRequest(position=20), grpc.StatusCode.OUT_OF_RANGE),
            (stub.Query, pb.QueryRequest(kql="success ="), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.Query, pb.QueryRequest(kql="nosuchfield = 1"), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=0), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=5000), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=1, mode="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=1, windows=pb.WindowSpec(pad="mirror")),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=1, include_images=True, image_height=4),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]  # fmt: skip
        sized = {"image_height": 8, "image_width": 8}
        said = [  # a size the reply could not honour: refused, not ignored
            (pb.BatchRequest(batch_size=1, windows=pb.WindowSpec(), **sized),
             "size frames, but include_images is false"),
            (pb.BatchRequest(batch_size=1, windows=pb.WindowSpec(), include_images=True,
                             image_encoding=pb.IMAGE_ENCODING_STORED, **sized),
             "resize decoded frames, but IMAGE_ENCODING_STORED sends each frame's stored bytes as they are"),
            (pb.BatchRequest(batch_size=1, include_images=True, image_encoding=pb.IMAGE_ENCODING_DECODED, **sized),
             "a batch of episodes sends each camera at its stored size"),
        ]  # fmt: skip
        for request, message in said:
            with pytest.raises(grpc.RpcError) as err:
                stub.GetBatch(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        cases += [
            (stub.GetBatch, pb.BatchRequest(batch_size=1, windows=pb.WindowSpec(kql_filter="success = = 1")),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetBatch, pb.BatchRequest(batch_size=1, windows=pb.WindowSpec(kql_filter="num_frames > 99")),
             grpc.StatusCode.FAILED_PRECONDITION),
        ]  # fmt: skip
        for method, request, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                method(request, timeout=10)
            assert err.value.code() == code, (request, err.value.details())
            assert err.value.details()
        assert stub.ServerInfo(pb.InfoRequest(), timeout=10).num_episodes == 20


def test_arguments_are_checked_before_sending(client: KinoClient) -> None:
    cases = [
        (lambda: client.get_episode(2**64), r"episode index i must be a non-negative int below 2\*\*64"),
        (lambda: client.get_meta(-1), "episode index i must be a non-negative int"),
        (lambda: client.get_windows(2, include_images=True, image_size=(-1, 5)),
         r"image_size must be \(H, W\), two positive ints, got \(-1, 5\)"),
        (lambda: client.get_windows(2, include_images=True, image_size=(0, 5)), "image_size must be"),
        (lambda: client.get_windows(2, include_images=True, image_size=(4,)), "image_size must be"),
        (lambda: client.get_windows(2, obs_horizon=2**32), r"obs_horizon must be a positive int below 2\*\*32"),
        (lambda: client.get_batch(2**32), r"batch_size must be a positive int below 2\*\*32"),
        (lambda: client.get_batch(2, offset=-1), "offset must be a non-negative int"),
        (lambda: client.get_batch(2, seed=2**64), "seed must be a non-negative int"),
        (lambda: client.query("success = true", limit=2**32), "limit must be a non-negative int below 2"),
        (lambda: next(client.stream_windows(2, num_batches=-1)), "num_batches must be a non-negative int"),
        (lambda: next(client.stream_batches(2, stride=-2)), "stride must be a non-negative int"),
        (lambda: client.get_windows(4, cameras=["front"]),
         "cameras chooses frames, but include_images is False: pass include_images=True"),
        (lambda: client.get_windows(4, cameras=["nope"], image_size=(8, 8)), "cameras and image_size choose frames"),
        (lambda: client.get_batch(2, cameras=["front"]), "cameras chooses frames"),
        (lambda: client.get_episode(0, cameras=["front"]), "cameras chooses frames"),
        (lambda: next(client.stream_windows(2, image_size=(8, 8))), "image_size chooses frames"),
        (lambda: client.get_windows(2, include_images=True, image_encoding="stored", image_size=(8, 8)),
         "image_size resizes decoded frames, but image_encoding='stored' sends each frame's stored bytes"),
        (lambda: next(client.stream_windows(2, include_images=True, image_encoding="stored", image_size=(8, 8))),
         "image_size resizes decoded frames"),
    ]  # fmt: skip
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert client.server_info()["num_episodes"] == 20


def test_a_closed_client_says_so(server: ServerProcess) -> None:
    closed = KinoClient(server.addr)
    assert closed.server_info()["num_episodes"] == 20
    closed.close()
    for call in (closed.server_info, lambda: closed.get_windows(2), lambda: next(closed.stream_windows(2))):
        with pytest.raises(ValueError, match=f"KinoClient for server {server.addr}: the client is closed"):
            call()
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds or None"):
        KinoClient(server.addr, timeout=0)
