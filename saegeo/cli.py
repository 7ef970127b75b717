"""The ``saegeo`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from saegeo.errors import SaegeoError

EXIT_USER_ERROR = 2


def _cmd_info(args: argparse.Namespace) -> int:
    from saegeo.describe import describe_sae
    from saegeo.family import Family

    family = Family.load(args.paths)
    for sae in family:
        print(describe_sae(sae))
    if len(family) > 1:
        print(f"family: {len(family)} SAEs, widths {family.widths}, d_in {family.d_in}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saegeo.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saegeo",
        description="Geometry of features across SAE families: splitting, novel features, "
        "feature trees and Frankenstein SAEs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe SAEs: architecture, sizes, L0 settings, norms")
    p.add_argument("paths", nargs="+", help="SAE directories, or a directory of them")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="the whole pipeline on the packaged model and text")
    p.add_argument("--out", default="reports/demo", help="report directory (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SaegeoError as exc:
        print(f"saegeo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"saegeo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
