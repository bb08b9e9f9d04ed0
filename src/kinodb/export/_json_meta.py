"""Export metadata only: ``dataset.json`` plus ``episodes.jsonl``, one line per episode."""

from __future__ import annotations

import os
from typing import Any

from kinodb.export._base import dataset_record, dumps, episode_record, write_json
from kinodb.kdb.reader import Database


def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> None:
    """Write the metadata of episodes ``positions`` of ``db`` into the empty folder ``out``.

    Each line of ``episodes.jsonl`` is ``{"position", "meta", "cameras"}``: the episode's
    position in the source, its `read_meta` dict, and its cameras' codec and shape.
    """
    write_json(os.path.join(out, "dataset.json"), dataset_record(db, positions, facts), indent=1)
    with open(os.path.join(out, "episodes.jsonl"), "w", encoding="utf-8", newline="\n") as fh:
        for i in positions:
            fh.write(dumps(episode_record(db, i)))
            fh.write("\n")
