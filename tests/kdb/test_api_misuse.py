"""Misuse of the public API gets a kinodb error naming the argument (episode, camera, frame)
and the fix, and loses nothing already written: two writers in mode "a" on a path with no
file yet, arguments of the wrong type, frames in a mode cameras do not store, lenient
scalars, damaged frames read back."""

from __future__ import annotations

import io
import os
import shutil
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import kinodb
from kinodb import CorruptFileError, WriterError
from kinodb.kdb import _writer_copy

A = np.zeros((3, 2), np.float32)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def actions(db: kinodb.Database) -> list[float]:
    return [float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))]


# -- mode "a" on a path another writer creates meanwhile ----------------------------------


def test_two_appenders_of_a_new_path_keep_every_episode(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.kdb"
    first, second = kinodb.Writer(path, mode="a"), kinodb.Writer(path, mode="a")
    for i in range(3):
        first.add_episode(actions=A + i)
    for i in range(5):
        second.add_episode(actions=A + 10 + i)
    first.close()
    second.close()
    second.close()  # closed: a no-op
    with kinodb.open(path) as db:
        assert actions(db) == [0, 1, 2, 10, 11, 12, 13, 14]
    assert listing(tmp_path) == ["rollouts.kdb"]


def test_the_append_follows_the_rules_of_an_append(tmp_path: Path) -> None:
    path = tmp_path / "r.kdb"
    names = {"actions": {"names": ["x", "y"]}}
    second = kinodb.Writer(path, mode="a", schema=names, source_format="sim", metadata={"site": "b"})
    second.add_episode(actions=A)
    second.stats = {"num_frames": 3}  # describes this writer's episodes, not the file's
    with kinodb.Writer(path, mode="x", metadata={"site": "a", "robot": "arm"}) as first:
        first.add_episode(actions=A + 1)
    second.close()
    with kinodb.open(path) as db:
        assert actions(db) == [1, 0]
        meta = db.metadata()
        dataset = db._block.dataset
    assert meta["site"] == "b" and meta["robot"] == "arm"  # updated, as an append updates it
    assert dataset["source_format"] == "sim" and "modified" in dataset
    assert dataset["schema"]["actions"]["names"] == ["x", "y"]
    assert dataset["stats"]["stale"] is True


def test_episodes_the_file_cannot_take_are_kept_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "r.kdb"
    second = kinodb.Writer(path, mode="a", schema={"actions": {"names": ["x", "y"]}})
    second.add_episode(actions=A)
    second.add_episode(actions=A + 1)
    with kinodb.Writer(path, mode="x", schema={"actions": {"names": ["a", "b"]}}) as first:
        first.add_episode(actions=A + 5)
    before = path.read_bytes()
    with pytest.raises(WriterError, match=r"another writer created this file while this one wrote") as info:
        second.close()
    message = str(info.value)
    kept = [name for name in listing(tmp_path) if name != "r.kdb"]
    assert len(kept) == 1 and kept[0].startswith("r.unmerged-") and kept[0].endswith(".kdb")
    assert "2 episodes could not be appended" in message and str(tmp_path / kept[0]) in message
    assert "kino merge" in message and "schema actions.names" in message
    assert path.read_bytes() == before
    with kinodb.open(tmp_path / kept[0]) as db:
        assert actions(db) == [0, 1]
    with pytest.raises(WriterError, match=r"this writer is closed: .* kept in"):
        second.close()
    with pytest.raises(WriterError, match="kept in"):
        second.add_episode(actions=A)


def test_a_file_that_is_not_a_kdb_file_keeps_the_episodes_too(tmp_path: Path) -> None:
    path = tmp_path / "r.kdb"
    w = kinodb.Writer(path, mode="a")
    w.add_episode(actions=A)
    path.write_bytes(b"someone else's")
    with pytest.raises(WriterError, match="could not be appended"):
        w.close()
    assert path.read_bytes() == b"someone else's"
    (kept,) = (tmp_path / name for name in listing(tmp_path) if name != "r.kdb")
    with kinodb.open(kept) as db:
        assert len(db) == 1


def test_a_third_writer_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "r.kdb"
    second = kinodb.Writer(path, mode="a")
    second.add_episode(actions=A)
    with kinodb.Writer(path, mode="x") as first:
        first.add_episode(actions=A + 1)
    third = kinodb.Writer(path, mode="a")  # appending: it holds the file's lock
    third.add_episode(actions=A + 2)
    threading.Timer(0.3, third.close).start()
    second.close()
    with kinodb.open(path) as db:
        assert actions(db) == [1, 2, 0]
    assert listing(tmp_path) == ["r.kdb"]


def test_a_third_writer_holding_the_file_past_the_wait_keeps_the_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writer_copy, "RACE_WAIT_S", 0.05)
    path = tmp_path / "r.kdb"
    second = kinodb.Writer(path, mode="a")
    second.add_episode(actions=A)
    with kinodb.Writer(path, mode="x") as first:
        first.add_episode(actions=A + 1)
    third = kinodb.Writer(path, mode="a")  # appending: it holds the file's lock
    with pytest.raises(WriterError, match="another writer is writing to this file") as info:
        second.close()
    third.abort()
    assert "kept in" in str(info.value)
    kept = [name for name in listing(tmp_path) if name != "r.kdb"]
    assert len(kept) == 1
    with kinodb.open(path) as db:
        assert len(db) == 1
    with kinodb.open(tmp_path / kept[0]) as db:
        assert actions(db) == [0]


# -- arguments of the wrong type -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"extra": [("scene", "lab")]}, "extra"),
        ({"images": [np.zeros((3, 8, 8, 3), np.uint8)]}, "images"),
        ({"images": np.zeros((3, 8, 8, 3), np.uint8)}, "images"),
        ({"extra_arrays": [A]}, "extra_arrays"),
        ({"extra_arrays": A}, "extra_arrays"),
    ],
)
def test_a_sequence_where_a_mapping_belongs_is_named(
    tmp_path: Path, kwargs: dict[str, Any], name: str
) -> None:
    with kinodb.Writer(tmp_path / "m.kdb", mode="w") as w:
        with pytest.raises(
            WriterError, match=rf"^{name} must be a mapping \(a dict\), e\.g\. .*\(adding episode 0\)"
        ):
            w.add_episode(actions=A, **kwargs)
        w.add_episode(actions=A)


def test_a_schema_that_is_not_a_mapping_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match=r"schema must be a mapping \(a dict\)"):
        kinodb.Writer(tmp_path / "s.kdb", mode="w", schema=[("states", {})])  # type: ignore[arg-type]
    assert listing(tmp_path) == []


def test_a_tensor_that_requires_grad_is_told_to_detach(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with kinodb.Writer(tmp_path / "t.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=r"^states is a tensor that requires grad.*\.detach\(\)"):
            w.add_episode(actions=A, states=torch.zeros(3, 2, requires_grad=True))
        w.add_episode(actions=torch.zeros(3, 2, requires_grad=True).detach())


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "g.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=A)
        w.add_episode(actions=A + 1)
    return path


def test_gather_refuses_an_output_it_cannot_write(small: Path) -> None:
    read_only = np.zeros((6, 2), np.float32)
    read_only.setflags(write=False)
    with kinodb.open(small) as db:
        with pytest.raises(ValueError, match=r"out is read-only; .*np\.empty\(\(6, 2\), np\.float32\)"):
            db.gather("actions", out=read_only)
        with pytest.raises(ValueError, match=r"out must be a NumPy array .*got list"):
            db.gather("actions", out=[0.0] * 12)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="out is read-only"):
            db.gather("actions", [1, 0], out=read_only)
        out = np.zeros((6, 2), np.float32)
        assert db.gather("actions", [1, 0], out=out) is out


def test_gather_refuses_indices_mixing_bools_and_ints(small: Path) -> None:
    with kinodb.open(small) as db:
        for episodes in ([True, 1], (0, np.bool_(False))):
            with pytest.raises(kinodb.EpisodeNotFoundError, match="a list mixing bools and ints"):
                db.gather("actions", episodes)  # type: ignore[arg-type]
        np.testing.assert_array_equal(db.gather("actions", [False, True]), A + 1)  # a mask, as documented
        np.testing.assert_array_equal(db.gather("actions", [1, 0]), np.concatenate([A + 1, A]))


# -- frames in a mode cameras do not store ----------------------------------------------------


def _encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_16_bit_png_frames_are_told_to_be_an_extra_array(tmp_path: Path) -> None:
    frame = _encoded(Image.fromarray(np.full((12, 16), 1000, np.uint16)), "PNG")
    with kinodb.Writer(tmp_path / "d.kdb", mode="w") as w:
        with pytest.raises(WriterError) as info:
            w.add_episode(actions=A, images={"depth": [frame] * 3})
        w.add_episode(actions=A)
    message = str(info.value)
    assert message.startswith("images['depth'][0]: image mode 'I;16' is not supported")
    assert "extra_arrays={'depth': uint16 (T, H, W)}" in message and message.endswith("(adding episode 0)")


def test_cmyk_jpeg_frames_are_named_and_told_to_convert(tmp_path: Path) -> None:
    frame = _encoded(Image.new("CMYK", (16, 16)), "JPEG")
    with kinodb.Writer(tmp_path / "c.kdb", mode="w") as w:
        with pytest.raises(
            WriterError, match=r"^images\['front'\]\[0\]: image mode 'CMYK' .*convert\('RGB'\)"
        ):
            w.add_episode(actions=A, images={"front": [frame] * 3})
        w.add_episode(actions=A)


def test_uint16_pixels_are_told_to_be_an_extra_array(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "u.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=r"got uint16 .*extra_arrays=\{'depth': uint16 \(T, H, W\)\}"):
            w.add_episode(actions=A, images={"depth": np.zeros((3, 12, 16), np.uint16)})
        w.add_episode(actions=A, extra_arrays={"depth": np.zeros((3, 12, 16), np.uint16)})


# -- scalars --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": "15"}, r"fps must be a positive number, got '15'"),
        ({"fps": True}, r"fps must be a positive number, got True"),
        ({"fps": np.array(15.0)}, r"fps must be a positive number, got array\(15\.\); .*x\.item\(\)"),
        ({"total_reward": "1"}, r"total_reward must be a number or None \(unknown\), got '1'"),
        ({"total_reward": True}, r"total_reward must be a number or None \(unknown\), got True"),
        ({"total_reward": np.bool_(False)}, r"total_reward must be a number or None"),
        ({"total_reward": 10**400}, r"total_reward is inf; pass a finite number"),
    ],
)
def test_scalars_must_be_real_numbers(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with kinodb.Writer(tmp_path / "f.kdb", mode="w") as w:
        with pytest.raises(WriterError, match=message):
            w.add_episode(actions=A, **kwargs)
        w.add_episode(actions=A)


def test_real_numbers_of_any_kind_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.kdb"
    values = [(15, 1), (np.float32(7.5), np.int64(2)), (Fraction(5, 2), np.float16(0.5))]
    with kinodb.Writer(path, mode="w") as w:
        for fps, reward in values:
            w.add_episode(actions=A, fps=fps, total_reward=reward)
    with kinodb.open(path) as db:
        got = [(db.read_meta(i)["fps"], db.read_meta(i)["total_reward"]) for i in range(3)]
    assert got == [(15.0, 1.0), (7.5, 2.0), (2.5, 0.5)]


# -- damaged frames read back ----------------------------------------------------------------


@pytest.fixture
def jpeg_file(tmp_path: Path) -> tuple[Path, Any]:
    path = tmp_path / "clean.kdb"
    rng = np.random.default_rng(0)
    with kinodb.Writer(path, mode="x", image_codec="jpeg") as w:
        for _ in range(3):
            w.add_episode(actions=A, images={"front": rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)})
    with kinodb.open(path) as db:
        cam = db._episode_cameras(1)["front"]
        blob = db.read_image_bytes(1, "front", 2)
    return path, (cam, blob)


def test_a_frame_of_another_size_says_how_to_find_the_damage(
    tmp_path: Path, jpeg_file: tuple[Path, Any]
) -> None:
    clean, (cam, blob) = jpeg_file
    path = tmp_path / "sof.kdb"
    shutil.copy(clean, path)
    with open(path, "r+b") as f:  # frame 2's SOF header: 16 rows, not 32
        f.seek(cam.data_offset + int(cam.frame_offsets[2]) + blob.find(b"\xff\xc0") + 5)
        f.write((16).to_bytes(2, "big"))
    with kinodb.open(path) as db, pytest.raises(CorruptFileError) as info:
        db.read_frames(1, 2, 3)
    assert "frame 2: image is 16x32 (HxW), the index says 32x32" in str(info.value)
    assert "run kino validate on the file to list every damaged frame" in str(info.value)


def test_a_damaged_frame_offset_table_says_how_to_find_the_damage(
    tmp_path: Path, jpeg_file: tuple[Path, Any]
) -> None:
    clean, (cam, _) = jpeg_file
    path = tmp_path / "table.kdb"
    shutil.copy(clean, path)
    with open(path, "r+b") as f:  # entry 1 past entry 2: offsets that decrease
        f.seek(cam.data_offset - 8 * 4 + 8)
        f.write(int(cam.frame_offsets[3]).to_bytes(8, "little"))
    with kinodb.open(path) as db, pytest.raises(CorruptFileError) as info:
        db.read_frames(1, 0, 1)
    assert "frame offset table at byte offset" in str(info.value)
    assert str(info.value).endswith("run kino validate on the file to list every damaged frame")
    assert os.path.exists(clean)
