"""`kinodb._optional.require`: missing, broken and shadowed optional dependencies."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
