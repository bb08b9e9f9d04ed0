"""``kino serve`` / ``kino-serve`` options: unreadable files named with their option, ``--debug``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinodb._cli import main as kino_main
from kinodb._cli import serve as kino_serve
from kinodb.serve import KinoServer

_DEBUG = "log each failed call (method, client, status, message) and print tracebacks"


@pytest.mark.parametrize("program", ["kino-serve", "kino serve"])
def test_an_unreadable_file_is_named_with_its_option(
    program: str, main_kdb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*args: str) -> str:
        argv = [str(main_kdb), "--port", "0", *args]
        code = kino_serve.main(argv) if program == "kino-serve" else kino_main.main(["serve", *argv])
        assert code == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    missing, there = tmp_path / "missing.txt", tmp_path / "there.pem"
    there.write_text("x\n")
    assert error("--token-file", str(missing)).endswith(
        f"error: --token-file {missing}: No such file or directory; give the file holding the bearer "
        "token clients must send (one line), or set $KINODB_TOKEN instead"
    )
    assert error("--tls-cert", str(missing), "--tls-key", str(there)).endswith(
        f"error: --tls-cert {missing}: No such file or directory; give the PEM file of the certificate "
        "chain the server presents to clients"
    )
    assert error("--tls-cert", str(there), "--tls-key", str(tmp_path)).endswith(
        f"error: --tls-key {tmp_path}: Is a directory; give the PEM file of the private key of --tls-cert"
    )


def test_an_unreadable_tls_file_names_the_argument(main_kdb: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"; tls_key names the PEM file of its private key"):
        KinoServer(str(main_kdb), port=0, tls_cert=main_kdb, tls_key=tmp_path / "missing.key")


def test_kino_serve_debug_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    for main, argv in ((kino_main.main, ["serve", "--help"]), (kino_serve.main, ["--help"])):
        with pytest.raises(SystemExit):
            main(argv)
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"--debug {_DEBUG}" in help_text and "print tracebacks on errors" not in help_text
    parser = kino_main.build_parser()
    assert parser.parse_args(["serve", "a.kdb", "--debug"]).debug is True
    assert parser.parse_args(["--debug", "serve", "a.kdb"]).debug is True  # kino's own, before the command
    assert parser.parse_args(["serve", "a.kdb"]).debug is False
