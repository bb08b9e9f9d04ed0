"""The zarr export: a replay buffer that the zarr library reads as diffusion_policy does, and
that ``kinodb.ingest`` turns back into the same file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip(
    "zarr", minversion="3", reason="needs zarr 3 to read the exports (pip install 'kinodb[zarr]')"
)
pytest.importorskip("numcodecs")

import kinodb  # noqa: E402
from _factories import assert_same_file, smooth_frames  # noqa: E402
from kinodb._cli.main import main  # noqa: E402
from kinodb.errors import ConversionError  # noqa: E402
from kinodb.export import export  # noqa: E402
from kinodb.export import zarr as zarr_export  # noqa: E402
from kinodb.ingest import ingest  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
LENGTHS = (23, 17, 31, 19)


def _source(path: Path, *, codec: str = "png", components: dict[str, list[int]] | None = None,
            timestamps: bool = True, fps: tuple[float, ...] = (20.0,)) -> Path:  # fmt: skip
    rng = np.random.default_rng(7)
    comps = components or {"eef_pos": [0, 3], "gripper": [3, 5]}
    with kinodb.Writer(path, image_codec=codec, schema={"states": {"components": comps}},
                       metadata={"robot": {"name": "panda", "dof": 7}}) as w:  # fmt: skip
        for i, T in enumerate(LENGTHS):
            w.add_episode(
                actions=rng.normal(size=(T, 7)).astype(np.float32), states=rng.normal(size=(T, 5)),
                rewards=np.r_[np.zeros(T - 1), float(i % 2)].astype(np.float32),
                is_terminal=np.arange(T) == T - 1,
                images={"agentview": smooth_frames(rng, (T, 24, 20, 3)), "wrist": smooth_frames(rng, (T, 8, 8, 1))},
                extra_arrays={"sim_state": rng.normal(size=(T, 9)), "contacts": rng.integers(0, 3, (T, 2, 2)).astype(np.int16)},
                embodiment="panda", task=f"lift the cube {i}", fps=fps[i % len(fps)], success=bool(i % 2),
                extra={"filter_keys": [["train"], ["valid"]][i % 2], "meta.seed": 100 + i, "meta.scale": 0.5 * i,
                       "operator": None if i == 2 else f"op{i}"},
                timestamps=np.arange(T) / 20.0 if timestamps else None,
            )  # fmt: skip
    return path


@pytest.mark.parametrize("codec", ["png", "raw", "jpeg"])
def test_ingest_of_the_export_gives_back_the_file(tmp_path: Path, codec: str) -> None:
    src = _source(tmp_path / "src.kdb", codec=codec)
    report = export(src, tmp_path / "pick.zarr")
    assert (report.format, report.episodes, report.frames, report.warnings) == ("zarr", 4, sum(LENGTHS), ())
    back = tmp_path / "back.kdb"
    got = ingest(tmp_path / "pick.zarr", back, image_codec="png", verify=True)
    assert got.format == "zarr" and got.notes == [] and got.verification is not None
    assert_same_file(src, back)
    with kinodb.open(back) as db:
        assert db.metadata()["robot"] == {"name": "panda", "dof": 7}
        assert db.read_meta(1)["source_episode"] == "episode_1"
        assert db.query("filter_keys CONTAINS 'valid' AND meta.seed > 100").tolist() == [1, 3]


def test_zarr_reads_the_replay_buffer_as_diffusion_policy_does(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", codec="raw")
    export(src, tmp_path / "pick.zarr")
    root = zarr.open_group(str(tmp_path / "pick.zarr"), mode="r")
    assert root.metadata.zarr_format == 2
    data = root["data"]
    assert sorted(data.array_keys()) == [
        "action", "agentview", "contacts", "done", "eef_pos", "gripper", "reward", "sim_state", "timestamp", "wrist",
    ]  # fmt: skip
    ends = root["meta/episode_ends"][:]
    assert ends.tolist() == np.cumsum(LENGTHS).tolist()
    assert root["meta/seed"][:].tolist() == [100, 101, 102, 103]
    assert root["meta/scale"][:].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert root.attrs["fps"] == 20.0
    with kinodb.open(src) as db:
        eps = [db.read_episode(i) for i in range(len(db))]
    whole = {k: np.concatenate([e[k] for e in eps]) for k in ("actions", "states", "rewards", "is_terminal",
                                                             "timestamps", "sim_state", "contacts")}  # fmt: skip
    assert data["action"][:].tobytes() == whole["actions"].tobytes()
    assert np.array_equal(np.concatenate([data["eef_pos"][:], data["gripper"][:]], axis=1), whole["states"])
    assert data["reward"][:].dtype == np.float32 and np.array_equal(data["reward"][:], whole["rewards"])
    assert np.array_equal(data["done"][:], whole["is_terminal"])
    assert np.array_equal(data["timestamp"][:], whole["timestamps"])
    assert data["contacts"][:].dtype == np.int16 and np.array_equal(data["contacts"][:], whole["contacts"])
    assert np.array_equal(data["sim_state"][:], whole["sim_state"])
    frames = np.concatenate([e["images"]["agentview"] for e in eps])
    assert data["agentview"].shape == frames.shape and np.array_equal(data["agentview"][:], frames)
    assert data["wrist"][:].shape == (sum(LENGTHS), 8, 8, 1)


def test_chunks_straddle_episodes_and_the_last_is_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zarr_export, "CHUNK_BYTES", 7 * 24 * 20 * 3)  # 7 frames of agentview a chunk
    src = _source(tmp_path / "src.kdb", codec="raw")
    export(src, tmp_path / "pick.zarr")
    arr = zarr.open_array(str(tmp_path / "pick.zarr" / "data" / "agentview"), mode="r")
    assert arr.chunks == (7, 24, 20, 3) and arr.nchunks == -(-sum(LENGTHS) // 7)
    with kinodb.open(src) as db:
        frames = np.concatenate([db.read_episode(i)["images"]["agentview"] for i in range(len(db))])
    assert np.array_equal(arr[:], frames)
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick.zarr", back, image_codec="raw")
    assert_same_file(src, back)


def test_a_zip_archive_when_named_so(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    out = tmp_path / "pick.zarr.zip"
    report = export(src, out)  # the name says zarr, and a zip archive
    assert report.format == "zarr" and report.files == 1 and out.is_file()
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert "meta/episode_ends/.zarray" in zf.namelist()
    store = zarr.storage.ZipStore(str(out), mode="r")
    root = zarr.open_group(store, mode="r")
    assert root["meta/episode_ends"][:].tolist() == np.cumsum(LENGTHS).tolist()
    store.close()
    back = tmp_path / "back.kdb"
    ingest(out, back, image_codec="png")  # --format auto knows the archive
    assert_same_file(src, back)


def test_state_components_that_do_not_tile_go_as_one_state_array(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", components={"eef_pos": [0, 3], "eef_xy": [0, 2]})  # overlapping
    export(src, tmp_path / "pick.zarr")
    root = zarr.open_group(str(tmp_path / "pick.zarr"), mode="r")
    assert "state" in root["data"] and "eef_pos" not in root["data"]
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick.zarr", back, image_codec="png")
    assert_same_file(src, back)


def test_components_out_of_name_order_come_back_in_column_order(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", components={"z_joint": [0, 2], "a_eef": [2, 5]})
    export(src, tmp_path / "pick.zarr")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick.zarr", back, image_codec="png")
    assert_same_file(src, back)  # a plain replay buffer would be joined in sorted key order


def test_episodes_of_different_rates_keep_their_own(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", fps=(20.0, 15.0))
    export(src, tmp_path / "pick.zarr")
    assert "fps" not in zarr.open_group(str(tmp_path / "pick.zarr"), mode="r").attrs
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "pick.zarr", back, image_codec="png")
    assert_same_file(src, back)
    with kinodb.open(back) as db:
        assert db.episodes()["fps"].tolist() == [20.0, 15.0, 20.0, 15.0]


def test_a_store_changed_after_the_export_is_read_without_the_record(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    export(src, tmp_path / "pick.zarr")
    attrs_path = tmp_path / "pick.zarr" / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    attrs["kinodb_export"]["frames"] += 1  # as if rows were added since
    attrs_path.write_text(json.dumps(attrs))
    report = ingest(tmp_path / "pick.zarr", tmp_path / "back.kdb", image_codec="png")
    assert any("changed since" in n for n in report.notes)
    with kinodb.open(tmp_path / "back.kdb") as db:
        meta = db.read_meta(0)
        assert meta["task"] == "" and meta["meta.seed"] == 100  # meta/ arrays read as any replay buffer's
        assert "kinodb_export" not in db.metadata()["zarr"]["attrs"]


def test_a_merge_of_two_action_widths_is_refused_with_a_filter_that_works(tmp_path: Path) -> None:
    a = _source(tmp_path / "a.kdb")
    b = tmp_path / "b.kdb"
    with kinodb.Writer(b) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 5)), embodiment="pusht")
    merged = tmp_path / "m.kdb"
    kinodb.merge([a, b], merged)
    with pytest.raises(ConversionError, match=r"different action dims .*--filter") as err:
        export(merged, tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists()
    kql = str(err.value).split("--filter '")[1].rstrip("'")
    assert kql == "action_dim = 2"
    assert export(merged, tmp_path / "m.zarr", filter=kql).episodes == 1
    assert export(merged, tmp_path / "m7.zarr", filter="action_dim = 7").episodes == 4


def test_a_camera_some_episodes_lack_is_refused_and_an_array_left_out(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 1)),
                      images={"cam": np.zeros((3, 4, 4, 3), np.uint8)}, extra_arrays={"x": np.ones((3, 2))})  # fmt: skip
        w.add_episode(actions=np.zeros((2, 2), np.float32), states=np.zeros((2, 1)),
                      images={"cam": np.zeros((2, 4, 4, 3), np.uint8)})  # fmt: skip
        w.add_episode(
            actions=np.zeros((2, 2), np.float32), states=np.zeros((2, 1)), extra_arrays={"x": np.ones((2, 2))}
        )
    with pytest.raises(ConversionError, match=r"camera 'cam' is held by 2 of the 3 episodes .*--filter"):
        export(path, tmp_path / "a.zarr")
    report = export(path, tmp_path / "a.zarr", filter="episode_id < 2")
    assert len(report.warnings) == 1 and "'x' is held by 1 of the 2 episodes" in report.warnings[0]
    assert "x" not in zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["data"]


def test_names_that_clash_get_an_underscore_and_come_back(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, image_codec="png") as w:
        for T in (3, 4):
            w.add_episode(actions=np.ones((T, 2), np.float32), states=np.zeros((T, 1)),
                          images={"reward": np.full((T, 4, 4, 3), 9, np.uint8)},
                          extra_arrays={"done": np.arange(T, dtype=np.int32), "state": np.ones((T, 3))})  # fmt: skip
    export(path, tmp_path / "c.zarr")
    data = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["data"]
    assert sorted(data.array_keys()) == ["action", "done", "done_", "reward", "reward_", "state", "state_"]
    ingest(tmp_path / "c.zarr", tmp_path / "back.kdb", image_codec="png")
    assert_same_file(path, tmp_path / "back.kdb")


def test_the_command_line_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path / "src.kdb")
    out = tmp_path / "pick.zarr"
    assert main(["export", str(src), "-o", str(out)]) == 0
    assert "zarr" in capsys.readouterr().out
    assert main(["export", str(src), "-o", str(out), "--filter", "success = true"]) != 0
    assert "earlier kinodb zarr export" in capsys.readouterr().err
    assert main(["export", str(src), "-o", str(out), "--filter", "success = true", "--force"]) == 0
    assert zarr.open_group(str(out), mode="r")["meta/episode_ends"][:].tolist() == [17, 36]
    (out / "NOTES.md").write_text("mine")
    assert main(["export", str(src), "-o", str(out), "--force"]) != 0
    assert "NOTES.md" in capsys.readouterr().err
    zipped = tmp_path / "pick.zarr.zip"
    assert main(["export", str(src), "-o", str(zipped)]) == 0
    assert main(["export", str(src), "-o", str(zipped), "--force", "--filter", "success = false"]) == 0
    with zipfile.ZipFile(zipped) as zf:
        assert "meta/episode_ends/0" in zf.namelist()
    other = tmp_path / "other.zip"
    other.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive of someone's
    assert main(["export", str(src), "-o", str(other), "--format", "zarr", "--force"]) != 0
    assert "not an earlier kinodb" in capsys.readouterr().err


@pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"needs the Bridge sample at {BRIDGE}")
def test_the_bridge_sample_survives_export_and_ingest(tmp_path: Path) -> None:
    src = tmp_path / "bridge.kdb"
    ingest(BRIDGE, src)
    export(src, tmp_path / "bridge.zarr")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "bridge.zarr", back, image_codec="png")
    assert_same_file(src, back)  # JPEG frames as kinodb decodes them, pixel for pixel


def test_meta_fields_of_wide_whole_numbers_and_odd_names(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path) as w:
        for k, T in enumerate((3, 2)):
            w.add_episode(actions=np.zeros((T, 2), np.float32), states=np.zeros((T, 1)),
                          extra={"meta.uid": 2**63 + k, "meta.big": -(2**63) - 1 + k, "meta.episode_ends": k,
                                 "meta..zarray": 1.5})  # fmt: skip
    report = export(path, tmp_path / "m.zarr")
    assert sorted(w.split("'")[1] for w in report.warnings) == ["meta..zarray", "meta.big"]
    meta = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["meta"]
    assert sorted(meta.array_keys()) == ["episode_ends", "episode_ends_", "uid"]
    assert meta["episode_ends"][:].tolist() == [3, 5] and meta["episode_ends_"][:].tolist() == [0, 1]
    assert meta["uid"].dtype == np.uint64 and meta["uid"][:].tolist() == [2**63, 2**63 + 1]
    ingest(tmp_path / "m.zarr", tmp_path / "back.kdb")
    assert_same_file(path, tmp_path / "back.kdb")


def test_state_keys_or_action_key_of_others_get_no_recorded_names(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, schema={"states": {"components": {"pos": [0, 2], "vel": [2, 4]}},
                                     "actions": {"names": ["grip", "arm"]}}) as w:  # fmt: skip
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.array([[1, 1, 2, 2]] * 3, np.float32),
                      extra_arrays={"joint_vel": np.ones((3, 2), np.float32)})  # fmt: skip
    export(path, tmp_path / "x.zarr")
    ingest(tmp_path / "x.zarr", tmp_path / "a.kdb", state_keys=["vel", "pos"], action_key="joint_vel")
    with kinodb.open(tmp_path / "a.kdb") as db:
        assert db.read_episode(0)["states"][0].tolist() == [2, 2, 1, 1]
        assert db.schema()["states"]["components"] == {"vel": [0, 2], "pos": [2, 4]}
        assert "names" not in db.schema()["actions"]
    ingest(tmp_path / "x.zarr", tmp_path / "b.kdb")
    with kinodb.open(tmp_path / "b.kdb") as db:
        assert db.schema()["states"]["components"] == {"pos": [0, 2], "vel": [2, 4]}
        assert db.schema()["actions"]["names"] == ["grip", "arm"]


def test_a_renamed_component_verifies(tmp_path: Path) -> None:
    path = tmp_path / "src.kdb"
    with kinodb.Writer(path, schema={"states": {"components": {"reward": [0, 1], "pos": [1, 3]}}}) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.arange(9.0).reshape(3, 3))
    export(path, tmp_path / "x.zarr")
    assert "reward_" in zarr.open_group(str(tmp_path / "x.zarr"), mode="r")["data"]
    report = ingest(tmp_path / "x.zarr", tmp_path / "back.kdb", verify=True)
    assert report.verification is not None
    assert_same_file(path, tmp_path / "back.kdb")


def test_force_keeps_a_zipped_export_holding_a_users_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _source(tmp_path / "src.kdb")
    out = tmp_path / "k.zarr.zip"
    export(src, out)
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr("NOTES.md", "mine")
    assert main(["export", str(src), "-o", str(out), "--force"]) != 0
    assert "NOTES.md" in capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        assert "NOTES.md" in zf.namelist()


def test_a_zip_name_needs_the_zarr_format(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    with pytest.raises(ValueError, match=r"ends in \.zip.*format='zarr'"):
        export(src, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
    assert export(src, tmp_path / "out.zip", format="zarr").files == 1
