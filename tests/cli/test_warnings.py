"""Python warnings raised while a `kino` command runs print as one ``warning: ...`` line."""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from _legacy_encoder import encode, encoded_frames, random_episode, raw_frames
from kinodb._cli import info as info_cli
from kinodb._cli.main import main


@pytest.fixture
def miscounted(tmp_path: Path) -> Path:
    """A 0.1 file whose header says 99 episodes; its index holds 1 of 3 frames."""
    data = bytearray(encode([random_episode(np.random.default_rng(0), 3, 2, 2)]))
    struct.pack_into("<Q", data, 8, 99)
    path = tmp_path / "old.kdb"
    path.write_bytes(bytes(data))
    return path


def _said(path: Path) -> str:
    return (
        f"warning: {path}: the header at byte offset 8 says 99 episodes and 3 frames, the index has 1 episode "
        "and 3 frames; reading the index's (kino upgrade writes a file whose counts agree)"
    )


def test_a_real_kino_process_prints_one_warning_line(miscounted: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "info", str(miscounted)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [_said(miscounted)]
    assert "episodes: 1, frames: 3" in run.stdout


@pytest.mark.parametrize("command", [["info"], ["schema"], ["query", "num_frames > 0"]])
def test_every_command_prints_the_reader_warning_as_one_line(
    miscounted: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command[0], str(miscounted), *command[1:]]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [_said(miscounted)]
    assert "UserWarning" not in err and ".py:" not in err


def test_merge_prints_the_reader_warning_once(
    miscounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["merge", str(miscounted), "-o", str(tmp_path / "new.kdb")]) == 0
    assert capsys.readouterr().err.splitlines() == [_said(miscounted)]


def test_validate_lists_the_count_mismatch_as_a_warning_item(
    miscounted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(miscounted)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"[warning] {miscounted}" not in out  # the report names the file once, at the end
    assert "[warning] the header at byte offset 8 says 99 episodes and 3 frames" in out
    assert out.rstrip().endswith("OK (0 errors, 2 warnings)")


def test_a_multi_line_warning_is_one_line_and_the_display_is_restored(
    miscounted: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(args: argparse.Namespace) -> int:
        warnings.warn("first line\n   second line", UserWarning, stacklevel=1)
        return 0

    parser_register = info_cli.register

    def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        parser_register(sub)
        sub.choices["info"].set_defaults(run=run)

    monkeypatch.setattr(info_cli, "register", register)
    before = warnings.showwarning
    assert main(["info", str(miscounted)]) == 0
    assert capsys.readouterr().err == "warning: first line second line\n"
    assert warnings.showwarning is before


def test_upgrade_still_prints_each_warning_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    ep = random_episode(rng, 3, 1, 1)
    ep.images = {"cam": [encoded_frames(frames[:1], "JPEG", 90)[0], *raw_frames(frames[1:])]}
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([ep]))
    assert main(["upgrade", str(old), str(new)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {old}: 1 thing could not be kept as stored")
