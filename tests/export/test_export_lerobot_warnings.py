"""What a LeRobot export warns of: cameras stored as images (as which images), uint64 arrays
that LeRobotDataset cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import smooth_frames
from kinodb._cli.main import main
from kinodb.export import export

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("av")


def _camera_kdb(path: Path, codec: str) -> Path:
    """Two episodes with one camera of an odd size, which no yuv420p video holds."""
    rng = np.random.default_rng(11)
    with kinodb.Writer(path, image_codec=codec) as w:
        for T in (2, 3):
            w.add_episode(
                actions=np.zeros((T, 2), np.float32),
                images={"odd": smooth_frames(rng, (T, 25, 33, 3))},
                fps=10.0,
            )
    return path


@pytest.mark.parametrize(("codec", "how", "ext"), [("jpeg", "its JPEG frames as stored", "jpg"),
                                                   ("png", "its PNG frames as stored", "png"),
                                                   ("raw", "its raw frames as PNG", "png")])  # fmt: skip
def test_the_warning_says_which_images_a_camera_is_stored_as(
    tmp_path: Path, codec: str, how: str, ext: str
) -> None:
    out = tmp_path / "lr"
    report = export(_camera_kdb(tmp_path / "src.kdb", codec), out, format="lerobot")
    assert report.warnings == (f"camera 'odd' is stored as images ({how}), not video: size 25x33 is odd, "
                               "but yuv420p needs even height and width",)  # fmt: skip
    assert "PNG" not in report.warnings[0] or ext == "png"
    value = pq.read_table(out / "data/chunk-000/file-000.parquet").column("observation.images.odd")[0].as_py()
    assert value["path"] == f"frame-000000.{ext}"
    assert value["bytes"][:3] == (b"\xff\xd8\xff" if ext == "jpg" else b"\x89PN")


def test_images_as_help_names_jpeg_and_png(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "images in the Parquet files (stored JPEG and PNG frames copied as they are, raw frames as PNG)"
        in text
    )


def _uint64_kdb(path: Path, values: list[int]) -> Path:
    with kinodb.Writer(path) as w:
        for start in (0, len(values) // 2):
            part = np.array(values[start:] or values, np.uint64)
            w.add_episode(actions=np.zeros((len(part), 2), np.float32), extra_arrays={"hash": part}, fps=10.0)
    return path


def test_a_uint64_array_past_the_int64_maximum_is_warned_of(tmp_path: Path) -> None:
    src = _uint64_kdb(tmp_path / "big.kdb", [1, 2, 2**63, 2**64 - 1])
    out = tmp_path / "lr"
    report = export(src, out, format="lerobot")
    (said,) = report.warnings
    assert said.startswith(
        "array 'hash' is uint64 and holds values above the int64 maximum (2**63 - 1), first in episode 0"
    )
    assert "LeRobotDataset reads integer features as torch int64" in said
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["observation.hash"]["dtype"] == "uint64"  # kept exactly all the same
    values = pq.read_table(out / "data/chunk-000/file-000.parquet").column("observation.hash").to_pylist()
    assert values[2] == 2**63 and values[3] == 2**64 - 1


def test_a_uint64_array_within_int64_is_not_warned_of(tmp_path: Path) -> None:
    src = _uint64_kdb(tmp_path / "small.kdb", [0, 5, 2**63 - 1])
    assert export(src, tmp_path / "lr", format="lerobot").warnings == ()
