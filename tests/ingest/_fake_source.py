"""A test-only ingest source: a folder with ``fake.json`` listing episodes.

Arrays are generated from each episode's seed, so a worker process that re-creates
the source produces the same data. An episode marked ``bad`` fails to read.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest import SourceInfo, SourceOptions


def write_fake(folder: str | os.PathLike[str], episodes: list[dict[str, Any]]) -> str:
    """Create a fake source folder; each episode dict has key, frames, seed and maybe bad (and why)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fake.json"), "w") as fh:
        json.dump({"episodes": episodes}, fh)
    return os.fspath(folder)


def fake_arrays(seed: int, frames: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "actions": rng.standard_normal((frames, 3)),  # float64: kept unless a dtype is asked for
        "states": rng.standard_normal((frames, 2)).astype(np.float32),
        "rewards": np.linspace(0, 1, frames),
        "images": {"cam": rng.integers(0, 255, (frames, 8, 8, 3), dtype=np.uint8)},
        "extra_arrays": {"lang": rng.standard_normal((frames, 4))},
    }


class FakeSource:
    """Reads folders made by `write_fake`."""

    format: ClassVar[str] = "fake"

    def __init__(self, path: str, options: SourceOptions) -> None:
        self.path, self.options = path, options
        with open(os.path.join(path, "fake.json")) as fh:
            self._eps = {e["key"]: e for e in json.load(fh)["episodes"]}

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "fake.json"))

    def episodes(self) -> list[str]:
        return list(self._eps)

    def info(self) -> SourceInfo:
        return SourceInfo(
            "fake-1", {"states": {"components": {"xy": [0, 2]}}}, {"origin": "test"}, 15.0, "bot", "stack"
        )

    def read(self, key: str) -> dict[str, Any]:
        ep = self._eps[key]
        if ep.get("bad"):
            why = ep.get("why", "key 'actions' has 3 rows, 'states' has 4")
            raise ConversionError(f"{self.path}: episode {key}: {why}")
        args = fake_arrays(ep["seed"], ep["frames"])
        args["success"] = ep["seed"] % 2 == 0
        args["extra"] = {"seed": ep["seed"]}
        if not self.options.images:
            args.pop("images")
        return args

    def close(self) -> None:
        pass
