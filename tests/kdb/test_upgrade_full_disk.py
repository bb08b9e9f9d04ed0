"""`upgrade` onto a full disk reports the output's failure, not an episode to skip."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb.errors import WriterError
from kinodb.kdb import upgrade as upgrade_module
from kinodb.kdb.writer import Writer


class _DiskFull:
    """A writer's buffered file whose writes fail as on a full disk."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


class _FullDiskWriter(Writer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fh = _DiskFull(self._fh)  # type: ignore[assignment]


def _source(path: Path, version: str) -> None:
    rng = np.random.default_rng(13)
    if version == "0.1":
        path.write_bytes(encode([random_episode(rng, 3, 2, 2) for _ in range(3)]))
        return
    with kinodb.Writer(path) as w:
        for _ in range(3):
            w.add_episode(actions=rng.random((3, 2)).astype(np.float32))


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("version", ["0.1", "1.0"])
def test_a_full_disk_fails_the_upgrade_with_the_writers_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, on_error: str
) -> None:
    src, dst = tmp_path / "old.kdb", tmp_path / "new.kdb"
    _source(src, version)
    monkeypatch.setattr(upgrade_module, "Writer", _FullDiskWriter)
    with pytest.raises(WriterError) as info:
        upgrade_module.upgrade(src, dst, on_error=on_error)
    message = str(info.value)
    assert message.startswith(f"{dst}: ") and "failed (No space left on device)" in message
    assert "on-error" not in message and "cannot be stored as v1" not in message
    assert not dst.exists()
