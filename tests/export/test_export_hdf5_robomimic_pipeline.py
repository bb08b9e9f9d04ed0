"""The HDF5 export of a file robomimic's own pipeline wrote (convert_robosuite.py, then
dataset_states_to_obs.py, its ``--compress`` too): each demo's ``model_file`` written back
(or a warning saying how to get it), the empty ``mask/valid`` kept, and the demos'
datasets compressed on request. The source files are written with h5py in that layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from _robomimic_pipeline import DEMOS, model_xml, write_robomimic_pipeline  # noqa: E402
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)


def _datasets(f: Any) -> dict[str, Any]:
    """Every dataset under ``data/`` by path."""
    found: dict[str, Any] = {}
    f["data"].visititems(
        lambda name, obj: found.update({name: obj}) if isinstance(obj, h5py.Dataset) else None
    )
    return found


# -- model_file ----------------------------------------------------------------------------------


def test_model_file_kept_on_ingest_is_written_back_exactly_once(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    first, h5, back = tmp_path / "first.kdb", tmp_path / "x.hdf5", tmp_path / "back.kdb"
    ingest(src, first, image_codec="png", keep_model_file=True)
    report = export(first, h5, format="hdf5")
    assert not [w for w in report.warnings if "model_file" in w]
    with h5py.File(src) as a, h5py.File(h5) as b:
        for k in range(DEMOS):
            attrs = b[f"data/demo_{k}"].attrs
            assert attrs["model_file"] == a[f"data/demo_{k + 1}"].attrs["model_file"]  # what robomimic reads
            assert "attrs.model_file" not in json.loads(attrs["ep_meta"])  # the XML once, not in the record
    ingest(h5, back, image_codec="png", keep_model_file=True)
    with kinodb.open(first) as d1, kinodb.open(back) as d2:
        for i in range(DEMOS):
            assert (
                d2.read_meta(i)["attrs.model_file"] == d1.read_meta(i)["attrs.model_file"] == model_xml(i + 1)
            )


def test_an_export_without_the_model_file_its_source_had_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    kdb, h5 = tmp_path / "out.kdb", tmp_path / "x.hdf5"
    ingest(src, kdb, image_codec="png")
    report = export(kdb, h5, format="hdf5")
    warned = [w for w in report.warnings if "model_file" in w]
    assert len(warned) == 1
    assert warned[0].startswith("the exported demos have no model_file attribute")
    assert "playback_dataset.py" in warned[0] and f"ingest {src} again with --keep-model-file" in warned[0]
    with h5py.File(h5) as f:
        assert all("model_file" not in g.attrs for g in f["data"].values())
    assert main(["export", str(kdb), "-o", str(tmp_path / "cli.hdf5")]) == 0
    assert "warning: the exported demos have no model_file attribute" in capsys.readouterr().err
    # A source without model_file: nothing to warn about.
    with h5py.File(src, "a") as f:
        for g in f["data"].values():
            del g.attrs["model_file"]
    ingest(src, kdb, image_codec="png", overwrite=True)
    assert not [w for w in export(kdb, tmp_path / "none.hdf5", format="hdf5").warnings if "model_file" in w]


# -- the empty mask/valid ------------------------------------------------------------------------


def test_an_empty_filter_key_of_the_source_is_written_empty(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    first, h5, back = tmp_path / "first.kdb", tmp_path / "x.hdf5", tmp_path / "back.kdb"
    ingest(src, first, image_codec="png")
    export(first, h5, format="hdf5")
    with h5py.File(h5) as f:
        assert sorted(f["mask"]) == ["hard", "train", "valid"]
        assert f["mask/valid"].shape == (0,) and len(f["mask/train"]) == DEMOS
    ingest(h5, back, image_codec="png")
    with kinodb.open(first) as d1, kinodb.open(back) as d2:
        counts = d1.metadata()["hdf5"]["filter_keys"]
        assert counts == {"hard": 1, "train": DEMOS, "valid": 0}
        assert d2.metadata()["hdf5"]["filter_keys"] == counts


def test_with_a_filter_the_empty_key_stays_and_a_key_of_no_exported_demo_goes(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    kdb, h5 = tmp_path / "out.kdb", tmp_path / "x.hdf5"
    ingest(src, kdb, image_codec="png")
    export(kdb, h5, format="hdf5", filter="episode_id >= 1")  # demo_1, the one of mask/hard, left out
    with h5py.File(h5) as f:
        assert sorted(f["mask"]) == ["train", "valid"]
        assert f["mask/valid"].shape == (0,) and len(f["mask/train"]) == DEMOS - 1


# -- compression ---------------------------------------------------------------------------------


def test_a_gzip_source_can_be_exported_gzip_again(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "image_c.hdf5", compress=True, masks={"hard": [1]})
    kdb, plain, packed = tmp_path / "out.kdb", tmp_path / "plain.hdf5", tmp_path / "gzip.hdf5"
    ingest(src, kdb, image_codec="png")
    export(kdb, plain, format="hdf5")
    export(kdb, packed, format="hdf5", compression="gzip")
    with h5py.File(plain) as p, h5py.File(packed) as z:
        plain_sets, packed_sets = _datasets(p), _datasets(z)
        assert plain_sets.keys() == packed_sets.keys()
        assert {ds.compression for ds in plain_sets.values()} == {None}  # the default: uncompressed
        for name, ds in packed_sets.items():
            assert (ds.compression, ds.compression_opts) == ("gzip", 4), name
            np.testing.assert_array_equal(ds[()], plain_sets[name][()])
        assert z["data/demo_0/obs/agentview_image"].compression == "gzip"


def test_lzf_and_the_command_line_flag(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    kdb = tmp_path / "out.kdb"
    ingest(src, kdb, image_codec="png")
    export(kdb, tmp_path / "lzf.hdf5", format="hdf5", compression="lzf")
    out = tmp_path / "cli.hdf5"
    assert main(["export", str(kdb), "-o", str(out), "--hdf5-compression", "gzip", "--no-next-obs"]) == 0
    with h5py.File(tmp_path / "lzf.hdf5") as a, h5py.File(out) as b:
        assert {ds.compression for ds in _datasets(a).values()} == {"lzf"}
        assert {ds.compression for ds in _datasets(b).values()} == {"gzip"}


def test_compression_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    src = write_robomimic_pipeline(tmp_path / "low_dim.hdf5", masks={"hard": [1]})
    kdb = tmp_path / "out.kdb"
    ingest(src, kdb, image_codec="png")
    with pytest.raises(ValueError, match="applies to format 'hdf5' only"):
        export(kdb, tmp_path / "npy", format="numpy", compression="gzip")
    with pytest.raises(ValueError, match="compression must be one of 'gzip', 'lzf', 'none'"):
        export(kdb, tmp_path / "x.hdf5", format="hdf5", compression="zstd")
    assert main(["export", str(kdb), "-o", str(tmp_path / "npy"), "--hdf5-compression", "gzip"]) == 2
