"""What the configuration dataclasses (TrainConfig, StitchConfig, HarvestConfig) and the
functions that check their own arguments share: how a bad value is reported, and the checks
of the values many of them take (a cosine threshold, a count, a choice)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar

import numpy as np

from saegeo.errors import ArgumentError

C = TypeVar("C")


def override(config: C, overrides: dict[str, Any]) -> C:
    """``dataclasses.replace(config, **overrides)``; an unknown name raises an ArgumentError.

    Functions that take a configuration also take its fields as keywords, which override it.
    """
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    for name, value in overrides.items():
        if name not in names:
            raise ArgumentError(
                name,
                value,
                f"not an argument; {type(config).__name__} has {', '.join(sorted(names))}",
            )
    return dataclasses.replace(config, **overrides) if overrides else config  # type: ignore[type-var]


def fail(config: object, name: str, problem: str) -> NoReturn:
    """Raise the ArgumentError of field ``name`` of ``config``."""
    raise ArgumentError(name, getattr(config, name), problem, owner=type(config).__name__)


def cosine_threshold(value: object, name: str = "threshold", *, owner: str | None = None) -> float:
    """``value`` as a cosine threshold: a finite number in [-1, 1], else an ArgumentError.

    Examples
    --------
    >>> cosine_threshold(0.7)
    0.7
    >>> cosine_threshold(1.5)
    Traceback (most recent call last):
    ...
    saegeo.errors.ArgumentError: threshold=1.5: must be a cosine in [-1, 1]
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not -1.0 <= float(value) <= 1.0  # NaN fails this too
    ):
        raise ArgumentError(name, value, "must be a cosine in [-1, 1]", owner=owner)
    return float(value)


def check_choice(
    name: str, value: object, choices: Iterable[object], *, owner: str | None = None
) -> None:
    """Raise the ArgumentError of ``name`` unless ``value`` is one of ``choices`` (the values of
    a ``Literal``, a table's keys...).

    Examples
    --------
    >>> check_choice("topk", "both", ("reencode", "jumprelu"))
    Traceback (most recent call last):
    ...
    saegeo.errors.ArgumentError: topk='both': must be one of 'reencode', 'jumprelu'
    """
    allowed = tuple(choices)
    if not any(_same(value, choice) for choice in allowed):
        listed = ", ".join(repr(choice) for choice in allowed)
        raise ArgumentError(name, value, f"must be one of {listed}", owner=owner)


def _same(value: object, choice: object) -> bool:
    try:
        return value is choice or bool(value == choice)
    except (TypeError, ValueError):  # an array compared elementwise, say
        return False


def check_count(
    name: str, value: object, *, minimum: int = 1, optional: bool = False, owner: str | None = None
) -> None:
    """Raise the ArgumentError of ``name`` unless ``value`` is an integer >= ``minimum`` (or
    None, where ``optional``): the rule of every size argument (``batch_size``, ``limit``,
    ``k``, ``points``...).

    Examples
    --------
    >>> check_count("batch_size", 0)
    Traceback (most recent call last):
    ...
    saegeo.errors.ArgumentError: batch_size=0: must be an integer >= 1
    """
    if value is None and optional:
        return
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ArgumentError(name, value, f"must be {allowed}", owner=owner)
