"""A LIBERO-style file ingested with ``flip_images`` and exported to HDF5 gives back the
source bit for bit: every array the ingest rotated (metadata ``hdf5.rotated``) is turned
back on its own axes, and only those, also across merges; a merge of flipped and unflipped
ingests exports one source at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

H, W = 12, 10  # the camera's frame size: not square, so a turn on the wrong axes shows


def _next(values: np.ndarray) -> np.ndarray:
    """robomimic's ``next_obs``: every frame one later, the last one repeated."""
    return np.concatenate([values[1:], values[-1:]])


def _obs(rng: np.random.Generator, T: int, *, wrist: bool) -> dict[str, np.ndarray]:
    """One demo's ``obs``: low-dim keys, a camera and image-like arrays of several layouts."""
    obs = {
        "ee_pos": rng.normal(size=(T, 3)),
        "gripper_states": rng.normal(size=(T, 2)),
        "agentview_rgb": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        "agentview_depth": rng.integers(0, 2**16, (T, H, W, 1), dtype=np.uint16),
        "agentview_depth_m": rng.random((T, H, W), dtype=np.float32),
        "agentview_cf": rng.integers(0, 256, (T, 3, H, W), dtype=np.uint8),  # channel-first frames
        "ee_poses": rng.normal(size=(T, 2, 4, 4)),  # per-frame matrices, not an image
        # (T, H, W) uint8 of no camera's size: image-shaped only in a file with the wrist camera
        "wrist_mask": rng.integers(0, 256, (T, 8, 8), dtype=np.uint8),
    }
    if wrist:
        obs["wrist_rgb"] = rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8)
    return obs


def _libero_file(path: Path, seed: int, *, wrist: bool = False, demos: int = 3) -> Path:
    """A LIBERO-style source (problem_info, states, next_obs, a filter key), frames not symmetric."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": '"open the top drawer"'})
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Kitchen", "env_kwargs": {}})
        for k in range(demos):
            T = 4 + k
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["rewards"] = (np.arange(T) == T - 1).astype(np.float64)
            g["dones"] = (np.arange(T) == T - 1).astype(np.uint8)
            g["states"] = rng.normal(size=(T, 9))
            for key, values in _obs(rng, T, wrist=wrist).items():
                g[f"obs/{key}"] = values
                g[f"next_obs/{key}"] = _next(values)
        f["mask/train"] = np.array([f"demo_{k}" for k in range(demos - 1 if wrist else demos)], dtype="S")
    return path


def _datasets(group: Any) -> dict[str, np.ndarray]:
    """Every dataset under ``group``, by path."""
    out: dict[str, np.ndarray] = {}
    group.visititems(
        lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
    )
    return out


def _assert_demo_is_source(out: Any, src: Any) -> None:
    """Every dataset of the source demo ``src`` is in ``out`` with the same dtype, shape and bytes."""
    want, got = _datasets(src), _datasets(out)
    assert sorted(want) == sorted(got), (src.name, sorted(set(want) ^ set(got)))
    for key, values in want.items():
        assert got[key].dtype == values.dtype and got[key].shape == values.shape, (src.name, key)
        assert got[key].tobytes() == values.tobytes(), (src.name, key)


def _flipped(tmp_path: Path, source: Path, name: str) -> Path:
    out = tmp_path / name
    ingest(source, out, image_codec="raw", flip_images=True)
    return out


def test_every_dataset_of_a_flipped_ingest_comes_back_bit_for_bit(tmp_path: Path) -> None:
    raw = _libero_file(tmp_path / "libero.hdf5", 3)
    kdb = _flipped(tmp_path, raw, "upright.kdb")
    with kinodb.open(kdb) as db, h5py.File(raw, "r") as src:
        turned = {"agentview_rgb": [1, 2], "agentview_depth": [1, 2], "agentview_depth_m": [1, 2],
                  "agentview_cf": [2, 3]}  # fmt: skip
        # next_obs/KEY, where a demo keeps it whole, is turned as obs/KEY is.
        assert db.metadata()["hdf5"]["rotated"] == {
            **turned,
            **{f"next_obs.{k}": v for k, v in turned.items()},
        }
        ep, obs = db.read_episode(0), src["data/demo_0/obs"]
        assert np.array_equal(ep["agentview_depth_m"], obs["agentview_depth_m"][()][:, ::-1, ::-1])
        assert np.array_equal(ep["agentview_cf"], obs["agentview_cf"][()][:, :, ::-1, ::-1])
        assert ep["ee_poses"].tobytes() == obs["ee_poses"][()].tobytes()  # not turned on ingest
    h5 = tmp_path / "export.hdf5"
    report = export(kdb, h5, format="hdf5")
    assert any("rotated 180 degrees back" in w for w in report.warnings)
    with h5py.File(raw, "r") as src, h5py.File(h5, "r") as out:
        assert sorted(out["data"]) == sorted(src["data"])
        for demo in src["data"]:
            _assert_demo_is_source(out[f"data/{demo}"], src[f"data/{demo}"])
        info = json.loads(out["data"].attrs["kinodb_dataset"])
        assert info["metadata"]["image_orientation"] == "as_stored"
        assert "rotated" not in info["metadata"]["hdf5"]  # the export's frames are not rotated
    back = tmp_path / "back.kdb"
    ingest(h5, back, image_codec="raw", flip_images=True)  # as the original: the same file again
    with kinodb.open(kdb) as a, kinodb.open(back) as b:
        assert b.metadata()["hdf5"]["rotated"] == a.metadata()["hdf5"]["rotated"]
        for i in range(len(a)):
            x, y = a.read_episode(i), b.read_episode(i)
            for name in ("agentview_depth", "agentview_depth_m", "agentview_cf", "ee_poses", "wrist_mask"):
                assert x[name].tobytes() == y[name].tobytes(), (i, name)
            assert x["images"]["agentview_rgb"].tobytes() == y["images"]["agentview_rgb"].tobytes()
    # --keep-upright: every array as the .kdb holds it, the record kept with the orientation.
    upright = tmp_path / "upright.hdf5"
    assert export(kdb, upright, format="hdf5", flip_images=False).warnings == ()
    with kinodb.open(kdb) as db, h5py.File(upright, "r") as out:
        for i in range(len(db)):
            ep, obs = db.read_episode(i), out[f"data/demo_{i}/obs"]
            for name in ("agentview_depth", "agentview_depth_m", "agentview_cf", "ee_poses", "wrist_mask"):
                assert obs[name][()].tobytes() == ep[name].tobytes(), (i, name)
            assert np.array_equal(obs["agentview_rgb"][()], ep["images"]["agentview_rgb"])
        meta = json.loads(out["data"].attrs["kinodb_dataset"])["metadata"]
        assert meta["image_orientation"] == "rotated_180"
        assert meta["hdf5"]["rotated"] == db.metadata()["hdf5"]["rotated"]


def _merge_of_two(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two flipped ingests whose ``hdf5`` metadata differ (a wrist camera, so ``wrist_mask``
    is image-shaped and turned in one of them only), and their merge."""
    a = _libero_file(tmp_path / "a.hdf5", 5)
    b = _libero_file(tmp_path / "b.hdf5", 6, wrist=True)
    ka, kb = _flipped(tmp_path, a, "a.kdb"), _flipped(tmp_path, b, "b.kdb")
    with kinodb.open(ka) as da, kinodb.open(kb) as dbb:
        assert "wrist_mask" not in da.metadata()["hdf5"]["rotated"]
        assert dbb.metadata()["hdf5"]["rotated"]["wrist_mask"] == [1, 2]
    merged = tmp_path / "merged.kdb"
    kinodb.merge([ka, kb], merged)
    with kinodb.open(merged) as m:
        # The inputs disagree on their hdf5 metadata, so the merge keeps it with each input only.
        assert "hdf5" not in m.metadata() and m.metadata()["image_orientation"] == "rotated_180"
    return a, b, merged


def test_a_merge_of_ingests_that_rotated_different_arrays_comes_back_per_source(tmp_path: Path) -> None:
    a, b, merged = _merge_of_two(tmp_path)
    h5 = tmp_path / "merged.hdf5"
    report = export(merged, h5, format="hdf5")
    assert any("rotated 180 degrees back" in w for w in report.warnings)
    with h5py.File(a, "r") as sa, h5py.File(b, "r") as sb, h5py.File(h5, "r") as out:
        assert len(out["data"]) == 6
        for k in range(3):
            _assert_demo_is_source(out[f"data/demo_{k}"], sa[f"data/demo_{k}"])
            _assert_demo_is_source(out[f"data/demo_{3 + k}"], sb[f"data/demo_{k}"])


def test_a_merge_of_merges_that_lost_the_record_is_refused(tmp_path: Path) -> None:
    a, _b, merged = _merge_of_two(tmp_path)
    again = tmp_path / "again.kdb"
    kinodb.merge([merged, _flipped(tmp_path, a, "a2.kdb")], again)
    with pytest.raises(kinodb.ConversionError, match=r"hdf5\.rotated.*--keep-upright") as caught:
        export(again, tmp_path / "again.hdf5", format="hdf5")
    assert str(merged) in str(caught.value) and "agentview_cf" in str(caught.value)
    assert not (tmp_path / "again.hdf5").exists()
    # The episodes of the input that kept its record export, and come back as the source.
    h5 = tmp_path / "part.hdf5"
    export(again, h5, format="hdf5", filter=f"source_file = '{tmp_path / 'a2.kdb'}'")
    with h5py.File(a, "r") as sa, h5py.File(h5, "r") as out:
        for k in range(3):
            _assert_demo_is_source(out[f"data/demo_{k}"], sa[f"data/demo_{k}"])
    # Written as stored, nothing needs turning back: the merge of merges exports.
    assert export(again, tmp_path / "upright.hdf5", format="hdf5", flip_images=False).warnings == ()


def test_a_merge_of_flipped_and_unflipped_ingests_exports_one_source_at_a_time(tmp_path: Path) -> None:
    a = _libero_file(tmp_path / "a.hdf5", 8)
    b = _libero_file(tmp_path / "b.hdf5", 9)
    ka, kb = _flipped(tmp_path, a, "a.kdb"), tmp_path / "b.kdb"
    ingest(b, kb, image_codec="raw")  # as stored: upside down
    merged = tmp_path / "mixed.kdb"
    kinodb.merge([ka, kb], merged)
    with kinodb.open(merged) as m:
        assert m.metadata()["image_orientation"] == "mixed"
    for keep in (True, False):  # written back or kept upright: no one orientation either way
        with pytest.raises(
            kinodb.ConversionError, match=r"stand differently.*--filter \"source_file = "
        ) as caught:
            export(merged, tmp_path / "all.hdf5", format="hdf5", flip_images=keep)
        assert f"'rotated_180': {ka}" in str(caught.value) and f"'as_stored': {kb}" in str(caught.value)
        assert not (tmp_path / "all.hdf5").exists()
    # The advice works: each source's episodes export, as that source held them.
    for kdb, raw in ((ka, a), (kb, b)):
        h5 = tmp_path / f"{kdb.stem}_part.hdf5"
        report = export(merged, h5, format="hdf5", filter=f"source_file = '{kdb}'")
        assert any("rotated 180 degrees back" in x for x in report.warnings) == (kdb == ka)
        with h5py.File(raw, "r") as src, h5py.File(h5, "r") as out:
            assert len(out["data"]) == 3
            for demo in src["data"]:
                _assert_demo_is_source(out[f"data/{demo}"], src[f"data/{demo}"])
            assert (
                json.loads(out["data"].attrs["kinodb_dataset"])["metadata"]["image_orientation"]
                == "as_stored"
            )
    # Kept upright, the flipped source's frames say so.
    export(
        merged, tmp_path / "upright.hdf5", format="hdf5", flip_images=False, filter=f"source_file = '{ka}'"
    )
    with h5py.File(tmp_path / "upright.hdf5", "r") as out, kinodb.open(ka) as db:
        assert (
            json.loads(out["data"].attrs["kinodb_dataset"])["metadata"]["image_orientation"] == "rotated_180"
        )
        assert np.array_equal(
            out["data/demo_0/obs/agentview_rgb"][()], db.read_episode(0)["images"]["agentview_rgb"]
        )


@pytest.mark.parametrize(
    ("orientation", "rotated", "match"),
    [
        ("rotated_180", "turned", r"hdf5\.rotated is 'turned'"),
        ("rotated_180", {"agentview_cf": [2]}, r"hdf5\.rotated\['agentview_cf'\] is \[2\]"),
        ("rotated_180", {"agentview_cf": [0, 1]}, r"hdf5\.rotated\['agentview_cf'\] is \[0, 1\]"),
        ("rotated_180", {"ee_pos": [1, 2]}, r"episode 0 holds the array 'ee_pos' as \(T, 3\).*axes \[1, 2\]"),
        (
            "as_stored",
            {"agentview_cf": [2, 3]},
            r"names agentview_cf as rotated.*image_orientation is 'as_stored'",
        ),
    ],
)
def test_a_record_that_cannot_be_right_is_refused(
    tmp_path: Path, orientation: str, rotated: Any, match: str
) -> None:
    rng = np.random.default_rng(7)
    src = tmp_path / "odd.kdb"
    metadata = {"image_orientation": orientation, "hdf5": {"rotated": rotated}}
    with kinodb.Writer(src, metadata=metadata) as w:
        w.add_episode(actions=rng.normal(size=(4, 2)), states=rng.normal(size=(4, 2)),
                      extra_arrays={"agentview_cf": rng.integers(0, 256, (4, 3, 6, 5), dtype=np.uint8),
                                    "ee_pos": rng.normal(size=(4, 3))})  # fmt: skip
    with pytest.raises(kinodb.ConversionError, match=match):
        export(src, tmp_path / "odd.hdf5", format="hdf5")
    assert not (tmp_path / "odd.hdf5").exists()
    assert export(src, tmp_path / "kept.hdf5", format="hdf5", flip_images=False).warnings == ()
