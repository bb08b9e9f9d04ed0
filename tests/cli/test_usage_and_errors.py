"""`kino` option checking, usage lines, error lines, broken pipes and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.kdb.validate import validate


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "3", "--frames", "5"]) == 0
    return path


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``kino ARGV``, expect argparse's exit 2, return stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def write_robomimic(path: Path, demos: int, frames: int = 4, image: int = 0) -> Path:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for d in range(demos):
            f[f"data/demo_{d}/actions"] = rng.standard_normal((frames, 7))
            f[f"data/demo_{d}/obs/robot0_eef_pos"] = rng.standard_normal((frames, 3))
            if image:
                pixels = rng.integers(0, 255, (frames, image, image, 3), dtype=np.uint8)
                f[f"data/demo_{d}/obs/agentview_image"] = pixels
    return path


# -- options after the subcommand -----------------------------------------------------------


def test_an_unknown_option_after_the_command_shows_that_commands_usage(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["info", str(dataset), "--jsn"], capsys)
    assert err.startswith("usage: kino info ") and "usage: kino [-h]" not in err
    assert err.rstrip().endswith("kino info: error: unrecognized arguments: --jsn")
    err = usage_error(["infer", "inspect", "p.kinfer", "--jsn"], capsys)  # a nested subcommand
    assert err.startswith("usage: kino infer inspect ")
    assert err.rstrip().endswith("kino infer inspect: error: unrecognized arguments: --jsn")
    err = usage_error(["--jsn", "info", str(dataset)], capsys)  # before the command: kino's own
    assert err.startswith("usage: kino [-h]") and "unrecognized arguments: --jsn" in err


def test_debug_is_taken_after_the_command_as_well_as_before(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.kdb")
    for argv in (["info", missing, "--debug"], ["--debug", "info", missing]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().endswith(f"error: {missing}: No such file or directory")
    assert main(["info", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["info", str(dataset), "--debug"]) == 0


# -- numbers and option combinations ---------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "ten"])
def test_fps_must_be_a_positive_finite_number(
    dataset: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.kdb"
    err = usage_error(["ingest", str(dataset), "-o", str(out), f"--fps={value}"], capsys)
    shown = repr(value) if value == "ten" else value
    assert err.rstrip().endswith(
        f"kino ingest: error: argument --fps: expected a positive number, got {shown}"
    )
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_psnr_must_be_a_positive_number(
    dataset: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["verify", str(tmp_path), str(dataset), f"--psnr={value}"], capsys)
    assert f"argument --psnr: expected a positive number, got {value}" in err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_episodes_must_be_positive(
    dataset: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(
        ["ingest", str(dataset), "-o", str(tmp_path / "m.kdb"), f"--max-episodes={value}"], capsys
    )
    assert f"argument --max-episodes: expected a positive integer, got {value}" in err


@pytest.mark.parametrize("value", ["0", "101", "q"])
def test_compress_names_the_option_and_its_range(
    dataset: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = repr(value) if value == "q" else value
    for argv in (
        ["ingest", str(dataset), "-o", str(tmp_path / "c.kdb"), "--compress", value],
        ["create-test", str(tmp_path / "c.kdb"), "--images", "--compress", value],
    ):
        err = usage_error(argv, capsys)
        assert f"argument --compress: expected a JPEG quality from 1 to 100, got {shown}" in err
        assert "jpeg_quality" not in err
    assert not (tmp_path / "c.kdb").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--image-codec", "raw", "--compress", "50"],
         "--compress sets the JPEG quality, but --image-codec raw stores frames without JPEG: leave --compress out"),
        (["--image-codec", "png", "--compress", "50"],
         "--compress sets the JPEG quality, but --image-codec png stores frames without JPEG"),
        (["--no-images", "--image-codec", "png"],
         "--no-images leaves the cameras out, so --image-codec has no frames to store: leave --image-codec out"),
        (["--no-images", "--compress", "50"],
         "--no-images leaves the cameras out, so --compress has no frames to store"),
    ],
    ids=["raw-compress", "png-compress", "no-images-codec", "no-images-compress"],
)  # fmt: skip
def test_image_options_that_would_do_nothing_are_usage_errors(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_robomimic(tmp_path / "robo.hdf5", 2, image=8)
    out = tmp_path / "o.kdb"
    assert main(["ingest", str(src), "-o", str(out), "-q", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kino ingest: error: {message}") and err.count("\n") == 1
    assert not out.exists()
    assert main(["ingest", str(src), "-o", str(out), "-q", "--image-codec", "jpeg", "--compress", "50"]) == 0


def test_create_test_compress_needs_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.kdb"
    assert main(["create-test", str(out), "--compress", "50"]) == 2
    assert capsys.readouterr().err == (
        "kino create-test: error: --compress sets the JPEG quality of the cameras, which only --images "
        "adds: add --images or leave --compress out\n"
    )
    assert not out.exists()
    assert main(["create-test", str(out), "-n", "1", "--images", "--compress", "50"]) == 0


def test_mix_epoch_needs_sample(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mix", "-s", str(dataset), "--epoch", "2"]) == 2
    assert capsys.readouterr().err == (
        "kino mix: error: --epoch numbers the --sample draw: add --sample N or leave --epoch out\n"
    )
    assert main(["mix", "-s", str(dataset), "--sample", "4", "--epoch", "2"]) == 0
    assert "epoch 2" in capsys.readouterr().out


# -- kino validate on what is not there --------------------------------------------------------


def test_validate_of_a_missing_file_is_an_error_line_like_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.kdb"
    for command in ("validate", "info"):
        assert main([command, str(missing)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err == f"error: {missing}: No such file or directory\n"
    with pytest.raises(FileNotFoundError):
        validate(missing)
    with pytest.raises(IsADirectoryError):
        validate(tmp_path)
    (tmp_path / "bad.kdb").write_bytes(b"x" * 100)  # a damaged header is still a finding
    report = validate(tmp_path / "bad.kdb")
    assert not report.ok and "not a .kdb file" in report.errors[0]


# -- a dataset of another format where a .kdb file belongs --------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{p}"], ["schema", "{p}"], ["query", "{p}", "success = true"], ["stats", "{p}"],
        ["validate", "{p}"], ["mix", "-s", "{p}"], ["mix", "-s", "{p}:2"], ["merge", "{p}", "-o", "m.kdb"],
        ["upgrade", "{p}", "u.kdb"], ["export", "{p}", "-o", "e"], ["verify", "{p}", "{p}"],
    ],
    ids=lambda argv: "-".join(a for a in argv if "{" not in a and "." not in a),
)  # fmt: skip
def test_every_command_says_how_to_convert_a_source_dataset(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_robomimic(tmp_path / "robo.hdf5", 1)
    (tmp_path / "lrcopy" / "meta").mkdir(parents=True)  # a LeRobot folder
    (tmp_path / "lrcopy" / "meta" / "info.json").write_text("{}")
    hints = {
        "robo.hdf5": "robo.hdf5: not a .kdb file: starts with b'\\x89HDF', expected b'KINO'; it looks like "
        "hdf5 (robomimic/LIBERO HDF5): convert it with kino ingest robo.hdf5 -o robo.kdb",
        "lrcopy": "lrcopy: a folder, not a .kdb file; it looks like lerobot (LeRobot v2.0, v2.1, v3.0): "
        "convert it with kino ingest lrcopy -o lrcopy.kdb",
    }
    for path, hint in hints.items():
        if argv[0] == "validate" and path == "robo.hdf5":
            assert main([a.format(p=path) for a in argv]) == 1  # a finding of the report, on stdout
            assert f"[error] open: {hint}\n" in capsys.readouterr().out
            continue
        assert main([a.format(p=path) for a in argv]) == 1
        err = capsys.readouterr().err
        which = "mixture source 0: " if argv[0] == "mix" and path == "robo.hdf5" else ""  # among several
        assert err == f"error: {which}{hint}\n"
    assert not any((tmp_path / name).exists() for name in ("m.kdb", "u.kdb", "e", "robo.kdb"))


def test_no_hint_for_the_output_or_an_unrecognised_file(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello, not a dataset of any kind" * 4)
    assert main(["schema", str(tmp_path / "notes.txt")]) == 1
    err = capsys.readouterr().err
    assert "not a .kdb file" in err and "kino ingest" not in err
    corrupt = tmp_path / "c.kdb"
    corrupt.write_bytes(dataset.read_bytes()[:-7])  # a .kdb file after all
    assert main(["schema", str(corrupt)]) == 1
    assert "kino ingest" not in capsys.readouterr().err


# -- a reader that goes away --------------------------------------------------------------------


def _run_with_stdout_closed(argv: list[str], *, buffered: bool = True) -> subprocess.CompletedProcess[str]:
    """``kino ARGV | true``, deterministically: stdout is a pipe whose reader is already gone."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED" or not buffered}
    code = (
        "import os, sys\n"
        "r, w = os.pipe()\n"
        "os.close(r)\n"
        "os.dup2(w, 1)\n"
        "from kinodb._cli.main import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_a_failing_command_whose_reader_went_away_still_fails(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.kdb"
    assert main(["create-test", str(path), "-n", "400", "--frames", "2"]) == 0
    with kinodb.open(path) as db:
        offsets = db._cols["payload_offset"].tolist()
    raw = bytearray(path.read_bytes())
    for off in offsets:
        raw[int(off) + 3] ^= 0xFF  # every episode's checksum fails: more lines than a pipe buffers
    path.write_bytes(bytes(raw))
    assert main(["validate", str(path)]) == 1
    few = _run_with_stdout_closed(["validate", str(path)])  # 10 errors: cut at the final flush
    assert (few.returncode, few.stderr) == (1, "")  # the command's own failure
    many = _run_with_stdout_closed(["validate", "-v", str(path)])  # 400 errors: cut while printing
    assert (many.returncode, many.stderr) == (141, "")
    unbuffered = _run_with_stdout_closed(["validate", str(path)], buffered=False)  # cut at the first line
    assert (unbuffered.returncode, unbuffered.stderr) == (141, "")
    ok = _run_with_stdout_closed(["info", "--episodes", str(path)])
    assert (ok.returncode, ok.stderr) == (141, "")  # the output was cut short: not a success


# -- Ctrl-C ---------------------------------------------------------------------------------------


def _workers_up(pid: int) -> bool:
    """Whether a worker process of ``pid`` (multiprocessing's spawn) runs Python that has taken
    charge of SIGINT: caught (Python's handler, set early in start-up), held, or ignored."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/status") as fh:
                masks = dict(
                    line.split(":\t", 1) for line in fh if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
                )
        except (OSError, ValueError):
            continue
        sigint = 1 << (signal.SIGINT - 1)
        if ppid == pid and b"spawn_main" in cmdline and any(int(m, 16) & sigint for m in masks.values()):
            return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the worker processes in /proc")
def test_ctrl_c_while_workers_start_prints_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "robo.hdf5", 200, frames=20, image=32)  # seconds of work
    out = tmp_path / "out.kdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kinodb._cli.main", "ingest", str(src), "-o", str(out), "--workers", "2", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _workers_up(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the ingest ended before its workers started"
        # A terminal's Ctrl-C signals the whole group, while the workers still import.
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err == f"kino ingest: interrupted; nothing was written to {out}\n"  # no worker's traceback
    assert sorted(os.listdir(tmp_path)) == ["robo.hdf5"]  # no temporary file left either


# -- SIGTERM ---------------------------------------------------------------------------------------


def _hidden_outputs(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".")]


@pytest.mark.parametrize("command", ["ingest", "ingest-workers", "export"])
def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path, command: str) -> None:
    src = write_robomimic(tmp_path / "robo.hdf5", 300, frames=20, image=32)  # seconds of work
    if command == "export":
        assert main(["ingest", str(src), "-o", str(tmp_path / "in.kdb"), "--image-codec", "png", "-q"]) == 0
        src, out = tmp_path / "in.kdb", tmp_path / "out.hdf5"
        argv = ["export", str(src), "-o", str(out)]
    else:
        out = tmp_path / "out.kdb"
        argv = [
            "ingest",
            str(src),
            "-o",
            str(out),
            "-q",
            *(["--workers", "2"] if command.endswith("s") else []),
        ]
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "kinodb._cli.main", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _hidden_outputs(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, f"the command ended before it wrote anything: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)  # `timeout`, `docker stop`: the command's own process
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err == f"kino {argv[0]}: terminated (SIGTERM); nothing was written to {out}\n"
    assert sorted(os.listdir(tmp_path)) == before  # the temporary output is gone


@pytest.mark.parametrize("threads", ["allowed", "none"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_lands_in_a_finalizer_is_raised_after_it(
    signum: int, threads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kinodb._cli._errors import Terminated, _signals_interrupt

    if threads == "none":  # a handler that starts a thread can wait on a lock the interrupted code holds

        def no_thread(self: threading.Thread) -> None:
            raise AssertionError("a signal handler started a thread")

        monkeypatch.setattr(threading.Thread, "start", no_thread)

    class SignalsWhenCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signum)  # handled inside __del__, where a raise is dropped
            sum(range(1000))

    expected = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expected), _signals_interrupt(sigterm=True):
        SignalsWhenCollected()
        deadline = time.monotonic() + 10
        while True:  # not `while time.monotonic() < deadline: pass`: Python 3.13 lets an exception
            if time.monotonic() >= deadline:  # raised in such a loop's test skip the with (CPython gh-130279)
                break
    assert time.monotonic() < deadline  # raised at once, not when the loop ran out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_out_of_memory_is_one_line_and_keeps_nothing(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    merge_module = sys.modules["kinodb.merge"]  # `kinodb.merge` is the function

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 3.64 TiB for an array")

    out = tmp_path / "m.kdb"
    monkeypatch.setattr(merge_module, "merge", exhausted)
    assert main(["merge", str(dataset), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: out of memory (Unable to allocate 3.64 TiB for an array); nothing was written to"
    )
    assert "fewer episodes or frames" in err and len(err.splitlines()) == 1
    assert not out.exists()
