"""Old public names kept as aliases of their new ones, warning once per use.

A renamed function keeps working under its old name through :func:`renamed`; a renamed
constant through :func:`module_aliases`, which builds the module's ``__getattr__``. Both warn
with a :class:`FutureWarning` (shown by default, in scripts and notebooks alike) that names
the replacement.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in a future release; use {new} instead.",
        FutureWarning,
        stacklevel=3,
    )


def renamed(new: F, old: str) -> F:
    """``new`` under its former name ``old``: the same call, with a :class:`FutureWarning`.

    Parameters
    ----------
    new
        The function under its current name.
    old
        The former name, as users wrote it.

    Returns
    -------
    Callable
        A wrapper of ``new`` named ``old`` that warns on every call.

    Examples
    --------
    >>> import warnings
    >>> def total(xs):
    ...     return sum(xs)
    >>> old_total = renamed(total, "old_total")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old_total([1, 2])
    3
    >>> caught[0].category.__name__
    'FutureWarning'
    """

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        _warn(old, new.__name__)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{new.__module__}.{new.__name__}`."
    return alias  # type: ignore[return-value]


def module_aliases(module: str, aliases: Mapping[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name's value with a :class:`FutureWarning`.

    Parameters
    ----------
    module
        The module's ``__name__``, for the error on any other missing name.
    aliases
        Old name → (new name, value).

    Returns
    -------
    Callable
        The function to assign to the module's ``__getattr__``.
    """

    def module_getattr(name: str) -> Any:
        if name in aliases:
            new, value = aliases[name]
            _warn(name, new)
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return module_getattr
