"""Overwrite replaces an earlier export only when nothing was added to it, at any level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_export_paths import _snapshot

from kinodb.export import export

pytest.importorskip("pyarrow")
pytest.importorskip("av")

CAMERAS = {"front": (16, 16, 3), "wrist": (16, 16, 3)}

# Entries a person may add beneath an earlier export's top level, per format, and the
# entry the refusal names (the topmost one the export did not write).
ADDED = {
    "numpy": [
        ("episode_000000/labels.csv", "episode_000000/labels.csv"),
        ("episode_000001/extra.npy", "episode_000001/extra.npy"),
        ("episode_000000/images/front/notes.txt", "episode_000000/images/front/notes.txt"),
        ("episode_000000/images/side/000000.png", "episode_000000/images/side/"),
        ("episode_000000/sub/", "episode_000000/sub/"),
        ("episode_000005/meta.json", "episode_000005/meta.json"),  # an episode folder no export wrote
    ],
    "lerobot": [
        ("meta/NOTES.md", "meta/NOTES.md"),
        ("meta/episodes/chunk-000/file-000.csv", "meta/episodes/chunk-000/file-000.csv"),
        ("data/chunk-000/notes.txt", "data/chunk-000/notes.txt"),
        ("data/extra/", "data/extra/"),
        (
            "videos/observation.images.extra_cam/chunk-000/file-000.mp4",
            "videos/observation.images.extra_cam/",
        ),
        (
            "videos/observation.images.front/chunk-000/preview.gif",
            "videos/observation.images.front/chunk-000/preview.gif",
        ),
    ],
}


def _add(out: Path, rel: str) -> None:
    path = out / rel
    if rel.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")


@pytest.mark.parametrize(
    ("fmt", "rel", "shown"), [(fmt, *added) for fmt, rels in ADDED.items() for added in rels]
)
def test_an_entry_added_beneath_an_earlier_export_keeps_it(
    make_kdb: Any, tmp_path: Path, fmt: str, rel: str, shown: str
) -> None:
    src, _ = make_kdb(3, cameras=CAMERAS, image_codec="png", fps=10.0)
    out = tmp_path / "out"
    export(src, out, format=fmt)
    _add(out, rel)
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError) as exc:
        export(src, out, format=fmt, overwrite=True)
    assert f"an earlier kinodb {fmt} export holding entries the export did not write ({shown})" in str(
        exc.value
    )
    assert "which an export does not replace" in str(exc.value)
    assert _snapshot(tmp_path) == before


def test_the_first_entries_are_named(make_kdb: Any, tmp_path: Path) -> None:
    src, _ = make_kdb(2, cameras=CAMERAS, image_codec="png", fps=10.0)
    out = tmp_path / "out"
    export(src, out, format="lerobot")
    for rel in ("meta/a.md", "meta/b.md", "meta/c.md", "meta/d.md", "meta/e.md"):
        _add(out, rel)
    with pytest.raises(
        FileExistsError, match=r"did not write \(meta/a\.md, meta/b\.md, meta/c\.md, \.\.\.\)"
    ):
        export(src, out, format="lerobot", overwrite=True)


@pytest.mark.parametrize("fmt", ["numpy", "json", "lerobot"])
def test_an_earlier_export_as_written_is_replaced(make_kdb: Any, tmp_path: Path, fmt: str) -> None:
    src, _ = make_kdb(3, cameras=CAMERAS, image_codec="png", fps=10.0)
    out = tmp_path / "out"
    export(src, out, format=fmt)
    inner = next(p for p in sorted(out.rglob("*")) if p.is_dir()) if fmt != "json" else out
    (inner / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # a file browser's own file, at any level
    assert export(src, out, format=fmt, overwrite=True, filter="episode_id = 1").episodes == 1
    assert not (inner / ".DS_Store").exists()


def test_raw_and_images_as_image_exports_are_replaced(make_kdb: Any, tmp_path: Path) -> None:
    src, _ = make_kdb(
        2, cameras={"depth": (8, 8, 1), "front": (16, 16, 3)}, fps=10.0
    )  # raw frames: .npy files
    export(src, tmp_path / "np", format="numpy")
    assert export(src, tmp_path / "np", format="numpy", overwrite=True).episodes == 2
    export(src, tmp_path / "lr", format="lerobot", images_as="image")
    assert export(src, tmp_path / "lr", format="lerobot", overwrite=True, images_as="image").episodes == 2


def test_a_symbolic_link_inside_an_earlier_export_keeps_it(make_kdb: Any, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format="numpy")
    (tmp_path / "elsewhere.npy").write_text("mine")
    (out / "episode_000000" / "actions.npy").unlink()
    (out / "episode_000000" / "actions.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(FileExistsError, match=r"did not write \(episode_000000/actions\.npy\)"):
        export(src, out, format="numpy", overwrite=True)
    assert (tmp_path / "elsewhere.npy").read_text() == "mine"
