"""Ctrl-C while ``kino`` starts (its modules import, its arguments parse): one line, exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# What the console script ``kino`` runs, with a line on stdout as `entry` begins (a
# signal sent before that would land in this harness, or before `entry` could catch it).
_KINO = """
import sys
from kinodb._cli import main as cli

redeliver = cli._redeliver_interrupts

def begun():
    redeliver()
    print("ready", flush=True)

cli._redeliver_interrupts = begun
sys.argv[0] = "kino"
cli.entry()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _interrupt_after_ready(argv: list[str], delay: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-c", _KINO, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=_env())  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(delay)  # the child goes on starting up meanwhile
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.integration
def test_ctrl_c_at_any_moment_of_startup_exits_130_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "big.kdb"
    # A command that runs for minutes once started: every signal lands before it ends.
    argv = ["create-test", str(out), "-n", "100000", "-f", "200"]
    during_startup = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 0.8):
        proc = _interrupt_after_ready(argv, delay, tmp_path)
        assert "Traceback" not in proc.stderr, (delay, proc.stderr)
        assert proc.returncode == 130, (delay, proc.returncode, proc.stderr)
        assert proc.stderr in (
            "kino: interrupted\n",  # before the command ran
            f"kino create-test: interrupted; nothing was written to {out}\n",  # while it ran
        ), (delay, proc.stderr)
        during_startup += proc.stderr == "kino: interrupted\n"
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    assert during_startup >= 1  # the earliest signals landed while the subcommands imported


def test_the_console_scripts_import_loads_no_subcommand() -> None:
    """What ``from kinodb._cli.main import entry`` imports runs before `entry` can catch
    Ctrl-C: it holds none of the subcommands' modules (they import inside `entry`)."""
    code = (
        "import sys, kinodb._cli.main\nprint(sorted(m for m in sys.modules if m.startswith('kinodb._cli.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['kinodb._cli.main']"


def test_commands_is_the_registered_modules_in_order() -> None:
    from kinodb._cli import main as cli

    names = [m.__name__.rpartition(".")[2] for m in cli.COMMANDS]
    assert names[:4] == ["create_test", "info", "schema", "validate"] and "infer" in names
    choices = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices)[:4] == ["create-test", "info", "schema", "validate"]


_KINO_SERVE = _KINO.replace('"kino"', '"kino-serve"').replace("cli.entry()", "cli.serve_entry()")


@pytest.mark.integration
def test_ctrl_c_while_kino_serve_starts_exits_130_with_one_line(make_kdb: Any, tmp_path: Path) -> None:
    path, _ = make_kdb(2)
    during_startup = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", _KINO_SERVE, str(path), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=_env())  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, (delay, err)
        if proc.returncode == 130:  # before the server ran
            assert err == "kino-serve: interrupted\n", (delay, err)
            during_startup += 1
        else:  # the server had started: Ctrl-C is its ordinary stop
            assert proc.returncode == 0, (delay, proc.returncode, err)
            assert out.splitlines()[-1] == "kino-serve: stopped", (delay, out)
    assert during_startup >= 1  # the earliest signals landed while kinodb imported


# A Ctrl-C that lands in a weakref callback or a ``__del__`` (as in the import system's
# module-lock callback) is one Python prints as "Exception ignored" and drops.
_DROPPED = """
import sys, time
from kinodb._cli import main as cli

class Dropped:
    def __del__(self):
        raise KeyboardInterrupt

def command():
    Dropped()
    deadline = time.monotonic() + 20
    while True:  # a busy start-up that the interrupt must stop (not `while cond: pass`, whose
        if time.monotonic() >= deadline:  # exceptions Python 3.13 does not handle: CPython gh-130279)
            break
    return 0

cli.main = command
sys.argv[:] = ["kino"]
cli.entry()
"""


@pytest.mark.parametrize("entry", ["entry", "serve_entry"])
def test_a_ctrl_c_python_would_drop_during_startup_still_ends_the_program(entry: str) -> None:
    code = _DROPPED.replace("cli.entry()", f"cli.{entry}()")
    if entry == "serve_entry":
        code = code.replace("cli.main = command", "from kinodb._cli import serve\nserve.main = command")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    program = "kino" if entry == "entry" else "kino-serve"
    assert (proc.returncode, proc.stderr) == (130, f"{program}: interrupted\n")


def test_other_unraisable_exceptions_still_print() -> None:
    code = _DROPPED.replace("raise KeyboardInterrupt", "raise ValueError('kept')").replace("+ 20", "+ 0.1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0 and "Exception ignored" in proc.stderr and "ValueError: kept" in proc.stderr


# A module imported while kino starts, whose import Ctrl-C interrupts: raised there, the
# interrupt would become a RuntimeError (Python wraps what ``__set_name__`` raises) that a
# library trying an optional import drops, and the command would run as if never stopped.
_SWALLOWING_MODULE = """
import os, signal

class Attribute:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the signal's handler runs in here, if it can
            pass

class Owner:
    attribute = Attribute()
"""

_IMPORTS_IT = """
import sys
from kinodb._cli import main as cli

registered = cli._commands_registered

def importing():
    try:
        import swallowing  # an optional import: any Exception means "not there"
    except Exception:
        pass
    return registered()

cli._commands_registered = importing
sys.argv[0] = "kino"
cli.entry()
"""


def test_ctrl_c_during_an_import_that_would_drop_it_still_ends_kino(tmp_path: Path) -> None:
    (tmp_path / "swallowing.py").write_text(_SWALLOWING_MODULE)
    out = tmp_path / "made.kdb"
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_IT, "create-test", str(out), "-n", "2"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "kino: interrupted\n")
    assert not out.exists()
