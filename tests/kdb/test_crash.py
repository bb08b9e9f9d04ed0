"""A writer killed at any moment leaves exactly the old or the new state, and no lock or junk
that stops the next writer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import numbered_episode
from kinodb.kdb._layout import SLOT_OFFSETS, parse_slot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]

TESTS = Path(__file__).resolve().parents[1]
NEW = 60  # episodes the child writes
OLD = 3  # episodes in the file before the child starts

# The child writes episodes NEW_BASE.. with a short pause after each (a slow producer), so
# a timer can land anywhere in the write. ``stop_at`` names a syscall of the commit at which
# the child kills itself: "fsync:N" before the N-th fsync, "replace"/"link"/"unlink" before
# that call.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from _factories import numbered_episode
    import kinodb

    path, mode, first, count, stop_at = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

    def hook(name, when):
        real, calls = getattr(os, name), [0]
        def wrapper(*args):
            calls[0] += 1
            if calls[0] == when:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)
        setattr(os, name, wrapper)

    if stop_at != "none":
        name, _, when = stop_at.partition(":")
        hook(name, int(when or 1))
    with kinodb.Writer(path, mode=mode, image_codec="raw") as w:
        for k in range(first, first + count):
            w.add_episode(**numbered_episode(k))
            if k == first:
                print("started", flush=True)
            time.sleep(0.002)
    print("committed", flush=True)
    """
)
NEW_BASE = 1000


def spawn(path: Path, mode: str, stop_at: str = "none") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS), str(path), mode, str(NEW_BASE), str(NEW), stop_at],
        stdout=subprocess.PIPE,
        text=True,
    )


def run_child(path: Path, mode: str, *, stop_at: str = "none", kill_after: float | None = None) -> int:
    """Run the child; kill it ``kill_after`` seconds after its first episode. Returns its status."""
    child = spawn(path, mode, stop_at)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if kill_after is not None and line.strip() == "started":
            time.sleep(kill_after)
            child.send_signal(signal.SIGKILL)
        return child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def expected(ids: list[int]) -> list[dict[str, object]]:
    return [numbered_episode(k) for k in ids]


def check_state(path: Path, states: dict[str, list[int]]) -> str:
    """Open ``path`` and return which of ``states`` (name -> episode numbers) it holds exactly."""
    if not path.exists():
        assert "none" in states, "the file disappeared"
        return "none"
    with kinodb.open(path) as db:
        n = len(db)
        matches = [name for name, ids in states.items() if name != "none" and len(ids) == n]
        assert matches, (
            f"{n} episodes: neither the old nor the new state ({ {k: len(v) for k, v in states.items()} })"
        )
        name = matches[0]
        for i, ep in enumerate(expected(states[name])):
            got = db.read_episode(i)
            np.testing.assert_array_equal(got["actions"], ep["actions"])
            np.testing.assert_array_equal(got["images"]["cam"], ep["images"]["cam"])  # type: ignore[index]
            assert got["meta"]["k"] == ep["extra"]["k"]  # type: ignore[index]
        assert db.num_frames() == sum(len(ep["actions"]) for ep in expected(states[name]))  # type: ignore[arg-type]
    return name


def append_works(path: Path, ids: list[int]) -> None:
    """The next append succeeds despite leftovers and its result reads back."""
    marker = 99_999
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        w.add_episode(**numbered_episode(marker))
    assert check_state(path, {"appended": [*ids, marker]}) == "appended"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "template.kdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1790000000")  # the same bytes (and checksums) on every run
        with kinodb.Writer(path, image_codec="raw") as w:
            for k in range(OLD):
                w.add_episode(**numbered_episode(k))
    return path


@pytest.fixture(scope="module")
def write_seconds(template: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long a child takes from its first episode to exit, measured once."""
    path = tmp_path_factory.mktemp("timing") / "t.kdb"
    child = spawn(path, "w")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    t0 = time.monotonic()
    assert child.wait(timeout=60) == 0
    return time.monotonic() - t0


# A new file ("w", "x") is fsynced once, whole, then renamed (or linked) into place; an
# append fsyncs its data and index, then its commit record.
COMMIT_POINTS = {
    "w": ["fsync:1", "replace", "fsync:2"],
    "a": ["fsync:1", "fsync:2"],
    "x": ["fsync:1", "link", "unlink", "fsync:2"],
}


@pytest.mark.parametrize("mode", ["w", "a", "x"])
def test_kill_around_the_commit(tmp_path: Path, template: Path, mode: str) -> None:
    old = list(range(OLD))
    new = list(range(NEW_BASE, NEW_BASE + NEW))
    states = {
        "w": {"old": old, "new": new},
        "a": {"old": old, "new": old + new},
        "x": {"none": [], "new": new},
    }[mode]
    seen = set()
    for point in COMMIT_POINTS[mode]:
        path = tmp_path / f"{mode}-{point.replace(':', '')}.kdb"
        if mode != "x":
            shutil.copy(template, path)
        assert run_child(path, mode, stop_at=point) == -signal.SIGKILL
        state = check_state(path, states)
        seen.add(state)
        append_works(path, states[state])
    # Before the data is durable nothing is published; after the rename or link it is.
    assert seen == set(states)


@pytest.mark.parametrize("mode", ["w", "a"])
def test_kill_at_random_moments(tmp_path: Path, template: Path, write_seconds: float, mode: str) -> None:
    rng = np.random.default_rng(7)
    old = list(range(OLD))
    new = list(range(NEW_BASE, NEW_BASE + NEW))
    states = {"old": old, "new": new if mode == "w" else old + new}
    # Half the kills land anywhere in the write, half right around the commit at its end.
    delays = np.concatenate([rng.uniform(0, 1, 5), rng.uniform(0.85, 1.1, 5)]) * write_seconds
    for j, delay in enumerate(delays):
        path = tmp_path / f"{mode}{j}.kdb"
        shutil.copy(template, path)
        status = run_child(path, mode, kill_after=float(delay))
        assert status in (0, -signal.SIGKILL)
        state = check_state(path, states)
        assert state == "new" or status != 0
        append_works(path, states[state])
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    for name in leftovers:  # a killed new-file writer may leave its hidden temp file ...
        assert name.startswith(".")
        target = tmp_path / name[1:].split(".kdb.")[0]
        with kinodb.Writer(f"{target}.kdb", mode="w") as w:  # ... which the next writer removes
            w.add_episode(actions=np.zeros((2, 3), np.float32))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("appends", [0, 2])
def test_torn_commit_record_keeps_the_old_state(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch, appends: int
) -> None:
    """A slot write that stopped part-way keeps the old record's bytes from there on (the
    empty record of a file committed once, or an older commit's): the old state holds, and
    the next append discards the torn commit's bytes, as after a kill before the slot write
    (unlike a flipped bit in a record, which hides a newer commit and refuses the append)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")  # the same records every run
    path = tmp_path / "torn.kdb"
    shutil.copy(template, path)
    old = list(range(OLD))
    for k in range(appends):
        with kinodb.Writer(path, mode="a", image_codec="raw") as w:
            w.add_episode(**numbered_episode(40 + k))
        old.append(40 + k)
    before = path.read_bytes()
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        w.add_episode(**numbered_episode(50))
    after = path.read_bytes()
    new_slot = next(o for o in SLOT_OFFSETS if before[o : o + 64] != after[o : o + 64])
    assert parse_slot(after[new_slot : new_slot + 64]) is not None
    for cut in (8, 24, 40, 60):  # a slot write that stopped after `cut` bytes
        torn = bytearray(after)
        torn[new_slot + cut : new_slot + 64] = before[new_slot + cut : new_slot + 64]
        path.write_bytes(bytes(torn))
        assert check_state(path, {"old": old, "new": [*old, 50]}) == "old"
    append_works(path, old)
