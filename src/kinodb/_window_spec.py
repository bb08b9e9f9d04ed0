"""What a frame window takes per feature: `WindowSpec`, built from horizons or ``delta_timestamps``.

The horizons give offsets in frames; LeRobot's ``delta_timestamps`` gives them in seconds per
feature, under kinodb's or LeRobot's feature names (``_ALIASES``), and names cameras as
``observation.images.CAM``, ``CAM`` or ``image`` (`camera_named`, which ``image_key`` shares).
An ``image_key`` mapping gives each source's own camera one output name (`_camera_map`).
`kinodb.windows` re-exports `WindowSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kinodb.errors import KinodbError

Pad = Literal["edge", "zero"]

# Feature names accepted in ``delta_timestamps``: kinodb's and LeRobot's, -> (array, output key).
_ALIASES = {
    "state": ("states", "state"), "states": ("states", "state"), "observation.state": ("states", "state"),
    "action": ("actions", "action"), "actions": ("actions", "action"),
    "reward": ("rewards", "reward"), "rewards": ("rewards", "reward"), "next.reward": ("rewards", "reward"),
    "is_terminal": ("is_terminal", "is_terminal"), "next.done": ("is_terminal", "is_terminal"),
    "timestamp": ("timestamps", "timestamp"), "timestamps": ("timestamps", "timestamp"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Which frames a window takes per feature: offsets in frames or in seconds.

    ``arrays`` maps an output key to ``(array name, offsets)``; ``images`` maps a camera
    to its offsets. Offsets are frame counts (ints) when ``seconds`` is False, else
    seconds converted through each episode's fps, except for the array keys in
    ``frame_arrays`` and the cameras in ``frame_images``: features ``delta_timestamps``
    does not name keep their horizons, in frames.
    """

    arrays: dict[str, tuple[str, tuple[float, ...]]]
    images: dict[str, tuple[float, ...]]
    seconds: bool
    frame_arrays: frozenset[str] = frozenset()
    frame_images: frozenset[str] = frozenset()

    def array_in_seconds(self, key: str) -> bool:
        """Whether array key ``key``'s offsets are seconds (else frames)."""
        return self.seconds and key not in self.frame_arrays

    def image_in_seconds(self, camera: str) -> bool:
        """Whether camera ``camera``'s offsets are seconds (else frames)."""
        return self.seconds and camera not in self.frame_images


def _camera_map(cameras: Mapping[str, Any], sources: int) -> list[dict[str, str]]:
    """``{output: camera or [camera per source]}`` as one ``{output: camera}`` per source."""
    if not cameras:
        raise ValueError("image_key as a mapping needs at least one camera")
    out: list[dict[str, str]] = [{} for _ in range(sources)]
    for key, value in cameras.items():
        names = [value] * sources if isinstance(value, str) else list(value)
        if not isinstance(key, str) or len(names) != sources or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"image_key[{key!r}] must be a camera name or a list of {sources} camera names (one per "
                f"source, in order), got {value!r}"
            )
        for s, name in enumerate(names):
            out[s][key] = name
    return out


def _build_spec(
    obs: int,
    act: int,
    delta: Mapping[str, Sequence[float]] | None,
    chosen: list[str] | None,
    all_cams: list[str],
    *,
    where: str = "the data",
    hint: Callable[[str], str] | None = None,
    mapped: Sequence[Mapping[str, str]] | None = None,
) -> WindowSpec:
    """Offsets per feature: ``delta`` (seconds) for the features it names; the horizons (in
    frames) for ``state``, ``action`` and the ``chosen`` cameras it does not name.

    ``all_cams`` are the cameras of ``where`` (the first source); with other sources, whose
    cameras may be named apart, ``hint(camera)`` says how to name one camera of each. With
    an ``image_key`` mapping, ``mapped`` (`_camera_map`'s, one ``{output: camera}`` per
    source given) names the output camera to use for a source's own camera."""
    history = tuple(float(k) for k in range(-obs + 1, 1))
    future = tuple(float(k) for k in range(act))
    if delta is None:
        return WindowSpec(
            {"state": ("states", history), "action": ("actions", future)},
            dict.fromkeys(chosen or [], history),
            seconds=False,
        )
    if not isinstance(delta, Mapping) or not delta:
        raise ValueError(
            f"delta_timestamps must be a non-empty mapping {{feature: [seconds, ...]}}, got {delta!r}"
        )
    arrays: dict[str, tuple[str, tuple[float, ...]]] = {}
    images: dict[str, tuple[float, ...]] = {}
    named: dict[tuple[str, str], str] = {}  # ("camera", cam) or ("array", output key) -> feature
    for feature, values in delta.items():
        if not isinstance(feature, str):
            raise TypeError(f"delta_timestamps keys must be feature names (str), got {feature!r}")
        offsets = _seconds_of(feature, values)
        cam = _camera_of(feature, all_cams, where=where, hint=hint, mapped=mapped)
        if cam is not None:
            _once(named, ("camera", cam), feature)
            images[cam] = offsets
            continue
        if feature in _ALIASES:
            name, key = _ALIASES[feature]
        else:  # an extra array, by its name (``observation.states`` is ``states``, keyed ``state``)
            bare = feature.removeprefix("observation.")
            name, key = _ALIASES.get(bare, (bare, bare))
        _once(named, ("array", key), feature)
        arrays[key] = (name, offsets)
    horizons = {"state": ("states", history), "action": ("actions", future)}
    frame_arrays = [key for key in horizons if key not in arrays]  # in order: the output's keys
    frame_images = [cam for cam in chosen or [] if cam not in images]
    arrays.update({key: horizons[key] for key in frame_arrays})
    images.update(dict.fromkeys(frame_images, history))
    return WindowSpec(arrays, images, True, frozenset(frame_arrays), frozenset(frame_images))


def _once(named: dict[tuple[str, str], str], what: tuple[str, str], feature: str) -> None:
    """Record that ``feature`` names ``what``; refuse a second key naming the same."""
    earlier = named.setdefault(what, feature)
    if earlier != feature:
        kind, name = what
        which = f"camera {name!r}" if kind == "camera" else f"the feature {name!r}"
        raise ValueError(
            f"delta_timestamps names {which} twice, as {earlier!r} and as {feature!r}; give its "
            "offsets under one of the two keys"
        )


def delta_cameras(
    delta: Any, cams: list[str], *, where: str = "the data", hint: Callable[[str], str] | None = None
) -> list[str]:
    """The cameras among ``cams`` that ``delta_timestamps`` names, in its order (a malformed
    ``delta`` names none here: `_build_spec` says what is wrong with it)."""
    if not isinstance(delta, Mapping):
        return []
    named = [
        _camera_of(feature, cams, where=where, hint=hint) for feature in delta if isinstance(feature, str)
    ]
    return list(dict.fromkeys(cam for cam in named if cam is not None))


def _seconds_of(feature: str, values: Any) -> tuple[float, ...]:
    """``delta_timestamps[feature]`` as a tuple of finite floats, checked."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(
            f"delta_timestamps[{feature!r}] must be a list of seconds such as [-0.1, 0.0], got {values!r}"
        )
    try:
        offsets = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(
            f"delta_timestamps[{feature!r}] must be a list of seconds (numbers), got {values!r}"
        ) from None
    if not offsets or not all(math.isfinite(v) for v in offsets):
        raise ValueError(f"delta_timestamps[{feature!r}] must be a non-empty list of finite seconds")
    return offsets


def camera_named(name: str, cams: Sequence[str]) -> str | None:
    """The camera among ``cams`` that ``name`` names: itself, or with LeRobot's prefix
    ``observation.images.`` (or ``images.``) before it; None when none does."""
    for prefix in ("", "observation.images.", "images."):
        if name.startswith(prefix) and name[len(prefix) :] in cams:
            return name[len(prefix) :]
    return None


def _camera_of(
    feature: str,
    cams: list[str],
    *,
    where: str = "the data",
    hint: Callable[[str], str] | None = None,
    mapped: Sequence[Mapping[str, str]] | None = None,
) -> str | None:
    if feature in ("image", "observation.image"):
        if not cams:
            raise KinodbError(f"delta_timestamps names {feature!r} but {where} has no cameras")
        return cams[0]
    cam = camera_named(feature, cams)
    if cam is not None:
        return cam
    if mapped is not None and feature not in _ALIASES:
        _refuse_source_camera(feature, cams, where, mapped)
    if feature.startswith("observation.images."):
        more = ""
        if hint is not None:
            cam = feature.removeprefix("observation.images.")
            more = f". {hint(cam)}; delta_timestamps then names the output name ({feature!r} for {cam!r})"
        if not cams and not more:
            more = ": leave the camera out of delta_timestamps (windows without images)"
        raise KinodbError(f"delta_timestamps names camera {feature!r}; {where} has cameras {cams}{more}")
    return None


def _refuse_source_camera(
    feature: str, cams: list[str], where: str, mapped: Sequence[Mapping[str, str]]
) -> None:
    """Refuse ``feature`` when it names a source's own camera of an ``image_key`` mapping,
    naming the output camera that maps it (delta_timestamps names output cameras)."""
    for s, names in enumerate(mapped):
        for output, own in names.items():
            if camera_named(feature, [own]) is not None:
                raise KinodbError(
                    f"delta_timestamps names camera {feature!r}; {where} has cameras {cams}: name the output "
                    f"camera instead: 'observation.images.{output}' (which maps {own!r} in source {s})"
                )
