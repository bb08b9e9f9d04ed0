"""``ingest(export(x, format="numpy"))`` reproduces ``x``: the numpy export read back as a source."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.ingest import ingest
from kinodb.ingest.numpy_export import NumpyExportSource
from kinodb.merge import merge

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
PROVENANCE = ("source_file", "source_episode", "origin_file", "origin_episode")
SCHEMA = {
    "states": {"components": {"joint_pos": [0, 3], "gripper": [3, 5]}},
    "actions": {"names": ["dx", "dy", "dz", "grip"]},
}


def _source(path: Path, rng: np.random.Generator) -> Path:
    """Four episodes: JPEG, PNG and raw cameras (a grey one too), extra arrays of several
    dtypes, timestamps, extra fields, an unknown success and an unknown total reward."""
    with kinodb.Writer(
        path, image_codec="raw", schema=SCHEMA, metadata={"robot": "panda", "site": {"lab": 3}}
    ) as w:
        for i in range(4):
            T = 5 + 3 * i
            w.add_episode(
                actions=rng.normal(size=(T, 4)).astype(np.float32),
                states=rng.normal(size=(T, 5)),  # float64 stays float64
                rewards=None if i == 3 else rng.uniform(size=T).astype(np.float32),  # None: zeros, total unknown
                is_terminal=np.arange(T) == T - 1,
                timestamps=np.arange(T) / 15.0,
                images={"front": [encode_image(f, "JPEG", quality=90) for f in smooth_frames(rng, (T, 12, 10, 3))],
                        "wrist": [encode_image(f, "PNG") for f in rng.integers(0, 255, (T, 8, 6, 1), dtype=np.uint8)],
                        "depth": rng.integers(0, 255, (T, 4, 4, 1), dtype=np.uint8)},
                extra_arrays={"sim_state": rng.normal(size=(T, 9)), "lang_emb": np.full((T, 2), i, np.float16),
                              "contacts": rng.integers(0, 4, (T, 3)).astype(np.int64)},
                embodiment="panda" if i != 2 else "", task=f"stack block {i}", fps=15.0,
                success=[True, False, None, True][i],
                extra={"operator": f"op{i}", "tags": ["a", str(i)], "task": "kept apart"},
            )  # fmt: skip
    return path


def _user_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in PROVENANCE}


def _assert_same(a: Path, b: Path) -> None:
    """Arrays bit for bit, encoded frames byte for byte, raw frames pixel for pixel, metadata equal."""
    with kinodb.open(a) as da, kinodb.open(b) as db:
        assert len(da) == len(db)
        for i in range(len(da)):
            x, y = da.read_episode(i), db.read_episode(i)
            assert _user_meta(x.pop("meta")) == _user_meta(y.pop("meta")), i
            images_x, images_y = x.pop("images"), y.pop("images")
            assert set(x) == set(y), i
            for name in x:
                assert (x[name].dtype, x[name].shape) == (y[name].dtype, y[name].shape), name
                assert x[name].tobytes() == y[name].tobytes(), name
            assert set(images_x) == set(images_y)
            for cam, info in da.cameras(i).items():
                assert db.cameras(i)[cam]["codec"] == info["codec"], cam
                assert np.array_equal(images_x[cam], images_y[cam]), cam
                if info["codec"] != "raw":
                    for t in range(info["shape"][0]):
                        assert da.read_image_bytes(i, cam, t) == db.read_image_bytes(i, cam, t), (cam, t)


def _export(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "npy"
    export(src, out, format="numpy")
    return out


def test_an_export_comes_back_exactly(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(0))
    back = tmp_path / "back.kdb"
    report = ingest(_export(src, tmp_path), back, image_codec="raw", verify=True)
    assert report.format == "numpy" and report.episodes == 4 and report.verification.ok
    _assert_same(src, back)
    with kinodb.open(src) as da, kinodb.open(back) as db:
        for part in ("states", "actions"):
            got, want = db.schema()[part], da.schema()[part]
            assert {k: got.get(k) for k in ("names", "components")} == {
                k: want.get(k) for k in ("names", "components")
            }
        meta = db.dataset_info()["metadata"]
        assert meta["robot"] == "panda" and meta["site"] == {"lab": 3}
        assert meta["numpy"]["export"]["format"] == "numpy" and meta["numpy"]["export"]["episodes"] == 4
        assert meta["ingest"]["format"] == "numpy"
        assert db.read_meta(3)["total_reward"] is None and db.read_meta(2)["success"] is None
        assert db.read_meta(2)["embodiment"] == ""
        assert db.read_meta(0)["extra.task"] == "kept apart"  # an extra field named like a built-in


def test_provenance_moves_to_origin_and_the_ingest_names_the_export(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(1))
    merged = tmp_path / "merged.kdb"
    merge([src], merged)  # source_file/source_episode name src.kdb
    npy = tmp_path / "npy"
    export(merged, npy, format="numpy")
    back = tmp_path / "back.kdb"
    ingest(npy, back, image_codec="raw")
    with kinodb.open(merged) as dm, kinodb.open(back) as db:
        for i in range(len(db)):
            was, now = dm.read_meta(i), db.read_meta(i)
            assert now["origin_file"] == was["source_file"] and now["origin_episode"] == was["source_episode"]
            assert now["source_file"] == str(npy) and now["source_episode"] == f"episode_{i:06d}"


def test_selected_episodes_and_two_workers(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(2))
    npy = _export(src, tmp_path)
    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    ingest(npy, one, image_codec="raw", episodes="1-3")
    ingest(npy, two, image_codec="raw", episodes="1-3", workers=2)
    _assert_same(one, two)
    with kinodb.open(one) as db:
        assert [db.read_meta(i)["task"] for i in range(len(db))] == [
            "stack block 1",
            "stack block 2",
            "stack block 3",
        ]


def test_the_command_line_detects_the_export(tmp_path: Path) -> None:
    from kinodb._cli.main import main

    src = _source(tmp_path / "src.kdb", np.random.default_rng(3))
    npy = _export(src, tmp_path)
    back = tmp_path / "back.kdb"
    assert main(["ingest", str(npy), "-o", str(back), "--image-codec", "raw", "-q", "--verify"]) == 0
    _assert_same(src, back)


@pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"the Bridge sample is not at {BRIDGE} (../shared/samples)")
def test_the_bridge_sample_survives_ingest_export_ingest(tmp_path: Path) -> None:
    first = tmp_path / "bridge.kdb"
    ingest(BRIDGE, first)
    back = tmp_path / "back.kdb"
    report = ingest(_export(first, tmp_path), back, verify=True)  # default codec: JPEG frames pass through
    assert report.verification.ok and report.frames == 250
    _assert_same(first, back)


# -- what is refused, and how ---------------------------------------------------------------


def _damage(npy: Path) -> None:
    """Three damaged episodes: a truncated array, a missing frame, an array of another dtype."""
    raw = (npy / "episode_000001" / "actions.npy").read_bytes()
    (npy / "episode_000001" / "actions.npy").write_bytes(raw[:100])
    os.remove(npy / "episode_000002" / "images" / "front" / "000003.jpg")
    states = npy / "episode_000003" / "states.npy"
    np.save(states, np.load(states).astype(np.float32))


def test_a_damaged_episode_stops_the_ingest_naming_the_file(tmp_path: Path) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(4)), tmp_path)
    _damage(npy)
    out = tmp_path / "out.kdb"
    with pytest.raises(
        ConversionError, match=r"episode_000001.actions\.npy: not a readable \.npy array.*on_error='skip'"
    ):
        ingest(npy, out)
    assert not out.exists()


def test_damaged_episodes_are_skipped_with_their_reasons(tmp_path: Path) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(5)), tmp_path)
    _damage(npy)
    out = tmp_path / "out.kdb"
    report = ingest(npy, out, on_error="skip", image_codec="raw")
    reasons = dict(report.skipped)
    assert list(reasons) == ["episode_000001", "episode_000002", "episode_000003"]
    assert "frame 3 of camera 'front' cannot be read" in reasons["episode_000002"]
    assert (
        "holds float32 (14, 5)" in reasons["episode_000003"]
        and "says float64 (14, 5)" in reasons["episode_000003"]
    )
    with kinodb.open(out) as db:
        assert len(db) == 1 and db.read_meta(0)["task"] == "stack block 0"
        assert [s["episode"] for s in db.dataset_info()["metadata"]["ingest"]["skipped"]] == list(reasons)


def test_a_meta_json_of_the_wrong_types_is_named(tmp_path: Path) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(6)), tmp_path)
    path = npy / "episode_000000" / "meta.json"
    record = json.loads(path.read_text())
    record["meta"]["success"] = "yes"
    path.write_text(json.dumps(record))
    with pytest.raises(
        ConversionError, match=r"episode_000000.meta\.json: meta\.success is \"yes\"; expected true"
    ):
        ingest(npy, tmp_path / "out.kdb")


def test_a_broken_index_is_named(tmp_path: Path) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(7)), tmp_path)
    (npy / "episodes.json").write_text('{"episodes": [{"dir": "../elsewhere"}]}')
    with pytest.raises(ConversionError, match=r"episodes\.json: episodes\[0\] names no episode folder"):
        ingest(npy, tmp_path / "out.kdb")


def test_a_json_export_or_a_part_of_an_export_is_named(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb", np.random.default_rng(8))
    export(src, tmp_path / "meta_only", format="json")
    with pytest.raises(ConversionError, match=r"a kinodb JSON export .* metadata only"):
        ingest(tmp_path / "meta_only", tmp_path / "out.kdb")
    npy = _export(src, tmp_path)
    for part in (npy / "episode_000000", npy / "episode_000000" / "actions.npy"):
        with pytest.raises(ConversionError, match=r"part of a kinodb numpy export; pass the export's folder"):
            ingest(part, tmp_path / "out.kdb")
    with pytest.raises(ConversionError, match=r"not a numpy export .*already a kinodb \.kdb file"):
        ingest(src, tmp_path / "out.kdb", format="numpy")


@pytest.mark.parametrize("option", [{"state_keys": "a,b"}, {"flip_images": True}, {"split": "train"}])
def test_options_that_do_not_apply_are_refused(tmp_path: Path, option: dict[str, Any]) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(9)), tmp_path)
    with pytest.raises(ValueError, match="is read as numpy, whose converter takes no"):
        ingest(npy, tmp_path / "out.kdb", **option)


def test_without_images_no_frame_is_read(tmp_path: Path) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(10)), tmp_path)
    shutil.rmtree(npy / "episode_000000" / "images")  # not read at all
    out = tmp_path / "out.kdb"
    ingest(npy, out, images=False)
    with kinodb.open(out) as db:
        assert len(db) == 4 and db.cameras(0) == {}


def test_the_source_pickles_by_path(tmp_path: Path) -> None:
    import pickle

    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(11)), tmp_path)
    source = NumpyExportSource(str(npy))
    copy = pickle.loads(pickle.dumps(source))
    assert copy.episodes() == source.episodes() == [f"episode_{i:06d}" for i in range(4)]


@pytest.mark.parametrize("fmt", ["numpy", "hdf5", "lerobot"])
def test_an_unknown_total_reward_beside_rewards_stays_unknown(tmp_path: Path, fmt: str) -> None:
    """`kino upgrade` and `kino merge` keep a format 0.1 file's unknown total beside its
    rewards; an export and ingest keep it unknown rather than summing the rewards."""
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    if fmt == "lerobot":
        pytest.importorskip("pyarrow")
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src) as w:
        for total in (None, 2.5):
            w._add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 2), np.float32),
                           rewards=np.array([0.0, 1.0, 0.5], np.float32), total_reward=total, fps=10.0,
                           sum_rewards=False)  # fmt: skip
    out = tmp_path / ("x.hdf5" if fmt == "hdf5" else "x")
    export(src, out, format=fmt)
    back = tmp_path / "back.kdb"
    report = ingest(out, back, verify=True)
    assert report.verification.ok
    with kinodb.open(back) as db:
        assert [db.read_meta(i)["total_reward"] for i in range(2)] == [None, 2.5]
        assert db.read_array(0, "rewards").tolist() == [0.0, 1.0, 0.5]


def _edit_meta(npy: Path, episode: int, edit: Any) -> None:
    path = npy / f"episode_{episode:06d}" / "meta.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_a_non_finite_total_the_export_spelled_out_is_stored_as_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(12)), tmp_path)
    _edit_meta(npy, 1, lambda r: r["meta"].update(total_reward="NaN"))  # as a 0.1 file's NaN total is written
    out = tmp_path / "out.kdb"
    ingest(npy, out, image_codec="raw")
    with kinodb.open(out) as db:
        assert db.read_meta(1)["total_reward"] is None
    assert "total_reward NaN is not a number kinodb stores; it is stored as null" in caplog.text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["cameras"]["depth"].update(file="../../outside.npy"), r"cameras\.depth\.file is .*no '\.\.'"),
        (lambda r: r["cameras"]["depth"].update(file="/etc/hostname"), r"cameras\.depth\.file is .*no absolute"),
        (lambda r: r["cameras"]["front"].update(frames="/tmp/one.jpg"), r"cameras\.front\.frames is .*one field is \{frame\}"),
        (lambda r: r["cameras"]["front"].update(frames="images/front/{frame:06d}{x}.jpg"), r"cameras\.front\.frames is .*one field is \{frame\}"),
        (lambda r: r["cameras"]["front"].update(frames="../{frame:06d}.jpg"), r"cameras\.front\.frames is .*no '\.\.'"),
        (lambda r: r["meta"].update(total_reward=10**400), r"meta\.total_reward 1000.* is too large for a float"),
    ],
)  # fmt: skip
def test_a_meta_json_that_points_outside_or_does_not_parse_is_named(
    tmp_path: Path, edit: Any, message: str
) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(13)), tmp_path)
    _edit_meta(npy, 0, edit)
    with pytest.raises(ConversionError, match=r"episode_000000.meta\.json: " + message):
        ingest(npy, tmp_path / "out.kdb")
    assert not (tmp_path / "out.kdb").exists()


@pytest.mark.parametrize(
    ("entries", "message"),
    [([{"dir": ".."}], r"episodes\[0\] names no episode folder"),
     ([{"dir": "episode_000000"}, {"dir": "episode_000000"}], r"episodes\[1\] names the folder 'episode_000000' again")],
)  # fmt: skip
def test_an_index_that_leaves_the_export_or_repeats_a_folder_is_named(
    tmp_path: Path, entries: list[dict[str, str]], message: str
) -> None:
    npy = _export(_source(tmp_path / "src.kdb", np.random.default_rng(14)), tmp_path)
    (npy / "episodes.json").write_text(json.dumps({"episodes": entries}))
    with pytest.raises(ConversionError, match=message):
        ingest(npy, tmp_path / "out.kdb")


def test_a_hand_trimmed_meta_json_and_the_files_own_numpy_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src, metadata={"numpy": {"version": "2.1"}}) as w:
        for _ in range(2):
            w.add_episode(actions=np.ones((3, 2), np.float32))
    npy = _export(src, tmp_path)
    _edit_meta(npy, 1, lambda r: (r.pop("cameras"), r["meta"].update(episode_id=100)))  # as a 0.1 file's id
    out = tmp_path / "out.kdb"
    ingest(npy, out)
    with kinodb.open(out) as db:
        assert (
            db.dataset_info()["metadata"]["numpy"]["version"] == "2.1"
        )  # the file's own key keeps its value
        assert db.dataset_info()["metadata"]["numpy"]["export"]["episodes"] == 2
        assert "source_episode_id" not in db.read_meta(0) and db.read_meta(1)["source_episode_id"] == 100
