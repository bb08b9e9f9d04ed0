"""Fixtures shared by the torch dataset tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from _factories import LOWDIM_LENGTHS, write_episodes


@pytest.fixture
def lowdim(tmp_path: Path) -> Path:
    """``low.kdb``: episodes of `LOWDIM_LENGTHS` frames, states and actions only."""
    path = tmp_path / "low.kdb"
    write_episodes(path, LOWDIM_LENGTHS)
    return path
