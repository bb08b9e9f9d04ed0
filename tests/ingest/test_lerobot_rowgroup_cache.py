"""LeRobot v3 data files whose row groups hold many episodes: each group is decoded once.

Datasets are written by pyarrow (and by kinodb's own exporter): one row group per episode,
one row group for every episode (as ``DataFrame.to_parquet`` writes LeRobot's ported
datasets), row groups that cut episodes in two, and rows out of episode order. Reads are
counted through a ``ParquetFile`` subclass, so nothing here depends on timing.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kinodb
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.ingest import SourceOptions, ingest
from kinodb.ingest._base import SOURCE_WHERE
from kinodb.ingest.lerobot import LeRobotSource
from kinodb.synthetic import create_test

LENGTHS = [5, 3, 8, 4, 6, 9, 3, 7, 5, 4, 6, 8]
DATA = Path("data") / "chunk-000" / "file-000.parquet"


class Reads:
    """What was read from the ``data/`` parquet files of a dataset."""

    def __init__(self) -> None:
        self.groups: Counter[tuple[str, int]] = Counter()  # (file name, row group) -> decodes
        self.probes = 0  # `iter_batches`: the first frame of an image feature (16-bit PNG or not)
        self.lookups = 0  # row-group metadata (statistics) looked up

    def total(self) -> int:
        return sum(self.groups.values())


class _Metadata:
    """A ``FileMetaData`` that counts ``row_group`` lookups."""

    def __init__(self, md: Any, reads: Reads) -> None:
        self._md, self._reads = md, reads

    def row_group(self, i: int) -> Any:
        self._reads.lookups += 1
        return self._md.row_group(i)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._md, name)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    """Count every row group decoded from a ``data/`` file, whichever way it is read."""
    counted = Reads()

    class CountingParquetFile(pq.ParquetFile):  # type: ignore[misc]
        def __init__(self, source: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(source, *args, **kwargs)
            path = Path(str(source))
            self._name = path.name if path.parent.parent.name == "data" else None

        def _note(self, groups: Any) -> None:
            if self._name is not None:
                counted.groups.update((self._name, int(g)) for g in groups)

        def _all(self) -> range:
            return range(super().metadata.num_row_groups)

        @property
        def metadata(self) -> Any:
            md = super().metadata
            return md if self._name is None else _Metadata(md, counted)

        def read_row_group(self, i: int, *args: Any, **kwargs: Any) -> Any:
            self._note([i])
            return super().read_row_group(i, *args, **kwargs)

        def read_row_groups(self, row_groups: Any, *args: Any, **kwargs: Any) -> Any:
            self._note(row_groups)
            return super().read_row_groups(row_groups, *args, **kwargs)

        def read(self, *args: Any, **kwargs: Any) -> Any:
            self._note(self._all())
            return super().read(*args, **kwargs)

        def iter_batches(self, *args: Any, **kwargs: Any) -> Any:
            if self._name is not None:
                counted.probes += 1
            return super().iter_batches(*args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", CountingParquetFile)
    yield counted


# -- datasets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def per_episode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every episode in one data file, one row group each (LeRobot's own writer), PNG frames."""
    rng = np.random.default_rng(7)
    eps = F.make_episodes(rng, LENGTHS, cameras={F.CAMERA: (8, 12)})
    return F.write_v3(tmp_path_factory.mktemp("lr") / "per_episode", eps, per_file=len(eps), images="PNG")


def _rewrite(src: Path, dst: Path, *, group_rows: int, order: np.ndarray | None = None) -> Path:
    """``src`` with its data file written again in row groups of ``group_rows`` rows (and its
    rows in ``order``)."""
    shutil.copytree(src, dst)
    table = pq.read_table(src / DATA)
    if order is not None:
        table = table.take(pa.array(order))
    pq.write_table(table, dst / DATA, row_group_size=group_rows)
    return dst


@pytest.fixture(scope="module")
def one_group(per_episode: Path) -> Path:
    return _rewrite(per_episode, per_episode.parent / "one_group", group_rows=sum(LENGTHS))


@pytest.fixture(scope="module")
def cut(per_episode: Path) -> Path:
    """Row groups of 7 rows: most episodes lie in two of them."""
    return _rewrite(per_episode, per_episode.parent / "cut", group_rows=7)


@pytest.fixture(scope="module")
def shuffled(per_episode: Path) -> Path:
    """Rows in random order, in two row groups: every episode's rows lie in both, apart."""
    order = np.random.default_rng(3).permutation(sum(LENGTHS))
    return _rewrite(
        per_episode, per_episode.parent / "shuffled", group_rows=sum(LENGTHS) // 2 + 1, order=order
    )


def _groups(root: Path) -> int:
    with pq.ParquetFile(root / DATA) as pf:
        return int(pf.metadata.num_row_groups)


def _read_all(root: Path) -> list[dict[str, Any]]:
    """Every episode read by one source, in order."""
    source = LeRobotSource(root, SourceOptions())
    try:
        return [source.read(key) for key in source.episodes()]
    finally:
        source.close()


def _read_each(root: Path) -> list[dict[str, Any]]:
    """Every episode read by a source of its own (nothing held from another episode)."""
    out = []
    for key in LeRobotSource(root, SourceOptions()).episodes():
        source = LeRobotSource(root, SourceOptions())
        try:
            out.append(source.read(key))
        finally:
            source.close()
    return out


def _same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


def _same_episodes(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected) == len(LENGTHS)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        a, b = ({key: v for key, v in x.items() if key != SOURCE_WHERE} for x in (a, b))  # names the dataset
        _same(a, b, f"episode {k}")


# -- tests -----------------------------------------------------------------------------------


def test_episodes_of_one_row_group_are_decoded_once(one_group: Path, per_episode: Path, reads: Reads) -> None:
    got = _read_all(one_group)
    assert _groups(one_group) == 1
    assert reads.groups == {(DATA.name, 0): 1}  # one read for all 12 episodes, not 12
    _same_episodes(got, _read_each(one_group))
    _same_episodes(got, _read_all(per_episode))
    assert [a["actions"].shape[0] for a in got] == LENGTHS
    assert all(len(a["images"]["top"]) == T for a, T in zip(got, LENGTHS, strict=True))


def test_row_groups_that_cut_episodes_are_each_decoded_once(
    cut: Path, per_episode: Path, reads: Reads
) -> None:
    got = _read_all(cut)
    groups = _groups(cut)
    assert groups == -(-sum(LENGTHS) // 7)
    assert reads.groups == {(DATA.name, g): 1 for g in range(groups)}
    _same_episodes(got, _read_each(cut))
    _same_episodes(got, _read_all(per_episode))


def test_statistics_are_scanned_once_per_file(cut: Path, reads: Reads) -> None:
    _read_all(cut)
    # one lookup per row group for the whole file: not one per row group and episode
    assert 0 < reads.lookups <= _groups(cut) < len(LENGTHS) * _groups(cut)


def test_rows_out_of_episode_order(shuffled: Path, per_episode: Path, reads: Reads) -> None:
    got = _read_all(shuffled)
    assert reads.groups == {(DATA.name, 0): 1, (DATA.name, 1): 1}
    _same_episodes(got, _read_each(shuffled))
    _same_episodes(got, _read_all(per_episode))


def test_per_episode_row_groups_read_each_once(per_episode: Path, reads: Reads) -> None:
    _read_all(per_episode)
    assert reads.groups == {(DATA.name, g): 1 for g in range(len(LENGTHS))}


def test_a_selection_reads_only_the_row_groups_it_needs(
    per_episode: Path, tmp_path: Path, reads: Reads
) -> None:
    root = shutil.copytree(per_episode, tmp_path / "thirds")
    table = pq.read_table(per_episode / DATA)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    with pq.ParquetWriter(root / DATA, table.schema) as writer:  # 3 row groups of 4 whole episodes
        for k in range(0, len(LENGTHS), 4):
            writer.write_table(table.slice(int(starts[k]), int(starts[k + 4] - starts[k])))
    ingest(root, tmp_path / "one.kdb", format="lerobot", episodes=[5, 6])
    assert reads.groups == {(DATA.name, 1): 1}
    with kinodb.open(tmp_path / "one.kdb") as db:
        assert len(db) == 2 and [int(n) for n in db.episodes()["num_frames"]] == LENGTHS[5:7]


def _episodes(path: Path) -> list[dict[str, Any]]:
    with kinodb.open(path) as db:
        out = [db.read_episode(i) for i in range(len(db))]
        for ep in out:
            ep.pop("meta")
            ep["images"] = {c: [bytes(f) for f in v] for c, v in ep["images"].items()}
    return out


def test_workers_give_the_same_file(one_group: Path, tmp_path: Path) -> None:
    ingest(one_group, tmp_path / "one.kdb", format="lerobot")
    ingest(one_group, tmp_path / "two.kdb", format="lerobot", workers=2)
    _same_episodes(_episodes(tmp_path / "two.kdb"), _episodes(tmp_path / "one.kdb"))


def test_a_kinodb_export_comes_back_with_each_row_group_decoded_once(tmp_path: Path, reads: Reads) -> None:
    create_test(tmp_path / "src.kdb", n=200, frames=4)
    export(tmp_path / "src.kdb", tmp_path / "lr", format="lerobot")
    files = sorted((tmp_path / "lr" / "data").rglob("*.parquet"))
    groups = {(f.name, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)}
    reads.groups.clear()
    ingest(tmp_path / "lr", tmp_path / "back.kdb", format="lerobot")
    assert len(groups) < 200 and reads.groups == dict.fromkeys(groups, 1)
    with kinodb.open(tmp_path / "src.kdb") as a, kinodb.open(tmp_path / "back.kdb") as b:
        assert len(a) == len(b) == 200
        for i in range(len(a)):
            x, y = a.read_episode(i), b.read_episode(i)
            for name in ("actions", "states", "rewards", "is_terminal", "timestamps"):
                if name in x or name in y:
                    _same(x[name], y[name], f"episode {i} {name}")


@pytest.mark.parametrize("group_rows", [None, 1000])  # a row group per episode, or one for all
def test_an_episode_without_rows_is_named(per_episode: Path, tmp_path: Path, group_rows: int | None) -> None:
    root = shutil.copytree(per_episode, tmp_path / "gap")
    table = pq.read_table(per_episode / DATA)
    kept = table.filter(pa.compute.not_equal(table["episode_index"], 3))
    if group_rows is None:
        with pq.ParquetWriter(root / DATA, table.schema) as writer:
            for e in sorted(set(kept["episode_index"].to_pylist())):
                writer.write_table(kept.filter(pa.compute.equal(kept["episode_index"], e)))
    else:
        pq.write_table(kept, root / DATA, row_group_size=group_rows)
    source = LeRobotSource(root, SourceOptions())
    try:
        assert source.read("episode_000002")["actions"].shape[0] == LENGTHS[2]
        with pytest.raises(ConversionError, match=r"file-000\.parquet: episode 3: the file holds no rows"):
            source.read("episode_000003")
        assert source.read("episode_000004")["actions"].shape[0] == LENGTHS[4]
    finally:
        source.close()


def test_damaged_and_unfit_data_files_are_named(per_episode: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(per_episode, tmp_path / "damaged")
    (damaged / DATA).write_bytes(b"PAR1 not parquet at all PAR1")
    with pytest.raises(ConversionError, match=r"file-000\.parquet: not readable parquet"):
        LeRobotSource(damaged, SourceOptions(images=False)).read("episode_000000")
    unfit = shutil.copytree(per_episode, tmp_path / "unfit")
    table = pq.read_table(per_episode / DATA)
    pq.write_table(table.drop_columns(["episode_index"]), unfit / DATA)
    with pytest.raises(ConversionError, match=r"file-000\.parquet: no episode_index column"):
        LeRobotSource(unfit, SourceOptions()).read("episode_000000")
