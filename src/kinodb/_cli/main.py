"""Entry point of ``kino``: argument parsing and the one error-to-exit-code table."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any, TextIO

from kinodb._version import __version__

# The subcommands' modules, in the order ``kino --help`` lists them. They are imported when
# the parser is built, inside `entry`'s Ctrl-C handling, not when the console script imports
# this module (which imports nothing but the standard library).
_COMMAND_MODULES = (
    "create_test", "info", "schema", "validate", "query", "ingest", "verify", "export", "merge", "mix",
    "upgrade", "stats", "serve", "infer", "bench",
)  # fmt: skip
_EXIT_INTERRUPTED = 130  # 128 + SIGINT, as `_errors.EXIT_INTERRUPTED` (not imported before `entry` runs)


def __getattr__(name: str) -> Any:
    """``COMMANDS``: the subcommands' modules, imported on first use."""
    if name == "COMMANDS":
        modules = tuple(importlib.import_module(f"kinodb._cli.{m}") for m in _COMMAND_MODULES)
        globals()["COMMANDS"] = modules
        return modules
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _commands_registered() -> tuple[ModuleType, ...]:
    """``COMMANDS`` as it stands (a caller may have set it), imported on first use."""
    modules: tuple[ModuleType, ...] | None = globals().get("COMMANDS")
    return modules if modules is not None else tuple(__getattr__("COMMANDS"))


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is an error of its own.

    argparse hands a subcommand's unknown arguments back to the top-level parser, which
    would print ``kino``'s usage instead of the subcommand's.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """The ``kino`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kino", description="kinodb: robot-learning datasets in one .kdb file"
    )
    parser.add_argument("-V", "--version", action="version", version=f"kino {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True
    for module in _commands_registered():
        module.register(sub)
    for command in _commands(parser):
        if "--debug" not in command._option_string_actions:
            # SUPPRESS: without the option here, the top-level value (before COMMAND) stands
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="print tracebacks on errors")  # fmt: skip
    return parser


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand's parser, nested ones (``kino infer run``) included, each once."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for p in (command, *_commands(command)):
                    found.setdefault(id(p), p)
    return list(found.values())


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a Python warning as one ``warning: MESSAGE`` line on stderr, as errors print:
    the source file, line number and code line that Python adds are for developers."""
    print(f"warning: {' '.join(str(message).split()) or category.__name__}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kino``; return the exit code (0 ok, 1 kinodb or I/O error, 2 usage, 130 Ctrl-C).

    Warnings raised while a command runs print as ``warning: ...`` lines (`show_warning`);
    a command that records warnings itself (``warnings.catch_warnings(record=True)``) still
    gets them.
    """
    from kinodb._cli._errors import dispatch

    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = show_warning
        args = build_parser().parse_args(argv)
        return dispatch(args, error_prefix="", usage_prefix=f"kino {args.command}: ")


def entry() -> None:
    """Console-script entry point (``kino serve`` exits as ``kino-serve`` does).

    Ctrl-C while the subcommands' modules import or the arguments are parsed (before
    `main`'s own handling takes over) ends ``kino`` as it ends a command: one line and
    exit code 130, no traceback (``--debug`` adds it). While the modules import it is held
    (`_ctrl_c_held`) and taken once they have.
    """
    try:
        with _ctrl_c_held():
            _redeliver_interrupts()
            from kinodb._cli import serve

            _commands_registered()
        serve.run_as_program(main)
    except KeyboardInterrupt as exc:
        _interrupted(exc)


def serve_entry() -> None:
    """Console-script entry point of ``kino-serve``, with `entry`'s handling of an early Ctrl-C."""
    try:
        with _ctrl_c_held():
            _redeliver_interrupts()
            from kinodb._cli import serve
        serve.run_as_program(serve.main)
    except KeyboardInterrupt as exc:
        _interrupted(exc, "kino-serve")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (block SIGINT) while the program's modules import; one that arrives
    meanwhile is raised as the block ends.

    Raised inside an import, the interrupt could be turned into another error or dropped
    by the code around it: Python wraps what a class attribute's ``__set_name__`` raises
    in a RuntimeError, and a library that tries an optional import goes on without it
    when that import fails, so the program would run on as if never interrupted.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a held Ctrl-C is raised once unblocked


def _redeliver_interrupts() -> None:
    """Make `sys.unraisablehook` send again a Ctrl-C (or SIGTERM, SIGHUP) that Python would
    print as "Exception ignored" and drop because it landed in a weakref callback or a
    ``__del__`` (the import system runs one while modules import): a moment later it
    reaches the signal's handler again, in the main thread, where `entry` or the command's
    own handling takes it. Anything else goes to the hook set before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not isinstance(exc, KeyboardInterrupt):
            previous(unraisable)
            return
        signum = getattr(exc, "signum", None)  # SIGTERM or SIGHUP, raised as Ctrl-C is
        _send_again(signal.Signals(signum if isinstance(signum, int) else signal.SIGINT))

    sys.unraisablehook = hook


def _send_again(signum: signal.Signals) -> None:
    """Run ``signum``'s handler in the main thread a moment from now, not in the current
    frame (raised in the unraisable hook, it would be dropped again). The timer is SIGALRM
    where it is free (arming it takes no lock; the import system holds its own here),
    else a thread."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread:
        _thread.interrupt_main(signum)  # the main thread runs the handler, not this one
        return
    if hasattr(signal, "setitimer") and signal.getsignal(signal.SIGALRM) is signal.SIG_DFL:

        def on_alarm(_: int, frame: Any) -> None:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        return
    threading.Timer(0.005, _thread.interrupt_main, (signum,)).start()


def _interrupted(exc: KeyboardInterrupt, program: str = "kino") -> None:
    """Say that ``program`` was interrupted before its command ran, and exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the message
    with contextlib.suppress(OSError):  # stderr may be gone
        if "--debug" in sys.argv[1:]:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"{program}: interrupted", file=sys.stderr)
    signum = getattr(exc, "signum", None)  # SIGTERM or SIGHUP, raised as Ctrl-C is
    sys.exit(128 + signum if isinstance(signum, int) else _EXIT_INTERRUPTED)


if __name__ == "__main__":
    entry()
