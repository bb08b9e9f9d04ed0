"""A merge records how its inputs' camera frames stand (``image_orientation``): a file that
records none (written with `kinodb.Writer`) holds its frames as given, as an ingest without
``--flip-images`` does, so only frames turned upright on ingest beside frames that were not
make a merge ``mixed``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb

MIXED_WARNING = "the inputs' camera frames stand differently"


def _file(
    path: Path, orientation: str | None, *, cameras: bool = True, seed: int = 0, task: str = "t"
) -> Path:
    """Two episodes of ``task`` with a camera (unless not ``cameras``), recording ``orientation``
    (None: nothing)."""
    rng = np.random.default_rng(seed)
    metadata = {} if orientation is None else {"image_orientation": orientation}
    with kinodb.Writer(path, metadata=metadata) as w:
        for _ in range(2):
            images = {"front": rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)} if cameras else None
            w.add_episode(actions=rng.normal(size=(3, 2)).astype(np.float32), images=images, task=task)
    return path


def _orientation(path: Path) -> object:
    with kinodb.open(path) as db:
        return db.metadata().get("image_orientation", "(none)")


@pytest.mark.parametrize("order", [("as_stored", None), (None, "as_stored")])
def test_an_ingest_as_stored_and_a_file_written_directly_merge_as_stored(
    tmp_path: Path, order: tuple[str | None, str | None]
) -> None:
    inputs = [_file(tmp_path / f"in{k}.kdb", o, seed=k) for k, o in enumerate(order)]
    result = kinodb.merge(inputs, tmp_path / "m.kdb")
    assert not any(MIXED_WARNING in w for w in result.warnings), result.warnings
    assert _orientation(tmp_path / "m.kdb") == "as_stored"
    # Merged again with another file of frames as given, it stays as_stored.
    again = kinodb.merge([tmp_path / "m.kdb", _file(tmp_path / "d.kdb", None, seed=5)], tmp_path / "m2.kdb")
    assert not any(MIXED_WARNING in w for w in again.warnings)
    assert _orientation(tmp_path / "m2.kdb") == "as_stored"


def test_files_that_record_no_orientation_merge_without_one(tmp_path: Path) -> None:
    inputs = [_file(tmp_path / f"in{k}.kdb", None, seed=k) for k in range(2)]
    result = kinodb.merge(inputs, tmp_path / "m.kdb")
    assert not any(MIXED_WARNING in w for w in result.warnings)
    assert _orientation(tmp_path / "m.kdb") == "(none)"


@pytest.mark.parametrize("other", ["as_stored", None])
def test_frames_turned_upright_beside_frames_as_stored_are_mixed(tmp_path: Path, other: str | None) -> None:
    turned = _file(tmp_path / "turned.kdb", "rotated_180")
    result = kinodb.merge([turned, _file(tmp_path / "other.kdb", other, seed=1)], tmp_path / "m.kdb")
    (line,) = [w for w in result.warnings if MIXED_WARNING in w]
    assert line.endswith(
        "(some were turned upright on ingest with --flip-images, some not): the output records "
        "image_orientation 'mixed'"
    )
    assert _orientation(tmp_path / "m.kdb") == "mixed"


def test_only_inputs_with_cameras_and_kept_episodes_count(tmp_path: Path) -> None:
    turned = _file(tmp_path / "turned.kdb", "rotated_180", task="turned")
    plain = _file(tmp_path / "plain.kdb", None, cameras=False, seed=1)  # no frames to stand any way
    result = kinodb.merge([turned, plain], tmp_path / "m.kdb")
    assert not any(MIXED_WARNING in w for w in result.warnings)
    assert _orientation(tmp_path / "m.kdb") == "rotated_180"
    both = [turned, _file(tmp_path / "as_stored.kdb", "as_stored", seed=2)]
    kept = kinodb.merge(both, tmp_path / "f.kdb", filter="task = 'turned'")
    assert not any(MIXED_WARNING in w for w in kept.warnings)
    assert _orientation(tmp_path / "f.kdb") == "rotated_180"
