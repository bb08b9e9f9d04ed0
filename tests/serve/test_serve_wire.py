"""Window batches built as wire bytes are the protobuf encoding; the reader takes any encoding."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _factories import random_array
from kinodb.serve._messages import fill_tensor
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._wire import CameraPart, WireError, decode_windows, encode_windows

DTYPES = (
    "<f4",
    "<f8",
    "<f2",
    "<i8",
    "<i4",
    "|i1",
    "|u1",
    "<u2",
    "|b1",
    ">f4",
    ">i8",
    "<c8",
    "<M8[ns]",
    "|V3",
)
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], list[str], int, int]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    names = draw(st.lists(st.text(min_size=0, max_size=140), max_size=6, unique=True))
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        dims = st.lists(st.sampled_from([0, 1, 2, 3, 127, 128, 300]), max_size=3)
        shape = tuple(draw(dims.filter(lambda d: math.prod(d) <= 40_000)))
        a = random_array(rng, shape, draw(st.sampled_from(DTYPES)))
        if a.ndim == 2 and a.shape[1] > 1 and draw(st.booleans()):
            a = a[:, ::2]  # strided: sent in C order
        arrays[name] = a
    tasks = draw(st.lists(st.text(max_size=20), max_size=4))
    return arrays, tasks, draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 300))


def _message(
    arrays: dict[str, np.ndarray], tasks: list[str], next_offset: int, count: int
) -> pb.BatchResponse:
    """The same reply built the slow way, through message objects."""
    msg = pb.BatchResponse(next_offset=next_offset, batches=count if count > 1 else 0)
    msg.windows.SetInParent()
    for name, a in arrays.items():
        fill_tensor(msg.windows.arrays[name], a)
    msg.windows.tasks.extend(tasks)
    return msg


def _samerandom_array(got: np.ndarray, want: np.ndarray) -> None:
    dtype = want.dtype.newbyteorder("<") if want.dtype.byteorder == ">" else want.dtype
    assert (got.shape, got.dtype) == (want.shape, dtype)
    assert got.tobytes() == want.astype(dtype).tobytes()  # bit for bit, NaN payloads included


@SETTINGS
@given(batches())
def test_built_bytes_are_the_protobuf_encoding(
    case: tuple[dict[str, np.ndarray], list[str], int, int],
) -> None:
    arrays, tasks, next_offset, count = case
    wire = encode_windows(arrays, tasks, next_offset=next_offset, batches=count)
    want = _message(arrays, tasks, next_offset, count)
    assert pb.BatchResponse.FromString(wire) == want
    assert len(wire) == want.ByteSize()


@SETTINGS
@given(batches())
def test_reading_gives_back_the_arrays(case: tuple[dict[str, np.ndarray], list[str], int, int]) -> None:
    arrays, tasks, next_offset, count = case
    for wire in (
        encode_windows(arrays, tasks, next_offset=next_offset, batches=count),
        _message(arrays, tasks, next_offset, count).SerializeToString(),  # protobuf's own bytes
    ):
        got = decode_windows(wire)
        assert set(got.arrays) == set(arrays)
        for name, a in arrays.items():
            _samerandom_array(got.arrays[name], a)
            assert not got.arrays[name].flags.writeable
        assert got.tasks == tasks
        assert (got.next_offset, got.batches) == (next_offset, count if count > 1 else 0)


def test_arrays_are_views_of_the_reply() -> None:
    a = np.arange(300 * 7, dtype=np.float32).reshape(300, 7)
    wire = encode_windows({"action": a}, ["pick"])
    got = decode_windows(wire).arrays["action"]
    assert got.base is not None and np.shares_memory(got, np.frombuffer(wire, np.uint8))
    np.testing.assert_array_equal(got, a)


def test_images_stored_and_decoded() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 2, 3, 5, 6), dtype=np.uint8)
    frames = [b"jpeg-%d" % i for i in range(8)] + [b""]
    cams = [
        CameraPart("front", "raw", 5, 6, 3, pixels=pixels),
        CameraPart("wrist", "jpeg", 480, 640, 3, frames=frames),
    ]
    wire = encode_windows({"index": np.arange(4)}, [], cams)
    msg = pb.BatchResponse.FromString(wire)
    assert len(wire) == msg.ByteSize()
    want = pb.CameraFrames(camera="front", codec="raw", height=5, width=6, channels=3)
    fill_tensor(want.pixels, pixels)
    assert msg.windows.images[0] == want
    assert msg.windows.images[1] == pb.CameraFrames(
        camera="wrist", codec="jpeg", height=480, width=640, channels=3, frames=frames
    )
    got = decode_windows(wire).images
    np.testing.assert_array_equal(got["front"], pixels)
    assert got["wrist"] == frames
    assert decode_windows(msg.SerializeToString()).images["wrist"] == frames


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def test_unknown_fields_unpacked_shapes_and_field_order() -> None:
    a = np.arange(6, dtype="<i8").reshape(2, 3)
    data = a.tobytes()
    # A Tensor with an unpacked shape and the fields in reverse order, plus unknown fields of
    # every wire type, in the entry, the tensor, the window batch and the response.
    unknown = b"\x78\x05" + b"\x81\x01" + b"\x00" * 8 + b"\x8d\x01" + b"\x00" * 4 + b"\x82\x01\x02hi"
    tensor = b"\x1a" + _varint(len(data)) + data + b"\x10\x02\x10\x03" + unknown + b"\x0a\x03<i8"
    entry = b"\x12" + _varint(len(tensor)) + tensor + unknown + b"\x0a\x01a"
    windows = unknown + b"\x0a" + _varint(len(entry)) + entry + b"\x12\x04pick"
    wire = b"\x18\x07" + unknown + b"\x12" + _varint(len(windows)) + windows + b"\x20\x02"
    want = pb.BatchResponse.FromString(wire)
    got = decode_windows(wire)
    np.testing.assert_array_equal(got.arrays["a"], a)
    assert got.tasks == list(want.windows.tasks) == ["pick"]
    assert (got.next_offset, got.batches) == (want.next_offset, want.batches) == (7, 2)


def test_dtypes_are_checked() -> None:
    for dtype, match in (("|O", "holds Python objects"), ("<xx", "unknown dtype")):
        msg = pb.BatchResponse()
        msg.windows.arrays["a"].dtype = dtype
        with pytest.raises(ValueError, match=match):
            decode_windows(msg.SerializeToString())


@pytest.mark.parametrize(
    "wire, match",
    [
        (b"\x12\x05\x0a\x03", "claims 5 bytes"),  # truncated windows field
        (b"\x12", "varint runs past"),  # a key with no length
        (b"\x18" + b"\xff" * 11, "over 10 bytes"),
        (b"\x1b", "wire type 3"),  # a group: not proto3
        (b"\x12\x02\x12\x01", "claims 1 bytes"),
        (b"\x12\x03\x12\x01\xff", "not UTF-8"),
    ],
)
def test_malformed_bytes_raise(wire: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_windows(wire)


def test_bytes_that_do_not_fit_the_shape_raise() -> None:
    msg = pb.BatchResponse()
    t = msg.windows.arrays["state"]
    t.dtype, t.data = "<f4", b"\x00" * 12
    t.shape[:] = [2, 2]
    with pytest.raises(WireError, match="state: 12 bytes do not make a <f4 array of shape \\(2, 2\\)"):
        decode_windows(msg.SerializeToString())
    with pytest.raises(TypeError, match="cannot send an array of object"):
        encode_windows({"x": np.array([1, "a"], dtype=object)}, [])


def test_zero_dim_and_empty_arrays() -> None:
    arrays: dict[str, Any] = {
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 3), np.int32),
        "none": np.zeros(0),
    }
    got = decode_windows(encode_windows(arrays, [""])).arrays
    assert got["scalar"].shape == () and got["scalar"] == 2.5
    assert got["empty"].shape == (0, 3) and got["empty"].dtype == np.int32
    assert got["none"].shape == (0,)
