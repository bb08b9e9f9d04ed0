"""What an earlier export's folder holds besides what the export wrote there.

An overwrite replaces an earlier kinodb export only when every entry in its folder, at
every level, is one its format writes: a file a person added anywhere (``meta/NOTES.md``,
a ``labels.csv`` beside an episode's arrays, another camera's videos) keeps the folder.

- ``json``: ``dataset.json`` and ``episodes.jsonl``.
- ``numpy``: ``dataset.json``, ``episodes.json`` and ``episode_N/`` folders, each holding
  what its ``meta.json`` lists (the arrays' files, and each camera's ``.npy`` file or
  frame files under ``images/``).
- ``zarr``: ``.zgroup``, ``.zattrs`` and ``kinodb_episodes.jsonl``, and under ``data/`` and ``meta/`` their ``.zgroup``
  and the arrays its ``.zattrs`` record names, each a folder of ``.zarray`` and chunk files
  (``0.0``, ``1.0``, ...).
- ``rlds``: ``dataset_info.json``, ``features.json``, ``kinodb_export.json`` and TFRecord
  shards named as the export names them (``NAME-train.tfrecord-00000-of-00001``).
- ``lerobot``: the ``meta/`` files, ``meta/episodes`` and ``data`` Parquet files in
  ``chunk-CCC/file-FFF`` form, and ``videos/<key>/chunk-CCC/file-FFF.mp4`` for each video
  feature of ``meta/info.json``.

File browsers' own files (``.DS_Store`` ...) are allowed anywhere; a symbolic link never.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

OS_LITTER = frozenset((".DS_Store", "Thumbs.db", "desktop.ini"))  # file browsers add these to any folder
_MAX_JSON_BYTES = 1 << 26  # meta.json and info.json are kilobytes: anything this large is no export's

# A relative path (with "/") and whether it is a folder -> whether the export writes it.
Rule = Callable[[str, bool], bool]

_JSON_FILES = frozenset(("dataset.json", "episodes.jsonl"))
_EPISODE_DIR = re.compile(r"episode_[0-9]+")
_LEROBOT_DIRS = re.compile(
    r"meta|meta/episodes|meta/episodes/chunk-[0-9]{3,}|data|data/chunk-[0-9]{3,}"
    r"|videos|videos/(?P<key>[^/]+)(/chunk-[0-9]{3,})?"
)
_LEROBOT_FILES = re.compile(
    r"meta/(info\.json|stats\.json|tasks\.parquet|kinodb\.json|kinodb_episodes\.jsonl)"
    r"|meta/episodes/chunk-[0-9]{3,}/file-[0-9]{3,}\.parquet|data/chunk-[0-9]{3,}/file-[0-9]{3,}\.parquet"
    r"|videos/(?P<key>[^/]+)/chunk-[0-9]{3,}/file-[0-9]{3,}\.mp4"
)


def unexpected_entries(path: str, fmt: str, *, limit: int = 4) -> list[str]:
    """Up to ``limit`` entries under the earlier ``fmt`` export at ``path`` that such an
    export does not write, as paths relative to ``path`` (a folder with a trailing ``/``), in
    sorted order; a folder that cannot be listed counts as one."""
    rules = {
        "json": _json_rule,
        "numpy": _numpy_rule,
        "lerobot": _lerobot_rule,
        "zarr": _zarr_rule,
        "rlds": _rlds_rule,
    }
    rule = rules[fmt](path)
    found: list[str] = []

    def walk(rel: str) -> None:
        try:
            with os.scandir(os.path.join(path, rel) if rel else path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            found.append(f"{rel}/")
            return
        for entry in entries:
            if len(found) >= limit:
                return
            sub = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.is_symlink() or not (rule(sub, is_dir) or (not is_dir and entry.name in OS_LITTER)):
                found.append(f"{sub}/" if is_dir else sub)
            elif is_dir:
                walk(sub)

    walk("")
    return found


def unexpected_zip_entries(names: list[str], attrs: Any, *, limit: int = 4) -> list[str]:
    """`unexpected_entries` for a zipped zarr export: up to ``limit`` of the archive's entry
    ``names`` that the export does not write (folders, explicit or implied, checked too),
    given its root attributes ``attrs``."""
    rule = _zarr_rule("", attrs)
    entries: dict[str, bool] = {}
    for name in names:
        parts = name.rstrip("/").split("/")
        for k in range(1, len(parts)):
            entries["/".join(parts[:k])] = True
        entries[name.rstrip("/")] = name.endswith("/") or entries.get(name.rstrip("/"), False)
    found = [
        f"{rel}/" if is_dir else rel
        for rel, is_dir in sorted(entries.items())
        if not (rule(rel, is_dir) or (not is_dir and rel.rpartition("/")[2] in OS_LITTER))
    ]
    return found[:limit]


def _json_rule(path: str) -> Rule:
    return lambda rel, is_dir: not is_dir and rel in _JSON_FILES


_RLDS_FILES = frozenset(("dataset_info.json", "features.json", "kinodb_export.json"))
_RLDS_SHARD = re.compile(r"[a-z][a-z0-9_]*-train\.tfrecord-[0-9]{5}-of-[0-9]{5}")


def _rlds_rule(path: str) -> Rule:
    return lambda rel, is_dir: not is_dir and (rel in _RLDS_FILES or _RLDS_SHARD.fullmatch(rel) is not None)


def _lerobot_rule(path: str) -> Rule:
    info = _read_json(os.path.join(path, "meta", "info.json"))
    features = info.get("features") if isinstance(info, dict) else None
    videos = (
        {k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "video"}
        if isinstance(features, dict)
        else set()
    )

    def rule(rel: str, is_dir: bool) -> bool:
        match = (_LEROBOT_DIRS if is_dir else _LEROBOT_FILES).fullmatch(rel)
        return match is not None and match.group("key") in (None, *videos)

    return rule


_ZARR_CHUNK = re.compile(r"[0-9]+(\.[0-9]+)*")


def _zarr_rule(path: str, attrs: Any = None) -> Rule:
    """The rule of a zarr export at ``path``, or of one whose root attributes are ``attrs``
    (a zip archive's)."""
    if attrs is None:
        attrs = _read_json(os.path.join(path, ".zattrs"))
    facts = attrs.get("kinodb_export") if isinstance(attrs, dict) else None
    layout = facts.get("layout") if isinstance(facts, dict) else None
    arrays: set[str] = set()
    if isinstance(layout, dict):
        for key in ("actions", "timestamps", "rewards", "is_terminal"):
            if isinstance(layout.get(key), str):
                arrays.add(f"data/{layout[key]}")
        for group, names in (("data", layout.get("states")), ("data", layout.get("cameras")),
                             ("data", layout.get("extra_arrays")), ("meta", layout.get("meta"))):  # fmt: skip
            if isinstance(names, (list, dict)):
                arrays.update(f"{group}/{k}" for k in names if isinstance(k, str))
    arrays.add("meta/episode_ends")

    def rule(rel: str, is_dir: bool) -> bool:
        if rel in (".zgroup", ".zattrs", "kinodb_episodes.jsonl"):
            return not is_dir
        if rel in ("data", "meta"):
            return is_dir
        if rel in ("data/.zgroup", "meta/.zgroup"):
            return not is_dir
        if is_dir:
            return rel in arrays
        folder, _, name = rel.rpartition("/")
        return folder in arrays and (name == ".zarray" or _ZARR_CHUNK.fullmatch(name) is not None)

    return rule


def _numpy_rule(path: str) -> Rule:
    episodes: dict[str, tuple[set[str], set[str]] | None] = {}  # folder -> (files, folders) it holds

    def rule(rel: str, is_dir: bool) -> bool:
        top, _, inner = rel.partition("/")
        if not inner:
            return (
                _EPISODE_DIR.fullmatch(top) is not None
                if is_dir
                else top in ("dataset.json", "episodes.json")
            )
        if top not in episodes:
            episodes[top] = _episode_entries(os.path.join(path, top, "meta.json"))
        held = episodes[top]
        return held is not None and inner in held[1 if is_dir else 0]

    return rule


def _episode_entries(meta_json: str) -> tuple[set[str], set[str]] | None:
    """The files and folders of a numpy export's episode folder, as its ``meta.json`` lists
    them, or None when it cannot be read (the folder is then no episode the export wrote)."""
    record = _read_json(meta_json)
    if not isinstance(record, dict):
        return None
    arrays, cameras = record.get("arrays"), record.get("cameras")
    if not isinstance(arrays, dict) or not isinstance(cameras, dict):
        return None
    files, folders = {"meta.json"}, {"images"} if cameras else set()
    try:
        files.update(str(a["file"]) for a in arrays.values())
        for cam in cameras.values():
            if "frames" in cam:  # a str.format pattern: frames.format(frame=t) is frame t's file
                pattern, T = str(cam["frames"]), int(cam["shape"][0])
                files.update(pattern.format(frame=t) for t in range(T))
                folders.add(os.path.dirname(pattern))
            else:
                files.add(str(cam["file"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return files, folders


def _read_json(path: str) -> Any:
    """The JSON value in the file ``path``, or None when it cannot be read."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > _MAX_JSON_BYTES:
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
