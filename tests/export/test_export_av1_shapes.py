"""AV1 export of cameras the SVT-AV1 encoder cannot take: stored as images, never a hang.

SVT-AV1 hangs for good (deaf to Ctrl-C) on some frame shapes, so every export that could
reach the encoder with such a shape runs in a subprocess with a time limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.export._video_encode import CODECS, VideoFile, unencodable

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")

LIMIT_S = 120  # an export of 10 tiny frames takes a second; the encoder's hang never ends


def _tiny(path: Path, h: int, w: int) -> Path:
    """Two episodes of 5 frames of one ``h`` x ``w`` camera."""
    base = np.add.outer(np.arange(h), np.arange(w))[:, :, None] * 7 + np.arange(3) * 50
    frames = np.stack([np.clip(base + 9 * t, 0, 255) for t in range(5)]).astype(np.uint8)
    with kinodb.Writer(path, image_codec="png") as w_:
        for _ in range(2):
            w_.add_episode(actions=np.zeros((5, 2), np.float32), images={"c": frames}, fps=10.0)
    return path


def _export_in_subprocess(src: Path, out: Path) -> list[str]:
    """Export ``src`` to LeRobot with AV1 in a subprocess; return the report's warnings."""
    code = textwrap.dedent(f"""
        import json
        from kinodb.export import export
        report = export({str(src)!r}, {str(out)!r}, format="lerobot", video_codec="av1")
        print(json.dumps(list(report.warnings)))
    """)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
            env={**os.environ, "SVT_LOG": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the AV1 export of {src.name} did not finish in {LIMIT_S} s")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def _dtype(out: Path) -> str:
    info = json.loads((out / "meta" / "info.json").read_text())
    return str(info["features"]["observation.images.c"]["dtype"])


@pytest.mark.parametrize(
    ("h", "w", "why"),
    [
        (2, 2, "needs sides of 4 pixels or more"),
        (2, 64, "needs sides of 4 pixels or more"),
        (256, 8, "never finishes a video"),
        (8, 256, "never finishes a video"),
        (256, 16, "never finishes a video"),
        (24, 66, "never finishes a video"),
        (30, 4096, "never finishes a video"),
    ],
)
def test_shapes_svt_av1_cannot_encode_are_named(h: int, w: int, why: str) -> None:
    said = unencodable(h, w, 3, codec="av1")
    assert said is not None and why in said and "--video-codec h264" in said
    assert unencodable(h, w, 3, codec="h264") is None  # libx264 takes them all


@pytest.mark.parametrize(
    ("h", "w"), [(4, 4), (4, 64), (64, 4), (24, 64), (32, 96), (32, 4096), (64, 64), (96, 128)]
)
def test_shapes_svt_av1_encodes_are_video(h: int, w: int) -> None:
    assert unencodable(h, w, 3, codec="av1") is None


@pytest.mark.parametrize(("h", "w"), [(2, 2), (256, 8), (8, 256)])
def test_an_av1_export_stores_such_a_camera_as_images(tmp_path: Path, h: int, w: int) -> None:
    out = tmp_path / "lr"
    warnings = _export_in_subprocess(_tiny(tmp_path / "tiny.kdb", h, w), out)
    assert len(warnings) == 1 and warnings[0].startswith("camera 'c' is stored as images")
    assert "SVT-AV1" in warnings[0] and "--video-codec h264" in warnings[0]
    assert _dtype(out) == "image" and not (out / "videos").exists()
    report = export(tmp_path / "tiny.kdb", tmp_path / "h264", format="lerobot")  # H.264 takes it
    assert report.warnings == () and _dtype(tmp_path / "h264") == "video"


def test_an_av1_export_of_a_narrow_camera_svt_av1_takes(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    assert _export_in_subprocess(_tiny(tmp_path / "tiny.kdb", 32, 96), out) == []
    assert _dtype(out) == "video"
    with av.open(str(out / "videos/observation.images.c/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.name in ("av1", "libdav1d")
        assert sum(1 for _ in c.decode(video=0)) == 10


def test_an_encoder_error_names_the_camera_and_the_other_codec(tmp_path: Path) -> None:
    # SVT-AV1 refuses frames wider than 16,384 pixels when the first frame opens the encoder
    # (every PyAV release; PyAV 19's encoder takes the 2x2 frames 18's refused): kinodb's error
    video = VideoFile(
        str(tmp_path / "v.mp4"), CODECS["av1"], fps=10.0, height=16, width=16400, camera="wrist"
    )
    with pytest.raises(ConversionError) as exc:
        video.add(np.zeros((3, 16, 16400, 3), np.uint8), episode_start=True)
    video.close(flush=False)
    message = str(exc.value)
    assert (
        message.startswith("camera 'wrist' (")
        and "libsvtav1 encoder failed after 0 frames of 16x16400" in message
    )
    assert message.endswith("export again, with --video-codec h264 or --images-as image")
