"""Per-source normalisation of frame windows' states and actions from stored statistics.

`Normalizers` builds each window source's `kinodb.stats.Normalizer` per output key from
that file's stored statistics (refusing, with the fix, a source that lacks them), compares
itself with one made again from the files (`differences`), and normalises a batch's arrays
in place (`apply`). `normalized_arrays` names the arrays among states and actions that a
`kinodb.windows.FrameWindows` hands out. `kinodb.windows` re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kinodb._window_sources import _Source
from kinodb.errors import KinodbError

if TYPE_CHECKING:
    from kinodb.stats import Normalizer
    from kinodb.windows import FrameWindows


class Normalizers:
    """Per-source normalisers of states and actions from each file's stored statistics.

    ``used`` names the arrays the dataset hands out (``states``, ``actions``); each needs
    stored statistics, unless a source's episodes hold it with no features at all, and
    each of its features a finite statistic.

    Raises:
        KinodbError: a source stores states or actions as integers, lacks the
            statistics, or a feature has none (no finite value): the message names the
            file, the array, the feature and the fix.
    """

    def __init__(
        self, sources: Sequence[_Source], mode: str, used: Sequence[str] = ("states", "actions")
    ) -> None:
        from kinodb.stats import Normalizer, check_defined  # deferred: only normalising datasets need them

        self.mode = mode
        self._by_source: dict[int, dict[str, Normalizer]] = {}  # by the source's id (`_Source.index`)
        self._paths: dict[int, str] = {}
        keys = {"states": "state", "actions": "action"}
        for source in sources:
            table = source.db.episodes()
            widths = {"states": table["state_dim"], "actions": table["action_dim"]}
            # an array of zero width has nothing to normalise
            held = [name for name in used if np.asarray(widths[name])[source.kept].any()]
            _refuse_integers(source, mode, held)
            stored = source.db.stats()
            stats, skipped = stored["arrays"], stored.get("skipped", {})
            lacking = [name for name in held if name not in stats]
            if lacking:
                why = "; ".join(f"{name}: {skipped[name]}" for name in lacking if name in skipped)
                path = source.db.path()
                raise KinodbError(
                    f"{source.where}: normalize={mode!r} needs statistics of {' and '.join(lacking)}, but its "
                    "stored statistics have none"
                    + (f" ({why})" if why else "")
                    + f"; run: kino stats {path} (a file whose episodes differ in dims has none: keep such "
                    "datasets as separate files in a Mixture), or leave normalize unset"
                )
            for name in used:
                if name in stats:
                    check_defined(stats[name], mode, name=name, where=source.where, path=source.db.path(),
                                  schema=source.db.schema().get(name) or {})  # fmt: skip
            self._by_source[source.index] = {
                keys[name]: Normalizer.from_stats(stats[name], mode) for name in used if name in stats
            }
            self._paths[source.index] = source.db.path()

    def by_source(self) -> dict[int, dict[str, Normalizer]]:
        """Each source's `kinodb.stats.Normalizer` per output key (``"state"``,
        ``"action"``), by the source's id (the ``source`` of samples)."""
        return {s: dict(norms) for s, norms in self._by_source.items()}

    def differences(self, other: Normalizers) -> list[str]:
        """Where ``other`` (made again from the files) maps differently from these, as
        ``"PATH: state"`` entries; empty when every parameter is equal."""
        out = []
        for s, norms in self._by_source.items():
            now = other._by_source.get(s, {})
            for key, norm in norms.items():
                got = now.get(key)
                if (
                    got is None
                    or other.mode != self.mode
                    or not all(np.array_equal(getattr(norm, k), getattr(got, k)) for k in ("center", "scale"))
                ):
                    out.append(f"{self._paths[s]}: {key}")
            out += [f"{self._paths[s]}: {key}" for key in now if key not in norms]
        return out

    def apply(self, source: int, arrays: dict[str, Any], *, zero_pad: bool = False) -> None:
        """Normalise ``arrays``' states and actions in place; with ``zero_pad`` the entries
        their ``*_is_pad`` masks mark stay zero (``pad="zero"``)."""
        for key, norm in self._by_source[source].items():
            if key in arrays:
                arrays[key] = norm.apply(arrays[key])
                pad = arrays.get(f"{key}_is_pad")
                if zero_pad and pad is not None and pad.any():
                    arrays[key][pad] = 0


def _refuse_integers(source: _Source, mode: str, names: Sequence[str]) -> None:
    """Refuse to normalise ``names`` where the file stores them as anything but floats.

    Statistics are kept of floating-point arrays only (`kinodb.stats` skips the others),
    so ``kino stats`` cannot help here; the message says so and gives the fix.

    Raises:
        KinodbError: an array of ``names`` has an integer (or bool) dtype in the schema.
    """
    schema = source.db.schema()
    exact: dict[str, str] = {}
    for name in names:
        dtype = (schema.get(name) or {}).get("dtype")  # None: the episodes' dtypes differ
        try:
            if dtype is not None and np.dtype(dtype).kind != "f":
                exact[name] = dtype
        except TypeError:
            continue  # a damaged schema: reading the statistics reports it
    if not exact:
        return
    held = " and ".join(f"{name} as {dtype}" for name, dtype in exact.items())
    example = next(iter(exact))
    raise KinodbError(
        f"{source.where}: normalize={mode!r} needs floating-point {' and '.join(exact)}, but the file stores "
        f"{held} (statistics are kept of floating-point arrays only, so kino stats skips them): write the "
        f"episodes anew with them as floats (Writer.add_episode({example}={example}.astype(np.float32), ...); "
        "kino ingest keeps a source's integers as they are, its --dtype casts floating arrays only), or leave "
        "normalize unset"
    )


def normalized_arrays(fw: FrameWindows) -> list[str]:
    """The arrays among states and actions that the windows hand out."""
    names = {name for name, _ in fw.spec.arrays.values()}
    return [name for name in ("states", "actions") if name in names]
