"""RLDS / TFDS dataset folders: where the shards of a split are, and the metadata files.

A dataset folder holds ``features.json`` and ``dataset_info.json`` (both optional, their
JSON types checked as they are loaded) and shards named by the TFDS template
``{DATASET}-{SPLIT}.tfrecord-{SHARD:05d}-of-{N:05d}`` (or the older ``-{SHARD:05d}``).
``dataset_info.json`` lists each split's shards and their lengths: TFDS counts records
(examples), so a shard's length is its episodes, or its steps where a record is one step.
`check_features` and `check_info` check the JSON types of the two files; `check_split`
refuses TFDS's split slices (``train[:80%]``), naming the episodes that give the same.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kinodb.errors import ConversionError
from kinodb.ingest import _tfrecord
from kinodb.ingest._base import not_this_format
from kinodb.ingest._options import option_name, option_value
from kinodb.ingest._rlds_features import REWRITE

SHARD_RE = re.compile(r"^(?P<dataset>.+)-(?P<split>[^-.]+)\.tfrecord-(?P<shard>\d+)(?:-of-(?P<num>\d+))?$")
_TEMPLATES = ("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}")
FIXES = {  # how to mend a TFDS metadata file; both are optional
    "features.json": f"{REWRITE}; or remove it: the features are then read from the first record",
    "dataset_info.json": f"{REWRITE}; or remove it: the shards are then found by their names "
    "(NAME-SPLIT.tfrecord-NNNNN)",
}


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


# -- TFDS metadata files -----------------------------------------------------------------

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}  # fmt: skip


def _bad(path: str, at: str, value: Any, expected: str, fix: str) -> ConversionError:
    """``path: at is <JSON type> (<value>); expected <expected>; <fix>``."""
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    if value is not None:
        shown = json.dumps(value)
        got += f" ({shown if len(shown) <= 40 else shown[:37] + '...'})"
    return ConversionError(f"{path}: {at} is {got}; expected {expected}; {fix}")


def _is_int(value: Any, *, minimum: int | None = None) -> bool:
    """An integer as TFDS writes one (int64 fields as strings), at least ``minimum``."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def check_features(node: Any, path: str, fix: str, at: str = "") -> None:
    """Check that a ``features.json`` tree holds the JSON types `flatten_features` reads.

    Raises:
        ConversionError: a field of another type; names ``path``, the field (dotted path
            ``at``), what was expected, and ends with ``fix``.
    """

    def sub(name: str) -> str:
        return f"{at}.{name}" if at else name

    if not isinstance(node, dict):
        raise _bad(path, at or "the top level", node, "an object (a feature)", fix)
    if not isinstance(node.get("pythonClassName", ""), str):
        raise _bad(path, sub("pythonClassName"), node["pythonClassName"], "a string", fix)
    for name in ("featuresDict", "sequence", "tensor", "image", "text"):
        if name in node and not isinstance(node[name], dict):
            raise _bad(path, sub(name), node[name], "an object", fix)
    features = node.get("featuresDict", {}).get("features", {})
    if not isinstance(features, dict):
        raise _bad(path, sub("featuresDict.features"), features, "an object of features by name", fix)
    for name, child in features.items():
        check_features(child, path, fix, sub(f"featuresDict.features.{name}"))
    if "sequence" in node:
        check_features(node["sequence"].get("feature", {}), path, fix, sub("sequence.feature"))
    for name in ("tensor", "image", "text"):
        info = node.get(name, {})
        shape = info.get("shape", {})
        if not isinstance(shape, dict):
            raise _bad(path, sub(f"{name}.shape"), shape, 'an object ({"dimensions": [...]})', fix)
        dims = shape.get("dimensions", [])
        if not isinstance(dims, list) or not all(_is_int(d) for d in dims):
            raise _bad(
                path, sub(f"{name}.shape.dimensions"), dims, "an array of integers (-1: any size)", fix
            )
        for field_name in ("dtype", "encoding", "encodingFormat"):
            if field_name in info and not isinstance(info[field_name], str):
                raise _bad(path, sub(f"{name}.{field_name}"), info[field_name], "a string", fix)


def check_info(info: Mapping[str, Any], path: str, fix: str) -> None:
    """Check that ``dataset_info.json`` holds the JSON types the shard lookup reads.

    Raises:
        ConversionError: a field of another type; names ``path``, the field, what was
            expected, and ends with ``fix``.
    """
    for name in ("name", "fileFormat"):
        if name in info and not isinstance(info[name], str):
            raise _bad(path, name, info[name], "a string", fix)
    splits = info.get("splits", [])
    if not isinstance(splits, list):
        raise _bad(path, "splits", splits, "an array of splits", fix)
    for i, entry in enumerate(splits):
        at = f"splits[{i}]"
        if not isinstance(entry, dict):
            raise _bad(path, at, entry, "an object (a split)", fix)
        for name in ("name", "filepathTemplate"):
            if name in entry and not isinstance(entry[name], str):
                raise _bad(path, f"{at}.{name}", entry[name], "a string", fix)
        lengths = entry.get("shardLengths", [])
        if not isinstance(lengths, list) or not all(_is_int(n, minimum=0) for n in lengths):
            raise _bad(path, f"{at}.shardLengths", lengths, "an array of record counts, one per shard", fix)
        if "numShards" in entry and not _is_int(entry["numShards"], minimum=0):
            raise _bad(path, f"{at}.numShards", entry["numShards"], "a count of shards", fix)


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
            f"{root}: file format {fmt!r} is not supported; kinodb reads TFRecord shards: prepare the "
            "dataset again as TFRecord (its TFDS builder's download_and_prepare(file_format='tfrecord'), "
            "or tfds build --file_format=tfrecord), or convert these files with tfds convert_format "
            f"--dataset_version_dir={root} --out_file_format=tfrecord --out_dir=NEW_DIR (it needs "
            "apache-beam installed), then ingest NEW_DIR"
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


# TFDS's split syntax: ``NAME[FROM:TO]`` (bounds in records, ``%`` or ``shard``), parts joined by ``+``
_SLICE_RE = re.compile(r"^(?P<name>[\w-]+)(?:\[(?P<selector>[\w%:.-]+)\])?$")
_BOUND_RE = re.compile(r"^(?:(?P<val>-?[\d_.]+)(?P<unit>%|shard)?)?$")


def check_split(split: str | None, root: str, info: dict[str, Any], *, episodes: bool) -> None:
    """Refuse a TFDS slice or concatenation of splits (``train[:80%]``, ``train+test``),
    saying how to read the same episodes. ``episodes``: a record is an episode (not a step),
    so that a slice of records is one of episodes.

    Raises:
        ConversionError: ``split`` uses TFDS's slicing syntax.
    """
    if split is None or not any(c in split for c in "[]+"):
        return
    raise ConversionError(
        f"{root}: split {split!r} uses TFDS's slicing syntax (NAME[FROM:TO], NAME+NAME), which kinodb does not "
        f"read; {_slice_advice(split, info, episodes)}"
    )


def _slice_advice(split: str, info: dict[str, Any], episodes: bool) -> str:
    """How to ingest what a TFDS split slice selects: the ``episodes`` that do it, where the
    slices are of one split's episodes that ``dataset_info.json`` counts."""
    matches = [_SLICE_RE.match(part) for part in re.split(r"\s*\+\s*", split.strip())]
    names = list(dict.fromkeys(m["name"] for m in matches if m is not None))
    pick = option_name("episodes")
    generic = (
        f"pass the split's name ({option_value('split', names[0] if names else 'train', whole=True)}) and pick "
        f"episodes with {pick} (indices from 0, as in 0-9)"
    )
    if len(names) > 1:
        each = " and ".join(option_value("split", n, whole=True) for n in names)
        sliced = (
            f", picking episodes with {pick}" if any(m is not None and m["selector"] for m in matches) else ""
        )
        return f"ingest each split to a file of its own ({each}{sliced}), then merge the files (kino merge)"
    lengths = next((e.get("shardLengths") for e in info.get("splits", []) if e.get("name") in names), None)
    if len(names) != 1 or not episodes or not lengths or not all(matches):
        return generic
    shards = [int(n) for n in lengths]
    n = sum(shards)
    picked: list[int] = []
    for m in matches:
        bounds = _slice_bounds(m["selector"] if m else None, shards)
        if bounds is None:
            return f"{generic}; split {names[0]!r} holds {n} episodes"
        picked += range(*bounds)
    name = option_value("split", names[0], whole=True)
    if not picked:
        return f"it selects none of the {n} episodes of split {names[0]!r}: pass {name} and pick episodes with {pick}"
    if picked != sorted(set(picked)):  # repeated or reordered episodes: no one selection gives them
        return f"{generic}; split {names[0]!r} holds {n} episodes"
    if len(picked) == n:
        return f"it selects all {n} episodes of split {names[0]!r}: pass {name}"
    sep = " " if option_name("split").startswith("-") else ", "
    return (
        f"for the same {len(picked)} of the split's {n} episodes, pass {name}{sep}"
        f"{option_value('episodes', _runs(picked), whole=True)}"
    )


def _slice_bounds(selector: str | None, shards: list[int]) -> tuple[int, int] | None:
    """The records ``[from, to)`` a TFDS selector (``:80%``, ``5:-2``, ``1shard``) picks from
    a split of these shard lengths, computed as TFDS does (a percentage rounded to the
    closest record, ties to even); None where TFDS would refuse it."""
    n = sum(shards)
    if selector is None:
        return 0, n
    parts = [_BOUND_RE.match(b) for b in selector.split(":")]
    if len(parts) > 2 or any(p is None for p in parts) or not any(p and p[0] for p in parts):
        return None
    vals = [p["val"] if p else None for p in parts]
    unit = next((p["unit"] for p in parts if p and p["unit"]), None) or "abs"  # TFDS: FROM's unit, else TO's
    if len(vals) == 1:  # NAME[Xshard]: shard X alone
        if unit != "shard" or vals[0] is None:
            return None
        vals.append(str(int(vals[0]) + 1))
    try:
        if unit == "%":
            lo = 0 if vals[0] is None else round(float(vals[0]) * n / 100.0)
            hi = n if vals[1] is None else round(float(vals[1]) * n / 100.0)
        elif unit == "shard":
            lo = 0 if vals[0] is None else sum(shards[: int(vals[0])])
            last = None if vals[1] is None else int(vals[1])
            hi = n if last is None else sum(shards[: last if last > 0 else len(shards) + last])
        else:
            lo = 0 if vals[0] is None else int(vals[0])
            hi = n if vals[1] is None else int(vals[1])
    except ValueError:
        return None
    if abs(lo) > n or abs(hi) > n:
        return None
    lo, hi = (n + v if v < 0 else v for v in (lo, hi))
    return lo, max(lo, hi)


def _runs(indices: list[int]) -> str:
    """Ascending indices as an ``episodes`` spec: ``0-5,9``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


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
