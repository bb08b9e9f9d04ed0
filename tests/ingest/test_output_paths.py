"""An output that would replace the source, or a file of it, is refused, ``--force`` or not."""

from __future__ import annotations

import os
import re
from pathlib import Path

import _lerobot_fixtures as F
import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.ingest import ingest


@pytest.fixture
def lerobot(tmp_path: Path) -> Path:
    """A LeRobot v2.0 dataset (parquet with PNG frames) as openpi writes it."""
    return F.write_openpi_libero(tmp_path / "libero", F.make_openpi_libero(np.random.default_rng(5), [6, 4]))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _parquet(root: Path) -> Path:
    return root / "data" / "chunk-000" / "episode_000000.parquet"


@pytest.mark.parametrize("inside", ["meta/info.json", "data/chunk-000/episode_000001.parquet"])
def test_force_does_not_replace_a_file_of_the_source_folder(
    lerobot: Path, inside: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _files(lerobot)
    out = lerobot / inside
    assert main(["ingest", str(lerobot), "-o", str(out), "--force", "-q"]) == 2
    assert capsys.readouterr().err == (
        f"kino ingest: error: the output {out} is a file of the source {lerobot}: --force would replace it and "
        f"break the source; write the output elsewhere, e.g. {lerobot}.kdb\n"
    )
    with pytest.raises(ValueError, match=r"is a file of the source .*: overwrite=True would replace it"):
        ingest(lerobot, out, overwrite=True)
    assert _files(lerobot) == before  # no temporary output left in it either
    assert ingest(lerobot, lerobot.parent / "again.kdb").episodes == 2  # the source still reads


def test_a_link_to_a_source_file_is_refused_hard_or_symbolic(lerobot: Path, tmp_path: Path) -> None:
    before = _files(lerobot)
    hard, soft = tmp_path / "hard.parquet", tmp_path / "soft.parquet"
    os.link(_parquet(lerobot), hard)
    soft.symlink_to(_parquet(lerobot))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the output {hard} is {_parquet(lerobot)} of the source {lerobot} under another name (a link)"
        ),
    ):
        ingest(lerobot, hard, overwrite=True)
    with pytest.raises(ValueError, match=re.escape(f"the output {soft} is a file of the source {lerobot}")):
        ingest(lerobot, soft, overwrite=True)
    assert _files(lerobot) == before and hard.read_bytes() == _parquet(lerobot).read_bytes()


def test_a_hard_link_to_a_source_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "demo.hdf5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data/demo_0/actions", data=np.zeros((3, 2)))
    before = src.read_bytes()
    link = tmp_path / "other_name.hdf5"
    os.link(src, link)
    assert main(["ingest", str(src), "-o", str(link), "--force", "-q"]) == 2
    assert capsys.readouterr().err == (
        f"kino ingest: error: the output {link} is the source {src} under another name (a link): --force would "
        f"replace it and break the source; write the output elsewhere, e.g. {tmp_path / 'demo.kdb'}\n"
    )
    assert src.read_bytes() == before and os.path.samefile(src, link)


def test_a_new_file_in_the_source_folder_is_allowed_and_replaced_with_force(lerobot: Path) -> None:
    out = lerobot / "libero.kdb"
    assert ingest(lerobot, out).episodes == 2
    first = out.stat().st_ino
    assert (
        ingest(lerobot, out, overwrite=True, episodes=[1]).episodes == 1
    )  # an earlier output: not the source's
    assert out.stat().st_ino != first
    with kinodb.open(out) as db:
        assert len(db) == 1


def test_force_still_replaces_any_other_file(lerobot: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("not a dataset")
    assert ingest(lerobot, out, overwrite=True).episodes == 2
    with kinodb.open(out) as db:
        assert len(db) == 2
