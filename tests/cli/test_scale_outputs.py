"""`kino schema`, `info`, `query` and `validate` read every episode's metadata and sections
at once from the index's columns; what they print is what reading episode by episode
prints, on files whose episodes differ in every way these commands report, and on
damaged ones."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from _legacy_encoder import encode, encoded_frames, random_episode
from kinodb._cli import schema
from kinodb._cli.main import main
from kinodb.kdb import validate as kdb_validate
from kinodb.kdb.reader import Database


def _png_frames(rng: np.random.Generator, T: int, h: int, w: int) -> list[bytes]:
    return [encode_image(f, "PNG") for f in smooth_frames(rng, (T, h, w, 3))]


def _varied(path: Path) -> Path:
    """Episodes that differ: arrays' dims and dtypes, extra arrays and cameras held or not,
    raw and PNG frames of several sizes, NaN and Inf values, metadata of every kind."""
    rng = np.random.default_rng(7)
    with kinodb.Writer(path, image_codec="raw") as w:
        for i in range(9):
            T = 3 + i % 4
            ep: dict = {
                "actions": rng.normal(size=(T, 3 + i % 2)).astype(np.float64 if i == 5 else np.float32),
                "embodiment": ["franka", "日本ロボット", "a very long embodiment name indeed"][i % 3],
                "task": ["pick", "place the cup\non the plate, then wipe the table clean twice", ""][i % 3],
                "fps": [10.0, 15.0, 30.0][i % 3],
                "success": [True, False, None][i % 3],
            }
            if i % 3:
                ep["states"] = rng.normal(size=(T, 5)).astype(np.float32)
            if i % 2:
                ep["rewards"] = rng.uniform(size=T).astype(np.float32)
            if i in (1, 4):
                ep["timestamps"] = np.arange(T) / 10.0
            if i % 4 == 0:
                ep["extra_arrays"] = {"force": rng.normal(size=(T, 6)).astype(np.float32)}
            if i % 4 == 1:
                ep["extra_arrays"] = {"depth": rng.integers(0, 9, (T, 2, 2)).astype(np.uint16)}
            if i == 4:  # an array that a damaged directory can hide behind another of its name
                ep["extra_arrays"]["force"][0, 0] = np.nan
                ep["extra_arrays"]["gain"] = np.ones((T, 6), np.float32)
            if i in (2, 6):
                ep["actions"][1, 0] = np.nan
            if i == 2:
                ep["extra_arrays"] = {"force": np.full((T, 6), np.inf, np.float32)}
            if i % 3 == 0:
                ep["images"] = {"front": smooth_frames(rng, (T, 8, 6, 3))}
            if i % 3 == 1:
                ep["images"] = {
                    "side": _png_frames(rng, T, 4 + i, 5),
                    "wrist": smooth_frames(rng, (T, 4, 4, 1)),
                }
            extra: dict = {"scene": ["lab", "kitchen", None][i % 3 // 2 * 2 if i > 4 else i % 2],
                           "attempt": None if i == 8 else i}  # fmt: skip
            if i % 2:
                extra["score"] = 0.5 + i
                extra["tags"] = ["a", ["b", None, 2.5], 'q"uote'] if i % 4 == 1 else "plain"
            if i % 3 == 0:
                extra["checked"] = i % 2 == 0
                extra["note"] = None
            if i == 4:
                extra["{odd} key %s"] = "ünïcode"
            ep["extra"] = extra
            w.add_episode(**ep)
    return path


def _jpeg(path: Path) -> Path:
    """JPEG cameras of two sizes, and an episode with none."""
    rng = np.random.default_rng(8)
    with kinodb.Writer(path, image_codec="jpeg", jpeg_quality=80) as w:
        for i in range(4):
            T = 2 + i
            images = {"front": smooth_frames(rng, (T, 16 if i % 2 else 12, 16, 3))} if i != 3 else None
            extra = {"position": 10 * i} if i % 2 else {}  # the name query --json gives its own field
            w.add_episode(actions=rng.normal(size=(T, 2)).astype(np.float32), images=images,
                          task=f"jpeg task {i}", success=bool(i % 2), extra=extra)  # fmt: skip
    return path


def _legacy(path: Path) -> Path:
    rng = np.random.default_rng(9)
    eps = [random_episode(rng, 3, 2, 2, total_reward=v) for v in (float("nan"), 1.5, None)]
    eps[1].images = {"cam": encoded_frames(smooth_frames(rng, (3, 8, 8, 3)), "PNG")}
    path.write_bytes(encode(eps))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    varied, jpeg = _varied(root / "varied.kdb"), _jpeg(root / "jpeg.kdb")
    merged = root / "merged.kdb"
    kinodb.merge([varied, jpeg], merged)
    return {"varied": varied, "jpeg": jpeg, "merged": merged, "legacy": _legacy(root / "legacy.kdb")}


COMMANDS = [
    ["schema", "{p}"],
    ["schema", "{p}", "--json"],
    ["info", "{p}"],
    ["info", "{p}", "--episodes"],
    ["info", "{p}", "--json"],
    ["info", "{p}", "--episodes", "--json"],
    ["query", "{p}", "num_frames > 0"],
    ["query", "{p}", "num_frames > 0", "--json"],
    ["query", "{p}", "NOT success = false", "--limit", "2"],
    ["query", "{p}", "NOT success = false", "--limit", "2", "--json"],
    ["query", "{p}", "num_frames > 1000", "--json"],
    ["validate", "{p}"],
    ["validate", "{p}", "--verbose"],
    ["validate", "{p}", "--no-decode", "--verbose"],
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the per-episode paths only: what the commands printed before reading at once."""
    monkeypatch.setattr(Database, "_meta_columns", lambda self, idx: None)
    monkeypatch.setattr(schema, "_count_at_once", lambda db: None)
    monkeypatch.setattr(kdb_validate, "_sound", lambda db, decode_images: None)


def _same_both_ways(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    at_once = _run(argv, capsys)
    with monkeypatch.context() as m:
        _one_by_one(m)
        each = _run(argv, capsys)
    assert at_once == each
    return at_once[1]


@pytest.mark.parametrize("name", ["varied", "jpeg", "merged", "legacy"])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_the_output_is_the_same_as_episode_by_episode(
    files: dict[str, Path],
    name: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [part.format(p=files[name]) for part in command]
    out = _same_both_ways(argv, capsys, monkeypatch)
    assert out


def test_several_files_are_queried_the_same(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [str(files[k]) for k in ("varied", "merged", "jpeg")]
    for extra in ([], ["--json"], ["--limit", "3"], ["--limit", "3", "--json"]):
        out = _same_both_ways(["query", *paths, "num_frames >= 3", *extra], capsys, monkeypatch)
        assert paths[1] in out


def test_the_varied_file_takes_the_paths_at_once(files: dict[str, Path]) -> None:
    # Otherwise the comparisons above would compare the per-episode path with itself.
    for name in ("varied", "jpeg", "merged"):
        with kinodb.open(files[name]) as db:
            counted = schema._count_at_once(db)
            assert counted is not None
            assert db._meta_columns(np.arange(len(db))) is not None
            sound = kdb_validate._sound(db, True)
            assert sound is not None and sound.ok.all()
    with kinodb.open(files["merged"]) as db:
        counted = schema._count_at_once(db)
        assert counted is not None
        # episode 0's arrays, then its camera; episode 1's new arrays, then its cameras
        assert list(counted) == ["actions", "states", "rewards", "is_terminal", "force", "camera:front",
                                 "timestamps", "depth", "camera:side", "camera:wrist", "gain"]  # fmt: skip
        assert counted == schema._count_each(db)
        kind, _, episodes, seen = counted["camera:front"]
        assert (kind, episodes) == ("camera", 6)
        assert set(seen) == {("raw", (8, 6, 3)), ("jpeg", (12, 16, 3)), ("jpeg", (16, 16, 3))}
        assert kdb_validate._sound(db, True).nonfinite == {"actions": [2, 0, 2, 2], "force": [1, 30, 2, 2]}


def test_the_listings_keep_what_each_episode_holds(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    with kinodb.open(files["merged"]) as db:
        want = [{"position": i, **db.read_meta(i)} for i in range(len(db))]
    _, out, _ = _run(["query", str(files["merged"]), "num_frames > 0", "--json"], capsys)
    got = json.loads(out)["episodes"]
    assert len(got) == len(want) == 13
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)  # the same keys in the same order: absent extras stay absent
        assert g == json.loads(json.dumps({k: None if v != v else v for k, v in w.items()}))


# -- damaged files ------------------------------------------------------------------------


def _poke(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def _column(path: Path, name: str, row: int, value: int) -> None:
    """Set one entry of an index column (the index checksum then fails too)."""
    with kinodb.open(path) as db:
        cols = db._decoded.columns  # not verified: edits follow edits
        col = cols[name]
        at = cols.byte_offset(name) + row * col.dtype.itemsize
        data = np.array([value], col.dtype).tobytes()
    _poke(path, at, data)


def _camera_table(path: Path, episode: int, camera: str, entry: int, value: int) -> None:
    with kinodb.open(path) as db:
        sec = next(s for s in db._episode_sections(episode) if s.name == camera)
    _poke(path, sec.offset + 8 * entry, np.array([value], "<u8").tobytes())


def _payload_byte(path: Path, episode: int, skip: int) -> None:
    with kinodb.open(path) as db:
        at = int(db._cols["payload_offset"][episode]) + skip
        old = db._map()[at]
    _poke(path, at, bytes([old ^ 0x5A]))


def _keep_crc(path: Path, episode: int) -> None:
    """Store episode ``episode``'s payload checksum anew: a payload edit then shows as
    what it does to the episode's sections and frames, not as a checksum mismatch."""
    from kinodb.kdb._layout import crc32

    with kinodb.open(path) as db:
        cols = db._decoded.columns
        off, length = int(cols["payload_offset"][episode]), int(cols["payload_length"][episode])
        crc = crc32(db._map()[off : off + length].data)
    _column(path, "payload_crc", episode, crc)


def _extra_json(path: Path) -> None:
    with kinodb.open(path) as db:
        col = db._block.extras["tags"]
        i = int(np.flatnonzero(col.state == 2)[0])
        at = col._cols.byte_offset("bytes") + int(col._cols["offsets"][i])
    _poke(path, at, b"{")


def _extra_code(path: Path) -> None:
    """Extra field scene of episode 3: a string code past its dictionary."""
    with kinodb.open(path) as db:
        codes = db._block.extras["scene"]._cols
        at = codes.byte_offset("codes") + 3 * codes["codes"].dtype.itemsize
    _poke(path, at, np.array([99], "<i4").tobytes())


def _rewards_only_as_a_camera(path: Path) -> None:
    """Episode 0's rewards renamed depth, and its camera renamed rewards."""
    with kinodb.open(path) as db:
        names = db._names
        first = int(db._decoded.columns["sec_start"][0])
        rows = {s.name: first + k for k, s in enumerate(db._episode_sections(0))}
    _column(path, "sec.name", rows["rewards"], names.index("depth"))
    _column(path, "sec.name", rows["front"], names.index("rewards"))


def _into_the_next_payload(path: Path) -> None:
    with kinodb.open(path) as db:
        first = int(db._cols["sec_start"][5])
        at = int(db._cols["payload_offset"][6])
    _column(path, "sec.offset", first + 2, at)


def _jpeg_frame(path: Path, episode: int) -> None:
    """Zero the start of the second frame of camera front of ``episode``."""
    with kinodb.open(path) as db:
        sec = next(s for s in db._episode_sections(episode) if s.name == "front")
        table = np.frombuffer(db._map(), "<u8", sec.shape[0] + 1, sec.offset).copy()
    _poke(path, sec.offset + sec.nbytes + int(table[1]), b"\0" * 8)


def _named_twice(path: Path) -> None:
    """Episode 4's gain renamed force: the episode holds two arrays called force."""
    with kinodb.open(path) as db:
        first = int(db._decoded.columns["sec_start"][4])
        row = first + next(k for k, s in enumerate(db._episode_sections(4)) if s.name == "gain")
        code = db._names.index("force")
    _column(path, "sec.name", row, code)


def _resealed(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """``edit``, then the commit record's index checksum made to match the edited index:
    damage that no checksum shows, which the commands read through."""
    from dataclasses import replace

    from kinodb.kdb._layout import SLOT_OFFSETS, crc32, pack_slot

    def run(path: Path) -> None:
        edit(path)
        with kinodb.open(path) as db:
            c, slot = db._commit, db._slot
            record = pack_slot(replace(c, index_crc=crc32(db._map()[c.index_offset : c.end].data)))
        _poke(path, SLOT_OFFSETS[slot], record)

    return run


def _swap_rows(path: Path, episode: int, a: str, b: str) -> None:
    """Swap two section rows of ``episode`` (arrays and cameras keep their bytes)."""
    with kinodb.open(path) as db:
        cols = db._decoded.columns
        first = int(cols["sec_start"][episode])
        rows = {s.name: first + k for k, s in enumerate(db._episode_sections(episode))}
        values = {k: cols[k].copy() for k in ("sec.name", "sec.kind", "sec.dtype", "sec.codec", "sec.ndim",
                                               "sec.offset", "sec.dims")}  # fmt: skip
    for name, col in values.items():
        for x, y in ((rows[a], rows[b]), (rows[b], rows[a])):
            with kinodb.open(path) as db:
                at = db._decoded.columns.byte_offset(name) + x * col[0].nbytes
            _poke(path, at, col[y].tobytes())


def _then(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        for e in edits:
            e(path)

    return edit


def _table_kept(episode: int, camera: str, entry: int, value: int) -> Callable[[Path], None]:
    return _then(lambda p: _camera_table(p, episode, camera, entry, value), lambda p: _keep_crc(p, episode))


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "payload byte": ("varied", lambda p: _payload_byte(p, 1, 40)),
    "payload byte of an episode with NaN": ("varied", lambda p: _payload_byte(p, 2, 8)),
    "section dtype code": ("varied", lambda p: _column(p, "sec.dtype", 12, 200)),
    "section rank": ("varied", lambda p: _column(p, "sec.ndim", 3, 3)),
    "section offset past the end": ("varied", lambda p: _column(p, "sec.offset", 20, 1 << 40)),
    "section offset into the next payload": ("varied", _into_the_next_payload),
    "section count": ("varied", lambda p: _column(p, "sec_count", 8, 1)),
    "rewards only as a camera": ("varied", _rewards_only_as_a_camera),
    "an array named twice": ("varied", _named_twice),
    "is_terminal not bool": ("varied", lambda p: _column(p, "sec.dtype", 3, 1)),
    "success code": ("varied", lambda p: _column(p, "success", 0, 5)),
    "embodiment code": ("varied", lambda p: _column(p, "embodiment.codes", 3, 99)),
    "action dim": ("varied", lambda p: _column(p, "action_dim", 4, 9)),
    "frame count": ("varied", lambda p: _column(p, "num_frames", 6, 2)),
    "payload offset": ("varied", lambda p: _column(p, "payload_offset", 7, 3)),
    "camera table start": ("varied", _table_kept(0, "front", 0, 4)),
    "raw frames short": ("varied", _table_kept(3, "front", 6, 6 * 8 * 6 * 3 - 1)),
    "camera table falls": ("varied", _table_kept(1, "side", 2, 1)),
    "extra JSON": ("varied", _extra_json),
    "resealed: an array named twice": ("varied", _resealed(_named_twice)),
    "resealed: a camera row before an array row": (
        "varied",
        _resealed(lambda p: _swap_rows(p, 0, "force", "front")),
    ),
    "resealed: rewards only as a camera": ("varied", _resealed(_rewards_only_as_a_camera)),
    "resealed: total reward marked unknown": (
        "varied",
        _resealed(lambda p: _column(p, "total_reward.valid", 1, 0)),
    ),
    "resealed: action dim": ("varied", _resealed(lambda p: _column(p, "action_dim", 4, 9))),
    "resealed: success code": ("varied", _resealed(lambda p: _column(p, "success", 5, 7))),
    "resealed: negative success code": ("varied", _resealed(lambda p: _column(p, "success", 5, -2))),
    "resealed: extra string code": ("varied", _resealed(_extra_code)),
    "resealed: section dtype code": ("varied", _resealed(lambda p: _column(p, "sec.dtype", 12, 200))),
    "resealed: extra JSON": ("varied", _resealed(_extra_json)),
    "jpeg frame": ("jpeg", lambda p: _payload_byte(p, 2, 700)),
    "jpeg frame, checksum kept": ("jpeg", _then(lambda p: _jpeg_frame(p, 1), lambda p: _keep_crc(p, 1))),
}


@pytest.fixture(params=list(DAMAGE), ids=list(DAMAGE))
def damaged(request: pytest.FixtureRequest, files: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    source, edit = DAMAGE[request.param]
    path = tmp_path / f"damaged-{source}.kdb"
    shutil.copyfile(files[source], path)
    edit(path)
    yield path


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c[0] != "info" or "--episodes" in c], ids=" ".join
)
def test_damaged_files_read_the_same_as_episode_by_episode(
    damaged: Path, command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _same_both_ways([part.format(p=damaged) for part in command], capsys, monkeypatch)


# Edits that leave a file `validate` passes, as it always has: each array is still read
# whole from the payload its episode's checksum covers.
UNSEEN = {"resealed: an array named twice", "resealed: a camera row before an array row",
          "resealed: total reward marked unknown"}  # fmt: skip


def test_validate_finds_each_damage(
    damaged: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = _same_both_ways(["validate", str(damaged), "--verbose"], capsys, monkeypatch)
    assert ("FAILED" in out) != (request.node.callspec.params["damaged"] in UNSEEN)


def test_a_bad_frame_is_named_among_sound_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "many.kdb"
    rng = np.random.default_rng(3)
    with kinodb.Writer(path, image_codec="jpeg") as w:
        for i in range(40):
            w.add_episode(actions=np.zeros((2, 2), np.float32), images={"front": smooth_frames(rng, (2, 8, 8, 3))},
                          extra={"n": i})  # fmt: skip
    _jpeg_frame(path, 25)
    _, out, _ = _run(["validate", str(path)], capsys)
    errors = [line for line in out.splitlines() if line.startswith("[error]")]
    assert errors[0].startswith("[error] episode 25: payload checksum mismatch")
    assert errors[1].startswith("[error] episode 25:") and "camera 'front'" in errors[1]
    assert len(errors) == 2
    _keep_crc(path, 25)  # then only the frame's decode finds it
    _, out, _ = _run(["validate", str(path)], capsys)
    errors = [line for line in out.splitlines() if line.startswith("[error]")]
    assert errors[0].startswith("[error] index checksum mismatch")
    assert errors[1].startswith("[error] episode 25:") and "camera 'front'" in errors[1]
    assert len(errors) == 2


def test_many_episodes_list_in_chunks_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # More episodes than one chunk of the listings, with extras held by some only.
    from kinodb._cli import info, query

    monkeypatch.setattr(info, "CHUNK", 7)
    monkeypatch.setattr(query, "CHUNK", 7)
    path = tmp_path / "chunks.kdb"
    with kinodb.Writer(path) as w:
        for i in range(40):
            w.add_episode(actions=np.zeros((1 + i % 3, 2), np.float32), task=f"t{i % 5}",
                          extra={"k": i} if i % 3 else {"s": str(i)})  # fmt: skip
    for argv in (["info", str(path), "--episodes"], ["info", str(path), "--episodes", "--json"],
                 ["query", str(path), "k > 3", "--json"], ["query", str(path), "k > 3"]):  # fmt: skip
        _same_both_ways(argv, capsys, monkeypatch)
