"""LeRobot export row groups: short episodes gathered into a few row groups of bounded size,
each episode's rows in the file its metadata row names, read back by pyarrow, kinodb's
ingest and LeRobot itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import _lerobot_tables, export
from kinodb.export import lerobot as lerobot_export
from kinodb.ingest import ingest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FPS = 10.0


def _write(path: Path, lengths: list[int], *, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    """Episodes of ``lengths`` frames with float32 actions and float64 states; returns the actions."""
    rng = np.random.default_rng(seed)
    actions = []
    with kinodb.Writer(path) as w:
        for k, T in enumerate(lengths):
            a = rng.standard_normal((T, 3)).astype(np.float32)
            w.add_episode(actions=a, states=rng.standard_normal((T, 2)), task=f"t{k % 4}", fps=FPS)
            actions.append(a)
    return path, actions


def _episodes_table(root: Path) -> Any:
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _data_files(root: Path) -> list[Path]:
    return sorted((root / "data").rglob("*.parquet"))


def _row_groups(path: Path) -> list[tuple[int, int, int]]:
    """Each row group's (rows, first episode_index, last episode_index), from the file's metadata."""
    md = pq.ParquetFile(path).metadata
    leaf = next(j for j in range(md.num_columns) if md.schema.column(j).path == "episode_index")
    out = []
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(leaf).statistics
        out.append((md.row_group(g).num_rows, stats.min, stats.max))
    return out


def _check_located(root: Path, actions: list[np.ndarray]) -> None:
    """Every episode's rows are in the data file its row names, at its frame range, whole."""
    rows = _episodes_table(root).to_pylist()
    assert [r["episode_index"] for r in rows] == list(range(len(actions)))
    tables: dict[tuple[int, int], Any] = {}
    for r, a in zip(rows, actions, strict=True):
        where = (r["data/chunk_index"], r["data/file_index"])
        if where not in tables:
            tables[where] = pq.read_table(
                root / lerobot_export.DATA_PATH.format(chunk_index=where[0], file_index=where[1])
            )
        table = tables[where]
        mine = table.filter(pa.compute.equal(table["episode_index"], r["episode_index"]))
        assert mine.num_rows == r["length"] == len(a)
        index = mine["index"].to_numpy()
        np.testing.assert_array_equal(index, np.arange(r["dataset_from_index"], r["dataset_to_index"]))
        np.testing.assert_array_equal(mine["frame_index"].to_numpy(), np.arange(len(a)))
        np.testing.assert_array_equal(np.stack(mine["action"].to_numpy(zero_copy_only=False)), a)
    held = sum(pq.ParquetFile(f).metadata.num_rows for f in _data_files(root))
    assert held == sum(len(a) for a in actions)  # no rows twice, none elsewhere


def test_short_episodes_share_a_few_row_groups(tmp_path: Path) -> None:
    src, actions = _write(tmp_path / "src.kdb", [3 + k % 4 for k in range(300)])
    root = tmp_path / "lr"
    export(src, root, format="lerobot")
    (data,) = _data_files(root)
    # One row group per episode would be 300 here, each with its metadata kept by the
    # writer to the end and parsed by every reader.
    assert pq.ParquetFile(data).metadata.num_row_groups <= 2
    (episodes,) = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    assert pq.ParquetFile(episodes).metadata.num_row_groups <= 2
    _check_located(root, actions)


def test_row_groups_keep_to_their_limits_and_episodes_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lengths = [2 + k % 5 for k in range(120)]
    src, actions = _write(tmp_path / "src.kdb", lengths)
    monkeypatch.setattr(lerobot_export, "ROW_GROUP_ROWS", 25)
    root = tmp_path / "lr"
    export(src, root, format="lerobot")
    groups = _row_groups(_data_files(root)[0])
    assert all(rows <= 25 for rows, _, _ in groups)
    assert len(groups) <= -(-sum(lengths) // (25 - 5)), groups  # full but for at most one episode
    firsts = [first for _, first, _ in groups]
    assert all(last < first for (_, _, last), first in zip(groups, firsts[1:], strict=False))  # in order
    assert sum(last - first + 1 for _, first, last in groups) == len(lengths)  # none split
    _check_located(root, actions)


def test_row_groups_keep_to_a_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, actions = _write(tmp_path / "src.kdb", [4] * 100)
    monkeypatch.setattr(lerobot_export, "ROW_GROUP_BYTES", 2000)
    monkeypatch.setattr(lerobot_export, "EPISODE_ROWS_BYTES", 20_000)
    root = tmp_path / "lr"
    export(src, root, format="lerobot")
    (data,) = _data_files(root)
    table = pq.read_table(data)
    per_row = table.nbytes / table.num_rows
    groups = _row_groups(data)
    assert len(groups) > 5 and all(rows * per_row <= 2000 for rows, _, _ in groups)
    (episodes,) = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    assert pq.ParquetFile(episodes).metadata.num_row_groups > 2
    _check_located(root, actions)


def test_an_episode_past_the_limits_is_cut_into_even_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, actions = _write(tmp_path / "src.kdb", [4, 35, 3])
    monkeypatch.setattr(lerobot_export, "ROW_GROUP_ROWS", 10)
    root = tmp_path / "lr"
    export(src, root, format="lerobot")
    groups = _row_groups(_data_files(root)[0])
    assert groups == [(4, 0, 0), (9, 1, 1), (9, 1, 1), (9, 1, 1), (8, 1, 1), (3, 2, 2)]
    _check_located(root, actions)
    back = tmp_path / "back.kdb"
    ingest(str(root), str(back), format="lerobot")  # reads episode 1 from its four row groups
    with kinodb.open(back) as db:
        for k, a in enumerate(actions):
            np.testing.assert_array_equal(db.read_array(k, "actions"), a)


def test_files_are_assigned_as_without_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file an episode goes to depends on the file's size limit only: with row groups of
    # 7 rows or of the default size, the same episodes are in the same files, and each
    # metadata row names the file that holds its rows.
    lengths = [2 + k % 6 for k in range(90)]
    src, actions = _write(tmp_path / "src.kdb", lengths)
    monkeypatch.setattr(lerobot_export, "DATA_FILES_SIZE_IN_MB", 0.005)  # ~5 KB of rows a file
    monkeypatch.setattr(lerobot_export, "CHUNKS_SIZE", 3)
    export(src, tmp_path / "default", format="lerobot")
    monkeypatch.setattr(lerobot_export, "ROW_GROUP_ROWS", 7)
    export(src, tmp_path / "small", format="lerobot")
    where = ["data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]
    default, small = _episodes_table(tmp_path / "default"), _episodes_table(tmp_path / "small")
    assert default.select(where).equals(small.select(where))
    files = _data_files(tmp_path / "small")
    assert len(files) > 3 and files[3].parent.name == "chunk-001"
    assert [f.relative_to(tmp_path / "small") for f in files] == [
        f.relative_to(tmp_path / "default") for f in _data_files(tmp_path / "default")
    ]
    for a, b in zip(_data_files(tmp_path / "default"), files, strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))
        assert pq.ParquetFile(a).metadata.num_row_groups == 1 < pq.ParquetFile(b).metadata.num_row_groups
    for root in (tmp_path / "default", tmp_path / "small"):
        _check_located(root, actions)


def test_a_failed_export_writes_no_held_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = _write(tmp_path / "src.kdb", [3] * 20)
    calls = 0
    add = lerobot_export._Exporter.add_episode

    def failing(self: Any, db: Any, i: int, k: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 15:
            raise RuntimeError("stop")
        add(self, db, i, k)

    monkeypatch.setattr(lerobot_export._Exporter, "add_episode", failing)
    written: list[str] = []
    flush = _lerobot_tables.RowGroupFile.flush
    monkeypatch.setattr(_lerobot_tables.RowGroupFile, "flush",
                        lambda self: (written.append(self._path), flush(self)))  # fmt: skip
    with pytest.raises(RuntimeError, match="stop"):
        export(src, tmp_path / "lr", format="lerobot")
    assert written == [] and not (tmp_path / "lr").exists()


# -- read back by LeRobot itself ----------------------------------------------------------------


@pytest.mark.integration
def test_lerobot_dataset_reads_episodes_across_row_groups_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except Exception as exc:  # ImportError, or a broken torchvision raising at import
        pytest.skip(f"lerobot is not importable ({type(exc).__name__}: {exc}); see docs/lerobot.md")
    lengths = [3 + k % 5 for k in range(60)]
    src, actions = _write(tmp_path / "src.kdb", lengths)
    monkeypatch.setattr(lerobot_export, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(lerobot_export, "DATA_FILES_SIZE_IN_MB", 0.01)  # a few files
    root = tmp_path / "lr"
    export(src, root, format="lerobot")
    assert len(_data_files(root)) > 1
    ds = LeRobotDataset("kinodb/rowgroups-test", root=root)
    assert (len(ds), ds.num_episodes) == (sum(lengths), len(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for k in (0, 17, 31, 59):
        for t in (0, lengths[k] - 1):
            item = ds[int(starts[k]) + t]
            assert (int(item["episode_index"]), int(item["frame_index"])) == (k, t)
            np.testing.assert_array_equal(item["action"].numpy(), actions[k][t])
    chosen = [5, 40, 41]  # found by LeRobot through the row groups' episode_index statistics
    some = LeRobotDataset("kinodb/rowgroups-test", root=root, episodes=chosen)
    assert len(some) == sum(lengths[k] for k in chosen)
    got = np.stack([some[j]["action"].numpy() for j in range(len(some))])
    np.testing.assert_array_equal(got, np.concatenate([actions[k] for k in chosen]))
