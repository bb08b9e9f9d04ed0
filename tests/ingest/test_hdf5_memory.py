"""HDF5 ingest memory: bounded by neither the number of demos nor a camera's length."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from kinodb.ingest import SourceOptions
from kinodb.ingest._hdf5_layout import member_paths
from kinodb.ingest.hdf5 import HDF5Source
from kinodb.kdb import _codecs

h5py = pytest.importorskip("h5py")


def write_many_demos(path: Path, demos: int) -> Path:
    """Tiny demos (3 frames each): what memory they cost is HDF5's, not their data's."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = 3
            g["actions"] = np.zeros((3, 2))
            g["rewards"] = np.zeros(3)
            g["states"] = np.zeros((3, 4))
            for key in ("a", "b", "c", "d"):
                g[f"obs/{key}"] = np.zeros((3, 2))
            g["obs/cam"] = np.zeros((3, 2, 2, 3), np.uint8)
    return path


_READ_ALL = textwrap.dedent(
    """
    import sys
    from kinodb.ingest import SourceOptions
    from kinodb.ingest.hdf5 import HDF5Source

    def rss():
        with open("/proc/self/status") as fh:
            return int(next(l for l in fh if l.startswith("RssAnon")).split()[1]) // 1024

    src = HDF5Source(sys.argv[1], SourceOptions(image_codec="png"))
    base = top = rss()
    src.info()
    for i, key in enumerate(src.episodes()):
        src.read(key)
        if i % 100 == 0:
            top = max(top, rss())
    print(max(top, rss()) - base)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_thousands_of_demos_keeps_memory_bounded(tmp_path: Path) -> None:
    # One handle read through 2,000 demos grew by some 100 MB (HDF5 keeps what it opened
    # until the file closes); reopened every few hundred demos it stays near 25 MB.
    path = write_many_demos(tmp_path / "many.hdf5", 2000)
    done = subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(path)], capture_output=True, text=True, check=True
    )
    grown = int(done.stdout.split()[-1])
    assert grown < 60, f"reading 2000 tiny demos grew memory by {grown} MB"


def test_member_paths_lists_what_visit_lists(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        g = f.create_group("demo_0")
        for name in ("zeta", "Actions", "a_b", "b"):
            g[name] = np.zeros(3)
        g["obs/y"] = g["obs/x"] = g["obs/sub/q"] = g["next_obs/x"] = np.zeros(1)
        g["soft"] = h5py.SoftLink("/demo_0/zeta")
        g["ext"] = h5py.ExternalLink("elsewhere.hdf5", "/x")
    with h5py.File(tmp_path / "d.hdf5", "r") as f:
        visited: list[str] = []
        f["demo_0"].visit(visited.append)
        assert member_paths(f["demo_0"], h5py.Group) == visited
        assert visited[:5] == ["Actions", "a_b", "b", "next_obs", "next_obs/x"]


def write_long_camera(path: Path, frames: int, *, chunks: tuple[int, ...] | None = None) -> np.ndarray:
    """One demo with one smooth 48x40 RGB camera (compresses well as JPEG and PNG)."""
    y, x = np.mgrid[0:48, 0:40]
    base = np.stack([y * 5, x * 6, (x + y) * 3], axis=-1).astype(np.uint8)
    pixels = (base[None] + np.arange(frames, dtype=np.uint8)[:, None, None, None]).astype(np.uint8)
    with h5py.File(path, "w") as f:
        g = f.create_group("data/demo_0")
        g["actions"] = np.zeros((frames, 2))
        g.create_dataset(
            "obs/agentview_image", data=pixels, chunks=chunks, compression="gzip" if chunks else None
        )
        g["obs/eef"] = np.zeros((frames, 3))
    return pixels


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("codec", ["jpeg", "png"])
@pytest.mark.parametrize("chunks", [None, (5, 48, 40, 3)])
def test_encoded_camera_bytes_are_those_of_the_whole_array(
    tmp_path: Path, codec: str, flip: bool, chunks: tuple[int, ...] | None
) -> None:
    pixels = write_long_camera(tmp_path / "cam.hdf5", 77, chunks=chunks)
    quality = 90 if codec == "jpeg" else None
    options = SourceOptions(flip_images=flip, jpeg_quality=quality, image_codec=codec)
    src = HDF5Source(tmp_path / "cam.hdf5", options)
    try:
        got = src.read("demo_0")["images"]["agentview_image"]
    finally:
        src.close()
    whole = np.ascontiguousarray(pixels[:, ::-1, ::-1]) if flip else pixels
    assert got == _codecs.encode(whole, codec, quality or 95)


def test_raw_codec_still_gets_the_pixels(tmp_path: Path) -> None:
    pixels = write_long_camera(tmp_path / "cam.hdf5", 40)
    src = HDF5Source(tmp_path / "cam.hdf5", SourceOptions(image_codec=None))
    try:
        got = src.read("demo_0")["images"]["agentview_image"]
    finally:
        src.close()
    np.testing.assert_array_equal(got, pixels)


def test_a_long_camera_is_never_held_whole(tmp_path: Path) -> None:
    frames = 3000  # 17 MB of pixels; encoded as JPEG, well under 10 MB
    write_long_camera(tmp_path / "long.hdf5", frames)
    src = HDF5Source(
        tmp_path / "long.hdf5", SourceOptions(flip_images=True, jpeg_quality=95, image_codec="jpeg")
    )
    try:
        src.info()
        tracemalloc.start()
        try:
            args = src.read("demo_0")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        src.close()
    assert len(args["images"]["agentview_image"]) == frames
    pixels = frames * 48 * 40 * 3
    assert peak < pixels / 2, f"reading the camera peaked at {peak} bytes; its pixels are {pixels}"
