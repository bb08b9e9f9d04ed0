"""`kino validate --verbose` prints every check: what each covered, and what was skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import smooth_frames
from kinodb._cli.main import main


@pytest.fixture
def cams(tmp_path: Path) -> Path:
    path = tmp_path / "cams.kdb"
    rng = np.random.default_rng(11)
    with kinodb.Writer(path, image_codec="jpeg") as w:
        for _ in range(3):
            images = {cam: smooth_frames(rng, (5, 8, 8, 3)) for cam in ("front", "wrist")}
            w.add_episode(actions=rng.normal(size=(5, 2)).astype(np.float32), images=images)
    return path


def _out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_verbose_says_whether_frames_were_decoded(cams: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decoded = _out(["validate", "-v", str(cams)], capsys).splitlines()
    undecoded = _out(["validate", "-v", "--no-decode", str(cams)], capsys).splitlines()
    assert "[ok] 30 frames of 2 cameras decode to their recorded (H, W, C)" in decoded
    assert not any("[skipped]" in line for line in decoded)
    assert (
        "[skipped] frame decoding: 30 frames of 2 cameras not decoded (--no-decode, decode_images=False)"
        in undecoded
    )
    assert not any("decode to" in line for line in undecoded)
    assert [line for line in decoded if "decode" not in line] == [
        line for line in undecoded if "decode" not in line
    ]


def test_verbose_names_the_checksums_and_the_nan_scan(cams: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(["validate", "--verbose", str(cams)], capsys).splitlines()
    assert "[ok] 3 episode payload checksums match, every section inside its payload" in out
    assert any(line.startswith("[ok] no NaN or Inf in ") and line.endswith(" float arrays") for line in out)


@pytest.mark.parametrize("extra", [[], ["--no-decode"]])
def test_without_verbose_only_the_verdict_is_printed(
    cams: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _out(["validate", *extra, str(cams)], capsys) == f"{cams}: OK (0 errors, 0 warnings)\n"
