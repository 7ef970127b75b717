"""The ``saegeo`` command line. User errors print one line and exit with code 2.

:mod:`saegeo.cli.parser` declares the subcommands and flags (:mod:`saegeo.cli.args` holds the
flag types and output guards), :mod:`saegeo.cli.commands` runs them.

Each command claims its outputs when it starts and puts them in place at the end
(:mod:`saegeo.runtime.claim`). SIGINT, SIGTERM and SIGHUP end a command alike: its temporaries and
claims are removed, what it replaces stays as it was, one line says so, and the exit code is
128 + the signal's number (130, 143, 129).

Under ``torchrun`` (its variables RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR set), ``main``
starts the process group (NCCL on CUDA, else gloo) and ends it on return. Every rank runs the
command; statistics over tokens are split across ranks (:mod:`saegeo.runtime.distributed`), rank 0
alone prints, shows progress and writes outputs (``harvest``: each rank writes its shards of the
one store, rank 0 its ``meta.json``). At the end every rank agrees on the outcome:
an error on any rank ends all of them with exit code 2 and rank 0 prints that rank's one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from saegeo.cli.options import flag_of
from saegeo.cli.parser import COMMANDS, build_parser
from saegeo.errors import ArgumentError, InsufficientMemoryError, SaegeoError

__all__ = ["EXIT_USER_ERROR", "build_parser", "flag_message", "main"]

EXIT_USER_ERROR = 2
# Commands whose work is split across torchrun's ranks; the others run on one process.
DISTRIBUTED_COMMANDS = frozenset({"info", "classify", "tree", "stitch", "train", "harvest"})
# Commands that keep what they finished and resume from it.
RESUMING_COMMANDS = frozenset({"harvest", "demo"})
# Signals that end a command as Ctrl-C does (SIGHUP: the terminal closed).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised where the program runs so that every ``finally`` block cleans up
    (a KeyboardInterrupt, so code that handles Ctrl-C handles all of them alike)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        """The signal's number."""


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (and SIGINT) raise :class:`Interrupted`, unless
    they are ignored; the previous handlers come back after it (main thread only: signals are
    delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from saegeo.runtime import claim

    caught: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        if not caught:  # a second signal would cut short the cleaning up of the first
            caught.append(signum)
            claim.interrupt(Interrupted(signum))  # once an output being renamed is in place

    # A signal ignored when saegeo started stays ignored (nohup's SIGHUP, SIGINT of a job
    # started in the background by a script).
    previous = {
        signum: signal.signal(signum, interrupt)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def flag_message(exc: SaegeoError, parser: argparse.ArgumentParser) -> str:
    """The error's message, with the flag that sets the argument it names (``--tokens 0: ...``
    for ``HarvestConfig.max_tokens=0: ...``) where the command's ``parser`` has one."""
    if isinstance(exc, InsufficientMemoryError):
        return exc.message(flags=True)
    if not isinstance(exc, ArgumentError):
        return str(exc)
    flag = flag_of(exc.name)
    if flag not in {option for action in parser._actions for option in action.option_strings}:
        return str(exc)
    shown = "" if exc.value is None else f" {exc.value}"  # a flag left out reads as itself
    return f"{flag}{shown}: {getattr(exc, 'cli_problem', exc.problem)}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the command given gets its flags, so that nothing else of the library is loaded.
    command = next((arg for arg in argv if arg in COMMANDS), "")
    if not command:
        # --help or a mistake: argparse answers without loading the library (or torch).
        return _main(argv, command="")
    from saegeo.runtime import distributed

    started = distributed.init_from_env()
    try:
        with contextlib.ExitStack() as stack:
            if not distributed.is_main():
                stack.enter_context(contextlib.redirect_stdout(open(os.devnull, "w")))  # noqa: SIM115
            return _main(argv, command=command)
    finally:
        if started:
            distributed.destroy()


def _main(argv: Sequence[str], command: str | None = None) -> int:
    parser = build_parser(command)
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    if unknown:
        print(
            f"saegeo {args.command}: error: unrecognized arguments: {' '.join(unknown)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    from saegeo.runtime import distributed

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    code, message = 0, None
    try:
        if distributed.is_distributed() and args.command not in DISTRIBUTED_COMMANDS:
            raise SaegeoError(
                f"saegeo {args.command} runs on one process; launch it without torchrun"
            )
        # args.held: what the command claims (its outputs), released however it ends.
        with stop_signals(), contextlib.ExitStack() as args.held:
            code = int(args.func(args) or 0)
    except distributed.PeerError as exc:
        # Another rank failed; every rank already holds its message.
        return _fail(args, str(exc))
    except SaegeoError as exc:
        from saegeo.acts.store import NonFiniteError

        message = (
            exc.message("pass --skip-nonfinite to drop such rows")
            if isinstance(exc, NonFiniteError)
            else flag_message(exc, args.parser)
        )
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        resumes = " (run it again to resume)" if args.command in RESUMING_COMMANDS else ""
        print(
            f"saegeo {args.command}: interrupted by {signal.Signals(signum).name}; no output "
            f"was left half-written{resumes}",
            file=sys.stderr,
        )
        return 128 + signum
    except Exception as exc:
        from saegeo.runtime.atomic import resource_problem

        problem = resource_problem(exc)  # from a write outside saegeo's writers
        if problem is None:
            # A bug: release the other ranks with one line, then show this rank's traceback.
            distributed.agree_on_error(f"rank {distributed.rank()}: {type(exc).__name__}: {exc}")
            raise
        where = getattr(exc, "filename", None) or "a write"
        message = f"{where}: {problem}; free space or write elsewhere"
    message = distributed.agree_on_error(message)
    return code if message is None else _fail(args, message)


def _fail(args: argparse.Namespace, message: str) -> int:
    """Print the one-line error (rank 0 only, under torchrun) and give the exit code."""
    from saegeo.runtime import distributed

    if distributed.is_main():
        print(f"saegeo {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
