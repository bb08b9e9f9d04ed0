"""One Writer shared by several threads (a thread pool converting episodes): every episode
is written whole, the commit validates, and each episode reads back exactly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import WriterError
from kinodb.kdb.validate import validate

THREADS, EACH = 4, 16


def _episode(thread: int, k: int) -> dict[str, Any]:
    rng = np.random.default_rng([thread, k])
    T = 16 + (thread * EACH + k) % 7  # payloads of different lengths interleave
    return {
        "actions": rng.normal(size=(T, 6)).astype(np.float32),
        "states": rng.normal(size=(T, 3)),
        "images": {"front": rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8)},
        "extra_arrays": {"force": rng.integers(-9, 9, (T, 2)).astype(np.int16)},
        "task": f"thread {thread} episode {k}",
        "extra": {"thread": thread, "k": k},
    }


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_threads_adding_episodes_to_one_writer_commit_every_episode_intact(
    tmp_path: Path, codec: str
) -> None:
    path = tmp_path / "t.kdb"
    start = threading.Barrier(THREADS)
    indexes: list[int] = []

    with kinodb.Writer(path, mode="w", image_codec=codec) as w:

        def work(thread: int) -> None:
            start.wait()
            for k in range(EACH):
                indexes.append(w.add_episode(**_episode(thread, k)))

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, range(THREADS)))
    assert sorted(indexes) == list(range(THREADS * EACH))
    report = validate(path)
    assert report.ok, report.errors[:3]
    with kinodb.open(path) as db:
        assert len(db) == THREADS * EACH
        seen = set()
        for i in range(len(db)):
            ep = db.read_episode(i)
            meta = ep["meta"]
            assert meta["episode_id"] == i
            want = _episode(meta["thread"], meta["k"])
            assert meta["task"] == want["task"]
            np.testing.assert_array_equal(ep["actions"], want["actions"])
            np.testing.assert_array_equal(ep["states"], want["states"])
            np.testing.assert_array_equal(ep["force"], want["extra_arrays"]["force"])
            np.testing.assert_array_equal(ep["images"]["front"], want["images"]["front"])
            seen.add((meta["thread"], meta["k"]))
    assert len(seen) == THREADS * EACH


def test_closing_while_threads_add_keeps_each_episode_whole(tmp_path: Path) -> None:
    """Episodes added before the commit are in the file; those after it are refused."""
    path = tmp_path / "c.kdb"
    w = kinodb.Writer(path, mode="w", image_codec="png")
    w.add_episode(**_episode(9, 0))
    added, refused = [], []
    go = threading.Event()

    def work(thread: int) -> None:
        go.wait()
        for k in range(EACH):
            try:
                w.add_episode(**_episode(thread, k))
            except WriterError as exc:
                assert "writer is closed" in str(exc)
                refused.append((thread, k))
            else:
                added.append((thread, k))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    go.set()
    w.close()
    for t in threads:
        t.join()
    assert len(added) + len(refused) == THREADS * EACH
    assert validate(path).ok
    with kinodb.open(path) as db:
        stored = {(db.read_meta(i)["thread"], db.read_meta(i)["k"]) for i in range(1, len(db))}
        assert len(db) == 1 + len(stored)
        for i in range(len(db)):
            meta = db.read_meta(i)
            np.testing.assert_array_equal(
                db.read_array(i, "actions"), _episode(meta["thread"], meta["k"])["actions"]
            )
    assert stored <= set(added)  # an episode added after the commit is not in the file
