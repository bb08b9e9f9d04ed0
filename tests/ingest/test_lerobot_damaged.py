"""LeRobot ingest of damaged metadata and data: one line naming the file, the entry and the field;
an episode's own bad entry fails that episode alone (``on_error="skip"`` leaves it out)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
G1 = SAMPLES / "unitree_g1_lerobot_v21"
needs_g1 = pytest.mark.skipif(
    not (G1 / "meta" / "info.json").is_file(),
    reason=f"real LeRobot v2.1 sample not found at {G1} (see shared/samples/SOURCES.md)",
)
LENGTHS = [6, 7, 5, 6]
EPISODES_V3 = Path("meta") / "episodes" / "chunk-000" / "file-000.parquet"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A v2.1 and a v3.0 dataset (videos), written once; tests change copies of them."""
    root = tmp_path_factory.mktemp("lerobot_damaged")
    eps = F.make_episodes(np.random.default_rng(11), LENGTHS, cameras={F.CAMERA: (16, 16)})
    return {"v2.1": F.write_v2(root / "v21", eps), "v3.0": F.write_v3(root / "v30", eps, per_file=2)}


def _copy(written: dict[str, Path], version: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written[version], tmp_path / "src"))


def _edit_info(root: Path, **changes: Any) -> None:
    info = json.loads((root / "meta" / "info.json").read_text())
    info.update(changes)
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _edit_jsonl(path: Path, line: int, **changes: Any) -> None:
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    rows[line].update(changes)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _edit_column(path: Path, name: str, values: list[Any], type_: pa.DataType) -> None:
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))
    pq.write_table(table, path)


def _cli_fails(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    """``kino ingest`` exits 1 with one ``error:`` line matching ``pattern``, and writes nothing."""
    assert main([*argv, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not out.exists()


def _fails_alone(root: Path, tmp_path: Path, pattern: str, bad: str, *, images: bool = True) -> None:
    """Episode ``bad`` stops the ingest with ``pattern``; skipping leaves out that episode alone."""
    with pytest.raises(ConversionError, match=pattern):
        ingest(root, tmp_path / "raise.kdb", images=images)
    assert not (tmp_path / "raise.kdb").exists()
    report = ingest(root, tmp_path / "skip.kdb", images=images, on_error="skip")
    assert [k for k, _ in report.skipped] == [bad]
    assert re.search(pattern, report.skipped[0][1])
    with kinodb.open(tmp_path / "skip.kdb") as db:
        kept = [db.read_meta(k)["source_episode"] for k in range(len(db))]
    assert kept == [f"episode_{e:06d}" for e in range(len(LENGTHS)) if f"episode_{e:06d}" != bad]


# -- info.json of the wrong types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"chunks_size": "many"}, r'info\.json: chunks_size is "many"; expected the number of episodes per chunk'),
        ({"chunks_size": 0}, r"info\.json: chunks_size is 0; expected .* a whole number >= 1"),
        ({"data_path": 5}, r"info\.json: data_path is 5; expected a path template string such as 'data/chunk-"),
        ({"data_path": "data/{nope}.parquet"}, r"info\.json: data_path 'data/\{nope\}\.parquet' cannot be "
                                               r"filled: LeRobot has no value for its field \{nope\}"),
        ({"video_path": ["x"]}, r'info\.json: video_path is \["x"\]; expected a path template string'),
    ],
)  # fmt: skip
def test_info_json_fields_of_the_wrong_type_name_the_field(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any],
    pattern: str,
) -> None:  # fmt: skip
    root = _copy(written, "v2.1", tmp_path)
    _edit_info(root, **change)
    with pytest.raises(ConversionError, match=pattern):
        ingest(root, tmp_path / "a.kdb", on_error="skip")
    _cli_fails(["ingest", str(root), "--on-error", "skip"], tmp_path / "b.kdb", capsys, pattern)


@pytest.mark.parametrize("shape", [None, "4", [4.5], [True]])
def test_an_action_shape_that_is_no_list_of_sizes_names_the_feature(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: Any
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = shape
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pattern = re.escape(
        f"info.json: features['action'].shape is {json.dumps(shape)}; expected a list of whole"
    )
    _cli_fails(["ingest", str(root), "--no-images"], tmp_path / "out.kdb", capsys, pattern)


def test_a_feature_dtype_that_is_no_string_names_the_feature(
    written: dict[str, Path], tmp_path: Path
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.state"]["dtype"] = ["float32"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(
        ConversionError, match=r"""features\['observation\.state'\]\.dtype is \["float32"\]"""
    ):
        ingest(root, tmp_path / "out.kdb")


def test_a_bad_video_path_is_a_dataset_error_only_when_videos_are_read(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    _edit_info(root, video_path="videos/{video_key}/{bogus}.mp4")
    pattern = (
        r"info\.json: video_path 'videos/\{video_key\}/\{bogus\}\.mp4' cannot be filled: LeRobot has no value "
        r"for its field \{bogus\}; LeRobot v3\.0 fills \{chunk_index\}, \{file_index\}, \{video_key\}"
    )
    _cli_fails(["ingest", str(root), "--on-error", "skip"], tmp_path / "a.kdb", capsys, pattern)
    assert ingest(root, tmp_path / "b.kdb", images=False).episodes == len(LENGTHS)


# -- one episode's entry -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"tasks": 5}, r"episodes\.jsonl: line 3 \(episode 2\): tasks is 5; expected a list of the episode's task"),
        ({"tasks": "abc"}, r'episodes\.jsonl: line 3 \(episode 2\): tasks is "abc"; expected a list'),
        ({"length": "abc"}, r'episodes\.jsonl: line 3 \(episode 2\): length is "abc"; expected the episode\'s '
                            r"number of frames, a whole number >= 0"),
        ({"length": None}, r"episodes\.jsonl: line 3 \(episode 2\): length is null"),
    ],
)  # fmt: skip
def test_a_bad_v2_entry_fails_its_episode_alone(
    written: dict[str, Path], tmp_path: Path, change: dict[str, Any], pattern: str
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    _edit_jsonl(root / "meta" / "episodes.jsonl", 2, **change)
    _fails_alone(root, tmp_path, pattern, "episode_000002", images=False)


def test_an_entry_without_a_usable_episode_index_fails_the_list(
    written: dict[str, Path], tmp_path: Path
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    _edit_jsonl(root / "meta" / "episodes.jsonl", 1, episode_index=-1)
    with pytest.raises(ConversionError, match=r"episodes\.jsonl: line 2: episode_index is -1; expected the"):
        ingest(root, tmp_path / "out.kdb", on_error="skip")


@pytest.mark.parametrize(
    ("column", "values", "type_", "pattern"),
    [
        ("length", [6, None, 5, 6], pa.int64(), r"row 1 \(episode 1\): length is null; expected the episode's "
                                                r"number of frames"),
        ("data/file_index", [0, -3, 1, 1], pa.int64(), r"row 1 \(episode 1\): data/file_index is -3"),
        (f"videos/{F.CAMERA}/from_timestamp", [0.0, float("nan"), 0.0, 0.5], pa.float64(),
         rf"row 1 \(episode 1\): videos/{re.escape(F.CAMERA)}/from_timestamp is NaN; expected the time in "
         r"seconds where the episode starts in its video file"),
        (f"videos/{F.CAMERA}/from_timestamp", [0.0, None, 0.0, 0.5], pa.float64(),
         r"row 1 \(episode 1\): videos/.*/from_timestamp is null"),
    ],
)  # fmt: skip
def test_a_bad_v3_row_fails_its_episode_alone(
    written: dict[str, Path], tmp_path: Path, column: str, values: list[Any], type_: pa.DataType, pattern: str
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    _edit_column(root / EPISODES_V3, column, values, type_)
    _fails_alone(root, tmp_path, r"meta/episodes/chunk-000/file-000\.parquet: " + pattern, "episode_000001")


def test_a_missing_v3_video_column_fails_the_list_unless_videos_are_left_out(
    written: dict[str, Path], tmp_path: Path
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    pq.write_table(
        pq.read_table(root / EPISODES_V3).drop([f"videos/{F.CAMERA}/from_timestamp"]), root / EPISODES_V3
    )
    with pytest.raises(
        ConversionError,
        match=r"file-000\.parquet: no column 'videos/.*/from_timestamp'.*; or pass images=False to leave",
    ):
        ingest(root, tmp_path / "a.kdb", on_error="skip")
    assert ingest(root, tmp_path / "b.kdb", images=False).episodes == len(LENGTHS)


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize("images", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_timestamp_that_is_not_finite_names_the_data_file_and_frame(
    written: dict[str, Path], tmp_path: Path, images: bool, bad: float
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    stamps = (np.arange(LENGTHS[1]) / 10).astype(np.float32)
    stamps[4] = bad
    _edit_column(path, "timestamp", stamps.tolist(), pa.float32())
    pattern = (
        rf"episode_000001\.parquet: episode 1: column 'timestamp' holds {bad} at frame 4 \(1 of 7 frames"
    )
    _fails_alone(root, tmp_path, pattern, "episode_000001", images=images)


def test_a_v3_timestamp_that_is_not_finite_fails_its_episode(
    written: dict[str, Path], tmp_path: Path
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    path = root / "data" / "chunk-000" / "file-001.parquet"
    stamps = np.concatenate([np.arange(5), np.arange(6)]).astype(np.float32) / 10
    stamps[7] = np.nan  # episode 3's frame 2
    _edit_column(path, "timestamp", stamps.tolist(), pa.float32())
    _fails_alone(root, tmp_path, r"file-001\.parquet: episode 3: column 'timestamp' holds nan at frame 2",
                 "episode_000003")  # fmt: skip


@needs_g1
def test_g1_sample_a_nan_timestamp_is_blamed_on_the_data_not_the_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(G1, tmp_path / "g1"))
    path = root / "data" / "chunk-000" / "episode_000029.parquet"
    table = pq.read_table(path)
    stamps = np.array(table["timestamp"].to_pylist(), np.float32)
    stamps[10] = np.nan
    _edit_column(path, "timestamp", stamps.tolist(), pa.float32())
    for extra in ([], ["--no-images"]):
        _cli_fails(["ingest", str(root), "--episodes", "29", *extra], tmp_path / "out.kdb", capsys,
                   r"episode_000029\.parquet: episode 29: column 'timestamp' holds nan at frame 10")  # fmt: skip


# -- a kinodb export's records -------------------------------------------------------------


@pytest.fixture
def exported(written: dict[str, Path], tmp_path: Path) -> Path:
    """A kinodb LeRobot export (with ``meta/kinodb_episodes.jsonl``) of the v3.0 dataset."""
    kdb = tmp_path / "ds.kdb"
    ingest(written["v3.0"], kdb, images=False)
    out = tmp_path / "export"
    kinodb.export.export(kdb, out, format="lerobot")
    return out


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"meta": [1]}, r"meta is \[1\]; expected a JSON object of the episode's metadata"),
        ({"meta": 5}, r"meta is 5; expected a JSON object"),
        ({"meta": {"success": "yes"}}, r'meta\.success is "yes"; expected true, false or null'),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_export_record_fails_its_episode_alone(
    exported: Path, tmp_path: Path, change: dict[str, Any], pattern: str, workers: int
) -> None:
    _edit_jsonl(exported / "meta" / "kinodb_episodes.jsonl", 2, **change)
    pattern = r"kinodb_episodes\.jsonl: line 3 \(episode 2\): " + pattern
    with pytest.raises(ConversionError, match=pattern):
        ingest(exported, tmp_path / "raise.kdb", workers=workers)
    report = ingest(exported, tmp_path / "skip.kdb", on_error="skip", workers=workers)
    assert [k for k, _ in report.skipped] == ["episode_000002"] and report.episodes == len(LENGTHS) - 1


def test_an_export_record_without_a_usable_episode_index_names_the_line(
    exported: Path, tmp_path: Path
) -> None:
    _edit_jsonl(exported / "meta" / "kinodb_episodes.jsonl", 1, episode_index="a")
    with pytest.raises(
        ConversionError, match=r'kinodb_episodes\.jsonl: line 2: episode_index is "a"; expected'
    ):
        ingest(exported, tmp_path / "out.kdb", on_error="skip")


# -- episodes with data but no entry -------------------------------------------------------


def _without_entry(written: dict[str, Path], tmp_path: Path, line: int) -> Path:
    """A copy of the v2.1 set whose episode list lacks the entry on ``line`` (from 0)."""
    root = _copy(written, "v2.1", tmp_path)
    path = root / "meta" / "episodes.jsonl"
    path.write_text("".join(text + "\n" for k, text in enumerate(path.read_text().splitlines()) if k != line))
    return root


def test_v2_episodes_with_data_but_no_entry_are_warned_about(
    written: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _without_entry(written, tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        report = ingest(root, tmp_path / "out.kdb", images=False)
    assert report.episodes == 3
    assert (
        "info.json: total_episodes is 4, but meta/episodes.jsonl lists 3 episodes; episodes 2 (episode_index) "
        "have data but no entry there, so they are not ingested" in caplog.text
    )


def test_v3_episodes_with_data_but_no_entry_are_warned_about(
    written: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    pq.write_table(pq.read_table(root / EPISODES_V3).slice(0, 2), root / EPISODES_V3)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        report = ingest(root, tmp_path / "out.kdb", images=False)
    assert report.episodes == 2
    assert (
        "info.json: total_episodes is 4, but meta/episodes/*.parquet lists 2 episodes; episodes 2-3 "
        "(episode_index) have data but no entry there" in caplog.text
    )
    assert caplog.text.count("total_episodes is 4") == 1


def test_a_total_that_counts_episodes_without_data_says_every_one_at_hand_is_listed(
    written: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy(written, "v3.0", tmp_path)
    _edit_info(root, total_episodes=9)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        assert ingest(root, tmp_path / "out.kdb", images=False).episodes == len(LENGTHS)
    assert "total_episodes is 9, but meta/episodes/*.parquet lists 4 episodes; every episode whose data is at " \
           "hand is listed" in caplog.text  # fmt: skip


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_an_action_column_narrower_than_info_json_declares_names_the_file_and_column(
    written: dict[str, Path], tmp_path: Path, version: str
) -> None:
    root = _copy(written, version, tmp_path)
    declared = json.loads((root / "meta" / "info.json").read_text())["features"]["action"]["shape"]
    if version == "v2.1":
        path, rows = root / "data" / "chunk-000" / "episode_000001.parquet", slice(None)
    else:
        path = root / "data" / "chunk-000" / "file-000.parquet"  # episodes 0 and 1
        index = pq.read_table(path, columns=["episode_index"])["episode_index"].to_numpy()
        rows = slice(int(np.flatnonzero(index == 1)[0]), int(np.flatnonzero(index == 1)[-1]) + 1)
    table = pq.read_table(path)
    actions = np.stack(table["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
    if version == "v2.1":
        narrow = [a[:-1].tolist() for a in actions]
        _edit_column(path, "action", narrow, pa.list_(pa.float32()))
    else:  # one episode's rows narrower than the others': a list column of varying length
        values = [a.tolist() for a in actions]
        for r in range(*rows.indices(len(values))):
            values[r] = values[r][:-1]
        _edit_column(path, "action", values, pa.list_(pa.float32()))
    pattern = (
        rf"\.parquet: episode 1: column 'action' holds {declared[0] - 1} values per frame, but "
        rf"meta/info\.json declares shape \[{declared[0]}\] for it"
    )
    _fails_alone(root, tmp_path, pattern, "episode_000001")


def test_an_episode_list_that_is_not_utf8_names_the_file(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(written, "v2.1", tmp_path)
    listing = root / "meta" / "episodes.jsonl"
    listing.write_bytes(b"\xff\xfe" + listing.read_bytes())
    _cli_fails(
        ["ingest", str(root)], tmp_path / "o.kdb", capsys, r"episodes\.jsonl: not readable \('utf-8' codec"
    )


def test_the_unlisted_warning_comes_once_per_ingest_also_with_verify(
    written: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _without_entry(written, tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        report = ingest(root, tmp_path / "out.kdb", images=False, verify=True)
    assert report.verification is not None and report.verification.ok
    assert caplog.text.count("total_episodes is 4") == 1
