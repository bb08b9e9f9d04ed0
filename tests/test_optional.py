"""`kinodb._optional.require`: missing, broken and shadowed optional dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kinodb
from kinodb import _optional
from kinodb._optional import require
from kinodb.errors import MissingExtraError


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("kinodbtest_")]:
        del sys.modules[name]


def _package(site: Path, name: str, init: str | None) -> None:
    (site / name).mkdir()
    if init is not None:
        (site / name / "__init__.py").write_text(init)


def test_a_missing_module_names_the_extra(site: Path) -> None:
    with pytest.raises(
        MissingExtraError, match=r"kinodbtest_absent is required .* not installed; .*kinodb\[x\]"
    ):
        require("kinodbtest_absent", extra="x")
    with pytest.raises(MissingExtraError, match="not installed"):
        require("kinodbtest_absent.sub", extra="x")


def test_an_installed_module_that_fails_to_import_says_so(site: Path) -> None:
    _package(site, "kinodbtest_abi", "from kinodbtest_numpy_abi import _ARRAY_API\n")
    _package(site, "kinodbtest_numpy_abi", "raise ImportError('_ARRAY_API not found')\n")
    with pytest.raises(MissingExtraError) as err:
        require("kinodbtest_abi", extra="lerobot")
    msg = str(err.value)
    assert "kinodbtest_abi is installed but fails to import (ImportError: _ARRAY_API not found)" in msg
    assert "not installed" not in msg and "--force-reinstall 'kinodbtest_abi'" in msg
    # A module of its own that it cannot find is a broken install too, not a missing extra.
    _package(site, "kinodbtest_dep", "import kinodbtest_gone\n")
    with pytest.raises(
        MissingExtraError, match=r"kinodbtest_dep is installed but fails .*No module named 'kinodbtest_gone'"
    ):
        require("kinodbtest_dep", extra="hdf5")
    _package(site, "kinodbtest_size", "raise ValueError('numpy.dtype size changed')\n")
    with pytest.raises(MissingExtraError, match=r"fails to import \(ValueError: numpy.dtype size changed\)"):
        require("kinodbtest_size", extra="hdf5")


def test_a_folder_named_like_the_module_is_not_the_module(site: Path) -> None:
    _package(site, "kinodbtest_torch", None)  # a namespace package: a folder of that name
    with pytest.raises(
        MissingExtraError, match=r"not installed \(only a folder of that name was found: .*kinodbtest_torch\)"
    ):
        require("kinodbtest_torch", extra="torch")


def test_a_working_module_is_returned(site: Path) -> None:
    _package(site, "kinodbtest_ok", "VALUE = 3\n")
    assert require("kinodbtest_ok", extra="x").VALUE == 3
    assert (
        require("google.protobuf", extra="serve").__name__ == "google.protobuf"
    )  # a namespace parent is fine


def test_the_reinstall_advice_names_the_distribution_pip_installs(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package(site, "kinodbtest_imp", "raise ImportError('undefined symbol: _ZN3foo')\n")
    info = site / "kinodbtest_imp_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kinodbtest-imp-dist\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("kinodbtest_imp\n")
    with pytest.raises(MissingExtraError) as err:
        require("kinodbtest_imp", extra="serve")
    assert "pip install --upgrade --force-reinstall 'kinodbtest-imp-dist'" in str(err.value)
    # Without metadata to go by (google holds several distributions), a table of kinodb's own.
    monkeypatch.setattr("importlib.metadata.packages_distributions", dict)
    names = ("grpc", "google.protobuf", "PIL", "cv2", "yaml", "h5py", "onnxruntime", "kinodbtest_imp")
    assert [_optional._distribution(m) for m in names] == [
        "grpcio", "protobuf", "pillow", "opencv-python-headless", "pyyaml", "h5py", "onnxruntime", "kinodbtest_imp",
    ]  # fmt: skip


def _require_in(cwd: Path, module: str) -> str:
    """The error of ``require(module)`` in a fresh Python run in ``cwd`` (first on its sys.path)."""
    src = str(Path(kinodb.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = f"from kinodb._optional import require\nrequire({module!r}, extra='x')"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    return run.stderr.strip().splitlines()[-1]


def test_a_local_file_named_like_a_standard_module_is_named(tmp_path: Path) -> None:
    (tmp_path / "colorsys.py").write_text("x = 1\n")
    (tmp_path / "kinodbtest_needs").mkdir()
    (tmp_path / "kinodbtest_needs" / "__init__.py").write_text("from colorsys import hls_to_rgb\n")
    line = _require_in(tmp_path, "kinodbtest_needs")
    assert f"{tmp_path / 'colorsys.py'} is imported as 'colorsys' in place of the standard library's" in line
    assert line.endswith(f"rename {tmp_path / 'colorsys.py'}") and "force-reinstall" not in line


def test_a_local_module_that_is_no_package_is_named(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    (tmp_path / "concurrent.py").write_text("x = 1\n")
    line = _require_in(tmp_path, "grpc")
    assert "'concurrent' is not a package" in line
    assert (
        f"{tmp_path / 'concurrent.py'} is imported as 'concurrent' in place of the standard library's" in line
    )


def test_a_local_package_named_like_an_installed_one_is_named(tmp_path: Path) -> None:
    pytest.importorskip("google.protobuf")
    (tmp_path / "google" / "protobuf").mkdir(parents=True)
    (tmp_path / "google" / "protobuf" / "__init__.py").write_text("raise ImportError('half a package')\n")
    line = _require_in(tmp_path, "google.protobuf")
    assert (
        f"{tmp_path / 'google' / 'protobuf'} is imported as 'google.protobuf' in place of the installed"
        in line
    )
