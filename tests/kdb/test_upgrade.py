"""``kino upgrade``: what a rewrite keeps, what it warns about, and how it refuses."""

from __future__ import annotations

import io
import math
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import FORMAT_COMPRESSED, Image, encode, random_episode
from kinodb.errors import ConversionError
from kinodb.kdb.upgrade import upgrade
from kinodb.kdb.validate import validate
from kinodb.stats import compute_stats, write_stats


def grey_jpegs(T: int, h: int = 48, w: int = 64) -> list[bytes]:
    """Greyscale JPEG frames, as LeRobot's passthrough stored them in 0.1 files."""
    from PIL import Image as PILImage

    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(T):
        buf = io.BytesIO()
        PILImage.fromarray(((xx + yy + 4 * t) % 256).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_greyscale_jpegs_under_a_three_channel_header_keep_their_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blobs = grey_jpegs(6)
    ep = random_episode(rng, 6, 2, 2)
    ep.images = {"top": [Image(b, 64, 48, 3, FORMAT_COMPRESSED) for b in blobs]}  # header: 3 channels
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([ep]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is re-encoded, so nothing to warn about
        assert upgrade(old, new) == 1
    with kinodb.open(old) as a, kinodb.open(new) as b:
        assert b.cameras(0)["top"] == {"codec": "jpeg", "shape": (6, 48, 64, 3)} == a.cameras(0)["top"]
        assert [b.read_image_bytes(0, "top", t) for t in range(6)] == blobs
        frames = b.read_episode(0)["images"]["top"]
        np.testing.assert_array_equal(frames, a.read_episode(0)["images"]["top"])
        assert (frames[..., 0] == frames[..., 2]).all()  # grey, read as RGB
        assert b.schema()["cameras"]["top"]["channels"] == 3
    assert new.stat().st_size < 2 * old.stat().st_size  # not 25x larger, as raw frames would be
    assert validate(new).ok


def test_channel_counts_alone_never_force_a_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    blobs = grey_jpegs(2)
    ep = random_episode(rng, 2, 1, 1)
    ep.images = {"grey": [Image(b, 64, 48, 1, FORMAT_COMPRESSED) for b in blobs],
                 "rgb_header": [Image(b, 64, 48, 3, FORMAT_COMPRESSED) for b in blobs]}  # fmt: skip
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([ep]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert upgrade(old, new) == 1
    with kinodb.open(new) as db:
        assert {k: v["codec"] for k, v in db.cameras(0).items()} == {"grey": "jpeg", "rgb_header": "jpeg"}
        assert db.cameras(0)["grey"]["shape"] == (2, 48, 64, 1)


def test_a_camera_that_cannot_keep_its_bytes_is_stored_raw_with_a_warning(tmp_path: Path) -> None:
    """CMYK JPEGs decode (to the header's RGB) but a v1 camera cannot declare them: raw, said so."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    blobs = []
    for f in frames:
        buf = io.BytesIO()
        PILImage.fromarray(f).convert("CMYK").save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    ep = random_episode(rng, 2, 1, 1)
    ep.images = {"cmyk": [Image(b, 8, 8, 3, FORMAT_COMPRESSED) for b in blobs]}
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([ep]))
    with pytest.warns(UserWarning, match=r"camera 'cmyk' stored raw \(decoded, larger\): frame 0's header"):
        upgrade(old, new)
    with kinodb.open(old) as a, kinodb.open(new) as b:
        assert b.cameras(0)["cmyk"]["codec"] == "raw"
        np.testing.assert_array_equal(
            b.read_episode(0)["images"]["cmyk"], a.read_episode(0)["images"]["cmyk"]
        )


def payload(db: kinodb.Database, i: int) -> bytes:
    off, n = int(db._cols["payload_offset"][i]), int(db._cols["payload_length"][i])
    return db._map()[off : off + n].tobytes()


def test_v1_compaction_keeps_statistics_times_and_payloads(tmp_path: Path) -> None:
    path = tmp_path / "d.kdb"
    rng = np.random.default_rng(2)
    with kinodb.Writer(path, source_format="robomimic-hdf5", metadata={"image_orientation": "upright"}) as w:
        w.add_episode(actions=rng.random((5, 2), np.float32), states=rng.random((5, 3), np.float32))
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=rng.random((5, 2), np.float32), states=rng.random((5, 3), np.float32))
    write_stats(path, compute_stats(path))
    new = tmp_path / "new.kdb"
    assert upgrade(path, new) == 2
    with kinodb.open(path) as a, kinodb.open(new) as b:
        before, after = a.dataset_info(), b.dataset_info()
        assert sorted(after) == sorted(before)
        for key in ("created", "modified", "source_format", "stats", "schema"):
            assert after[key] == before[key], key
        assert after["metadata"]["image_orientation"] == "upright"
        assert after["metadata"]["upgraded_from"]["format_version"] == "1.0"
        np.testing.assert_array_equal(
            b.stats()["arrays"]["actions"]["mean"], a.stats()["arrays"]["actions"]["mean"]
        )
        for i in range(2):
            assert b.read_meta(i) == a.read_meta(i)
            assert payload(b, i) == payload(a, i)  # copied byte for byte
    assert new.stat().st_size < path.stat().st_size  # the superseded index is gone
    assert validate(new).ok


def test_v1_compaction_keeps_a_source_format_of_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.kdb"
    with kinodb.Writer(path) as w:  # written directly: no source format
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    upgrade(path, tmp_path / "new.kdb")
    with kinodb.open(tmp_path / "new.kdb") as db:
        assert db.dataset_info()["source_format"] is None


def test_stats_become_stale_when_episodes_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.kdb"
    with kinodb.Writer(path) as w:
        for k in range(3):
            w.add_episode(actions=np.full((4, 1), k, np.float32))
    write_stats(path, compute_stats(path))
    raw = bytearray(path.read_bytes())
    with kinodb.open(path) as db:
        raw[int(db._cols["payload_offset"][1]) + 2] ^= 0xFF  # damage episode 1
    path.write_bytes(bytes(raw))
    new = tmp_path / "new.kdb"
    with pytest.warns(UserWarning, match="1 episode skipped"):
        assert upgrade(path, new, on_error="skip") == 2
    with kinodb.open(new) as db:
        assert db.dataset_info()["stats"]["stale"] is True
        with pytest.raises(kinodb.FormatError, match="stale"):
            db.stats()


def test_empty_source_is_named_as_the_problem(tmp_path: Path) -> None:
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([]))
    with pytest.raises(ConversionError, match=r"old\.kdb: the source has 0 episodes"):
        upgrade(old, tmp_path / "new.kdb")
    assert not (tmp_path / "new.kdb").exists()


def test_zero_frame_episode_suggests_a_merge_that_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kinodb._cli.main import main

    rng = np.random.default_rng(3)
    eps = [random_episode(rng, 3, 2, 2, task="a"), random_episode(rng, 0, 2, 2), random_episode(rng, 2, 2, 2)]
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode(eps))
    with pytest.raises(ConversionError, match="episode 1 cannot be stored as v1: it has 0 frames") as info:
        upgrade(old, new)
    found = re.search(r'kino (merge .*"num_frames > 0")', str(info.value))
    assert found is not None, str(info.value)
    assert main(shlex.split(found.group(1))) == 0
    with kinodb.open(new) as db:
        assert len(db) == 2 and db.num_frames() == 5
        np.testing.assert_array_equal(db.read_array(1, "actions"), eps[2].actions)


@pytest.mark.parametrize("fps", [math.nan, 0.0, -10.0])
def test_a_bad_fps_suggests_a_merge_that_works(tmp_path: Path, fps: float) -> None:
    from kinodb._cli.main import main

    rng = np.random.default_rng(5)
    eps = [random_episode(rng, 3, 2, 2), random_episode(rng, 2, 2, 2, fps=fps), random_episode(rng, 4, 2, 2)]
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode(eps))
    with pytest.raises(
        ConversionError, match="episode 1 cannot be stored as v1: fps must be a positive"
    ) as info:
        upgrade(old, new)
    assert "to leave out every episode whose fps is not a positive number: kino merge" in str(info.value)
    found = re.search(r'kino (merge .*"fps > 0")', str(info.value))
    assert found is not None, str(info.value)
    assert main(shlex.split(found.group(1))) == 0
    with kinodb.open(new) as db:
        assert len(db) == 2
        np.testing.assert_array_equal(db.read_array(1, "actions"), eps[2].actions)


def test_non_finite_total_reward_of_a_0_1_file_is_not_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    eps = [
        random_episode(rng, 3, 1, 1, total_reward=math.nan),
        random_episode(rng, 2, 1, 1, total_reward=math.inf),
    ]
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode(eps))
    with pytest.warns(UserWarning, match="episode 0: total_reward nan is not a finite number"):
        assert upgrade(old, new) == 2
    with kinodb.open(new) as db:  # stored as unknown, not as the sum of the rewards
        assert [db.read_meta(i)["total_reward"] for i in range(len(eps))] == [None, None]
