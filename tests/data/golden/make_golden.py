"""Write the golden ``.kdb`` v1.0 file and the JSON of what it must read back as.

Run once per released format version and commit both files; never regenerate a released
one (tests/compat/test_golden.py reads them with the current reader)::

    python tests/data/golden/make_golden.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import kinodb

HERE = Path(__file__).resolve().parent
KDB = HERE / "v1_0.kdb"
EXPECTED = HERE / "v1_0.json"


def png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, "PNG")
    return buf.getvalue()


def episodes() -> list[dict[str, Any]]:
    rng = np.random.default_rng(2026)
    out = []
    for i, T in enumerate((3, 2, 4)):
        ep: dict[str, Any] = {
            "actions": rng.normal(size=(T, 3)).astype(np.float32),
            "states": rng.normal(size=(T, 2)).astype(np.float64),
            "rewards": np.round(rng.uniform(0, 1, T), 2).astype(np.float32),
            "extra_arrays": {
                "lang": rng.normal(size=(T, 2)).astype(np.float16),
                "contact": rng.integers(0, 2, T).astype(bool),
                "joint_ids": np.arange(T * 2, dtype=np.int16).reshape(T, 2),
            },
            "images": {
                "front": rng.integers(0, 256, (T, 4, 3, 3), dtype=np.uint8),
                "wrist": [png(f) for f in rng.integers(0, 256, (T, 2, 3, 1), dtype=np.uint8)],
            },
            "embodiment": ("franka", "widowx", "franka")[i],
            "task": ("pick the block", "open the drawer", "pick the block")[i],
            "fps": (10.0, 15.0, 10.0)[i],
            "success": (True, False, None)[i],
            "extra": [
                {"scene": "lab", "attempt": 1, "score": 0.5, "tags": ["a", 1], "ok": True},
                {"scene": "sim", "attempt": 2, "ok": False},
                {"scene": None, "score": 1.25, "tags": []},
            ][i],
        }
        if i == 2:
            ep["timestamps"] = np.array([0.0, 0.1, 0.25, 0.3])
            ep["total_reward"] = 7.5
        out.append(ep)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(db: kinodb.Database) -> dict[str, Any]:
    """Everything a reader must return for the file, as JSON."""
    eps = []
    for i in range(len(db)):
        ep = db.read_episode(i)
        arrays = {
            name: {
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "values": arr.tolist(),
                "sha256": sha256(arr.tobytes()),
            }
            for name, arr in sorted(ep.items())
            if name not in ("meta", "images")
        }
        cameras = {
            name: {
                **db.cameras(i)[name],
                "frames_sha256": [sha256(db.read_image_bytes(i, name, t)) for t in range(len(frames))],
                "pixels_sha256": sha256(frames.tobytes()),
            }
            for name, frames in sorted(ep["images"].items())
        }
        eps.append({"meta": ep["meta"], "arrays": arrays, "cameras": cameras})
    return {
        "version": db.version(),
        "num_episodes": db.num_episodes(),
        "num_frames": db.num_frames(),
        "dataset": db.dataset_info(),
        "episodes": eps,
    }


def main() -> None:
    os.environ["SOURCE_DATE_EPOCH"] = "1790000000"
    schema = {"actions": {"names": ["dx", "dy", "grip"]}, "states": {"components": {"pos": [0, 2]}}}
    with kinodb.Writer(
        KDB,
        mode="w",
        image_codec="raw",
        schema=schema,
        source_format="golden",
        metadata={"robot": "golden", "n": 1},
    ) as w:
        for ep in episodes():
            w.add_episode(**ep)
    with kinodb.open(KDB) as db:
        EXPECTED.write_text(json.dumps(describe(db), indent=1, sort_keys=True, default=list) + "\n")
    print(f"wrote {KDB} ({KDB.stat().st_size} bytes) and {EXPECTED}")


if __name__ == "__main__":
    main()
