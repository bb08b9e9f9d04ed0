"""The metadata reads of a `kinodb.kdb.reader.Database`, from the index block alone.

`_MetaReads`, a base of `Database`, holds the methods that read no payload: the stored
normalisation statistics (`stats`), the one-paragraph `summary`, one episode's metadata
(`read_meta`, with its extra fields), many episodes' metadata column by column at NumPy
speed (`_meta_columns`) and the whole metadata table (`episodes`). `META_FIELDS` names the
built-in fields, and `extra_key` the key an extra field is read under; `kinodb.kdb.reader`
re-exports both.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np

from kinodb.errors import CorruptFileError, FormatError, KinodbError, UnsupportedVersionError
from kinodb.kdb._files import human_bytes
from kinodb.kdb._layout import DATA_START as _DATA_START
from kinodb.kdb._layout import SECTION_ALIGN as _SECTION_ALIGN
from kinodb.kdb._stale import stale_stats
from kinodb.kdb._table import ABSENT, EXTRA_ABSENT, EXTRA_VALUE, IndexBlock

META_FIELDS = (
    "episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim",
    "success", "total_reward",
)  # fmt: skip
# The index's unsigned count, id and dim columns, which `Database.episodes` gives as int64.
_INT_FIELDS = ("episode_id", "num_frames", "action_dim", "state_dim")


class _MetaReads:
    """What a `Database` reads of its episodes' metadata: fields, tables, statistics.

    The base of `kinodb.kdb.reader.Database`, whose index block (``_block``, ``_cols``)
    and episode check (``_check``) it reads.
    """

    if TYPE_CHECKING:  # what these methods read of `Database`
        _path: str
        _n: int
        _size: int
        _int_table: dict[str, np.ndarray] | None

        @property
        def _block(self) -> IndexBlock: ...
        @property
        def _cols(self) -> Mapping[str, np.ndarray]: ...
        def _check(self, i: SupportsIndex) -> int: ...
        def version(self) -> str: ...
        def num_frames(self) -> int: ...

    def stats(self, *, allow_stale: bool = False) -> dict[str, Any]:
        """The normalisation statistics ``kino stats`` stored, as float64 NumPy arrays.

        Returns the stored block (``version``, ``computed``, ``num_frames``, ``arrays``,
        ``skipped``) with each array's ``mean``, ``std``, ``min``, ``max``, ``q01`` and
        ``q99`` turned into flat float64 arrays (NaN where a feature had no finite value).

        Example:
            >>> mean = db.stats()["arrays"]["actions"]["mean"]

        Raises:
            UnsupportedVersionError: the file is a legacy format 0.x file.
            FormatError: no statistics are stored, or the file's episodes changed after
                they were computed (pass ``allow_stale=True`` to get them anyway, with a warning).
        """
        path = self._path
        if self.version().startswith("0."):
            raise UnsupportedVersionError(
                f"{path} is a format {self.version()} file, which holds no statistics; convert it "
                f"first: kino upgrade {path} NEW.kdb, then: kino stats NEW.kdb"
            )
        stored = self._block.dataset.get("stats")
        if not isinstance(stored, dict) or not isinstance(stored.get("arrays"), dict):
            raise FormatError(f"no statistics stored in {path}; run: kino stats {path}")
        out = copy.deepcopy(stored)
        why = stale_stats(out, self.num_frames(), self._n)
        if why is not None:
            msg = f"the statistics stored in {path} are stale: {why}; run: kino stats {path}"
            if not allow_stale:
                raise FormatError(msg)
            warnings.warn(msg, stacklevel=2)
            out["stale"] = True
        for entry in out["arrays"].values():
            for key in ("mean", "std", "min", "max", "q01", "q99"):
                if key in entry:
                    entry[key] = np.array([np.nan if v is None else v for v in entry[key]], np.float64)
        return out

    def summary(self) -> str:
        """A short human-readable description."""
        info = self._block.dataset
        emb = sorted(set(self._block.strings["embodiment"].dictionary)) if self._n else []
        succ = self._cols["success"]
        known = int((succ >= 0).sum())
        cams = sorted(info.get("schema", {}).get("cameras", {}))
        lines = [
            f"kinodb {self.version()} file {self._path}",
            f"  episodes: {self._n}, frames: {self.num_frames()}, size: {human_bytes(self._size)}",
            f"  embodiments: {', '.join(emb) or '-'}",
            f"  success: {int((succ == 1).sum())}/{known} known" + (f" ({100 * (succ == 1).sum() / known:.1f}%)" if known else ""),
            f"  cameras: {', '.join(cams) or '-'}",
        ]  # fmt: skip
        if info.get("source_format"):
            lines.append(f"  source format: {info['source_format']}")
        dead = self._superseded_bytes()
        if dead > max(1 << 20, self._size // 10):
            lines.append(
                f"  superseded: {human_bytes(dead)} ({100 * dead / max(self._size, 1):.0f}% of the file), the "
                "indexes of earlier commits that appends leave in place; kino upgrade FILE NEW compacts it"
            )
        return "\n".join(lines)

    def _superseded_bytes(self) -> int:
        """Bytes before the committed index that no episode's payload holds: earlier commits'
        indexes (and payloads an append wrote but never committed); 0 for a 0.x file."""
        if getattr(self, "_commit", None) is None or "payload_length" not in self._cols or not self._n:
            return 0
        offsets = np.asarray(self._cols["payload_offset"], dtype=np.int64)
        order = np.argsort(offsets, kind="stable")
        starts = offsets[order]
        ends = starts + np.asarray(self._cols["payload_length"], dtype=np.int64)[order]
        # Between two payloads lie under 8 bytes of padding (each starts on the 8-byte grid),
        # or what earlier commits left: their indexes and any payload never committed.
        gaps = np.concatenate(([starts[0] - _DATA_START], starts[1:] - ends[:-1]))
        return int(gaps[gaps >= _SECTION_ALIGN].sum())

    def read_meta(self, i: SupportsIndex) -> dict[str, Any]:
        """Metadata of episode ``i``: the built-in fields plus its extra fields.

        An extra field appears under its name, or as ``"extra.NAME"`` when its name is a
        built-in one or itself starts with ``extra.`` (which files written before kinodb
        refused such names can hold), so every key names one value (`extra_key`).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range or not an int.
        """
        i = self._check(i)
        c = self._cols
        succ = int(c["success"][i])
        if not -1 <= succ <= 1:
            raise CorruptFileError(f"{self._path}: episode {i}: success code {succ} is not -1, 0 or 1")
        meta: dict[str, Any] = {
            "episode_id": int(c["episode_id"][i]),
            "embodiment": self._block.strings["embodiment"][i],
            "task": self._block.strings["task"][i],
            "num_frames": int(c["num_frames"][i]),
            "fps": float(c["fps"][i]),
            "action_dim": int(c["action_dim"][i]),
            "state_dim": int(c["state_dim"][i]),
            "success": None if succ < 0 else bool(succ),
            "total_reward": float(c["total_reward"][i]) if c["total_reward.valid"][i] else None,
        }
        for name, value in self._extra_fields(i).items():
            meta[extra_key(name)] = value
        return meta

    def _extra_fields(self, i: int) -> dict[str, Any]:
        """Episode ``i``'s extra fields by their stored names (``i`` already checked)."""
        out = {}
        for name, col in self._block.extras.items():
            value = col.get(i)
            if value is not ABSENT:
                out[name] = value
        return out

    def _meta_columns(self, idx: np.ndarray) -> list[tuple[str, list[Any], np.ndarray | None]] | None:
        """`read_meta` of the episodes at the checked positions ``idx``, column by column.

        Per key, in `read_meta`'s order: the values, and where the episodes hold that key
        (None: all of them). None where `read_meta` would raise for one of them, or the
        columns are not of the usual types: `read_meta` then names the damage. The commands
        that list many episodes read them so, at NumPy speed.
        """
        try:
            c, block = self._cols, self._block
            kinds = {k: "iu" for k in _INT_FIELDS} | {"fps": "f", "total_reward": "f", "success": "i"}
            if any(c[k].dtype.kind not in want for k, want in kinds.items()):
                return None
            succ = c["success"][idx].astype(np.int64)
            strings = [
                _coded(block.strings[k].dictionary, block.strings[k].codes[idx])
                for k in ("embodiment", "task")
            ]
            if (len(succ) and not -1 <= succ.min() <= succ.max() <= 1) or None in strings:
                return None
            reward = np.array(c["total_reward"][idx], dtype=object)
            reward[c["total_reward.valid"][idx] == 0] = None
            values = (c["episode_id"][idx].tolist(), *strings, c["num_frames"][idx].tolist(), c["fps"][idx].tolist(),
                      c["action_dim"][idx].tolist(), c["state_dim"][idx].tolist(),
                      np.array([None, False, True], dtype=object)[succ + 1].tolist(), reward.tolist())  # fmt: skip
            out: list[tuple[str, list[Any], np.ndarray | None]] = [
                (k, v, None) for k, v in zip(META_FIELDS, values, strict=True)
            ]
            for name, col in block.extras.items():
                state = col.state[idx]
                has = state == EXTRA_VALUE
                got = np.full(len(idx), None, dtype=object)
                if col.kind == "str" and col._strings is not None:
                    text = _coded(col._strings.dictionary, col._strings.codes[idx][has])
                    if text is None:
                        return None
                    got[has] = text
                elif col.kind in ("int", "float", "bool"):
                    stored = col._cols["values"][idx][has]
                    got[has] = stored.astype(bool) if col.kind == "bool" else stored
                else:  # JSON, decoded one by one (or a kind that holds no values: get raises)
                    for k in np.flatnonzero(has).tolist():
                        got[k] = col.get(int(idx[k]))
                held = state != EXTRA_ABSENT
                out.append((extra_key(name), got.tolist(), None if held.all() else held))
        except (KinodbError, LookupError, ValueError, TypeError):
            return None
        return out

    def _int_columns(self) -> dict[str, np.ndarray]:
        """`episodes`' int64 columns (read-only; made once), without the rest of the table:
        for callers that need episode lengths or widths of a file of many episodes."""
        ints = self._int_table
        if ints is None:
            ints = self._int_table = {name: _int64(self._cols[name]) for name in _INT_FIELDS}
        return ints

    def episodes(self) -> dict[str, np.ndarray]:
        """The metadata table: one NumPy array per column, one entry per episode.

        ``episode_id``, ``num_frames``, ``action_dim`` and ``state_dim`` are int64 (read-only),
        so arithmetic on them does not wrap around as unsigned integers would; ``success`` is
        an object array of True/False/None; ``total_reward`` is float64 with NaN where
        unknown; extra fields are named as in `read_meta`.
        """
        return self._columns(None)

    def _columns(self, names: Collection[str] | None) -> dict[str, np.ndarray]:
        """The columns of `episodes` named in ``names`` (all: None), the others not decoded;
        an extra field the file lacks is left out."""
        c = self._cols
        ints = self._int_columns()

        def success() -> np.ndarray:
            codes = c["success"].astype(np.int64) + 1
            if len(codes) and not 0 <= codes.min() <= codes.max() <= 2:
                raise CorruptFileError(f"{self._path}: success column holds codes other than -1, 0 and 1")
            return np.array([None, False, True], dtype=object)[codes]

        built: dict[str, Callable[[], np.ndarray]] = {
            "episode_id": lambda: ints["episode_id"],
            "embodiment": lambda: self._block.strings["embodiment"].to_numpy(),
            "task": lambda: self._block.strings["task"].to_numpy(),
            "num_frames": lambda: ints["num_frames"],
            "fps": lambda: c["fps"],
            "action_dim": lambda: ints["action_dim"],
            "state_dim": lambda: ints["state_dim"],
            "success": success,
            "total_reward": lambda: np.where(c["total_reward.valid"].astype(bool), c["total_reward"], np.nan),
        }
        table = {key: make() for key, make in built.items() if names is None or key in names}
        for name, col in self._block.extras.items():
            key = extra_key(name)
            if names is None or key in names:
                table[key] = col.to_numpy()
        return table


def extra_key(name: str) -> str:
    """The key of extra field ``name`` in `Database.read_meta`: ``extra.NAME`` when the name
    is a built-in one or starts with ``extra.`` itself, else the name."""
    return f"extra.{name}" if name in META_FIELDS or name.startswith("extra.") else name


def _coded(dictionary: list[str], codes: np.ndarray) -> list[str] | None:
    """The strings of dictionary ``codes``, or None if a code lies outside the dictionary."""
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(dictionary)):
        return None
    return list(map(dictionary.__getitem__, codes.tolist()))


def _int64(col: np.ndarray) -> np.ndarray:
    """An unsigned index column as read-only int64 (kept as it is if a value exceeds int64,
    which no kinodb writer stores)."""
    if len(col) and col.dtype.kind == "u" and int(col.max()) > np.iinfo(np.int64).max:
        return col
    out = col.astype(np.int64)
    out.flags.writeable = False
    return out
