"""RLDS / TFDS dataset folders: where the shards of a split are, and the metadata files.

A dataset folder holds ``features.json`` and ``dataset_info.json`` (both optional, their
JSON types checked as they are loaded) and shards named by the TFDS template
``{DATASET}-{SPLIT}.tfrecord-{SHARD:05d}-of-{N:05d}`` (or the older ``-{SHARD:05d}``).
``dataset_info.json`` lists each split's shards and their lengths: TFDS counts records
(examples), so a shard's length is its episodes, or its steps where a record is one step.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from kinodb.errors import ConversionError
from kinodb.ingest import _tfrecord
from kinodb.ingest._base import not_this_format
from kinodb.ingest._options import option_name, option_value
from kinodb.ingest._rlds_features import FIXES, check_features, check_info

SHARD_RE = re.compile(r"^(?P<dataset>.+)-(?P<split>[^-.]+)\.tfrecord-(?P<shard>\d+)(?:-of-(?P<num>\d+))?$")
_TEMPLATES = ("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}")


@dataclass(frozen=True, slots=True)
class Shard:
    """A shard file of the split read."""

    name: str
    path: str
    expected: int | None  # records (TFDS examples) dataset_info.json lists for it


@dataclass(frozen=True, slots=True)
class OtherSplit:
    """A split of the dataset that is not read: its name, and its size where known."""

    name: str
    records: int | None  # from dataset_info.json's shard lengths: episodes, or steps (per-step layout)
    shards: int

    def describe(self, unit: str) -> str:
        """``val (3 episodes)``: its records as ``unit`` (``episode`` or ``step``), else its shards."""
        if self.records is not None:
            return f"{self.name} ({self.records} {unit}{'s' * (self.records != 1)})"
        return f"{self.name} ({self.shards} shard{'s' * (self.shards != 1)})"


def load_json(root: str, name: str) -> dict[str, Any] | None:
    """``root/name`` (``features.json`` or ``dataset_info.json``), its JSON types checked."""
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return None
    fix = FIXES[name]
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: not readable JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object; {fix}")
    if name == "features.json":
        check_features(data, path, fix)
    else:
        check_info(data, path, fix)
    return data


def is_tfrecord_file(path: str) -> bool:
    if ".tfrecord" in os.path.basename(path):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(_tfrecord.HEADER.size)
    except OSError:
        return False
    if len(head) < _tfrecord.HEADER.size:
        return False
    crc: int = _tfrecord.HEADER.unpack(head)[1]
    return _tfrecord.masked_crc32c(head[:8]) == crc


def has_dataset(folder: str) -> bool:
    names = os.listdir(folder)
    return any(n in ("features.json", "dataset_info.json") or ".tfrecord" in n for n in names)


def resolve(path: str) -> tuple[str, str | None]:
    """The dataset folder, and the one shard file when ``path`` is a file."""
    if os.path.isfile(path):
        if not is_tfrecord_file(path):
            raise ConversionError(
                f"{path}: not a TFRecord file (an RLDS shard): its first bytes are no TFRecord record "
                f"header{not_this_format(path, 'rlds')}"
            )
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if has_dataset(path):
        return path, None
    versions = versions_below(path)
    if len(versions) == 1:
        return os.path.join(path, versions[0]), None
    if versions:
        raise ConversionError(
            f"{path}: holds several TFDS dataset versions ({', '.join(versions)}); pass one of those folders"
        )
    raise ConversionError(
        f"{path}: not an RLDS dataset: no features.json, dataset_info.json or *.tfrecord* files, here or "
        f"in a TFDS version folder (NAME/VERSION) below it{not_this_format(path, 'rlds')}"
    )


def versions_below(path: str) -> list[str]:
    """TFDS version folders (with a ``dataset_info.json``) below ``path``, relative to it:
    ``VERSION`` for a dataset folder, ``NAME/VERSION`` for a TFDS data_dir."""
    found = []
    for d in sorted(os.listdir(path)):
        sub = os.path.join(path, d)
        if os.path.isfile(os.path.join(sub, "dataset_info.json")):
            found.append(d)
        elif os.path.isdir(sub):
            found += [
                f"{d}/{v}"
                for v in sorted(os.listdir(sub))
                if os.path.isfile(os.path.join(sub, v, "dataset_info.json"))
            ]
    return found


def _template_names(template: str, dataset: str, split: str, fmt: str, n: int) -> list[str]:
    return [
        template.replace("{DATASET}", dataset).replace("{SPLIT}", split).replace("{FILEFORMAT}", fmt)
        .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}").replace("{SHARD_INDEX}", f"{i:05d}")
        .replace("{NUM_SHARDS}", f"{n:05d}")
        for i in range(n)
    ]  # fmt: skip


def _pass_one(splits: list[str]) -> str:
    """How to read one of ``splits`` (``": pass split='train' or split='val'"``; ``""`` for none)."""
    return f": pass {' or '.join(option_value('split', s, whole=True) for s in splits)}" if splits else ""


def split_shards(root: str, info: dict[str, Any], split: str) -> list[Shard]:
    """Shards of ``split`` as ``dataset_info.json`` lists them."""
    fmt = str(info.get("fileFormat") or "tfrecord")
    if fmt != "tfrecord":
        raise ConversionError(
            f"{root}: file format {fmt!r} is not supported; only TFRecord shards can be read"
        )
    splits = {str(s.get("name")): s for s in info.get("splits", []) if isinstance(s, dict)}
    if split not in splits:
        raise ConversionError(
            f"{root}: no split {split!r}; dataset_info.json lists {', '.join(sorted(splits)) or 'none'}"
            f"{_pass_one(sorted(splits))}"
        )
    entry = splits[split]
    lengths = [int(x) for x in entry.get("shardLengths", [])]
    n = len(lengths) or int(entry.get("numShards", 0))
    if n == 0:
        raise ConversionError(f"{root}: split {split!r} has no shards in dataset_info.json")
    dataset = str(info.get("name", ""))
    templates = [t for t in (entry.get("filepathTemplate"), *_TEMPLATES) if t]
    candidates = [_template_names(str(t), dataset, split, fmt, n) for t in templates]
    for names in candidates:
        if all(os.path.isfile(os.path.join(root, name)) for name in names):
            return [
                Shard(name, os.path.join(root, name), lengths[i] if lengths else None)
                for i, name in enumerate(names)
            ]
    missing = [name for name in candidates[0] if not os.path.isfile(os.path.join(root, name))]
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    here = n - len(missing)
    present = (
        f"; or ingest the {here} shard{'s' * (here != 1)} here: pass one shard file, or move "
        "dataset_info.json out of the folder (the shards are then found by their names, NAME-SPLIT.tfrecord-NNNNN)"
        if here
        else ""
    )
    raise ConversionError(
        f"{root}: split {split!r} lists {n} shards but {len(missing)} {'is' if len(missing) == 1 else 'are'} missing: {shown} (a partial "
        f"download?); copy them from the dataset's source{present}"
    )


def has_shards(root: str, info: dict[str, Any], split: str) -> bool:
    """Whether every shard ``dataset_info.json`` lists for ``split`` is in ``root``."""
    try:
        split_shards(root, info, split)
    except ConversionError:
        return False
    return True


def info_splits(info: dict[str, Any], read: str) -> list[OtherSplit]:
    """The splits ``dataset_info.json`` lists besides ``read``."""
    out = []
    for entry in info.get("splits", []):
        if not isinstance(entry, dict) or str(entry.get("name")) == read:
            continue
        try:
            lengths = [int(x) for x in entry.get("shardLengths", [])]
            shards = len(lengths) or int(entry.get("numShards", 0))
        except (TypeError, ValueError):
            lengths, shards = [], 0
        out.append(OtherSplit(str(entry.get("name")), sum(lengths) if lengths else None, shards))
    return sorted(out, key=lambda s: s.name)


def listed_splits(root: str, read: str) -> list[OtherSplit]:
    """The splits the shard names of ``root`` carry besides ``read`` (no ``dataset_info.json``)."""
    counts: dict[str, int] = {}
    for name in os.listdir(root):
        m = SHARD_RE.match(name)
        if m is not None and m["split"] != read and os.path.isfile(os.path.join(root, name)):
            counts[m["split"]] = counts.get(m["split"], 0) + 1
    return [OtherSplit(split, None, n) for split, n in sorted(counts.items())]


def listed_shards(root: str, split: str | None) -> list[Shard]:
    """Shards found by name when there is no ``dataset_info.json``."""
    names = sorted(n for n in os.listdir(root) if ".tfrecord" in n and os.path.isfile(os.path.join(root, n)))
    templated = [(m, n) for n in names if (m := SHARD_RE.match(n))]
    if templated:
        want = split or "train"
        chosen = sorted((int(m["shard"]), n) for m, n in templated if m["split"] == want)
        if not chosen:
            found = sorted({m["split"] for m, _ in templated})
            raise ConversionError(
                f"{root}: no shards of split {want!r}; found splits {', '.join(found)}{_pass_one(found)}"
            )
        return [Shard(n, os.path.join(root, n), None) for _, n in chosen]
    if split is not None:
        raise ConversionError(
            f"{root}: shard names carry no split (expected NAME-SPLIT.tfrecord-NNNNN); leave "
            f"{option_name('split')} out"
        )
    if not names:
        raise ConversionError(f"{root}: no *.tfrecord* shards")
    return [Shard(n, os.path.join(root, n), None) for n in names]
