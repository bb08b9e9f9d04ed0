"""Malformed episodes are rejected with messages naming the field; failures leave no trace."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import encode_image
from kinodb import WriterError
from kinodb.kdb.validate import validate


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def writer(tmp_path: Path) -> Any:
    with kinodb.Writer(tmp_path / "w.kdb", image_codec="raw") as w:
        yield w
        w.add_episode(actions=np.zeros((1, 1)))  # the writer stays usable after every error


A4 = np.zeros((4, 2), np.float32)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"states": np.zeros((5, 3))}, "states has 5 frames, actions has 4"),
        ({"rewards": np.zeros(3)}, "rewards has 3 frames, actions has 4"),
        ({"is_terminal": np.zeros(5, bool)}, "is_terminal has 5 frames, actions has 4"),
        ({"timestamps": np.zeros(2)}, "timestamps has 2 frames, actions has 4"),
        ({"extra_arrays": {"lang": np.zeros((3, 8))}}, "extra array 'lang' has 3 frames, actions has 4"),
        ({"states": np.zeros(4)}, r"states must have shape \(T, D\), got \(4,\)"),
        ({"rewards": np.zeros((4, 1))}, r"rewards must have shape \(T,\), got \(4, 1\)"),
        ({"timestamps": np.zeros((4, 2))}, r"timestamps must have shape \(T,\)"),
        ({"states": np.zeros((4, 2), np.complex64)}, "states has dtype complex64"),
        ({"rewards": np.array(["a"] * 4)}, "rewards has dtype <U1"),
        ({"states": [["x", "y"]] * 4}, "states is not numeric"),
        ({"is_terminal": np.array([0, 2, 0, 1])}, "is_terminal must be bool"),
        ({"is_terminal": np.zeros((4, 1), bool)}, r"is_terminal must have shape \(T,\)"),
        ({"extra_arrays": {"actions": np.zeros(4)}}, "'actions' is empty or reserved"),
        ({"extra_arrays": {"": np.zeros(4)}}, "'' is empty or reserved"),
        ({"extra_arrays": {"x": np.float32(1)}}, "extra array 'x' must have a leading frame dimension"),
        (
            {"extra_arrays": {"x": np.zeros((4, 1, 1, 1, 1))}},
            r"extra array .x. has shape \(4, 1, 1, 1, 1\); arrays have at most 4 dimensions",
        ),
        ({"extra_arrays": {"x": np.zeros(4, np.float128)}}, "extra array 'x' has dtype float128"),
        ({"fps": 0}, "fps must be a positive number, got 0"),
        ({"fps": float("nan")}, "fps must be a positive number"),
        ({"fps": "fast"}, "fps must be a positive number"),
        ({"success": 1}, "success must be True, False or None, got 1"),
        ({"embodiment": None}, "embodiment and task must be str"),
        ({"task": 3}, "embodiment and task must be str"),
        ({"extra": {"x": {"nested": 1}}}, r"extra\['x'\] has type dict"),
        ({"extra": {"x": [1, object()]}}, r"extra\['x'\]\[1\] has type object"),
        ({"extra": {"x": float("inf")}}, r"extra\['x'\] is inf; JSON cannot store NaN or infinity"),
        ({"extra": {"": 1}}, "extra field names must be non-empty str"),
        ({"extra": {3: 1}}, "extra field names must be non-empty str, got 3"),
    ],
)
def test_malformed_fields_are_named(writer: kinodb.Writer, fields: dict[str, Any], message: str) -> None:
    if "float128" in message and not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    with pytest.raises(WriterError, match=message):
        writer.add_episode(actions=A4, **fields)


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (np.zeros((0, 3)), "actions has 0 frames; empty episodes cannot be stored"),
        (np.zeros(4), r"actions must have shape \(T, D\), got \(4,\)"),
        (np.zeros((4, 2, 2)), r"actions must have shape \(T, D\)"),
        (np.zeros((4, 2), object), "actions has dtype object"),
        ([], r"actions must have shape \(T, D\), got \(0,\)"),
    ],
)
def test_bad_actions_and_empty_episodes_are_rejected(
    writer: kinodb.Writer, actions: Any, message: str
) -> None:
    with pytest.raises(WriterError, match=message):
        writer.add_episode(actions=actions)


def test_writer_error_is_a_value_error_and_kinodb_error() -> None:
    assert issubclass(WriterError, ValueError) and issubclass(WriterError, kinodb.KinodbError)


PNG = encode_image(np.zeros((4, 5, 3), np.uint8), "PNG")
JPEG = encode_image(np.zeros((4, 5, 3), np.uint8), "JPEG")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ({"cam": np.zeros((4, 8, 8, 3), np.float32)}, r"images\['cam'\] must be uint8 \(T, H, W, C\)"),
        ({"cam": np.zeros((4, 8), np.uint8)}, r"images\['cam'\] must be uint8"),
        ({"cam": np.zeros((3, 8, 8, 3), np.uint8)}, r"images\['cam'\] has 3 frames, actions has 4"),
        ({"cam": np.zeros((4, 8, 8, 5), np.uint8)}, "need H, W > 0 and 1-4 channels"),
        ({"cam": np.zeros((4, 0, 8, 3), np.uint8)}, "need H, W > 0"),
        ({"": np.zeros((4, 8, 8, 3), np.uint8)}, "camera names must be non-empty"),
        ({"cam": [PNG] * 3}, r"images\['cam'\] has 3 frames, actions has 4"),
        ({"cam": [b"GIF89a"] * 4}, r"images\['cam'\]\[0\] is not JPEG or PNG bytes"),
        ({"cam": [PNG, PNG, JPEG, PNG]}, r"images\['cam'\]\[2\] is not png bytes like frame 0"),
        ({"cam": [PNG, PNG, PNG, "x"]}, r"images\['cam'\]\[3\] is not png bytes"),
        (
            {"cam": [PNG] * 3 + [encode_image(np.zeros((6, 5, 3), np.uint8), "PNG")]},
            r"images\['cam'\]\[3\] is \(6, 5, 3\)",
        ),
        (
            {"cam": [JPEG] * 2 + [encode_image(np.zeros((6, 5, 3), np.uint8), "JPEG"), JPEG]},
            r"images\['cam'\]\[2\] is \(6, 5, 3\)",
        ),
        ({"cam": [PNG[:20]] * 4}, r"images\['cam'\]\[0\]: unreadable png header"),
        ({"cam": "frames"}, r"images\['cam'\] must be a uint8 array or a list of encoded frames, got str"),
    ],
)
def test_malformed_images_are_named(writer: kinodb.Writer, images: dict[str, Any], message: str) -> None:
    with pytest.raises(WriterError, match=message):
        writer.add_episode(actions=A4, images=images)


def test_jpeg_rejects_alpha_and_two_channels(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "j.kdb", image_codec="jpeg") as w:
        for c in (2, 4):
            with pytest.raises(WriterError, match=f"has {c} channels; JPEG stores 1 or 3"):
                w.add_episode(actions=A4, images={"cam": np.zeros((4, 8, 8, c), np.uint8)})
        w.add_episode(actions=A4)


def test_failed_episode_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "partial.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        w.add_episode(actions=np.ones((2, 1)))
        # The bad array comes after good ones, so some bytes were already written when it fails.
        with pytest.raises(WriterError, match="at most 4 dimensions"):
            w.add_episode(actions=A4, extra_arrays={"ok": np.ones(4), "bad": np.zeros((4, 1, 1, 1, 1))})
        assert len(w) == 1
        w.add_episode(actions=np.full((3, 1), 7.0), images={"cam": np.full((3, 2, 2, 1), 9, np.uint8)})
    with kinodb.open(path) as db:
        assert len(db) == 2
        assert db.read_meta(1)["episode_id"] == 1
        assert "bad" not in db.read_episode(1) and "ok" not in db.read_episode(1)
        np.testing.assert_array_equal(db.read_array(1, "actions"), np.full((3, 1), 7.0))
        assert (db.read_episode(1)["images"]["cam"] == 9).all()
        assert "bad" not in db.schema()["arrays"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "r"}, "mode must be 'x', 'w' or 'a'"),
        ({"image_codec": "webp"}, "image_codec must be one of"),
        ({"jpeg_quality": 0}, "jpeg_quality must be in 1..100"),
        ({"schema": {"joints": {}}}, "schema keys are 'actions' and 'states'"),
        ({"schema": {"states": {"components": {"pos": [3, 1]}}}}, r"must be \[start, stop\)"),
    ],
)
def test_bad_writer_options(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        kinodb.Writer(tmp_path / "o.kdb", **kwargs)
    # The refused writer, as a traceback's locals show it (a debugger, pytest's report).
    tb = caught.value.__traceback__
    while tb is not None and not isinstance(tb.tb_frame.f_locals.get("self"), kinodb.Writer):
        tb = tb.tb_next
    assert tb is not None
    writer = tb.tb_frame.f_locals["self"]
    assert repr(writer).startswith("<kinodb.Writer")  # not an AttributeError
    del writer, tb, caught
    gc.collect()
    assert listing(tmp_path) == []


def test_schema_is_checked_against_each_episode(tmp_path: Path) -> None:
    schema = {"states": {"components": {"pos": [0, 3], "grip": [3, 4]}}, "actions": {"names": ["x", "y"]}}
    with kinodb.Writer(tmp_path / "s.kdb", schema=schema) as w:
        with pytest.raises(
            WriterError, match=r"schema component states.grip ends at 4, but states has dim 3"
        ):
            w.add_episode(actions=np.zeros((2, 2)), states=np.zeros((2, 3)))
        with pytest.raises(WriterError, match=r"schema actions\.names has 2 names, actions has dim 3"):
            w.add_episode(actions=np.zeros((2, 3)), states=np.zeros((2, 4)))
        w.add_episode(actions=np.zeros((2, 2)), states=np.zeros((2, 4)))
    with kinodb.open(tmp_path / "s.kdb") as db:
        assert db.schema()["states"]["components"] == {"pos": [0, 3], "grip": [3, 4]}
        assert db.schema()["actions"]["names"] == ["x", "y"]


def test_metadata_numpy_scalars_are_stored_as_json(tmp_path: Path) -> None:
    meta = {"fps": np.float32(30), "n": np.int64(5), "ok": np.bool_(True), "dims": [np.int32(1), 2],
            "cams": [{"name": "front", "h": np.uint16(64)}], "norm": {"mean": [np.float64(0.5)]}}  # fmt: skip
    with kinodb.Writer(tmp_path / "m.kdb", metadata=meta) as w:
        w.add_episode(actions=A4)
    with kinodb.open(tmp_path / "m.kdb") as db:
        assert db.metadata() == {
            "fps": 30.0, "n": 5, "ok": True, "dims": [1, 2],
            "cams": [{"name": "front", "h": 64}], "norm": {"mean": [0.5]},
        }  # fmt: skip


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"x": object()}, r"metadata\['x'\] has type object"),
        ({"x": float("nan")}, r"metadata\['x'\] is nan"),
        ({1: "x"}, "metadata keys must be str, got 1"),
    ],
)
def test_bad_metadata_fails_before_anything_is_written(tmp_path: Path, metadata: Any, message: str) -> None:
    with pytest.raises(WriterError, match=message):
        kinodb.Writer(tmp_path / "m.kdb", metadata=metadata)
    assert listing(tmp_path) == []


def test_unencodable_text_is_rejected_when_added(writer: kinodb.Writer) -> None:
    with pytest.raises(WriterError, match="task"):
        writer.add_episode(actions=A4, task="bad \udcff")
    with pytest.raises(WriterError, match=r"extra\['note'\]"):
        writer.add_episode(actions=A4, extra={"note": "\ud800"})


# -- files on disk -------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("mode", ["x", "w"])
def test_exception_inside_with_leaves_no_new_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "new.kdb"
    with pytest.raises(Boom), kinodb.Writer(path, mode=mode) as w:
        w.add_episode(actions=A4)
        raise Boom
    assert listing(tmp_path) == []


def test_exception_inside_with_keeps_the_replaced_file(make_kdb: Any) -> None:
    path, _ = make_kdb(2)
    before = path.read_bytes()
    with pytest.raises(Boom), kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A4)
        w.add_episode(actions=A4)
        w.add_episode(actions=A4)
        raise Boom
    assert path.read_bytes() == before
    assert listing(path.parent) == [path.name]


def test_exception_inside_with_leaves_an_appended_file_unchanged(make_kdb: Any) -> None:
    path, _ = make_kdb(2, cameras={"cam": (4, 4, 3)})
    before = path.read_bytes()
    with pytest.raises(Boom), kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.ones((50, 30)), images={"cam": np.zeros((50, 4, 4, 3), np.uint8)})
        raise Boom
    assert path.read_bytes() == before
    assert listing(path.parent) == [path.name]
    with kinodb.Writer(path, mode="a") as w:  # the lock was released
        w.add_episode(actions=A4)
    with kinodb.open(path) as db:
        assert len(db) == 3


def test_abort_then_close_does_nothing(tmp_path: Path) -> None:
    w = kinodb.Writer(tmp_path / "a.kdb")
    w.add_episode(actions=A4)
    w.abort()
    w.close()
    assert listing(tmp_path) == []
    with pytest.raises(WriterError, match="writer is closed"):
        w.add_episode(actions=A4)


def test_mode_x_refuses_an_existing_file(make_kdb: Any) -> None:
    path, _ = make_kdb(1)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="use mode='w' to replace it or 'a' to append"):
        kinodb.Writer(path, mode="x")
    assert path.read_bytes() == before
    assert listing(path.parent) == [path.name]


def test_mode_x_refuses_a_file_created_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "race.kdb"
    w = kinodb.Writer(path, mode="x")
    w.add_episode(actions=A4)
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        w.close()
    assert path.read_bytes() == b"someone else's"
    assert listing(tmp_path) == [path.name]


def test_closing_without_episodes_writes_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(WriterError, match="no episodes were added; nothing was written"),
        kinodb.Writer(tmp_path / "e.kdb"),
    ):
        pass
    assert listing(tmp_path) == []


def test_a_forgotten_writer_leaves_no_temp_file(tmp_path: Path) -> None:
    w = kinodb.Writer(tmp_path / "f.kdb")
    w.add_episode(actions=A4)
    assert len(listing(tmp_path)) == 1  # the temporary file, hidden beside the target
    del w
    gc.collect()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("mode", ["x", "w", "a"])
def test_successful_writes_leave_only_the_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "ok.kdb"
    for _ in range(2 if mode != "x" else 1):
        with kinodb.Writer(path, mode=mode) as w:
            w.add_episode(actions=A4)
        assert listing(tmp_path) == ["ok.kdb"]
    with kinodb.open(path) as db:
        assert len(db) == (2 if mode == "a" else 1)


def test_new_files_are_published_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "fat.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A4)
    assert listing(tmp_path) == ["fat.kdb"]
    with kinodb.open(path) as db:
        assert len(db) == 1
    w = kinodb.Writer(tmp_path / "late.kdb")
    w.add_episode(actions=A4)
    (tmp_path / "late.kdb").write_bytes(b"arrived first")
    with pytest.raises(FileExistsError):
        w.close()
    assert (tmp_path / "late.kdb").read_bytes() == b"arrived first"
    assert listing(tmp_path) == ["fat.kdb", "late.kdb"]


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "d.kdb"
    dead = tmp_path / ".d.kdb.4194999.0badf00d.tmp"  # above Linux's pid_max: no such process
    alive = tmp_path / f".d.kdb.{os.getpid()}.0badf00d.tmp"
    other = tmp_path / ".e.kdb.4194999.0badf00d.tmp"
    for junk in (dead, alive, other):
        junk.write_bytes(b"half-written")
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.zeros((2, 3), np.float32))
    assert not dead.exists()
    assert alive.exists() and other.exists()  # a live writer's file and other files are left alone


def _episodes(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    return [{"actions": rng.normal(size=(50, 7)).astype(np.float32),
             "states": rng.normal(size=(50, 14)).astype(np.float32)} for _ in range(n)]  # fmt: skip


def test_background_syncs_run_while_writing_and_the_file_reads_back(tmp_path: Path, monkeypatch) -> None:
    from kinodb.kdb import _files as files_mod

    monkeypatch.setattr(files_mod.Flusher, "EVERY", 4096)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    eps = _episodes(20)
    with kinodb.Writer(tmp_path / "s.kdb") as w:
        for ep in eps:
            w.add_episode(**ep)
        assert synced  # some data went to disk before the commit
    from kinodb.kdb.validate import validate

    assert validate(tmp_path / "s.kdb").ok
    with kinodb.open(tmp_path / "s.kdb") as db:
        assert len(db) == 20
        for i, ep in enumerate(eps):
            np.testing.assert_array_equal(db.read_array(i, "states"), ep["states"])


@pytest.mark.parametrize("mode", ["x", "a"])
def test_a_failed_background_sync_fails_the_commit_and_keeps_the_old_state(
    tmp_path: Path, monkeypatch, mode: str
) -> None:
    from kinodb.kdb import _files as files_mod

    path = tmp_path / "f.kdb"
    if mode == "a":
        with kinodb.Writer(path) as w:
            w.add_episode(**_episodes(1)[0])
    before = listing(tmp_path)
    monkeypatch.setattr(files_mod.Flusher, "EVERY", 4096)

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    w = kinodb.Writer(path, mode=mode)
    for ep in _episodes(5):
        w.add_episode(**ep)
    with pytest.raises(
        WriterError, match=r"writing to disk failed .*Input/output error.*nothing was committed"
    ):
        w.close()
    assert listing(tmp_path) == before  # no new file, no temporary left behind
    if mode == "a":
        with kinodb.open(path) as db:
            assert len(db) == 1


# -- total_reward, format limits, SOURCE_DATE_EPOCH ----------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_non_finite_total_reward_is_refused(writer: Any, value: float) -> None:
    with pytest.raises(WriterError, match=r"total_reward is .*; pass a finite number, or None"):
        writer.add_episode(actions=A4, total_reward=value)
    with pytest.raises(WriterError, match="total_reward must be a number or None"):
        writer.add_episode(actions=A4, total_reward="high")


def test_total_reward_of_non_finite_rewards_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "r.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((3, 1)), rewards=np.array([1, np.nan, 0], np.float32))
        w.add_episode(actions=np.zeros((2, 1)), rewards=np.array([np.inf, 1], np.float32))
        w.add_episode(actions=np.zeros((2, 1)), rewards=np.array([0.5, 1], np.float32))
    with kinodb.open(path) as db:
        assert [db.read_meta(i)["total_reward"] for i in range(3)] == [None, None, 1.5]
        assert db.query("total_reward IS NULL").tolist() == [0, 1]
        assert np.isnan(db.read_array(0, "rewards")[1])  # the rewards themselves are kept


def test_sections_per_episode_are_limited_to_u16(tmp_path: Path) -> None:
    path = tmp_path / "s.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((1, 1), np.float32))
        many = {f"a{k}": np.zeros(1, np.float32) for k in range(65532)}  # + 4 built-in arrays
        with pytest.raises(WriterError, match=r"episode 1 has 65536 arrays and cameras; .*65535 .*sec_count"):
            w.add_episode(actions=np.zeros((1, 1), np.float32), extra_arrays=many)
        w.add_episode(actions=np.ones((1, 1), np.float32))
    with kinodb.open(path) as db:  # the episodes before and after the refused one are kept
        assert len(db) == 2 and db.read_array(1, "actions")[0, 0] == 1


def test_distinct_section_names_are_limited_to_u16(tmp_path: Path) -> None:
    path = tmp_path / "n.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((1, 1), np.float32),
                      extra_arrays={f"a{k}": np.zeros(1, np.float32) for k in range(40000)})  # fmt: skip
        with pytest.raises(WriterError, match=r"65537 distinct array and camera names; .*65536 .*sec\.name"):
            w.add_episode(actions=np.zeros((1, 1), np.float32),
                          extra_arrays={f"b{k}": np.zeros(1, np.float32) for k in range(25533)})  # fmt: skip
        w.add_episode(actions=np.zeros((1, 1), np.float32),
                      extra_arrays={f"b{k}": np.zeros(1, np.float32) for k in range(25532)})  # fmt: skip
    with kinodb.open(path) as db:
        assert len(db) == 2 and db.read_array(1, "b25531").shape == (1,)


@pytest.mark.parametrize("epoch", ["2023-11-14", "soon", "1e400"])
def test_bad_source_date_epoch_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: str
) -> None:
    path = tmp_path / "e.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((1, 1)))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    for mode in ("x", "a"):
        target = tmp_path / "new.kdb" if mode == "x" else path
        with pytest.raises(WriterError, match=r"SOURCE_DATE_EPOCH is .*whole number of seconds since 1970"):
            kinodb.Writer(target, mode=mode)
    assert listing(tmp_path) == ["e.kdb"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.zeros((1, 1)))
    with kinodb.open(path) as db:
        assert db.dataset_info()["modified"] == "2023-11-14T22:13:20Z"


# -- appends that never finish --------------------------------------------------------------

BIG = np.ones((40_000, 16), np.float32)  # 2.5 MB: past the writer's buffer, so it reaches the file


def test_a_forgotten_appender_leaves_the_file_as_committed(tmp_path: Path) -> None:
    path = tmp_path / "g.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A4)
    before = path.read_bytes()
    w = kinodb.Writer(path, mode="a")
    w.add_episode(actions=BIG)
    assert path.stat().st_size > len(before)  # the episode's bytes are in the file
    del w
    gc.collect()
    assert path.read_bytes() == before  # never closed: nothing of it stays
    report = validate(path)
    assert report.ok and not report.warnings
    with kinodb.Writer(path, mode="a") as w:  # the lock was released
        w.add_episode(actions=A4)
    with kinodb.open(path) as db:
        assert len(db) == 2


def test_validate_notes_the_bytes_a_killed_appender_left(tmp_path: Path) -> None:
    path = tmp_path / "k.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A4)
    committed = path.stat().st_size
    src = Path(__file__).resolve().parents[2] / "src"
    script = (
        "import os, sys, numpy as np, kinodb\n"
        "w = kinodb.Writer(sys.argv[1], mode='a')\n"
        "w.add_episode(actions=np.ones((40_000, 16), np.float32))\n"
        "os._exit(0)  # killed: no close, no abort, no finalizer\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    left = path.stat().st_size - committed
    assert left > 0
    report = validate(path)
    assert report.ok, report.errors  # a note, not a failure: the committed state is whole
    (note,) = report.warnings
    assert note.startswith(
        f"{left} bytes after the last commit (byte offset {committed}): an append in progress"
    )
    assert "did not finish" in note and "the next append removes them" in note
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=A4)
    report = validate(path)
    assert report.ok and not report.warnings
    with kinodb.open(path) as db:
        assert len(db) == 2
