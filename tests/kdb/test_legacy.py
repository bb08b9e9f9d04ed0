"""Reading ``.kdb`` format 0.1 files and upgrading them to v1."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import (
    FORMAT_COMPRESSED,
    Episode,
    Image,
    encode,
    encoded_frames,
    index_entries,
    random_episode,
    raw_frames,
)
from kinodb.errors import (
    ConversionError,
    CorruptFileError,
    EpisodeNotFoundError,
    FormatError,
    FrameRangeError,
    KinodbError,
)
from kinodb.kdb.legacy import LegacyDatabase
from kinodb.kdb.upgrade import upgrade

Build = Callable[..., tuple[Path, list[Episode]]]


def gradients(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Smooth uint8 (T, H, W, C) frames, which JPEG keeps close to exact."""
    t, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty(shape, np.uint8)
    for i in range(t):
        base, slope = rng.uniform(60, 190, c), rng.uniform(-2, 2, (2, c))
        out[i] = np.clip(base + yy[..., None] * slope[0] + xx[..., None] * slope[1], 0, 255).astype(np.uint8)
    return out


def bits(a: np.ndarray) -> np.ndarray:
    """Bit patterns of a float32 array, so NaN payloads and -0.0 compare exactly."""
    return np.ascontiguousarray(a, "<f4").view("<u4")


@pytest.fixture
def episodes(rng: np.random.Generator) -> list[Episode]:
    """Three episodes: several cameras and codecs, no images, and a single frame."""
    ep0 = random_episode(rng, 6, 3, 2, embodiment="franka", task="pick the 🍎 up", fps=15.0,
                         success=True, total_reward=2.5)  # fmt: skip
    ep0.actions[0] = [np.nan, -0.0]
    ep0.states[1] = [np.inf, -np.inf, 1e-45]
    ep0.is_terminal[2] = True
    ep0.images = {
        "wrist": raw_frames(gradients(rng, (6, 12, 16, 3))),
        "front": encoded_frames(gradients(rng, (6, 16, 24, 3)), "JPEG", 95),
        "depth": raw_frames(gradients(rng, (6, 12, 16, 1))),
        "seg": encoded_frames(gradients(rng, (6, 8, 10, 4)), "PNG"),
    }
    ep1 = random_episode(rng, 4, 0, 7, embodiment="ur5", task="", fps=10.0, success=False)
    ep1.rewards[:] = 0.0
    ep2 = random_episode(rng, 1, 2, 1, embodiment="franka", task="push", success=None, total_reward=-1.25)
    ep2.images = {"wrist": raw_frames(gradients(rng, (1, 12, 16, 3)))}
    return [ep0, ep1, ep2]


@pytest.fixture
def build(tmp_path: Path, episodes: list[Episode]) -> Build:
    """Write a 0.1 file (``episodes`` by default) and return ``(path, episodes)``."""

    def make(eps: list[Episode] | None = None, name: str = "old.kdb") -> tuple[Path, list[Episode]]:
        eps = episodes if eps is None else eps
        path = tmp_path / name
        path.write_bytes(encode(eps))
        return path, eps

    return make


def source_frames(images: list[Image]) -> np.ndarray:
    """The stored frames of a raw camera as (T, H, W, C)."""
    im = images[0]
    return np.stack(
        [np.frombuffer(f.data, np.uint8).reshape(im.height, im.width, im.channels) for f in images]
    )


def decoded_source(images: list[Image]) -> np.ndarray:
    """The frames of an encoded camera, decoded by Pillow straight from the stored bytes."""
    import io

    from PIL import Image as PILImage

    out = []
    for f in images:
        with PILImage.open(io.BytesIO(f.data)) as im:
            arr = np.asarray(im)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


def corrupt(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def read_all(path: Path) -> None:
    """Open ``path`` and read every episode and frame, as a user might."""
    with kinodb.open(path) as db:
        db.summary()
        db.episodes()
        for i in range(len(db)):
            db.read_meta(i)
            ep = db.read_episode(i)
            for cam in ep["images"]:
                db.read_image_bytes(i, cam, 0)


# -- reading ------------------------------------------------------------------------------


def test_open_returns_legacy_database(build: Build) -> None:
    path, eps = build()
    with kinodb.open(path) as db:
        assert isinstance(db, LegacyDatabase)
        assert isinstance(db, kinodb.Database)
        assert db.version() == "0.1"
        assert len(db) == db.num_episodes() == 3
        assert db.num_frames() == sum(len(e.actions) for e in eps)
        assert db.path() == str(path)
        assert "0.1" in repr(db)
        text = db.summary()
        assert "episodes: 3" in text and "franka, ur5" in text and "1/2 known" in text
        assert db.dataset_info()["created"] == "2023-11-14T22:13:20Z"


def test_meta_matches_encoded(build: Build) -> None:
    path, eps = build()
    with kinodb.open(path) as db:
        for i, ep in enumerate(eps):
            meta = db.read_meta(i)
            assert meta == {
                "episode_id": i, "embodiment": ep.embodiment, "task": ep.task,
                "num_frames": len(ep.actions), "fps": ep.fps, "action_dim": ep.actions.shape[1],
                "state_dim": ep.states.shape[1], "success": ep.success, "total_reward": ep.total_reward,
            }  # fmt: skip
        table = db.episodes()
        assert table["embodiment"].tolist() == ["franka", "ur5", "franka"]
        assert table["success"].tolist() == [True, False, None]
        np.testing.assert_array_equal(table["total_reward"], [2.5, np.nan, -1.25])
        np.testing.assert_array_equal(table["num_frames"], [6, 4, 1])


def test_arrays_are_exact_read_only_views(build: Build) -> None:
    path, eps = build()
    with kinodb.open(path) as db:
        for i, ep in enumerate(eps):
            got = db.read_episode_actions_only(i)
            assert "images" not in got
            for name in ("actions", "states", "rewards"):
                arr = got[name]
                assert arr.dtype == np.float32 and not arr.flags.writeable, name
                np.testing.assert_array_equal(bits(arr), bits(getattr(ep, name)), err_msg=name)
            assert got["is_terminal"].dtype == np.bool_
            np.testing.assert_array_equal(got["is_terminal"], ep.is_terminal)
            np.testing.assert_array_equal(db.read_array(i, "actions"), ep.actions)
        assert not db.read_array(0, "actions").flags.owndata
        with pytest.raises(KeyError, match="timestamps"):
            db.read_array(0, "timestamps")


def test_nonzero_terminal_bytes_read_as_true(build: Build) -> None:
    path, _ = build()
    e = index_entries(path.read_bytes())[0]
    row = 4 * (3 + 2) + 5
    corrupt(path, e["actions_offset"] + row + row - 1, b"\x07")  # frame 1's flag
    with kinodb.open(path) as db:
        term = db.read_array(0, "is_terminal")
        assert term.dtype == np.bool_ and not term.flags.writeable
        assert term.tolist() == [False, True, True, False, False, True]


def test_images_raw_exact_and_encoded_close(build: Build) -> None:
    path, eps = build()
    with kinodb.open(path) as db:
        images = db.read_episode(0)["images"]
        assert list(images) == ["wrist", "front", "depth", "seg"]
        for cam in ("wrist", "depth"):
            np.testing.assert_array_equal(images[cam], source_frames(eps[0].images[cam]), err_msg=cam)
        front = images["front"]
        assert front.shape == (6, 16, 24, 3) and front.dtype == np.uint8
        np.testing.assert_array_equal(front, decoded_source(eps[0].images["front"]))
        assert images["seg"].shape == (6, 8, 10, 4)
        np.testing.assert_array_equal(images["seg"], decoded_source(eps[0].images["seg"]))
        assert db.read_episode(1)["images"] == {}
        np.testing.assert_array_equal(db[2]["images"]["wrist"], source_frames(eps[2].images["wrist"]))
        assert db.cameras(0)["front"] == {"codec": "jpeg", "shape": (6, 16, 24, 3)}
        assert db.cameras(0)["seg"]["codec"] == "png"
        cams = db.schema()["cameras"]
        assert cams["wrist"] == {"codec": "raw", "height": 12, "width": 16, "channels": 3}
        assert cams["front"]["codec"] == "jpeg"


def test_jpeg_is_close_to_source_pixels(rng: np.random.Generator, build: Build) -> None:
    frames = gradients(rng, (3, 32, 32, 3))
    ep = random_episode(rng, 3, 1, 1)
    ep.images = {"cam": encoded_frames(frames, "JPEG", 95)}
    path, _ = build([ep])
    with kinodb.open(path) as db:
        got = db.read_episode(0)["images"]["cam"]
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 2.0


def test_raw_only_camera_is_a_zero_copy_view(rng: np.random.Generator, build: Build) -> None:
    frames = gradients(rng, (5, 4, 6, 3))
    ep = random_episode(rng, 5, 1, 1)
    ep.images = {"a": raw_frames(frames), "b": raw_frames(frames[:, :2])}
    path, _ = build([ep])
    with kinodb.open(path) as db:
        a = db.read_episode(0)["images"]["a"]
        assert not a.flags.owndata and not a.flags.writeable
        np.testing.assert_array_equal(a, frames)
        np.testing.assert_array_equal(db.read_frames(0, 1, 4)["images"]["b"], frames[1:4, :2])


def test_read_frames_windows(build: Build) -> None:
    path, eps = build()
    ep = eps[0]
    with kinodb.open(path) as db:
        full = db.read_episode(0)
        for start, stop in [(0, 6), (0, 1), (2, 5), (5, 6)]:
            win = db.read_frames(0, start, stop)
            for name in ("actions", "states", "rewards", "is_terminal"):
                np.testing.assert_array_equal(win[name], getattr(ep, name)[start:stop], err_msg=name)
            for cam, frames in full["images"].items():
                np.testing.assert_array_equal(win["images"][cam], frames[start:stop], err_msg=cam)
        only = db.read_frames(0, 1, 3, cameras=["front"])
        assert list(only["images"]) == ["front"]
        for start, stop in [(0, 0), (3, 2), (-1, 2), (0, 7)]:
            with pytest.raises(FrameRangeError):
                db.read_frames(0, start, stop)
        with pytest.raises(KeyError, match="nope"):
            db.read_frames(0, 0, 1, cameras=["nope"])


def test_read_image_bytes_returns_stored_bytes(build: Build) -> None:
    path, eps = build()
    with kinodb.open(path) as db:
        for cam in ("wrist", "front", "depth", "seg"):
            for t in (0, 3, 5):
                assert db.read_image_bytes(0, cam, t) == eps[0].images[cam][t].data
            assert db.read_images_bytes(0, cam) == [f.data for f in eps[0].images[cam]]
        with pytest.raises(FrameRangeError):
            db.read_image_bytes(0, "front", 6)
        with pytest.raises(KeyError):
            db.read_image_bytes(1, "front", 0)


def test_protocols_and_pickling(build: Build) -> None:
    path, eps = build()
    db = kinodb.open(path)
    copy = pickle.loads(pickle.dumps(db))
    assert isinstance(copy, LegacyDatabase) and copy.path() == db.path()
    np.testing.assert_array_equal(copy[0]["actions"], eps[0].actions)
    np.testing.assert_array_equal(db[-1]["actions"], eps[2].actions)
    assert [e["meta"]["episode_id"] for e in db] == [0, 1, 2]
    with pytest.raises(EpisodeNotFoundError, match=r"\(0\.\.2\)"):
        db.read_episode(3)
    with pytest.raises(IndexError):
        db.read_meta(-4)
    kept = db.read_episode(0)["actions"]
    with db:
        pass
    np.testing.assert_array_equal(kept, eps[0].actions)  # arrays outlive close()
    with pytest.raises(ValueError, match="closed"):
        db.read_episode(0)
    copy.close()


def test_empty_episode_reads_as_zero_frames(rng: np.random.Generator, build: Build) -> None:
    path, _ = build([random_episode(rng, 0, 2, 3), random_episode(rng, 2, 2, 3)])
    with kinodb.open(path) as db:
        ep = db.read_episode(0)
        assert ep["actions"].shape == (0, 3) and ep["states"].shape == (0, 0) and ep["images"] == {}
        assert db.num_frames() == 2


def test_mixed_camera_decodes_every_frame(rng: np.random.Generator, build: Build) -> None:
    frames = gradients(rng, (4, 8, 8, 3))
    jpeg = encoded_frames(frames, "JPEG", 95)
    raw = raw_frames(frames)
    ep = random_episode(rng, 4, 1, 1)
    ep.images = {"cam": [raw[0], jpeg[1], raw[2], jpeg[3]]}
    path, _ = build([ep])
    with kinodb.open(path) as db:
        assert db.cameras(0)["cam"]["codec"] == "mixed"
        got = db.read_episode(0)["images"]["cam"]
        np.testing.assert_array_equal(got[[0, 2]], frames[[0, 2]])
        np.testing.assert_array_equal(got[[1, 3]], decoded_source([jpeg[1], jpeg[3]]))
        np.testing.assert_array_equal(db.read_frames(0, 1, 3)["images"]["cam"], got[1:3])


def test_grayscale_jpeg_keeps_stored_channels(rng: np.random.Generator, build: Build) -> None:
    gray = gradients(rng, (2, 8, 8, 1))
    ep = random_episode(rng, 2, 1, 1)
    ep.images = {"cam": encoded_frames(gray, "JPEG", 95)}
    ep.images["rgb_header"] = [Image(f.data, 8, 8, 3, FORMAT_COMPRESSED) for f in ep.images["cam"]]
    path, _ = build([ep])
    with kinodb.open(path) as db:
        images = db.read_episode(0)["images"]
    assert images["cam"].shape == (2, 8, 8, 1)
    assert images["rgb_header"].shape == (2, 8, 8, 3)  # converted to the channels the header states


def test_writer_refuses_to_append_to_legacy(build: Build) -> None:
    path, _ = build()
    before = path.read_bytes()
    with pytest.raises(FormatError, match="kino upgrade"):
        kinodb.Writer(path, mode="a")
    assert path.read_bytes() == before


# -- upgrade ------------------------------------------------------------------------------


def test_upgrade_keeps_every_episode(tmp_path: Path, build: Build) -> None:
    path, _ = build()
    new = tmp_path / "new.kdb"
    assert upgrade(path, new) == 3
    with kinodb.open(path) as old, kinodb.open(new) as db:
        assert db.version() == "1.0"
        info = db.dataset_info()
        assert info["source_format"] == "kinodb-0.1"
        assert info["metadata"]["upgraded_from"]["format_version"] == "0.1"
        assert info["metadata"]["upgraded_from"]["path"] == str(path.resolve())
        assert len(db) == len(old) and db.num_frames() == old.num_frames()
        for i in range(len(old)):
            assert db.read_meta(i) == old.read_meta(i)
            a, b = old.read_episode(i), db.read_episode(i)
            for name in ("actions", "states", "rewards"):
                np.testing.assert_array_equal(bits(b[name]), bits(a[name]), err_msg=name)
            np.testing.assert_array_equal(b["is_terminal"], a["is_terminal"])
            assert list(b["images"]) == list(a["images"])
            for cam, frames in a["images"].items():
                np.testing.assert_array_equal(b["images"][cam], frames, err_msg=cam)
                assert db.cameras(i)[cam] == old.cameras(i)[cam]
                for t in range(len(frames)):
                    assert db.read_image_bytes(i, cam, t) == old.read_image_bytes(i, cam, t)


def test_upgrade_destination_rules(tmp_path: Path, build: Build) -> None:
    path, _ = build()
    new = tmp_path / "new.kdb"
    upgrade(path, new)
    with pytest.raises(FileExistsError):
        upgrade(path, new)
    assert upgrade(path, new, overwrite=True) == 3
    assert upgrade(new, tmp_path / "again.kdb") == 3  # v1 sources are rewritten too
    with kinodb.open(tmp_path / "again.kdb") as db:
        assert db.dataset_info()["source_format"] == "kinodb-0.1"
        assert db.metadata()["upgraded_from"]["format_version"] == "1.0"


def test_upgrade_rewrites_v1_files_with_extras(
    tmp_path: Path, make_kdb: Callable[..., tuple[Path, list[dict]]]
) -> None:
    path, _ = make_kdb(3, image_codec="jpeg", cameras={"cam": (8, 8, 3)}, timestamps=True,
                       extra_arrays={"force": (2,)}, metadata={"robot": "arm"})  # fmt: skip
    new = tmp_path / "new.kdb"
    assert upgrade(path, new) == 3
    with kinodb.open(path) as old, kinodb.open(new) as db:
        assert db.metadata()["robot"] == "arm"
        for i in range(3):
            assert db.read_meta(i) == old.read_meta(i)
            a, b = old.read_episode_actions_only(i), db.read_episode_actions_only(i)
            assert sorted(a) == sorted(b)
            for name in ("timestamps", "force", "actions"):
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)
            assert db.read_image_bytes(i, "cam", 1) == old.read_image_bytes(i, "cam", 1)


def test_upgrade_decodes_mixed_cameras_to_raw(rng: np.random.Generator, tmp_path: Path, build: Build) -> None:
    frames = gradients(rng, (3, 8, 8, 3))
    jpeg, raw = encoded_frames(frames, "JPEG", 95), raw_frames(frames)
    ep = random_episode(rng, 3, 1, 1, total_reward=1.0)
    ep.images = {"cam": [jpeg[0], raw[1], jpeg[2]]}
    path, _ = build([ep])
    with pytest.warns(UserWarning, match="camera 'cam' stored raw .*mix raw and encoded"):
        upgrade(path, tmp_path / "new.kdb")
    with kinodb.open(path) as old, kinodb.open(tmp_path / "new.kdb") as db:
        assert db.cameras(0)["cam"]["codec"] == "raw"
        np.testing.assert_array_equal(
            db.read_episode(0)["images"]["cam"], old.read_episode(0)["images"]["cam"]
        )


def test_upgrade_keeps_an_unknown_total_reward_unknown(
    rng: np.random.Generator, tmp_path: Path, build: Build
) -> None:
    ep = random_episode(rng, 3, 1, 1)  # nonzero rewards, total_reward unknown
    path, _ = build([ep])
    upgrade(path, tmp_path / "new.kdb")
    with kinodb.open(tmp_path / "new.kdb") as db:
        assert db.read_meta(0)["total_reward"] is None  # not the sum of the rewards


def test_upgrade_refuses_empty_episodes(rng: np.random.Generator, tmp_path: Path, build: Build) -> None:
    path, _ = build([random_episode(rng, 2, 1, 1), random_episode(rng, 0, 1, 1)])
    with pytest.raises(ConversionError, match="episode 1"):
        upgrade(path, tmp_path / "new.kdb")
    assert not (tmp_path / "new.kdb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["old.kdb"]


# -- damaged files ------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 8, 40, 63, 64, 100, -64, -1])
def test_truncated_file(build: Build, keep: int) -> None:
    path, _ = build()
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    with pytest.raises(FormatError):
        kinodb.open(path)


def test_unfinished_file_is_not_a_kdb(build: Build) -> None:
    path, _ = build()
    corrupt(path, 0, bytes(64))  # the 0.1 writer's placeholder header
    with pytest.raises(FormatError, match=r"not a \.kdb file"):
        kinodb.open(path)


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (32, struct.pack("<Q", 63), "not a multiple"),
        (24, struct.pack("<Q", 2**64 - 64), "lies outside the file"),
    ],
)
def test_bad_header(build: Build, offset: int, value: bytes, match: str) -> None:
    path, _ = build()
    corrupt(path, offset, value)
    with pytest.raises(CorruptFileError, match=match):
        kinodb.open(path)


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (16, struct.pack("<Q", 999), "3 episodes and 999 frames, the index has 3 episodes and 11 frames"),
        (8, struct.pack("<Q", 7), "7 episodes and 11 frames, the index has 3 episodes"),
    ],
)
def test_header_counts_are_informational(build: Build, offset: int, value: bytes, match: str) -> None:
    """The 0.1 reader counted index entries: a header count that disagrees only warns."""
    path, eps = build()
    corrupt(path, offset, value)
    with pytest.warns(UserWarning, match=match), kinodb.open(path) as db:
        assert len(db) == 3 and db.num_frames() == 11
        np.testing.assert_array_equal(db.read_array(2, "actions"), eps[2].actions)


def test_validate_reports_disagreeing_header_counts_as_a_warning(build: Build) -> None:
    import warnings

    from kinodb.kdb.validate import validate

    path, _ = build()
    corrupt(path, 8, struct.pack("<Q", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # validate reports it: nothing is left to warn about
        report = validate(path)
    assert report.ok and report.errors == []
    assert report.warnings[0] == (
        "the header at byte offset 8 says 1 episode and 11 frames, the index has 3 episodes and 11 frames; "
        "reading the index's (kino upgrade writes a file whose counts agree)"
    )
    assert any("has no checksums" in w for w in report.warnings[1:])
    corrupt(path, 8, struct.pack("<Q", 3))
    assert not any("byte offset 8" in w for w in validate(path).warnings)


def _corrupt_entry(path: Path, episode: int, field: str, value: int) -> None:
    entry_off = struct.unpack_from("<Q", path.read_bytes(), 24)[0] + 64 * episode
    pos = {"num_frames": 8, "state_dim": 14, "actions_offset": 16, "actions_length": 24,
           "images_offset": 32, "meta_offset": 48, "meta_length": 56}[field]  # fmt: skip
    size = {"num_frames": "<I", "state_dim": "<H"}.get(field, "<Q")
    corrupt(path, entry_off + pos, struct.pack(size, value))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("meta_length", 2**40, "metadata section"),
        ("meta_offset", 3, "metadata section at byte offset 3"),
    ],
)
def test_bad_metadata_entry_refuses_the_file(build: Build, field: str, value: int, match: str) -> None:
    """Every metadata blob is parsed at open, so a bad one refuses the file."""
    path, _ = build()
    _corrupt_entry(path, 0, field, value)
    with pytest.raises(CorruptFileError, match=match):
        kinodb.open(path)


@pytest.mark.parametrize(
    ("field", "value", "match", "reads"),
    [
        ("actions_offset", 2**64 - 1, "state/action section at byte offset 18446744073709551615", "arrays"),
        ("images_offset", 10**12, "image section at byte offset 1000000000000", "images"),
        ("num_frames", 7, "state/action section", "arrays"),
        ("state_dim", 4, "state_dim 4", "arrays"),
    ],
)
def test_bad_section_entry_fails_only_that_episode(
    build: Build, field: str, value: int, match: str, reads: str
) -> None:
    """An episode's sections are checked when it is read: the file opens, its metadata and
    queries work, the other episodes read, and reading this one names the damage."""
    path, eps = build()
    _corrupt_entry(path, 0, field, value)
    if field == "num_frames":
        corrupt(path, 16, struct.pack("<Q", 12))  # keep the header's frame total consistent
    with kinodb.open(path) as db:
        assert len(db) == 3
        assert db.read_meta(0)["embodiment"] == "franka"
        assert db.query("embodiment = 'franka'").tolist() == [0, 2]
        np.testing.assert_array_equal(db.read_episode(2)["actions"], eps[2].actions)
        np.testing.assert_array_equal(db.read_array(1, "actions"), eps[1].actions)
        with pytest.raises(CorruptFileError, match=match):
            db.read_episode(0)
        if reads == "arrays":
            with pytest.raises(CorruptFileError, match=match):
                db.read_array(0, "actions")
        else:
            np.testing.assert_array_equal(db.read_array(0, "actions"), eps[0].actions)
            with pytest.raises(CorruptFileError, match=match):
                db.cameras(0)


def test_bad_metadata_blob(build: Build) -> None:
    path, _ = build()
    meta = index_entries(path.read_bytes())[1]["meta_offset"]
    corrupt(path, meta, struct.pack("<H", 60000))
    with pytest.raises(CorruptFileError, match="episode 1: metadata blob"):
        kinodb.open(path)
    path2, _ = build(name="utf8.kdb")
    corrupt(path2, index_entries(path2.read_bytes())[0]["meta_offset"] + 2, b"\xff")
    with pytest.raises(CorruptFileError, match="invalid UTF-8"):
        kinodb.open(path2)


def test_garbage_jpeg_names_episode_camera_frame(build: Build, episodes: list[Episode]) -> None:
    path, _ = build()
    data = path.read_bytes()
    target = episodes[0].images["front"][3].data
    pos = data.index(target)
    corrupt(path, pos + 3, b"\x00" * (len(target) - 3))  # keep the JPEG magic, wipe the rest
    with kinodb.open(path) as db:
        np.testing.assert_array_equal(db.read_episode_actions_only(0)["actions"], episodes[0].actions)
        db.read_frames(0, 0, 3, cameras=["front"])
        with pytest.raises(CorruptFileError, match=r"episode 0, camera 'front', frame 3"):
            db.read_episode(0)
        with pytest.raises(CorruptFileError, match="frame 3"):
            db.read_frames(0, 2, 5)


def test_jpeg_of_another_size_is_refused(rng: np.random.Generator, build: Build) -> None:
    ep = random_episode(rng, 2, 1, 1)
    big = encoded_frames(gradients(rng, (1, 16, 16, 3)))[0]
    ep.images = {"cam": [Image(f.data, 8, 8, 3, FORMAT_COMPRESSED) for f in [big, big]]}
    path, _ = build([ep])
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match="frame 0: image is 16x16"):
        db.read_episode(0)


def _image_episode(rng: np.random.Generator, frames: list[list[tuple[str, Image]]]) -> bytes:
    """A one-episode file whose image section has exactly the given cameras per frame."""
    ep = random_episode(rng, len(frames), 1, 1)
    data = bytearray(encode([ep]))
    e = index_entries(bytes(data))[0]
    section = bytearray()
    for cams in frames:
        section += struct.pack("<H", len(cams))
        for name, im in cams:
            section += struct.pack("<H", len(name)) + name.encode()
            section += struct.pack("<IIBBI", im.width, im.height, im.channels, im.fmt, len(im.data)) + im.data
    # Rebuild: header + meta + state/action, then the new image section, then the index.
    body = data[: e["images_offset"]] + section
    entry = bytearray(data[-64:])
    struct.pack_into("<QQ", entry, 32, e["images_offset"], len(section))
    header = bytearray(body[:64])
    struct.pack_into("<QQ", header, 24, len(body), 64)
    return bytes(header + body[64:] + entry)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", "frame 1: 1 cameras"),
        ("renamed", "camera 'c', frame 1: camera at byte offset"),
        ("repeated", "camera 'a', frame 1: camera at byte offset"),
        ("resized", "camera 'b', frame 1: frame is"),
        ("short_raw", "camera 'a', frame 0: raw image"),
        ("zero_channels", "says 2x2x0"),
    ],
)
def test_inconsistent_image_sections(
    rng: np.random.Generator, tmp_path: Path, layout: str, match: str
) -> None:
    px = gradients(rng, (1, 2, 2, 3))
    a, b = raw_frames(px)[0], raw_frames(px)[0]
    small = raw_frames(px[:, :1])[0]
    frames = {
        "missing": [[("a", a), ("b", b)], [("a", a)]],
        "renamed": [[("a", a), ("b", b)], [("a", a), ("c", b)]],
        "repeated": [[("a", a), ("b", b)], [("a", a), ("a", a)]],
        "resized": [[("a", a), ("b", b)], [("a", a), ("b", small)]],
        "short_raw": [[("a", Image(a.data[:-1], 2, 2, 3, 0))]],
        "zero_channels": [[("a", Image(b"", 2, 2, 0, 0))]],
    }[layout]
    path = tmp_path / "x.kdb"
    path.write_bytes(_image_episode(rng, frames))
    with kinodb.open(path) as db:
        db.read_episode_actions_only(0)
        with pytest.raises(CorruptFileError, match=match):
            db.read_episode(0)


def test_image_section_with_trailing_bytes(rng: np.random.Generator, build: Build) -> None:
    path, _ = build()
    data = bytearray(path.read_bytes())
    index_off = struct.unpack_from("<Q", data, 24)[0]
    entry = index_off + 2 * 64  # episode 2's image section is followed by the index
    struct.pack_into("<Q", data, entry + 40, struct.unpack_from("<Q", data, entry + 40)[0] + 4)
    path.write_bytes(bytes(data))
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match="image section ends at byte offset"):
        db.read_episode(2)


@pytest.mark.filterwarnings("ignore:.*the header at byte offset 8 says:UserWarning")
def test_random_damage_raises_only_format_errors(build: Build) -> None:
    path, _ = build()
    clean = path.read_bytes()
    fuzz = np.random.default_rng(7)
    for trial in range(300):
        data = bytearray(clean)
        for pos in fuzz.integers(0, len(data), int(fuzz.integers(1, 4))):
            data[pos] = int(fuzz.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_all(path)
        except KinodbError:
            pass
        except Exception as exc:
            raise AssertionError(f"trial {trial}: {type(exc).__name__}: {exc}") from exc


# -- frames the 0.1 writer flagged wrongly, and per-episode damage ----------------------------


def test_raw_frame_flagged_as_jpeg_reads_as_raw(
    rng: np.random.Generator, tmp_path: Path, build: Build
) -> None:
    """The 0.1 writer flagged raw pixels that begin with FF D8 FF as compressed."""
    frames = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    frames[1, 0, 0] = [0xFF, 0xD8, 0xFF]
    images = raw_frames(frames)
    images[1].fmt = FORMAT_COMPRESSED
    ep = random_episode(rng, 3, 2, 2, task="t")
    ep.images = {"front": images}
    path, _ = build([ep])
    with kinodb.open(path) as db:
        np.testing.assert_array_equal(db.read_frames(0, 1, 2)["images"]["front"][0], frames[1])
        np.testing.assert_array_equal(db.read_episode(0)["images"]["front"], frames)
    new = tmp_path / "new.kdb"
    with pytest.warns(UserWarning, match="camera 'front' stored raw"):
        assert upgrade(path, new) == 1
    with kinodb.open(new) as db:
        np.testing.assert_array_equal(db.read_episode(0)["images"]["front"], frames)


def test_undecodable_frame_message_names_no_object_address(rng: np.random.Generator, build: Build) -> None:
    ep = random_episode(rng, 2, 1, 1)
    good = encoded_frames(gradients(rng, (1, 8, 8, 3)))[0]
    ep.images = {"cam": [good, Image(b"not an image at all", 8, 8, 3, FORMAT_COMPRESSED)]}
    path, _ = build([ep])
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match="camera 'cam', frame 1") as info:
        db.read_episode(0)
    text = str(info.value)
    assert " at 0x" not in text and "BytesIO" not in text
    assert "not a JPEG or PNG image" in text and "kino validate" in text


class _Rows:
    """Per-frame states of different lengths, as the 0.1 writer stored them unchecked."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows, self.shape = rows, (len(rows), len(rows[0]))

    def __getitem__(self, t: int) -> np.ndarray:
        return self.rows[t]


@pytest.fixture
def varying_state(rng: np.random.Generator, build: Build) -> tuple[Path, list[Episode]]:
    """Episode 1's later frames carry a longer state than frame 0 (index: state_dim 2)."""
    good = random_episode(rng, 3, 2, 2, task="good", success=True)
    bad = random_episode(rng, 3, 2, 2, task="bad")
    bad.states = _Rows([np.zeros(2, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)])  # type: ignore[assignment]
    good2 = random_episode(rng, 3, 2, 2, task="good2", success=True)
    return build([good, bad, good2])


def test_inconsistent_state_section_fails_only_its_episode(varying_state: tuple[Path, list[Episode]]) -> None:
    path, eps = varying_state
    with kinodb.open(path) as db:
        assert len(db) == 3
        assert [db.read_meta(i)["task"] for i in range(3)] == ["good", "bad", "good2"]
        assert db.query("success = true").tolist() == [0, 2]
        for i in (0, 2):
            np.testing.assert_array_equal(bits(db.read_episode(i)["states"]), bits(eps[i].states))
        with pytest.raises(CorruptFileError, match=r"episode 1: state/action section .* has 71 bytes"):
            db.read_episode(1)


def test_upgrade_stops_at_a_damaged_episode_or_skips_it_when_asked(
    varying_state: tuple[Path, list[Episode]], tmp_path: Path
) -> None:
    path, eps = varying_state
    new = tmp_path / "new.kdb"
    with pytest.raises(CorruptFileError, match=r"episode 1: .*--on-error skip"):
        upgrade(path, new)
    assert not new.exists()
    with pytest.warns(UserWarning, match=r"1 episode skipped .*episode 1: "):
        assert upgrade(path, new, on_error="skip") == 2
    with kinodb.open(new) as db:
        assert [db.read_meta(i)["task"] for i in range(2)] == ["good", "good2"]
        np.testing.assert_array_equal(bits(db.read_array(1, "actions")), bits(eps[2].actions))
        skipped = db.metadata()["upgraded_from"]["skipped"]
        assert [s["episode"] for s in skipped] == [1] and "state/action section" in skipped[0]["reason"]
    with pytest.raises(ValueError, match="on_error"):
        upgrade(path, tmp_path / "x.kdb", on_error="ignore")
