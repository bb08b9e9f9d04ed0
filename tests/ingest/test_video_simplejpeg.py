"""A simplejpeg older than 1.8 (no ``encode_jpeg_yuv_planes``) counts as absent: frames take the RGB path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
simplejpeg = pytest.importorskip("simplejpeg")
pytest.importorskip("pyarrow")

import _lerobot_fixtures as F  # noqa: E402
from PIL import Image  # noqa: E402

import kinodb  # noqa: E402
from kinodb.ingest import _video, ingest  # noqa: E402


@pytest.fixture
def simplejpeg_1_7(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed simplejpeg without the function that 1.8.0 added, as 1.7.x is."""
    assert _video._simplejpeg() is simplejpeg  # the planar path is there before
    monkeypatch.delattr(simplejpeg, "encode_jpeg_yuv_planes")


@pytest.mark.usefixtures("simplejpeg_1_7")
def test_an_older_simplejpeg_is_treated_as_absent(tmp_path: Path) -> None:
    assert _video._simplejpeg() is None
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(0, 8, 32, 48), 10.0)
    times, ref = F.reference_decode(path)
    got = _video.decode_at(str(path), times, jpeg_quality=90)
    assert isinstance(got, np.ndarray)  # RGB frames, for the caller to encode
    np.testing.assert_array_equal(got, ref)


@pytest.mark.usefixtures("simplejpeg_1_7")
def test_lerobot_ingest_stores_jpeg_frames_through_the_rgb_path(tmp_path: Path) -> None:
    eps = F.make_episodes(np.random.default_rng(3), [6, 5])
    root = F.write_v2(tmp_path / "ds", eps)
    out = tmp_path / "out.kdb"
    report = ingest(root, out, jpeg_quality=90)
    assert report.episodes == 2
    with kinodb.open(out) as db:
        for i, ep in enumerate(eps):
            assert db.cameras(i)["top"]["codec"] == "jpeg"
            assert db.read_episode(i)["images"]["top"].shape == (ep["length"], 24, 32, 3)
            with Image.open(io.BytesIO(db.read_image_bytes(i, "top", 0))) as im:
                assert im.format == "JPEG"
