"""Help texts, ``kino upgrade -o``, ``-e`` of ``kino ingest``, and ``python -m kinodb``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kinodb
from _factories import tiny_robomimic_hdf5, write_episodes
from kinodb._cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "described", "positional", "example"),
    [
        ("info", "Summarise a .kdb file", "path            the .kdb file", "examples: kino info data.kdb"),
        ("schema", "Show the layout of a .kdb file", "path        the .kdb file",
         "example: kino schema data.kdb --json"),
        ("validate", "Check a .kdb file", "path           the .kdb file", "example: kino validate data.kdb"),
        ("merge", "Merge .kdb files into one", "IN                    the .kdb files to merge",
         "examples: kino merge a.kdb b.kdb -o all.kdb"),
        ("upgrade", "Rewrite OLD as a format v1 file NEW", "OLD                   the .kdb file to read",
         "examples: kino upgrade old.kdb -o new.kdb"),
    ],
)  # fmt: skip
def test_help_describes_the_command_its_arguments_and_an_example(
    command: str, described: str, positional: str, example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(command, capsys)
    description = text.split("\n\n")[1]
    assert description.startswith(described)
    assert max(len(line) for line in description.splitlines()) <= 88  # wrapped, for a terminal
    assert f"\n  {positional}" in text
    assert f"\n{example}" in text


# -- kino upgrade OLD -o NEW ---------------------------------------------------------------


@pytest.fixture
def old(tmp_path: Path) -> Path:
    path = tmp_path / "old.kdb"
    write_episodes(path, [3, 4])
    return path


@pytest.mark.parametrize("form", ["-o", "--output", "-o first", "positional"])
def test_upgrade_takes_new_as_o_or_as_the_second_argument(
    old: Path, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new.kdb"
    argv = {
        "-o": ["upgrade", str(old), "-o", str(new)],
        "--output": ["upgrade", str(old), "--output", str(new)],
        "-o first": ["upgrade", "-o", str(new), str(old)],
        "positional": ["upgrade", str(old), str(new)],
    }[form]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"upgraded {old} -> {new} (2 episodes, format 1.0)\n"
    with kinodb.open(new) as db:
        assert len(db) == 2


@pytest.mark.parametrize("order", ["positional first", "-o first"])
def test_upgrade_refuses_new_given_twice(
    old: Path, tmp_path: Path, order: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    argv = (
        [str(old), str(a), "-o", str(b)] if order == "positional first" else ["-o", str(b), str(old), str(a)]
    )
    with pytest.raises(SystemExit) as exit_:
        main(["upgrade", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kino upgrade")
    assert err.endswith("kino upgrade: error: NEW is given twice: give it as -o NEW or as the second argument, "
                        "not both\n")  # fmt: skip
    assert not a.exists() and not b.exists()


def test_upgrade_without_new_is_a_usage_error(old: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upgrade", str(old)]) == 2
    assert (
        capsys.readouterr().err
        == f"kino upgrade: error: give the file to write: kino upgrade {old} -o NEW.kdb\n"
    )


def test_upgrade_o_is_parsed_into_new(old: Path, tmp_path: Path) -> None:
    """``args.new`` is where the interruption message looks for what was written."""
    from kinodb._cli.main import build_parser

    args = build_parser().parse_args(["upgrade", str(old), "-o", str(tmp_path / "n.kdb")])
    assert args.new == str(tmp_path / "n.kdb")


# -- kino ingest -e ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["0-2", "5", "0-9,29", " 0 - 2 , 7"])
def test_ingest_refuses_an_episode_selection_given_to_e(
    tmp_path: Path, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.kdb"
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", str(tmp_path / "src.hdf5"), "-o", str(out), "-e", spec])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    fixed = "".join(spec.split())
    assert err.endswith(
        f"kino ingest: error: argument -e/--embodiment: {spec!r} is an episode selection, not an embodiment "
        f"name: -e is --embodiment; to choose episodes use --episodes {fixed}\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("name", ["franka", "ur5-2", "2f85"])
def test_ingest_takes_embodiment_names_with_digits(tmp_path: Path, name: str) -> None:
    pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    src = tiny_robomimic_hdf5(tmp_path / "demo.hdf5")
    out = tmp_path / "x.kdb"
    assert main(["ingest", str(src), "-o", str(out), "-e", name, "-q"]) == 0
    with kinodb.open(out) as db:
        assert db.read_meta(0)["embodiment"] == name


# -- python -m kinodb ----------------------------------------------------------------------


def test_python_m_kinodb_runs_kino(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kinodb", *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)  # fmt: skip

    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"kino {kinodb.__version__}\n"
    made = run("create-test", "t.kdb", "-n", "2")
    assert made.returncode == 0 and made.stdout == "wrote 2 episodes x 50 frames to t.kdb\n"
    missing = run("info", "nothing.kdb")
    assert missing.returncode == 1 and missing.stderr == "error: nothing.kdb: No such file or directory\n"
    usage = run("info")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: kino info")
