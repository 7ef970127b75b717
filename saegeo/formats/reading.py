"""Reading the files an SAE is made of, with one-line errors that name the file.

Every reader of :mod:`saegeo.formats.sae_files` goes through these: JSON configs whose fields are
checked for type and range (:class:`Config`), safetensors files and their tensors, and
regular-file checks (a FIFO or a directory given as a file would block or crash a read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from saegeo.errors import FormatError
from saegeo.formats import fields
from saegeo.runtime.paths import regular_file

_MISSING = object()


def read_json_object(path: Path, what: str = "config file") -> dict[str, Any]:
    """The JSON object in ``path``; a FormatError naming the file for anything else."""
    regular_file(path, what=what)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also integers of >4300 digits
        raise FormatError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to read") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by name."""
    regular_file(path, what="weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several error types on damaged files
        raise FormatError(
            f"{path}: unreadable safetensors file ({exc}); re-save or re-download it"
        ) from None


WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The dtypes of weights saegeo computes with; any other is refused by name."""


def check_weight_dtype(array: torch.Tensor | np.ndarray, key: str, source: Path | str) -> None:
    """Refuse ``array`` (a tensor or numpy array of the file ``source``) unless it is one of
    :data:`WEIGHT_DTYPES`: float8, integers, complex numbers and strings are named, not cast."""
    name = str(array.dtype).removeprefix("torch.")
    if name not in WEIGHT_DTYPES:
        raise FormatError(
            f"{source}: {key} has dtype {name}; SAE weights must be "
            f"{', '.join(WEIGHT_DTYPES)} (convert the file, e.g. with torch's .float())"
        )


def require_tensors(
    weights: dict[str, torch.Tensor], keys: Iterable[str], source: Path
) -> dict[str, torch.Tensor]:
    """``weights`` after checking it holds tensors ``keys`` of a weight dtype."""
    keys = list(keys)
    missing = [k for k in keys if k not in weights]
    if missing:
        raise FormatError(f"{source}: missing tensors {missing} (found {sorted(weights)})")
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise FormatError(f"{source}: {key} is not a tensor")
        if key in keys:
            check_weight_dtype(tensor, key, source)
    return weights


class Config:
    """Typed access to the fields of a JSON config, each error naming the file and field.

    Examples
    --------
    >>> cfg = Config({"d_in": 4, "k": True}, "cfg.json")
    >>> cfg.integer("d_in", minimum=1)
    4
    >>> cfg.integer("k")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    saegeo.errors.FormatError: cfg.json: k must be an integer, got True; fix the file or re-save...
    """

    def __init__(self, fields: dict[str, Any], source: str | os.PathLike[str]) -> None:
        self.fields = fields
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value (no check)."""
        return self.fields.get(key, default)

    def _bad(self, key: str, expected: str, value: Any) -> FormatError:
        return fields.bad_field(self.source, key, expected, value)

    def _value(self, key: str, default: Any) -> Any:
        value = self.fields.get(key, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise FormatError(f"{self.source}: missing required field {key!r}")
            return default
        return value

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int = fields.MAX_SIZE,
    ) -> int | None:
        """An integer field (booleans refused) in ``[minimum, maximum]`` (see
        :func:`saegeo.formats.fields.integer`); None only when ``default`` is None."""
        value = self._value(key, default)
        if value is None:
            return None
        return fields.integer(
            value, field=key, source=self.source, minimum=minimum, maximum=maximum
        )

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> float | None:
        """A finite real number in the given range (see :func:`saegeo.formats.fields.number`);
        None only when ``default`` is None."""
        value = self._value(key, default)
        if value is None:
            return None
        return fields.number(
            value,
            field=key,
            source=self.source,
            minimum=minimum,
            maximum=maximum,
            exclusive_minimum=exclusive_minimum,
        )

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        """A JSON boolean (the strings "true"/"false" are refused, not read as truthy)."""
        value = self._value(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def string(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] = ()) -> str:
        """A string, optionally one of ``choices``."""
        value = self._value(key, default)
        allowed = tuple(choices)
        if not isinstance(value, str) or (allowed and value not in allowed):
            expected = f"one of {', '.join(allowed)}" if allowed else "a string"
            raise self._bad(key, expected, value)
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object field; missing or null gives ``{}``."""
        value = self._value(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "a JSON object", value)
        return value

    def int_list(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        check: Callable[[list[int]], bool] | None = None,
        expected: str = "a list of integers",
    ) -> list[int] | None:
        """A list of integers (or None), optionally passing ``check``."""
        value = self._value(key, default)
        if value is None:
            return None
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) or abs(v) > fields.MAX_SIZE for v in value
        ):
            raise self._bad(key, expected, value)
        if check is not None and not check(value):
            raise self._bad(key, expected, value)
        return value
