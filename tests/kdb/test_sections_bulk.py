"""`all_sections` decodes every episode's section rows at once as `episode_sections` decodes
them one episode at a time, refusing the same episodes; `camera_tables` checks frame
offset tables as the reader does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kinodb.errors import CorruptFileError
from kinodb.kdb._sections import READER_COLUMNS, all_sections, camera_tables, episode_sections, int_view

SIZE = 4096
NAMES = ["actions", "states", "rewards", "is_terminal", "cam", "actions"]  # a name stored twice
BIG = 1 << 63

ITEMSIZE = [1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 4, 8]  # of the dtype codes


@st.composite
def sound_row(draw: st.DrawFn, name: int) -> dict:
    """A row `episode_sections` accepts in an episode of up to 3 frames: an array, or a camera."""
    if name == 4:
        dims = [draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))]
        return {"name": 4, "kind": 1, "dtype": draw(st.sampled_from([0, 1])), "ndim": 4, "dims": dims,
                "offset": draw(st.sampled_from([256, 264, 1000])), "codec": draw(st.integers(0, 2))}  # fmt: skip
    rank = draw(st.integers(1, 4))
    dims = [draw(st.integers(1, 5)) if k < rank - 1 else 0 for k in range(3)]
    return {"name": name, "kind": 0, "dtype": draw(st.integers(0, 11)), "ndim": rank, "dims": dims,
            "offset": draw(st.sampled_from([256, 300, 1024])), "codec": draw(st.sampled_from([0, 0, 3]))}  # fmt: skip


# One field of one row (or an episode's frame count) set to a value at or past what is allowed.
EDITS = {
    "name": [4, 5, 6, 700],
    "kind": [0, 1, 2, 255],
    "dtype": [11, 12, 255],
    "ndim": [0, 1, 4, 5],
    "dims": [[1, 1, 5], [1, 1, 4], [2, 0, 0], [0, 3, 0], [2, 2, 1], [1 << 31, 1 << 31, 2], [(1 << 32) - 1, 1, 1]],
    "offset": [0, 255, 256, SIZE - 96, SIZE - 64, SIZE - 32, SIZE - 8, SIZE - 1, SIZE, BIG + 3],
    "codec": [2, 3, 200],
}  # fmt: skip


@st.composite
def episode(draw: st.DrawFn) -> tuple[int, list[dict]]:
    """A sound episode (its rows in any order, sometimes a camera or an array more), often
    with one or two fields edited."""
    names = [*draw(st.permutations([0, 1, 2, 3])), *draw(st.lists(st.sampled_from([4, 4, 5, 1]), max_size=2))]
    rows = [draw(sound_row(n)) for n in names]
    frames = draw(
        st.sampled_from([0, 1, 2, 3, 3, SIZE // 4, SIZE + 1, BIG + 5])
        if draw(st.booleans())
        else st.integers(1, 3)
    )
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(EDITS)))
        rows[draw(st.integers(0, len(rows) - 1))][field] = draw(st.sampled_from(EDITS[field]))
    if draw(st.integers(0, 9)) == 0:
        rows = rows[: draw(st.integers(0, len(rows)))]  # rows missing
    return frames, rows


def _usual(name: int, kind: int, dtype: int, dims: list[int]) -> dict[str, object]:
    return {"name": name, "kind": kind, "dtype": dtype, "ndim": 1 + sum(d > 0 for d in dims), "dims": dims,
            "offset": 256, "codec": 0}  # fmt: skip


def _columns(episodes: list[tuple[int, list[dict]]], starts: list[int] | None) -> dict[str, np.ndarray]:
    rows = [r for _, rs in episodes for r in rs]
    counts = [len(rs) for _, rs in episodes]
    if starts is None:
        starts = list(np.cumsum([0, *counts[:-1]])) if counts else []
    return {
        "sec_start": np.array(starts, "<u8"),
        "sec_count": np.array(counts, "<u2"),
        "num_frames": np.array([f for f, _ in episodes], "<u8"),
        "sec.name": np.array([r["name"] for r in rows], "<u2"),
        "sec.kind": np.array([r["kind"] for r in rows], "|u1"),
        "sec.dtype": np.array([r["dtype"] for r in rows], "|u1"),
        "sec.ndim": np.array([r["ndim"] for r in rows], "|u1"),
        "sec.dims": np.array([r["dims"] for r in rows], "<u4").reshape(-1, 3),
        "sec.offset": np.array([r["offset"] for r in rows], "<u8"),
        "sec.codec": np.array([r["codec"] for r in rows], "|u1"),
    }


def _agrees(cols: dict[str, np.ndarray], *, usual: bool = True) -> None:
    d = all_sections(cols, NAMES, SIZE)
    if not usual:
        assume(d is not None)
    assert d is not None
    ints = tuple(int_view(cols[k]) for k in READER_COLUMNS)
    for i in range(len(cols["sec_start"])):
        try:
            want = episode_sections(ints, NAMES, i, SIZE, "f.kdb")
        except CorruptFileError:
            assert d.bad[i], i
            continue
        assert not d.bad[i], i
        rows = np.flatnonzero(d.episode == i)
        assert len(rows) == len(want)
        for j, sec in zip(rows.tolist(), want, strict=True):
            t = d.types[d.type_of[j]]
            assert (t.name, t.kind, t.dtype, t.codec) == (sec.name, sec.kind, sec.dtype, sec.codec)
            assert (int(d.frames[i]), *t.trail) == sec.shape
            assert (int(d.offset[j]), int(d.nbytes[j])) == (sec.offset, sec.nbytes)


@settings(max_examples=300, deadline=None)
@given(st.lists(episode(), max_size=6))
def test_every_row_is_decoded_and_refused_as_episode_by_episode(
    episodes: list[tuple[int, list[dict]]],
) -> None:
    _agrees(_columns(episodes, None))


@settings(max_examples=200, deadline=None)
@given(st.lists(episode(), min_size=1, max_size=5), st.data())
def test_directories_out_of_the_usual_order_too(
    episodes: list[tuple[int, list[dict]]], data: st.DataObject
) -> None:
    rows = sum(len(rs) for _, rs in episodes)
    starts = [data.draw(st.sampled_from([0, 1, 2, rows, rows + 1, BIG + 1, (1 << 64) - 1])) for _ in episodes]
    _agrees(_columns(episodes, starts), usual=False)


def test_usual_episodes_are_sound_and_sized_by_their_frames() -> None:
    arrays = [_usual(0, 0, 10, [7, 0, 0]), _usual(1, 0, 10, [2, 2, 0]), _usual(2, 0, 10, [0, 0, 0]),
              _usual(3, 0, 0, [0, 0, 0]), {**_usual(4, 1, 1, [4, 4, 3]), "codec": 1}]  # fmt: skip
    cols = _columns([(3, arrays), (2, arrays[:4]), (3, arrays[1:])], None)
    d = all_sections(cols, NAMES, SIZE)
    assert d is not None
    assert d.bad.tolist() == [False, False, True]  # the last lacks its actions
    assert d.nbytes[:5].tolist() == [3 * 7 * 4, 3 * 4 * 4, 3 * 4, 3, 8 * 4]
    assert d.nbytes[5:9].tolist() == [2 * 7 * 4, 2 * 4 * 4, 2 * 4, 2]
    _agrees(cols)


def test_rows_shared_by_episodes_are_left_to_the_episode_by_episode_decode() -> None:
    arrays = [_usual(k, 0, 10, [0, 0, 0]) for k in range(4)]
    cols = _columns([(3, arrays), (3, arrays)], [0, 0])
    cols = {**cols, **{k: v[:4] for k, v in cols.items() if k.startswith("sec.")}}
    assert all_sections(cols, NAMES, SIZE) is None


def _reader_check(buf: np.ndarray, offset: int, frames: int, size: int) -> tuple[int, bool]:
    """`Database._episode_cameras`' check of one table, as the reader makes it."""
    table = np.ndarray((frames + 1,), "<u8", buffer=buf, offset=offset)
    data = offset + 8 * (frames + 1)
    damaged = table[0] != 0 or (np.diff(table.astype(np.int64)) < 0).any() or data + int(table[-1]) > size
    return int(table[-1]), not damaged


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 4, 8, 16]),
                          st.lists(st.sampled_from([0, 1, 7, 100, 900, 5000, 1 << 62, (1 << 64) - 1]),
                                   min_size=6, max_size=6)),
                max_size=6))  # fmt: skip
def test_camera_tables_are_checked_as_the_reader_checks_them(
    tables: list[tuple[int, int, list[int]]],
) -> None:
    buf = np.zeros(2048, np.uint8)
    offsets, frames = [], []
    at = 64
    for T, gap, values in tables:
        at += gap
        buf[at : at + 8 * (T + 1)] = np.array(
            sorted(values[: T + 1]) if T % 2 else values[: T + 1], "<u8"
        ).view(np.uint8)
        offsets.append(at)
        frames.append(T)
        at += 8 * (T + 1)
    last, ok = camera_tables(buf, np.array(offsets, np.int64), np.array(frames, np.int64), len(buf))
    for r, (off, T) in enumerate(zip(offsets, frames, strict=True)):
        tail, sound = _reader_check(buf, off, T, len(buf))
        assert bool(ok[r]) == sound, r
        if sound:
            assert int(last[r]) == tail


def test_camera_tables_read_in_parts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from kinodb.kdb import _sections

    buf = np.zeros(8 * 400, np.uint8)
    u64 = buf.view("<u8")
    offsets, frames = np.arange(0, 390, 13, dtype=np.int64) * 8, np.full(30, 12, np.int64)
    for k, off in enumerate(offsets.tolist()):
        u64[off // 8 : off // 8 + 13] = np.arange(13) * (k + 1) - (k == 7)  # table 7 starts below 0
    whole = camera_tables(buf, offsets, frames, len(buf) * 100)
    monkeypatch.setattr(_sections, "_GATHER_ROWS", 20)
    parts = camera_tables(buf, offsets, frames, len(buf) * 100)
    assert all(np.array_equal(a, b) for a, b in zip(whole, parts, strict=True))
    assert not whole[1][7] and whole[1].sum() == 29


@pytest.mark.parametrize("past", [0, 1])
def test_an_array_may_end_at_the_end_of_the_file_not_past_it(past: int) -> None:
    arrays = [_usual(0, 0, 10, [7, 0, 0]), _usual(1, 0, 10, [2, 0, 0]), _usual(2, 0, 10, [0, 0, 0]),
              _usual(3, 0, 0, [0, 0, 0])]  # fmt: skip
    arrays[1]["offset"] = SIZE - 3 * 2 * 4 + past
    cols = _columns([(3, arrays)], None)
    d = all_sections(cols, NAMES, SIZE)
    assert d is not None and d.bad.tolist() == [bool(past)]
    _agrees(cols)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 40)), min_size=1, max_size=12),
       st.sampled_from(["<f2", "<f4", "<f8"]), st.integers(0, 2**32 - 1))  # fmt: skip
def test_nan_and_inf_are_counted_per_array_as_one_by_one(
    arrays: list[tuple[int, int]], dtype: str, seed: int
) -> None:
    # validate's count over spans of the map (arrays anywhere: aligned or not, apart or
    # overlapping, empty), against each array counted by itself.
    from kinodb.kdb import validate

    rng = np.random.default_rng(seed)
    buf = rng.integers(0, 256, 4096, dtype=np.uint8)
    dt = np.dtype(dtype)
    flat = buf[: len(buf) - len(buf) % dt.itemsize].view(dt)
    flat[rng.integers(0, len(flat), 60)] = [np.nan, np.inf, -np.inf][seed % 3]
    off = np.array([o for o, _ in arrays], np.int64)
    nbytes = np.array(
        [min(n * dt.itemsize, 4096 - o) // dt.itemsize * dt.itemsize for o, n in arrays], np.int64
    )
    with pytest.MonkeyPatch.context() as m:
        m.setattr(validate, "_SCAN", 64)  # several chunks per span
        nan, inf = validate._count_nonfinite(buf, dt, off, nbytes)
    for r, (o, b) in enumerate(zip(off.tolist(), nbytes.tolist(), strict=True)):
        arr = np.frombuffer(buf, dt, b // dt.itemsize, o)
        assert (nan[r], inf[r]) == (np.isnan(arr).sum(), np.isinf(arr).sum()), r
