"""``kino schema``: the layout of a dataset, with bytes per section."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import numpy as np

from kinodb.errors import KinodbError
from kinodb.kdb._layout import KIND_CAMERA
from kinodb.kdb._sections import Directory, all_sections, camera_tables
from kinodb.kdb._table import schema_layout
from kinodb.kdb.reader import Database, open_database


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "schema",
        help="show dims, named components, cameras and bytes per section",
        description=(
            "Show the layout of a .kdb file: the dims, dtypes and named components of the actions and\n"
            "states, the cameras (codec and frame size) and extra arrays, and the bytes each section\n"
            "takes; a section whose dtype or shape differs between episodes lists each variant."
        ),
        epilog="example: kino schema data.kdb --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="the .kdb file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def describe(db: Database) -> dict[str, Any]:
    """Schema plus per-section byte totals, as one JSON-ready dict.

    Each section lists its ``variants``: every distinct dtype (arrays) or codec (cameras)
    and per-frame shape, with the number of episodes holding it (sorted by shape). A
    merged file may hold episodes of different dims; ``dtype``/``codec`` and ``shape``
    are then None rather than one episode's.
    """
    counted = _count_at_once(db)
    if counted is None:
        counted = _count_each(db)
    sections: dict[str, dict[str, Any]] = {}
    for name, (kind, nbytes, episodes, seen) in counted.items():
        s = sections[name] = {"bytes": nbytes, "episodes": episodes, "kind": kind}
        key = "dtype" if kind == "array" else "codec"
        variants = sorted(seen.items(), key=lambda v: (v[0][1], v[0][0]))
        encodings = {enc for (enc, _), _ in variants}
        shapes = {shape for (_, shape), _ in variants}
        s[key] = encodings.pop() if len(encodings) == 1 else None
        s["shape"] = ["T", *shapes.pop()] if len(shapes) == 1 else None
        s["variants"] = [{key: enc, "shape": ["T", *shape], "episodes": n} for (enc, shape), n in variants]
    return {
        "path": db.path(),
        "format_version": db.version(),
        "file_bytes": db._size,
        "num_episodes": len(db),
        "num_frames": db.num_frames(),
        "schema": db.schema(),
        "sections": sections,
    }


# Per section, in the order episodes first hold it: its kind, bytes, episodes, and the
# episodes of each (dtype or codec, per-frame shape).
Counted = dict[str, tuple[str, int, int, Counter[tuple[str, tuple[int, ...]]]]]


def _count_each(db: Database) -> Counted:
    """`Counted`, episode by episode: any file, damaged ones included (raises where a read does)."""
    out: Counted = {}
    for i in range(len(db)):
        found = [(name, "array", arr.dtype.name, arr.shape[1:], arr.nbytes)
                 for name, arr in db._episode_arrays(i).items()]  # fmt: skip
        found += [(f"camera:{name}", "camera", cam.codec, tuple(cam.shape[1:]), int(cam.frame_offsets[-1]))
                  for name, cam in db._episode_cameras(i).items()]  # fmt: skip
        for name, kind, encoding, shape, nbytes in found:
            kind, total, episodes, seen = out.setdefault(name, (kind, 0, 0, Counter()))
            out[name] = (kind, total + nbytes, episodes + 1, seen)
            seen[(encoding, tuple(int(x) for x in shape))] += 1
    return out


def _contradicted(db: Database, d: Directory) -> bool:
    """Whether an episode's array contradicts the rest of the index, as a read of it
    refuses (`Database._check_layout`): actions or states not as wide as the episode's
    action_dim or state_dim, or an array unlike what the dataset schema records."""
    cols, dataset = db._decoded.columns, db._decoded.dataset
    for k, t in enumerate(d.types):
        if t.kind == KIND_CAMERA:
            continue
        declared = schema_layout(dataset, t.name)
        if declared is not None and (t.dtype, t.trail) != declared:
            return True
        dim = {"actions": "action_dim", "states": "state_dim"}.get(t.name)
        if dim is not None:
            episodes = d.episode[d.type_of == k]
            widths = np.asarray(cols[dim]).reshape(-1)[episodes]
            if t.trail[:1] != t.trail or (len(episodes) and (widths != (t.trail or (-1,))[0]).any()):
                return True
    return False


def _count_at_once(db: Database) -> Counted | None:
    """`Counted` from the index's section columns at once (`all_sections`), as
    `_count_each` counts it. None where `_count_each` must go episode by episode: a 0.x
    file, a damaged episode (it raises there), or one holding a section name twice."""
    if db.version().startswith("0."):  # a 0.x file keeps no section directory
        return None
    try:
        d = all_sections(db._decoded.columns, db._names, db._size)  # unverified, as `_count_each` reads
        if d is None or d.bad.any():
            return None
        camera = d.of_types(lambda t: t.kind == KIND_CAMERA)
        nbytes = d.nbytes  # a camera's: its frames', from its offset table
        nbytes[camera], ok = camera_tables(db._map(), d.offset[camera], d.frames[d.episode[camera]], db._size)
        if not ok.all():
            return None
    except KinodbError:
        return None
    if _contradicted(db, d):
        return None
    names = [f"camera:{t.name}" if t.kind == KIND_CAMERA else t.name for t in d.types]
    key_of = {name: k for k, name in enumerate(dict.fromkeys(names))}
    key = np.array([key_of[name] for name in names] or [0], np.int64)[d.type_of]
    pairs = np.sort(d.episode.astype(np.int64) * len(key_of) + key)
    if (pairs[1:] == pairs[:-1]).any():  # an episode holds a name twice: its last row counts
        return None
    rows = len(d.type_of)
    episodes = np.bincount(d.type_of, minlength=len(d.types)).tolist()
    total = np.zeros(len(d.types), np.int64)
    np.add.at(total, d.type_of, nbytes)
    first = np.full(len(d.types), rows, np.int64)
    np.minimum.at(first, d.type_of, np.arange(rows, dtype=np.int64))
    # An episode's arrays come first, then its cameras, each in row order (`_count_each`).
    ep = d.episode[np.minimum(first, rows - 1)] if rows else first
    order = sorted(
        (int(ep[k]), t.kind == KIND_CAMERA, int(first[k] - d.first[ep[k]]), k)
        for k, t in enumerate(d.types)
        if episodes[k]
    )
    out: Counted = {}
    for *_, k in order:
        t = d.types[k]
        kind, bytes_so_far, held, seen = out.setdefault(
            names[k], ("camera" if t.kind == KIND_CAMERA else "array", 0, 0, Counter())
        )
        out[names[k]] = (kind, bytes_so_far + int(total[k]), held + episodes[k], seen)
        seen[(t.codec if t.kind == KIND_CAMERA else t.dtype.name, t.trail)] += episodes[k]
    return out


def run(args: argparse.Namespace) -> int:
    """Print the schema."""
    with open_database(args.path) as db:
        d = describe(db)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(
        f"{d['path']}: format {d['format_version']}, {d['num_episodes']} episodes, {d['num_frames']} frames, {d['file_bytes']} bytes"
    )
    schema = d["schema"]
    cams = schema.get("cameras", {})
    # One name column for components and cameras, as wide as the longest name needs.
    names = [
        *cams,
        *(n for part in ("actions", "states") for n in schema.get(part, {}).get("components", {})),
    ]
    width = max([24, *(len(name) + 2 for name in names)])
    for part in ("actions", "states"):
        entry = schema.get(part, {})
        print(f"\n{part}: {_dims_line(entry, d['sections'].get(part))}")
        for name, (a, b) in entry.get("components", {}).items():
            print(f"  {name:<{width}}[{a}:{b}]")
        if entry.get("names"):
            print("  names: " + ", ".join(entry["names"]))
    if cams:
        print("\ncameras:")
        for name, c in cams.items():
            # None: the episodes differ (a merge of cameras stored alike in no two inputs)
            size = "x".join("?" if c.get(k) is None else str(c[k]) for k in ("height", "width", "channels"))
            codec = c.get("codec") or "mixed codecs"
            print(f"  {name:<{width}}{size} {codec}" + (" (varies by episode)" if "?" in size else ""))
    if not d["sections"]:
        print("\nno sections: the file has no episodes")
        return 0
    total = sum(s["bytes"] for s in d["sections"].values()) or 1
    rows: list[tuple[str, ...]] = [("SECTION", "KIND", "DTYPE/CODEC", "SHAPE", "BYTES", "SHARE")]
    for name, s in d["sections"].items():
        key = "dtype" if s["kind"] == "array" else "codec"
        kind = "|".join(dict.fromkeys(v[key] for v in s["variants"]))
        rows.append((name, s["kind"], kind, _shape_cell(s["variants"]), f"{s['bytes']:,}",
                     f"{100 * s['bytes'] / total:.1f}%"))  # fmt: skip
    print()
    for line in _table(rows, right=(4, 5)):
        print(line)
    return 0


def _table(rows: list[tuple[str, ...]], *, right: tuple[int, ...]) -> list[str]:
    """Rows as lines of columns sized to their longest cell, two spaces apart.

    Columns in ``right`` are right-aligned; the others left-aligned.
    """
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if k in right else cell.ljust(w)
            for k, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _dims_line(entry: dict[str, Any], section: dict[str, Any] | None) -> str:
    """``dim 7, float32``, or what differs between episodes and in how many of each."""
    if section is None:  # no episodes: only the schema speaks
        dim, dtype = entry.get("dim"), entry.get("dtype") or "dtype unknown"
        if dim is None:  # recorded from the episodes written (a 0.1 file stores none)
            return f"no episodes, so no dim; {dtype}"
        return f"dim {dim}, {dtype}"
    dims: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    for v in section["variants"]:
        dims[_dim(v["shape"][1:])] += v["episodes"]
        dtypes[v["dtype"]] += v["episodes"]
    if len(dims) == len(dtypes) == 1:
        return f"dim {next(iter(dims))}, {next(iter(dtypes))}"
    dim = f"dim {next(iter(dims))}" if len(dims) == 1 else f"dims differ between episodes: {_counted(dims)}"
    dtype = next(iter(dtypes)) if len(dtypes) == 1 else f"dtypes differ between episodes: {_counted(dtypes)}"
    return f"{dim}; {dtype}"


def _dim(shape: list[int]) -> str:
    return "x".join(str(x) for x in shape) if shape else "scalar"


def _counted(counts: Counter[str]) -> str:
    return ", ".join(f"{k} ({n} episode{'' if n == 1 else 's'})" for k, n in counts.items())


def _shape_cell(variants: list[dict[str, Any]]) -> str:
    """``(T, 7)``; where episodes differ, each axis lists its values: ``(T, 7|26)``."""
    shapes = [v["shape"] for v in variants]
    axes = [
        list(dict.fromkeys(str(s[k]) if k < len(s) else "-" for s in shapes))
        for k in range(max(map(len, shapes)))
    ]
    return "(" + ", ".join("|".join(values) for values in axes) + ")"
