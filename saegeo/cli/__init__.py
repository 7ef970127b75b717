"""The ``saegeo`` command line. User errors print one line and exit with code 2.

:mod:`saegeo.cli.parser` declares the subcommands and flags (:mod:`saegeo.cli.args` holds the
flag types and output guards), :mod:`saegeo.cli.commands` runs them.

Under ``torchrun`` (its variables RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR set), ``main``
starts the process group (NCCL on CUDA, else gloo) and ends it on return. Every rank runs the
command; statistics over tokens are split across ranks (:mod:`saegeo.io.distributed`), rank 0
alone prints, shows progress and writes outputs (``harvest``: each rank writes its shards of the
one store, rank 0 its ``meta.json``). At the end every rank agrees on the outcome:
an error on any rank ends all of them with exit code 2 and rank 0 prints that rank's one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from saegeo.cli.parser import build_parser
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.io import distributed

__all__ = ["EXIT_USER_ERROR", "build_parser", "flag_message", "main"]

EXIT_USER_ERROR = 2
# Commands whose work is split across torchrun's ranks; the others run on one process.
DISTRIBUTED_COMMANDS = frozenset({"info", "classify", "tree", "stitch", "train", "harvest"})
# Library arguments that a flag of another name sets (the others are spelt alike: max_tokens
# is --tokens, sgd_tokens is --sgd-tokens).
FLAG_NAMES = {"max_tokens": "--tokens", "texts": "--text"}


def flag_message(exc: SaegeoError, parser: argparse.ArgumentParser) -> str:
    """The error's message, with the flag that sets the argument it names (``--tokens 0: ...``
    for ``HarvestConfig.max_tokens=0: ...``) where the command's ``parser`` has one."""
    if not isinstance(exc, ArgumentError):
        return str(exc)
    flag = FLAG_NAMES.get(exc.name, "--" + exc.name.replace("_", "-"))
    if flag not in {option for action in parser._actions for option in action.option_strings}:
        return str(exc)
    shown = "" if exc.value is None else f" {exc.value}"  # a flag left out reads as itself
    return f"{flag}{shown}: {exc.problem}"


def main(argv: Sequence[str] | None = None) -> int:
    started = distributed.init_from_env()
    try:
        with contextlib.ExitStack() as stack:
            if not distributed.is_main():
                stack.enter_context(contextlib.redirect_stdout(open(os.devnull, "w")))  # noqa: SIM115
            return _main(argv)
    finally:
        if started:
            distributed.destroy()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
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
        code = int(args.func(args) or 0)
    except distributed.PeerError as exc:
        # Another rank failed; every rank already holds its message.
        return _fail(args, str(exc))
    except SaegeoError as exc:
        from saegeo.io.store import NonFiniteError

        message = (
            exc.message("pass --skip-nonfinite to drop such rows")
            if isinstance(exc, NonFiniteError)
            else flag_message(exc, args.parser)
        )
    except KeyboardInterrupt:
        print(f"saegeo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug: release the other ranks with one line, then show this rank's traceback.
        distributed.agree_on_error(f"rank {distributed.rank()}: {type(exc).__name__}: {exc}")
        raise
    message = distributed.agree_on_error(message)
    return code if message is None else _fail(args, message)


def _fail(args: argparse.Namespace, message: str) -> int:
    """Print the one-line error (rank 0 only, under torchrun) and give the exit code."""
    if distributed.is_main():
        print(f"saegeo {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
