"""Run ``kino-serve`` as a real process on 127.0.0.1 and find the port it picked."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
_READY = re.compile(r"^kino-serve: serving .* on (\S+)(?: \(local clients: (\S+)\))? \[")


class ServerProcess:
    """``python -m kinodb._cli.serve ARGS --port 0``, started and ready to take calls."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join([str(SRC), full_env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "kinodb._cli.serve", *args]
        if "--port" not in args:
            cmd += ["--port", "0"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        threading.Thread(target=self._pump, daemon=True).start()
        self.addr = self._wait_ready(timeout)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.stdout.append(line)
            found = _READY.match(line)
            if found:
                return found.group(2) or found.group(1)
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        raise RuntimeError(f"kino-serve did not start: stdout {self.stdout}, stderr {err}")

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (None: none), wait for the exit; return the exit code (stdout lines in ``stdout``)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # kino-serve enables faulthandler: SIGABRT prints every thread's stack on stderr.
            self.proc.send_signal(signal.SIGABRT)
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(
                f"kino-serve did not exit within {timeout} s of {sig!r}; stdout {self.stdout}, stderr:\n{err}"
            ) from None
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                break
            self.stdout.append(line)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return rc


def self_signed_certificate(root: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``root``: a self-signed certificate for localhost and
    127.0.0.1, made with the openssl CLI (the calling test is skipped without it)."""
    import pytest

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed; it makes the test certificate")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
