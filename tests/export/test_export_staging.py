"""Outputs appear whole or not at all; existing outputs need overwrite; filters select."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kinodb.errors import ConversionError, QuerySyntaxError
from kinodb.export import _numpy_dir, export, hdf5


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _fail_on_third(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    real, calls = getattr(module, name), []

    def flaky(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(module, name, flaky)


@pytest.mark.parametrize(
    ("fmt", "module", "name"), [("numpy", _numpy_dir, "write_episode"), ("hdf5", hdf5, "_write_demo")]
)
def test_a_failure_mid_export_leaves_nothing(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, module: Any, name: str
) -> None:
    src, _ = make_kdb(5)
    before = _listing(tmp_path)
    _fail_on_third(monkeypatch, module, name)
    with pytest.raises(OSError, match="No space"):
        export(src, tmp_path / "out", format=fmt)
    assert _listing(tmp_path) == before  # no output, no temporary left


@pytest.mark.parametrize("fmt", ["numpy", "json", "hdf5"])
def test_existing_output_needs_overwrite(make_kdb, tmp_path: Path, fmt: str) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format=fmt)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(src, out, format=fmt)
    report = export(src, out, format=fmt, overwrite=True, filter="episode_id = 1")
    assert report.episodes == 1 and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb", "out"]


def test_a_failed_overwrite_keeps_the_old_output(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(5)
    out = tmp_path / "out"
    export(src, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fail_on_third(monkeypatch, _numpy_dir, "write_episode")
    with pytest.raises(OSError):
        export(src, out, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb", "out"]


def test_overwrite_replaces_a_folder_export_with_a_file_but_no_file_with_a_folder(
    make_kdb, tmp_path: Path
) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format="numpy")
    export(src, out, format="hdf5", overwrite=True)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=r"is a file \(this format writes a folder\)"):
        export(src, out, format="numpy", overwrite=True)
    assert out.read_bytes() == before
    notes = tmp_path / "notes"
    notes.write_text("old")
    with pytest.raises(FileExistsError, match="not an earlier kinodb hdf5 or zarr export"):
        export(src, notes, format="hdf5", overwrite=True)
    assert notes.read_text() == "old"


def test_stale_temporaries_of_dead_exports_are_removed(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    stale = tmp_path / ".out.999999999.abcd1234.tmp"  # no such process
    (stale / "episode_000000").mkdir(parents=True)
    live = tmp_path / f".out.{os.getpid()}.abcd1234.tmp"  # a concurrent export in this process
    live.mkdir()
    export(src, tmp_path / "out")
    assert not stale.exists() and live.exists()


def test_missing_parent_folder_is_reported(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    with pytest.raises(FileNotFoundError, match="create it first"):
        export(src, tmp_path / "no" / "out")


def test_filters(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(6)
    with pytest.raises(ConversionError, match="no episodes match"):
        export(src, tmp_path / "a", filter="num_frames > 1000")
    with pytest.raises(QuerySyntaxError):
        export(src, tmp_path / "a", filter="success = = true")
    assert not (tmp_path / "a").exists()
    report = export(src, tmp_path / "a", filter="scene = 'sim'")
    assert report.episodes == 3 and report.frames == 18
    folders = sorted(p.name for p in (tmp_path / "a").glob("episode_*"))
    assert folders == ["episode_000000", "episode_000001", "episode_000002"]  # numbered in export order
    records = [json.loads((tmp_path / "a" / d / "meta.json").read_text()) for d in folders]
    assert [r["position"] for r in records] == [1, 3, 5]  # each names its source position
    assert {r["meta"]["scene"] for r in records} == {"sim"}


def test_unknown_format_is_a_usage_error(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    with pytest.raises(ValueError, match="numpy, json, hdf5"):
        export(src, tmp_path / "a", format="parquet")
    with pytest.raises(ValueError, match="is the input file"):
        export(src, src, format="hdf5", overwrite=True)
    assert src.read_bytes()[:4] != b"\x89HDF"


@pytest.mark.parametrize("fmt", ["numpy", "hdf5"])
def test_an_interrupt_as_soon_as_the_staging_output_exists_leaves_nothing(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Ctrl-C (or SIGHUP, SIGTERM) that lands right after the staging folder or file is made,
    before the export writes into it."""
    from kinodb.export import _base

    src, _ = make_kdb(2)
    before = _listing(tmp_path)
    mkdir, os_open = os.mkdir, os.open
    interrupted: list[str] = []

    def made_then_interrupted(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            out = real(path, *args, **kwargs)
            if os.path.basename(str(path)).startswith(".out") and not interrupted:
                interrupted.append(str(path))
                if real is os_open:
                    os.close(out)
                raise KeyboardInterrupt  # the signal's handler ran as the call returned
            return out

        return call

    monkeypatch.setattr(_base.os, "mkdir", made_then_interrupted(mkdir))
    monkeypatch.setattr(_base.os, "open", made_then_interrupted(os_open))
    with pytest.raises(KeyboardInterrupt):
        export(src, tmp_path / "out", format=fmt)
    monkeypatch.undo()
    assert interrupted and _listing(tmp_path) == before
