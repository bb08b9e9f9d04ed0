"""What a Writer is given besides episodes: dataset metadata set through ``metadata``, the
output path (links, permissions, FIFOs), options and their messages, and the values the
type hints of `Writer.add_episode` admit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import FormatError, WriterError
from kinodb.kdb.validate import validate

A = np.zeros((3, 2), np.float32)
SRC = Path(__file__).resolve().parents[2] / "src"


def _write(path: Path, n: int = 1, mode: str = "w") -> None:
    with kinodb.Writer(path, mode=mode, image_codec="raw") as w:
        for k in range(n):
            w.add_episode(actions=np.full((3, 2), k, np.float32))


# -- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.eye(2), r"metadata\['cal'\] has type ndarray; .*array\.tolist\(\)"),
        (b"raw", r"metadata\['cal'\] has type bytes; .*decode bytes to str"),
        (float("nan"), r"metadata\['cal'\] is nan; JSON cannot store NaN or infinity"),
        ({"gain": float("inf")}, r"metadata\['cal'\]\['gain'\] is inf"),
        ({1: 2}, r"metadata\['cal'\] keys must be str, got 1"),
        (object(), r"metadata\['cal'\] has type object"),
    ],
)
def test_setting_a_metadata_value_json_cannot_store_is_refused_naming_the_key(
    tmp_path: Path, value: Any, message: str
) -> None:
    path = tmp_path / "m.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A)
        for setter in (
            lambda: w.metadata.__setitem__("cal", value),
            lambda: w.metadata.update({"cal": value}),
            lambda: w.metadata.update(cal=value),
            lambda: w.metadata.setdefault("cal", value),
            lambda: w.metadata.__ior__({"ok": 1, "cal": value}),  # m |= {...}: all or nothing
        ):
            with pytest.raises(WriterError, match=message):
                setter()
            assert "cal" not in w.metadata and "ok" not in w.metadata
        w.add_episode(actions=A)  # the writer is still open
    with kinodb.open(path) as db:
        assert len(db) == 2 and db.metadata() == {}


def test_numpy_scalars_in_metadata_become_json_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A)
        w.metadata["gain"] = np.float32(1.5)
        w.metadata.update(count=np.int64(7), ok=np.bool_(True), pair=(np.int32(1), 2.0))
        w.metadata.setdefault("nested", {"x": np.float64(0.25)})
        assert w.metadata == {"gain": 1.5, "count": 7, "ok": True, "pair": [1, 2.0], "nested": {"x": 0.25}}
        assert type(w.metadata["count"]) is int and isinstance(w.metadata, dict)
        assert json.loads(json.dumps(w.metadata))["gain"] == 1.5
        del w.metadata["ok"]
    with kinodb.open(path) as db:
        assert db.metadata() == {"gain": 1.5, "count": 7, "pair": [1, 2.0], "nested": {"x": 0.25}}


@pytest.mark.parametrize("mode", ["w", "a"])
def test_a_bad_nested_value_fails_the_close_but_keeps_the_session(tmp_path: Path, mode: str) -> None:
    """A value changed in place inside a nested dict is caught before anything is
    committed or discarded: the writer stays open to fix it and close again."""
    path = tmp_path / "m.kdb"
    _write(path, 1)
    before = path.read_bytes()
    with pytest.raises(WriterError) as info, kinodb.Writer(path, mode=mode) as w:
        for k in range(5):
            w.add_episode(actions=np.full((3, 2), 10 + k, np.float32))
        w.metadata["calibration"] = {"camera": "front"}
        w.metadata["calibration"]["matrix"] = np.eye(3)  # not checked by the inner dict
    message = str(info.value)
    assert "metadata['calibration']['matrix'] has type ndarray" in message
    assert "array.tolist()" in message
    assert "the writer is still open with its" in message and "call close() again" in message
    assert path.read_bytes() == before  # nothing committed, nothing discarded yet
    w.metadata["calibration"] = {"camera": "front", "matrix": np.eye(3).tolist()}
    w.close()
    assert validate(path).ok
    with kinodb.open(path) as db:
        assert len(db) == (6 if mode == "a" else 5)
        assert db.metadata()["calibration"]["matrix"] == np.eye(3).tolist()
        assert float(db.read_array(len(db) - 1, "actions")[0, 0]) == 14.0


def test_nan_put_in_nested_metadata_is_refused_at_close(tmp_path: Path) -> None:
    path = tmp_path / "n.kdb"
    w = kinodb.Writer(path, mode="w")
    w.add_episode(actions=A)
    w.metadata["gains"] = [1.0]
    w.metadata["gains"].append(float("nan"))
    with pytest.raises(WriterError, match=r"metadata\['gains'\]\[1\] is nan"):
        w.close()
    assert not path.exists()
    w.metadata["gains"] = [1.0, 2.0]
    w.close()
    with kinodb.open(path) as db:
        assert db.metadata() == {"gains": [1.0, 2.0]}


# -- images ---------------------------------------------------------------------------------


def test_jpeg_frames_past_65500_pixels_a_side_are_refused_naming_camera_and_episode(tmp_path: Path) -> None:
    path = tmp_path / "j.kdb"
    wide = np.zeros((1, 1, 70000, 3), np.uint8)
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A[:1])
        with pytest.raises(WriterError) as info:
            w.add_episode(actions=A[:1], images={"wide_cam": wide})
        message = str(info.value)
        for part in (
            "images['wide_cam']",
            "1x70000",
            "65500",
            "image_codec='png' or 'raw'",
            "adding episode 1",
        ):
            assert part in message, message
        w.add_episode(actions=A[:1])
    with kinodb.Writer(path, mode="a", image_codec="png") as w:
        w.add_episode(actions=A[:1], images={"wide_cam": wide})  # the advice works
    with kinodb.open(path) as db:
        assert len(db) == 3
        np.testing.assert_array_equal(db.read_episode(2)["images"]["wide_cam"], wide)


def test_a_list_of_decoded_frames_is_told_to_stack_them(tmp_path: Path) -> None:
    frames = [np.zeros((4, 4, 3), np.uint8)] * 3
    with kinodb.Writer(tmp_path / "s.kdb", mode="w") as w:
        with pytest.raises(
            WriterError, match=r"images\['c'\] is a list of arrays; stack them into one uint8 array"
        ):
            w.add_episode(actions=A, images={"c": frames})
        w.add_episode(actions=A, images={"c": np.stack(frames)})


# -- paths ----------------------------------------------------------------------------------


def _in_process(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in its own interpreter, killed after 30 s: a FIFO read would block."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    script = "import kinodb, sys\n" + textwrap.dedent(body)
    try:
        return subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail("opening a FIFO blocked")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_opening_or_appending_to_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.kdb"
    os.mkfifo(fifo)
    run = _in_process(
        f"""
        for call in (lambda: kinodb.open({str(fifo)!r}), lambda: kinodb.Writer({str(fifo)!r}, mode="a")):
            try:
                call()
            except kinodb.FormatError as exc:
                print(exc)
        """
    )
    assert run.returncode == 0, run.stderr
    opened, appended = run.stdout.splitlines()
    assert opened == f"{fifo} is a FIFO (named pipe), not a regular file; give the path of a .kdb file"
    assert appended.startswith(
        f"{fifo} is a FIFO (named pipe), not a regular file, and cannot be appended to"
    )
    report = validate(fifo)  # in this process: it must not block either
    assert not report.ok and "is a FIFO (named pipe), not a regular file" in report.errors[0]
    with pytest.raises(FormatError, match="not a regular file"):
        kinodb.open(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_mode_w_writes_through_a_link_and_keeps_it(tmp_path: Path) -> None:
    data, links = tmp_path / "data", tmp_path / "links"
    data.mkdir()
    links.mkdir()
    target, link = data / "target.kdb", links / "link.kdb"
    _write(target, 1)
    link.symlink_to(os.path.relpath(target, links))
    _write(link, 3)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, links)
    with kinodb.open(target) as db:
        assert len(db) == 3
    assert sorted(os.listdir(links)) == ["link.kdb"] and sorted(os.listdir(data)) == ["target.kdb"]
    _write(link, 1, mode="a")  # appends already went through the link
    with kinodb.open(link) as db:
        assert len(db) == 4


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_mode_w_keeps_the_permission_bits_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "p.kdb"
    _write(path, 1)
    for bits in (0o600, 0o640, 0o444):
        os.chmod(path, bits)
        _write(path, 2)
        assert stat.S_IMODE(os.stat(path).st_mode) == bits
    fresh = tmp_path / "fresh.kdb"
    _write(fresh)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~umask  # a new file: as open() makes it


# -- options and their messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jpeg_quality": "high"}, r"jpeg_quality must be in 1\.\.100 \(a whole number\), got 'high'"),
        ({"jpeg_quality": 95.5}, r"jpeg_quality must be in 1\.\.100 \(a whole number\), got 95\.5"),
        ({"jpeg_quality": True}, r"jpeg_quality must be in 1\.\.100 \(a whole number\), got True"),
        (
            {"schema": {"actions": {"components": "a"}}},
            r"schema actions\.components must map each name to \[start, stop\)",
        ),
        (
            {"schema": {"actions": {"components": {"a": [0]}}}},
            r"schema actions\.components\['a'\] must be \[start, stop\)",
        ),
        (
            {"schema": {"actions": {"components": {"a": [True, 2]}}}},
            r"must be \[start, stop\), got \[True, 2\]",
        ),
        (
            {"schema": {"actions": {"names": "ab"}}},
            r"schema actions\.names must be a list of names .*got 'ab'",
        ),
        ({"schema": {"actions": "xyz"}}, r"schema actions must be a mapping with 'components' and 'names'"),
    ],
)
def test_bad_options_say_what_was_given(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kinodb.Writer(tmp_path / "o.kdb", **kwargs)
    assert os.listdir(tmp_path) == []


def test_numpy_integers_are_accepted_where_ints_are(tmp_path: Path) -> None:
    path = tmp_path / "n.kdb"
    schema = {"actions": {"components": {"xy": [np.int64(0), np.int64(2)], "z": (np.int32(2), 3)}}}
    with kinodb.Writer(path, mode="w", schema=schema, jpeg_quality=np.int64(80)) as w:
        w.add_episode(actions=np.zeros((2, 3), np.float32), images={"c": np.zeros((2, 4, 4, 3), np.uint8)})
    with kinodb.open(path) as db:
        assert db.schema()["actions"]["components"] == {"xy": [0, 2], "z": [2, 3]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fps": "abc"}, r"fps must be a positive number, got 'abc' \(adding episode 2\)"),
        ({"fps": 0}, r"fps must be a positive number, got 0 \(adding episode 2\)"),
        (
            {"extra_arrays": {"x": np.zeros(5)}},
            r"extra array 'x' has 5 frames, actions has 3 \(adding episode 2\)",
        ),
        ({"states": np.zeros((4, 1))}, r"^states has 4 frames, actions has 3 \(adding episode 2\)$"),
        (
            {"images": {"c": [b"GIF89a"] * 3}},
            r"images\['c'\]\[0\] is not JPEG or PNG bytes \(adding episode 2\)",
        ),
    ],
)
def test_add_episode_errors_name_the_episode_being_added(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with kinodb.Writer(tmp_path / "e.kdb", mode="w") as w:
        w.add_episode(actions=A)
        w.add_episode(actions=A)
        with pytest.raises(WriterError, match=message):
            w.add_episode(actions=A, **fields)
        assert w.add_episode(actions=A) == 2


# -- type hints -------------------------------------------------------------------------------


def test_add_episode_hints_admit_numpy_scalars_it_accepts(tmp_path: Path) -> None:
    hints = typing.get_type_hints(kinodb.Writer.add_episode)
    assert np.bool_ in typing.get_args(hints["success"])
    for name in ("fps", "total_reward"):
        assert any(typing.get_origin(arg) is np.floating for arg in typing.get_args(hints[name])), name
    path = tmp_path / "h.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A, success=np.bool_(True), fps=np.float32(15), total_reward=np.float32(0.5))
    with kinodb.open(path) as db:
        meta = db.read_meta(0)
        assert (meta["success"], meta["fps"], meta["total_reward"]) == (True, 15.0, 0.5)


def test_encoded_frames_are_written_without_a_second_copy(tmp_path: Path) -> None:
    """A camera's encoded frames go to the file one by one: adding an episode does not
    allocate a joined copy of them (which doubled memory for long PNG episodes), and each
    frame reads back as given."""
    import io
    import tracemalloc

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    frames = [bytes(bytearray(buf.getvalue())) for _ in range(300)]
    total = sum(map(len, frames))
    path = tmp_path / "frames.kdb"
    with kinodb.Writer(path, mode="w", image_codec="png") as w:
        tracemalloc.start()
        try:
            w.add_episode(actions=np.zeros((300, 2)), states=np.zeros((300, 3)), images={"cam": frames})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < total / 4, f"adding the episode allocated {peak} bytes for {total} bytes of frames"
    with kinodb.open(path) as db:
        assert [db.read_image_bytes(0, "cam", t) for t in (0, 150, 299)] == [frames[t] for t in (0, 150, 299)]
        assert validate(str(path)).ok
