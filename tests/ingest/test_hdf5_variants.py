"""The HDF5 converter on less common layouts: frames a camera cannot hold, chosen state keys,
image-shaped arrays turned with the frames; on files written by h5py itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest, verify

h5py = pytest.importorskip("h5py")

T0 = 4  # demo_k holds T0 + k frames


def same_bits(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), what


def truth(path: Path, demo: int, key: str) -> np.ndarray:
    """A dataset of a demo as h5py reads it."""
    with h5py.File(path, "r") as f:
        out: np.ndarray = f[f"data/demo_{demo}/{key}"][()]
    return out


def write_frames(
    path: Path, obs: dict[str, tuple[tuple[int, ...], str]], *, demos: int = 3, seed: int = 0
) -> Path:
    """Demos with float actions, one low-dim key, and ``obs`` keys of per-frame shape and dtype."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for k in range(demos):
            T = T0 + k
            g = f.create_group(f"data/demo_{k}")
            g["actions"] = rng.normal(size=(T, 2))
            g["obs/eef_pos"] = rng.normal(size=(T, 3))
            for key, (shape, dtype) in obs.items():
                if np.dtype(dtype).kind == "f":
                    g[f"obs/{key}"] = rng.random((T, *shape)).astype(dtype)
                else:
                    g[f"obs/{key}"] = rng.integers(0, np.iinfo(dtype).max, (T, *shape), dtype=dtype)
    return path


# -- frames a camera cannot hold --------------------------------------------------------

ODD_FRAMES = {
    "front_image": ((16, 20, 3), "uint8"),  # a camera
    "chw_image": ((3, 16, 20), "uint8"),  # channel-first: robomimic exports made for torch
    "stacked": ((16, 20, 6), "uint8"),  # two RGB frames stacked on the channel axis
    "many": ((5, 16, 20), "uint8"),  # neither: 20 channels, and 5 is no channel count
}


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_frames_a_camera_cannot_hold_are_exact_extra_arrays(
    tmp_path: Path, codec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_frames(tmp_path / "odd.hdf5", ODD_FRAMES)
    out = tmp_path / "odd.kdb"
    assert main(["ingest", str(src), "-o", str(out), "-q", "--image-codec", codec]) == 0
    err = capsys.readouterr().out
    assert "note: obs/chw_image is not a camera: uint8 (T, 3, 16, 20) holds channel-first (T, C, H, W)" in err
    assert "transpose it to (T, H, W, C)" in err
    assert "note: obs/stacked is not a camera: uint8 (T, 16, 20, 6) holds frames of 6 channels" in err
    assert "note: obs/many is not a camera: uint8 (T, 5, 16, 20) holds frames of 20 channels" in err
    with kinodb.open(out) as db:
        assert sorted(db.schema()["cameras"]) == ["front_image"]
        md = db.metadata()["hdf5"]
        assert md["cameras"] == ["front_image"]
        assert sorted(md["not_cameras"]) == ["chw_image", "many", "stacked"]
        assert "kept as the extra array 'chw_image', exactly as stored" in md["not_cameras"]["chw_image"]
        assert md["extra_arrays"]["chw_image"] == "obs/chw_image"
        for k in range(3):
            ep = db.read_episode(k)
            for key in ("chw_image", "stacked", "many"):
                same_bits(ep[key], truth(src, k, f"obs/{key}"), key)  # not transposed, not re-encoded
            assert ep["images"]["front_image"].shape == (T0 + k, 16, 20, 3)
    assert verify(src, out).ok


def test_a_demo_whose_camera_has_other_channels_is_named_and_can_be_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_frames(tmp_path / "mixed.hdf5", {"front_image": ((8, 6, 3), "uint8")})
    with h5py.File(src, "a") as f:
        del f["data/demo_1/obs/front_image"]
        f["data/demo_1/obs/front_image"] = np.zeros((T0 + 1, 8, 6, 6), np.uint8)
    out = tmp_path / "mixed.kdb"
    message = (
        "demo_1: obs/front_image is uint8 (5, 8, 6, 6); demo_0 has uint8 (T, H, W, C) frames of 3 channels"
    )
    with pytest.raises(ConversionError, match=rf"mixed\.hdf5: {re.escape(message)}"):
        ingest(src, out, image_codec="png")
    assert not out.exists()
    args = ["ingest", str(src), "-o", str(out), "--image-codec", "png", "--on-error", "skip"]
    assert main(args) == 0
    assert f"skipped demo_1: {src}: {message}" in capsys.readouterr().out
    with kinodb.open(out) as db:
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == ["demo_0", "demo_2"]


# -- state keys: the others stay, as extra arrays ------------------------------------------

STAMP0 = 1_700_000_000_123_456_789  # beyond float64's 2**53


def write_low_dim(path: Path) -> Path:
    """Low-dim obs keys of several dtypes and shapes, some named as the writer's own arrays."""
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        for k in range(3):
            T = T0 + k
            g = f.create_group(f"data/demo_{k}")
            g["actions"] = rng.normal(size=(T, 2)).astype(np.float32)
            g["robot_states"] = rng.normal(size=(T, 4))  # a demo dataset: it keeps its name
            o = g.create_group("obs")
            o["eef_pos"] = rng.normal(size=(T, 3)).astype(np.float32)
            o["gripper"] = rng.normal(size=T)  # 1-D float64
            o["counter"] = np.arange(T, dtype=np.int32)
            o["stamp_ns"] = STAMP0 + np.arange(T, dtype=np.int64)  # float states would round it
            o["rewards"] = rng.normal(size=(T, 1))  # a name the writer reserves
            o["robot_states"] = rng.normal(size=(T, 2)).astype(np.float16)  # a demo dataset's name
            o["flags"] = rng.integers(0, 2, (T, 2)).astype(np.uint8)
    return path


UNCHOSEN = {  # obs key -> its extra-array name
    "counter": "counter",
    "flags": "flags",
    "gripper": "gripper",
    "rewards": "obs.rewards",
    "robot_states": "obs.robot_states",
    "stamp_ns": "stamp_ns",
}


def test_state_keys_keep_the_other_low_dim_keys_as_exact_extra_arrays(tmp_path: Path) -> None:
    src = write_low_dim(tmp_path / "low.hdf5")
    out = tmp_path / "chosen.kdb"
    report = ingest(src, out, state_keys=["eef_pos"])
    # The caller's choice: recorded in the metadata, not a note (the one note: fps is the default).
    assert [n.split(",")[0] for n in report.notes] == ["fps is 10"]
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"eef_pos": [0, 3]}
        md = db.metadata()["hdf5"]
        assert md["state_keys"] == ["eef_pos"] and md["left_out"] == {}
        assert sorted(md["kept_apart"]) == sorted(UNCHOSEN.values())
        assert md["kept_apart"]["obs.rewards"] == (
            "not among the chosen state keys (state_keys, --state-keys); it is stored apart, as the extra "
            "array 'obs.rewards' with its own dtype"
        )
        for key, name in UNCHOSEN.items():
            assert md["extra_arrays"][name] == f"obs/{key}"
        assert md["extra_arrays"]["robot_states"] == "robot_states"
        for k in range(3):
            ep = db.read_episode(k)
            same_bits(ep["states"], truth(src, k, "obs/eef_pos"), "states")
            same_bits(ep["robot_states"], truth(src, k, "robot_states"), "robot_states")
            for key, name in UNCHOSEN.items():
                same_bits(ep[name], truth(src, k, f"obs/{key}"), name)
            assert ep["rewards"].shape == (T0 + k,)  # the writer's own rewards, not the obs key
    assert verify(src, out).ok


def test_an_export_of_chosen_state_keys_reads_back_the_same(tmp_path: Path) -> None:
    src = write_low_dim(tmp_path / "low.hdf5")
    first = tmp_path / "first.kdb"
    ingest(src, first, state_keys=["flags", "eef_pos"])  # uint8 and float32: float32 states
    exported = tmp_path / "first.hdf5"
    kinodb.export.export(first, exported, format="hdf5")
    with h5py.File(exported, "r") as f:  # every obs key back where it was, as it was
        for key in (*UNCHOSEN, "eef_pos"):
            same_bits(f[f"data/demo_2/obs/{key}"][()], truth(src, 2, f"obs/{key}"), key)
    again = tmp_path / "again.kdb"
    ingest(exported, again)  # no state keys: the export's own come back, and the others stay apart
    with kinodb.open(first) as a, kinodb.open(again) as b:
        assert b.schema()["states"]["components"] == a.schema()["states"]["components"]
        assert b.schema()["states"]["components"] == {"flags": [0, 2], "eef_pos": [2, 5]}
        for k in range(3):
            ea, eb = a.read_episode(k), b.read_episode(k)
            same_bits(eb["states"], ea["states"], "states")
            for name in (n for key, n in UNCHOSEN.items() if key != "flags"):
                same_bits(eb[name], ea[name], name)


# -- flip_images: image-shaped arrays turn with the frames ---------------------------------

LIBERO_LIKE = {
    "agentview_rgb": ((8, 10, 3), "uint8"),
    "eye_in_hand_rgb": ((6, 6, 3), "uint8"),
    "agentview_depth": ((8, 10), "uint16"),  # 3-D, as LIBERO writes it
    "agentview_depth_m": ((8, 10, 1), "float32"),
    "eye_in_hand_depth": ((6, 6), "float64"),  # the size of the other camera
    "agentview_seg": ((8, 10), "uint8"),  # 3-D uint8: an array, image-shaped
    "chw_depth": ((1, 8, 10), "float32"),  # channel-first depth
    "chw_rgb": ((3, 6, 6), "uint8"),  # channel-first frames: no camera
    "rotmat": ((3, 3), "float32"),  # per-frame matrices: no image
    "poses": ((2, 4, 4), "float64"),  # 4-D, no frames of that size
}
TURNED = {  # key -> the axes that flip_images reverses
    "agentview_depth": (1, 2),
    "agentview_depth_m": (1, 2),
    "eye_in_hand_depth": (1, 2),
    "agentview_seg": (1, 2),
    "chw_depth": (2, 3),
    "chw_rgb": (2, 3),
}


def turned(arr: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    for axis in axes:
        index[axis] = slice(None, None, -1)
    return np.ascontiguousarray(arr[tuple(index)])


def write_libero_like(path: Path) -> Path:
    path = write_frames(path, LIBERO_LIKE, seed=3)
    with h5py.File(path, "a") as f:
        f["data"].attrs["problem_info"] = json.dumps({"language_instruction": '"turn on the stove"'})
    return path


@pytest.mark.parametrize("flip", [True, False])
def test_flip_images_turns_image_shaped_arrays_with_the_cameras(tmp_path: Path, flip: bool) -> None:
    src = write_libero_like(tmp_path / "libero.hdf5")
    out = tmp_path / "libero.kdb"
    ingest(src, out, image_codec="png", flip_images=flip)
    with kinodb.open(out) as db:
        md = db.metadata()
        assert md["image_orientation"] == ("rotated_180" if flip else "as_stored")
        want = {"agentview_rgb": [1, 2], "eye_in_hand_rgb": [1, 2], **{k: list(v) for k, v in TURNED.items()}}
        assert md["hdf5"].get("rotated") == (want if flip else None)
        for k in range(3):
            ep = db.read_episode(k)
            for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                source = truth(src, k, f"obs/{cam}")
                same_bits(ep["images"][cam], turned(source, (1, 2)) if flip else source, cam)
            for key in LIBERO_LIKE:
                if key.endswith("_rgb") and key != "chw_rgb":
                    continue
                source = truth(src, k, f"obs/{key}")
                same_bits(ep[key], turned(source, TURNED[key]) if flip and key in TURNED else source, key)
    assert verify(src, out).ok


def test_no_images_still_turns_the_image_shaped_arrays_it_keeps(tmp_path: Path) -> None:
    src = write_libero_like(tmp_path / "libero.hdf5")
    out = tmp_path / "low.kdb"
    ingest(src, out, images=False, flip_images=True)
    with kinodb.open(out) as db:
        # 3-D arrays stay without images; the turned ones are turned as with them
        assert db.metadata()["hdf5"]["rotated"] == {
            "agentview_depth": [1, 2], "agentview_seg": [1, 2], "eye_in_hand_depth": [1, 2]
        }  # fmt: skip
        ep = db.read_episode(1)
        assert ep["images"] == {} and "chw_depth" not in ep and "poses" not in ep
        same_bits(ep["agentview_depth"], turned(truth(src, 1, "obs/agentview_depth"), (1, 2)), "depth")
        same_bits(ep["rotmat"], truth(src, 1, "obs/rotmat"), "rotmat")
