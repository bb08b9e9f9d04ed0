"""Exports of format 0.1 cameras whose stored bytes are not images of the camera's codec:
frames that mix raw and encoded data, and raw pixels the 0.1 writer flagged as compressed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import kinodb
from _legacy_encoder import FORMAT_COMPRESSED, Image, encode, encoded_frames, random_episode, raw_frames
from kinodb.errors import CorruptFileError
from kinodb.export import export

JPEG_MAGIC = b"\xff\xd8\xff"


def _flagged(frames: np.ndarray) -> list[Image]:
    """Raw frames that begin with JPEG magic, flagged compressed as the 0.1 writer did."""
    _, h, w, c = frames.shape
    frames[:, 0, 0, :3] = np.frombuffer(JPEG_MAGIC, np.uint8)  # the first 3 bytes of each frame
    return [Image(f.tobytes(), w, h, c, FORMAT_COMPRESSED) for f in frames]


def _legacy(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 0.1 file of one episode: camera ``mix`` (raw, PNG, raw frames), ``m`` (raw frames
    flagged compressed) and ``jpg`` (JPEG frames); returns the pixels of each."""
    mix = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    magic = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    jpg = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ep = random_episode(rng, 3, 4, 2)
    ep.images = {
        "mix": [raw_frames(mix[:1])[0], encoded_frames(mix[1:2], "PNG")[0], raw_frames(mix[2:])[0]],
        "m": _flagged(magic),
        "jpg": encoded_frames(jpg, "JPEG"),
    }
    path.write_bytes(encode([ep]))
    return mix, magic, jpg


def test_numpy_export_writes_decoded_frames_of_cameras_whose_bytes_are_not_their_codec(
    tmp_path: Path,
) -> None:
    src = tmp_path / "old.kdb"
    mix, magic, _ = _legacy(src, np.random.default_rng(3))
    out = tmp_path / "np"
    export(src, out, format="numpy")
    folder = out / "episode_000000"
    cams = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["cameras"]
    assert cams["mix"] == {
        "codec": "raw",
        "shape": [3, 8, 8, 3],
        "source_codec": "mixed",
        "file": "images/mix.npy",
    }
    assert cams["m"] == {
        "codec": "raw",
        "shape": [3, 4, 4, 3],
        "source_codec": "jpeg",
        "file": "images/m.npy",
    }
    np.testing.assert_array_equal(np.load(folder / "images/mix.npy"), mix)
    np.testing.assert_array_equal(np.load(folder / "images/m.npy"), magic)
    assert not (folder / "images/m").exists()
    # A camera of real JPEG frames keeps its stored bytes.
    assert cams["jpg"]["codec"] == "jpeg" and "source_codec" not in cams["jpg"]
    with kinodb.open(src) as db:
        for t in range(3):
            blob = (folder / cams["jpg"]["frames"].format(frame=t)).read_bytes()
            assert blob == db.read_image_bytes(0, "jpg", t)


def test_lerobot_image_export_reencodes_raw_frames_flagged_compressed(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "old.kdb"
    mix, magic, _ = _legacy(src, np.random.default_rng(4))
    out = tmp_path / "lr"
    export(src, out, format="lerobot", images_as="image")
    table = pq.read_table(out / "data/chunk-000/file-000.parquet")
    for key, want in (("m", magic), ("mix", mix)):
        cells = table.column(f"observation.images.{key}").to_pylist()
        assert [c["path"] for c in cells] == [f"frame-{t:06d}.png" for t in range(3)]
        for t, cell in enumerate(cells):
            with PILImage.open(io.BytesIO(cell["bytes"])) as im:
                np.testing.assert_array_equal(np.asarray(im), want[t])
    jpg = table.column("observation.images.jpg").to_pylist()
    with kinodb.open(src) as db:
        assert [c["bytes"] for c in jpg] == [db.read_image_bytes(0, "jpg", t) for t in range(3)]


@pytest.mark.parametrize("fmt", ["numpy", "lerobot"])
def test_a_flagged_frame_that_is_no_image_fails_the_export_naming_it(tmp_path: Path, fmt: str) -> None:
    if fmt == "lerobot":
        pytest.importorskip("pyarrow")
    rng = np.random.default_rng(5)
    frames = _flagged(rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8))
    frames[1] = Image(frames[1].data[:-1], 4, 4, 3, FORMAT_COMPRESSED)  # neither JPEG nor W*H*C bytes
    ep = random_episode(rng, 3, 4, 2)
    ep.images = {"m": frames}
    src = tmp_path / "old.kdb"
    src.write_bytes(encode([ep]))
    kw = {"images_as": "image"} if fmt == "lerobot" else {}
    with pytest.raises(CorruptFileError) as info:
        export(src, tmp_path / "out", format=fmt, **kw)
    assert f"{src}: episode 0, camera 'm', frame 1: image does not decode" in str(info.value)
