"""The ``saegeo`` command line. User errors print one line and exit with code 2.

:mod:`saegeo.cli.parser` declares the subcommands and flags (:mod:`saegeo.cli.args` holds the
flag types and output guards), :mod:`saegeo.cli.commands` runs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from saegeo.cli.parser import build_parser
from saegeo.errors import ArgumentError, SaegeoError

__all__ = ["EXIT_USER_ERROR", "build_parser", "flag_message", "main"]

EXIT_USER_ERROR = 2
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
    return f"{flag} {exc.value}: {exc.problem}"


def main(argv: Sequence[str] | None = None) -> int:
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
    try:
        return int(args.func(args) or 0)
    except SaegeoError as exc:
        from saegeo.io.store import NonFiniteError

        message = (
            exc.message("pass --skip-nonfinite to drop such rows")
            if isinstance(exc, NonFiniteError)
            else flag_message(exc, args.parser)
        )
        print(f"saegeo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"saegeo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
