"""Physical merge: byte-for-byte payload copies, provenance, schemas, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, encoded_frames, random_episode
from kinodb._cli.main import main
from kinodb.synthetic import create_test


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    create_test(a, 6, 8, images=True, compress=85, seed=1)
    create_test(b, 4, 5, images=True, seed=2)  # raw frames
    return [a, b]


def _payload(db: kinodb.Database, i: int) -> bytes:
    off, n = int(db._cols["payload_offset"][i]), int(db._cols["payload_length"][i])
    return db._map()[off : off + n].tobytes()


def test_payloads_are_copied_byte_for_byte(sources: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    result = kinodb.merge(sources, out)
    assert (result.episodes, result.frames) == (10, 6 * 8 + 4 * 5)
    assert result.warnings == []
    with kinodb.open(out) as m, kinodb.open(sources[0]) as a, kinodb.open(sources[1]) as b:
        assert len(m) == 10
        for j, (src, i) in enumerate([(a, i) for i in range(6)] + [(b, i) for i in range(4)]):
            assert _payload(m, j) == _payload(src, i)
            meta, want = m.read_meta(j), src.read_meta(i)
            assert meta["source_file"] == src.path() and meta["source_episode"] == i
            assert meta["episode_id"] == j
            for key in ("embodiment", "task", "success", "total_reward", "num_frames", "fps", "scene"):
                assert meta[key] == want[key]
            got, exp = m.read_episode(j), src.read_episode(i)
            for name in ("actions", "states", "rewards", "is_terminal", "timestamps"):
                np.testing.assert_array_equal(got[name], exp[name])
            for cam in ("front", "wrist"):
                np.testing.assert_array_equal(got["images"][cam], exp["images"][cam])
        assert m.read_image_bytes(2, "front", 3) == a.read_image_bytes(2, "front", 3)  # same JPEG
        schema = m.schema()
        assert schema["states"]["components"]["eef_pos"] == [7, 10]  # shared by both inputs
        assert [s["episodes"] for s in schema["sources"]] == [6, 4]
        assert schema["cameras"]["front"]["codec"] is None  # jpeg in one source, raw in the other
        assert m.dataset_info()["source_format"] == "kinodb-merge"
    assert main(["validate", str(out)]) == 0


def test_different_schemas_merge_with_a_warning(
    sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small.kdb"
    with kinodb.Writer(small, schema={"states": {"components": {"qpos": [0, 2]}}}) as w:
        w.add_episode(
            actions=np.ones((3, 2), np.float64), states=np.zeros((3, 2), np.float32), embodiment="so100"
        )
    out = tmp_path / "mixed.kdb"
    assert main(["merge", str(sources[0]), str(small), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "action_dim differs" in captured.err and "state_dim differs" in captured.err
    assert "camera 'front' differs between inputs (a.kdb: 64x64x3, small.kdb: absent)" in captured.err
    assert "wrote 7 episodes" in captured.out
    with kinodb.open(out) as m:
        assert m.read_array(6, "actions").dtype == np.float64
        assert m.read_meta(6)["action_dim"] == 2 and m.read_meta(0)["action_dim"] == 7
        schema = m.schema()
        assert "components" not in schema["states"]  # the inputs disagree: kept per source
        assert schema["sources"][1]["schema"]["states"]["components"] == {"qpos": [0, 2]}
        assert schema["actions"]["dim"] is None


def test_legacy_inputs_are_converted(sources: list[Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ep = random_episode(rng, 5, 14, 7, embodiment="widowx", task="wipe", success=2)
    ep.images = {"front": encoded_frames(rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8))}
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([ep]))
    out = tmp_path / "out.kdb"
    kinodb.merge([old, sources[1]], out)
    with kinodb.open(out) as m, kinodb.open(old) as o:
        assert len(m) == 5 and m.version() == "1.0"
        assert m.read_image_bytes(0, "front", 2) == o.read_image_bytes(0, "front", 2)
        np.testing.assert_array_equal(m.read_array(0, "states"), o.read_array(0, "states"))
        assert m.read_meta(0)["source_file"] == str(old)


def _damage_payload(path: Path, episode: int) -> None:
    """Flip one byte inside ``episode``'s payload (its checksum then fails)."""
    with kinodb.open(path) as db:
        off = int(db._cols["payload_offset"][episode]) + 10
    raw = bytearray(path.read_bytes())
    raw[off] ^= 0x55
    path.write_bytes(bytes(raw))


def test_corrupt_source_payload_stops_the_merge(sources: list[Path], tmp_path: Path) -> None:
    _damage_payload(sources[1], episode=2)
    out = tmp_path / "out.kdb"
    with pytest.raises(kinodb.CorruptFileError, match="episode 2: payload checksum"):
        kinodb.merge(sources, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_output_rules(sources: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    kinodb.merge(sources[:1], out)
    with pytest.raises(FileExistsError):
        kinodb.merge(sources, out)
    assert main(["merge", *map(str, sources), "-o", str(out)]) == 1
    kinodb.merge(sources, out, overwrite=True)
    with kinodb.open(out) as m:
        assert len(m) == 10
    # merging into one of the inputs is safe: the output replaces it only when complete
    kinodb.merge([out, sources[1]], out, overwrite=True)
    with kinodb.open(out) as m:
        assert len(m) == 14
    with pytest.raises(FileNotFoundError):
        kinodb.merge([tmp_path / "missing.kdb"], tmp_path / "x.kdb")
    with pytest.raises(ValueError, match="at least one input"):
        kinodb.merge([], tmp_path / "x.kdb")


def test_extra_fields_named_with_the_prefix_survive_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of an earlier writer may hold both ``x`` and ``extra.x``: a merge keeps both."""
    import kinodb.kdb._checks as checks_module

    src = tmp_path / "old.kdb"
    fields = {"extra.x": 1, "x": 2, "success": "s", "extra.success": "e"}
    with monkeypatch.context() as m:
        m.setattr(checks_module, "check_extra_name", lambda key: None)
        with kinodb.Writer(src) as w:
            w.add_episode(actions=np.zeros((2, 1), np.float32), extra=fields)
    out = tmp_path / "out.kdb"
    kinodb.merge([src], out, filter="extra.extra.success = 'e'")
    with kinodb.open(src) as a, kinodb.open(out) as m:
        assert m._extra_fields(0) == {**fields, "source_file": str(src), "source_episode": 0}
        meta = m.read_meta(0)
        assert {k: meta[k] for k in a.read_meta(0) if k != "episode_id"} == {
            k: v for k, v in a.read_meta(0).items() if k != "episode_id"
        }


def test_legacy_camera_stored_raw_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    jpeg = encoded_frames(frames, "JPEG", 90)
    from _legacy_encoder import raw_frames

    ep = random_episode(rng, 3, 1, 1)
    ep.images = {"cam": [jpeg[0], raw_frames(frames)[1], jpeg[2]]}
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([ep]))
    result = kinodb.merge([old], tmp_path / "out.kdb")
    assert any("camera 'cam'" in w and "stored raw" in w for w in result.warnings), result.warnings


def test_metadata_and_first_origins_survive_merges(tmp_path: Path) -> None:
    a, b, ab, again = (tmp_path / f"{n}.kdb" for n in ("a", "b", "ab", "again"))
    for path, size, meta in ((a, 8, {"robot": "franka", "site": "lab"}), (b, 16, {"robot": "franka"})):
        with kinodb.Writer(path, metadata=meta) as w:
            w.add_episode(
                actions=np.zeros((2, 3), np.float32),
                images={"front": np.zeros((2, size, size, 3), np.uint8)},
                extra_arrays={"lang": np.zeros((2, 4 if size == 8 else 5), np.float32)},
                extra={"source_file": f"/data/{path.stem}.hdf5", "source_episode": "demo_0"},
            )
    result = kinodb.merge([a, b], ab)
    assert result.warnings == [
        "camera 'front' differs between inputs (a.kdb: 8x8x3, b.kdb: 16x16x3); "
        "batches need image_size=(H, W) to resize them alike",
        "extra array 'lang' differs between inputs (a.kdb: float32 (4,), b.kdb: float32 (5,)); "
        "readers must handle per-episode shapes",
    ]
    kinodb.merge([ab], again, filter="num_frames > 0")
    with kinodb.open(ab) as m, kinodb.open(again) as m2:
        assert m.metadata()["robot"] == "franka" and "site" not in m.metadata()  # only what all agree on
        assert [s["metadata"] for s in m.metadata()["merged_from"]] == [
            {"robot": "franka", "site": "lab"},
            {"robot": "franka"},
        ]
        assert m2.metadata()["robot"] == "franka"
        (inner,) = m2.metadata()["merged_from"]  # one level: the earlier inputs by name only
        assert inner["metadata"]["merged_from"] == [
            {"file": str(a), "episodes": 1, "of": 1},
            {"file": str(b), "episodes": 1, "of": 1},
        ]
        for i, stem in enumerate("ab"):
            meta = m2.read_meta(i)
            assert (meta["source_file"], meta["source_episode"]) == (str(ab), i)
            assert (meta["origin_file"], meta["origin_episode"]) == (f"/data/{stem}.hdf5", "demo_0")
    with pytest.raises(TypeError, match=r"a list of paths, not one path: merge\(\['"):
        kinodb.merge(str(a), tmp_path / "x.kdb")  # type: ignore[arg-type]


# -- format 0.1 inputs: stored bytes kept, raw frames exact, errors that say where -----------


def _legacy_cameras(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A 0.1 file of two episodes whose cameras are JPEG, raw with 1 to 4 channels, and one
    mixing raw and JPEG frames; also the frames the 0.1 reader returns for episode 0."""
    from _legacy_encoder import raw_frames

    rng = np.random.default_rng(11)
    eps = []
    for _ in range(2):
        ep = random_episode(rng, 4, 3, 2)
        rgb = rng.integers(0, 256, (4, 8, 10, 3), dtype=np.uint8)
        ep.images = {
            "jpeg": encoded_frames(rgb, "JPEG", 90),
            **{
                f"raw{c}": raw_frames(rng.integers(0, 256, (4, 8, 10, c), dtype=np.uint8))
                for c in (1, 2, 3, 4)
            },
            "mixed": [*encoded_frames(rgb[:2], "JPEG", 90), *raw_frames(rgb[2:])],
        }
        eps.append(ep)
    old = tmp_path / "old.kdb"
    old.write_bytes(encode(eps))
    with kinodb.open(old) as db:
        frames = {name: np.array(v) for name, v in db.read_episode(0)["images"].items()}
    return old, frames


def test_legacy_raw_cameras_stay_raw_and_exact(tmp_path: Path) -> None:
    old, frames = _legacy_cameras(tmp_path)
    out = tmp_path / "out.kdb"
    result = kinodb.merge([old], out)  # the writer's default codec (JPEG) must not apply
    with kinodb.open(out) as m, kinodb.open(old) as o:
        cams = m.cameras(0)
        assert {name: cams[name]["codec"] for name in cams} == {
            "jpeg": "jpeg", "raw1": "raw", "raw2": "raw", "raw3": "raw", "raw4": "raw", "mixed": "raw",
        }  # fmt: skip
        got = m.read_episode(0)["images"]
        for name, want in frames.items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        for t in range(4):
            assert m.read_image_bytes(1, "jpeg", t) == o.read_image_bytes(1, "jpeg", t)
    # the warning says what happened to the camera that could not keep its bytes, and only that
    assert [w for w in result.warnings if "stored raw" in w] == [
        f"{old}: episode {i}, camera 'mixed' stored raw (decoded, larger): its frames mix raw and "
        "encoded ones (or JPEG and PNG)"
        for i in range(2)
    ]


def test_the_documented_merge_of_a_0_1_file_equals_its_upgrade(tmp_path: Path) -> None:
    """``kino merge OLD -o NEW -F "num_frames > 0"`` (what upgrade suggests) is lossless."""
    from kinodb.kdb.upgrade import upgrade

    old, _ = _legacy_cameras(tmp_path)
    with kinodb.open(old) as db:
        eps = [db.read_episode(i) for i in range(len(db))]
    merged, upgraded = tmp_path / "merged.kdb", tmp_path / "upgraded.kdb"
    assert main(["merge", str(old), "-o", str(merged), "-F", "num_frames > 0"]) == 0
    with pytest.warns(UserWarning, match="camera 'mixed' stored raw"):
        upgrade(old, upgraded)
    with kinodb.open(merged) as m, kinodb.open(upgraded) as u:
        assert len(m) == len(u) == len(eps)
        for i, ep in enumerate(eps):
            assert m.cameras(i) == u.cameras(i)
            got, exp = m.read_episode(i), u.read_episode(i)
            for name in ("actions", "states", "rewards", "is_terminal"):
                np.testing.assert_array_equal(got[name], ep[name])
                np.testing.assert_array_equal(got[name], exp[name])
            for cam, want in ep["images"].items():
                np.testing.assert_array_equal(got["images"][cam], want)
            assert [m.read_image_bytes(i, "jpeg", t) for t in range(4)] == [
                u.read_image_bytes(i, "jpeg", t) for t in range(4)
            ]


@pytest.mark.parametrize(
    ("bad", "filter", "suggested"),
    [
        ({"num_frames": 0}, None, "num_frames > 0"),
        ({"fps": float("nan")}, None, "fps > 0"),
        ({"fps": -5.0}, "num_frames > 1", "(num_frames > 1) AND fps > 0"),
    ],
)
def test_a_legacy_episode_that_cannot_be_stored_is_named_with_the_fix(
    tmp_path: Path, bad: dict[str, float], filter: str | None, suggested: str
) -> None:
    import shlex

    rng = np.random.default_rng(5)
    frames = int(bad.get("num_frames", 3))
    meta = {k: v for k, v in bad.items() if k == "fps"}
    eps = [
        random_episode(rng, 3, 2, 2),
        random_episode(rng, frames, 2, 2, **meta),
        random_episode(rng, 2, 2, 2),
    ]
    old, out = tmp_path / "old.kdb", tmp_path / "out.kdb"
    old.write_bytes(encode(eps))
    with pytest.raises(kinodb.ConversionError) as info:
        kinodb.merge([old], out, filter=filter)
    message = str(info.value)
    assert message.startswith(f"{old}: episode 1 cannot be stored as v1: ")
    assert f"merge with -F {shlex.quote(suggested)}" in message or f'merge with -F "{suggested}"' in message
    assert f"(Python: filter={suggested!r})" in message
    assert "rerun with --on-error skip (Python: on_error='skip')" in message
    assert not out.exists()
    # the suggested filter works, and so does skipping
    result = kinodb.merge([old], out, filter=suggested)
    assert result.episodes == 2 and result.inputs[0].skipped == ()
    skipped = kinodb.merge([old], out, filter=filter, overwrite=True, on_error="skip")
    assert (skipped.episodes, skipped.inputs[0].skipped) == (2, (1,))
    assert any(w.startswith(f"{old}: 1 episode skipped") and "episode 1: " in w for w in skipped.warnings)
    with kinodb.open(out) as m:
        (entry,) = m.metadata()["merged_from"]
        assert entry["episodes"] == 2 and [s["episode"] for s in entry["skipped"]] == [1]
        assert m.schema()["sources"][0]["episodes"] == 2
        np.testing.assert_array_equal(m.read_array(1, "actions"), eps[2].actions)


def test_cli_on_error_skip_and_the_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(6)
    old, out = tmp_path / "old.kdb", tmp_path / "out.kdb"
    old.write_bytes(encode([random_episode(rng, 0, 2, 2), random_episode(rng, 0, 2, 2)]))
    assert main(["merge", str(old), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {old}: episode 0 cannot be stored as v1: it has 0 frames")
    assert err.count("\n") == 1
    assert main(["merge", str(old), "-o", str(out), "--on-error", "skip"]) == 1  # nothing left to write
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: every one of the 2 matching episodes was skipped, so nothing was written: {old}: episode 0: "
    )
    assert "; episode 1: " in err and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        kinodb.merge([old], out, on_error="ignore")


def test_a_damaged_v1_payload_can_be_skipped(sources: list[Path], tmp_path: Path) -> None:
    _damage_payload(sources[1], episode=2)
    out = tmp_path / "out.kdb"
    with pytest.raises(kinodb.CorruptFileError, match=r"episode 2: payload checksum .*--on-error skip"):
        kinodb.merge(sources, out)
    result = kinodb.merge(sources, out, on_error="skip")
    assert [(i.kept, i.skipped) for i in result.inputs] == [(6, ()), (3, (2,))]
    assert main(["validate", str(out)]) == 0


# -- what a merge decides from its inputs ---------------------------------------------------------


def test_shared_components_come_from_contributing_inputs_only(tmp_path: Path) -> None:
    franka, widowx, out = tmp_path / "franka.kdb", tmp_path / "widowx.kdb", tmp_path / "out.kdb"
    comps = {"states": {"components": {"eef": [0, 3], "grip": [3, 5]}}}
    with kinodb.Writer(franka, schema=comps, metadata={"robot": "franka"}) as w:
        w.add_episode(
            actions=np.zeros((4, 7), np.float32), states=np.zeros((4, 5), np.float32), embodiment="franka"
        )
    with kinodb.Writer(widowx, metadata={"robot": "widowx"}) as w:
        w.add_episode(
            actions=np.zeros((4, 6), np.float32), states=np.zeros((4, 9), np.float32), embodiment="widowx"
        )
    result = kinodb.merge([franka, widowx], out, filter="embodiment = 'franka'")
    assert [i.kept for i in result.inputs] == [1, 0]
    with kinodb.open(out) as m:
        assert m.metadata()["robot"] == "franka"
        assert m.schema()["states"]["components"] == {"eef": [0, 3], "grip": [3, 5]}
    kinodb.merge([franka, widowx], out, overwrite=True)  # both contribute: they disagree
    with kinodb.open(out) as m:
        assert "components" not in m.schema()["states"]


def test_stored_paths_are_absolute(
    sources: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = kinodb.merge(["a.kdb", "./b.kdb"], "out.kdb")
    assert [i.path for i in result.inputs] == ["a.kdb", "./b.kdb"]  # as given, for the report
    with kinodb.open(tmp_path / "out.kdb") as m:
        assert m.read_meta(0)["source_file"] == str(tmp_path / "a.kdb")
        assert m.read_meta(6)["source_file"] == str(tmp_path / "b.kdb")
        assert [e["file"] for e in m.metadata()["merged_from"]] == [str(sources[0]), str(sources[1])]
        assert [s["file"] for s in m.schema()["sources"]] == [str(sources[0]), str(sources[1])]


def test_a_file_given_twice_is_merged_twice_with_one_warning(
    sources: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = kinodb.merge(["a.kdb", "b.kdb", "./a.kdb"], "out.kdb")
    assert result.episodes == 16
    twice = [w for w in result.warnings if "a.kdb" in w]
    assert twice == [
        "a.kdb is an input 2 times (as ./a.kdb): each of its episodes is written 2 times; give it once "
        "unless that is meant"
    ]
    assert main(["merge", "b.kdb", "b.kdb", "b.kdb", "-o", "bbb.kdb"]) == 0
    err = capsys.readouterr().err
    assert (
        err.count("warning:") == 1
        and "b.kdb is an input 3 times: each of its episodes is written 3 times" in err
    )
    # an output that is also an input is replaced (not doubled): said once
    result = kinodb.merge(["out.kdb", "b.kdb"], "out.kdb", overwrite=True)
    assert result.episodes == 20
    assert result.warnings == ["the output out.kdb is also an input: the merged file replaces it"]
    assert kinodb.merge(["a.kdb", "b.kdb"], "c.kdb").warnings == []
