"""Export to robomimic HDF5, checked with h5py directly: names, dtypes, attrs, values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.errors import ConversionError, MissingExtraError
from kinodb.export import export

h5py = pytest.importorskip("h5py")

COMPONENTS = {"eef_pos": [0, 3], "gripper": [3, 5]}  # sorted by name and by start


def _episode(make_episode, i: int, **kw) -> dict:
    ep = make_episode(T=4 + i, state_dim=5, cameras={"agentview": (6, 5, 3), "depth": (6, 5, 1)}, **kw)
    ep["extra_arrays"] = {"sim_state": np.arange((4 + i) * 9, dtype=np.float64).reshape(4 + i, 9),
                          "lang_emb": np.ones((4 + i, 2), np.float16)}  # fmt: skip
    ep["is_terminal"] = np.arange(4 + i) == 3 + i
    return ep


def _write(path: Path, eps: list[dict], **kw) -> Path:
    kw.setdefault("schema", {"states": {"components": COMPONENTS}})
    with kinodb.Writer(path, image_codec=kw.pop("image_codec", "png"), **kw) as w:
        for ep in eps:
            w.add_episode(**ep)
    return path


@pytest.fixture
def source(tmp_path: Path, make_episode) -> Path:
    eps = [
        _episode(make_episode, i, embodiment="panda", task=f"lift {i}", fps=20.0,
                 success=(True, False, None)[i], extra={"scene": "lab", "tags": ["a", "b"], "attempt": i,
                                                        "filter_keys": [["train"], ["valid"], ["train", "hard"]][i]})
        for i in range(3)
    ]  # fmt: skip
    return _write(tmp_path / "src.kdb", eps, source_format="synthetic", metadata={"lab": "x"})


def test_layout_names_dtypes_and_attrs(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.hdf5"
    report = export(source, out, format="hdf5")
    assert (report.files, report.episodes, report.warnings) == (1, 3, ())
    with kinodb.open(source) as db, h5py.File(out, "r") as f:
        assert sorted(f) == ["data", "mask"]
        data = f["data"]
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        assert data.attrs["total"] == db.num_frames()
        env = json.loads(data.attrs["env_args"])
        assert env == {"env_name": "src", "type": 1, "env_kwargs": {"robots": "panda", "control_freq": 20.0}}
        assert json.loads(data.attrs["kinodb_dataset"]) == db.dataset_info()
        for k in range(3):
            g, ep = data[f"demo_{k}"], db.read_episode(k)
            T = ep["meta"]["num_frames"]
            assert sorted(g) == ["actions", "dones", "lang_emb", "next_obs", "obs", "rewards", "states"]
            assert sorted(g["obs"]) == sorted(g["next_obs"]) == ["agentview", "depth", "eef_pos", "gripper"]
            for key in g["obs"]:  # robomimic's next_obs: one frame later, the last frame repeated
                now, later = g["obs"][key][()], g["next_obs"][key][()]
                assert later.dtype == now.dtype and later.shape == now.shape, key
                assert np.array_equal(later[:-1], now[1:]) and np.array_equal(later[-1], now[-1]), key
            assert g.attrs["num_samples"] == T
            for name, want in (("actions", ep["actions"]), ("rewards", ep["rewards"]),
                               ("states", ep["sim_state"]), ("lang_emb", ep["lang_emb"])):  # fmt: skip
                assert g[name].dtype == want.dtype and g[name][()].tobytes() == want.tobytes(), name
            assert g["dones"].dtype == np.uint8 and np.array_equal(g["dones"][()], ep["is_terminal"])
            assert np.array_equal(g["obs/eef_pos"][()], ep["states"][:, :3])
            assert np.array_equal(g["obs/gripper"][()], ep["states"][:, 3:5])
            assert g["obs/eef_pos"].dtype == np.float32
            for cam in ("agentview", "depth"):
                assert g["obs"][cam].dtype == np.uint8 and g["obs"][cam].shape == ep["images"][cam].shape
                assert np.array_equal(g["obs"][cam][()], ep["images"][cam])
            meta = ep["meta"]
            ep_meta = json.loads(g.attrs["ep_meta"])
            assert ep_meta["lang"] == g.attrs["task"] == meta["task"]
            assert ep_meta["success"] == meta["success"] and ep_meta["tags"] == ["a", "b"]
            assert g.attrs["embodiment"] == "panda" and g.attrs["fps"] == 20.0
            assert json.loads(g.attrs["tags"]) == ["a", "b"] and g.attrs["attempt"] == k
            assert ("success" in g.attrs) == (meta["success"] is not None)
            assert "filter_keys" not in g.attrs  # mask/ lists them; ep_meta keeps the episode's order
            assert ep_meta["filter_keys"] == meta["filter_keys"]
        assert g.attrs["total_reward"] == pytest.approx(meta["total_reward"])
        assert data["demo_0"].attrs["success"] == np.True_
        assert sorted(f["mask"]) == ["hard", "train", "valid"]
        assert f["mask/train"].dtype.kind == "S"
        assert f["mask/train"][()].tolist() == [b"demo_0", b"demo_2"]
        assert f["mask/hard"][()].tolist() == [b"demo_2"]


@pytest.mark.parametrize("orientation", ["rotated_180", "as_stored", None])
def test_frames_turned_upright_on_ingest_are_turned_back(
    tmp_path: Path, make_episode, orientation: str | None
) -> None:
    from kinodb.export import hdf5

    ep = _episode(make_episode, 0)
    ep["extra_arrays"]["depth_m"] = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5, 1)
    metadata = {} if orientation is None else {"image_orientation": orientation}
    src = _write(tmp_path / "src.kdb", [ep], metadata=metadata)
    out = tmp_path / "out.hdf5"
    report = export(src, out, format="hdf5")
    turned = orientation == "rotated_180"
    assert len(report.warnings) == turned
    assert all(
        "rotated 180 degrees back to the orientation of the ingested source" in w for w in report.warnings
    )
    with kinodb.open(src) as db, h5py.File(out, "r") as f:
        g, want = f["data/demo_0"], db.read_episode(0)
        for cam in ("agentview", "depth"):
            frames = want["images"][cam]
            assert not np.array_equal(frames, frames[:, ::-1, ::-1])  # a turn would show
            same = np.array_equal(g["obs"][cam][()], frames[:, ::-1, ::-1] if turned else frames)
            assert same and g["obs"][cam].dtype == np.uint8, cam
        depth = want["depth_m"][:, ::-1, ::-1] if turned else want["depth_m"]
        assert np.array_equal(g["depth_m"][()], depth)  # image-like arrays turn with the frames
        assert g["states"][()].tobytes() == want["sim_state"].tobytes()  # others stay as they are
        info = json.loads(f["data"].attrs["kinodb_dataset"])
        assert info["metadata"].get("image_orientation") == ("as_stored" if turned else orientation)
        assert {**info, "metadata": {}} == {**db.dataset_info(), "metadata": {}}
    kept = tmp_path / "kept.hdf5"
    with kinodb.open(src) as db:
        assert hdf5.write(db, [0], str(kept), {}, flip_images=False) == []
    with h5py.File(kept, "r") as f:
        assert np.array_equal(f["data/demo_0/obs/agentview"][()], want["images"]["agentview"])
        assert (
            json.loads(f["data"].attrs["kinodb_dataset"])["metadata"].get("image_orientation") == orientation
        )


def test_env_args_and_problem_info_pass_through(tmp_path: Path, make_episode) -> None:
    env = {"env_name": "Lift", "type": 1, "env_version": "1.4", "env_kwargs": {"robots": ["Panda"]}}
    src = _write(tmp_path / "a.kdb", [make_episode()], schema={},
                 metadata={"env_args": env, "problem_info": {"language_instruction": "lift it"}})  # fmt: skip
    export(src, tmp_path / "a.hdf5", format="hdf5")
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        assert json.loads(f["data"].attrs["env_args"]) == env
        assert json.loads(f["data"].attrs["problem_info"]) == {"language_instruction": "lift it"}
        assert "mask" not in f
        assert sorted(f["data/demo_0/obs"]) == ["state"]  # no components: one obs key


def test_states_that_components_do_not_cover_are_written_whole(tmp_path: Path, make_episode) -> None:
    ep = make_episode(state_dim=5)
    src = _write(tmp_path / "a.kdb", [ep], schema={"states": {"components": {"pos": [0, 3]}}})
    report = export(src, tmp_path / "a.hdf5", format="hdf5")
    assert len(report.warnings) == 1 and "obs/state" in report.warnings[0]
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        assert sorted(f["data/demo_0/obs"]) == ["state"]
        assert f["data/demo_0/obs/state"][()].tobytes() == ep["states"].tobytes()
        assert "states" not in f["data/demo_0"]  # no sim_state


def test_episodes_without_states_have_no_state_obs(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.kdb", [{"actions": np.zeros((2, 3), np.float32)}], schema={})
    export(src, tmp_path / "a.hdf5", format="hdf5")
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        assert list(f["data/demo_0/obs"]) == []
        assert json.loads(f["data"].attrs["env_args"])["env_kwargs"] == {"control_freq": 10.0}


@pytest.mark.parametrize(
    ("episode", "match"),
    [
        ({"images": {"a/b": np.zeros((2, 4, 4, 3), np.uint8)}}, "cannot be an HDF5"),
        (
            {"images": {"pos": np.zeros((2, 4, 4, 3), np.uint8)}},
            "the state component 'pos' would both be obs/pos",
        ),
        ({"extra_arrays": {"dones": np.zeros(2)}}, "would take the place of the robomimic dataset 'dones'"),
        ({"extra": {"filter_keys": "train"}}, "must be a list"),
    ],
)
def test_unexportable_content_is_refused(tmp_path: Path, episode: dict, match: str) -> None:
    ep = {"actions": np.zeros((2, 1), np.float32), "states": np.zeros((2, 3), np.float32), **episode}
    src = _write(tmp_path / "a.kdb", [ep], schema={"states": {"components": {"pos": [0, 3]}}})
    with pytest.raises(ConversionError, match=match):
        export(src, tmp_path / "a.hdf5", format="hdf5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kdb"]


def test_missing_h5py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_episode) -> None:
    src = _write(tmp_path / "a.kdb", [make_episode()], schema={})
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(MissingExtraError, match=r"kinodb\[hdf5\]"):
        export(src, tmp_path / "a.hdf5", format="hdf5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kdb"]


def test_many_demos_are_numbered_in_order(tmp_path: Path) -> None:
    eps = [{"actions": np.full((1, 1), i, np.float32)} for i in range(12)]
    src = _write(tmp_path / "a.kdb", eps, schema={})
    export(src, tmp_path / "a.hdf5", format="hdf5", filter="episode_id >= 2")
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        demos = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        assert demos == [f"demo_{k}" for k in range(10)]
        assert [f["data"][d]["actions"][0, 0] for d in demos] == list(range(2, 12))
        assert f["data"].attrs["total"] == 10


def test_metadata_hdf5_cannot_hold_as_is_stays_exact_in_ep_meta(tmp_path: Path) -> None:
    extra = {"big": 2**70, "nul\x00name": 1, "lang": "fr", "model_file": "<xml/>", "none": None}
    ep = {"actions": np.zeros((2, 1), np.float32), "task": "a\x00b", "extra": extra}
    src = _write(tmp_path / "a.kdb", [ep], schema={})
    export(src, tmp_path / "a.hdf5", format="hdf5")
    with kinodb.open(src) as db, h5py.File(tmp_path / "a.hdf5", "r") as f:
        attrs = f["data/demo_0"].attrs
        ep_meta = json.loads(attrs["ep_meta"])
        assert ep_meta["lang"] == "a\x00b" and ep_meta["extra.lang"] == "fr"
        assert {k: ep_meta[k] for k in ("big", "nul\x00name", "model_file", "none")} == {
            k: db.read_meta(0)[k] for k in ("big", "nul\x00name", "model_file", "none")
        }
        assert json.loads(attrs["task"]) == "a\x00b" and json.loads(attrs["big"]) == 2**70
        assert attrs["extra.model_file"] == "<xml/>" and "model_file" not in attrs
        assert attrs["lang"] == "fr" and json.loads(attrs["none"]) is None
        assert "success" not in attrs and not any("\x00" in k for k in attrs)


def test_importing_the_export_package_does_not_import_h5py() -> None:
    code = "import sys, kinodb, kinodb.export; sys.exit('h5py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_arrays_only_some_episodes_hold_are_left_out_and_named(tmp_path: Path, caplog) -> None:
    # A merge of two robots' files: one recorded timestamps, the other did not.
    src = tmp_path / "both.kdb"
    with kinodb.Writer(src, image_codec="png") as w:
        for k in range(3):
            ts = {"timestamps": np.arange(5) / 10.0} if k == 1 else {}
            w.add_episode(actions=np.full((5, 2), k, np.float32), states=np.zeros((5, 3), np.float32), **ts)
    out = tmp_path / "both.hdf5"
    with caplog.at_level("WARNING"):
        report = export(src, out, format="hdf5")
    assert len(report.warnings) == 1
    assert "array 'timestamps' is in 1 of 3 exported episodes; left out" in report.warnings[0]
    assert caplog.records == []  # the report carries it: logged too, kino would print it twice
    with h5py.File(out, "r") as f:
        assert all("timestamps" not in f[f"data/demo_{k}"] for k in range(3))
    from kinodb.ingest import ingest

    ingest(out, tmp_path / "again.kdb")  # every demo holds the same keys: it reads back
    with kinodb.open(tmp_path / "again.kdb") as db:
        assert [float(db.read_array(k, "actions")[0, 0]) for k in range(3)] == [0.0, 1.0, 2.0]


# -- episodes that cannot share one robomimic file ------------------------------------------


def _merged(tmp_path: Path, *parts: tuple[str, dict]) -> Path:
    """A `kinodb.merge` of one single-episode file per ``(embodiment, add_episode fields)``."""
    files = []
    for k, (robot, fields) in enumerate(parts):
        files.append(_write(tmp_path / f"{robot}{k}.kdb", [{**fields, "embodiment": robot}], schema={}))
    kinodb.merge(files, tmp_path / "merged.kdb")
    return tmp_path / "merged.kdb"


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".kdb"))


def test_different_action_dims_are_refused_before_writing(tmp_path: Path) -> None:
    src = _merged(
        tmp_path,
        ("panda", {"actions": np.zeros((3, 2), np.float32), "states": np.zeros((3, 4), np.float32)}),
        ("aloha", {"actions": np.zeros((5, 14), np.float32), "states": np.zeros((5, 4), np.float32)}),
    )
    with pytest.raises(ConversionError) as exc:
        export(src, tmp_path / "out.hdf5", format="hdf5")
    message = str(exc.value)
    assert "different action dims (2: 1 episode, 14: 1 episode)" in message
    assert "--filter 'action_dim = 2'" in message and str(src) in message
    assert _left(tmp_path) == []  # no output, no temporary file
    report = export(src, tmp_path / "out.hdf5", format="hdf5", filter="action_dim = 14")
    assert report.episodes == 1
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert list(f["data"]) == ["demo_0"] and f["data/demo_0/actions"].shape == (5, 14)


def test_different_state_dims_are_refused_before_writing(tmp_path: Path) -> None:
    src = _merged(
        tmp_path,
        ("bridge", {"actions": np.zeros((3, 7), np.float32), "states": np.zeros((3, 7), np.float32)}),
        ("bridge", {"actions": np.zeros((2, 7), np.float32), "states": np.zeros((2, 7), np.float32)}),
        ("g1", {"actions": np.zeros((4, 7), np.float32), "states": np.zeros((4, 26), np.float32)}),
    )
    with pytest.raises(ConversionError, match=r"different state dims \(7: 2 episodes, 26: 1 episode\)"):
        export(src, tmp_path / "out.hdf5", format="hdf5")
    assert _left(tmp_path) == []


def test_episodes_without_states_and_with_states_are_refused(tmp_path: Path) -> None:
    # Demos with and without obs/state: the ingest (and robomimic) would find obs/state missing.
    src = _merged(
        tmp_path,
        ("a", {"actions": np.zeros((3, 2), np.float32)}),
        ("b", {"actions": np.zeros((3, 2), np.float32), "states": np.zeros((3, 4), np.float32)}),
    )
    with pytest.raises(ConversionError, match=r"different state dims \(0: 1 episode, 4: 1 episode\)"):
        export(src, tmp_path / "out.hdf5", format="hdf5")
    assert _left(tmp_path) == []


def test_camera_frame_sizes_that_differ_are_refused(tmp_path: Path) -> None:
    def ep(h: int, w: int) -> dict:
        return {
            "actions": np.zeros((2, 3), np.float32),
            "images": {"front": np.zeros((2, h, w, 3), np.uint8)},
        }

    src = _merged(tmp_path, ("widowx", ep(6, 8)), ("widowx", ep(6, 8)), ("g1", ep(4, 5)))
    with pytest.raises(ConversionError) as exc:
        export(src, tmp_path / "out.hdf5", format="hdf5")
    message = str(exc.value)
    assert "camera 'front' has different per-frame shapes" in message
    assert "[6, 8, 3] in 2 episodes (first: 0), [4, 5, 3] in 1 episode (first: 2)" in message
    assert "--filter \"embodiment = 'widowx'\"" in message
    assert _left(tmp_path) == []
    export(src, tmp_path / "out.hdf5", format="hdf5", filter="embodiment = 'widowx'")
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert [f[f"data/demo_{k}/obs/front"].shape for k in range(2)] == [(2, 6, 8, 3)] * 2


def test_array_shapes_that_differ_are_refused_without_a_robot_to_filter_on(tmp_path: Path) -> None:
    def ep(width: int) -> dict:
        return {"actions": np.zeros((2, 3), np.float32), "extra_arrays": {"emb": np.zeros((2, width))}}

    src = _merged(tmp_path, ("panda", ep(4)), ("panda", ep(6)))
    with pytest.raises(ConversionError) as exc:
        export(src, tmp_path / "out.hdf5", format="hdf5")
    message = str(exc.value)
    assert "array 'emb' has different per-frame shapes ([4] in 1 episode (first: 0), [6] in 1" in message
    # One robot, so no embodiment filter: a ready filter by episode id instead.
    assert message.endswith('export them separately, e.g. episode 0 with --filter "episode_id = 0"')
    assert _left(tmp_path) == []
    export(src, tmp_path / "out.hdf5", format="hdf5", filter="episode_id = 0")
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert list(f["data"]) == ["demo_0"] and f["data/demo_0/emb"].shape == (2, 4)


def test_a_camera_only_some_episodes_hold_is_kept_in_those(tmp_path: Path) -> None:
    cam = {"front": np.full((2, 4, 5, 3), 7, np.uint8)}
    src = _merged(
        tmp_path,
        ("a", {"actions": np.zeros((2, 3), np.float32), "images": cam}),
        ("b", {"actions": np.ones((2, 3), np.float32)}),
    )
    assert export(src, tmp_path / "out.hdf5", format="hdf5").warnings == ()
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert list(f["data/demo_0/obs"]) == ["front"] and list(f["data/demo_1/obs"]) == []


def test_per_frame_tasks_of_some_episodes_survive_the_round_trip(tmp_path: Path) -> None:
    from kinodb.ingest import ingest
    from kinodb.windows import FrameWindows

    src = tmp_path / "tasks.kdb"
    with kinodb.Writer(src) as w:
        w.add_episode(actions=np.zeros((5, 2), np.float32), states=np.zeros((5, 3), np.float32), task="wipe",
                      extra={"tasks": ["wipe", "put down"]},
                      extra_arrays={"task_index": np.array([0, 0, 1, 1, 0], np.int64)})  # fmt: skip
        w.add_episode(actions=np.ones((3, 2), np.float32), states=np.ones((3, 3), np.float32), task="stack")
    export(src, tmp_path / "out.hdf5", format="hdf5")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "out.hdf5", back)
    want = FrameWindows(str(src), obs_horizon=1, action_horizon=1).tasks(np.arange(8))
    assert want == ["wipe", "wipe", "put down", "put down", "wipe", "stack", "stack", "stack"]
    assert FrameWindows(str(back), obs_horizon=1, action_horizon=1).tasks(np.arange(8)) == want


# -- next_obs and frames written a window at a time ------------------------------------------


@pytest.mark.parametrize("turn", [False, True])
def test_next_obs_holds_every_obs_key_one_frame_later_across_windows(tmp_path: Path, turn: bool) -> None:
    from kinodb.export._base import WINDOW

    rng = np.random.default_rng(12)
    T = 2 * WINDOW + 5  # three windows, the last one short
    src = tmp_path / "long.kdb"
    metadata = {"image_orientation": "rotated_180" if turn else "as_stored",
                "hdf5": {"extra_arrays": {"depth_m": "obs/depth_m"}}}  # fmt: skip
    with kinodb.Writer(src, image_codec="png", schema={"states": {"components": {"pos": [0, 2], "grip": [2, 3]}}},
                       metadata=metadata) as w:  # fmt: skip
        w.add_episode(actions=rng.normal(size=(T, 2)).astype(np.float32), states=rng.normal(size=(T, 3)),
                      images={"front": rng.integers(0, 255, (T, 6, 5, 3), dtype=np.uint8)},
                      extra_arrays={"depth_m": rng.random((T, 6, 5, 1)).astype(np.float32),
                                    "raw_depth": rng.random((T, 4, 3, 1))})  # fmt: skip
    export(src, tmp_path / "out.hdf5", format="hdf5")
    with kinodb.open(src) as db, h5py.File(tmp_path / "out.hdf5", "r") as f:
        ep, g = db.read_episode(0), f["data/demo_0"]
        turned = (lambda a: a[:, ::-1, ::-1]) if turn else (lambda a: a)
        want = {"pos": ep["states"][:, :2], "grip": ep["states"][:, 2:], "front": turned(ep["images"]["front"]),
                "depth_m": turned(ep["depth_m"])}  # fmt: skip
        assert sorted(g["obs"]) == sorted(g["next_obs"]) == sorted(want)
        for key, values in want.items():
            assert g["obs"][key].dtype == values.dtype and np.array_equal(g["obs"][key][()], values), key
            later = np.concatenate([values[1:], values[-1:]])
            got = g["next_obs"][key][()]
            assert got.dtype == values.dtype and np.array_equal(got, later), key
        # A 4-D array that is no obs key is written a window at a time too.
        assert np.array_equal(g["raw_depth"][()], turned(ep["raw_depth"]))
        assert json.loads(f["data"].attrs["kinodb_export"])["next_obs"] is True


def test_no_next_obs_leaves_it_out(tmp_path: Path, make_episode) -> None:
    src = _write(tmp_path / "src.kdb", [_episode(make_episode, 0)])
    export(src, tmp_path / "api.hdf5", format="hdf5", next_obs=False)
    assert subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "export", str(src), "-o", str(tmp_path / "cli.hdf5"),
         "--no-next-obs"], check=False, capture_output=True
    ).returncode == 0  # fmt: skip
    for name in ("api.hdf5", "cli.hdf5"):
        with h5py.File(tmp_path / name, "r") as f:
            assert "next_obs" not in f["data/demo_0"] and "obs" in f["data/demo_0"], name
            assert json.loads(f["data"].attrs["kinodb_export"])["next_obs"] is False
    with pytest.raises(
        ValueError, match=r"next_obs \(kino export --no-next-obs\) applies to format 'hdf5' only"
    ):
        export(src, tmp_path / "npy", format="numpy", next_obs=False)


def test_an_export_with_next_obs_ingests_without_it(tmp_path: Path, make_episode) -> None:
    from kinodb.ingest import ingest

    src = _write(tmp_path / "src.kdb", [_episode(make_episode, i) for i in range(2)])
    export(src, tmp_path / "out.hdf5", format="hdf5")
    ingest(tmp_path / "out.hdf5", tmp_path / "back.kdb", image_codec="png")
    with kinodb.open(src) as a, kinodb.open(tmp_path / "back.kdb") as b:
        # next_obs is obs one frame later, its last row the last observation again: nothing kept twice
        assert "next_obs" not in b.metadata()["hdf5"]["left_out"]
        for i in range(2):
            x, y = a.read_episode(i), b.read_episode(i)
            assert set(x) == set(y)
            for name in set(x) - {"meta", "images"}:
                assert x[name].dtype == y[name].dtype and x[name].tobytes() == y[name].tobytes(), name
            assert all(np.array_equal(x["images"][c], y["images"][c]) for c in x["images"])
