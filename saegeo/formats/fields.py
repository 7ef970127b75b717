"""Numeric fields read from files: one check of type, finiteness and range for all of them.

Every number saegeo takes from a config, a store's ``meta.json`` or a registry entry goes
through :func:`integer` or :func:`number` (usually through :class:`saegeo.formats.reading.Config`),
so a value of the wrong type, NaN, an infinity (JSON's ``1e999`` reads as one) or a size no
machine could hold is one :class:`~saegeo.errors.FormatError` naming the file and the field,
never a crash further on. Version strings are read by :func:`version`, which bounds their
numbers too.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from saegeo.errors import FormatError

MAX_SIZE = 2**40
"""The largest size (``d_in``, widths, ``k``, token counts) a file may declare: about 10¹²,
beyond any SAE or activation store, and small enough that products of two sizes stay exact."""
SHOWN_CHARS = 60
"""How much of a bad value an error message quotes."""
_VERSION_RE = re.compile(r"\s*v?(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?")


def shown(value: Any) -> str:
    """``repr(value)``, cut after its first :data:`SHOWN_CHARS` - 1 characters.

    >>> shown("9" * 100)[-20:]
    '99… (102 characters)'
    """
    if isinstance(value, int) and value.bit_length() > 3 * SHOWN_CHARS:  # repr may refuse it
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 1]}… ({len(text)} characters)"


def bad_field(source: str | os.PathLike[str], field: str, expected: str, value: Any) -> FormatError:
    """The error for a field of ``source`` that is not ``expected``."""
    return FormatError(
        f"{source}: {field} must be {expected}, got {shown(value)}; fix the file or re-save it"
    )


def integer(
    value: Any,
    *,
    field: str,
    source: str | os.PathLike[str],
    minimum: int | None = None,
    maximum: int = MAX_SIZE,
) -> int:
    """``value`` as an int in ``[minimum, maximum]``; a float with an integral value counts.

    Booleans, strings, non-integral and non-finite floats are refused.

    >>> integer(4.0, field="d_in", source="cfg.json", minimum=1)
    4
    >>> integer(1e308, field="d_in", source="cfg.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    saegeo.errors.FormatError: cfg.json: d_in must be an integer <= 1099511627776, got 1e+308; ...
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        if abs(value) > maximum:
            raise bad_field(source, field, f"an integer <= {maximum}", value)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(source, field, "an integer", value)
    if minimum is not None and value < minimum:
        raise bad_field(source, field, f"an integer >= {minimum}", value)
    if value > maximum:
        raise bad_field(source, field, f"an integer <= {maximum}", value)
    return value


def number(
    value: Any,
    *,
    field: str,
    source: str | os.PathLike[str],
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """``value`` as a finite float in the given range (``> minimum`` when exclusive).

    >>> number(2, field="expansion_factor", source="cfg.json", minimum=0, exclusive_minimum=True)
    2.0
    >>> number(float("nan"), field="lr", source="cfg.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    saegeo.errors.FormatError: cfg.json: lr must be a finite number, got nan; ...
    """
    low = "" if minimum is None else (f" > {minimum}" if exclusive_minimum else f" >= {minimum}")
    high = "" if maximum is None else f" <= {maximum}"
    expected = "a finite number" + (low + (" and" if low and high else "") + high)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_field(source, field, expected, value)
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        raise bad_field(source, field, expected, value) from None
    if not math.isfinite(result):
        raise bad_field(source, field, expected, value)
    if minimum is not None and (result <= minimum if exclusive_minimum else result < minimum):
        raise bad_field(source, field, expected, value)
    if maximum is not None and result > maximum:
        raise bad_field(source, field, expected, value)
    return result


def version(value: Any, *, field: str, source: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a version string such as ``"6.5.0"`` or ``"6.0.0-rc.0"``.

    >>> version("6.0.0-rc.0", field="sae_lens_version", source="cfg.json")
    (6, 0, 0)
    """
    match = _VERSION_RE.match(value) if isinstance(value, str) else None
    if match is None or len(value) > 100:
        raise bad_field(source, field, "a version string such as '6.5.0'", value)
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major, minor, patch
