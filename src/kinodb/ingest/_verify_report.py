"""What `verify` reports: per-array differences, per-camera checks, and every mismatch.

`VerifyReport` counts mismatches by kind and keeps the first `MAX_PROBLEMS` messages;
`CameraCheck` tallies what was compared for one camera (frames passed through byte for
byte and how many of them decode, frames re-encoded, how many decode exactly, the lowest
PSNR). Both render as a few lines for people (`VerifyReport.summary`) and as JSON
(``to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kinodb.ingest._options import _OPTION_NAMES

DEFAULT_PSNR = 35.0  # dB; JPEG at quality 95 gives 40+ on camera frames
CODEC_MARGIN_DB = 1.5  # below a fresh JPEG encode of the source frame (PSNR, default threshold)
MAX_PROBLEMS = 1000  # problem lines kept; `mismatches` counts them all
_LABELS = ("embodiment", "task", "fps", "success", "total_reward", "extra_fields")


@dataclass
class CameraCheck:
    """What was compared for one camera, over every episode."""

    codecs: set[str] = field(default_factory=set)
    frames: int = 0
    passed_through: int = 0  # frames the source holds encoded, stored unchanged by the ingest
    byte_identical: int = 0  # of those, frames whose stored bytes equal the source's
    decoded: int = 0  # of those, frames that decode in full, as the reader decodes them
    reencoded: int = 0  # frames encoded from the source's pixels
    exact: int = 0  # of those, frames that decode to the source's pixels exactly
    min_psnr: float = math.inf  # dB over the re-encoded frames (inf: every one exact)
    codec_limited: int = 0  # JPEG frames under the default threshold, as close as a fresh encode

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``min_psnr`` is None when every re-encoded frame is exact)."""
        return {
            "codecs": sorted(self.codecs), "frames": self.frames, "passed_through": self.passed_through,
            "byte_identical": self.byte_identical, "decoded": self.decoded, "reencoded": self.reencoded,
            "exact": self.exact,
            "min_psnr": None if math.isinf(self.min_psnr) else round(self.min_psnr, 3),
            "codec_limited": self.codec_limited,
        }  # fmt: skip


@dataclass
class VerifyReport:
    """What `verify` compared and every mismatch it found.

    ``mismatches`` counts problems by kind (``missing``, ``extra``, ``frames``, ``arrays``,
    ``dtype``, ``cameras``, ``images``, ``decode``, ``task``, ``fps``, ...); ``problems``
    keeps the first `MAX_PROBLEMS` messages.
    """

    source: str
    output: str
    format: str
    psnr_threshold: float
    options: dict[str, Any] = field(default_factory=dict)  # what the source was re-read with
    codec_relative: bool = True  # JPEG frames under the threshold may pass against a fresh encode
    episodes_compared: int = 0
    frames_compared: int = 0
    arrays: dict[str, float] = field(default_factory=dict)  # max abs diff per array name
    cameras: dict[str, CameraCheck] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # source keys absent from the output
    extra: list[str] = field(default_factory=list)  # output episodes without a source episode
    skipped: list[str] = field(default_factory=list)  # keys the ingest skipped and listed
    notes: list[str] = field(default_factory=list)
    mismatches: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.mismatches

    def add(self, kind: str, message: str) -> None:
        """Record one mismatch of ``kind``."""
        self.mismatches[kind] = self.mismatches.get(kind, 0) + 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    def summary(self, *, shown: int = 20) -> str:
        """A few lines for people, with the first ``shown`` problems."""
        n = sum(self.mismatches.values())
        status = "OK" if self.ok else f"MISMATCH ({n} problem{'s' if n > 1 else ''})"
        lines = [
            f"verified {self.output} against {self.source} ({self.format}): {status}",
            f"  episodes: {self.episodes_compared} compared ({self.frames_compared} frames), "
            f"{len(self.missing)} missing, {len(self.extra)} extra, {len(self.skipped)} skipped by the ingest",
        ]
        if self.arrays:
            diffs = ", ".join(f"{k} {format_number(v)}" for k, v in self.arrays.items())
            lines.append(f"  arrays, max abs diff: {diffs}")
        lines += [
            f"  camera {name}: {_camera_line(c, self.psnr_threshold)}" for name, c in self.cameras.items()
        ]
        lines.append("  label mismatches: " + ", ".join(f"{k} {self.mismatches.get(k, 0)}" for k in _LABELS))
        lines += [f"  note: {n}" for n in self.notes]
        if self.mismatches:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.mismatches.items()))
            lines.append(f"  problems by kind: {kinds}")
            lines += [f"  - {p}" for p in self.problems[:shown]]
            rest = sum(self.mismatches.values()) - min(shown, len(self.problems))
            if rest > 0:
                lines.append(f"  ... {rest} more ({_all_problems()})")
        return "\n".join(lines)

    def failure(self) -> str:
        """One line for an error: what differs, and that the output file stays."""
        first = "; ".join(self.problems[:3])
        psnr = set(self.mismatches) == {"images"}  # frames under the threshold, and nothing else
        if _OPTION_NAMES.get() is None:  # a Python caller
            see = f"kinodb.ingest.verify({self.source!r}, {self.output!r}{', psnr=DB' if psnr else ''}).summary()"
        else:
            see = f"'kino verify {self.source} {self.output}{' --psnr DB' if psnr else ''}'"
        return (
            f"{self.output}: verification against {self.source} failed with "
            f"{sum(self.mismatches.values())} mismatches ({first}); the output file was kept: "
            f"see {see}, or delete it"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a non-finite max abs diff becomes the string ``"inf"``/``"nan"``)."""
        return {
            "source": self.source, "output": self.output, "format": self.format, "ok": self.ok,
            "psnr_threshold": self.psnr_threshold, "codec_relative": self.codec_relative, "options": self.options,
            "episodes_compared": self.episodes_compared, "frames_compared": self.frames_compared,
            "arrays": {k: v if math.isfinite(v) else str(v) for k, v in self.arrays.items()},
            "cameras": {k: c.to_dict() for k, c in self.cameras.items()},
            "missing": self.missing, "extra": self.extra, "skipped": self.skipped, "notes": self.notes,
            "mismatches": dict(sorted(self.mismatches.items())), "problems": self.problems,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


def _all_problems() -> str:
    """Where the problems that `VerifyReport.summary` leaves out are: ``kino verify --json``
    on the command line, ``problems`` (and ``to_dict``) to a Python caller."""
    if _OPTION_NAMES.get() is None:
        return f"the report's problems hold the first {MAX_PROBLEMS}"
    return f"use --json for the first {MAX_PROBLEMS}"


def format_number(x: float) -> str:
    """``x`` in at most six significant digits (``inf``, ``nan`` as such)."""
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _camera_line(c: CameraCheck, threshold: float) -> str:
    parts = [f"[{','.join(sorted(c.codecs))}] {c.frames} frames"]
    if c.passed_through:
        parts.append(f"{c.byte_identical}/{c.passed_through} passed through byte-identical, "
                     f"{c.decoded}/{c.passed_through} decode")  # fmt: skip
    if c.reencoded and c.exact == c.reencoded:
        parts.append(f"{c.reencoded} re-encoded, all exact")
    elif c.reencoded:
        parts.append(f"{c.reencoded} re-encoded ({c.exact} exact), min PSNR {c.min_psnr:.2f} dB "
                     f"(threshold {threshold:g} dB)")  # fmt: skip
        if c.codec_limited:
            parts.append(f"{c.codec_limited} below the threshold but within {CODEC_MARGIN_DB:g} dB of a fresh "
                         "JPEG encode of the source frame")  # fmt: skip
    return "; ".join(parts)
