"""Mode ``"a"``: appends extend a file in place, keep old readers consistent, and lock."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import FormatError, WriterError
from kinodb.kdb._layout import SLOT_OFFSETS, parse_slot

CheckEpisode = Callable[[kinodb.Database, int, dict[str, Any]], None]


def generations(path: Path) -> list[int]:
    raw = path.read_bytes()
    return [c.generation if (c := parse_slot(raw[o : o + 64])) else 0 for o in SLOT_OFFSETS]


def test_append_adds_episodes_and_continues_ids(
    make_kdb: Any, make_episode: Any, assert_episode: CheckEpisode
) -> None:
    path, old = make_kdb(3, cameras={"cam": (4, 5, 3)})
    new = [make_episode(T=4 + k, cameras={"cam": (4, 5, 3)}, task="appended") for k in range(2)]
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        assert len(w) == 3
        assert [w.add_episode(**ep) for ep in new] == [3, 4]
    with kinodb.open(path) as db:
        assert len(db) == 5
        assert db.episodes()["episode_id"].tolist() == [0, 1, 2, 3, 4]
        assert db.num_frames() == sum(len(ep["actions"]) for ep in old + new)
        for i, ep in enumerate(old + new):
            assert_episode(db, i, ep)
    assert generations(path) == [1, 2]


def test_repeated_appends_alternate_commit_slots(
    make_kdb: Any, make_episode: Any, assert_episode: CheckEpisode
) -> None:
    path, eps = make_kdb(1)
    for round_ in range(4):
        ep = make_episode(T=2 + round_)
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(**ep)
        eps.append(ep)
        assert sorted(generations(path)) == [round_ + 1, round_ + 2]
    with kinodb.open(path) as db:
        assert len(db) == 5
        for i, ep in enumerate(eps):
            assert_episode(db, i, ep)


def test_append_merges_metadata_schema_and_extras(make_kdb: Any) -> None:
    first = [
        {"actions": np.zeros((2, 3)), "extra": {"scene": "lab", "attempt": 1}},
        {"actions": np.zeros((2, 3)), "extra": {"scene": "sim"}},
    ]
    path, _ = make_kdb(first, metadata={"robot": "franka", "rate": 10})
    with kinodb.Writer(path, mode="a", metadata={"rate": 15, "operator": "kim"}, source_format="hdf5") as w:
        w.add_episode(actions=np.zeros((3, 4)), extra={"attempt": 2.5, "camera_ok": True})
    with kinodb.open(path) as db:
        assert db.metadata() == {"robot": "franka", "rate": 15, "operator": "kim"}
        info = db.dataset_info()
        assert info["source_format"] == "hdf5" and "modified" in info and "created" in info
        assert db.schema()["actions"]["dim"] is None  # 3 then 4: varies
        assert db.read_meta(0)["attempt"] == 1 and db.read_meta(2)["attempt"] == 2.5
        assert "attempt" not in db.read_meta(1)
        assert db.read_meta(2)["camera_ok"] is True and "camera_ok" not in db.read_meta(0)
        assert "scene" not in db.read_meta(2)
        table = db.episodes()
        assert table["scene"].tolist() == ["lab", "sim", None]
        assert table["attempt"].tolist() == [1, None, 2.5]


def test_append_to_a_missing_file_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "new.kdb"
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.ones((2, 2)))
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.full((2, 2), 2.0))
    with kinodb.open(path) as db:
        assert [float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))] == [1.0, 2.0]


def test_append_without_episodes_keeps_the_content(make_kdb: Any, assert_episode: CheckEpisode) -> None:
    path, eps = make_kdb(2)
    with kinodb.Writer(path, mode="a"):
        pass
    with kinodb.open(path) as db:
        assert len(db) == 2
        for i, ep in enumerate(eps):
            assert_episode(db, i, ep)


def test_append_with_another_codec_keeps_old_frames(make_kdb: Any, make_episode: Any) -> None:
    path, old = make_kdb(1, cameras={"cam": (4, 4, 3)}, image_codec="raw")
    new = make_episode(T=3, cameras={"cam": (4, 4, 3)})
    with kinodb.Writer(path, mode="a", image_codec="png") as w:
        w.add_episode(**new)
    with kinodb.open(path) as db:
        assert db.cameras(0)["cam"]["codec"] == "raw" and db.cameras(1)["cam"]["codec"] == "png"
        assert db.schema()["cameras"]["cam"]["codec"] is None
        np.testing.assert_array_equal(db[0]["images"]["cam"], old[0]["images"]["cam"])
        np.testing.assert_array_equal(db[1]["images"]["cam"], new["images"]["cam"])


def test_reader_opened_before_an_append_keeps_its_snapshot(
    make_kdb: Any, make_episode: Any, assert_episode: CheckEpisode
) -> None:
    path, old = make_kdb(2, cameras={"cam": (3, 3, 1)})
    before = kinodb.open(path)
    actions = before.read_array(1, "actions")
    for round_ in range(2):
        with kinodb.Writer(path, mode="a", metadata={"round": round_}) as w:
            w.add_episode(**make_episode(T=30, cameras={"cam": (3, 3, 1)}))
        assert len(before) == 2 and before.num_frames() == sum(len(ep["actions"]) for ep in old)
        assert before.metadata() == {}
        for i, ep in enumerate(old):
            assert_episode(before, i, ep)
        np.testing.assert_array_equal(actions, old[1]["actions"])
        with pytest.raises(kinodb.EpisodeNotFoundError):
            before.read_episode(2)
    with kinodb.open(path) as after:
        assert len(after) == 4 and after.metadata() == {"round": 1}
    before.close()


def test_second_appender_gets_a_clear_error(make_kdb: Any) -> None:
    path, _ = make_kdb(1)
    with kinodb.Writer(path, mode="a") as first:
        first.add_episode(actions=np.zeros((2, 2)))
        with pytest.raises(
            WriterError,
            match=r"another writer is writing to this file \(in this process or another\); retry when it is done",
        ):
            kinodb.Writer(path, mode="a")
        first.add_episode(actions=np.zeros((2, 2)))
    with kinodb.Writer(path, mode="a") as second:  # free again once the first one committed
        second.add_episode(actions=np.zeros((2, 2)))
    with kinodb.open(path) as db:
        assert len(db) == 4


@pytest.mark.integration
def test_appender_in_another_process_holds_the_lock(make_kdb: Any) -> None:
    path, _ = make_kdb(1)
    script = textwrap.dedent(
        """
        import sys, numpy as np, kinodb
        with kinodb.Writer(sys.argv[1], mode="a") as w:
            w.add_episode(actions=np.zeros((2, 2)))
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(WriterError, match="another writer is writing"):
            kinodb.Writer(path, mode="a")
        with kinodb.open(path) as db:  # readers are never blocked
            assert len(db) == 1
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with kinodb.open(path) as db:
        assert len(db) == 2


def test_leftovers_after_the_committed_end_are_ignored_then_truncated(make_kdb: Any) -> None:
    path, _ = make_kdb(2)
    committed = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b"\xab" * 1000)  # what a killed appender may leave behind
    with kinodb.open(path) as db:
        assert len(db) == 2
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.ones((1, 1)))
    with kinodb.open(path) as db:
        assert len(db) == 3
        assert db._commit.index_offset < committed + 1000
        assert b"\xab" * 64 not in path.read_bytes()[committed:]


def test_append_refuses_files_it_cannot_extend(tmp_path: Path) -> None:
    junk = tmp_path / "junk.kdb"
    junk.write_bytes(b"not a kinodb file at all" * 20)
    with pytest.raises(FormatError, match=r"not a \.kdb file"):
        kinodb.Writer(junk, mode="a")
    assert junk.read_bytes() == b"not a kinodb file at all" * 20
    legacy = tmp_path / "old.kdb"
    legacy.write_bytes(b"KINO\x00\x00\x01\x00" + bytes(56))
    with pytest.raises(FormatError, match="kino upgrade"):
        kinodb.Writer(legacy, mode="a")
    assert legacy.read_bytes() == b"KINO\x00\x00\x01\x00" + bytes(56)
    with kinodb.Writer(tmp_path / "ok.kdb", mode="a") as w:  # nothing stays locked or open
        w.add_episode(actions=np.ones((1, 1)))


def test_an_append_keeps_each_cameras_codec_and_the_files_schema(tmp_path: Path) -> None:
    path = tmp_path / "rec.kdb"
    rng = np.random.default_rng(3)
    depth = rng.integers(0, 256, (4, 6, 8, 1), dtype=np.uint8)
    schema = {"states": {"components": {"q": [0, 2], "gripper": [2, 3]}}, "actions": {"names": ["a", "b"]}}
    with kinodb.Writer(path, image_codec="raw", schema=schema) as w:
        w.add_episode(
            actions=np.zeros((4, 2), np.float32), states=np.zeros((4, 3), np.float32), images={"depth": depth}
        )
    with kinodb.Writer(path, mode="a", schema=schema) as w:  # no image_codec: the file's raw camera stays raw
        w.add_episode(
            actions=np.ones((4, 2), np.float32), states=np.ones((4, 3), np.float32), images={"depth": depth}
        )
        w.add_episode(
            actions=np.ones((4, 2), np.float32),
            states=np.ones((4, 3), np.float32),
            images={"front": rng.integers(0, 256, (4, 8, 8, 3), np.uint8)},
        )
    with kinodb.open(path) as db:
        assert np.array_equal(db.read_episode(1)["images"]["depth"], depth)
        assert db.cameras(1)["depth"]["codec"] == "raw" and db.cameras(2)["front"]["codec"] == "jpeg"
        assert db.schema()["states"]["components"] == {"q": [0, 2], "gripper": [2, 3]}
    before = path.read_bytes()
    other = {"states": {"components": {"x": [0, 20]}}}
    with pytest.raises(
        kinodb.WriterError, match=r"schema states.components is .* in the file, not .*write a new file"
    ):
        kinodb.Writer(path, mode="a", schema=other)
    from kinodb.kdb.validate import validate

    assert path.read_bytes() == before and validate(path).ok


def test_an_abort_whose_flush_fails_still_cuts_the_append_off(tmp_path: Path) -> None:
    import errno

    path = tmp_path / "full.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((4, 2), np.float32))
    size = path.stat().st_size

    class DiskFull:  # the writer's buffered file, as it behaves on a full disk
        def __init__(self, fh: Any) -> None:
            self._fh = fh

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._fh, name)

    w = kinodb.Writer(path, mode="a")
    w.add_episode(actions=np.ones((500, 2), np.float32))
    w._fh.flush()  # the bytes of the new episode are in the file
    assert path.stat().st_size > size
    real = w._fh
    w._fh = DiskFull(real)  # type: ignore[assignment]
    w.add_episode(actions=np.ones((50, 2), np.float32))  # these stay in the buffer: its flush fails
    w.abort()
    real.close()  # closing the buffer must not write them back past the cut
    assert path.stat().st_size == size
    with kinodb.open(path) as db:
        assert len(db) == 1


def test_an_append_of_a_camera_stored_in_several_codecs_is_lossless_and_a_refused_schema_frees_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.kdb"
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 6, 8, 1), dtype=np.uint8)
    with kinodb.Writer(path, image_codec="raw", schema={"actions": {"names": ["a", "b"]}}) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"depth": frames})
    with kinodb.Writer(path, mode="a", image_codec="png") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"depth": frames})
    with kinodb.Writer(path, mode="a") as w:  # the camera's codec varies: a lossless one
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"depth": frames})
    with kinodb.open(path) as db:
        assert db.cameras(2)["depth"]["codec"] == "png"
        assert np.array_equal(db.read_episode(2)["images"]["depth"], frames)
    with pytest.raises(WriterError, match="an append cannot change the schema"):
        kinodb.Writer(path, mode="a", schema={"actions": {"names": ["x", "y"]}})
    with kinodb.Writer(
        path, mode="a", schema={"actions": {"names": ["a", "b"]}}
    ) as w:  # not locked by the refusal
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"depth": frames})


def test_an_append_cannot_declare_names_or_components_the_episodes_there_lack(tmp_path: Path) -> None:
    path = tmp_path / "seven.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((3, 7), np.float32), states=np.zeros((3, 2), np.float32))
    from kinodb.kdb.validate import validate

    before = path.read_bytes()
    for schema, message in (
        (
            {"actions": {"names": ["a", "b", "c", "d"]}},
            "schema actions declares 4 names, but the file's episodes have actions dim 7",
        ),
        (
            {"states": {"components": {"q": [0, 3]}}},
            "schema states declares components up to 3, but the file's episodes have states dim 2",
        ),
    ):
        with pytest.raises(WriterError, match=re.escape(message)):
            kinodb.Writer(path, mode="a", schema=schema)
    assert path.read_bytes() == before
    with kinodb.Writer(path, mode="a", schema={"actions": {"names": list("abcdefg")}}) as w:  # names that fit
        w.add_episode(actions=np.ones((2, 7), np.float32), states=np.ones((2, 2), np.float32))
    assert validate(path).ok


def test_a_stored_schema_passes_whole_to_a_new_file_and_an_append(tmp_path: Path) -> None:
    src, copy = tmp_path / "src.kdb", tmp_path / "copy.kdb"
    schema = {"states": {"components": {"q": [0, 2], "gripper": [2, 3]}}, "actions": {"names": ["a", "b"]}}
    frames = np.random.default_rng(4).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)
    with kinodb.Writer(src, image_codec="png", schema=schema) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 3), np.float32),
                      images={"front": frames}, extra_arrays={"sim_state": np.zeros((3, 5))})  # fmt: skip
    with kinodb.open(src) as db:
        stored = db.schema()
        assert {"cameras", "arrays", "rewards"} <= set(stored) and stored["states"]["dim"] == 3
        with kinodb.Writer(copy, image_codec="png", schema=stored) as w:
            ep = db.read_episode(0)
            w.add_episode(actions=ep["actions"], states=ep["states"], images=ep["images"],
                          extra_arrays={"sim_state": ep["sim_state"]})  # fmt: skip
        with kinodb.Writer(src, mode="a", schema=stored) as w:  # the file's own schema, as errors advise
            w.add_episode(actions=np.ones((3, 2), np.float32), states=np.ones((3, 3), np.float32))
    with kinodb.open(copy) as db, kinodb.open(src) as orig:
        assert db.schema() == stored
        assert len(orig) == 2 and orig.schema()["actions"]["names"] == ["a", "b"]


def test_info_names_the_indexes_appends_left_and_upgrade_compacts_them(tmp_path: Path) -> None:
    from kinodb.kdb.upgrade import upgrade

    path = tmp_path / "grown.kdb"
    with kinodb.Writer(path) as w:
        for _ in range(3000):
            w.add_episode(actions=np.zeros((4, 2), np.float32), extra={"tags": ["a"]})
    with kinodb.open(path) as db:
        assert db._superseded_bytes() == 0 and "superseded" not in db.summary()
        superseded = [db._commit.index_length]
    for k in range(12):  # one Writer per episode: each commit writes the whole index again
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(actions=np.zeros((4, 2), np.float32), extra={"tags": ["a"]})
        if k < 11:
            with kinodb.open(path) as db:
                superseded.append(db._commit.index_length)
    with kinodb.open(path) as db:
        dead = db._superseded_bytes()
        # the twelve earlier indexes, each with under 64 bytes of padding before it
        assert sum(superseded) <= dead < sum(superseded) + 64 * len(superseded)
        assert re.search(r"superseded: [\d.]+ [KM]iB \(\d+% of the file\), .*kino upgrade FILE NEW compacts it",
                         db.summary())  # fmt: skip
    upgrade(path, tmp_path / "compact.kdb")
    with kinodb.open(tmp_path / "compact.kdb") as db:
        assert len(db) == 3012 and db._superseded_bytes() == 0 and "superseded" not in db.summary()
