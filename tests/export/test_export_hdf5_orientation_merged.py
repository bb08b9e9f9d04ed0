"""A merge of an ingest that kept its frames as stored and a file written directly (which
records no orientation) holds every frame as its source gave it: it exports to HDF5 like
any ``as_stored`` file, with nothing turned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

H, W = 6, 5  # not square, so a turn shows


def _robomimic(path: Path, seed: int) -> Path:
    """A robomimic-style source of two demos: actions, one low-dim obs key and a camera."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Lift", "env_kwargs": {}})
        for k in range(2):
            T = 3 + k
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7)).astype(np.float32)
            g["obs/ee_pos"] = rng.normal(size=(T, 3)).astype(np.float32)
            g["obs/agentview_rgb"] = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    return path


def _direct(path: Path, seed: int) -> Path:
    """Two episodes written with kinodb.Writer, of the same layout, recording no orientation."""
    rng = np.random.default_rng(seed)
    with kinodb.Writer(path, image_codec="raw") as w:
        for T in (3, 4):
            w.add_episode(
                actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
                states=rng.normal(size=(T, 3)).astype(np.float32),
                images={"agentview_rgb": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)},
            )
    return path


def test_a_merge_of_an_as_stored_ingest_and_a_direct_file_exports_as_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingested, direct = tmp_path / "ingested.kdb", _direct(tmp_path / "direct.kdb", 2)
    ingest(_robomimic(tmp_path / "src.hdf5", 1), ingested, image_codec="raw")
    merged = tmp_path / "merged.kdb"
    result = kinodb.merge([ingested, direct], merged)
    assert not any("stand differently" in w for w in result.warnings)
    with kinodb.open(merged) as db:
        assert db.metadata()["image_orientation"] == "as_stored"
        frames = [db.read_episode(i)["images"]["agentview_rgb"] for i in range(len(db))]
    out = tmp_path / "merged.hdf5"
    report = export(merged, out, format="hdf5")
    assert not any("rotated 180 degrees back" in w for w in report.warnings)
    with h5py.File(out, "r") as f:
        assert len(f["data"]) == 4
        for k, want in enumerate(frames):  # every frame as the merge holds it: nothing turned
            assert np.array_equal(f[f"data/demo_{k}/obs/agentview_rgb"][()], want)
        info = json.loads(f["data"].attrs["kinodb_dataset"])
        assert info["metadata"]["image_orientation"] == "as_stored"
    # The command line too, with and without --keep-upright.
    assert main(["export", str(merged), "-o", str(tmp_path / "cli.hdf5")]) == 0
    assert main(["export", str(merged), "-o", str(tmp_path / "kept.hdf5"), "--keep-upright"]) == 0
    assert "error" not in capsys.readouterr().err


def test_a_mixed_merge_is_refused_written_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    turned, plain = tmp_path / "turned.kdb", tmp_path / "plain.kdb"
    ingest(_robomimic(tmp_path / "a.hdf5", 3), turned, image_codec="raw", flip_images=True)
    ingest(_robomimic(tmp_path / "b.hdf5", 4), plain, image_codec="raw")
    merged = tmp_path / "mixed.kdb"
    result = kinodb.merge([turned, plain], merged)
    assert any("stand differently" in w for w in result.warnings)
    with kinodb.open(merged) as db:
        assert db.metadata()["image_orientation"] == "mixed"
    with pytest.raises(
        kinodb.ConversionError, match=r"stand differently.*no one orientation can be written back"
    ):
        export(merged, tmp_path / "back.hdf5", format="hdf5")
    assert not (tmp_path / "back.hdf5").exists()
    assert main(["export", str(merged), "-o", str(tmp_path / "cli_back.hdf5")]) == 1
    assert "no one orientation can be written back" in capsys.readouterr().err


def test_an_earlier_merge_that_recorded_mixed_for_them_exports_too(tmp_path: Path) -> None:
    # Merges before this change recorded 'mixed' for an as_stored ingest and a direct file;
    # the direct file's episodes stand as given, so the episodes share one orientation.
    ingested, direct = tmp_path / "ingested.kdb", _direct(tmp_path / "direct.kdb", 2)
    ingest(_robomimic(tmp_path / "src.hdf5", 1), ingested, image_codec="raw")
    merged = tmp_path / "merged.kdb"
    kinodb.merge([ingested, direct], merged)
    with kinodb.Writer(merged, mode="a", metadata={"image_orientation": "mixed"}):
        pass  # as the earlier merge recorded it
    with kinodb.open(merged) as db:
        assert db.metadata()["image_orientation"] == "mixed"
        frames = [db.read_episode(i)["images"]["agentview_rgb"] for i in range(len(db))]
    report = export(merged, tmp_path / "merged.hdf5", format="hdf5")
    assert not any("rotated 180 degrees back" in w for w in report.warnings)
    with h5py.File(tmp_path / "merged.hdf5", "r") as f:
        for k, want in enumerate(frames):
            assert np.array_equal(f[f"data/demo_{k}/obs/agentview_rgb"][()], want)
