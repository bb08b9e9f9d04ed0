"""The output path: what overwrite may replace, paths never written, and errors that name the output."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kinodb.export import _numpy_dir, _run, export

h5py = pytest.importorskip("h5py")

FORMATS = ["numpy", "json", "hdf5", "lerobot"]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too) with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("keep me")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return path


# -- what overwrite replaces -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_never_replaces_a_folder_it_did_not_write(make_kdb, tmp_path: Path, fmt: str) -> None:
    src, _ = make_kdb(2)
    mine = _user_folder(tmp_path / "mine")
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError) as exc:
        export(src, mine, format=fmt, overwrite=True)
    message = str(exc.value)
    assert "a folder of 2 entries that is not an earlier kinodb export" in message
    assert "choose a new path, or remove it yourself" in message and "overwrite=True" not in message
    assert _snapshot(tmp_path) == before
    with pytest.raises(FileExistsError) as exc:  # the advice is the same without overwrite
        export(src, mine, format=fmt)
    assert "overwrite=True" not in str(exc.value) and _snapshot(tmp_path) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_replaces_an_earlier_export_and_an_empty_folder(make_kdb, tmp_path: Path, fmt: str) -> None:
    src, _ = make_kdb(3)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder holds nothing to lose
    with pytest.raises(FileExistsError, match=r"is an empty folder; pass overwrite=True to replace it"):
        export(src, out, format=fmt)
    assert export(src, out, format=fmt, overwrite=True).episodes == 3
    with pytest.raises(FileExistsError, match=rf"is an earlier kinodb {fmt} export; pass overwrite=True"):
        export(src, out, format=fmt)
    assert export(src, out, format=fmt, overwrite=True, filter="episode_id = 1").episodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb", "out"]


@pytest.mark.parametrize("fmt", ["numpy", "json", "lerobot"])
def test_an_earlier_export_with_other_entries_is_kept(make_kdb, tmp_path: Path, fmt: str) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format=fmt)
    (out / "README.md").write_text("my notes")
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"entries the export did not write \(README.md\)"):
        export(src, out, format=fmt, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_file_browser_litter_does_not_keep_an_earlier_export(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format="json")
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert export(src, out, format="json", overwrite=True).episodes == 2
    assert not (out / ".DS_Store").exists()


def test_a_folder_whose_marker_is_not_kinodbs_is_kept(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.json").write_text('{"export": {"format": "numpy", "exporter": "someone else"}}')
    (out / "episodes.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not an earlier kinodb export"):
        export(src, out, overwrite=True)
    assert (out / "dataset.json").read_text().startswith('{"export"')


def test_only_hdf5_replaces_a_file_and_only_its_own(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    foreign = tmp_path / "robomimic.hdf5"
    with h5py.File(foreign, "w") as f:  # an HDF5 file that no export wrote (a source dataset, say)
        f.create_group("data").attrs["total"] = 7
    copy = tmp_path / "copy.h5"
    shutil.copyfile(src, copy)
    before = _snapshot(tmp_path)
    for path in (foreign, copy):
        with pytest.raises(FileExistsError, match="a file that is not an earlier kinodb hdf5 or zarr export"):
            export(src, path, format="hdf5", overwrite=True)
    assert _snapshot(tmp_path) == before
    mine = tmp_path / "mine.hdf5"
    export(src, mine, format="hdf5")
    assert export(src, mine, format="hdf5", overwrite=True, filter="episode_id = 0").episodes == 1
    for fmt in ("numpy", "json", "lerobot"):  # a folder never takes a file's place
        with pytest.raises(FileExistsError, match=r"is a file \(this format writes a folder\)"):
            export(src, mine, format=fmt, overwrite=True)
    assert mine.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_hdf5_replaces_an_earlier_folder_export(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    export(src, out, format="json")
    export(src, out, format="hdf5", overwrite=True)
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb", "out"]


def test_a_symbolic_link_is_never_replaced(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    export(src, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError, match="is a symbolic link, which an export does not replace"):
        export(src, link, overwrite=True)
    assert link.is_symlink()


# -- paths never written -----------------------------------------------------------------------


def test_the_current_folder_and_its_parents_are_refused(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(1)
    work = tmp_path / "top" / "work"  # ".." stays inside tmp_path
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    for out, fmt in ((".", "numpy"), (".", "hdf5"), ("..", "numpy"), (str(work), "lerobot")):
        with pytest.raises(ValueError, match=r"(is|holding) the current folder; choose a new path"):
            export(src, out, format=fmt, overwrite=True)
    with pytest.raises(ValueError, match="the output path is empty"):
        export(src, "", overwrite=True)
    assert _snapshot(tmp_path) == before


def test_the_input_and_folders_holding_it_are_refused(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "deep").mkdir(parents=True)
    src, _ = make_kdb(1, path=data / "deep" / "in.kdb")
    export(src, data / "deep" / "npy")  # a folder holding the input may also hold an earlier export
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"the output {data} is a folder holding the input file; choose"):
        export(src, data, overwrite=True)
    with pytest.raises(ValueError, match="is a folder holding the input file"):
        export(src, data / "deep", format="hdf5", overwrite=True)
    with pytest.raises(ValueError, match=r"\(.*in.kdb\) is the input file; choose a new path"):
        export(src, "../data/deep/in.kdb", format="hdf5", overwrite=True)
    assert _snapshot(tmp_path) == before


# -- errors that name the output -------------------------------------------------------------


def test_a_missing_or_odd_parent_is_named_before_converting(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    with pytest.raises(FileNotFoundError) as exc:
        export(src, tmp_path / "no" / "x.hdf5")
    assert str(exc.value) == (
        f"cannot write {tmp_path / 'no' / 'x.hdf5'}: the folder {tmp_path / 'no'} does not exist; create it first"
    )
    with pytest.raises(NotADirectoryError, match=rf"cannot write .*: {src} is not a folder"):
        export(src, src / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb"]


def test_a_read_only_folder_is_named_before_converting(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    base = Path(tempfile.mkdtemp(prefix="kinodb-ro-"))  # outside pytest's private folder, for os.setuid
    try:
        rodir = base / "rodir"
        rodir.mkdir()
        shared = base / "in.kdb"
        shutil.copyfile(src, shared)
        base.chmod(0o755)
        rodir.chmod(0o555)
        error = _unprivileged(lambda: export(shared, rodir / "x.hdf5", format="hdf5"))
    finally:
        rodir.chmod(0o755)
        shutil.rmtree(base)
    assert error == (
        f"PermissionError: cannot write {rodir / 'x.hdf5'}: the folder {rodir} is not writable; "
        "choose a writable folder"
    )


def _unprivileged(call: Any) -> str:
    """``call()``'s error as ``"Class: message"`` ("" if none), run as a user the file modes bind.

    The super-user may write into any folder, so under it the call runs in a child process
    that has given up its privileges.
    """

    def attempt() -> str:
        try:
            call()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to "nobody", report, and leave without pytest's clean-up
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


def test_a_staging_name_too_long_names_the_output(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1)
    out = tmp_path / ("n" * 250)  # a valid name, too long once the temporary suffix is added
    for fmt in ("numpy", "hdf5"):
        with pytest.raises(OSError) as exc:
            export(src, out, format=fmt)
        message = str(exc.value)
        assert message.startswith(f"cannot write {out} in {tmp_path}: File name too long")
        assert message.endswith("; choose a shorter name") and ".tmp" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb"]


def test_an_os_error_mid_export_names_the_output(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(3)

    def full(db: Any, i: int, folder: str) -> Any:
        raise OSError(28, "No space left on device", os.path.join(folder, "actions.npy"))

    monkeypatch.setattr(_numpy_dir, "write_episode", full)
    out = tmp_path / "out"
    with pytest.raises(OSError) as exc:
        export(src, out)
    assert str(exc.value) == (
        f"{out}: No space left on device (writing episode_000000/actions.npy); free some space or choose "
        "another folder"
    )
    assert exc.value.errno == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb"]


# -- publishing after the conversion ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["numpy", "hdf5"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_appears_meanwhile_is_kept_and_nothing_leaks(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, overwrite: bool
) -> None:
    src, _ = make_kdb(2)
    out = tmp_path / "out"
    real = _run.tree_size  # measures the staged output once it is written, just before publishing

    def written_then_someone_fills_out(path: str) -> tuple[int, int]:
        _user_folder(out)
        return real(path)

    monkeypatch.setattr(_run, "tree_size", written_then_someone_fills_out)
    with pytest.raises(FileExistsError, match="not an earlier kinodb export"):
        export(src, out, format=fmt, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.kdb", "out"]  # no hidden temporary left
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub" / "data.bin").is_file()


# -- the format a name implies ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["want.hdf5", "want.h5", "WANT.HDF5"])
def test_a_name_ending_in_hdf5_exports_hdf5(make_kdb, tmp_path: Path, name: str) -> None:
    src, _ = make_kdb(2)
    report = export(src, tmp_path / name)
    assert report.format == "hdf5" and (tmp_path / name).read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert export(src, tmp_path / f"n{name}", format="numpy").format == "numpy"  # a format said wins
    assert (tmp_path / f"n{name}" / "episodes.json").is_file()


@pytest.mark.parametrize(("name", "fmt"), [("meta.json", "json"), ("m.jsonl", "json"), ("copy.kdb", "numpy")])
def test_a_name_no_export_writes_needs_the_format_said(make_kdb, tmp_path: Path, name: str, fmt: str) -> None:
    src, _ = make_kdb(1)
    with pytest.raises(ValueError, match=rf"pass format='{fmt}' to write a folder of that name"):
        export(src, tmp_path / name)
    assert not (tmp_path / name).exists()
    assert export(src, tmp_path / name, format=fmt).format == fmt
