"""Checks of what `Writer.add_episode` is given (arrays, flags, text and JSON fields) and of
the indices the reader is given (episodes, frames)."""

from __future__ import annotations

import math
import numbers
import operator
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kinodb.errors import EpisodeNotFoundError, KinodbError, WriterError
from kinodb.kdb._layout import DTYPE_CODE


def dims3(shape: Sequence[int], name: str = "array") -> list[int]:
    """The trailing dims of a (T, ...) shape, zero-padded to three; ``name`` says whose."""
    n = len(shape)
    if n == 1:  # the common shapes, (T,) and (T, D), without the general path's calls
        return [0, 0, 0]
    if n == 2 and shape[1] < 2**32:
        return [int(shape[1]), 0, 0]
    if n > 4:
        raise WriterError(
            f"{name} has shape {tuple(shape)}; arrays have at most 4 dimensions (T and 3 more): reshape it, "
            "e.g. merge trailing dims"
        )
    if max(shape[1:], default=0) >= 2**32:
        raise WriterError(f"{name} has shape {tuple(shape)}; each dim after T must be under 2**32")
    return [int(d) for d in shape[1:]] + [0] * (4 - len(shape))


# The dtypes stored as they are: little-endian (or one byte) bool, int, uint and float.
_STORED: set[np.dtype[Any]] = set()


def as_array(name: str, value: Any, default: type, *, ndim: int | None) -> np.ndarray:
    if (
        type(value) is np.ndarray
        and value.dtype in _STORED
        and (value.ndim == ndim if ndim is not None else value.ndim > 0)
    ):
        return value  # the common case, without the checks' calls
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value, dtype=default)
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: a tensor that requires grad
            if getattr(value, "requires_grad", False) is True:
                raise WriterError(
                    f"{name} is a tensor that requires grad, which NumPy cannot read; pass it detached, "
                    "tensor.detach() (or a NumPy array)"
                ) from exc
            raise WriterError(f"{name} is not numeric: {exc}") from exc
    if (
        arr.dtype.kind not in "biuf"
        or arr.dtype.itemsize > 8
        or arr.dtype.newbyteorder("<") not in DTYPE_CODE
    ):
        raise WriterError(f"{name} has dtype {arr.dtype}; kinodb stores bool, int, uint and float arrays")
    if ndim is not None and arr.ndim != ndim:
        want = "(T, D)" if ndim == 2 else "(T,)"
        raise WriterError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.ndim == 0:
        raise WriterError(f"{name} must have a leading frame dimension, got a scalar")
    stored = arr.dtype.newbyteorder("<")
    if stored == arr.dtype:
        _STORED.add(arr.dtype)
        return arr
    return arr.astype(stored)


def terminal(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise WriterError(f"is_terminal must have shape (T,), got {arr.shape}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise WriterError("is_terminal must be bool (or 0/1), got other values")
        arr = arr.astype(bool)
    return arr


def check_text(value: str, where: str) -> None:
    """Refuse ``value`` unless it encodes as UTF-8 (a lone surrogate, as `os.fsdecode` leaves
    for bytes that are not UTF-8, does not), naming it ``where``.

    Raises:
        WriterError: naming ``where`` and the position of the first character at fault.
    """
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise WriterError(
            f"{where} is not valid Unicode text ({exc.reason} at position {exc.start}); text "
            "decoded with os.fsdecode keeps bytes that are not UTF-8 as lone surrogates: decode "
            "them, e.g. text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')"
        ) from None


def _is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (see `check_text`)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# Extra field names checked (`check_extra_name`): each is checked once.
_EXTRA_NAMES: set[str] = set()
_NAMES_KEPT = 4096  # names kept at most: those beyond are checked each time


def check_extra_name(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise WriterError(f"extra field names must be non-empty str, got {key!r}")
    check_text(key, f"extra field name {key!r}")
    if key.startswith("extra."):
        bare = key[len("extra.") :]
        raise WriterError(
            f"extra field name {key!r} starts with 'extra.', which read_meta and KQL use to mark extra "
            f"fields (extra.NAME is the field NAME); rename it{f', e.g. to {bare!r}' if bare else ''}"
        )


# How deep lists (and metadata's dicts) may nest in a stored JSON value: well within the
# interpreter's recursion limit, so that checking, committing and reading it cannot fail.
JSON_MAX_DEPTH = 100


def json_value(value: Any, where: str, *, mappings: bool = False, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value``, named ``where`` in messages; ``mappings`` admits dicts
    (dataset metadata), and ``depth`` is how deep ``value`` lies in the one being checked.

    Raises:
        WriterError: JSON cannot store ``value`` (NaN, bytes, an int too long to write as
            text, nesting deeper than `JSON_MAX_DEPTH`, text that is not UTF-8 ...).
    """
    if isinstance(value, (list, tuple)) or (mappings and isinstance(value, Mapping)):
        if depth >= JSON_MAX_DEPTH:
            raise WriterError(
                f"{_shorten(where)} nests lists{' and dicts' if mappings else ''} more than "
                f"{JSON_MAX_DEPTH} levels deep; kinodb stores JSON values nested at most that deep: "
                "flatten it, or store it as a string (json.dumps(value))"
            )
        if not isinstance(value, (list, tuple)):
            return json_mapping(value, where, depth=depth + 1)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_text(value, where)
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return _text_int(int(value), where)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise WriterError(f"{where} is {value}; JSON cannot store NaN or infinity")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [
            json_value(v, f"{where}[{i}]", mappings=mappings, depth=depth + 1) for i, v in enumerate(value)
        ]
    raise WriterError(f"{where} has type {type(value).__name__}; use str, number, bool, None or a list")


def json_mapping(value: Mapping[str, Any], where: str, *, depth: int = 0) -> dict[str, Any]:
    """A JSON-ready copy of ``value`` (NumPy scalars become Python numbers); ``depth`` as
    in `json_value`."""
    if not isinstance(value, Mapping):
        raise WriterError(f"{where} must be a mapping, got {type(value).__name__}")
    out = {}
    for key, v in value.items():
        if not isinstance(key, str):
            raise WriterError(f"{where} keys must be str, got {key!r}")
        check_text(key, f"{where} key {key!r}")
        out[key] = json_value(v, f"{where}[{key!r}]", mappings=True, depth=depth)
    return out


def _max_str_digits() -> int:
    """The interpreter's limit on the decimal digits of an int written as text (0: none;
    Python 3.10 before 3.10.7 has none)."""
    get = getattr(sys, "get_int_max_str_digits", None)
    return int(get()) if get is not None else 0


def _text_int(value: int, where: str) -> int:
    """``value``, refused when the interpreter will not write it as decimal text (JSON's
    only form for it): its commit would fail, losing every episode added.

    Raises:
        WriterError: naming ``where``, with the limit and what to store instead.
    """
    limit = _max_str_digits()
    # b bits make at most b * log10(2) + 1 < 0.31 * b + 1 digits: an ordinary int is not converted.
    if not limit or value.bit_length() <= 3 * limit:
        return value
    try:
        str(value)  # the interpreter's own test, as json.dumps makes it at the commit
    except ValueError:
        raise WriterError(
            f"{where} is {shown(value)}; JSON stores a number as text, and Python writes an int "
            f"of at most {limit} digits as text (sys.get_int_max_str_digits()): store it as a "
            "string instead, e.g. hex(value)"
        ) from None
    return value


def shown(value: object) -> str:
    """``repr(value)`` for a message; an int too long for the interpreter to write as text
    is described by its size instead (its repr would raise ValueError)."""
    if isinstance(value, int) and _max_str_digits() and value.bit_length() > 3 * _max_str_digits():
        return f"an int of about {int(value.bit_length() * math.log10(2)) + 1} decimal digits"
    return repr(value)


def _shorten(text: str, keep: int = 60) -> str:
    """``text`` with its middle left out when it is longer than ``2 * keep`` characters."""
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]}"


def real_number(value: Any, what: str, want: str = "a number") -> float:
    """``value`` as a float: a real number (int, float, Fraction, NumPy int or float
    scalar), not a bool, a string or an array.

    Raises:
        WriterError: anything else; the message says ``what`` must be ``want`` and names the
            value given.
    """
    number: Any = value  # unnarrowed: numbers.Real declares no comparison with an int
    if type(number) is float or (isinstance(number, numbers.Real) and not isinstance(number, bool)):
        try:
            return float(number)
        except OverflowError:  # an int past float's range: refused as not finite
            return -math.inf if value < 0 else math.inf
    array = hasattr(value, "shape") and not isinstance(value, np.generic)
    hint = "; for a one-element array or tensor, pass x.item()" if array else ""
    raise WriterError(f"{what} must be {want}, got {shown(value)}{hint}")


def mapping(value: Any, what: str, example: str) -> Mapping[Any, Any]:
    """``value``, refused unless it is a mapping (a dict); None becomes an empty one.

    Raises:
        WriterError: naming the argument ``what``, with an ``example`` of what to pass.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WriterError(f"{what} must be a mapping (a dict), e.g. {example}; got {type(value).__name__}")
    return value


def episode_meta(
    embodiment: str, task: str, fps: Any, success: bool | None,
    total_reward: Any, rew: np.ndarray, rewards: Any, extra: Mapping[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The checked per-episode metadata of `Writer.add_episode`; ``total_reward`` defaults
    to the sum of ``rew`` when ``rewards`` were given (None when that sum is not finite).

    Raises:
        WriterError: a field has the wrong type or value.
    """
    if not isinstance(embodiment, str) or not isinstance(task, str):
        raise WriterError("embodiment and task must be str")
    check_text(embodiment, "embodiment")
    check_text(task, "task")
    fps = positive_fps(fps)
    if success is not None and not isinstance(success, (bool, np.bool_)):
        raise WriterError(f"success must be True, False or None, got {success!r}")
    if total_reward is None:
        if rewards is not None:  # unknown (None) when the rewards hold NaN or infinity
            # NaN (a signalling payload too) or +inf and -inf together sum to NaN, the
            # documented case above: NumPy's "invalid value" warning would say nothing more.
            with np.errstate(invalid="ignore"):
                total = float(rew.astype(np.float64).sum())
            total_reward = total if math.isfinite(total) else None
    else:
        total_reward = real_number(total_reward, "total_reward", "a number or None (unknown)")
        if not math.isfinite(total_reward):
            raise WriterError(
                f"total_reward is {total_reward}; pass a finite number, or None when it is unknown"
            )
    clean = {}
    for key, value in mapping(extra, "extra", "{'scene': 'kitchen'}").items():
        if key not in _EXTRA_NAMES:
            check_extra_name(key)
            if len(_EXTRA_NAMES) < _NAMES_KEPT:
                _EXTRA_NAMES.add(key)
        # text, the common value, without json_value's calls (what it does for a str)
        clean[key] = value if type(value) is str and _is_text(value) else json_value(value, f"extra[{key!r}]")
    return {"embodiment": embodiment, "task": task, "fps": fps, "success": success,
            "total_reward": total_reward, "extra": clean}  # fmt: skip


def positive_fps(fps: Any) -> float:
    """``fps`` as a positive finite float.

    Raises:
        WriterError: it is not a number (a bool, a string, an array), or not positive and finite.
    """
    value = real_number(fps, "fps", "a positive number")
    if not (math.isfinite(value) and value > 0):  # the value as given, not as a float
        raise WriterError(f"fps must be a positive number, got {shown(fps)}")
    return value


def as_index(value: object, what: str, error: type[KinodbError]) -> int:
    """``value`` as an int: a Python or NumPy integer (anything with ``__index__``), not a
    bool, a float or a string.

    Raises:
        KinodbError: ``error``, naming ``what`` and the value given.
    """
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise error(f"{what} must be an int, got {value!r} ({type(value).__name__})")


def episode_index(i: object, n: int) -> int:
    """Episode index ``i`` of a file of ``n`` episodes as a position ``0..n-1``; a negative
    index counts from the end, as in a list.

    Raises:
        EpisodeNotFoundError: ``i`` is not an int, or out of range (the message gives the range).
    """
    idx = as_index(i, "episode index", EpisodeNotFoundError)
    pos = idx + n if idx < 0 else idx
    if not 0 <= pos < n:
        raise EpisodeNotFoundError(out_of_range(idx, n))
    return pos


def out_of_range(i: int, n: int) -> str:
    """The message for episode index ``i`` outside a file of ``n`` episodes."""
    if not n:
        return f"episode {shown(i)} out of range: file has 0 episodes (none)"
    return (
        f"episode {shown(i)} out of range: file has {n} episodes (0..{n - 1}), or -{n}..-1 counting "
        "from the end"
    )
