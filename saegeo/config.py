"""What the configuration dataclasses (TrainConfig, StitchConfig, HarvestConfig) share."""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn, TypeVar

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
