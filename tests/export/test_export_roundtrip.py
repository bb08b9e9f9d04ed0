"""``ingest(export(x))`` reproduces ``x``: the HDF5 export read back by kinodb's HDF5 ingester."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import assert_same_episodes
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"  # 7-d actions and states
G1 = SAMPLES / "unitree_g1_lerobot_v21"  # 26-d actions and states


def _roundtrip(src: Path, tmp_path: Path, **ingest_kw: Any) -> Path:
    h5 = tmp_path / "x.hdf5"
    export(src, h5, format="hdf5", overwrite=True)
    back = tmp_path / "back.kdb"
    ingest(h5, back, format="hdf5", image_codec="png", overwrite=True, **ingest_kw)
    return back


def _assert_same(a: Path, b: Path, *, skip_meta: tuple[str, ...] = ()) -> None:
    """Arrays bit for bit, decoded frames pixel for pixel, metadata equal."""
    assert_same_episodes(a, b, skip_meta=skip_meta)


def _source(path: Path, rng: np.random.Generator, *, codec: str = "png", success=(True, False, True),
            components: dict[str, list[int]] | None = None, timestamps: bool = False,
            more: tuple[dict[str, Any], ...] = ()) -> Path:  # fmt: skip
    comps = components or {"eef_pos": [0, 3], "gripper": [3, 5]}
    with kinodb.Writer(path, image_codec=codec, schema={"states": {"components": comps}},
                       source_format="synthetic") as w:  # fmt: skip
        for i in range(3):
            T = 4 + i
            w.add_episode(
                actions=rng.normal(size=(T, 7)).astype(np.float32),
                states=rng.normal(size=(T, 5)).astype(np.float32),
                rewards=rng.uniform(size=T).astype(np.float32),
                is_terminal=np.arange(T) == T - 1,
                images={"agentview": rng.integers(0, 255, (T, 6, 5, 3), dtype=np.uint8),
                        "depth": rng.integers(0, 255, (T, 6, 5, 1), dtype=np.uint8)},
                extra_arrays={"sim_state": rng.normal(size=(T, 9)), "lang_emb": np.ones((T, 2), np.float16)},
                embodiment="panda", task=f"lift the cube {i}", fps=20.0, success=success[i],
                extra={"filter_keys": [["train"], ["valid"], ["hard", "train"]][i]},
                timestamps=np.arange(T) / 10.0 if timestamps else None,
            )  # fmt: skip
        for fields in more:
            w.add_episode(**{**_plain_episode(), **fields})
    return path


def _plain_episode() -> dict[str, Any]:
    """A two-frame episode with the keys every episode of `_source` has."""
    return {
        "actions": np.zeros((2, 7), np.float32), "states": np.zeros((2, 5), np.float32),
        "rewards": np.ones(2, np.float32), "embodiment": "panda", "task": "t", "fps": 20.0, "success": True,
        "images": {"agentview": np.zeros((2, 6, 5, 3), np.uint8), "depth": np.zeros((2, 6, 5, 1), np.uint8)},
        "extra_arrays": {"sim_state": np.zeros((2, 9)), "lang_emb": np.ones((2, 2), np.float16)},
        "extra": {"filter_keys": []},
    }  # fmt: skip


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_arrays_cameras_and_metadata_come_back(tmp_path: Path, codec: str) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(1), codec=codec)
    _assert_same(src, _roundtrip(src, tmp_path))


def test_jpeg_frames_come_back_decoded(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(2), codec="jpeg")
    back = _roundtrip(src, tmp_path)
    _assert_same(src, back)  # compares decoded pixels
    with kinodb.open(back) as db:
        assert db.cameras(0)["agentview"]["codec"] == "png"


def test_state_components_in_any_order_with_state_keys(tmp_path: Path) -> None:
    comps = {"joint_pos": [0, 2], "eef_pos": [2, 5]}  # name order differs from layout order
    src = _source(tmp_path / "src.kdb", np.random.default_rng(3), components=comps)
    _assert_same(src, _roundtrip(src, tmp_path, state_keys=list(comps)))


def test_a_robomimic_file_survives_ingest_export_ingest(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    raw = tmp_path / "robomimic.hdf5"
    env = {"env_name": "Lift", "type": 1, "env_version": "1.4.1",
           "env_kwargs": {"robots": ["Panda"], "control_freq": 20, "camera_names": ["agentview"]}}  # fmt: skip
    with h5py.File(raw, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env)
        for k in (1, 2, 10):  # numbered from 1, sorted numerically
            T = 3 + k % 4
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = "<mujoco/>"
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["states"] = rng.normal(size=(T, 11))
            g["rewards"] = np.r_[np.zeros(T - 1), float(k != 2)]
            g["dones"] = np.r_[np.zeros(T - 1, np.int64), 1]
            g["obs/robot0_eef_pos"] = rng.normal(size=(T, 3))
            g["obs/object"] = rng.normal(size=(T, 10))
            g["obs/agentview_image"] = rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8)
        f["mask/train"] = np.array([b"demo_1", b"demo_10"])
        f["mask/valid"] = np.array([b"demo_2"])
    first = tmp_path / "first.kdb"
    ingest(raw, first, format="hdf5", image_codec="png")
    _assert_same(first, _roundtrip(first, tmp_path))
    with kinodb.open(first) as db:
        assert db.read_meta(2)["filter_keys"] == ["train"] and db.read_meta(0)["fps"] == 20.0


# -- LIBERO: frames stored upside down, turned upright on ingest ------------------------------

LIBERO_CAMERAS = ("agentview_rgb", "eye_in_hand_rgb")


def _libero_file(path: Path, rng: np.random.Generator) -> Path:
    """A LIBERO-style file (problem_info, 2 raw uint8 cameras, float depth), frames not symmetric."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": '"open the top drawer"'})
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Kitchen", "env_kwargs": {}})
        for k in range(3):
            T = 4 + k
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["rewards"] = g["dones"] = (np.arange(T) == T - 1).astype(np.uint8)
            g["obs/ee_pos"] = rng.normal(size=(T, 3))
            g["obs/gripper_states"] = rng.normal(size=(T, 2))
            g["obs/agentview_rgb"] = rng.integers(0, 256, (T, 12, 10, 3), dtype=np.uint8)
            g["obs/eye_in_hand_rgb"] = rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8)
            g["obs/agentview_depth"] = rng.random((T, 12, 10, 1), dtype=np.float32)
    return path


def _upright(tmp_path: Path) -> tuple[Path, Path]:
    """The LIBERO file, and its ingest with the frames turned upright (raw frames: exact)."""
    raw = _libero_file(tmp_path / "libero.hdf5", np.random.default_rng(11))
    first = tmp_path / "upright.kdb"
    ingest(raw, first, image_codec="raw", flip_images=True)
    return raw, first


def test_a_libero_export_has_the_source_orientation_and_flips_back_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, first = _upright(tmp_path)
    h5 = tmp_path / "x.hdf5"
    report = export(first, h5, format="hdf5")
    (note,) = report.warnings
    assert "rotated 180 degrees back" in note and "--flip-images" in note and "--keep-upright" in note
    with h5py.File(raw, "r") as src, h5py.File(h5, "r") as out:
        for k in range(3):
            for key in (*LIBERO_CAMERAS, "agentview_depth"):
                want, got = src[f"data/demo_{k}/obs/{key}"], out[f"data/demo_{k}/obs/{key}"]
                assert got.dtype == want.dtype and got[()].tobytes() == want[()].tobytes(), (k, key)
        info = json.loads(out["data"].attrs["kinodb_dataset"])
        assert info["metadata"]["image_orientation"] == "as_stored"
    caplog.clear()
    with caplog.at_level("WARNING"):
        ingest(h5, tmp_path / "as_stored.kdb", image_codec="raw")
    assert "pass flip_images" in caplog.text  # upside down again, as LIBERO's own file: said so
    back = tmp_path / "back.kdb"
    ingest(h5, back, image_codec="raw", flip_images=True)  # as for the original
    _assert_same(first, back)
    with kinodb.open(first) as a, kinodb.open(back) as b:
        assert b.metadata()["image_orientation"] == a.metadata()["image_orientation"] == "rotated_180"
        for k in range(3):  # raw frames: the same bytes, not only the same pixels
            for cam in LIBERO_CAMERAS:
                assert b.read_frames(k, 0, 4, cameras=[cam])["images"][cam].tobytes() == (
                    a.read_frames(k, 0, 4, cameras=[cam])["images"][cam].tobytes()
                )


def test_a_libero_export_kept_upright_reads_back_upright_without_flipping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kinodb._cli.main import main

    _raw, first = _upright(tmp_path)
    h5 = tmp_path / "upright.hdf5"
    assert main(["export", str(first), "-o", str(h5), "--format", "hdf5", "--keep-upright"]) == 0
    with pytest.raises(
        ValueError, match=r"flip_images \(kino export --keep-upright\) applies to format 'hdf5' only"
    ):
        export(first, tmp_path / "npy", format="numpy", flip_images=False)
    with h5py.File(h5, "r") as f:
        assert json.loads(f["data"].attrs["kinodb_dataset"])["metadata"]["image_orientation"] == "rotated_180"
    back = tmp_path / "back.kdb"
    caplog.clear()
    with caplog.at_level("WARNING"):
        ingest(h5, back, image_codec="raw")
    assert "flip_images" not in caplog.text  # upright already: no advice to turn them
    _assert_same(first, back)


# -- what the ingester does not read back yet -------------------------------------------------
# Each case is written by the exporter (see kinodb.export.hdf5); strict, so a test that
# starts to pass is noticed and its marker removed.


def test_timestamps_come_back(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(5), timestamps=True)
    _assert_same(src, _roundtrip(src, tmp_path))


def test_unknown_success_stays_unknown(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(6), success=(None, None, None))
    _assert_same(src, _roundtrip(src, tmp_path))


def test_extra_fields_come_back(tmp_path: Path) -> None:
    extra = {"filter_keys": [], "scene": "kitchen", "tags": ["a", 1, None], "note": "[1]"}
    src = _source(tmp_path / "src.kdb", np.random.default_rng(7), more=({"extra": extra},))
    _assert_same(src, _roundtrip(src, tmp_path))


def test_per_episode_embodiment_and_fps_come_back(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(8), more=({"embodiment": "ur5", "fps": 15.0},))
    _assert_same(src, _roundtrip(src, tmp_path))


def test_unknown_total_reward_stays_unknown(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(10), more=({"rewards": None},))
    _assert_same(src, _roundtrip(src, tmp_path))


def test_state_component_order_comes_back_without_state_keys(tmp_path: Path) -> None:
    src = _source(
        tmp_path / "src.kdb", np.random.default_rng(9), components={"joint_pos": [0, 2], "eef_pos": [2, 5]}
    )
    _assert_same(src, _roundtrip(src, tmp_path))


def test_mixed_schemas_round_trip(tmp_path: Path) -> None:
    # A merge of a file with cameras and one without: the exported HDF5 has demos with and
    # without obs/front, which the ingester accepts for kinodb exports.
    from kinodb.ingest import ingest
    from kinodb.synthetic import create_test

    a, b, merged = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "m.kdb"
    create_test(a, 3, 5, images=True, seed=1)
    create_test(b, 2, 4, seed=2)
    kinodb.merge([a, b], merged)
    kinodb.export.export(merged, tmp_path / "m.hdf5", format="hdf5")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "m.hdf5", back, image_codec="png")
    with kinodb.open(merged) as x, kinodb.open(back) as y:
        assert len(x) == len(y) == 5
        for i in range(5):
            ex, ey = x.read_episode(i), y.read_episode(i)
            np.testing.assert_array_equal(ex["states"], ey["states"])
            assert set(ex["images"]) == set(ey["images"])
            for cam, frames in ex["images"].items():
                np.testing.assert_array_equal(frames, ey["images"][cam])


@pytest.mark.integration
@pytest.mark.skipif(
    not (BRIDGE.is_dir() and G1.is_dir()),
    reason=f"real Bridge and G1 samples not found under {SAMPLES} (see shared/samples/SOURCES.md)",
)
def test_a_merge_of_two_robots_is_refused_and_its_suggested_filter_round_trips(tmp_path: Path) -> None:
    from kinodb.errors import ConversionError

    bridge, g1, merged = tmp_path / "bridge.kdb", tmp_path / "g1.kdb", tmp_path / "merged.kdb"
    ingest(BRIDGE, bridge, format="rlds")
    ingest(G1, g1, format="lerobot", episodes="29", images=False)  # its frames are not needed here
    kinodb.merge([bridge, g1], merged)
    h5 = tmp_path / "merged.hdf5"
    with pytest.raises(
        ConversionError, match=r"different action dims \(7: 25 episodes, 26: 1 episode\)"
    ) as exc:
        export(merged, h5, format="hdf5")
    assert not h5.exists() and sorted(p.suffix for p in tmp_path.iterdir()) == [".kdb"] * 3
    suggested = re.search(r"--filter '([^']+)'", str(exc.value))
    assert suggested is not None and suggested.group(1) == "action_dim = 7"
    report = export(merged, h5, format="hdf5", filter=suggested.group(1))
    assert report.episodes == 25 and report.warnings == ()
    back = tmp_path / "back.kdb"
    ingest(h5, back, format="hdf5", image_codec="png")
    _assert_same(bridge, back)  # arrays bit for bit, the JPEG frames as decoded, metadata
    with kinodb.open(bridge) as first, kinodb.open(back) as last:  # the first origin survives
        for i in (0, 24):
            was, now = first.read_meta(i), last.read_meta(i)
            assert (now["origin_file"], now["origin_episode"]) == (was["source_file"], was["source_episode"])


def test_merges_keep_the_orientation_and_a_mixed_one_is_refused(tmp_path: Path) -> None:
    raw, first = _upright(tmp_path)
    second = tmp_path / "upright2.kdb"
    ingest(raw, second, image_codec="raw", flip_images=True)
    merged = tmp_path / "merged.kdb"
    kinodb.merge([first, second], merged)
    h5 = tmp_path / "merged.hdf5"
    report = export(merged, h5, format="hdf5")
    assert any("rotated 180 degrees back" in w for w in report.warnings)
    with h5py.File(raw, "r") as src, h5py.File(h5, "r") as out:
        assert (
            out["data/demo_3/obs/agentview_rgb"][()].tobytes()
            == src["data/demo_0/obs/agentview_rgb"][()].tobytes()
        )
    as_stored = tmp_path / "as_stored.kdb"
    ingest(raw, as_stored, image_codec="raw")
    mixed = tmp_path / "mixed.kdb"
    result = kinodb.merge([first, as_stored], mixed)
    assert any("stand differently" in w for w in result.warnings)
    with pytest.raises(
        kinodb.ConversionError, match=r"stand differently from episode to episode.*source_file"
    ):
        export(mixed, tmp_path / "mixed.hdf5", format="hdf5")
    assert not (tmp_path / "mixed.hdf5").exists()
    no_images = tmp_path / "no_images.kdb"
    ingest(raw, no_images, images=False, flip_images=True)
    assert export(no_images, tmp_path / "no_images.hdf5", format="hdf5").warnings == ()  # nothing to turn


def test_lerobot_round_trip_keeps_one_wide_array_shapes(tmp_path: Path) -> None:
    # LeRobot writes a feature of shape (1,) as a scalar column; the re-ingest gives the
    # array its recorded shape back.
    src = tmp_path / "src.kdb"
    rng = np.random.default_rng(3)
    arrays = {"gripper": rng.normal(size=(6, 1)).astype(np.float32), "flag": rng.normal(size=6).astype(np.float32),
              "grid": rng.normal(size=(6, 2, 3)).astype(np.float32)}  # fmt: skip
    with kinodb.Writer(src) as w:
        w.add_episode(
            actions=np.zeros((6, 2), np.float32), states=np.zeros((6, 3), np.float32), extra_arrays=arrays
        )
    export(src, tmp_path / "lr", format="lerobot")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "lr", back)
    with kinodb.open(back) as db:
        for name, value in arrays.items():
            got = db.read_array(0, name)
            assert got.shape == value.shape and got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value)


# -- filter keys: mask/ lists them by key, ep_meta keeps each episode's order ----------------------


def _filter_keys(path: Path) -> list[Any]:
    with kinodb.open(path) as db:
        return [db.read_meta(i).get("filter_keys") for i in range(len(db))]


def test_filter_keys_keep_their_order(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    keys = [["train", "good"], ["valid"], [], ["z", "a", "m"]]
    with kinodb.Writer(src) as w:
        for k in keys:
            w.add_episode(actions=np.zeros((2, 2), np.float32), extra={"filter_keys": k})
    back = _roundtrip(src, tmp_path)
    assert _filter_keys(back) == keys
    with h5py.File(tmp_path / "x.hdf5") as f:  # robomimic's readers see the same masks as before
        assert sorted(f["mask"]) == ["a", "good", "m", "train", "valid", "z"]
        assert f["mask/train"][()].tolist() == [b"demo_0"]


def test_masks_edited_after_the_export_win_over_the_recorded_order(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src) as w:
        for k in (["train", "good"], ["valid", "good"]):
            w.add_episode(actions=np.zeros((2, 2), np.float32), extra={"filter_keys": k})
    h5 = tmp_path / "x.hdf5"
    export(src, h5)
    with h5py.File(h5, "a") as f:  # demo_1 is taken out of "good" after the export
        del f["mask/good"]
        f["mask/good"] = np.array([b"demo_0"])
    ingest(h5, tmp_path / "back.kdb")
    assert _filter_keys(tmp_path / "back.kdb") == [["train", "good"], ["valid"]]


def test_a_plain_robomimic_file_keeps_its_mask_order(tmp_path: Path) -> None:
    raw = tmp_path / "robomimic.hdf5"
    with h5py.File(raw, "w") as f:
        f["data/demo_0/actions"] = np.zeros((2, 7))
        f["data/demo_0"].attrs["ep_meta"] = json.dumps({"filter_keys": ["train", "good"]})  # not kinodb's
        f["mask/train"] = np.array([b"demo_0"])
        f["mask/good"] = np.array([b"demo_0"])
    ingest(raw, tmp_path / "back.kdb")
    assert _filter_keys(tmp_path / "back.kdb") == [["good", "train"]]  # the keys of mask/, sorted


@pytest.mark.parametrize(
    "rewards, dones, dtype, want",
    [
        (np.float64, np.int64, None, ("float64", "int64")),  # robomimic
        (np.uint8, np.uint8, None, ("uint8", "uint8")),  # LIBERO
        (np.float32, np.bool_, None, ("float32", "bool")),
        (np.uint8, np.int64, "float32", ("float32", "int64")),  # --dtype: rewards keep the chosen one
    ],
)
def test_rewards_and_dones_go_back_in_their_source_dtypes(
    tmp_path: Path, rewards: Any, dones: Any, dtype: str | None, want: tuple[str, str]
) -> None:
    raw = tmp_path / "src.hdf5"
    with h5py.File(raw, "w") as f:
        for k in range(2):
            T = 4 + k
            g = f.create_group(f"data/demo_{k}")
            g.attrs["num_samples"] = T
            g["actions"] = np.random.default_rng(k).uniform(-1, 1, (T, 2))
            g["rewards"] = (np.arange(T) == T - 1).astype(rewards)
            g["dones"] = (np.arange(T) == T - 1).astype(dones)
            g["obs/pos"] = np.zeros((T, 3))
    first = tmp_path / "first.kdb"
    ingest(raw, first, dtype=dtype)
    h5 = tmp_path / "out.hdf5"
    export(first, h5, format="hdf5")
    with h5py.File(raw, "r") as src, h5py.File(h5, "r") as out:
        for k in range(2):
            got = out[f"data/demo_{k}"]
            assert (got["rewards"].dtype.name, got["dones"].dtype.name) == want
            np.testing.assert_array_equal(got["rewards"][()], src[f"data/demo_{k}/rewards"][()])
            np.testing.assert_array_equal(got["dones"][()], src[f"data/demo_{k}/dones"][()])
