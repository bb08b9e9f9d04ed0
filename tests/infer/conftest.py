"""Fixtures of the policy-runtime tests; the packages they build are in `_kinfer_packages`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the infer extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the infer extra (onnx) is not installed")

from _kinfer_packages import MakePackage, package_maker


@pytest.fixture
def make_package(tmp_path: Path) -> MakePackage:
    """Build a package of a kinfer generation: "0.6", "0.5", "0.4", "0.4-legacy" or "onnx"."""
    return package_maker(tmp_path)
