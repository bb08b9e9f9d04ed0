"""The LeRobot export builds its Arrow data from NumPy buffers, never through pandas.

pyarrow converts NumPy and Python values (``pa.array``, ``Table.from_pylist``) through its
pandas shim, whose first use imports pandas: a slow import that also drops a Ctrl-C or
SIGTERM landing meanwhile. The export runs in a child process whose import system records
every attempt to import pandas; the table builders are checked against pyarrow's own
conversions, schema and bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kinodb
from _factories import smooth_frames
from kinodb.export import _lerobot_tables as tables

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("av")

# Installed first thing in the child: a finder that records (with the stack) and refuses
# every import of pandas. pyarrow swallows the ImportError and carries on, so the record,
# not a failure, tells that it tried.
_HOOK = """
import sys, traceback
class _NoPandas:
    record = sys.argv[1]
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            with open(self.record, "a", encoding="utf-8") as fh:
                fh.write(f"import {name}:\\n" + "".join(traceback.format_stack()) + "\\n")
            raise ImportError(f"{name} is refused in this process")
        return None
sys.meta_path.insert(0, _NoPandas())
del sys.argv[1]
"""

_EXPORT = (
    _HOOK
    + """
import json
from kinodb.export import export
for images_as in ("video", "image"):
    export(sys.argv[1], sys.argv[2] + "-" + images_as, format="lerobot", images_as=images_as)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "pyarrow", "av"))))
"""
)

_CLI = (
    _HOOK
    + """
from kinodb._cli.main import main
sys.exit(main(["export", sys.argv[1], "-o", sys.argv[2], "--format", "lerobot", "--images-as", "image"]))
"""
)


def _source(path: Path) -> Path:
    """Episodes with every kind of column: float, int and bool arrays of 1 to 3 dims, scalar
    rewards, per-frame tasks (a list of texts per episode row), a camera."""
    rng = np.random.default_rng(5)
    with kinodb.Writer(path, mode="w", image_codec="png") as w:
        for k, T in enumerate((5, 8)):
            w.add_episode(
                actions=rng.normal(size=(T, 3)).astype(np.float32),
                states=rng.normal(size=(T, 2)),
                rewards=rng.uniform(size=T).astype(np.float32),
                is_terminal=np.arange(T) == T - 1,
                images={"front": smooth_frames(rng, (T, 16, 24, 3))},
                extra_arrays={
                    "grid": rng.integers(-9, 9, size=(T, 2, 2, 3)).astype(np.int16),
                    "flag": np.arange(T) % 2 == 0,
                    "task_index": (np.arange(T) >= T // 2).astype(np.int64),
                },
                extra={"tasks": [f"reach {k}", "grasp"]},
                task="reach",
                fps=10.0,
            )
    return path


def _child_env() -> dict[str, str]:
    """The environment of a child that imports this very kinodb."""
    src = str(Path(kinodb.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _attempts(record: Path) -> str:
    return record.read_text(encoding="utf-8") if record.exists() else ""


def test_export_never_imports_pandas(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    record = tmp_path / "pandas-imports.txt"
    out = tmp_path / "lr"
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT, str(record), str(src), str(out)],
        capture_output=True, text=True, env=_child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _attempts(record) == "", _attempts(record)
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "pyarrow.parquet" in loaded and "av" in loaded  # the export did write with them
    assert not [m for m in loaded if m.split(".")[0] == "pandas"]
    for images_as in ("video", "image"):
        root = Path(f"{out}-{images_as}")
        data = pq.read_table(root / "data/chunk-000/file-000.parquet")
        assert data.num_rows == 13 and "observation.grid" in data.column_names
        episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
        assert episodes["tasks"].to_pylist() == [["reach 0", "grasp"], ["reach 1", "grasp"]]


def test_kino_export_never_imports_pandas(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.kdb")
    record = tmp_path / "pandas-imports.txt"
    done = subprocess.run(
        [sys.executable, "-c", _CLI, str(record), str(src), str(tmp_path / "lr")],
        capture_output=True, text=True, env=_child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _attempts(record) == "", _attempts(record)
    assert (tmp_path / "lr/meta/tasks.parquet").is_file()


# -- the table builders against pyarrow's own conversions ---------------------------------------


def _bits(table: Any) -> bytes:
    """A table's schema (with metadata) and every buffer, as the IPC stream writes them:
    equal bytes mean equal types and values, NaN payloads included."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return bytes(sink.getvalue().to_pybytes())


def _same(ours: Any, theirs: Any) -> None:
    a, b = pa.table({"x": ours}), pa.table({"x": theirs})
    assert a.schema.equals(b.schema), (a.schema, b.schema)
    assert _bits(a) == _bits(b)


_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
           "float16", "float32", "float64"]  # fmt: skip


@pytest.mark.parametrize("dtype", _DTYPES)
def test_numpy_array_matches_pa_array(dtype: str) -> None:
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(13, 3)) * 50).astype(dtype)
    if values.dtype.kind == "f":
        values[2, 1], values[5, 0] = np.nan, -np.inf
    _same(tables.numpy_array(values, pa), pa.array(values.reshape(-1)))
    _same(tables.numpy_array(values[1:12:2, 1], pa), pa.array(np.ascontiguousarray(values[1:12:2, 1])))


def test_numpy_array_copies_unaligned_and_big_endian_values() -> None:
    shifted = bytearray(b"\0" + np.arange(9, dtype="<f8").tobytes())
    odd = np.frombuffer(shifted, "<f8", offset=1)
    assert odd.ctypes.data % 8 != 0
    _same(tables.numpy_array(odd, pa), pa.array(np.arange(9, dtype="<f8")))
    big = np.arange(7, dtype=">i4")
    _same(tables.numpy_array(big, pa), pa.array(np.arange(7, dtype="<i4")))


@pytest.mark.parametrize("shape", [(1,), (4,), (2, 3), (2, 1, 2), (1, 2, 1, 2, 1)])
@pytest.mark.parametrize("dtype", ["bool", "uint8", "float32", "float64"])
def test_array_column_matches_the_conversion_it_replaces(shape: tuple[int, ...], dtype: str) -> None:
    values = (np.random.default_rng(2).normal(size=(7, *shape)) * 9).astype(dtype)
    feature = tables.Feature("x", "x", dtype, shape)
    flat = pa.array(values.reshape(-1))
    if shape == (1,):
        want = flat
    elif len(shape) == 1:
        want = pa.FixedSizeListArray.from_arrays(flat, shape[0])
    else:
        want = pa.array(values.tolist(), type=tables.arrow_type(feature, pa))
    ours = tables.array_column(values, feature, pa)
    assert ours.type == tables.arrow_type(feature, pa)
    _same(ours, want)


def test_binary_and_string_arrays_match_pa_array() -> None:
    blobs = [b"", b"\x00\xff" * 3, b"png", bytes(range(256))]
    _same(tables.binary_array(blobs, pa), pa.array(blobs, pa.binary()))
    texts = ["", "push the block", "caf\u00e9 \u2615", "\U0001f916"]
    _same(tables.string_array(texts, pa), pa.array(texts, pa.string()))
    _same(tables.string_array([], pa), pa.array([], pa.string()))


def test_image_column_splits_what_one_array_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [bytes([k]) * (3 + k) for k in range(6)]
    paths = [f"frame-{t:06d}.png" for t in range(6)]
    want = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(paths)], names=["bytes", "path"]
    )
    _same(tables.image_column(blobs, paths, pa), want)
    monkeypatch.setattr(tables, "_BINARY_LIMIT", 50)  # bytes and path: 20, 21, ... 25 bytes a frame
    column = tables.image_column(blobs, paths, pa)
    assert isinstance(column, pa.ChunkedArray) and [len(c) for c in column.chunks] == [2, 2, 2]
    assert column.type == want.type and column.to_pylist() == want.to_pylist()
    monkeypatch.setattr(tables, "_BINARY_LIMIT", 30)
    with pytest.raises(ValueError, match="do not fit one arrow array"):
        tables.binary_array(blobs, pa)


def test_tasks_table_is_what_pandas_writes() -> None:
    table = tables.tasks_table(["reach", "grasp"], pa)
    assert table["task_index"].to_pylist() == [0, 1]
    assert table["__index_level_0__"].to_pylist() == ["reach", "grasp"]
    assert table.to_pandas().index.tolist() == ["reach", "grasp"]  # read as LeRobot reads it


_STAT_DTYPES = st.sampled_from(["bool", "int16", "uint8", "int64", "float16", "float32", "float64"])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 4),
    shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
    dtype=_STAT_DTYPES,
    seed=st.integers(0, 2**16),
)
def test_rows_table_is_table_from_pylist(rows: int, shape: tuple[int, ...], dtype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    stats = (rng.normal(size=(rows, *shape)) * 100).astype(dtype)
    if stats.dtype.kind == "f":
        stats.reshape(-1)[rng.integers(0, stats.size)] = np.nan
    records = [
        {"episode_index": k, "tasks": [f"task {j}" for j in range(1 + k % 3)], "length": 10 * k,
         "videos/x/from_timestamp": k / 3, "stats/x/min": stats[k], "stats/x/count": np.array([k], np.int64)}
        for k in range(rows)
    ]  # fmt: skip
    as_python = [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in records]
    ours, theirs = tables.rows_table(records, pa), pa.Table.from_pylist(as_python)
    assert ours.schema.equals(theirs.schema, check_metadata=True)
    assert _bits(ours) == _bits(theirs)


def test_rows_table_keeps_unsigned_values_past_int64() -> None:
    big = np.array([2**63 + 5, 1], np.uint64)
    table = tables.rows_table([{"stats/x/max": big}], pa)
    assert table.schema.field("stats/x/max").type == pa.list_(pa.uint64())
    assert table["stats/x/max"].to_pylist() == [[2**63 + 5, 1]]
