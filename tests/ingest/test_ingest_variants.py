"""Ingest across formats: no pandas on the LeRobot path, the recorded image orientation,
names given as one str, 16-bit PNG features, per-step RLDS episodes across shards,
damaged videos, and image encoders that fail."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, ClassVar

import _lerobot_fixtures as F
import _rlds_writer as w
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.ingest import SourceInfo, SourceOptions, _base, _video, ingest
from kinodb.ingest._run import name_list
from kinodb.ingest.lerobot import _to_numpy

Episode = dict[str, Any]
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def lerobot_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeRobot v2.0 dataset with PNG frames in the parquet and list (not fixed-size) columns."""
    eps = F.make_episodes(np.random.default_rng(3), [5, 4, 6], cameras={F.CAMERA: (12, 16)})
    return F.write_v2(
        tmp_path_factory.mktemp("lr") / "png", eps, version="v2.0", images="PNG", list_type="list"
    )


@pytest.fixture(scope="module")
def lerobot_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    eps = F.make_episodes(np.random.default_rng(4), [6, 5], cameras={F.CAMERA: (16, 24)}, task_switch=True)
    return F.write_v2(tmp_path_factory.mktemp("lr") / "video", eps, gop=2)


# -- pandas stays out of the LeRobot ingest -----------------------------------------------

# Runs `kino` with a finder that notes every attempt to import pandas (and lets it go on):
# pyarrow imports pandas lazily, from `to_numpy`, `pq.read_table` and more, and drops any
# exception raised meanwhile, a Ctrl-C or SIGTERM among them.
_NOTE_PANDAS = """
import sys, traceback
tried = []
class NotePandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" and not tried:
            tried.append("".join(traceback.format_stack(limit=14)))
        return None
sys.meta_path.insert(0, NotePandas())
from kinodb._cli.main import main
code = main(sys.argv[1:])
if tried:
    print("pandas import attempted from:\\n" + tried[0], file=sys.stderr)
    sys.exit(99)
sys.exit(code)
"""


def _kino_noting_pandas(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _NOTE_PANDAS, *argv], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.mark.integration
def test_a_lerobot_ingest_never_imports_pandas(
    tmp_path: Path, lerobot_png: Path, lerobot_video: Path
) -> None:
    eps = F.make_episodes(np.random.default_rng(5), [4, 3, 5], cameras={F.CAMERA: (12, 16)})
    v3 = F.write_v3(tmp_path / "v3", eps, per_file=2, images="JPEG")  # tasks.parquet, episode tables
    for src in (lerobot_png, lerobot_video, v3):
        out = tmp_path / f"{src.name}.kdb"
        proc = _kino_noting_pandas("ingest", str(src), "-o", str(out), "-q", "--verify")
        assert proc.returncode == 0, proc.stderr
        assert "verified" in proc.stdout and out.is_file()


def _arrays() -> list[pa.Array]:
    rng = np.random.default_rng(11)
    out: list[pa.Array] = []
    for dtype in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(dtype)
        out.append(pa.array(rng.integers(info.min, info.max, 37, dtype=dtype, endpoint=True)))
    for dtype in ("float16", "float32", "float64"):
        values = rng.normal(size=37).astype(dtype)
        values[[3, 9]] = [np.inf, -0.0]
        values.view(f"u{values.itemsize}")[5] |= 1  # a NaN-free odd last bit
        out.append(pa.array(values))
    out.append(pa.array(rng.random(37) > 0.5))
    nan = np.array([np.nan, 1.0], np.float64)
    nan.view(np.uint64)[0] |= 0xBEEF  # a NaN with a payload: kept bit for bit
    out.append(pa.array(nan))
    return out


@pytest.mark.parametrize("arr", _arrays(), ids=lambda a: str(a.type))
def test_columns_are_read_from_the_buffers_bit_for_bit(arr: pa.Array) -> None:
    want = arr.to_numpy(zero_copy_only=False)  # pyarrow's own conversion, as the reference
    got = _to_numpy(pa, arr, "c", "here")
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    for lo, n in ((3, 17), (9, 1), (36, 1), (0, 0)):  # slices start inside bytes of a bitmap
        part = arr.slice(lo, n)
        assert _to_numpy(pa, part, "c", "here").tobytes() == part.to_numpy(zero_copy_only=False).tobytes()
    chunked = pa.chunked_array([arr.slice(0, 10), arr.slice(10, 5), arr.slice(15)])
    assert _to_numpy(pa, chunked, "c", "here").tobytes() == want.tobytes()


def test_list_columns_are_read_from_the_buffers_bit_for_bit() -> None:
    values = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32)
    flat = pa.array(values.reshape(-1))
    offsets = pa.array(np.arange(0, values.size + 1, 4, dtype=np.int32))
    nested = pa.FixedSizeListArray.from_arrays(flat, 2)
    for col, want in (
        (pa.FixedSizeListArray.from_arrays(flat, 4), values),
        (pa.ListArray.from_arrays(offsets, flat), values),
        (pa.FixedSizeListArray.from_arrays(nested, 2), values.reshape(9, 2, 2)),
    ):
        np.testing.assert_array_equal(_to_numpy(pa, col, "c", "here"), want)
        part = col.slice(3, 4)  # offsets into the child values
        np.testing.assert_array_equal(_to_numpy(pa, part, "c", "here"), want[3:7])
    ragged = pa.ListArray.from_arrays(pa.array(np.array([0, 2, 5], np.int32)), pa.array(np.arange(5.0)))
    with pytest.raises(ConversionError, match="lists of different lengths"):
        _to_numpy(pa, ragged, "c", "here")
    with pytest.raises(ConversionError, match="1 null values"):
        _to_numpy(pa, pa.array([1.0, None]), "c", "here")


# -- image orientation --------------------------------------------------------------------


def _hdf5_with_camera(path: Path) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for i in range(2):
            g = f.create_group(f"data/demo_{i}")
            g["actions"] = rng.standard_normal((4, 2))
            g["obs/agentview_image"] = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    return path


def _rlds_with_camera(root: Path) -> Path:
    rng = np.random.default_rng(1)
    eps = []
    for T in (3, 4):
        last = np.zeros(T, np.int64)
        last[-1] = 1
        eps.append({
            "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)], "steps/is_last": last,
            "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
            "steps/observation/image": [F.image_bytes(f, "PNG") for f in F.frames_for(0, T, 12, 16)],
        })  # fmt: skip
    features = {"steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([2], "float32"),
        "observation": w.features_dict({"image": w.image([12, 16, 3], "png")}),
    })}  # fmt: skip
    return w.write_tfds(root, "cams", {"train": [[w.episode_example(e) for e in eps]]}, features)


def _orientation(path: Path) -> Any:
    with kinodb.open(path) as db:
        return db.metadata().get("image_orientation")


def test_every_format_records_whether_it_turned_the_frames(tmp_path: Path, lerobot_png: Path) -> None:
    sources = {"hdf5": _hdf5_with_camera(tmp_path / "a.hdf5"), "lerobot": lerobot_png,
               "rlds": _rlds_with_camera(tmp_path / "rl" / "1.0.0")}  # fmt: skip
    for name, src in sources.items():
        ingest(src, tmp_path / f"{name}_up.kdb", flip_images=True, image_codec="png")
        ingest(src, tmp_path / f"{name}_asis.kdb", image_codec="png")
        assert _orientation(tmp_path / f"{name}_up.kdb") == "rotated_180", name
        assert _orientation(tmp_path / f"{name}_asis.kdb") == "as_stored", name
    with kinodb.open(tmp_path / "lerobot_up.kdb") as up, kinodb.open(tmp_path / "lerobot_asis.kdb") as asis:
        a, b = up.read_episode(0)["images"]["top"], asis.read_episode(0)["images"]["top"]
        np.testing.assert_array_equal(a, b[:, ::-1, ::-1])
    # The same orientation merges quietly; different ones are called mixed.
    same = kinodb.merge([tmp_path / "hdf5_up.kdb", tmp_path / "lerobot_up.kdb", tmp_path / "rlds_up.kdb"],
                        tmp_path / "same.kdb")  # fmt: skip
    assert not [x for x in same.warnings if "orientation" in x]
    assert _orientation(tmp_path / "same.kdb") == "rotated_180"
    asis = kinodb.merge([tmp_path / "hdf5_asis.kdb", tmp_path / "lerobot_asis.kdb"], tmp_path / "asis.kdb")
    assert not [x for x in asis.warnings if "orientation" in x]
    mixed = kinodb.merge([tmp_path / "lerobot_up.kdb", tmp_path / "lerobot_asis.kdb"], tmp_path / "mixed.kdb")
    assert [x for x in mixed.warnings if "image_orientation 'mixed'" in x]
    assert _orientation(tmp_path / "mixed.kdb") == "mixed"


@pytest.mark.integration
def test_a_lerobot_export_keeps_its_orientation_and_a_flip_turns_it_again(tmp_path: Path) -> None:
    src = _hdf5_with_camera(tmp_path / "a.hdf5")
    ingest(src, tmp_path / "up.kdb", flip_images=True)  # upright: turned from the source's frames
    export(tmp_path / "up.kdb", tmp_path / "lr", format="lerobot", images_as="image")
    ingest(tmp_path / "lr", tmp_path / "again.kdb")
    ingest(tmp_path / "lr", tmp_path / "twice.kdb", flip_images=True, image_codec="png")
    assert _orientation(tmp_path / "again.kdb") == "rotated_180"  # the same frames as up.kdb
    assert _orientation(tmp_path / "twice.kdb") == "as_stored"  # turned back: the HDF5 file's frames
    with kinodb.open(tmp_path / "twice.kdb") as db:
        assert db.metadata()["image_orientation"] == "as_stored"
        assert db.metadata()["ingest"]["options"]["flip_images"] is True
        assert db.metadata()["lerobot"]["rotated"] == {}  # turned twice: as the HDF5 file holds it
    with kinodb.open(tmp_path / "again.kdb") as db:  # what the HDF5 ingest turned, carried on
        assert db.metadata()["lerobot"]["rotated"] == {"agentview_image": [1, 2]}
    # Each exports to HDF5 with the frames standing as in the HDF5 file (as up.kdb's JPEG holds them).
    import h5py

    frames = []
    for name in ("up", "again", "twice"):
        export(tmp_path / f"{name}.kdb", tmp_path / f"{name}.hdf5", format="hdf5")
        with h5py.File(tmp_path / f"{name}.hdf5", "r") as f:
            frames.append(f["data/demo_1/obs/agentview_image"][()])
    with kinodb.open(tmp_path / "up.kdb") as db:
        upright = db.read_episode(1)["images"]["agentview_image"]
    assert frames[0].tobytes() == upright[:, ::-1, ::-1].tobytes()
    assert frames[0].tobytes() == frames[1].tobytes() == frames[2].tobytes()


# -- names as one str ------------------------------------------------------------------


def test_state_keys_may_be_one_str_of_comma_separated_keys(tmp_path: Path, lerobot_png: Path) -> None:
    for given in ("observation.state", " observation.state , observation.environment_state"):
        out = tmp_path / "s.kdb"
        ingest(lerobot_png, out, state_keys=given, images=False, overwrite=True)
        with kinodb.open(out) as db:
            keys = [k.strip() for k in given.split(",")]
            assert db.metadata()["lerobot"]["state_keys"] == keys
            assert db.metadata()["ingest"]["options"]["state_keys"] == keys
    rl = _rlds_with_camera(tmp_path / "rl" / "1.0.0")
    with pytest.raises(ConversionError, match=r"state key 'observation\.image' is not a numeric"):
        ingest(rl, tmp_path / "r.kdb", state_keys="observation.image")  # one key, not 17 letters
    assert name_list("state_keys", "a, b,c") == ["a", "b", "c"]
    assert name_list("state_keys", ("a", "b")) == ["a", "b"]
    assert name_list("state_keys", "") is None and name_list("state_keys", []) is None
    for bad, what in ((b"a,b", "bytes"), (3, "int"), (["a", 1], "int 1"), ({"a": 1}, "dict")):
        with pytest.raises(TypeError, match=f"state_keys must .*{what}"):
            ingest(lerobot_png, tmp_path / "t.kdb", state_keys=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "t.kdb").exists()


# -- 16-bit PNG in a LeRobot image feature --------------------------------------------------


def _png(frame: np.ndarray) -> bytes:
    """A PNG of 16-bit samples, written by hand (Pillow writes no 16-bit colour PNG)."""
    h, w = frame.shape[:2]
    colour = {1: 0, 3: 2}[1 if frame.ndim == 2 else frame.shape[2]]
    rows = frame.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _add_image_feature(root: Path, key: str, frames_of: Any, shape: list[int]) -> dict[int, np.ndarray]:
    """Add ``key`` (dtype image) to every episode's parquet; returns the frames written."""
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][key] = {"dtype": "image", "shape": shape, "names": ["height", "width", "channels"]}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    written = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        e = int(table["episode_index"][0].as_py())
        frames = frames_of(e, table.num_rows)
        blobs = [{"bytes": _png(f), "path": None} for f in frames]
        struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        pq.write_table(table.append_column(key, pa.array(blobs, struct_type)), path)
        written[e] = frames
    return written


def test_a_16_bit_greyscale_image_feature_is_kept_as_uint16_bit_for_bit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eps = F.make_episodes(np.random.default_rng(6), [4, 5], cameras={F.CAMERA: (10, 12)})
    root = F.write_v2(tmp_path / "d16", eps, images="PNG")
    rng = np.random.default_rng(9)
    depth = _add_image_feature(
        root, "observation.images.depth", lambda e, T: rng.integers(0, 65536, (T, 10, 12), dtype=np.uint16),
        [10, 12, 1],
    )  # fmt: skip
    rgb16 = _add_image_feature(
        root, "observation.images.rgb16", lambda e, T: rng.integers(0, 65536, (T, 10, 12, 3), dtype=np.uint16),
        [10, 12, 3],
    )  # fmt: skip
    assert len(rgb16) == 2
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.lerobot"):
        report = ingest(root, tmp_path / "d.kdb", verify=True)
    assert report.verification is not None and report.verification.ok
    assert any("observation.images.depth is not a camera" in n and "uint16" in n for n in report.notes)
    assert any("observation.images.rgb16 is left out" in n for n in report.notes)
    assert any(
        "rgb16 is left out: 16-bit PNG frames of colour type 2" in r.getMessage() for r in caplog.records
    )
    with kinodb.open(tmp_path / "d.kdb") as db:
        lerobot = db.metadata()["lerobot"]
        assert lerobot["cameras"] == {"top": F.CAMERA}
        assert "observation.images.depth" in lerobot["not_cameras"]
        assert "observation.images.rgb16" in lerobot["left_out"]
        for i in range(2):
            ep = db.read_episode(i)
            got = ep["observation.images.depth"]
            assert got.dtype == np.uint16 and got.tobytes() == depth[i].tobytes()
            assert "observation.images.rgb16" not in ep and set(ep["images"]) == {"top"}
    ingest(root, tmp_path / "f.kdb", flip_images=True, workers=2)
    with kinodb.open(tmp_path / "f.kdb") as db:
        np.testing.assert_array_equal(db.read_episode(1)["observation.images.depth"], depth[1][:, ::-1, ::-1])


# -- what a flip turned, turned back by the HDF5 export ------------------------------------

DEPTH = (6, 5, 2)  # a 4-D float array that is no camera: never turned on ingest


def _add_array_feature(root: Path, key: str, shape: tuple[int, ...], seed: int) -> dict[int, np.ndarray]:
    """Add the float32 feature ``key`` of per-frame ``shape`` (nested fixed-size lists) to every
    episode's parquet; returns the values written."""
    rng = np.random.default_rng(seed)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][key] = {"dtype": "float32", "shape": list(shape), "names": None}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    written = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        values = rng.normal(size=(table.num_rows, *shape)).astype(np.float32)
        column: pa.Array = pa.array(values.reshape(-1))
        for size in reversed(shape):
            column = pa.FixedSizeListArray.from_arrays(column, size)
        pq.write_table(table.append_column(key, column), path)
        written[int(table["episode_index"][0].as_py())] = values
    return written


def _lerobot_with_arrays(root: Path) -> tuple[Path, dict[str, dict[int, np.ndarray]]]:
    """A LeRobot dataset with a PNG camera, a 16-bit greyscale PNG feature and a 4-D array;
    returns it and what each holds per episode."""
    eps = F.make_episodes(np.random.default_rng(13), [4, 5], cameras={F.CAMERA: (12, 16)})
    F.write_v2(root, eps, images="PNG")
    rng = np.random.default_rng(14)
    wide = _add_image_feature(
        root, "observation.images.depth", lambda e, T: rng.integers(0, 65536, (T, 12, 16), dtype=np.uint16),
        [12, 16, 1],
    )  # fmt: skip
    depth = _add_array_feature(root, "depth", DEPTH, 15)
    return root, {"top": {e: ep["frames"][F.CAMERA] for e, ep in enumerate(eps)}, "depth": depth,
                  "observation.images.depth": wide}  # fmt: skip


def _rlds_with_arrays(root: Path) -> tuple[Path, dict[str, dict[int, np.ndarray]]]:
    """An RLDS dataset with the LeRobot one's layout: a PNG camera ``top`` and the 4-D array ``depth``."""
    rng = np.random.default_rng(16)
    eps, held = [], {"top": {}, "depth": {}}
    for e, T in enumerate((3, 4)):
        last = np.zeros(T, np.int64)
        last[-1] = 1
        frames, depth = F.frames_for(e + 7, T, 12, 16), rng.normal(size=(T, *DEPTH)).astype(np.float32)
        eps.append({
            "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)], "steps/is_last": last,
            "steps/action": rng.normal(size=(T, 4)).astype(np.float32),
            "steps/observation/state": rng.normal(size=(T, 3)).astype(np.float32),
            "steps/observation/top": [F.image_bytes(f, "PNG") for f in frames], "steps/depth": depth,
        })  # fmt: skip
        held["top"][e], held["depth"][e] = frames, depth
    features = {"steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([4], "float32"),
        "depth": w.tensor(list(DEPTH), "float32"),
        "observation": w.features_dict({"state": w.tensor([3], "float32"), "top": w.image([12, 16, 3], "png")}),
    })}  # fmt: skip
    return w.write_tfds(root, "arrays", {"train": [[w.episode_example(e) for e in eps]]}, features), held


def _demo(h5: Path, k: int) -> dict[str, np.ndarray]:
    """Demo ``k`` of an exported HDF5 file: its camera (``obs/top``) and its other datasets by name."""
    import h5py

    with h5py.File(h5, "r") as f:
        g = f[f"data/demo_{k}"]
        return {
            "top": g["obs/top"][()],
            **{name: g[name][()] for name in g if name not in ("obs", "next_obs")},
        }


def _assert_as_source(h5: Path, k: int, held: dict[str, dict[int, np.ndarray]], e: int) -> None:
    """Demo ``k`` holds every array of source episode ``e`` as the source does, bit for bit."""
    demo = _demo(h5, k)
    for name, values in held.items():
        got, want = demo[name], values[e]
        assert got.dtype == want.dtype and got.shape == want.shape, (k, name)
        assert got.tobytes() == want.tobytes(), (k, name)


@pytest.mark.parametrize("fmt", ["lerobot", "rlds"])
def test_a_flipped_ingest_exports_to_hdf5_as_its_source(tmp_path: Path, fmt: str) -> None:
    make = _lerobot_with_arrays if fmt == "lerobot" else _rlds_with_arrays
    src, held = make(tmp_path / "src" / "1.0.0")
    ingest(src, tmp_path / "up.kdb", flip_images=True, image_codec="png")
    ingest(src, tmp_path / "asis.kdb", image_codec="raw")
    turned = {name: [1, 2] for name in held if name != "depth"}  # the cameras and the 16-bit frames
    with kinodb.open(tmp_path / "up.kdb") as up, kinodb.open(tmp_path / "asis.kdb") as asis:
        assert up.metadata()[fmt]["rotated"] == turned
        assert "rotated" not in asis.metadata()[fmt]
        for i in range(len(up)):
            a, b = up.read_episode(i), asis.read_episode(i)
            np.testing.assert_array_equal(a["images"]["top"], b["images"]["top"][:, ::-1, ::-1])
            assert a["depth"].tobytes() == b["depth"].tobytes() == held["depth"][i].tobytes()
    report = export(tmp_path / "up.kdb", tmp_path / "up.hdf5", format="hdf5")
    assert any("rotated 180 degrees back" in x for x in report.warnings)
    export(tmp_path / "asis.kdb", tmp_path / "asis.hdf5", format="hdf5")
    for h5 in ("up.hdf5", "asis.hdf5"):
        for k in range(len(held["top"])):
            _assert_as_source(tmp_path / h5, k, held, k)
    # images=False: nothing turned, and the record says so (no camera, no 4-D array turned back)
    ingest(src, tmp_path / "noimg.kdb", flip_images=True, images=False)
    with kinodb.open(tmp_path / "noimg.kdb") as db:
        assert db.metadata()[fmt]["rotated"] == {}
    export(tmp_path / "noimg.kdb", tmp_path / "noimg.hdf5", format="hdf5")
    assert _demo_depth(tmp_path / "noimg.hdf5").tobytes() == held["depth"][0].tobytes()


def _demo_depth(h5: Path) -> np.ndarray:
    import h5py

    with h5py.File(h5, "r") as f:
        values: np.ndarray = f["data/demo_0/depth"][()]
    return values


def test_a_merge_of_flipped_lerobot_and_rlds_ingests_exports_each_as_its_source(tmp_path: Path) -> None:
    lr, lr_held = _lerobot_with_arrays(tmp_path / "lr")
    rl, rl_held = _rlds_with_arrays(tmp_path / "rl" / "1.0.0")
    ingest(lr, tmp_path / "lr.kdb", flip_images=True, image_codec="png")
    ingest(rl, tmp_path / "rl.kdb", flip_images=True, image_codec="raw")
    kinodb.merge([tmp_path / "lr.kdb", tmp_path / "rl.kdb"], tmp_path / "m.kdb")
    with kinodb.open(tmp_path / "m.kdb") as m:  # each record stays with its input only
        assert "lerobot" not in m.metadata() and "rlds" not in m.metadata()
        assert m.metadata()["image_orientation"] == "rotated_180"
    report = export(tmp_path / "m.kdb", tmp_path / "m.hdf5", format="hdf5")
    assert any("'observation.images.depth' is in 2 of 4" in x for x in report.warnings)  # LeRobot's only
    del lr_held["observation.images.depth"]
    for k in range(2):
        _assert_as_source(tmp_path / "m.hdf5", k, lr_held, k)
        _assert_as_source(tmp_path / "m.hdf5", 2 + k, rl_held, k)


# -- per-step RLDS episodes across shards ------------------------------------------------


def _step_episodes(lengths: list[int]) -> list[Episode]:
    rng = np.random.default_rng(8)
    eps = []
    for e, T in enumerate(lengths):
        last = np.zeros(T, np.int64)
        last[-1] = 1
        eps.append({
            "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)], "steps/is_last": last,
            "steps/action": rng.normal(size=(T, 3)).astype(np.float32),
            "steps/observation/state": rng.normal(size=(T, 2)).astype(np.float32),
            "steps/observation/image": [F.image_bytes(f, "JPEG") for f in F.frames_for(e, T, 8, 8)],
            "steps/language_instruction": [f"task {e}".encode()] * T,
            "episode_metadata/ep": np.array([e]),
        })  # fmt: skip
    return eps


def _shards(root: Path, records: list[bytes], cuts: list[int]) -> Path:
    root.mkdir(parents=True)
    bounds = [0, *cuts, len(records)]
    n = len(bounds) - 1
    for k in range(n):
        w.write_shard(root / f"steps-train.tfrecord-{k:05d}-of-{n:05d}", records[bounds[k] : bounds[k + 1]])
    return root


def test_a_per_step_episode_goes_on_in_the_next_shard(tmp_path: Path) -> None:
    lengths = [4, 3, 5, 2]
    eps = _step_episodes(lengths)
    records = [r for e, T in zip(eps, lengths, strict=True) for r in w.step_examples(e, T)]
    # cut inside episode 2 (records 7-11), before its last step, and with an empty shard between
    joins = {"mid": [9], "last_step": [11], "empty": [8, 8], "twice": [8, 10]}
    for name, cuts in joins.items():
        root = _shards(tmp_path / name, records, cuts)
        report = ingest(root, tmp_path / f"{name}.kdb", verify=True)
        assert report.episodes == 4 and not report.skipped, name
        with kinodb.open(tmp_path / f"{name}.kdb") as db:
            for i, ep in enumerate(eps):
                got = db.read_episode(i)
                np.testing.assert_array_equal(got["actions"], ep["steps/action"])
                np.testing.assert_array_equal(got["states"], ep["steps/observation/state"])
                assert [db.read_image_bytes(i, "image", t) for t in range(lengths[i])] == ep[
                    "steps/observation/image"
                ]
                assert got["meta"]["ep"] == i and got["meta"]["task"] == f"task {i}"
            shards = {"twice": 3}.get(name, 2)  # the shards episode 2 lies in (the empty one aside)
            assert db.read_meta(2)["source_episode"].count("+") == shards - 1
    with kinodb.open(tmp_path / "mid.kdb") as db:
        assert db.read_meta(2)["source_episode"] == (
            "steps-train.tfrecord-00000-of-00002:7-8+steps-train.tfrecord-00001-of-00002:0-2"
        )


def test_a_shard_that_starts_an_episode_does_not_continue_the_last_one(tmp_path: Path) -> None:
    lengths = [4, 3]
    eps = _step_episodes(lengths)
    first = w.step_examples(eps[0], 4)[:3]  # episode 0 loses its last step at the end of a shard
    root = _shards(tmp_path / "cut", first + w.step_examples(eps[1], 3), [3])
    report = ingest(root, tmp_path / "c.kdb", on_error="skip")
    assert report.episodes == 1
    assert report.skipped[0][0] == "steps-train.tfrecord-00000-of-00002:0-2"
    assert "record 2 is not is_last: the episode is cut off" in report.skipped[0][1]


# -- damaged videos ---------------------------------------------------------------------


@pytest.mark.integration
def test_every_cut_of_a_video_file_is_called_damaged_or_truncated(
    tmp_path: Path, lerobot_video: Path
) -> None:
    path = lerobot_video / "videos" / "chunk-000" / F.CAMERA / "episode_000001.mp4"
    data = path.read_bytes()
    times = np.arange(5) / 10.0
    cut = tmp_path / "cut.mp4"
    said = set()
    for n in range(8, len(data), 5):
        cut.write_bytes(data[:n])
        try:
            _video.decode_at(str(cut), times)
        except _video.DamagedVideoError as exc:
            assert str(exc).startswith(f"{cut}: the video file is damaged or truncated (")
            assert f"the file has {n:,} bytes): replace it with a complete copy" in str(exc)
            said.add(str(exc).split("(", 1)[1].split(";")[0])
    assert len(said) >= 3  # header, streams and frames cut short: each is named as such
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ConversionError, match=r"bad\.mp4: not a readable video file") as info:
        _video.decode_at(str(bad), times)
    assert not isinstance(info.value, _video.DamagedVideoError)


@pytest.mark.integration
def test_a_truncated_lerobot_video_names_the_file_and_the_fix(
    tmp_path: Path, lerobot_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "v"
    shutil.copytree(lerobot_video, root)
    path = root / "videos" / "chunk-000" / F.CAMERA / "episode_000001.mp4"
    data = path.read_bytes()
    boxes = _boxes(data)
    assert list(boxes)[-1] == b"moov"  # the index at the end, as PyAV's mp4 muxer writes it
    start, size = boxes[b"moov"]
    path.write_bytes(data[: start + size // 2])  # cut in the index: FFmpeg finds no codec
    assert main(["ingest", str(root), "-o", str(tmp_path / "o.kdb"), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: the video file is damaged or truncated" in err and "Decoder not found" not in err
    assert "replace it with a complete copy" in err and err.rstrip().endswith("or pass --on-error skip")
    report = ingest(root, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1 and report.skipped[0][0] == "episode_000001"
    assert (
        "damaged or truncated" in report.skipped[0][1] and "episode 1, camera 'top'" in report.skipped[0][1]
    )


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """The top-level boxes of an mp4 file: type -> (offset, size)."""
    out, pos = {}, 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        out[data[pos + 4 : pos + 8]] = (pos, size)
        pos += size
    return out


# -- an image encoder that fails ----------------------------------------------------------


class ManyChannelSource:
    """A plug-in source whose episodes hold frames no camera takes, or that JPEG cannot encode."""

    format: ClassVar[str] = "manychannels"
    SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {
        "good": (2, 6, 8, 3), "odd": (2, 6, 8, 20), "wide": (2, 6, 8, 3), "tall": (2, 65501, 2, 3),
    }  # fmt: skip

    def __init__(self, path: str, options: SourceOptions) -> None:
        self.path, self.options = path, options

    @classmethod
    def detect(cls, path: str) -> bool:
        return path.endswith(".manychannels")

    def episodes(self) -> list[str]:
        return list(self.SHAPES)

    def info(self) -> SourceInfo:
        return SourceInfo("manychannels-1")

    def read(self, key: str) -> dict[str, Any]:
        rng = np.random.default_rng(len(key))
        frames = rng.integers(0, 256, self.SHAPES[key], dtype=np.uint8)
        if key == "wide":
            frames = frames.astype(np.uint16) * 257  # 16-bit RGB
        return {"actions": rng.normal(size=(2, 2)), "images": {"cam": frames}}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_frames_an_encoder_cannot_take_are_a_conversion_error_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    monkeypatch.setitem(_base._BUILTIN, "manychannels", f"{__name__}:ManyChannelSource")
    src = tmp_path / "x.manychannels"
    src.write_text("")
    with pytest.raises(ConversionError) as info:
        ingest(src, tmp_path / "a.kdb", image_codec="png", workers=workers)
    assert str(info.value) == (
        f"{src}: episode odd: camera 'cam': uint8 frames of shape (6, 8, 20) are no camera frames (a camera "
        "holds uint8 (H, W) or (H, W, C) frames of 1 to 4 channels, whatever the codec); leave the cameras out "
        "with images=False, or have the source keep these as an extra array"
    )
    report = ingest(src, tmp_path / "a.kdb", image_codec="png", on_error="skip", workers=workers)
    assert report.episodes == 2 and [k for k, _ in report.skipped] == ["odd", "wide"]
    assert report.skipped[1][1].startswith(
        f"{src}: episode wide: camera 'cam': uint16 frames of shape (6, 8, 3)"
    )
    argv = [
        "ingest",
        str(src),
        "-o",
        str(tmp_path / "b.kdb"),
        "-q",
        "--on-error",
        "skip",
        "--workers",
        str(workers),
    ]
    assert main(argv) == 0  # JPEG: the tall frames fail in the encoder itself
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "skipped odd: " in out and "leave the cameras out with --no-images" in out
    tall = next(line for line in out.splitlines() if line.startswith("skipped tall: "))
    assert tall.startswith(
        f"skipped tall: {src}: episode tall: camera 'cam': JPEG encoding of uint8 frames of shape (65501, 2, 3) "
        "failed (OSError: "
    )
    assert tall.endswith("store them with another codec (--image-codec png)")
    with kinodb.open(tmp_path / "b.kdb") as db:
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == ["good"]
    with kinodb.open(tmp_path / "a.kdb") as db:
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == ["good", "tall"]
        assert db.read_episode(1)["images"]["cam"].shape == (2, 65501, 2, 3)
