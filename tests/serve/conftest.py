"""Fixtures of the serving tests: data files and real ``kino-serve`` processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import numbered_episode
from _server_proc import ServerProcess


def _episode(k: int) -> dict[str, Any]:
    ep = numbered_episode(k)
    rng = np.random.default_rng(1000 + k)
    T = len(ep["actions"])
    ep["images"]["wrist"] = rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8)
    ep["rewards"] = rng.uniform(0, 1, T).astype(np.float32)
    ep["embodiment"] = ("franka", "widowx")[k % 2]
    ep["success"] = (True, False, None)[k % 3]
    return ep


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``main.kdb`` (20 episodes of 8-14 frames, JPEG cameras ``cam`` and ``wrist``) and
    ``other.kdb`` (6 episodes, raw cameras), the same schema."""
    root = tmp_path_factory.mktemp("serve")
    with kinodb.Writer(root / "main.kdb", image_codec="jpeg") as w:
        for k in range(20):
            w.add_episode(**_episode(k))
    with kinodb.Writer(root / "other.kdb", image_codec="raw") as w:
        for k in range(100, 106):
            w.add_episode(**_episode(k))
    return root


@pytest.fixture(scope="session")
def main_kdb(data_dir: Path) -> Path:
    return data_dir / "main.kdb"


@pytest.fixture(scope="session")
def other_kdb(data_dir: Path) -> Path:
    return data_dir / "other.kdb"


@pytest.fixture(scope="session")
def server(main_kdb: Path) -> Iterator[ServerProcess]:
    """One plaintext server over ``main.kdb`` (max batch 1024, seed 42)."""
    proc = ServerProcess([str(main_kdb), "--workers", "8"])
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="session")
def mixture_server(main_kdb: Path, other_kdb: Path) -> Iterator[ServerProcess]:
    """A server over the mixture ``main.kdb:3``, ``other.kdb:1``."""
    proc = ServerProcess(["--source", f"{main_kdb}:3", "--source", f"{other_kdb}:1"])
    yield proc
    assert proc.stop() == 0
