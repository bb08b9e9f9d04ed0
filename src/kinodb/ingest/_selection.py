"""Episode selection: parse a spec (``"0-9,29"``) or indices, and pick a source's episodes.

`kinodb.ingest._run` re-exports the names other modules import from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._base import episodes_spec
from kinodb.ingest._options import option_name, option_value

# One item of a selection: an index or an ascending range, in ASCII digits (``int`` would
# also take ``1_0``, ``+3`` and the digits of other scripts).
_EPISODE_ITEM = re.compile(r"([0-9]+)(?:[ \t]*-[ \t]*([0-9]+))?")


MAX_SELECTED = 10_000_000  # episodes one selection may name (a list of them takes some 400 MB)


def parse_episodes(spec: str) -> list[int]:
    """Parse ``"0-9,29"`` into ``[0, ..., 9, 29]``.

    Raises:
        ValueError: the spec is malformed, has a reversed range, or selects an episode
            more than once.
    """
    out: list[int] = []
    ranges: list[tuple[int, int]] = []
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
        ranges.append((first, last))
    total = sum(last - first + 1 for first, last in ranges)
    if total > MAX_SELECTED:  # checked before the list is made: 0-99999999999 would fill the memory
        raise ValueError(
            f"bad episode selection {option_value('episodes', spec)}: it selects {total:,} episodes, more than one "
            f"selection takes ({MAX_SELECTED:,}); select the episodes the source holds, or leave "
            f"{option_name('episodes')} out to take them all"
        )
    for first, last in ranges:
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
            raise ConversionError(_beyond_message(path, keys, episodes, beyond))
        keys = [keys[i] for i in wanted]
    if max_episodes is not None:
        keys = keys[: max(0, max_episodes)]
    if not keys:
        raise ConversionError(f"{path}: no episodes to convert")
    return keys


def _beyond_message(path: str, keys: list[str], episodes: str | Sequence[int], beyond: list[int]) -> str:
    """A selection past the source's last position: how many episodes it has, what was asked
    for, and, where the source numbers its episodes otherwise (LeRobot's ``episode_index``
    with gaps, ``demo_1`` first), which episodes are at which positions."""
    n = len(keys)
    shown = _listed([str(i) for i in beyond], 5)
    spec = option_value("episodes", episodes)
    if n == 0:
        return f"{path} has no episodes to select from ({spec} asks for {shown})"
    numbers = _key_numbers(keys)
    if numbers is None or numbers == list(range(n)):  # positions are the keys' own numbers
        return (
            f"{path} has {n} episode{'' if n == 1 else 's'} (positions 0..{n - 1}), but {spec} selects "
            f"{len(beyond)} beyond the last position ({shown}); select within 0..{n - 1}"
        )
    return (
        f"{path} has {n} episode{'' if n == 1 else 's'} (positions 0..{n - 1}), but {spec} selects "
        f"{len(beyond)} beyond the last position ({shown}); {_positions(keys, numbers, beyond)}; select "
        f"within 0..{n - 1}"
    )


# A key's own number: LeRobot's ``episode_000029`` (its episode_index), HDF5's ``demo_29``.
_KEY_NUMBER = re.compile(r"[0-9]+\Z")
_LEROBOT_KEY = re.compile(r"episode_[0-9]+\Z")


def _key_numbers(keys: list[str]) -> list[int] | None:
    """The number each key ends in, or None where a key ends in none."""
    found = [_KEY_NUMBER.search(key) for key in keys]
    return [int(m.group()) for m in found if m is not None] if all(found) else None


def _positions(keys: list[str], numbers: list[int], beyond: list[int]) -> str:
    """That the selection takes positions, not the numbers in the keys: where the episodes
    numbered as selected are, and which episodes the first positions hold."""
    lerobot = all(_LEROBOT_KEY.fullmatch(key) for key in keys)
    what = "episode_index values" if lerobot else "the numbers in the episodes' keys"
    text = f"{option_name('episodes')} takes positions in the source's list of episodes, not {what}"
    at: dict[int, int] = {}
    for position, number in enumerate(numbers):
        at.setdefault(number, position)
    found = sorted(at[i] for i in beyond if i in at)
    if found:
        named = [f"{f'episode_index {numbers[p]}' if lerobot else keys[p]} is at position {p}" for p in found]
        text += f": {_listed(named, 3)}, which {option_value('episodes', episodes_spec(found), whole=True)} selects"
    held = [str(numbers[p]) if lerobot else keys[p] for p in range(len(keys))]
    if len(held) > 8:
        held = [*held[:6], "...", held[-1]]
    return f"{text}; positions 0..{len(keys) - 1} hold {'episode_index ' if lerobot else ''}{', '.join(held)}"


def _listed(items: list[str], most: int) -> str:
    """The first ``most`` of ``items``, comma-separated, and how many more."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more
