"""``kino serve`` and ``kino-serve``: serve a ``.kdb`` file or a mixture over gRPC."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from kinodb._cli._errors import EXIT_OK, dispatch
from kinodb._version import __version__
from kinodb.mixture import DEFAULT_SEED

DEFAULT_PORT = 50051  # kinodb.serve.server.DEFAULT_PORT; not imported so `kino --help` needs no grpc
TOKEN_ENV = "KINODB_TOKEN"
_exits_after = False  # set by `entry`: the process ends when the command returns
_threads_left = False  # a stop left gRPC handler threads running: the exit must not wait for them


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "serve",
        help="serve a .kdb file or a mixture over gRPC",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    add_arguments(p)
    p.set_defaults(run=run)


# kino's own --debug (before the subcommand) stands when this one is not given: SUPPRESS.
_DEBUG_HELP = "log each failed call (method, client, status, message) and print tracebacks"

_DESCRIPTION = """\
Serve episodes, frame windows, metadata and KQL queries over gRPC (service
kinodb.v1.KinoService; clients of the earlier kinodb.KinoService keep working).
SIGTERM or Ctrl-C stops accepting calls, lets calls in flight finish (--grace), exits 0;
a second one cancels them and stops at once. Serve files that are replaced by renaming
a new file over them (as kinodb's writers do), never rewritten in place.
The bearer token comes from --token-file, else the KINODB_TOKEN environment variable."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options shared by ``kino serve`` and ``kino-serve``."""
    p.add_argument("file", nargs="?", metavar="FILE", help="the .kdb file to serve")
    p.add_argument("-s", "--source", action="append", metavar="PATH[:WEIGHT]",
                   help="serve a weighted mixture instead (weight after the last colon, default 1); repeat")  # fmt: skip
    p.add_argument("-p", "--port", type=_int_in(0, 65535), default=DEFAULT_PORT,
                   help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)")  # fmt: skip
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on, without the port: 0.0.0.0 or :: for every interface, "
                        "[::1] or ::1 for IPv6; a name (localhost) must be free on every address it "
                        "stands for (default: 127.0.0.1)")  # fmt: skip
    p.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=DEFAULT_SEED,
                   help=f"seed of the stream that seed-0 requests draw from, and of the mixture (default: {DEFAULT_SEED})")  # fmt: skip
    p.add_argument("--workers", type=_int_in(1, 1024), default=16,
                   help="streams served at once, each on its own thread; one more thread serves "
                        "other calls, and a stream beyond them is refused (default: 16)")  # fmt: skip
    p.add_argument("--max-batch", type=_int_in(1, 1 << 20), default=1024,
                   help="largest batch_size a request may ask for (default: 1024)")  # fmt: skip
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain; with --tls-key, serve TLS")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--token-file", metavar="PATH", help=f"file holding the bearer token (else ${TOKEN_ENV})")
    p.add_argument("--grace", type=_seconds, default=10.0,
                   help="seconds calls in flight may take to finish on shutdown (default: 10)")  # fmt: skip


def _int_in(lo: int, hi: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text}")
    if value > threading.TIMEOUT_MAX:  # gRPC waits out --grace on a thread: a longer wait overflows
        raise argparse.ArgumentTypeError(
            f"expected at most {threading.TIMEOUT_MAX:.0f} seconds (some 292 years, the longest wait "
            f"Python's threads take), got {text}"
        )
    return value


_FILES = (
    ("tls_cert", "--tls-cert", "give the PEM file of the certificate chain the server presents to clients"),
    ("tls_key", "--tls-key", "give the PEM file of the private key of --tls-cert"),
    ("token_file", "--token-file",
     f"give the file holding the bearer token clients must send (one line), or set ${TOKEN_ENV} instead"),
)  # fmt: skip


def _check_files(args: argparse.Namespace) -> None:
    """Open each file an option names, so that one that cannot be read is named with its option.

    Raises:
        OSError: ``--tls-cert FILE: No such file or directory; give the PEM file of ...``.
    """
    for attr, option, what in _FILES:
        path = getattr(args, attr, None)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}; {what}", f"{option} {path}") from None


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from ``--token-file``, else ``$KINODB_TOKEN``, else None (no auth).

    Raises:
        ValueError: the token is empty, blank, or not one line of printable ASCII (a gRPC
            header cannot carry it), naming where it came from.
    """
    from kinodb.serve.server import token_problem  # deferred: imports grpc

    if args.token_file:
        where = f"--token-file {args.token_file}"
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{where} is not UTF-8 text (byte {exc.start}); write the token in it as one line of "
                "printable ASCII"
            ) from None
        fix = "write the token in it as one line of printable ASCII (letters, digits, punctuation)"
    else:
        if TOKEN_ENV not in os.environ:
            return None
        where = f"${TOKEN_ENV}"
        token = os.environ[TOKEN_ENV].strip()
        if not token:
            raise ValueError(
                f"{where} is set but blank; set it to the token, or unset it to serve without authentication"
            )
        fix = "set it to one line of printable ASCII (letters, digits, punctuation)"
    problem = token_problem(token)
    if problem:
        raise ValueError(f"{where} {problem}; {fix}")
    return token


def _source(args: argparse.Namespace) -> Any:
    if args.file and args.source:
        raise ValueError("give FILE or --source, not both")
    if args.file:
        return args.file
    if not args.source:
        raise ValueError("nothing to serve: give FILE or one or more --source PATH[:WEIGHT]")
    from kinodb._cli.mix import parse_source

    return [parse_source(text) for text in args.source]


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; then drain calls in flight and return 0."""
    source = _source(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    _check_files(args)
    # gRPC's core logs bind and TLS failures on stderr on its own; kinodb reports them in
    # one line, so the core's lines only show with --debug (or a GRPC_VERBOSITY of the user's).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if getattr(args, "debug", False) else "NONE")
    # A served file rewritten in place (not replaced by a rename) can end the process with
    # SIGBUS on the next read of its map; say so on stderr rather than vanish without a word.
    if not faulthandler.is_enabled():
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # no usable stderr
            faulthandler.enable()
    with _log_lines(debug=bool(getattr(args, "debug", False))):
        return _serve(args, source)


def _serve(args: argparse.Namespace, source: Any) -> int:
    from kinodb.serve.server import KinoServer  # deferred: imports grpc

    server = KinoServer(
        source, bind=args.bind, port=args.port, seed=args.seed, workers=args.workers, max_batch=args.max_batch,
        tls_cert=args.tls_cert, tls_key=args.tls_key, token=_token(args),
    )  # fmt: skip
    # A handler runs in the main thread between two bytecodes, possibly while that thread
    # holds a lock, so it takes none: it appends to a list (the first signal stops, a second
    # stops at once) and sets `hurry`, which is only ever polled, never waited on. It is in
    # place before the server starts: a Ctrl-C raised between the start and the `try` below
    # would leave gRPC's threads running, and the process could never exit.
    signals: list[int] = []
    hurry = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        if len(signals) > 1:
            hurry.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        _say(f"kino-serve: {server.describe()}")
        while not signals:
            time.sleep(0.2)  # a signal runs its handler at once, during the sleep
        _say(
            f"kino-serve: stopping; letting calls in flight finish (up to {args.grace:g} s; "
            "Ctrl-C again stops at once)"
        )
    finally:
        server.stop(args.grace, hurry=hurry)
        for sig, handler in previous.items():
            # A process that ends when the command returns ignores further signals: the
            # default disposition would end it with the signal's status while it exits.
            signal.signal(sig, signal.SIG_IGN if _exits_after else handler)
    _say("kino-serve: stopped" + (", calls in flight cancelled" if hurry.is_set() else ""))
    if server.stop_incomplete:
        global _threads_left
        _threads_left = True
    return EXIT_OK


def _say(line: str) -> None:
    """Print a status line; a closed stdout (the reader went away) does not stop the server."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: stdout itself was closed
        # Later prints and the interpreter's final flush would fail again: send them nowhere.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Prefixed(logging.Formatter):
    """The library's log lines as kino-serve's: ``kino-serve: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"kino-serve: {level}{super().format(record)}"


GRPC_EVERY = 5.0  # seconds between two lines of one kind of gRPC message (a client can flood them)


class _GrpcLines(logging.StreamHandler):  # type: ignore[type-arg]  # a TextIO stream
    """gRPC's own log records (say, a request that is no protobuf) as kino-serve's lines.

    Each event is one line, ``kino-serve: warning: gRPC: MESSAGE (ErrorType: reason)``,
    with the traceback only under ``debug``. Without ``debug``, one kind of message (its
    logger and text) shows at most once every ``every`` seconds: the next line shown
    counts those left out, and `flush_held` reports the ones left out at the end.
    """

    def __init__(self, *, debug: bool, every: float = GRPC_EVERY) -> None:
        super().__init__()
        self._debug, self._every = debug, every
        self._shown: dict[tuple[str, str], float] = {}  # kind -> when its last line was shown
        self._held: dict[tuple[str, str], tuple[int, str]] = {}  # kind -> (left out, last such line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line(record)
            if not self._debug:
                kind, now = (record.name, str(record.msg)), time.monotonic()
                shown = self._shown.get(kind)
                if shown is not None and now - shown < self._every:
                    self._held[kind] = (self._held.get(kind, (0, ""))[0] + 1, line)
                    return
                held, _ = self._held.pop(kind, (0, ""))
                if held and shown is not None:
                    line += f" [{held} more like it in the {_secs(now - shown)} s before, not shown]"
                self._shown[kind] = now
            self._write(line)
        except Exception:  # a log line must never end a call's thread
            self.handleError(record)

    def flush_held(self) -> None:
        """Report the events left out since each kind's last line (the server is stopping)."""
        with self.lock or contextlib.nullcontext():
            held, self._held = self._held, {}
            for kind, (count, line) in held.items():
                since = time.monotonic() - self._shown.get(kind, time.monotonic())
                more = f" [{count - 1} more like it in the last {_secs(since)} s]" if count > 1 else ""
                self._write(line + more)

    def _line(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else "warning: "  # a call failed; serving goes on
        text = " ".join(record.getMessage().split())
        trace = ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            reason = " ".join(str(exc).split())
            text += f" ({type(exc).__name__}: {reason})" if reason else f" ({type(exc).__name__})"
            if self._debug:
                trace = "\n" + logging.Formatter().formatException(record.exc_info)
        if text.startswith("Exception deserializing"):
            text += (
                ": a client sent a request that is no kinodb message (another service's client, "
                "or a broken one)"
            )
        return f"kino-serve: {level}gRPC: {text}{trace}"

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # no usable stderr: the server serves on
            self.stream.write(line + "\n")
            self.stream.flush()


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


@contextlib.contextmanager
def _log_lines(*, debug: bool = False) -> Iterator[None]:
    """Log kinodb's messages, and gRPC's, on stderr with the ``kino-serve:`` prefix while serving.

    gRPC logs a request it cannot decode (and other per-call failures) with a traceback,
    which would otherwise reach stderr raw, once per request; see `_GrpcLines`.
    """
    logger = logging.getLogger("kinodb")
    handler = logging.StreamHandler()
    handler.setFormatter(_Prefixed("%(message)s"))
    grpc_logger = logging.getLogger("grpc")
    grpc_handler = _GrpcLines(debug=debug)
    propagate = logger.propagate, grpc_logger.propagate
    logger.addHandler(handler)
    grpc_logger.addHandler(grpc_handler)
    logger.propagate = grpc_logger.propagate = False
    try:
        yield
    finally:
        grpc_handler.flush_held()
        logger.removeHandler(handler)
        grpc_logger.removeHandler(grpc_handler)
        logger.propagate, grpc_logger.propagate = propagate


def build_parser() -> argparse.ArgumentParser:
    """The standalone ``kino-serve`` parser."""
    p = argparse.ArgumentParser(
        prog="kino-serve", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-V", "--version", action="version", version=f"kino-serve {__version__}")
    p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kino-serve``; return the exit code (0 ok, 1 kinodb or I/O error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return dispatch(args, error_prefix="kino-serve: ", usage_prefix="kino-serve: ", usage=parser)


def run_as_program(command: Callable[[], int]) -> NoReturn:
    """Run a console script's ``command`` and exit with its code; a server it runs then
    exits 0 after a stop, also when another SIGTERM or Ctrl-C arrives while it winds down."""
    global _exits_after
    _exits_after = True
    code = command()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the command's error handling restored Ctrl-C's
        signal.signal(sig, signal.SIG_IGN)
    if _threads_left:
        # The interpreter's exit joins the server's worker threads, and one that gRPC never
        # released would hold the process forever: end it without that join.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def entry() -> None:
    """Console-script entry point of ``kino-serve``."""
    run_as_program(main)


if __name__ == "__main__":
    entry()
