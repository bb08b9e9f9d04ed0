"""Helpers of the in-place merge and upgrade race tests: small files, changes another
writer makes to them, and a hook that makes such a change at the worst moment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import kinodb

Change = Callable[[Path], None]


def three_episodes(path: Path) -> None:
    with kinodb.Writer(path, mode="w") as w:
        for i in range(3):
            w.add_episode(actions=np.full((2, 2), i, np.float32))


def append_here(path: Path) -> None:
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.full((2, 2), 99, np.float32))


def append_in_another_process(path: Path) -> None:
    code = (
        "import sys, numpy as np, kinodb\n"
        "with kinodb.Writer(sys.argv[1], mode='a') as w:\n"
        "    w.add_episode(actions=np.full((2, 2), 99, np.float32))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def replace_here(path: Path) -> None:
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.full((5, 2), 7, np.float32))


def firsts(path: Path) -> list[float]:
    """The first action value of each episode of ``path``."""
    with kinodb.open(path) as db:
        return [float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))]


def before_output_writer(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType
) -> Callable[[Change, Path], None]:
    """``arm(change, path)``: run ``change(path)`` once ``module`` (merge or upgrade) has
    opened its inputs, just before it creates its output Writer (the moment an unguarded
    in-place rewrite would lose the change)."""

    def arm(change: Change, path: Path) -> None:
        real = kinodb.Writer
        done: list[bool] = []

        def writer(*args: Any, **kwargs: Any) -> Any:
            if not done:
                done.append(True)
                change(path)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "Writer", writer)

    return arm
