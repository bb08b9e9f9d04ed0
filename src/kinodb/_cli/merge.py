"""``kino merge``: many files (optionally filtered) into one."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "merge",
        help="merge .kdb files into one, copying episodes byte for byte",
        description=(
            "Merge .kdb files into one, in the order given: each episode's payload is copied byte for\n"
            "byte (frames are not re-encoded), optionally only the episodes matching a KQL query\n"
            "(-F). The output's metadata records every input under merged_from; each episode gains\n"
            "source_file and source_episode (values it held move to origin_file/origin_episode,\n"
            "or, when an origin is set, to pre_merge_source_file/pre_merge_source_episode, with a\n"
            "warning)."
        ),
        epilog="examples: kino merge a.kdb b.kdb -o all.kdb\n"
        '          kino merge a.kdb b.kdb -o good.kdb -F "success = true"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="the .kdb files to merge (0.1 files too)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument(
        "-F", "--filter", metavar="KQL", type=_filter, help="keep only episodes matching this query"
    )
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an episode that cannot be read or stored: stop (default), or leave it out and "
                        "list it (warning, and OUTPUT's metadata merged_from[].skipped)")  # fmt: skip
    p.set_defaults(run=run)


# Format names of ingest and export, where -F is --format: given to merge's -F, a mix-up.
_INGEST_FORMATS = ("auto", "kinfer-ndjson")
_EXPORT_FORMATS = {
    "h5": "hdf5",
    "hdf5": "hdf5",
    "json": "json",
    "lerobot": "lerobot",
    "numpy": "numpy",
    "rlds": "rlds",
    "zarr": "zarr",
}


def _filter(text: str) -> str:
    """``-F/--filter``: a format name given there by mistake is a usage error that says so.

    ``-F`` is ``--filter`` here (as in the earlier kinodb command line) but ``--format`` in
    ingest, verify and export; ``-F hdf5`` would otherwise fail as a query that lacks its
    operator.
    """
    name = text.strip().lower()
    if name not in _EXPORT_FORMATS and name not in _INGEST_FORMATS and name != "kdb":
        return text
    fmt = _EXPORT_FORMATS.get(name)
    then = f"; to convert the merged file: kino export OUT.kdb -o DEST --format {fmt}" if fmt else ""
    raise argparse.ArgumentTypeError(
        f"{text!r} is a format name, not a KQL query: -F is --filter in kino merge (e.g. "
        f'-F "success = true"), and merge always writes .kdb{then}'
    )


def run(args: argparse.Namespace) -> int:
    """Merge and print what each input contributed."""
    from kinodb.merge import merge

    result = merge(args.inputs, args.output, filter=args.filter, overwrite=args.force, on_error=args.on_error)
    width = max(len(i.path) for i in result.inputs)
    for item in result.inputs:
        print(f"  {item.path:<{width}}  {item.kept:>7} / {item.total:<7} episodes  {item.frames:>9} frames")
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {result.episodes} episodes ({result.frames} frames) to {result.output}")
    return 0
