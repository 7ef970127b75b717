"""The ``saegeo`` command line's arguments and set-up: every flag's value is range-checked as
it is parsed, so a bad value is one line naming the flag (``saegeo X: error: argument --k:
...``), and every command checks its outputs (:func:`guard`) before anything is computed."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from saegeo.errors import SaegeoError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``saegeo X: error: ...``) and exit 2,
    without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _number(text: str, convert: Callable[[str], float], kind: str) -> float:
    try:
        value = convert(text.strip())
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A type that accepts integers in [minimum, maximum].

    Examples
    --------
    >>> integer(1)("4")
    4
    >>> integer(1)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be >= 1, got 0
    """

    def parse(text: str) -> int:
        value = int(_number(text, int, "an integer"))
        _check_range(value, minimum, maximum)
        return value

    parse.__name__ = "integer"
    return parse


def real(
    minimum: float | None = None, maximum: float | None = None, *, above: bool = False
) -> Callable[[str], float]:
    """A type that accepts finite numbers in [minimum, maximum] (above ``minimum`` with
    ``above``).

    Examples
    --------
    >>> real(-1, 1)("0.7")
    0.7
    >>> real(0, above=True)("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number, got 'nan'
    """

    def parse(text: str) -> float:
        value = _number(text, float, "a number")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if above and minimum is not None and value <= minimum:
            raise argparse.ArgumentTypeError(f"must be > {minimum:g}, got {value:g}")
        _check_range(value, minimum, maximum)
        return value

    parse.__name__ = "number"
    return parse


def _check_range(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must lie in [{minimum:g}, {maximum:g}], got {value:g}")
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {value:g}")


def integer_list(text: str) -> tuple[int, ...]:
    """Comma-separated distinct positive integers, such as ``576,1152``.

    Examples
    --------
    >>> integer_list("576, 1152")
    (576, 1152)
    >>> integer_list("64,64")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: widths must be distinct, got '64,64'
    """
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 576,1152, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one width, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"widths must be distinct, got {text!r}")
    return values


def path(text: str) -> str:
    """A non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def device(text: str) -> str:
    """``auto``, ``cpu``, or a CUDA or MPS device that this machine has
    (:func:`saegeo.runtime.devices.resolve_device`'s rule).

    Examples
    --------
    >>> device("cpu")
    'cpu'
    >>> device("bogus")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: unknown device 'bogus'; use auto, cpu, cuda, cuda:N or mps
    """
    from saegeo.errors import ArgumentError
    from saegeo.runtime.devices import resolve_device

    try:
        resolve_device(text)
    except ArgumentError as exc:
        problem = exc.problem.replace("unknown device;", f"unknown device {text!r};")
        raise argparse.ArgumentTypeError(
            problem if problem.startswith("unknown") else f"{text}: {problem}"
        ) from None
    return text


# --------------------------------------------------------------------------- command set-up


def guard(
    args: argparse.Namespace,
    outputs: list[tuple[str | None, str, str]],
    inputs: Sequence[str | None],
    *,
    need_bytes: int = 0,
    hold: bool = True,
) -> None:
    """Check every output location (path, kind, flag) against the inputs before any computing,
    and (``hold``) claim it until the command ends (:func:`saegeo.runtime.claim.claim_output`):
    :func:`claim` then gives where to write it. Rank 0 alone claims, under torchrun."""
    from saegeo.runtime import distributed
    from saegeo.runtime.claim import claim_output
    from saegeo.runtime.outputs import Output, check_outputs

    force = getattr(args, "force", False)
    wanted = [Output.named(path, kind, flag) for path, kind, flag in outputs if path is not None]  # type: ignore[arg-type]
    check_outputs(wanted, list(inputs), force=force, need_bytes=need_bytes)
    if not hold or not distributed.is_main():
        return
    claims = vars(args).setdefault("claims", {})
    for out in wanted:
        if out.flag not in claims:  # args.held: the ExitStack saegeo.cli.main runs it in
            claims[out.flag] = args.held.enter_context(claim_output(out, force=force))


def claim(args: argparse.Namespace, flag: str = "--out") -> Any:
    """The claim :func:`guard` holds on the output of ``flag``: write at its ``path``, then
    :func:`commit` it. None where the command writes nothing there (the flag unset, or a rank
    other than 0 under torchrun)."""
    return getattr(args, "claims", {}).get(flag)


def commit(*claims: Any) -> None:
    """Put every claimed output in place, one after the other with nothing computed in between;
    where one cannot be (something appeared at its path), the others still are, and its error
    is raised at the end."""
    failed: Exception | None = None
    for held in claims:
        if held is None:
            continue
        try:
            held.commit()
        except SaegeoError as exc:
            failed = failed or exc
    if failed is not None:
        raise failed


def check_edge_threshold(args: argparse.Namespace) -> None:
    """Refuse a ``--threshold`` outside [-1, 1] for ``--metric decoder_cosine`` before any
    work (the check :func:`saegeo.feature_dag` makes)."""
    from saegeo.config import cosine_threshold

    if args.metric == "decoder_cosine" and args.threshold is not None:
        cosine_threshold(args.threshold)


def open_acts(args: argparse.Namespace) -> Any:
    """The activations of ``--acts`` (None without), NaN/Inf rows skipped with
    ``--skip-nonfinite``."""
    from saegeo.acts.store import ActivationStore

    if not args.acts:
        return None
    return ActivationStore.open(
        args.acts, nonfinite="skip" if getattr(args, "skip_nonfinite", False) else "error"
    )


def check_train_size(args: argparse.Namespace, widths: list[int], d_in: int) -> None:
    """Refuse widths whose weights cannot fit this machine's memory or disk."""
    from saegeo.runtime.memory import physical_memory

    # Training holds the weights, their gradients and two Adam moments of the widest member.
    needed = 4 * 8 * d_in * max(widths)
    memory = physical_memory()
    if memory is not None and needed > memory:
        raise SaegeoError(
            f"--widths {max(widths)}: training a width-{max(widths)} SAE on d_in={d_in} needs "
            f"about {needed / 2**30:.1f} GB, more than this machine's {memory / 2**30:.1f} GB"
        )
    weights = 8 * d_in * sum(widths)  # encoder and decoder, float32
    guard(args, [(args.out, "family", "--out")], [args.acts], need_bytes=weights, hold=False)


def add_common(p: argparse.ArgumentParser) -> None:
    """--device, --force and --skip-nonfinite, for the commands that read activations and write
    outputs."""
    p.add_argument(
        "--device", default="auto", type=device, help="torch device (default %(default)s)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a previous saegeo output of the same kind at the output paths",
    )
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="drop activation rows holding NaN or Inf (and report how many) instead of failing",
    )


def write_tree(args: argparse.Namespace, doc: str, page: str | None) -> None:
    """The JSON and the HTML page appear together, or neither does (rank 0 writes them)."""
    out, html = claim(args, "--out"), claim(args, "--html")
    if out is None:
        return
    out.path.write_text(doc, encoding="utf-8")
    if html is not None and page is not None:
        html.path.write_text(page, encoding="utf-8")
    commit(out, html)
