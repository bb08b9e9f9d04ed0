"""Give an episode of a kinodb export back the metadata the export recorded of it."""

from __future__ import annotations

from typing import Any

from kinodb._provenance import carried_on_ingest
from kinodb.ingest._base import TOTAL_UNKNOWN, exported_extra

_BUILTIN_META = frozenset(
    ("episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim", "success",
     "total_reward")
)  # fmt: skip
_PROVENANCE = ("source_file", "source_episode")  # the ingest sets these anew


def restore_meta(args: dict[str, Any], meta: dict[str, Any], fps_given: bool) -> bool:
    """Give an episode back what its export recorded of it, ``meta`` (its ``read_meta`` dict):
    task, embodiment, fps (unless ``fps_given``), success, total reward and extra fields
    (joining ``args``' own); return False, changing nothing, where ``meta`` counts other
    frames than ``args`` holds (the source was changed since). Its provenance moves on as
    `kinodb.merge` moves it: the ingest names this source in ``source_file`` and
    ``source_episode``, and what the episode held so goes to ``origin_*``."""
    T = len(args["actions"])
    if meta.get("num_frames") != T:
        return False
    if isinstance(meta.get("task"), str):
        args["task"] = meta["task"]
    if isinstance(meta.get("embodiment"), str):
        args["embodiment"] = meta["embodiment"]
    fps = meta.get("fps")
    if not fps_given and isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0:
        args["fps"] = float(fps)
    success = meta.get("success")
    if success is None or isinstance(success, bool):
        args["success"] = success
    if "total_reward" in meta:
        total = meta["total_reward"]
        if total is None:
            args[TOTAL_UNKNOWN] = True
        elif isinstance(total, (int, float)) and not isinstance(total, bool):
            args["total_reward"] = float(total)
    extra = exported_extra(meta, _BUILTIN_META)
    kept = carried_on_ingest(extra)
    for key in _PROVENANCE:
        extra.pop(key, None)
    extra.update(kept)
    args["extra"] = {**args.get("extra", {}), **extra}
    return True
