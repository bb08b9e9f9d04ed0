"""An ingest whose source holds an array in another dtype in some episodes says so once,
with the ingest's own fix (``dtype=`` / ``--dtype``), not the Writer's."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.ingest import ingest

h5py = pytest.importorskip("h5py")

from test_hdf5 import write_robomimic  # noqa: E402  (needs h5py)


def _float32_actions_first(f: Any) -> None:
    for name in ("demo_0", "demo_1"):  # demo_2 keeps float64 actions
        g = f["data"][name]
        actions = g["actions"][()].astype(np.float32)
        del g["actions"]
        g["actions"] = actions


def test_drift_is_said_once_in_the_ingests_words(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_robomimic(tmp_path / "mixed.hdf5", demos=3, mutate=_float32_actions_first)
    out = tmp_path / "mixed.kdb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Writer warning pointing into kinodb
        with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
            ingest(src, out, images=False)
    said = [r.getMessage() for r in caplog.records if "earlier episodes hold it" in r.getMessage()]
    assert said == [
        f"{out}: episode 2 holds 'actions' as float64, but the file's earlier episodes hold it as float32; "
        "Database.gather, frame windows and kino stats need one dtype per array in a file: ingest again with "
        "dtype='float32' to store floating arrays as float32 (said once per array)"
    ]
    with kinodb.open(out) as db:
        assert [db.read_array(i, "actions").dtype.name for i in range(3)] == ["float32", "float32", "float64"]
    again = tmp_path / "one.kdb"
    ingest(src, again, images=False, dtype="float32")  # the fix it names
    with kinodb.open(again) as db:
        assert {db.read_array(i, "actions").dtype.name for i in range(3)} == {"float32"}


def test_the_command_line_names_the_option(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "mixed.hdf5", demos=3, mutate=_float32_actions_first)
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "ingest", str(src), "-o", str(tmp_path / "m.kdb"),
         "--no-images", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "earlier episodes hold it" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "ingest again with --dtype float32" in lines[0]
