"""How the ingest's messages name its options, and the checks of option values.

Within `options_named` (the command line), messages name ``--options``; elsewhere the
keyword arguments of the Python functions. `kinodb.ingest._run` re-exports the names
other modules import from it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import reprlib
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # `kinodb.ingest._base` imports this module
    from kinodb.ingest._base import Source

_OPTION_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "kinodb_option_names", default=None
)


@contextlib.contextmanager
def options_named(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, messages name parameters as command-line options.

    ``names`` maps a parameter to its option where the two differ (``jpeg_quality`` ->
    ``--compress``); any other ``some_name`` is spelled ``--some-name``. Outside such a
    block, messages name the keyword arguments of the Python functions.
    """
    token = _OPTION_NAMES.set(names)
    try:
        yield
    finally:
        _OPTION_NAMES.reset(token)


def option_name(parameter: str) -> str:
    """``parameter`` as the caller spells it: the keyword argument, or its command-line option."""
    names = _OPTION_NAMES.get()
    if names is None:
        return parameter
    return names.get(parameter, "--" + parameter.replace("_", "-"))


def option_value(parameter: str, value: object, *, whole: bool = False) -> str:
    """``parameter=value`` as a Python caller writes it, or ``--option VALUE`` on the command line.

    A long value is shortened for Python callers (``'0-2,5,...'``), unless ``whole``: advice
    to copy (an ``episodes`` spec that the message computes) is written out in full.
    """
    if _OPTION_NAMES.get() is None:
        return f"{parameter}={repr(value) if whole else reprlib.repr(value)}"
    return f"{option_name(parameter)} {shlex.quote(str(value))}"


def option_flag(parameter: str, value: bool = True) -> str:
    """Boolean ``parameter`` given as ``value``: ``flip_images=False`` as a Python caller writes
    it; on the command line its flag (``--flip-images``) for True, ``no --flip-images`` for False.

    Only for a parameter whose flag sets it to True (not ``images``, set False by ``--no-images``).
    """
    if _OPTION_NAMES.get() is None:
        return f"{parameter}={value!r}"
    return option_name(parameter) if value else f"no {option_name(parameter)}"


def skip_advice() -> str:
    """The end of the message of an episode that the ingest can go on without:
    ``, or pass on_error='skip'`` (``, or pass --on-error skip`` on the command line).

    Call it when the error is raised, where the caller's spelling is known; the framework
    drops it from the reasons of the episodes it skips (the advice taken).
    """
    return f", or pass {option_value('on_error', 'skip')}"


def check_dtype(dtype: str | None) -> None:
    """Refuse a ``dtype`` cast that is not to a floating dtype (None: no cast).

    Raises:
        ValueError: NumPy does not know ``dtype``, or it is not floating.
    """
    try:
        floating = dtype is None or np.dtype(dtype).kind == "f"
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"{option_name('dtype')} must be a floating dtype such as 'float32', got {dtype!r}")


def check_positive(parameter: str, value: float | None) -> None:
    """Refuse a number that is not finite and > 0 (None: unset).

    Raises:
        ValueError: ``value`` is 0, negative, NaN or infinite.
    """
    if value is None:
        return
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (ok and math.isfinite(float(value)) and value > 0):
        raise ValueError(f"{option_name(parameter)} must be a positive number, got {value!r}")


def name_list(parameter: str, value: str | Sequence[str] | None) -> list[str] | None:
    """Names given as a sequence of str, or as one str of comma-separated names (``"a, b"``,
    each stripped) as on the command line; None when none are given (the default).

    Empty names stay, for the source to refuse or pass over as it does on the command line.

    Raises:
        TypeError: ``value`` is neither a str nor a sequence of str.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")] if value else None
    if isinstance(value, (bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{option_name(parameter)} must be a str of comma-separated names ('K1,K2') or a sequence of "
            f"str, got {type(value).__name__}"
        )
    names = list(value)
    odd = [name for name in names if not isinstance(name, str)]
    if odd:
        raise TypeError(
            f"{option_name(parameter)} must hold names (str), got {type(odd[0]).__name__} {odd[0]!r}"
        )
    return names or None


# Options that a built-in format's converter takes no notice of, with the reason; a
# plug-in format is given every option. ``action_key`` is for classes that set
# ``accepts_action_key``.
_MODEL_FILE_ONLY = "only robomimic HDF5 demos hold a model_file attribute"
_NOT_TAKEN: dict[str, dict[str, str]] = {
    "lerobot": {
        "split": "a LeRobot dataset is read whole; select episodes with {episodes}",
        "keep_model_file": _MODEL_FILE_ONLY,
    },
    "rlds": {"keep_model_file": _MODEL_FILE_ONLY},
    "kinfer-ndjson": {
        "split": "kinfer logs have no splits; select episodes with {episodes}",
        "state_keys": "its states are always the joint angles, then the joint velocities",
        "flip_images": "kinfer logs hold no camera frames",
        "keep_model_file": _MODEL_FILE_ONLY,
    },
    "zarr": {
        "split": "a zarr replay buffer has no splits; select episodes with {episodes}",
        "keep_model_file": _MODEL_FILE_ONLY,
    },
    "numpy": {
        "split": "a numpy export is read whole; select episodes with {episodes}",
        "state_keys": "its states are the exported file's, as they were stored",
        "flip_images": "its frames are the exported file's, as they were stored (see its image_orientation); "
        "turn them when the .kdb file is ingested from the original source",
        "keep_model_file": _MODEL_FILE_ONLY,
    },
}


def refuse_unused(cls: type[Source], path: str, given: Mapping[str, object]) -> None:
    """Refuse options that ``cls`` would silently ignore (``given``: parameter -> value).

    Raises:
        ValueError: an option that is set (not None or False) does not apply to the format.
    """
    for name, value in given.items():
        if value is None or value is False:
            continue
        if name == "action_key":
            if getattr(cls, "accepts_action_key", False):
                continue
            raise ValueError(
                f"{option_name(name)} names the actions of LeRobot, RLDS and zarr datasets; {path} is read as "
                f"{cls.format}, whose converter takes no {option_name(name)} (its actions have a fixed "
                "place): leave it out"
            )
        why = _NOT_TAKEN.get(cls.format, {}).get(name)
        if why is not None:
            raise ValueError(
                f"{path} is read as {cls.format}, whose converter takes no {option_name(name)} "
                f"({why.format(episodes=option_name('episodes'))}): leave it out"
            )
