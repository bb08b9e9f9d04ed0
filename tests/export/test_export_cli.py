"""``kino export``: the summary line, and errors through kino's exit-code table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kinodb
import kinodb._cli.main as kino
from kinodb._cli import export as export_cli


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    if export_cli not in kino.COMMANDS:
        monkeypatch.setattr(kino, "COMMANDS", (*kino.COMMANDS, export_cli))


def test_export_prints_one_line(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(4)
    out = tmp_path / "npy"
    assert kino.main(["export", str(src), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exported 4 episodes (24 frames) to ")
    assert "as numpy" in lines[0] and (out / "episodes.json").is_file()


def test_formats_filter_and_force(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(4)
    out = tmp_path / "meta"
    args = ["export", str(src), "-o", str(out), "--format", "json", "--filter", "success = false"]
    assert kino.main(args) == 0
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
    assert kino.main([*args, "--force"]) == 0
    assert kino.main(["export", str(src), "-o", str(tmp_path / "d.hdf5"), "--format", "hdf5"]) == 0
    assert "1 file," in capsys.readouterr().out.splitlines()[-1]


def test_short_f_is_the_format_as_in_ingest(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    assert kino.main(["export", str(src), "-o", str(tmp_path / "meta"), "-F", "json"]) == 0
    assert (tmp_path / "meta" / "episodes.jsonl").is_file()
    assert not [p for p in (tmp_path / "meta").iterdir() if p.is_dir()]  # no numpy episode folders


def test_errors_exit_1_with_one_line(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "npy"
    out.mkdir()
    assert kino.main(["export", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert kino.main(["export", str(src), "-o", str(tmp_path / "x"), "--filter", "num_frames > 99"]) == 1
    assert "no episodes match" in capsys.readouterr().err
    assert kino.main(["export", str(tmp_path / "missing.kdb"), "-o", str(tmp_path / "y")]) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit) as exc:
        kino.main(["export", str(src), "-o", str(tmp_path / "z"), "--format", "csv"])
    assert exc.value.code == 2


def test_run_takes_a_namespace(make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = make_kdb(2)
    args = argparse.Namespace(
        path=str(src), output=str(tmp_path / "m"), format="json", filter=None, force=False
    )
    assert export_cli.run(args) == 0
    info = json.loads((tmp_path / "m" / "dataset.json").read_text())
    assert info["export"]["format"] == "json" and "exported 2 episodes" in capsys.readouterr().out


# Warnings each format gives for `_warned` (numpy and json have none); hdf5 and lerobot
# also log theirs, which kino must not print a second time.
WARNINGS = {
    "numpy": [],
    "json": [],
    "hdf5": ["state components (pos [0, 3)) do not cover states exactly"],
    # the inf action is left out of meta/stats.json quietly, as `kino stats` leaves it out
    "lerobot": ["episodes have 2 embodiments (a, b)", "fps 12.5 is not a whole number"],
}  # fmt: skip


def _warned(path: Path) -> Path:
    """Two robots at 12.5 fps, states that the schema's components do not cover, an inf action."""
    with kinodb.Writer(path, schema={"states": {"components": {"pos": [0, 3]}}}) as w:
        for robot in ("a", "b"):
            actions = np.zeros((4, 2), np.float32)
            actions[0, 0] = np.inf
            w.add_episode(actions=actions, states=np.zeros((4, 5), np.float32), embodiment=robot, fps=12.5)
    return path


@pytest.mark.integration
@pytest.mark.parametrize("fmt", list(WARNINGS))
def test_each_warning_prints_once_as_a_warning(tmp_path: Path, fmt: str) -> None:
    # A process of its own: kino's logging goes to stderr as it does for people, which
    # pytest's log capture would otherwise take over.
    src = _warned(tmp_path / "w.kdb")
    cmd = [sys.executable, "-m", "kinodb._cli.main", "export", str(src), "-o", str(tmp_path / "out"),
           "--format", fmt]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exported 2 episodes (8 frames)")
    lines = done.stderr.splitlines()
    assert all(line.startswith("warning: ") for line in lines), done.stderr
    assert len(lines) == len(WARNINGS[fmt]), done.stderr
    for want, line in zip(WARNINGS[fmt], lines, strict=True):
        assert want in line


def test_a_refused_hdf5_export_exits_1_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "two.kdb"
    with kinodb.Writer(src) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), embodiment="a")
        w.add_episode(actions=np.zeros((3, 14), np.float32), embodiment="b")
    out = tmp_path / "two.hdf5"
    assert kino.main(["export", str(src), "-o", str(out), "--format", "hdf5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different action dims (2: 1 episode, 14: 1 episode)" in err
    assert "--filter 'action_dim = 2'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.kdb"]


# -- the output path -------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def test_force_never_takes_the_current_folder_or_the_input(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    top = tmp_path / "top"
    data = top / "data"  # the folder holding the input, and the current folder
    data.mkdir(parents=True)
    src, _ = make_kdb(2, path=data / "good.kdb")
    (data / "keep.txt").write_text("mine")
    monkeypatch.chdir(data)
    before = _snapshot(tmp_path)
    for out, fmt in (
        (".", "numpy"),
        (".", "hdf5"),
        ("..", "json"),  # top: holds the current folder
        ("good.kdb", "hdf5"),
        (str(data), "lerobot"),
    ):
        assert kino.main(["export", "good.kdb", "-o", out, "--format", fmt, "--force"]) == 2, out
        error = capsys.readouterr().err.splitlines()[-1]  # after the usage line, if any
        assert error.startswith(f"kino export: error: the output {out} "), error
        assert error.endswith("; choose a new path for the export") and "--force" not in error
    monkeypatch.chdir(tmp_path)  # elsewhere: the folder holding the input is refused all the same
    assert kino.main(["export", str(src), "-o", "top", "--force"]) == 2
    assert "the output top (" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_an_empty_output_is_a_usage_error(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = make_kdb(1)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert kino.main(["export", str(src), "-o", "", "--force"]) == 2  # -o "$UNSET"
    assert "-o/--output is empty" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_force_is_advised_only_where_it_works(
    make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = make_kdb(2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ([], ["--force"], ["--format", "hdf5", "--force"]):
        assert kino.main(["export", str(src), "-o", str(mine), *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a folder of 1 entry that is not an earlier kinodb export" in err
        assert "choose a new path, or remove it yourself" in err and "--force" not in err, err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    out = tmp_path / "npy"
    assert kino.main(["export", str(src), "-o", str(out)]) == 0
    assert kino.main(["export", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {out} exists and is an earlier kinodb numpy export; pass --force to replace it\n" in err
    assert kino.main(["export", str(src), "-o", str(out), "--format", "hdf5", "--force"]) == 0
    assert kino.main(["export", str(src), "-o", str(out), "--force"]) == 1  # a folder never replaces a file
    err = capsys.readouterr().err
    assert "is a file (this format writes a folder)" in err and "--force" not in err
    assert out.is_file()


def test_output_folder_errors_name_the_output(
    make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = make_kdb(1)
    out = tmp_path / "nodir" / "x.hdf5"
    assert kino.main(["export", str(src), "-o", str(out), "--format", "hdf5"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: the folder {out.parent} does not exist; create it first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_a_name_ending_in_hdf5_needs_no_format(
    make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = make_kdb(2)
    assert kino.main(["export", str(src), "-o", str(tmp_path / "want.hdf5")]) == 0
    assert "as hdf5: 1 file," in capsys.readouterr().out
    assert (tmp_path / "want.hdf5").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert kino.main(["export", str(src), "-o", str(tmp_path / "want.json")]) == 2
    err = capsys.readouterr().err
    assert "ends in .json" in err and "pass --format json to write a folder of that name" in err
    assert "format='json'" not in err and not (tmp_path / "want.json").exists()


@pytest.mark.parametrize(
    ("extra", "named", "unnamed"),
    [
        (["--format", "json", "--video-codec", "av1"], "--video-codec and --images-as apply", "video_codec"),
        (["--format", "numpy", "--images-as", "image"], "(--format lerobot), not 'numpy'", "images_as"),
        (["--keep-upright"], "--keep-upright applies to format 'hdf5' only", "flip_images"),
    ],
)
def test_option_errors_name_the_options(
    make_kdb, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str, unnamed: str
) -> None:
    src, _ = make_kdb(1)
    assert kino.main(["export", str(src), "-o", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and unnamed not in err, err
    assert not (tmp_path / "out").exists()


def test_a_pyav_without_the_encoder_says_which_to_install(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    av = pytest.importorskip("av")
    pytest.importorskip("pyarrow")
    src, _ = make_kdb(2, cameras={"front": (16, 16, 3)})
    monkeypatch.setattr(
        av, "codecs_available", set(av.codecs_available) - {"libsvtav1"}
    )  # PyAV < 15's wheels
    out = tmp_path / "lr"
    assert kino.main(["export", str(src), "-o", str(out), "-F", "lerobot", "--video-codec", "av1"]) == 1
    err = capsys.readouterr().err
    assert "has no libsvtav1 encoder for av1 video: pip install -U av (PyAV 15 or later" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
