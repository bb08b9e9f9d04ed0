"""Write-then-read is the identity: property tests over shapes, dtypes, codecs and metadata."""

from __future__ import annotations

import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kinodb
from _factories import decode_image, encode_image, random_array, smooth_frames
from kinodb.kdb._layout import crc32
from kinodb.kdb.reader import META_FIELDS

FLOAT_DTYPES = ("<f2", "<f4", "<f8", ">f4")
INT_DTYPES = ("|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", ">i8")
LOWDIM_DTYPES = FLOAT_DTYPES + INT_DTYPES
EXTRA_DTYPES = (*LOWDIM_DTYPES, "|b1")
CHANNELS = {"raw": (1, 3, 4), "png": (1, 3, 4), "jpeg": (1, 3)}
EXTRA_KEYS = ("scene", "attempt", "tags", "score", "task", "fps", "note ü")
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@st.composite
def episodes(draw: st.DrawFn, codec: str) -> dict[str, Any]:
    """Keyword arguments for one `Writer.add_episode` call (an "encoded" camera holds encoded bytes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    T = draw(st.integers(1, 40))
    dtype = st.sampled_from(LOWDIM_DTYPES)
    ep: dict[str, Any] = {"actions": random_array(rng, (T, draw(st.integers(0, 20))), draw(dtype))}
    if draw(st.booleans()):
        ep["states"] = random_array(rng, (T, draw(st.integers(0, 20))), draw(dtype))
    if draw(st.booleans()):
        ep["rewards"] = random_array(rng, (T,), draw(st.sampled_from(FLOAT_DTYPES)))
    if draw(st.booleans()):
        ep["is_terminal"] = random_array(rng, (T,), "|b1")
    if draw(st.booleans()):
        ep["timestamps"] = np.cumsum(rng.uniform(0.01, 0.2, T))
    names = draw(st.lists(st.sampled_from(["lang", "joint_vel", "mask", "tcp"]), max_size=3, unique=True))
    ep["extra_arrays"] = {
        n: random_array(
            rng, (T, *draw(st.lists(st.integers(1, 4), max_size=3))), draw(st.sampled_from(EXTRA_DTYPES))
        )
        for n in names
    }
    images: dict[str, Any] = {}
    for cam in draw(st.lists(st.sampled_from(["front", "wrist"]), max_size=2, unique=True)):
        shape = (
            T,
            draw(st.integers(1, 12)),
            draw(st.integers(1, 12)),
            draw(st.sampled_from(CHANNELS[codec])),
        )
        frames = smooth_frames(rng, shape) if codec == "jpeg" else random_array(rng, shape, "|u1")
        images[cam] = frames[..., 0] if shape[-1] == 1 and draw(st.booleans()) else frames
    if draw(st.booleans()):  # a camera of already-encoded frames, stored byte for byte
        fmt = draw(st.sampled_from(["PNG", "JPEG"]))
        c = draw(st.sampled_from((1, 3) if fmt == "JPEG" else (1, 3, 4)))
        frames = random_array(rng, (T, draw(st.integers(1, 12)), draw(st.integers(1, 12)), c), "|u1")
        images["encoded"] = [encode_image(f, fmt) for f in frames]
    ep["images"] = images
    ep["embodiment"] = draw(st.text(max_size=10))
    ep["task"] = draw(st.text(max_size=20))
    ep["fps"] = draw(st.floats(0.5, 1000))
    ep["success"] = draw(st.sampled_from([None, True, False]))
    ep["total_reward"] = draw(st.none() | st.floats(allow_nan=False, allow_infinity=False))
    ep["extra"] = draw(
        st.dictionaries(
            st.sampled_from(EXTRA_KEYS)
            | st.text(min_size=1, max_size=6).filter(lambda k: not k.startswith("extra.")),
            json_values,
            max_size=4,
        )
    )
    return ep


def same_value(got: Any, want: Any) -> bool:
    """Equality that also tells bool from int, int from float and -0.0 from 0.0."""
    if type(got) is not type(want):
        return False
    if isinstance(want, list):
        return len(got) == len(want) and all(same_value(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float):
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    return bool(got == want)


def assert_same_bytes(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.dtype == want.dtype.newbyteorder("<"), name
    assert got.shape == want.shape, name
    assert got.tobytes() == np.ascontiguousarray(want, got.dtype).tobytes(), name


def assert_zero_copy(arr: np.ndarray, name: str) -> None:
    assert not arr.flags.writeable, name
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer keeps the buffer export as a memoryview
        base = base.obj
    assert isinstance(base, mmap.mmap), f"{name} is not a view over the map (base {type(base).__name__})"


def default_dtypes(eps: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The dtype of each episode's left-out states and rewards: the one every earlier episode
    of the file holds them in, else float32."""
    seen: dict[str, set[str]] = {"states": set(), "rewards": set()}
    out = []
    for ep in eps:
        now = {name: next(iter(kinds)) if len(kinds) == 1 else "float32" for name, kinds in seen.items()}
        out.append(now)
        for name, kinds in seen.items():
            kinds.add(np.dtype(ep[name].dtype).name if name in ep else now[name])
    return out


def expected_arrays(ep: dict[str, Any], defaults: dict[str, str]) -> dict[str, np.ndarray]:
    T = len(ep["actions"])
    terminal = np.zeros(T, bool)
    terminal[-1] = True
    want = {
        "actions": ep["actions"],
        "states": ep.get("states", np.zeros((T, 0), defaults["states"])),
        "rewards": ep.get("rewards", np.zeros(T, defaults["rewards"])),
        "is_terminal": ep.get("is_terminal", terminal),
        **ep["extra_arrays"],
    }
    if "timestamps" in ep:
        want["timestamps"] = ep["timestamps"]
    return want


def check_meta(meta: dict[str, Any], i: int, ep: dict[str, Any]) -> None:
    assert meta["episode_id"] == i
    assert meta["num_frames"] == len(ep["actions"])
    assert meta["action_dim"] == ep["actions"].shape[1]
    assert meta["state_dim"] == (ep["states"].shape[1] if "states" in ep else 0)
    assert (meta["embodiment"], meta["task"], meta["fps"]) == (ep["embodiment"], ep["task"], ep["fps"])
    assert meta["success"] is ep["success"]
    total = ep["total_reward"]
    if total is None and "rewards" in ep:
        total = float(ep["rewards"].astype(np.float64).sum())
        total = total if math.isfinite(total) else None  # NaN/Inf rewards: unknown
    if total is None:
        assert meta["total_reward"] is None
    else:
        assert same_value(meta["total_reward"], total) or (
            math.isnan(total) and math.isnan(meta["total_reward"])
        )
    extras = {k: v for k, v in meta.items() if k not in META_FIELDS}
    want = {f"extra.{k}" if k in META_FIELDS else k: v for k, v in ep["extra"].items()}
    assert extras.keys() == want.keys()
    for key, value in want.items():
        assert same_value(extras[key], value), (key, extras[key], value)


def check_images(
    db: kinodb.Database, i: int, ep: dict[str, Any], images: dict[str, np.ndarray], codec: str
) -> None:
    assert images.keys() == ep["images"].keys()
    for cam, stored in ep["images"].items():
        got = images[cam]
        assert got.dtype == np.uint8
        if isinstance(stored, list):
            for t, blob in enumerate(stored):
                assert db.read_image_bytes(i, cam, t) == blob
                np.testing.assert_array_equal(got[t], decode_image(blob))
            continue
        want = stored if stored.ndim == 4 else stored[..., None]
        assert got.shape == want.shape, cam
        if codec == "jpeg":
            assert np.abs(got.astype(np.int16) - want).mean() < 6, cam
        else:
            np.testing.assert_array_equal(got, want, err_msg=cam)
        if codec == "raw":
            assert_zero_copy(got, cam)
            assert db.read_image_bytes(i, cam, len(want) - 1) == want[-1].tobytes()


@pytest.mark.parametrize("codec", ["raw", "png", "jpeg"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in random rewards
@SETTINGS
@given(data=st.data())
def test_write_then_read_is_identity(tmp_path: Path, codec: str, data: st.DataObject) -> None:
    eps = data.draw(st.lists(episodes(codec), min_size=1, max_size=3), label="episodes")
    metadata = data.draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3), label="metadata")
    path = tmp_path / "rt.kdb"
    with kinodb.Writer(path, mode="w", image_codec=codec, metadata=metadata, source_format="test") as w:
        for i, ep in enumerate(eps):
            assert w.add_episode(**ep) == i
    with kinodb.open(path) as db:
        assert len(db) == db.num_episodes() == len(eps)
        assert db.num_frames() == sum(len(ep["actions"]) for ep in eps)
        assert db.metadata() == metadata
        assert db.dataset_info()["source_format"] == "test"
        for i, (ep, defaults) in enumerate(zip(eps, default_dtypes(eps), strict=True)):
            got = db.read_episode(i)
            check_meta(got["meta"], i, ep)
            assert db.read_meta(i) == got["meta"] or any(
                isinstance(v, float) and math.isnan(v) for v in got["meta"].values()
            )
            want = expected_arrays(ep, defaults)
            arrays = {k: v for k, v in got.items() if k not in ("meta", "images")}
            assert arrays.keys() == want.keys()
            for name, arr in want.items():
                assert_same_bytes(arrays[name], arr, name)
                assert_zero_copy(arrays[name], name)
                assert_same_bytes(db.read_array(i, name), arr, name)
            check_images(db, i, ep, got["images"], codec)


@SETTINGS
@given(
    values=st.lists(st.none() | json_values | st.just("absent"), min_size=1, max_size=6),
)
def test_extra_field_values_survive_mixed_kinds(tmp_path: Path, values: list[Any]) -> None:
    """One extra field with values of several kinds (and absent in some episodes)."""
    path = tmp_path / "extra.kdb"
    with kinodb.Writer(path, mode="w") as w:
        for v in values:
            w.add_episode(actions=np.zeros((1, 1)), extra={} if v == "absent" else {"x": v})
    with kinodb.open(path) as db:
        column = db.episodes().get("x")
        for i, v in enumerate(values):
            meta = db.read_meta(i)
            if v == "absent":
                assert "x" not in meta
            else:
                assert same_value(meta["x"], v), (meta["x"], v)
            if column is not None:
                got = column[i].item() if isinstance(column[i], np.generic) else column[i]
                assert got is None if v in (None, "absent") else same_value(got, v), (got, v)


def test_big_endian_and_strided_inputs_are_stored_little_endian(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    actions = rng.normal(size=(8, 6)).astype(">f8")[:, ::2]  # big-endian and not contiguous
    path = tmp_path / "be.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=actions)
    with kinodb.open(path) as db:
        got = db.read_array(0, "actions")
        assert got.dtype == np.dtype("<f8")
        np.testing.assert_array_equal(got, actions)


def test_lists_become_float32(tmp_path: Path) -> None:
    path = tmp_path / "lists.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=[[1, 2], [3, 4]], rewards=[0, 1], timestamps=[0.0, 0.1])
    with kinodb.open(path) as db:
        ep = db.read_episode(0)
        assert ep["actions"].dtype == np.float32 and ep["rewards"].dtype == np.float32
        assert ep["timestamps"].dtype == np.float64
        assert ep["meta"]["total_reward"] == 1.0


def test_payload_checksums_cover_exactly_the_recorded_bytes(make_kdb: Any) -> None:
    path, _ = make_kdb(4, cameras={"front": (5, 7, 3)}, extra_arrays={"odd": (3,)})
    with kinodb.open(path) as db:
        cols, mm = db._cols, db._mm
        assert mm is not None
        for i in range(len(db)):
            off, length = int(cols["payload_offset"][i]), int(cols["payload_length"][i])
            assert off % 64 == 0
            assert crc32(memoryview(mm)[off : off + length]) == int(cols["payload_crc"][i])


def test_smooth_jpeg_frames_of_every_size(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "j.kdb"
    frames = {f"c{h}x{w}": smooth_frames(rng, (2, h, w, 3)) for h, w in [(1, 1), (8, 8), (17, 33)]}
    with kinodb.Writer(path, image_codec="jpeg", jpeg_quality=90) as w:
        w.add_episode(actions=np.zeros((2, 1)), images=frames)
    with kinodb.open(path) as db:
        images = db.read_episode(0)["images"]
        for name, want in frames.items():
            assert images[name].shape == want.shape
            assert np.abs(images[name].astype(np.int16) - want).mean() < 6
            assert db.read_image_bytes(0, name, 0)[:3] == b"\xff\xd8\xff"
