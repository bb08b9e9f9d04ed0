"""What an HDF5 source knows of its file as a whole, found once per source (the scan once per process).

`_FileLevel`, the base of `kinodb.ingest.hdf5.HDF5Source`, holds the file-level facts:
the ``mask/`` filter keys and the demos each lists (`_masks`, `_filter_key_counts`), the
``data`` group's attributes (`_facts`), what the demos hold (`_scanned`, kept for the
last few files of the process: an ingest opens its source twice), where each per-frame
dataset goes (`_layout`), and the demos' action shapes (`_held`, `_action_widths`); and
the error for a demo that cannot be read, with how to convert the others (`_fail`).
A filter key whose entries name no demo of ``data/`` is warned about once per file, and so
is what reading the ``data`` attributes warns of (`_facts`), and the demos' ``model_file``
when ``keep_model_file`` does not keep it (`_kept_attrs`, `_warn_left_out`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._base import episodes_spec
from kinodb.ingest._hdf5_facts import Facts, read_facts, text
from kinodb.ingest._hdf5_kinodb import exported_state_order
from kinodb.ingest._hdf5_layout import (
    H5_ERRORS,
    MODEL_FILE,
    MODEL_FILE_LEFT_OUT,
    Layout,
    Scan,
    arrange,
    h5_reason,
    scan_demos,
)
from kinodb.ingest._options import option_flag, option_name, option_value, skip_advice

if TYPE_CHECKING:
    from kinodb.ingest._base import SourceOptions

log = logging.getLogger("kinodb.ingest.hdf5")
_WARNED_LEFT_OUT: set[str] = set()  # files whose attributes left out were already warned about
_WARNED_MASKS: set[str] = set()  # files whose filter keys naming no demo were already warned about
# File -> the warnings of reading its data attributes (`read_facts`) that `info` has yet to
# give: the first reading's in this process; emptied once given.
_FACT_WARNINGS: dict[str, list[logging.LogRecord]] = {}

# Recent scans in this process, by file identity: an ingest opens its source twice (to
# plan, then to convert), and a scan lists every demo of the file.
_SCANS: dict[tuple[str, int, int, int], Scan] = {}
_SCANS_KEPT = 4


class _FileLevel:
    """The file-level facts of an `HDF5Source`, each computed once (and cached on it).

    The base of `kinodb.ingest.hdf5.HDF5Source`, whose open file (``_file``, ``_data``),
    demo names (``_demos``, ``_others``) and options it reads.
    """

    if TYPE_CHECKING:  # what these methods read of `HDF5Source`
        _path: str
        _options: SourceOptions
        _h5py: Any
        _file: Any
        _data: Any
        _demos: list[str]
        _others: list[str]
        _layout_cache: Layout | None
        _scan: Scan | None
        _facts_cache: Facts | None
        _masks_cache: dict[str, list[str]] | None
        _actions_cache: list[tuple[int, int]] | None
        _mask_entries: dict[str, int]

        def episodes(self) -> list[str]: ...

    def _filter_key_counts(self) -> dict[str, int]:
        """Filter key -> how many demos of the file it lists (0 for an empty one), sorted."""
        masks = self._masks()
        counts = dict.fromkeys(self._mask_entries, 0)
        for keys in masks.values():
            for k in keys:
                counts[k] += 1
        return counts

    def _masks(self) -> dict[str, list[str]]:
        """Demo name -> sorted filter keys of ``mask/`` that list it.

        Also sets ``_mask_entries``: every filter key (a 1-D dataset of ``mask/``), sorted,
        and how many entries it holds.
        """
        if self._masks_cache is None:
            masks: dict[str, list[str]] = {}
            strays: dict[str, tuple[list[Any], np.dtype[Any]]] = {}  # filter key -> entries naming no demo
            self._mask_entries = {}
            group = self._file.get("mask")
            if isinstance(group, self._h5py.Group):
                masks = {demo: [] for demo in self._demos}
                for name in sorted(group.keys()):
                    try:
                        ds = group[name]
                        if not isinstance(ds, self._h5py.Dataset) or ds.ndim != 1:
                            continue
                        entries = ds[()]
                    except H5_ERRORS as exc:
                        raise ConversionError(
                            f"{self._path}: h5py cannot read the filter key mask/{name} ({h5_reason(exc)}): "
                            "that part of the file is damaged; copy the file again from where it came from, or "
                            f"convert a copy of the file from which mask/{name} is deleted (h5py: "
                            f"del f['mask/{name}'])"
                        ) from None
                    self._mask_entries[name] = len(entries)
                    unknown = []
                    for entry in entries:
                        keys = masks.get(text(entry))
                        if keys is None:
                            unknown.append(entry)
                        elif name not in keys:
                            keys.append(name)
                    if unknown:
                        strays[name] = (unknown, np.dtype(entries.dtype))
            self._masks_cache = masks
            self._warn_strays(strays)
        return self._masks_cache

    def _warn_strays(self, strays: dict[str, tuple[list[Any], np.dtype[Any]]]) -> None:
        """Warn once per file of the filter keys whose entries name no demo of ``data/``: the
        first few of them, and how to mend the filter key (or that it holds no text at all)."""
        if not strays or self._path in _WARNED_MASKS:
            return
        _WARNED_MASKS.add(self._path)  # an ingest opens its source twice, and verify once more
        for name, (entries, dtype) in strays.items():
            shown = ", ".join(repr(_entry(e)) for e in entries[:3]) + (
                f" and {len(entries) - 3} more" if len(entries) > 3 else ""
            )
            if not all(isinstance(e, (bytes, str)) for e in entries):
                log.warning(
                    "%s: filter key mask/%s holds %s entries (%s), not demo names as text: a filter key "
                    "lists demo names (b'demo_0'), so it lists no demo and no episode gets it in filter_keys; "
                    "rewrite it with the demos' names (h5py: del f['mask/%s']; f['mask/%s'] = "
                    "np.array([b'demo_0', ...]))", self._path, name, dtype, shown, name, name,
                )  # fmt: skip
                continue
            log.warning(
                "%s: filter key mask/%s lists %d entr%s that data/ does not hold (%s), left out of the "
                "episodes' filter_keys; the other entries are read. To mend the file, add those demos to "
                "data/ or rewrite mask/%s without them (h5py: keep = [n for n in f['mask/%s'][()] if "
                "n.decode() in f['data']]; del f['mask/%s']; f['mask/%s'] = np.array(keep))", self._path, name,
                len(entries), "y" if len(entries) == 1 else "ies", shown, name, name, name, name,
            )  # fmt: skip

    def _facts(self, *, warn: bool = False) -> Facts:
        """The ``data`` group's facts (`read_facts`), read once per source.

        What reading them warns of (an attribute that is not JSON, or is kept as text) is
        about the metadata, so `info` says it (``warn``), once per file and process: an
        ingest opens its source twice, each worker once more, and verify again.
        """
        if self._facts_cache is None:
            with _held_back(log) as held:
                self._facts_cache = read_facts(self._path, self._data.attrs, self._options)
            _FACT_WARNINGS.setdefault(self._path, held)
        if warn:
            for record in _FACT_WARNINGS.get(self._path, ()):
                log.handle(record)
            _FACT_WARNINGS[self._path] = []
        return self._facts_cache

    def _scanned(self) -> Scan:
        """What the demos hold (`scan_demos`), once per file and process."""
        if self._scan is None:
            st = os.stat(self._path)
            ident = (os.path.realpath(self._path), st.st_ino, st.st_size, st.st_mtime_ns)
            scan = _SCANS.get(ident)
            if scan is None:
                # Through a handle of its own, closed afterwards: HDF5 keeps memory for every
                # object opened until the file is closed, and the scan opens every demo.
                with self._h5py.File(self._path, "r") as file:
                    scan = scan_demos(file["data"], self._demos, self._h5py.Dataset, self._h5py.Group)
                _SCANS[ident] = scan
                while len(_SCANS) > _SCANS_KEPT:
                    del _SCANS[next(iter(_SCANS))]
            self._scan = scan
        return self._scan

    def _kept_attrs(self) -> tuple[str, ...]:
        """The demo attributes kept as the extra fields ``attrs.NAME`` (`Scan.attrs`), less
        ``model_file`` unless ``keep_model_file`` asks for it."""
        attrs = self._scanned().attrs
        return attrs if self._options.keep_model_file else tuple(a for a in attrs if a != MODEL_FILE)

    def _warn_left_out(self, left_out: dict[str, str]) -> None:
        """Warn once per file of the attributes not stored; of ``model_file`` with its size and
        the option that keeps it (`_model_file_warning`)."""
        attrs = {k: v for k, v in left_out.items() if "attrs/" in k}
        if not attrs or self._path in _WARNED_LEFT_OUT:
            return
        _WARNED_LEFT_OUT.add(self._path)  # verify reads the info again
        for name, why in attrs.items():
            if name == f"attrs/{MODEL_FILE}" and why == MODEL_FILE_LEFT_OUT:
                log.warning("%s", self._model_file_warning())
            else:
                log.warning("%s: attribute %s is left out: %s", self._path, name, why)

    def _model_file_warning(self) -> str:
        """Why the demos' ``model_file`` is not stored: its size in the first demo holding
        it, what needs it, and the option that keeps it."""
        size = ""
        for demo in self._demos:
            if demo in self._scanned().unreadable:
                continue
            try:
                attrs = self._data[demo].attrs
                if MODEL_FILE not in attrs:
                    continue
                n = len(text(attrs[MODEL_FILE]).encode("utf-8"))
            except H5_ERRORS:
                break  # the warning goes without the size
            size = f" ({n / 1000:.0f} KB in {demo})" if n >= 1000 else f" ({n} bytes in {demo})"
            break
        return (
            f"{self._path}: the demo attribute {MODEL_FILE}, the simulator model (MJCF XML) of each demo{size}, "
            "is not stored: robomimic's playback_dataset.py and dataset_states_to_obs.py need it, and a "
            f"kino export --format hdf5 of the output has no {MODEL_FILE}; pass "
            f"{option_flag('keep_model_file')} to keep it (as the extra field attrs.{MODEL_FILE}, written back "
            "on export), or keep the source file"
        )

    def _fps_notes(self, facts: Facts) -> list[str]:
        """The report's note on the fps, where it is kinodb's default rather than the file's."""
        if facts.fps_from != "default":
            return []
        return [
            f"fps is {facts.fps:g}, kinodb's default: the file's data attributes give no control_freq "
            "(env_args env_kwargs) and name no robosuite env (env_args type 1), so the rate the demos were "
            "recorded at is unknown (a demo's ep_meta fps, where it has one, is taken); give the rate with "
            f"{option_name('fps')}"
        ]

    def _layout(self) -> Layout:
        if self._layout_cache is None:
            scan = self._scanned()
            fields, left_out = scan.fields, dict(scan.left_out)
            if MODEL_FILE in scan.attrs and not self._options.keep_model_file:
                left_out = {f"attrs/{MODEL_FILE}": MODEL_FILE_LEFT_OUT, **left_out}
            for name in self._others:
                left_out[f"data/{name}"] = "not a demo_N group"
            explicit = self._options.state_keys is not None  # the caller's keys: checked by value, not split
            state_keys = self._options.state_keys or exported_state_order(self._data.attrs, fields)
            # Stored in the metadata (``kept_apart``), which outlives the call: both spellings.
            keys_from = (
                "the chosen state keys (state_keys, --state-keys)"
                if explicit
                else "the state components the kinodb export recorded"
            )
            self._layout_cache = arrange(
                self._path, fields, left_out, state_keys, explicit=explicit, keys_from=keys_from
            )
        return self._layout_cache

    def _held(self) -> tuple[int, int]:
        """How many demos and frames the file holds (h5py reads only the actions' shapes)."""
        return len(self._demos), sum(rows for rows, _ in self._action_shapes())

    def _action_shapes(self) -> list[tuple[int, int]]:
        """Each demo's actions rows and width (h5py reads only the shapes); ``(0, 0)`` for a
        demo without actions or one h5py cannot read (`Scan.unreadable`)."""
        if self._actions_cache is None:
            out = []
            unreadable = self._scanned().unreadable
            for demo in self._demos:
                ds = None if demo in unreadable else self._data[demo].get("actions")
                shape = tuple(ds.shape) if isinstance(ds, self._h5py.Dataset) else (0, 0)
                out.append((int(shape[0]) if shape else 0, int(np.prod(shape[1:])) if len(shape) > 1 else 1))
            self._actions_cache = out
        return self._actions_cache

    def _action_widths(self) -> set[int]:
        return {width for _, width in self._action_shapes()}

    def _fail(self, demo: str, message: str) -> ConversionError:
        """The error for ``demo``, with how to convert the other demos."""
        return ConversionError(f"{self._path}: {demo}: {message}{self._leave_out(demo)}")

    def _damaged(self, demo: str, where: str, reason: str) -> str:
        """Why ``demo`` cannot be read: h5py cannot open or read the object ``where`` (a path
        in the file) for ``reason``; and how to look at it."""
        return (
            f"h5py cannot read {where} ({reason}): that part of the file is damaged; look at it with "
            f"`h5dump -H -g /data/{demo} {shlex.quote(self._path)}` or h5py, and copy the file again from "
            "where it came from if you can"
        )

    def _leave_out(self, demo: str) -> str:
        """How to leave ``demo`` out: ``episodes`` naming the others, or ``on_error='skip'``
        (as the caller spells them: `kinodb.ingest._options`)."""
        keys = self.episodes()
        others = [k for k, name in enumerate(keys) if name != demo]
        if not others:
            return ""  # nothing else to convert
        where = f"mask/{self._options.split}" if self._options.split is not None else "the file"
        return (
            f"; to leave the demo out, select the others with "
            f"{option_value('episodes', episodes_spec(others), whole=True)} (positions among the demos of "
            f"{where}, in numeric order){skip_advice()}"
        )


@contextlib.contextmanager
def _held_back(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    """Within the block, the records this thread logs to ``logger`` are held in the list
    yielded instead of handled (``logger.handle`` gives them later)."""
    held: list[logging.LogRecord] = []
    thread = threading.get_ident()

    def hold(record: logging.LogRecord) -> bool:
        if record.thread != thread:
            return True
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _entry(value: Any) -> Any:
    """A filter key's entry as shown: text as str, a number as Python's."""
    if isinstance(value, (bytes, str)):
        return text(value)
    return value.item() if isinstance(value, np.generic) else value
