"""Episode replies built as wire bytes are the protobuf encoding; the reader takes any encoding."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kinodb
from _factories import random_array
from _server_proc import ServerProcess
from kinodb.remote import KinoClient, RemoteError
from kinodb.serve._messages import fill_tensor, meta_to_pb
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc
from kinodb.serve._wire import (
    CameraPart,
    EpisodePart,
    WireError,
    decode_episode,
    decode_episodes,
    encode_episode,
    encode_episodes,
)

DTYPES = ("<f4", "<f8", "<i8", "<i4", "|u1", "|b1", ">f4", "<c8", "|V3")
SETTINGS = settings(max_examples=50, deadline=None)
META = {"episode_id": 3, "embodiment": "franka", "task": "pick", "num_frames": 4, "fps": 10.0, "action_dim": 7,
        "state_dim": 5, "success": True, "total_reward": 1.5, "operator": "ann"}  # fmt: skip


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    msg = pb.EpisodeMeta()
    meta_to_pb(meta, msg)
    return msg.SerializeToString()


@st.composite
def episodes(draw: st.DrawFn) -> EpisodePart:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays: dict[str, np.ndarray] = {}
    for name in draw(st.lists(st.text(max_size=20), max_size=4, unique=True)):
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 3, 127, 128]), max_size=3).filter(
            lambda d: math.prod(d) <= 20_000)))  # fmt: skip
        a = random_array(rng, shape, draw(st.sampled_from(DTYPES)))
        if a.ndim == 2 and a.shape[1] > 1 and draw(st.booleans()):
            a = a[:, ::2]  # strided: sent in C order
        arrays[name] = a
    cams: list[CameraPart] = []
    for k, name in enumerate(draw(st.lists(st.sampled_from(["cam", "wrist", ""]), max_size=2, unique=True))):
        T = draw(st.integers(0, 3))
        if draw(st.booleans()):
            pixels = rng.integers(0, 256, (T, 4, 5, 3), dtype=np.uint8)
            cams.append(CameraPart(name, "raw", 4, 5, 3, pixels=pixels))
        else:
            frames = [rng.bytes(draw(st.integers(0, 300))) for _ in range(T)]
            # the server sends views of the file; bytes work too
            blobs: list[bytes | memoryview] = [memoryview(f) if k else f for f in frames]
            cams.append(CameraPart(name, ("jpeg", "png")[k], 4, 5, 3, frames=blobs))
    meta = {**META, "episode_id": draw(st.integers(0, 2**63)), "success": draw(st.sampled_from([True, None]))}
    big = st.integers(0, 2**63)
    return EpisodePart(_meta_bytes(meta), arrays, cams, index=draw(big), source=draw(st.integers(0, 2**32 - 1)),
                       position=draw(big))  # fmt: skip


def _message(ep: EpisodePart, msg: pb.Episode) -> None:
    """The same episode built the slow way, through message objects."""
    msg.meta.CopyFrom(pb.EpisodeMeta.FromString(ep.meta))
    for name, a in ep.arrays.items():
        fill_tensor(msg.arrays[name], a)
    for cam in ep.images:
        part = msg.images.add(camera=cam.camera, codec=cam.codec, height=cam.height, width=cam.width,
                              channels=cam.channels, frames=[bytes(f) for f in cam.frames])  # fmt: skip
        if cam.pixels is not None:
            fill_tensor(part.pixels, cam.pixels)
    msg.index, msg.source, msg.position = ep.index, ep.source, ep.position


def _same(got: np.ndarray, want: np.ndarray) -> None:
    dtype = want.dtype.newbyteorder("<") if want.dtype.byteorder == ">" else want.dtype
    assert (got.shape, got.dtype) == (want.shape, dtype)
    assert got.tobytes() == np.ascontiguousarray(want).astype(dtype).tobytes()  # bit for bit


def _check(got: Any, ep: EpisodePart) -> None:
    assert pb.EpisodeMeta.FromString(got.meta) == pb.EpisodeMeta.FromString(ep.meta)
    assert set(got.arrays) == set(ep.arrays)
    for name, a in ep.arrays.items():
        _same(got.arrays[name], a)
        assert not got.arrays[name].flags.writeable
    assert list(got.images) == [cam.camera for cam in ep.images]
    for cam in ep.images:
        if cam.pixels is not None:
            _same(got.images[cam.camera], cam.pixels)
            assert cam.camera not in got.codecs
        else:
            assert got.images[cam.camera] == [bytes(f) for f in cam.frames]
            assert got.codecs[cam.camera] == cam.codec
    assert (got.index, got.source, got.position) == (ep.index, ep.source, ep.position)


@SETTINGS
@given(st.lists(episodes(), max_size=3), st.integers(0, 2**64 - 1))
def test_built_bytes_are_the_protobuf_encoding(eps: list[EpisodePart], next_offset: int) -> None:
    wire = encode_episodes(eps, next_offset=next_offset)
    want = pb.BatchResponse(next_offset=next_offset)
    for ep in eps:
        _message(ep, want.episodes.add())
    assert pb.BatchResponse.FromString(wire) == want
    assert len(wire) == want.ByteSize()
    for got_wire in (wire, want.SerializeToString()):  # ours, and protobuf's own bytes
        got, offset = decode_episodes(got_wire)
        assert offset == next_offset and len(got) == len(eps)
        for g, ep in zip(got, eps, strict=True):
            _check(g, ep)


@SETTINGS
@given(episodes())
def test_one_episode_reply(ep: EpisodePart) -> None:
    wire = encode_episode(ep)
    want = pb.EpisodeResponse()
    _message(ep, want.episode)
    assert pb.EpisodeResponse.FromString(wire) == want
    assert len(wire) == want.ByteSize()
    _check(decode_episode(wire), ep)
    _check(decode_episode(want.SerializeToString()), ep)


def test_frames_are_views_of_the_reply() -> None:
    pixels = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    ep = EpisodePart(_meta_bytes(META), {"actions": np.ones((2, 7), np.float32)},
                     [CameraPart("cam", "raw", 3, 4, 3, pixels=pixels)])  # fmt: skip
    wire = encode_episode(ep)
    got = decode_episode(wire)
    for arr in (got.images["cam"], got.arrays["actions"]):
        assert isinstance(arr, np.ndarray) and np.shares_memory(arr, np.frombuffer(wire, np.uint8))
    np.testing.assert_array_equal(got.images["cam"], pixels)


def test_unknown_fields_and_an_episode_sent_in_parts() -> None:
    a = np.arange(6, dtype="<i8").reshape(2, 3)
    first = pb.EpisodeResponse()
    first.episode.meta.task = "pick"
    fill_tensor(first.episode.arrays["a"], a)
    second = pb.EpisodeResponse()
    second.episode.meta.episode_id = 9
    second.episode.position = 4
    unknown = b"\x78\x05" + b"\x81\x01" + b"\x00" * 8 + b"\x82\x01\x02hi"  # fields 15 and 16
    wire = unknown + first.SerializeToString() + second.SerializeToString()  # protobuf merges the two
    want = pb.EpisodeResponse.FromString(wire)
    got = decode_episode(wire)
    assert pb.EpisodeMeta.FromString(got.meta) == want.episode.meta
    assert (got.position, want.episode.position) == (4, 4)
    np.testing.assert_array_equal(got.arrays["a"], a)


@pytest.mark.parametrize(
    "wire, match",
    [
        (b"\x0a\x05\x0a\x03", "claims 5 bytes"),
        (b"\x0a", "varint runs past"),
        (b"\x0a\x03\x22\x02\x0a", "claims 2 bytes"),  # a camera cut short
        (b"\x0a\x04\x22\x02\x0a\x05", "claims 5 bytes"),  # its name cut short
        (b"\x0a\x05\x22\x03\x0a\x01\xff", "not UTF-8"),
    ],
)
def test_malformed_bytes_raise(wire: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_episode(wire)
    with pytest.raises(WireError, match=match):
        decode_episodes(wire)


def test_bytes_that_do_not_fit_the_shape_raise() -> None:
    msg = pb.BatchResponse()
    t = msg.episodes.add().arrays["actions"]
    t.dtype, t.data = "<f4", b"\x00" * 12
    t.shape[:] = [2, 2]
    with pytest.raises(WireError, match=r"actions: 12 bytes do not make a <f4 array of shape \(2, 2\)"):
        decode_episodes(msg.SerializeToString())


# -- through a real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KinoClient]:
    with KinoClient(server.addr) as c:
        yield c


def test_episodes_from_the_server_are_bit_exact(client: KinoClient, main_kdb: Path) -> None:
    with kinodb.open(main_kdb) as db:
        batches = {
            "plain": client.get_batch(20, mode="sequential"),
            "decoded": client.get_batch(20, mode="sequential", include_images=True),
            "stored": client.get_batch(20, mode="sequential", include_images=True, image_encoding="stored"),
            "streamed": [ep for b in client.stream_batches(7, num_batches=3, mode="sequential", include_images=True)
                         for ep in b][:20],
        }  # fmt: skip
        for kind, batch in batches.items():
            assert [ep["index"] for ep in batch] == list(range(20)), kind
            for i, ep in enumerate(batch):
                local = db.read_episode(i)
                assert ep["meta"] == local["meta"], kind
                for name, want in local.items():
                    if isinstance(want, np.ndarray):
                        got = ep[name]
                        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (kind, name)
                        assert not got.flags.writeable  # a view of the reply
                if kind == "plain":
                    assert "images" not in ep
                elif kind == "stored":
                    assert ep["image_codecs"] == {"cam": "jpeg", "wrist": "jpeg"}
                    for cam in ("cam", "wrist"):
                        T = local["meta"]["num_frames"]
                        assert ep["images"][cam] == [db.read_image_bytes(i, cam, t) for t in range(T)]
                else:
                    assert list(ep["images"]) == ["cam", "wrist"] and "image_codecs" not in ep
                    for cam, frames in local["images"].items():
                        assert ep["images"][cam].tobytes() == frames.tobytes(), (kind, cam)
                        assert ep["images"][cam].shape == frames.shape
        one = client.get_episode(11, include_images=True, cameras=["wrist"])
        assert list(one["images"]) == ["wrist"]
        assert one["images"]["wrist"].tobytes() == db.read_episode(11)["images"]["wrist"].tobytes()


def test_a_client_built_from_the_proto_reads_episode_replies(server: ServerProcess, main_kdb: Path) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        stub = pb_grpc.KinoServiceStub(channel)
        reply = stub.GetBatch(pb.BatchRequest(batch_size=3, mode="sequential", offset=4, include_images=True,
                                              image_encoding=pb.IMAGE_ENCODING_DECODED), timeout=30)  # fmt: skip
        one = stub.GetEpisode(pb.EpisodeRequest(position=6), timeout=30).episode
    assert reply.next_offset == 7
    assert [ep.index for ep in reply.episodes] == [4, 5, 6]
    without_images = pb.Episode()
    without_images.CopyFrom(reply.episodes[2])
    del without_images.images[:]
    assert one == without_images
    with kinodb.open(main_kdb) as db:
        for ep in reply.episodes:
            local = db.read_episode(ep.index)
            assert ep.meta.task == local["meta"]["task"] and ep.position == ep.index and ep.source == 0
            t = ep.arrays["actions"]
            np.testing.assert_array_equal(
                np.frombuffer(t.data, t.dtype).reshape(tuple(t.shape)), local["actions"]
            )
            assert [c.camera for c in ep.images] == ["cam", "wrist"]
            cam = ep.images[0]
            assert (cam.codec, tuple(cam.pixels.shape)) == ("raw", local["images"]["cam"].shape)
            assert cam.pixels.data == local["images"]["cam"].tobytes()


def test_a_malformed_episode_reply_is_data_loss(client: KinoClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "_raw_episode", lambda *a, **kw: b"\x0a\x05\x0a\x03")
    with pytest.raises(RemoteError, match="a malformed episode: field 1 claims 5 bytes") as err:
        client.get_episode(0)
    assert err.value.code == "DATA_LOSS"
