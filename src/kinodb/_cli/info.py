"""``kino info``: summary of a dataset, optionally per episode."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

from kinodb.errors import CorruptFileError, FormatError, UnsupportedVersionError
from kinodb.kdb.reader import Database, open_database


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("info", help="summarise a .kdb file")
    p.add_argument("path")
    p.add_argument("-e", "--episodes", action="store_true", help="also list every episode")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    """Print the summary (and the episode table)."""
    with _open(args.path) as db:
        if args.json:
            out: dict[str, Any] = {
                "path": db.path(), "format_version": db.version(),
                "num_episodes": db.num_episodes(), "num_frames": db.num_frames(),
                "dataset": db.dataset_info(),
            }  # fmt: skip
            if args.episodes:
                out["episodes"] = [db.read_meta(i) for i in range(len(db))]
            print(json.dumps(out, indent=2, default=str))
            return 0
        print(db.summary())
        table = db.episodes()
        if len(db):
            emb, counts = _counts(table["embodiment"])
            tasks = sorted(set(table["task"].tolist()))
            print(
                f"  tasks: {len(tasks)}: "
                + "; ".join(_clip(t, 40) for t in tasks[:5])
                + (" ..." if len(tasks) > 5 else "")
            )
            print("  per embodiment: " + ", ".join(f"{e} {c}" for e, c in zip(emb, counts, strict=True)))
            print(f"  fps: {_fps(table['fps'])}")
        if args.episodes:
            print(f"\n{'ID':>6}  {'EMBODIMENT':<14}{'FRAMES':>7}{'ACT':>5}{'STATE':>6}  {'SUCCESS':<8}TASK")
            for i in range(len(db)):
                m = db.read_meta(i)
                succ = {True: "yes", False: "no", None: "-"}[m["success"]]
                print(f"{m['episode_id']:>6}  {_clip(m['embodiment'], 13):<14}{m['num_frames']:>7}"
                      f"{m['action_dim']:>5}{m['state_dim']:>6}  {succ:<8}{_clip(m['task'], 40)}")  # fmt: skip
    return 0


def _open(path: str) -> Database:
    """Open ``path``; when it is not a .kdb file but a source ``kino ingest`` reads, say so.

    Raises:
        FormatError: ``path`` is not a .kdb file (with the ``kino ingest`` command when
            it is a dataset in another format).
        OSError: ``path`` is missing, or a folder that no ingest format recognises.
    """
    try:
        return open_database(path)
    except (FormatError, IsADirectoryError) as exc:
        if isinstance(exc, (CorruptFileError, UnsupportedVersionError)):
            raise  # a .kdb file after all: the hint would mislead
        fmt = _ingest_format(path)
        if fmt is None:
            raise
        what = f"{exc}" if isinstance(exc, FormatError) else f"{path}: a folder, not a .kdb file"
        out = (os.path.splitext(os.path.basename(os.path.abspath(path)))[0] or "out") + ".kdb"
        if os.path.realpath(out) == os.path.realpath(path):  # an HDF5 file named x.kdb
            out = out.removesuffix(".kdb") + "_ingested.kdb"
        raise FormatError(
            f"{what}; it looks like {fmt}: convert it with "
            f"kino ingest {shlex.quote(path)} -o {shlex.quote(out)}"
        ) from exc


def _ingest_format(path: str) -> str | None:
    """The ``kino ingest`` format that recognises ``path`` (with what it is), or None."""
    from kinodb._cli.ingest import _KINDS  # deferred: kino info needs no ingest otherwise
    from kinodb.ingest._base import source_class

    try:
        fmt = source_class("auto", path).format
    except Exception:  # a hint only: no error of detection (a plug-in's) replaces the real one
        return None
    return f"{fmt} ({_KINDS[fmt]})" if fmt in _KINDS else fmt


def _fps(values: Any) -> str:
    """The frame rates, with the episodes of each when they differ: ``15`` or ``5 (25 episodes), 30 (1 episode)``."""
    import numpy as np

    rates, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    if len(rates) == 1:
        return f"{rates[0]:g}"
    return ", ".join(
        f"{r:g} ({c} episode{'' if c == 1 else 's'})"
        for r, c in zip(rates.tolist(), counts.tolist(), strict=True)
    )


def _counts(values: Any) -> tuple[list[str], list[int]]:
    import numpy as np

    uniq, counts = np.unique(values.astype(str), return_counts=True)
    return uniq.tolist(), counts.tolist()
