"""Values at the edges of what a Writer stores: ints too long for Python to write as text,
JSON nested too deep, names that are not UTF-8, encoded frames held in NumPy arrays, and
rewards whose sum is NaN. Each is refused (or handled) where it is given, so that the
commit cannot fail on it and lose the episodes added before."""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import kinodb
from kinodb import EpisodeNotFoundError, WriterError
from kinodb.kdb._checks import JSON_MAX_DEPTH

A = np.zeros((2, 1), np.float32)
HUGE = 10**5000  # past Python's default limit of 4300 digits for an int written as text

needs_limit = pytest.mark.skipif(
    not hasattr(sys, "get_int_max_str_digits") or sys.get_int_max_str_digits() == 0,
    reason="this Python writes ints of any length as text",
)


def _nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _nested_dicts(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _episodes(path: Path) -> list[dict[str, Any]]:
    db = kinodb.open(path)
    return [db.read_meta(i) for i in range(len(db))]


# -- ints too long to write as text -------------------------------------------------------


@needs_limit
@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"seed": HUGE}, r"extra\['seed'\]"),
        ({"seed": -HUGE}, r"extra\['seed'\]"),
        ({"seeds": [1, [2, HUGE]]}, r"extra\['seeds'\]\[1\]\[1\]"),
    ],
)
def test_a_huge_int_in_extra_is_refused_at_add_episode_and_the_file_keeps_the_others(
    tmp_path: Path, extra: dict[str, Any], where: str
) -> None:
    path = tmp_path / "big.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A, extra={"seed": 0})
        with pytest.raises(
            WriterError, match=rf"{where} is an int of about 5001 decimal digits;.*hex\(value\)"
        ):
            w.add_episode(actions=A, extra=extra)
        w.add_episode(actions=A, extra={"seed": 2})
    assert [m["seed"] for m in _episodes(path)] == [0, 2]


@needs_limit
def test_a_huge_int_in_metadata_is_refused_where_it_is_set(tmp_path: Path) -> None:
    path = tmp_path / "big.kdb"
    with pytest.raises(WriterError, match=r"metadata\['seed'\] is an int of about 5001 decimal digits"):
        kinodb.Writer(path, mode="w", metadata={"seed": HUGE})
    assert not path.exists()
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A)
        with pytest.raises(WriterError, match=r"metadata\['seed'\] is an int of about 5001"):
            w.metadata["seed"] = HUGE
        with pytest.raises(WriterError, match=r"metadata\['cal'\]\['gain'\]\[0\] is an int of about 5001"):
            w.metadata.update(cal={"gain": [HUGE]})
        w.metadata["seed"] = 7
    assert kinodb.open(path).metadata() == {"seed": 7}


@needs_limit
def test_a_huge_int_put_into_metadata_in_place_is_refused_at_close_with_the_writer_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.kdb"
    w = kinodb.Writer(path, mode="w")
    w.add_episode(actions=A)
    w.metadata["cal"] = {"gain": 1}
    w.metadata["cal"]["gain"] = HUGE  # not seen by the writer until it commits
    with pytest.raises(WriterError, match=r"metadata\['cal'\]\['gain'\] is an int of about 5001.*still open"):
        w.close()
    w.metadata["cal"]["gain"] = 2
    w.close()
    assert kinodb.open(path).metadata() == {"cal": {"gain": 2}}
    assert len(kinodb.open(path)) == 1


@needs_limit
def test_a_huge_int_in_copy_episode_extra_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src, mode="w") as w:
        w.add_episode(actions=A)
    with kinodb.Writer(tmp_path / "dst.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=r"extra\['seed'\] is an int of about 5001"):
            w.copy_episode(kinodb.open(src), 0, extra={"seed": HUGE})
        w.copy_episode(kinodb.open(src), 0)
    assert len(kinodb.open(tmp_path / "dst.kdb")) == 1


@needs_limit
def test_ints_up_to_the_limit_are_stored_exactly(tmp_path: Path) -> None:
    longest = 10 ** (sys.get_int_max_str_digits() - 1)  # as many digits as the limit
    path = tmp_path / "long.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A, extra={"n": -longest, "m": 2**64})
        w.add_episode(actions=A, extra={"n": np.int64(-5), "m": 3})
        w.metadata["n"] = [longest]
    assert [(m["n"], m["m"]) for m in _episodes(path)] == [(-longest, 2**64), (-5, 3)]
    assert kinodb.open(path).metadata() == {"n": [longest]}


@pytest.fixture
def no_int_limit() -> Iterator[None]:
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("this Python has no limit on ints written as text")
    was = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(was)


@pytest.mark.usefixtures("no_int_limit")
def test_without_a_limit_any_int_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "big.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A, extra={"seed": HUGE})
    assert _episodes(path)[0]["seed"] == HUGE


@needs_limit
def test_messages_about_a_huge_int_give_its_size_not_a_bare_value_error(tmp_path: Path) -> None:
    path = tmp_path / "big.kdb"
    with pytest.raises(ValueError, match=r"jpeg_quality must be in 1\.\.100 .*an int of about 5001"):
        kinodb.Writer(path, mode="w", jpeg_quality=HUGE)
    with kinodb.Writer(path, mode="w") as w:
        with pytest.raises(WriterError, match=r"fps must be a positive number, got an int of about 5001"):
            w.add_episode(actions=A, fps=-HUGE)
        w.add_episode(actions=A)
    with pytest.raises(
        EpisodeNotFoundError, match=r"episode an int of about 5001 decimal digits out of range"
    ):
        kinodb.open(path)[HUGE]


# -- JSON nested too deep -----------------------------------------------------------------


def test_extra_values_nest_at_most_json_max_depth_lists(tmp_path: Path) -> None:
    path = tmp_path / "deep.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A, extra={"x": _nested(JSON_MAX_DEPTH)})
        with pytest.raises(WriterError, match=rf"extra\['x'\]\[0\].* nests lists more than {JSON_MAX_DEPTH}"):
            w.add_episode(actions=A, extra={"x": _nested(JSON_MAX_DEPTH + 1)})
        with pytest.raises(WriterError, match="nests lists more than"):  # not a RecursionError
            w.add_episode(actions=A, extra={"x": _nested(5000)})
    assert _episodes(path)[0]["x"] == _nested(JSON_MAX_DEPTH)


def test_metadata_nested_too_deep_is_refused_where_set_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "deep.kdb"
    w = kinodb.Writer(path, mode="w")
    w.add_episode(actions=A)
    with pytest.raises(WriterError, match="nests lists and dicts more than"):
        w.metadata["x"] = _nested_dicts(5000)
    w.metadata["x"] = _nested_dicts(JSON_MAX_DEPTH)
    w.metadata["y"] = {"a": 1}
    w.metadata["y"]["a"] = _nested_dicts(JSON_MAX_DEPTH)  # one level too deep, in place
    with pytest.raises(WriterError, match=r"metadata\['y'\].*nests lists and dicts more than.*still open"):
        w.close()
    del w.metadata["y"]
    w.close()
    assert kinodb.open(path).metadata() == {"x": _nested_dicts(JSON_MAX_DEPTH)}


# -- names that are not UTF-8 -------------------------------------------------------------

NOT_UTF8 = "op\udcff"  # what os.fsdecode gives for the bytes b"op\xff"


@pytest.mark.parametrize(
    ("episode", "message"),
    [
        ({"extra": {NOT_UTF8: 1}}, r"extra field name 'op\\udcff' is not valid Unicode text"),
        (
            {"extra_arrays": {NOT_UTF8: np.zeros(2)}},
            r"extra array name 'op\\udcff' is not valid Unicode text",
        ),
        (
            {"images": {NOT_UTF8: np.zeros((2, 2, 2, 3), np.uint8)}},
            r"camera name 'op\\udcff' \(a key of images\) is not valid Unicode text",
        ),
    ],
)
def test_a_name_that_is_not_utf8_is_refused_naming_it(
    tmp_path: Path, episode: dict[str, Any], message: str
) -> None:
    path = tmp_path / "names.kdb"
    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        with pytest.raises(
            WriterError, match=rf"{message} \(surrogates not allowed at position 2\);.*decode"
        ):
            w.add_episode(actions=A, **episode)
        w.add_episode(actions=A, extra={"op": 1})
    db = kinodb.open(path)
    assert len(db) == 1 and db.read_meta(0)["op"] == 1
    assert db.schema()["cameras"] == {} and db.schema()["arrays"] == {}


def test_copy_episode_refuses_an_extra_name_that_is_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src, mode="w") as w:
        w.add_episode(actions=A)
    with kinodb.Writer(tmp_path / "dst.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=r"extra field name 'op\\udcff' is not valid Unicode text"):
            w.copy_episode(kinodb.open(src), 0, extra={NOT_UTF8: 1})
        w.copy_episode(kinodb.open(src), 0)


# -- encoded frames held in NumPy arrays (cv2.imencode) ------------------------------------


def _imencode(fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """What ``cv2.imencode`` returns for a frame: its encoded bytes as a uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format=fmt)
    return np.frombuffer(buf.getvalue(), np.uint8).reshape(shape)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("shape", [(-1, 1), (-1,)])
def test_a_list_of_encoded_frames_in_arrays_is_refused_with_the_tobytes_fix(
    tmp_path: Path, fmt: str, shape: tuple[int, ...]
) -> None:
    frames = [_imencode(fmt, shape) for _ in range(2)]
    path = tmp_path / "cv2.kdb"
    with kinodb.Writer(path, mode="w") as w:
        with pytest.raises(WriterError) as info:
            w.add_episode(actions=A, images={"front": frames})
        text = str(info.value)
        assert f"images['front'] is a list of uint8 arrays holding encoded {fmt.lower()} frames" in text
        assert "cv2.imencode" in text and "[b.tobytes() for b in frames]" in text and "np.stack" not in text
        w.add_episode(actions=A, images={"front": [b.tobytes() for b in frames]})  # the fix given
    assert kinodb.open(path).read_image_bytes(0, "front", 1) == frames[1].tobytes()


def test_a_list_of_pixel_arrays_is_still_told_to_stack_them(tmp_path: Path) -> None:
    frames = [np.zeros((4, 4, 3), np.uint8)] * 2
    frames[0][0, :3, 0] = (0xFF, 0xD8, 0xFF)  # starts like a JPEG, but is not one-dimensional
    with kinodb.Writer(tmp_path / "px.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=r"is a list of arrays; stack them .*np\.stack"):
            w.add_episode(actions=A, images={"front": frames})
        with pytest.raises(WriterError, match=r"is a list of arrays; stack them"):
            w.add_episode(actions=A, images={"front": [_imencode("JPEG", (-1,)), np.zeros(9, np.uint8)]})
        w.add_episode(actions=A)


# -- rewards whose sum is NaN --------------------------------------------------------------


def test_rewards_that_sum_to_nan_warn_nothing_and_store_an_unknown_total(tmp_path: Path) -> None:
    signalling_nan = np.array([0x7F800001, 0, 0x3F800000], np.uint32).view(np.float32)
    path = tmp_path / "nan.kdb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with kinodb.Writer(path, mode="w") as w:
            w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=signalling_nan)
            w.add_episode(
                actions=np.zeros((3, 1), np.float32), rewards=np.array([np.inf, 0, -np.inf], np.float32)
            )
            w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=np.array([1, 2, 3], np.float32))
    assert [m["total_reward"] for m in _episodes(path)] == [None, None, 6.0]


def test_schema_bounds_and_names_and_the_source_format_are_checked_when_given(tmp_path: Path) -> None:
    path = tmp_path / "s.kdb"
    with pytest.raises(ValueError, match=r"schema states.components\['x'\] must be \[start, stop\), got "
                       r"\[0, an int of 16610 bits\]"):  # fmt: skip
        kinodb.Writer(path, schema={"states": {"components": {"x": [0, 10**5000]}}})
    with pytest.raises(
        kinodb.WriterError, match=r"schema states component name 'a\\udcffb' is not valid Unicode"
    ):
        kinodb.Writer(path, schema={"states": {"components": {"a\udcffb": [0, 2]}}})
    with pytest.raises(
        kinodb.WriterError, match=r"schema actions.names entry 'j\\udcff' is not valid Unicode"
    ):
        kinodb.Writer(path, schema={"actions": {"names": ["j\udcff"]}})
    with pytest.raises(kinodb.WriterError, match=r"source_format 'h5\\udcff' is not valid Unicode"):
        kinodb.Writer(path, source_format="h5\udcff")
    assert not path.exists() and os.listdir(tmp_path) == []  # nothing was created
