"""Recording a run when the file is busy or the write fails: wait for the other writer, else keep
the steps in a spill file; a Ctrl-C during the write waits for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage
from test_infer_runner import Served

import kinodb
from kinodb.infer import InferError, Runner, _recording, append_spill, load_model
from kinodb.kdb.writer import Writer

NOTES = sys.version_info >= (
    3,
    11,
)  # exception notes (add_note) are Python 3.11+; kinodb adds them where it can


def _notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", ()))


def _seed_file(built: Built, path: Path) -> None:
    """One recorded run in ``path``: the file a second writer then appends to."""
    Runner(load_model(built.path), Served(built, 9).provider, rate_hz=2000, max_steps=5, record_to=path).run()


def _spills(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.unsaved-*.npz"))


def test_a_run_waits_for_another_writer_of_its_file(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    out = tmp_path / "arms.kdb"
    _seed_file(built, out)
    source = tmp_path / "other_arm.kdb"
    Runner(
        load_model(built.path), Served(built, 8).provider, rate_hz=2000, max_steps=3, record_to=source
    ).run()
    other = Writer(out, mode="a", image_codec="raw")  # the other arm, appending: it holds the file's lock
    with kinodb.open(source) as db:
        other.copy_episode(db, 0)
    threading.Timer(0.5, other.close).start()  # it commits half a second after the run ends
    served = Served(built, 1)
    t0 = time.monotonic()
    stats = Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=20, record_to=out).run()
    assert time.monotonic() - t0 >= 0.4  # it waited for the other writer ...
    assert stats["recorded_episode"] == 2  # ... and appended after its episode
    with kinodb.open(out) as db:
        assert len(db) == 3 and db.read_meta(1)["num_frames"] == 3
        np.testing.assert_array_equal(db.read_array(2, "actions"), np.array(served.actions))
    assert not _spills(tmp_path)


def test_a_file_created_meanwhile_is_appended_to(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = make_package()
    out = tmp_path / "new.kdb"
    original = Writer.add_episode
    raced: list[int] = []

    def add_episode(self: Writer, *args: Any, **kwargs: Any) -> int:
        if not raced:  # the run's writer is creating the file: another one creates it first
            raced.append(1)
            with Writer(out, mode="x", image_codec="raw", schema=dict(self.schema)) as first:
                original(first, *args, **{**kwargs, "task": "the other arm"})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "add_episode", add_episode)
    served = Served(built, 2)
    stats = Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=10, record_to=out).run()
    assert raced and stats["recorded_episode"] == 1
    with kinodb.open(out) as db:
        assert len(db) == 2 and db.read_meta(0)["task"] == "the other arm"
        np.testing.assert_array_equal(db.read_array(1, "actions"), np.array(served.actions))


def test_two_runners_on_threads_record_to_one_new_file(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    out = tmp_path / "two.kdb"
    results: dict[int, Any] = {}

    def arm(i: int) -> None:
        try:
            results[i] = Runner(load_model(built.path), Served(built, i).provider, rate_hz=1000, max_steps=100,
                                record_to=out).run()["recorded_episode"]  # fmt: skip
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=arm, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [0, 1], results
    with kinodb.open(out) as db:
        assert len(db) == 2


def test_a_file_busy_past_the_wait_keeps_the_steps_in_a_spill_file(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = make_package()
    out = tmp_path / "busy.kdb"
    _seed_file(built, out)
    monkeypatch.setattr(_recording, "APPEND_WAIT_S", 0.3)
    other = Writer(out, mode="a", image_codec="raw")
    try:
        served = Served(built, 3)
        log = tmp_path / "busy.ndjson"
        with pytest.raises(InferError) as err:
            Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=25, record_to=out,
                   log_path=log).run()  # fmt: skip
    finally:
        other.abort()
    assert f"record_to {out}: another writer kept the file busy for" in str(err.value)
    (spill,) = _spills(tmp_path)
    notes = "\n".join(_notes(err.value))
    assert (
        not NOTES
        or f"the 25 recorded steps were kept in {spill}: append them with kinodb.infer.append_spill(" in notes
    )
    assert not NOTES or "the run stopped after 25 steps (stopped by max_steps" in notes
    assert not NOTES or f"the NDJSON log {log} holds 25 lines" in notes
    assert append_spill(spill, out) == 1  # the file is free now
    with kinodb.open(out) as db:
        np.testing.assert_array_equal(db.read_array(1, "actions"), np.array(served.actions))
        angles = np.array([s["joint_angles"] for s in served.served])
        np.testing.assert_array_equal(db.read_array(1, "states")[:, :4], angles)
        assert db.read_meta(1)["fps"] == 2000


def test_an_incompatible_file_made_during_the_run_keeps_the_steps_in_a_spill_file(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    out = tmp_path / "late.kdb"

    def other_policy_records(n: int) -> None:
        if n == 3:  # meanwhile, another program creates the file with 2-joint actions
            with Writer(out, mode="x", image_codec="raw") as w:
                w.add_episode(actions=np.zeros((4, 2), np.float32))

    served = Served(built, 4, on_action=other_policy_records)
    with pytest.raises(kinodb.WriterError) as err:
        Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=12, record_to=out).run()
    (spill,) = _spills(tmp_path)
    assert not NOTES or any(f"were kept in {spill}" in n for n in _notes(err.value))
    fresh = tmp_path / "fresh.kdb"
    assert append_spill(spill, fresh) == 0
    with kinodb.open(fresh) as db:
        np.testing.assert_array_equal(db.read_array(0, "actions"), np.array(served.actions))
    with pytest.raises(InferError, match="not a recording spill file"):
        append_spill(out, fresh)


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_a_failed_write_raises_with_the_run_summary(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    out, scratch = tmp_path / "full.kdb", tmp_path / "tmp"
    scratch.mkdir()
    script = f"""
import resource
import numpy as np
from kinodb.infer import CallableProvider, Runner, load_model
model = load_model({str(built.path)!r})
sig = model.signature
getters = {{n: (lambda n=n: lambda *_: np.ones(sig.shape(n), np.float32))() for n in sig.observation_names}}
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    Runner(model, CallableProvider(**getters), rate_hz=20000, max_steps=3000, record_to={str(out)!r}).run()
except Exception as exc:
    print(type(exc).__name__, exc)
    for note in getattr(exc, "__notes__", ()):
        print("NOTE", note)
"""
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("WriterError ") and "File too large" in text, text
    assert not NOTES or "NOTE the 3000 recorded steps could not be kept in a spill file either" in text
    assert not NOTES or "NOTE the run stopped after 3000 steps (stopped by max_steps" in text
    assert not out.exists() and not _spills(tmp_path) and not _spills(scratch)  # no torn files left


def test_ctrl_c_during_the_write_waits_for_the_episode(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set on the main thread only")
    built = make_package()
    out = tmp_path / "ctrlc.kdb"
    original = Writer.add_episode

    def add_episode(self: Writer, *args: Any, **kwargs: Any) -> int:
        os.kill(os.getpid(), signal.SIGINT)  # an impatient Ctrl-C while the episode is written
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "add_episode", add_episode)
    served = Served(built, 5)
    with pytest.raises(KeyboardInterrupt) as err:
        Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=30, record_to=out).run()
    assert not NOTES or any(f"{out} episode 0 holds its steps" in n for n in _notes(err.value))
    with kinodb.open(out) as db:  # raised once the episode was committed
        np.testing.assert_array_equal(db.read_array(0, "actions"), np.array(served.actions))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_ends_the_wait_for_a_busy_file(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set on the main thread only")
    built = make_package()
    out = tmp_path / "busy.kdb"
    _seed_file(built, out)
    monkeypatch.setattr(_recording, "APPEND_WAIT_S", 60.0)
    other = Writer(out, mode="a", image_codec="raw")
    served = Served(built, 6, on_action=lambda n: n == 10 and threading.Timer(
        0.3, os.kill, (os.getpid(), signal.SIGINT)).start())  # fmt: skip
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            Runner(load_model(built.path), served.provider, rate_hz=2000, max_steps=10, record_to=out).run()
    finally:
        other.abort()
    assert time.monotonic() - t0 < 20  # not the whole minute
    assert isinstance(err.value.__context__, InferError)
    assert "the wait was cut short" in str(err.value.__context__)
    (spill,) = _spills(tmp_path)
    # the interrupt itself says where the steps went, for code that reads only its notes
    assert not NOTES or any(str(spill) in n and "append_spill" in n for n in _notes(err.value))
    assert append_spill(spill, out) == 1
