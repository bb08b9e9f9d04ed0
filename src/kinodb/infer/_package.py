"""The ``.kinfer`` package: read every kinfer generation's archive, write the current one.

A ``.kinfer`` file is a gzip tar of ``init_fn.onnx``, ``step_fn.onnx`` and
``metadata.json``. The metadata changed over kinfer's releases, with no version field:

- 0.4: ``{"joint_names", "num_commands": int | null}``; the carry shape comes from the
  output of ``init_fn``. One intermediate release wrote ``joint_names.json`` (a list)
  instead of ``metadata.json``.
- 0.5: ``{"joint_names", "num_commands"?, "carry_size"}``.
- 0.6: ``{"joint_names", "command_names", "carry_size"}``.

A plain ``.onnx`` step function carries the same fields in its ONNX ``metadata_props``:
either one ``kinfer_metadata`` JSON object, or one JSON value per key; its inputs follow
the same contract. It has no ``init_fn``; the carry starts at zero. kinfer 0.3 and
earlier also wrote single ``.onnx`` files, but of another kind (inputs named after the
exported ``forward()``'s arguments, typed by a protobuf ``ModelSchema`` stored base64 in
``kinfer_metadata``, or a JSON config without joint names): those are recognised and
refused with a message saying so (`V03_ADVICE`).

This module reads bytes and JSON only; the ONNX graphs are checked against the contract
when sessions are built (`kinodb.infer.model`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import logging
import os
import secrets
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kinodb.infer._errors import InferError, NotOnnxError, describe_start

log = logging.getLogger(__name__)

INIT_MEMBER, STEP_MEMBER, META_MEMBER = "init_fn.onnx", "step_fn.onnx", "metadata.json"
LEGACY_META_MEMBER = "joint_names.json"  # an intermediate 0.4 pack wrote this instead of metadata.json
MEMBERS = (INIT_MEMBER, STEP_MEMBER, META_MEMBER)

# Every step input name kinfer has used; the command and carry shapes come from metadata.
JOINT_INPUTS = ("joint_angles", "joint_angular_velocities")
FIXED_SHAPES: dict[str, tuple[int, ...]] = {
    "projected_gravity": (3,),
    "accelerometer": (3,),
    "gyroscope": (3,),
    "time": (1,),
    "quaternion": (4,),  # 0.5-era inputs, still served by the K-Bot provider
    "initial_heading": (1,),
}
LEGACY_INPUTS = ("quaternion", "initial_heading")  # kinfer 0.6.1 rejects them at load
KNOWN_INPUTS = (
    "joint_angles", "joint_angular_velocities", "projected_gravity", "accelerometer", "gyroscope",
    "command", "time", "carry", "quaternion", "initial_heading",
)  # fmt: skip


V03_ADVICE = (
    "kinodb cannot read kinfer <=0.3 single-file models (inputs named after the exported "
    "forward()'s arguments, typed by a protobuf ModelSchema): re-export the policy as a .kinfer "
    "package, with kinodb.infer.export_torch or kinfer >= 0.4"
)


@dataclass(frozen=True)
class Package:
    """The parts of a policy package, read but not yet run.

    Attributes:
        path: where it was read from (``"<memory>"`` for packages built in memory).
        generation: ``"0.6"``, ``"0.5"``, ``"0.4"`` or ``"onnx"`` (a plain step function).
        joint_names: action order and joint input order.
        command_names: one name per command entry (0.4/0.5 packages, which only give a
            count, get ``command_0``, ``command_1``, ...).
        carry_size: the carry shape the metadata states (None: 0.4, taken from ``init_fn``).
        metadata: the metadata as stored (unknown keys kept).
        init_fn: the ``init_fn.onnx`` bytes (None for a plain ``.onnx`` file).
        step_fn: the ``step_fn.onnx`` bytes.
        members: archive member sizes in bytes, in archive order.
        warnings: what was tolerated (extra members, legacy layouts).
    """

    path: str
    generation: str
    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    carry_size: tuple[int, ...] | None
    metadata: dict[str, Any]
    init_fn: bytes | None
    step_fn: bytes
    members: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def expected_shape(
    name: str, joints: int, commands: int, carry: tuple[int, ...] | None
) -> tuple[int, ...] | None:
    """The static shape the contract requires of step input ``name`` (None: unknown name)."""
    if name in JOINT_INPUTS:
        return (joints,)
    if name == "command":
        return (commands,)
    if name == "carry":
        return carry
    return FIXED_SHAPES.get(name)


def shape_rule(name: str) -> str:
    """Where an input's expected shape comes from, for error messages."""
    if name in JOINT_INPUTS:
        return "one entry per joint_names"
    if name == "command":
        return "one entry per command"
    if name == "carry":
        return "the carry shape"
    return "fixed by the contract"


# -- reading ------------------------------------------------------------------------------


def read_package(path: str | os.PathLike[str]) -> Package:
    """Read a ``.kinfer`` archive of any kinfer generation, or a plain ``.onnx`` step function.

    Raises:
        InferError: the file is not a readable package; the message names the member at fault,
            or, for a file that is neither a tar.gz nor ONNX, what its first bytes show.
        FileNotFoundError: ``path`` does not exist.
    """
    p = os.fspath(path)
    with open(p, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b" or tarfile.is_tarfile(p):
        return _read_archive(p, data)
    if p.endswith(".kinfer"):
        raise InferError(
            f"{p}: not a gzip tar archive; a .kinfer package is a tar.gz of {', '.join(MEMBERS)}; "
            f"{describe_start(data)}"
        )
    if not data:
        raise InferError(f"{p}: is empty (0 bytes); expected a .kinfer package or an .onnx model")
    try:
        return _read_onnx(p, data)
    except NotOnnxError:
        raise InferError(
            f"{p}: not a .kinfer package (a gzip tar of {', '.join(MEMBERS)}) nor an .onnx model (ONNX "
            f"Runtime cannot parse it); {describe_start(data)}"
        ) from None


def _read_archive(path: str, data: bytes) -> Package:
    warnings: list[str] = []
    gzipped = data[:2] == b"\x1f\x8b"
    if gzipped:
        # All of it, so the gzip trailer's CRC-32 and length are checked: tarfile stops at
        # the tar's end and would run a package whose weights a flipped bit changed.
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, ValueError) as exc:
            raise InferError(
                f"{path}: truncated or corrupt archive ({exc}); export or copy the package again"
            ) from None
    else:
        warnings.append("the tar is not gzip-compressed (kinfer itself refuses it: invalid gzip header)")
    try:
        # decompressed: a plain tar ("r:*" would list every compression's failure instead)
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:" if gzipped else "r:*")  # noqa: SIM115 - closed by `with tar` below
    except (tarfile.TarError, EOFError, OSError) as exc:
        if gzipped:
            raise InferError(
                f"{path}: the gzip data is not a tar archive ({exc}; decompressed, "
                f"{describe_start(data)}); a .kinfer package is a gzip tar of {', '.join(MEMBERS)}: "
                f"pack with tar czf NAME.kinfer -C DIR {' '.join(MEMBERS)}"
            ) from None
        raise InferError(f"{path}: not a readable tar.gz package ({exc})") from None
    found: dict[str, bytes] = {}
    prefixed = []
    with tar:
        try:
            for info in tar:
                if not info.isfile():
                    continue
                name = os.path.normpath(info.name).lstrip("/")
                if name != info.name:
                    prefixed.append(info.name)
                if name in found:
                    raise InferError(f"{path}: member {name!r} appears twice")
                handle = tar.extractfile(info)
                found[name] = handle.read() if handle is not None else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InferError(f"{path}: truncated or corrupt archive ({exc})") from None
    if prefixed:
        warnings.append(
            f"members named {prefixed} rather than plain file names (kinfer itself rejects them); "
            f"pack with: tar czf NAME.kinfer -C DIR {' '.join(MEMBERS)}"
        )
    known = {*MEMBERS, LEGACY_META_MEMBER}
    extra = [n for n in found if n not in known]
    if extra:
        warnings.append(f"ignored extra archive members {extra} (kinfer itself rejects them)")
    for member in (INIT_MEMBER, STEP_MEMBER):
        if member not in found:
            raise InferError(
                f"{path}: missing member {member!r}; the archive holds {sorted(found) or 'nothing'}, "
                f"a package needs {', '.join(MEMBERS)}"
            )
    if META_MEMBER in found:
        meta_member = META_MEMBER
    elif LEGACY_META_MEMBER in found:
        meta_member = LEGACY_META_MEMBER
        warnings.append(f"metadata read from the legacy member {LEGACY_META_MEMBER!r}")
    else:
        raise InferError(
            f"{path}: missing member {META_MEMBER!r}; the archive holds {sorted(found)}, "
            f"a package needs {', '.join(MEMBERS)}"
        )
    meta = _parse_json(found[meta_member], f"{path}: {meta_member}")
    if meta_member == LEGACY_META_MEMBER and isinstance(meta, list):
        meta = {"joint_names": meta}
    fields = parse_metadata(meta, f"{path}: {meta_member}")
    for w in warnings:
        log.warning("%s: %s", path, w)
    return Package(
        path=path, generation=fields.generation, joint_names=fields.joint_names,
        command_names=fields.command_names, carry_size=fields.carry_size, metadata=dict(meta),
        init_fn=found[INIT_MEMBER], step_fn=found[STEP_MEMBER],
        members={n: len(b) for n, b in found.items()}, warnings=tuple(warnings),
    )  # fmt: skip


def _read_onnx(path: str, data: bytes) -> Package:
    """A plain step function: the metadata lives in the ONNX ``metadata_props``."""
    props = onnx_metadata_props(data, path)
    if "kinfer_metadata" in props:
        raw = props["kinfer_metadata"]
        where = f"{path}: metadata_props['kinfer_metadata']"
        if _is_base64_not_json(raw):
            raise InferError(
                f"{where} holds base64 data, not JSON: a kinfer <=0.3 model (its ModelSchema protobuf); "
                f"{V03_ADVICE}"
            )
        meta = _parse_json(raw.encode(), where)
        if isinstance(meta, Mapping) and "joint_names" not in meta:
            raise InferError(
                f"{where} has no 'joint_names' (keys {sorted(meta) or 'none'}): a kinfer <=0.3 model "
                f"(a config, not the package metadata); {V03_ADVICE}"
            )
    else:
        meta = {}
        for key in ("joint_names", "command_names", "num_commands", "carry_size"):
            if key in props:
                meta[key] = _parse_json(props[key].encode(), f"{path}: metadata_props[{key!r}]")
    if "joint_names" not in meta:
        raise InferError(
            f"{path}: a plain .onnx step function must name its joints in metadata_props "
            f"('kinfer_metadata' JSON or 'joint_names'); found keys {sorted(props) or 'none'}. "
            f"If it is a kinfer <=0.3 model: {V03_ADVICE}"
        )
    fields = parse_metadata(meta, f"{path}: metadata_props", plain=True)
    return Package(
        path=path, generation="onnx", joint_names=fields.joint_names, command_names=fields.command_names,
        carry_size=fields.carry_size, metadata=dict(meta), init_fn=None, step_fn=data,
        members={os.path.basename(path): len(data)},
    )  # fmt: skip


def _is_base64_not_json(text: str) -> bool:
    """Whether ``text`` is base64 (kinfer <=0.3's serialised ModelSchema) and not JSON."""
    stripped = text.strip()
    try:
        json.loads(stripped)
    except ValueError:
        pass
    else:
        return False
    try:
        base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(stripped)


def step_where(package: Package) -> str:
    """How errors name the step function: the archive member, or the plain file itself."""
    return package.path if package.init_fn is None else f"{package.path}: {STEP_MEMBER}"


def onnx_metadata_props(data: bytes, where: str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model, read with ONNX Runtime (no onnx needed)."""
    from kinodb.infer._session import make_session  # deferred: needs onnxruntime

    sess = make_session(data, where, providers=None)
    return dict(sess.get_modelmeta().custom_metadata_map)


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InferError(f"{where}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InferError(f"{where}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


@dataclass(frozen=True, slots=True)
class MetadataFields:
    """The normalised contract fields of any generation's metadata."""

    generation: str
    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    carry_size: tuple[int, ...] | None


def parse_metadata(meta: Any, where: str, *, plain: bool = False) -> MetadataFields:
    """Check metadata of any generation and tell which generation wrote it.

    Raises:
        InferError: a field is missing or has the wrong type; the message names it.
    """
    if not isinstance(meta, Mapping):
        raise InferError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    joints = _str_list(meta.get("joint_names"), "joint_names", where)
    if not joints:
        raise InferError(f"{where}: 'joint_names' is empty; the action needs at least one joint")
    if len(set(joints)) != len(joints):
        dup = sorted({n for n in joints if joints.count(n) > 1})
        raise InferError(f"{where}: 'joint_names' repeats {dup}")
    carry: tuple[int, ...] | None = None
    if meta.get("carry_size") is not None:
        raw = meta["carry_size"]
        if not isinstance(raw, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
        ):
            raise InferError(f"{where}: 'carry_size' must be a list of non-negative integers, got {raw!r}")
        carry = tuple(raw)
    num = meta.get("num_commands")
    if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 0):
        raise InferError(f"{where}: 'num_commands' must be a non-negative integer or null, got {num!r}")
    if "command_names" in meta:
        commands = _str_list(meta["command_names"], "command_names", where)
        if num is not None and num != len(commands):
            raise InferError(
                f"{where}: 'num_commands' is {num} but 'command_names' has {len(commands)} names"
            )
        generation = "0.6"
    else:
        commands = tuple(f"command_{i}" for i in range(num or 0))
        generation = "0.5" if "carry_size" in meta else "0.4"
    if plain:
        generation = "onnx"
    elif generation != "0.4" and carry is None:
        if "carry_size" not in meta:
            raise InferError(
                f"{where}: missing required field 'carry_size' (the carry shape, a list of integers); "
                f"kinfer {generation} metadata has it"
            )
        raise InferError(f"{where}: 'carry_size' is null; expected a list of integers")
    return MetadataFields(generation, joints, commands, carry)


def _str_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        raise InferError(f"{where}: missing required field {key!r}")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InferError(f"{where}: {key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


# -- writing ------------------------------------------------------------------------------


def pack(init_fn: bytes, step_fn: bytes, metadata: Mapping[str, Any]) -> bytes:
    """The bytes of a kinfer 0.6 package: members in kinfer's order, mtime 0, mode 0644."""
    buf = io.BytesIO()
    meta = json.dumps(dict(metadata), indent=2).encode()
    # mtime 0 in the gzip header too, so equal inputs give equal bytes.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, blob in ((INIT_MEMBER, init_fn), (STEP_MEMBER, step_fn), (META_MEMBER, meta)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(blob), 0, 0o644
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def output_folder(path: str, label: str = "", kind: str = "the file to write") -> str:
    """The folder a file is to be written into; `InferError` for a folder given as the file
    or a folder that does not exist (``label`` prefixes the path in messages)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InferError(f"{label}{path} is a folder; give the path of {kind}")
    if not os.path.isdir(folder):
        raise InferError(f"{label}{path}: the folder {folder} does not exist; create it first")
    return folder


def write_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    p = os.fspath(path)
    folder = output_folder(p)
    tmp = os.path.join(folder, f".{os.path.basename(p)}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def package_metadata(
    joint_names: Sequence[str], command_names: Sequence[str], carry_shape: Sequence[int]
) -> dict[str, Any]:
    """kinfer 0.6 ``metadata.json`` content."""
    return {
        "joint_names": [str(n) for n in joint_names],
        "command_names": [str(n) for n in command_names],
        "carry_size": [int(d) for d in carry_shape],
    }
