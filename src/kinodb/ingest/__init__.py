"""Converters from the formats the field uses into ``.kdb``: `ingest` and the `Source` protocol.

Third-party sources register under the ``kinodb.sources`` entry-point group with a class
that follows `Source`.
"""

from __future__ import annotations

from kinodb.ingest._base import ENTRY_POINT_GROUP, Source, SourceInfo, SourceOptions, formats, source_class
from kinodb.ingest._run import IngestReport, ingest, parse_episodes
from kinodb.ingest._verify import CameraCheck, VerifyReport, verify

__all__ = [
    "ENTRY_POINT_GROUP",
    "CameraCheck",
    "IngestReport",
    "Source",
    "SourceInfo",
    "SourceOptions",
    "VerifyReport",
    "formats",
    "ingest",
    "parse_episodes",
    "source_class",
    "verify",
]
