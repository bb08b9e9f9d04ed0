"""log_path: a .ndjson or .jsonl file, or a folder; anything else is refused with what it takes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

from kinodb.infer import InferError, Runner, load_model, resolve_log_path

TAKES = "log_path takes a .ndjson or .jsonl file (appended to), or a folder (created if missing)"


def test_a_jsonl_log_path_is_the_log_file(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    log = tmp_path / "run.jsonl"
    for seed in (1, 2):  # appended to, as a .ndjson file is
        stats = Runner(load_model(built.path), Served(built, seed).provider, rate_hz=2000, max_steps=7,
                       log_path=log).run()  # fmt: skip
        assert stats["log_path"] == str(log) and stats["log_lines"] == 7
    assert log.is_file()
    assert [json.loads(line)["step_id"] for line in log.read_text().splitlines()] == [*range(7), *range(7)]


def test_other_files_and_folders_are_refused_with_what_log_path_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "run.json"
    named.write_text("notes\n")
    with pytest.raises(InferError) as err:
        resolve_log_path(named)
    assert f"log_path {named} is a file, not a folder, and not named .ndjson or .jsonl; {TAKES}" in str(
        err.value
    )
    assert named.read_text() == "notes\n"
    folder = tmp_path / "old.ndjson"
    folder.mkdir()
    with pytest.raises(
        InferError, match=re.escape(f"log_path {folder} is a folder, not a log file; {TAKES}")
    ):
        resolve_log_path(folder)
    under_a_file = named / "logs"
    with pytest.raises(InferError) as err:
        resolve_log_path(under_a_file)
    assert f"log_path {under_a_file}: {named} is a file, not a folder; {TAKES}" in str(err.value)
    with pytest.raises(InferError, match=re.escape(f"{named} is a file, not a folder; {TAKES}")):
        resolve_log_path(named / "deeper" / "run.ndjson")
    monkeypatch.setenv("KINFER_LOG_PATH", str(named))
    with pytest.raises(InferError, match=re.escape(f"$KINFER_LOG_PATH {named} is a file, not a folder")):
        resolve_log_path(None)
    monkeypatch.setenv("KINFER_LOG_PATH", str(tmp_path / "logs"))
    monkeypatch.setenv("KINFER_LOG_UUID", "abc")
    assert resolve_log_path(None) == str(tmp_path / "logs" / "abc.ndjson")
    assert resolve_log_path(tmp_path / "dir") == str(tmp_path / "dir" / "abc.ndjson")


def test_a_log_file_that_cannot_be_opened_is_refused_before_the_run(
    make_package: MakePackage, tmp_path: Path
) -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc, where no file can be created")
    built = make_package()
    served = Served(built, 1)
    runner = Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=5,
                    log_path="/proc/kinodb-test.ndjson")  # fmt: skip
    with pytest.raises(InferError) as err:
        runner.run()
    assert "log_path /proc/kinodb-test.ndjson: cannot open it for appending (" in str(err.value)
    assert TAKES in str(err.value)
    assert not served.actions  # refused before any action was sent
