"""Shared factories: seeded episodes and small ``.kdb`` files built from them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

import kinodb
from _factories import smooth_frames

# The user's environment must not change what the tests see: a token would put every test
# server behind authentication, a telemetry path would make every Runner log. Cleared at
# import, before any fixture starts a server or a process that inherits the environment.
for _name in (
    "KINODB_TOKEN",
    "KINFER_LOG_PATH",
    "KINFER_LOG_UUID",
    "GRPC_VERBOSITY",
    "HDF5_USE_FILE_LOCKING",
):
    os.environ.pop(_name, None)

# A loaded machine can pause any test for longer than Hypothesis's default 200 ms deadline.
settings.register_profile("kinodb", deadline=None)
settings.load_profile("kinodb")

Episode = dict[str, Any]
EpisodeFactory = Callable[..., Episode]
KdbFactory = Callable[..., tuple[Path, list[Episode]]]


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(20261121)


@pytest.fixture
def make_episode(rng: np.random.Generator) -> EpisodeFactory:
    """Build keyword arguments for `Writer.add_episode` from a seeded generator."""

    def make(
        T: int = 6,
        *,
        action_dim: int = 4,
        state_dim: int = 3,
        cameras: Mapping[str, tuple[int, int, int]] | None = None,
        extra_arrays: Mapping[str, tuple[int, ...]] | None = None,
        timestamps: bool = False,
        **fields: Any,
    ) -> Episode:
        ep: Episode = {
            "actions": rng.normal(size=(T, action_dim)).astype(np.float32),
            "states": rng.normal(size=(T, state_dim)).astype(np.float32),
            "rewards": rng.uniform(0, 1, T).astype(np.float32),
        }
        if timestamps:
            ep["timestamps"] = np.cumsum(rng.uniform(0.05, 0.15, T))
        if cameras:
            ep["images"] = {name: smooth_frames(rng, (T, *hwc)) for name, hwc in cameras.items()}
        if extra_arrays:
            ep["extra_arrays"] = {
                name: rng.normal(size=(T, *shape)).astype(np.float32) for name, shape in extra_arrays.items()
            }
        ep.update(fields)
        return ep

    return make


@pytest.fixture
def make_kdb(tmp_path: Path, make_episode: EpisodeFactory) -> KdbFactory:
    """Write a ``.kdb`` file and return ``(path, episodes written)``.

    ``episodes`` may be a count (episodes come from `make_episode` with ``episode_kw``)
    or a list of add_episode keyword dicts.
    """
    counter = iter(range(1_000_000))

    def make(
        episodes: int | Sequence[Episode] = 3,
        *,
        path: Path | None = None,
        mode: str = "x",
        image_codec: str = "raw",
        metadata: Mapping[str, Any] | None = None,
        **episode_kw: Any,
    ) -> tuple[Path, list[Episode]]:
        if path is None:
            path = tmp_path / f"f{next(counter)}.kdb"
        if isinstance(episodes, int):
            eps = [
                make_episode(
                    embodiment=("franka", "widowx")[i % 2],
                    task=f"task {i % 3}",
                    success=(True, False, None)[i % 3],
                    extra={"scene": ("lab", "sim")[i % 2], "attempt": i},
                    **episode_kw,
                )
                for i in range(episodes)
            ]
        else:
            eps = list(episodes)
        with kinodb.Writer(path, mode=mode, image_codec=image_codec, metadata=metadata) as w:
            for ep in eps:
                w.add_episode(**ep)
        return path, eps

    return make


@pytest.fixture
def assert_episode() -> Callable[[kinodb.Database, int, Episode], None]:
    """Check that episode ``i`` of a database holds exactly what was written (raw/png images)."""

    def check(db: kinodb.Database, i: int, ep: Episode) -> None:
        got = db.read_episode(i)
        T = len(ep["actions"])
        for name in ("actions", "states", "rewards", "timestamps"):
            if name in ep:
                np.testing.assert_array_equal(got[name], np.asarray(ep[name]), err_msg=name)
        for name, arr in ep.get("extra_arrays", {}).items():
            np.testing.assert_array_equal(got[name], arr, err_msg=name)
        for name, frames in ep.get("images", {}).items():
            want = frames if frames.ndim == 4 else frames[..., None]
            np.testing.assert_array_equal(got["images"][name], want, err_msg=name)
        meta = got["meta"]
        assert meta["num_frames"] == T
        for key in ("embodiment", "task", "success"):
            if key in ep:
                assert meta[key] == ep[key], key
        for key, value in ep.get("extra", {}).items():
            assert meta[key] == value, key

    return check
