"""Fixtures of the policy-runtime tests; the packages they build are in `_kinfer_packages`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the infer extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the infer extra (onnx) is not installed")

from _kinfer_packages import MakePackage, package_maker


@pytest.fixture
def make_package(tmp_path: Path) -> MakePackage:
    """Build a package of a kinfer generation: "0.6", "0.5", "0.4", "0.4-legacy" or "onnx"."""
    return package_maker(tmp_path)


@pytest.fixture
def kino(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``kino``'s ``main`` with the infer subcommand registered."""
    from kinodb._cli import infer as infer_cli
    from kinodb._cli import main as cli

    if infer_cli not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, infer_cli))
    return lambda *argv: cli.main([str(a) for a in argv])
