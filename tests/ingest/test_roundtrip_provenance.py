"""An ingest of a kinodb export moves each episode's provenance on, as a merge does: the
export just read becomes ``source_file``/``source_episode``, and the pair the episode held
becomes ``origin_file``/``origin_episode`` unless it had those already."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import export

pytest.importorskip("h5py")
from kinodb.ingest import ingest

_NO_LEROBOT = not all(importlib.util.find_spec(m) for m in ("pyarrow", "av"))
FORMATS = ["hdf5", pytest.param("lerobot", marks=pytest.mark.skipif(
    _NO_LEROBOT, reason="the lerobot export needs pyarrow and PyAV (pip install 'kinodb[lerobot]')"))]  # fmt: skip
KEYS = ("source_file", "source_episode", "origin_file", "origin_episode")


def _write(path: Path, embodiment: str, episodes: int = 2) -> Path:
    with kinodb.Writer(path) as w:
        for _ in range(episodes):
            w.add_episode(actions=np.zeros((3, 2), np.float32), embodiment=embodiment, fps=10.0)
    return path


def _provenance(path: Path) -> list[dict[str, Any]]:
    with kinodb.open(path) as db:
        return [{k: db.read_meta(i).get(k) for k in KEYS} for i in range(len(db))]


def _export_and_ingest(src: Path, tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    out = tmp_path / ("ab.hdf5" if fmt == "hdf5" else "ab_lerobot")
    export(src, out, format=fmt)
    back = tmp_path / "back.kdb"
    ingest(out, back, format=fmt)
    return out, back


def _names(fmt: str) -> list[str]:
    return [f"demo_{k}" for k in range(3)] if fmt == "hdf5" else [f"episode_{k:06d}" for k in range(3)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_merged_files_origins_survive_export_and_ingest(tmp_path: Path, fmt: str) -> None:
    a, b = _write(tmp_path / "a.kdb", "franka", 2), _write(tmp_path / "b.kdb", "widowx", 1)
    merged = tmp_path / "ab.kdb"
    kinodb.merge([a, b], merged)
    out, back = _export_and_ingest(merged, tmp_path, fmt)
    got = _provenance(back)
    assert [p["source_file"] for p in got] == [str(out)] * 3
    assert [p["source_episode"] for p in got] == _names(fmt)
    assert [(p["origin_file"], p["origin_episode"]) for p in got] == [(str(a), 0), (str(a), 1), (str(b), 0)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_origin_already_held_is_kept(tmp_path: Path, fmt: str) -> None:
    a, b = _write(tmp_path / "a.kdb", "franka", 2), _write(tmp_path / "b.kdb", "widowx", 1)
    kinodb.merge([a, b], tmp_path / "ab.kdb")
    kinodb.merge([tmp_path / "ab.kdb"], tmp_path / "ab2.kdb")  # origin_* are a.kdb's and b.kdb's now
    _, back = _export_and_ingest(tmp_path / "ab2.kdb", tmp_path, fmt)
    got = _provenance(back)
    assert [(p["origin_file"], p["origin_episode"]) for p in got] == [(str(a), 0), (str(a), 1), (str(b), 0)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_episodes_without_provenance_gain_no_origin(tmp_path: Path, fmt: str) -> None:
    src = _write(tmp_path / "src.kdb", "franka", 3)  # written directly: no source_file
    out, back = _export_and_ingest(src, tmp_path, fmt)
    for p in _provenance(back):
        assert p["source_file"] == str(out) and p["origin_file"] is None and p["origin_episode"] is None
    with kinodb.open(back) as db:
        assert "origin_file" not in db.read_meta(0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_episodes_own_source_episode_survives_export_and_ingest(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "own.kdb"
    with kinodb.Writer(src) as w:
        for run in ("run_17", "run_18"):  # the user's own run ids, under a name kinodb also uses
            w.add_episode(actions=np.zeros((3, 2), np.float32), fps=10.0, extra={"source_episode": run})
        w.add_episode(actions=np.zeros((3, 2), np.float32), fps=10.0,
                      extra={"source_episode": "run_19", "origin_file": "rig.bag"})  # fmt: skip
    out, back = _export_and_ingest(src, tmp_path, fmt)
    with kinodb.open(back) as db:
        metas = [db.read_meta(i) for i in range(len(db))]
    assert [m["source_file"] for m in metas] == [str(out)] * 3
    assert [m.get("origin_episode") for m in metas[:2]] == ["run_17", "run_18"]
    assert "origin_file" not in metas[0]
    assert metas[2]["origin_file"] == "rig.bag" and metas[2]["pre_merge_source_episode"] == "run_19"
