"""RLDS features: which `.kdb` field each TFDS feature fills, and one episode.

Each flattened feature has a `Spec` (`kinodb.ingest._rlds_specs`: kind, per-step shape
and dtype, from ``features.json`` or, failing that, from the first record). A `Plan` assigns every feature a role once per dataset (actions, states, a camera, an
extra array, the task, an extra field). `convert` turns one episode's decoded features
into `Writer.add_episode` keyword arguments following the plan; tensors TFDS stores as
bytes (``encoding='bytes'`` or ``'zlib'``) are decoded first, as ``tfds.load`` decodes them.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import ConversionError
from kinodb.ingest._base import SOURCE_PARTS, FrameChunks, SourceOptions
from kinodb.ingest._exact import first_rounded
from kinodb.ingest._example import FeatureValue
from kinodb.ingest._options import option_name, option_value, skip_advice
from kinodb.ingest._rlds_specs import STEPS, Disagrees, Spec, decode_dtype, shown
from kinodb.kdb import _codecs
from kinodb.kdb.reader import META_FIELDS

OBS = "steps/observation/"
META = "episode_metadata/"
TASK_KEYS = ("steps/language_instruction", "steps/observation/natural_language_instruction")
SUCCESS_KEYS = ("episode_metadata/success", "episode_metadata/is_success")
FLAG_KEYS = ("steps/is_first", "steps/is_last")
# the ingest framework writes the first two; the rest are built-in episode fields
_RESERVED_EXTRA = {"source_file", "source_episode", *META_FIELDS}
# the writer's own array names: a feature of such a name is stored under its whole key
_RESERVED_ARRAYS = frozenset({"actions", "states", "rewards", "is_terminal", "timestamps", "meta", "images"})
FLIP_CHUNK = 32  # frames decoded at a time when turning a camera (flip_images)
LEFT_OUT_FIELD = "rlds.left_out"  # an episode's extra field naming its values left out (NaN, infinity)
REWRITE = (
    "copy it again from the dataset's source, or write it anew with TFDS (tfds.folder_dataset.write_metadata)"
)


# -- plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """Which feature fills which `.kdb` field, fixed once per dataset."""

    specs: dict[str, Spec]
    count_key: str
    actions: list[str]
    states: list[str]
    cameras: dict[str, str] = field(default_factory=dict)  # camera name -> key
    arrays: dict[str, str] = field(default_factory=dict)  # extra array name -> key
    texts: dict[str, str] = field(default_factory=dict)  # extra field name -> per-step text key
    fields: dict[str, str] = field(default_factory=dict)  # extra field name -> episode-level key
    reward: str | None = None
    terminal: str | None = None
    task: str | None = None
    success: str | None = None
    left_out: tuple[str, ...] = ()  # declared features not stored (and their record keys)
    declared: bool = False  # the specs come from features.json (else from the first record)

    @functools.cached_property
    def byte_keys(self) -> list[str]:
        """The features TFDS stores as bytes (`Spec.as_bytes`)."""
        return [key for key, spec in self.specs.items() if spec.as_bytes]

    def components(self, keys: list[str], strip: str) -> dict[str, list[int]]:
        """``{name: [start, stop)}`` of each key in a concatenation (empty for one key)."""
        if len(keys) < 2:
            return {}
        out, pos = {}, 0
        for key in keys:
            width = self.specs[key].width or 0
            out[key.removeprefix(strip)] = [pos, pos + width]
            pos += width
        return out

    def schema(self) -> dict[str, Any]:
        """The ``schema`` argument of `Writer`: action and state components."""
        out: dict[str, Any] = {}
        for part, keys, strip in (("actions", self.actions, "steps/action/"), ("states", self.states, OBS)):
            comps = self.components(keys, strip)
            if comps:
                out[part] = {"components": comps}
        return out

    def roles(self) -> dict[str, Any]:
        """Which source keys went where, for the dataset metadata."""
        out: dict[str, Any] = {"actions": self.actions, "states": self.states, "cameras": self.cameras,
                               "arrays": self.arrays, "fields": {**self.texts, **self.fields}}  # fmt: skip
        for name in ("reward", "terminal", "task", "success"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _section_name(key: str, short: str, taken: set[str]) -> str:
    """A camera or extra-array name: ``short`` with TFDS's ``/`` written as ``.`` (kinodb's
    exporters take no ``/`` in names), else the whole key so written, made unique."""
    name = short.replace("/", ".")
    if name in _RESERVED_ARRAYS or name in taken:
        name = key.replace("/", ".")
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _field_name(key: str, used: set[str]) -> str:
    name = key.removeprefix(META).removeprefix(STEPS).replace("/", ".")
    if name in _RESERVED_EXTRA or name in used:
        name = key.replace("/", ".")
    used.add(name)
    return name


def _action_keys(specs: Mapping[str, Spec], name: str) -> list[str]:
    """The step features that make the actions: ``steps/NAME`` itself, or the tensors of the
    dict ``steps/NAME/...`` in sorted key order."""
    key = STEPS + name.removeprefix(STEPS).strip("/")
    if key in specs:
        return [key]
    return sorted(k for k, s in specs.items() if k.startswith(key + "/") and s.kind != "text")


def _state_keys(specs: Mapping[str, Spec], options: SourceOptions) -> list[str]:
    if options.state_keys:
        keys = []
        for want in options.state_keys:
            found = next((k for k in (OBS + want, STEPS + want, want) if k in specs), None)
            if found is None or specs[found].kind in ("image", "text") or not found.startswith(STEPS):
                raise ConversionError(
                    f"state key {want!r} is not a numeric per-step feature; numeric observation keys: "
                    f"{', '.join(k.removeprefix(OBS) for k in _numeric_obs(specs)) or 'none'}"
                )
            keys.append(found)
        return keys
    if OBS + "state" in specs and specs[OBS + "state"].kind == "float":
        return [OBS + "state"]
    flat = specs.get(OBS.rstrip("/"))  # the observation as one tensor (rlds_base, D4RL)
    if flat is not None and flat.kind == "float":
        return [flat.key]
    # language embeddings (RT-1's natural_language_embedding) describe the task, not the robot
    return [
        k for k in _numeric_obs(specs) if specs[k].kind == "float" and "embedding" not in k.rsplit("/", 1)[-1]
    ]


def _numeric_obs(specs: Mapping[str, Spec]) -> list[str]:
    return sorted(k for k, s in specs.items() if k.startswith(OBS) and s.kind in ("float", "int", "bool"))


def make_plan(specs: dict[str, Spec], options: SourceOptions) -> Plan:
    """Assign every feature a role.

    Raises:
        ConversionError: no step count (``is_first``/``is_last``), no action, or a bad
            ``state_keys`` option.
    """
    count = next((k for k in FLAG_KEYS if k in specs), None)
    if count is None:
        raise ConversionError(
            "no steps/is_first or steps/is_last feature: cannot count the steps of an episode"
        )
    actions = _action_keys(specs, options.action_key or "action")
    if not actions or any(specs[k].kind == "image" for k in actions):
        numeric = sorted(k.removeprefix(STEPS) for k, s in specs.items()
                         if k.startswith(STEPS) and s.kind not in ("text", "image") and k not in FLAG_KEYS)  # fmt: skip
        what = f"steps/{options.action_key}" if options.action_key else "steps/action"
        raise ConversionError(
            f"no numeric {what} feature (a tensor, or a dict of tensors); the numeric step features are "
            f"{numeric or 'none'}: name the one that holds the actions with {option_name('action_key')}, e.g. "
            f"{option_value('action_key', 'action_dict')} for a dict of tensors, concatenated in sorted key order"
        )
    plan = Plan(specs, count, actions, _state_keys(specs, options))
    taken = {*FLAG_KEYS, *actions, *plan.states}  # the flags are checked (`_check_flags`), not stored
    plan.task = next((k for k in TASK_KEYS if k in specs and specs[k].kind == "text"), None)
    plan.success = next((k for k in SUCCESS_KEYS if k in specs and specs[k].kind != "text"), None)
    if specs.get(STEPS + "reward", Spec("", "")).kind == "float" and specs[STEPS + "reward"].shape in (
        (),
        (1,),
    ):
        plan.reward = STEPS + "reward"
    if STEPS + "is_terminal" in specs and specs[STEPS + "is_terminal"].kind != "text":
        plan.terminal = STEPS + "is_terminal"
    taken |= {k for k in (plan.task, plan.success, plan.reward, plan.terminal) if k}
    used: set[str] = {LEFT_OUT_FIELD}  # a feature of that name is stored under its whole key
    sections: set[str] = set()  # camera and extra-array names
    for key in sorted(specs):
        spec = specs[key]
        if key in taken:
            continue
        if not key.startswith(STEPS):
            plan.fields[_field_name(key, used)] = key
        elif spec.kind == "image":
            short = key.removeprefix(OBS) if key.startswith(OBS) else key.removeprefix(STEPS)
            plan.cameras[_section_name(key, short, sections)] = key
        elif spec.kind == "text":
            plan.texts[_field_name(key, used)] = key
        else:
            plan.arrays[_section_name(key, key.removeprefix(STEPS), sections)] = key
    if plan.task is not None:  # kept as a field only when it varies within an episode
        plan.texts.setdefault(_field_name(plan.task, used), plan.task)
    return plan


# -- one episode --------------------------------------------------------------------------

_F32 = np.dtype("<f4")  # the dtype of a FloatList's values (`kinodb.ingest._example`)
_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def _numeric(value: FeatureValue, spec: Spec, where: str) -> NDArray[Any]:
    if isinstance(value, list):
        if not value:  # a Feature with no kind set: no values
            return np.zeros(0, np.float32)
        raise Disagrees(f"{where}: {spec.key} holds bytes; expected {spec.kind} values")
    if spec.kind == "float":
        if value.dtype.kind != "f":
            raise Disagrees(
                f"{where}: {spec.key} holds int64 values; expected {spec.dtype or 'float'} values"
            )
        if spec.dtype == "float16":  # a FloatList holds float16 values exactly; TFDS casts them back
            return value.astype(np.float16)
        return value
    if value.dtype.kind == "f":
        raise Disagrees(f"{where}: {spec.key} holds float values; expected {spec.kind}")
    if spec.kind == "bool":
        flags: NDArray[np.bool_] = value != 0
        return flags
    if spec.dtype in _INT_DTYPES and spec.dtype != "int64":
        target = np.dtype(spec.dtype)
        info = np.iinfo(target)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise Disagrees(
                f"{where}: {spec.key} has values outside {spec.dtype} ({value.min()}..{value.max()}); "
                f"expected {spec.dtype} values ({info.min}..{info.max})"
            )
        return value.astype(target)
    return value


def _steps(feats: Mapping[str, FeatureValue], plan: Plan, key: str, T: int, where: str) -> NDArray[Any]:
    """Per-step values of ``key`` as ``(T, *shape)``; checks the value count."""
    value = feats.get(key)
    if value is None:
        raise Disagrees(f"{where}: missing feature {key}")
    spec = plan.specs[key]
    if spec.kind == "float" and type(value) is np.ndarray and value.dtype is _F32 and spec.dtype != "float16":
        arr = value  # the common case, as `_numeric` returns it
    else:
        arr = _numeric(value, spec, where)
    if spec.shape is not None:
        if arr.size != T * math.prod(spec.shape):
            raise Disagrees(
                f"{where}: {key} has {arr.size} values; {T} steps of shape {spec.shape} need "
                f"{T * math.prod(spec.shape)}"
            )
        return arr.reshape(T, *spec.shape)
    if arr.size % T:
        raise Disagrees(f"{where}: {key} has {arr.size} values, not a multiple of the {T} steps")
    return arr.reshape(T, -1)


def _concat(
    feats: Mapping[str, FeatureValue], plan: Plan, keys: list[str], T: int, where: str, *, actions: bool
) -> tuple[NDArray[Any], dict[str, NDArray[Any]] | None]:
    """The step features ``keys`` side by side, and each one's own values when there are several.

    One dtype: kept; integers and bools only: their NumPy result type; else float32 (a
    TFRecord's floats are float32). Every value must survive that cast exactly.

    Raises:
        ConversionError: a value the cast would change (an int beyond 2**24 beside floats);
            names the feature, the step and what to do.
    """
    if len(keys) == 1:
        return _steps(feats, plan, keys[0], T, where).reshape(T, -1), None
    parts = {key: _steps(feats, plan, key, T, where) for key in keys}
    flat = {key: p.reshape(T, -1) for key, p in parts.items()}
    dtypes = {p.dtype for p in flat.values()}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
    elif all(d.kind in "biu" for d in dtypes):
        dtype = np.result_type(*dtypes)
    else:
        dtype = np.dtype(np.float32)
    for key, arr in flat.items():
        rounded = first_rounded(arr, dtype)
        if rounded is not None:
            at, value = rounded
            fix = (
                f"name one tensor of the action dict with {option_name('action_key')}; the others then stay "
                "extra arrays"
                if actions
                else f"leave {key.removeprefix(OBS)!r} out of {option_name('state_keys')}: it then stays an "
                "extra array, with its own dtype"
            )
            raise ConversionError(
                f"{where}: {key} holds {value!r} at step {at // max(1, arr.shape[1])} ({arr.dtype}), which "
                f"the {dtype} {'actions' if actions else 'states'} of {len(flat)} features cannot hold "
                f"exactly; {fix}"
            )
    strip = "steps/action/" if actions else OBS
    own = {key.removeprefix(strip): parts[key] for key in keys}
    return np.concatenate([p.astype(dtype, copy=False) for p in flat.values()], axis=1), own


def _texts(value: FeatureValue, key: str, where: str) -> list[str]:
    if not isinstance(value, list):
        if value.size == 0:
            return []
        raise Disagrees(f"{where}: {key} holds numbers; expected text")
    try:
        return [v.decode() for v in value]
    except UnicodeDecodeError as exc:
        raise ConversionError(
            f"{where}: {key} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _step_texts(value: FeatureValue, key: str, where: str) -> tuple[int, list[str], list[int] | None]:
    """A step feature's texts as ``(steps, distinct texts in order of first appearance,
    each step's position among them or None when there is one)``: each distinct text is
    decoded once (UTF-8 decodes distinct bytes to distinct text), not once per step."""
    if not isinstance(value, list):
        return 0, _texts(value, key, where), None
    if value and value.count(value[0]) == len(value):  # one text, the usual case: no hash of each step's
        return len(value), _texts(value[:1], key, where), None
    firsts = dict.fromkeys(value)
    texts = _texts(list(firsts), key, where)
    if len(firsts) <= 1:
        return len(value), texts, None
    position = {raw: k for k, raw in enumerate(firsts)}
    return len(value), texts, [position[raw] for raw in value]


def _field_value(value: FeatureValue, spec: Spec, where: str) -> Any:
    """An episode-level feature as a JSON value: one value, a list (nested as TFDS returns a
    tensor of several dimensions, or a ``Sequence`` of tensors), or None if empty."""
    if spec.kind == "text":
        vals: list[Any] = _texts(value, spec.key, where)
    else:
        arr = _numeric(value, spec, where)
        vals = (_shaped(arr, spec, where) if spec.dims and arr.ndim == 1 else arr).tolist()
    if spec.listed:
        return vals  # a list stays a list, also of one value or none
    if not vals:
        return None
    return vals[0] if len(vals) == 1 and spec.shape in ((), None) else vals


def _shaped(arr: NDArray[Any], spec: Spec, where: str) -> NDArray[Any]:
    """An episode-level tensor's flat values in its declared shape, as ``tfds.load`` returns
    it: ``(N, *dims)`` for a ``Sequence``; flat where the shape leaves more than one
    dimension unknown."""
    dims = (-1, *(spec.dims or ())) if spec.sequence else tuple(spec.dims or ())
    known = math.prod(d for d in dims if d >= 0)
    unknown = dims.count(-1)
    if (unknown == 0 and arr.size != known) or (unknown == 1 and known and arr.size % known):
        raise Disagrees(
            f"{where}: {spec.key} has {arr.size} values, which make no tensor of shape {shown(dims)}"
        )
    if unknown > 1 or (unknown and not known):
        return arr
    return arr.reshape(dims)


def _decoded(feats: Mapping[str, FeatureValue], plan: Plan, where: str) -> Mapping[str, FeatureValue]:
    """``feats`` with the tensors TFDS stores as bytes decoded as ``tfds.load`` decodes them
    (``np.frombuffer(zlib.decompress(b), dtype)``): flat values, as the record holds other
    tensors; one whose record holds its shape (`Spec.dynamic`) in that shape."""
    keys = plan.byte_keys
    if not keys:
        return feats
    out = dict(feats)
    for key in keys:
        spec = plan.specs[key]
        if spec.dynamic:
            value, shape = out.pop(f"{key}/value", None), out.pop(f"{key}/shape", None)
            if value is None or shape is None:
                raise Disagrees(f"{where}: missing feature {key}/{'shape' if value is not None else 'value'}")
            if isinstance(shape, list) or shape.dtype.kind == "f" or (shape < 0).any():
                raise Disagrees(f"{where}: {key}/shape holds no shape: {shape!r}")
            flat = _from_bytes(value, spec, where, tuple(int(d) for d in shape))
            out[key] = flat.reshape([int(d) for d in shape])
        elif key in out:
            out[key] = _from_bytes(out[key], spec, where, spec.dims)
    return out


def _from_bytes(value: FeatureValue, spec: Spec, where: str, dims: tuple[int, ...] | None) -> NDArray[Any]:
    """The flat values of ``spec``'s tensors of shape ``dims`` (-1: unknown), from their bytes:
    one entry per step, per element of a ``Sequence``, else one."""
    dtype = decode_dtype(spec.dtype)
    if dtype is None:  # not planned: `Spec.problem` leaves such a feature out
        raise ConversionError(f"{where}: {spec.key}: no NumPy dtype {spec.dtype!r} to decode its bytes into")
    if not isinstance(value, list):
        if value.size == 0:  # a Feature with no kind set: no values
            return np.zeros(0, dtype)
        raise Disagrees(f"{where}: {spec.key} holds numbers; expected {spec.dtype} tensors stored as bytes "
                         f"(encoding {spec.encoding!r})")  # fmt: skip
    steps = spec.key.startswith(STEPS)
    if not steps and not spec.sequence and len(value) != 1:
        raise Disagrees(f"{where}: {spec.key} holds {len(value)} byte strings; expected one tensor's")
    dims = dims or ()
    parts = []
    for i, blob in enumerate(value):
        what = f"{spec.key} step {i}" if steps else f"{spec.key} element {i}" if spec.sequence else spec.key
        if spec.encoding == "zlib":
            try:
                blob = zlib.decompress(blob)
            except zlib.error as exc:
                raise Disagrees(
                    f"{where}: {what} is not zlib data ({exc}), as its encoding 'zlib' says"
                ) from None
        if not _fits(len(blob), dims, dtype.itemsize):
            raise Disagrees(
                f"{where}: {what} holds {len(blob)} bytes, which make no {spec.dtype} tensor of shape {shown(dims)}"
            )
        parts.append(np.frombuffer(blob, np.uint8) != 0 if dtype.kind == "b" else np.frombuffer(blob, dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _fits(size: int, dims: tuple[int, ...], itemsize: int) -> bool:
    """Whether ``size`` bytes make a tensor of shape ``dims`` (-1: any number of rows)."""
    known = itemsize * math.prod(d for d in dims if d >= 0)
    if -1 not in dims:
        return size == known
    return size % known == 0 if known else size == 0


def _camera(value: FeatureValue, spec: Spec, T: int, options: SourceOptions, where: str) -> Any:
    """A camera's encoded frames, unchanged; decoded and turned 180 degrees if asked.

    With a declared channel count the frames read back with it, whatever each frame's
    bytes hold (greyscale or RGBA JPEG/PNG under a 3-channel feature), as ``tfds.load``
    decodes them (``channels=shape[-1]``): the bytes are kept, and readers convert.
    """
    if not isinstance(value, list) or len(value) != T:
        got = f"{len(value)} frames" if isinstance(value, list) else "numbers"
        raise ConversionError(f"{where}: {spec.key} has {got}; the episode has {T} steps")
    if not value[0] or _codecs.sniff(value[0]) is None:
        raise ConversionError(f"{where}: {spec.key} step 0 is not JPEG or PNG bytes")
    try:
        shape = _codecs.probe(value[0])
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{where}: {spec.key} step 0: unreadable image header ({exc})") from None
    if spec.shape is not None and tuple(spec.shape[:2]) != shape[:2]:
        raise Disagrees(f"{where}: {spec.key} step 0 is {shape} (H, W, C); expected {spec.shape}")
    channels = spec.channels
    if options.flip_images:
        return _flipped(value, (*shape[:2], channels or shape[2]), options, f"{where}: {spec.key}")
    return value if channels is None else _codecs.EncodedFrames(value, channels)


def _flipped(
    value: list[bytes], shape: tuple[int, int, int], options: SourceOptions, where: str
) -> NDArray[np.uint8] | list[bytes] | FrameChunks:
    """A camera's frames turned 180 degrees, decoded `FLIP_CHUNK` frames at a time.

    Encoded a chunk at a time when the frames are to be stored as JPEG or PNG (the bytes
    the writer's encoding of the whole turned episode gives, as `kinodb.kdb._codecs.encode`
    encodes frame by frame), so that only a chunk of pixels is held; `FrameChunks` when
    the options ask for them (``verify``); else (raw storage) one pixel array.

    Raises:
        CorruptFileError: a frame does not decode; names ``where`` and the frame.
        ConversionError: the encoder fails; names ``where`` and the codec to use instead.
    """
    chunks = functools.partial(_flip_chunks, value, shape, where)
    quality = options.jpeg_quality
    codec = "jpeg" if quality is not None else options.image_codec
    if codec == "jpeg" and (quality is None or shape[2] not in (1, 3)):
        codec = None  # pixels: the ingest's encoder refuses what JPEG cannot store, and says why
    if codec is None and options.frame_chunks:
        return FrameChunks(len(value), chunks)
    if codec is None:
        out = np.empty((len(value), *shape), np.uint8)
        for a, part in chunks():
            out[a : a + len(part)] = part
        return out
    encoded: list[bytes] = []
    for _, part in chunks():
        try:
            encoded += _codecs.encode(part, codec, quality or 0)
        except MemoryError:
            raise
        except Exception as exc:  # Pillow raises OSError, ValueError, TypeError for frames it cannot take
            other = "png" if codec == "jpeg" else "raw"
            raise ConversionError(
                f"{where}: {codec.upper()} encoding of uint8 frames of shape {shape} failed "
                f"({type(exc).__name__}: {exc}); store them with another codec "
                f"({option_value('image_codec', other)})"
            ) from None
    return encoded


def _flip_chunks(
    value: list[bytes], shape: tuple[int, int, int], where: str
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """``(start, frames)``: the frames from ``start`` on, decoded and turned 180 degrees."""
    for a in range(0, len(value), FLIP_CHUNK):
        part = _codecs.decode(value[a : a + FLIP_CHUNK], shape, where, first=a)
        yield a, np.ascontiguousarray(part[:, ::-1, ::-1])


def _success(feats: Mapping[str, FeatureValue], plan: Plan, rewards: NDArray[Any] | None) -> bool | None:
    """Episode metadata's success flag; else final reward > 0; None if cut off or unknown."""
    if plan.success is not None:
        flag = feats.get(plan.success, [])
        return None if isinstance(flag, list) or flag.size == 0 else bool(flag.reshape(-1)[0] != 0)
    if rewards is None:
        return None
    if rewards[-1] > 0:
        return True
    last = feats.get("steps/is_last")
    ended = last is None or (not isinstance(last, list) and last.size > 0 and last.reshape(-1)[-1] != 0)
    return False if ended else None


def _count(feats: Mapping[str, FeatureValue], plan: Plan, where: str) -> int:
    value = feats.get(plan.count_key)
    if value is None:
        raise Disagrees(f"{where}: missing feature {plan.count_key}")
    T = len(value) if isinstance(value, list) else int(value.size)
    if T == 0:
        raise ConversionError(
            f"{where}: the episode has no steps ({plan.count_key} is empty); a .kdb episode holds at least "
            f"one: select the others with {option_name('episodes')}{skip_advice()}"
        )
    return T


@functools.lru_cache(maxsize=64)
def _usual_flags(dtype: np.dtype[Any], T: int, first: bool) -> frozenset[bytes]:
    """The bytes of ``T`` flags, as ``dtype``, that make one whole episode: is_first at step 0
    only (``first``); else is_last at the last step only, or nowhere (an episode cut off)."""
    one = np.zeros(T, dtype)
    one[0 if first else -1] = 1
    return frozenset([one.tobytes()] if first else [one.tobytes(), np.zeros(T, dtype).tobytes()])


def _check_flags(feats: Mapping[str, FeatureValue], plan: Plan, T: int, where: str) -> None:
    """Refuse a record whose ``is_first``/``is_last`` do not make one episode: ``is_first`` at
    step 0 and nowhere else, ``is_last`` nowhere but at the last step (an episode cut off
    has none). The flags say where episodes start and end; they are not stored."""
    for key in FLAG_KEYS:
        if key not in plan.specs or plan.specs[key].kind == "text":
            continue
        values = _steps(feats, plan, key, T, where).reshape(T)
        first = key.endswith("is_first")
        if values.tobytes() in _usual_flags(values.dtype, T, first):  # the common record, at once
            continue
        flags = values != 0
        if first and not flags[0]:
            why = "step 0 is not is_first: the episode's start is missing"
        else:
            inner = flags[1:] if first else flags[:-1]
            if not inner.any():
                continue
            at = int(np.argmax(inner)) + (1 if first else 0)
            name = key.removeprefix(STEPS)
            why = (
                f"step {at} of its {T} is {name}: the record holds more than one episode (or a damaged "
                f"flag), and one record is one episode in this layout"
            )
        raise ConversionError(
            f"{where}: {why}; write the dataset anew with one episode per record, is_first at its first "
            f"step and is_last at its last{skip_advice()}"
        )


def _finite_fields(extra: dict[str, Any], plan: Plan) -> list[str]:
    """Take the episode-level fields holding NaN or infinity (JSON has neither) out of
    ``extra``; return their source keys (``episode_metadata/score``)."""
    out = []
    for name, key in plan.fields.items():
        if _non_finite(extra.get(name)):
            del extra[name]
            out.append(key)
    return out


def _non_finite(value: Any) -> bool:
    """Whether a field's value holds NaN or infinity, in lists of lists too."""
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def _spec_advice(plan: Plan) -> str:
    """Where the features' specs came from, and what to do when a record is not as they say."""
    if plan.declared:
        return (
            f"; features.json declares the features: if it does not describe this dataset, {REWRITE}, or "
            f"remove it (the features are then read from the first record){skip_advice()}"
        )
    return (
        "; without features.json, the first readable record declares the features: place the dataset's "
        f"features.json beside the shards{skip_advice()}"
    )


def convert(
    feats: Mapping[str, FeatureValue], plan: Plan, options: SourceOptions, where: str
) -> dict[str, Any]:
    """`Writer.add_episode` keyword arguments for one episode's decoded features.

    An episode-level field holding NaN or infinity is left out of the episode's ``extra``
    and named in its `LEFT_OUT_FIELD` (``rlds.left_out``).

    Raises:
        ConversionError: a feature is missing, unknown, of the wrong kind, or has a value
            count that does not fit the episode's steps (names ``where``, the key, where its
            spec came from and what to do); the steps' flags do not make one episode.
    """
    try:
        return _convert(feats, plan, options, where)
    except Disagrees as exc:
        raise ConversionError(f"{exc}{_spec_advice(plan)}") from None


def _convert(
    feats: Mapping[str, FeatureValue], plan: Plan, options: SourceOptions, where: str
) -> dict[str, Any]:
    feats = _decoded(feats, plan, where)
    unknown = sorted(
        k
        for k in feats.keys() - plan.specs.keys()
        if not any(k == g or k.startswith(f"{g}/") for g in plan.left_out)
    )
    if unknown:
        source = "features.json" if plan.declared else "the first record"
        raise Disagrees(f"{where}: features not declared in {source}: {unknown[:5]}")
    T = _count(feats, plan, where)
    _check_flags(feats, plan, T, where)
    actions, own_actions = _concat(feats, plan, plan.actions, T, where, actions=True)
    args: dict[str, Any] = {"actions": actions}
    parts = {"actions": own_actions} if own_actions else {}
    if plan.states:
        args["states"], own_states = _concat(feats, plan, plan.states, T, where, actions=False)
        if own_states:
            parts["states"] = own_states
    if parts:
        args[SOURCE_PARTS] = parts
    rewards = None
    if plan.reward is not None:  # a scalar, or a tensor of one value, per step
        rewards = args["rewards"] = _steps(feats, plan, plan.reward, T, where).reshape(T)
    if plan.terminal is not None:
        args["is_terminal"] = _steps(feats, plan, plan.terminal, T, where).reshape(T) != 0
    args["extra_arrays"] = {name: _steps(feats, plan, key, T, where) for name, key in plan.arrays.items()}
    if options.images:
        args["images"] = {
            cam: _camera(feats.get(key, []), plan.specs[key], T, options, where)
            for cam, key in plan.cameras.items()
        }
    task, extra, task_index = _texts_and_fields(feats, plan, T, where)
    if task is not None:
        args["task"] = task
    if task_index is not None:
        args["extra_arrays"]["task_index"] = task_index
    args["extra"] = extra
    args["success"] = _success(feats, plan, rewards)
    return args


def _texts_and_fields(
    feats: Mapping[str, FeatureValue], plan: Plan, T: int, where: str
) -> tuple[str | None, dict[str, Any], NDArray[np.int64] | None]:
    """An episode's task (None where the plan has none), extra fields and, where its task
    changes from step to step, each step's position among its tasks (else None)."""
    task, task_index = None, None
    extra: dict[str, Any] = {}
    for name, key in plan.texts.items():
        if key not in feats:
            raise Disagrees(f"{where}: missing feature {key}")
        n, firsts, steps = _step_texts(feats[key], key, where)
        if n != T:
            raise Disagrees(f"{where}: {key} has {n} texts; expected one per step ({T})")
        if key == plan.task:
            task = firsts[0]
            if steps is not None and "tasks" not in plan.fields and "task_index" not in plan.arrays:
                # kinodb's per-frame convention (as the LeRobot converter writes it, and
                # frame windows read it): the texts in order of first appearance, and
                # each step's position among them
                extra["tasks"] = firsts
                task_index = np.array(steps, np.int64)
            elif steps is not None:
                extra[name] = [firsts[k] for k in steps]
        else:
            extra[name] = firsts[0] if steps is None else [firsts[k] for k in steps]
    for name, key in plan.fields.items():
        if key not in feats:
            raise Disagrees(f"{where}: missing feature {key}")
        extra[name] = _field_value(feats[key], plan.specs[key], where)
    left_out = _finite_fields(extra, plan)
    if left_out:
        extra[LEFT_OUT_FIELD] = left_out
    return task, extra, task_index


def columns(
    feats: Sequence[Mapping[str, FeatureValue]], plan: Plan, options: SourceOptions
) -> dict[str, Any] | None:
    """Several episodes' `convert` at once, as `Writer._add_columns` takes them: each array
    once for all of them (their steps one after another), ``lengths``, and a list per
    episode of its task, extra fields and success. The values are those `convert` gives
    each episode.

    None where the episodes cannot be taken together: cameras, tensors stored as bytes,
    a task that changes within an episode, features not in the plan, or any record that
    `convert` would refuse (it then says why, one episode at a time).
    """
    if plan.byte_keys or (options.images and plan.cameras) or not feats:
        return None
    names = feats[0].keys()
    if names - plan.specs.keys() or any(f.keys() != names for f in feats):
        return None
    lengths = []
    for f in feats:
        value = f.get(plan.count_key)
        T = 0 if value is None else len(value) if isinstance(value, list) else int(value.size)
        if T == 0:
            return None
        lengths.append(T)
    total = sum(lengths)
    flags = [k for k in FLAG_KEYS if k in plan.specs and plan.specs[k].kind != "text"]
    wanted = [*plan.actions, *plan.states, *(k for k in (plan.reward, plan.terminal) if k is not None),
              *plan.arrays.values(), *flags]  # fmt: skip
    joined: dict[str, FeatureValue] = {}
    for key in dict.fromkeys(wanted):
        shape = plan.specs[key].shape
        if shape is None:
            return None
        width = math.prod(shape)
        values = [f.get(key) for f in feats]
        if not all(type(v) is np.ndarray for v in values):  # bytes where numbers belong, or missing
            return None
        arrays: list[NDArray[Any]] = values  # type: ignore[assignment]
        if [v.size for v in arrays] != [T * width for T in lengths] or len({v.dtype for v in arrays}) > 1:
            return None
        joined[key] = np.concatenate(arrays)
    ends = np.cumsum(lengths)
    try:
        for key in flags:
            on = _steps(joined, plan, key, total, "").reshape(total) != 0
            if key.endswith("is_first"):
                expected = np.zeros(total, bool)
                expected[ends - lengths] = True
                if not np.array_equal(on, expected):
                    return None
            else:
                on[ends - 1] = False
                if on.any():
                    return None
        out: dict[str, Any] = {"lengths": lengths}
        out["actions"] = _concat(joined, plan, plan.actions, total, "", actions=True)[0]
        out["states"] = (
            _concat(joined, plan, plan.states, total, "", actions=False)[0] if plan.states else None
        )
        rewards = None if plan.reward is None else _steps(joined, plan, plan.reward, total, "").reshape(total)
        out["rewards"] = rewards
        terminal = plan.terminal
        out["is_terminal"] = (
            None if terminal is None else _steps(joined, plan, terminal, total, "").reshape(total) != 0
        )
        out["extra_arrays"] = {
            name: _steps(joined, plan, key, total, "") for name, key in plan.arrays.items()
        }
        tasks, extras, successes = [], [], []
        start = 0
        for f, T in zip(feats, lengths, strict=True):
            task, extra, task_index = _texts_and_fields(f, plan, T, "")
            if task_index is not None or LEFT_OUT_FIELD in extra:  # per episode: a warning to give
                return None
            tasks.append(task)
            extras.append(extra)
            successes.append(_success(f, plan, None if rewards is None else rewards[start : start + T]))
            start += T
    except (ConversionError, Disagrees):
        return None
    out.update(tasks=tasks, extras=extras, successes=successes)
    return out
