"""Episode selection: parse a spec (``"0-9,29"``) or indices, and pick a source's episodes.

`kinodb.ingest._run` re-exports the names other modules import from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._options import option_name, option_value

# One item of a selection: an index or an ascending range, in ASCII digits (``int`` would
# also take ``1_0``, ``+3`` and the digits of other scripts).
_EPISODE_ITEM = re.compile(r"([0-9]+)(?:[ \t]*-[ \t]*([0-9]+))?")


def parse_episodes(spec: str) -> list[int]:
    """Parse ``"0-9,29"`` into ``[0, ..., 9, 29]``.

    Raises:
        ValueError: the spec is malformed, has a reversed range, or selects an episode
            more than once.
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = _EPISODE_ITEM.fullmatch(part)
        if match is None:
            negative = (
                " (indices count from 0)" if part.startswith("-") or "--" in part.replace(" ", "") else ""
            )
            raise ValueError(
                f"bad episode selection {option_value('episodes', spec)}: {part!r} is not an index or a "
                f"range{negative}; use indices and ranges like 0-9,29"
            )
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if first > last:
            raise ValueError(
                f"bad episode selection {option_value('episodes', spec)}: the range {part!r} is reversed; "
                f"write {last}-{first}"
            )
        out.extend(range(first, last + 1))
    _check_selection(out, spec)
    return out


def episode_indices(episodes: str | int | Iterable[int]) -> list[int]:
    """The indices that ``episodes`` selects: a spec (``"0-9,29"``), one index, or indices.

    An iterator is read here, once.

    Raises:
        TypeError: ``episodes`` is none of those, or holds something that is no index.
        ValueError: the selection is wrong whatever the source holds (`parse_episodes`).
    """
    if isinstance(episodes, str):
        return parse_episodes(episodes)
    if _is_index(episodes):
        wanted = [int(episodes)]  # type: ignore[arg-type]
    elif isinstance(episodes, (bytes, bytearray, Mapping)) or not isinstance(episodes, Iterable):
        raise TypeError(
            f"{option_name('episodes')} must be a str of indices and ranges ('0-9,29'), an index (int) or a "
            f"sequence of indices, got {type(episodes).__name__}"
        )
    else:
        wanted = list(episodes)
        odd = [i for i in wanted if not _is_index(i)]
        if odd:
            raise TypeError(
                f"{option_name('episodes')} must hold episode indices (int), got {type(odd[0]).__name__} "
                f"{odd[0]!r}"
            )
        wanted = [int(i) for i in wanted]
    _check_selection(wanted, episodes if _is_index(episodes) else wanted)
    return wanted


def _is_index(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_selection(wanted: Sequence[int], spec: object) -> None:
    """Refuse what the selection itself gets wrong, whatever the source holds."""
    negative = [i for i in wanted if i < 0]
    if negative:
        raise ValueError(
            f"bad episode selection {option_value('episodes', spec)}: indices count from 0, got {negative[0]}"
        )
    seen: set[int] = set()
    twice = [i for i in wanted if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if twice:
        raise ValueError(
            f"bad episode selection {option_value('episodes', spec)}: episode {twice[0]} is selected more "
            "than once; list each episode once (ranges must not overlap)"
        )


def _select(
    keys: list[str], episodes: str | Sequence[int] | None, max_episodes: int | None, path: str
) -> list[str]:
    if episodes is not None:
        wanted = episode_indices(episodes)
        beyond = [i for i in wanted if i >= len(keys)]
        if beyond:
            raise ConversionError(_beyond_message(path, len(keys), episodes, beyond))
        keys = [keys[i] for i in wanted]
    if max_episodes is not None:
        keys = keys[: max(0, max_episodes)]
    if not keys:
        raise ConversionError(f"{path}: no episodes to convert")
    return keys


def _beyond_message(path: str, n: int, episodes: str | Sequence[int], beyond: list[int]) -> str:
    """A selection past the source's last episode: how many it has, and what was asked for."""
    shown = ", ".join(map(str, beyond[:5])) + (f" and {len(beyond) - 5} more" if len(beyond) > 5 else "")
    spec = option_value("episodes", episodes)
    if n == 0:
        return f"{path} has no episodes to select from ({spec} asks for {shown})"
    return (
        f"{path} has {n} episode{'' if n == 1 else 's'} (indices 0..{n - 1}), but {spec} selects "
        f"{len(beyond)} beyond its last ({shown}); select within 0..{n - 1}"
    )
