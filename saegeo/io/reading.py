"""Reading the files an SAE is made of, with one-line errors that name the file.

Every reader of :mod:`saegeo.io.formats` goes through these: JSON configs whose fields are
checked for type and range (:class:`Config`), safetensors files and their tensors, and
regular-file checks (a FIFO or a directory given as a file would block or crash a read).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saegeo.errors import FormatError
from saegeo.io.paths import regular_file

_MISSING = object()


def read_json_object(path: Path, what: str = "config file") -> dict[str, Any]:
    """The JSON object in ``path``; a FormatError naming the file for anything else."""
    regular_file(path, what=what)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
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


def require_tensors(
    weights: dict[str, torch.Tensor], keys: Iterable[str], source: Path
) -> dict[str, torch.Tensor]:
    """``weights`` after checking it holds floating-point tensors ``keys``."""
    missing = [k for k in keys if k not in weights]
    if missing:
        raise FormatError(f"{source}: missing tensors {missing} (found {sorted(weights)})")
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise FormatError(f"{source}: {key} is not a tensor")
        if key in keys and not (tensor.is_floating_point() and not tensor.is_complex()):
            raise FormatError(
                f"{source}: {key} has dtype {str(tensor.dtype).removeprefix('torch.')}; SAE "
                "weights must be real floating point (float16, bfloat16, float32, float64)"
            )
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

    def __init__(self, fields: dict[str, Any], source: Path | str) -> None:
        self.fields = fields
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value (no check)."""
        return self.fields.get(key, default)

    def _bad(self, key: str, expected: str, value: Any) -> FormatError:
        return FormatError(
            f"{self.source}: {key} must be {expected}, got {value!r}; fix the file or re-save "
            "the SAE"
        )

    def _value(self, key: str, default: Any) -> Any:
        value = self.fields.get(key, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise FormatError(f"{self.source}: missing required field {key!r}")
            return default
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, minimum: int | None = None
    ) -> int | None:
        """An integer field (booleans refused), optionally at least ``minimum``."""
        value = self._value(key, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        if minimum is not None and value < minimum:
            raise self._bad(key, f"an integer >= {minimum}", value)
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float | None = None) -> float:
        """A finite real number, optionally at least ``minimum``."""
        value = self._value(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self._bad(key, "a finite number", value)
        if minimum is not None and value < minimum:
            raise self._bad(key, f"a number >= {minimum}", value)
        return float(value)

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
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self._bad(key, expected, value)
        if check is not None and not check(value):
            raise self._bad(key, expected, value)
        return value
