"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class SaegeoError(Exception):
    """A problem with the user's input: a file, an argument or a combination of them.

    The message names the file or argument, the problem, and what to do about it.
    """


class FormatError(SaegeoError):
    """A file exists but cannot be read as what it claims to be."""


class ShapeError(SaegeoError):
    """Tensors or SAEs whose shapes do not fit together."""


class ArgumentError(SaegeoError):
    """A bad value of one argument or configuration field, named as Python spells it.

    The message reads ``name=value: problem`` (``owner.name=value: problem`` for a field of a
    configuration class such as ``HarvestConfig``); the CLI shows the same error with the flag
    that sets ``name``.

    Examples
    --------
    >>> str(ArgumentError("max_tokens", 0, "must be at least 1", owner="HarvestConfig"))
    'HarvestConfig.max_tokens=0: must be at least 1'
    """

    def __init__(self, name: str, value: object, problem: str, *, owner: str | None = None):
        self.name = name
        """The argument or field."""
        self.value = value
        """Its value."""
        self.problem = problem
        """What is wrong and what to do."""
        self.owner = owner
        """The configuration class the field belongs to, if any."""
        where = f"{owner}.{name}" if owner else name
        super().__init__(f"{where}={value!r}: {problem}")


class InsufficientMemoryError(SaegeoError):
    """A computation would need more memory than is available; raised before allocating it.

    The message names the size needed, what is available, and the arguments that lower it
    (``lowers``, as Python spells them: ``{"solver": "'cg'", "limit": None}``); the CLI
    names the same options as flags (:meth:`message`).

    Examples
    --------
    >>> lowers = {"solver": "cg", "limit": None}
    >>> exc = InsufficientMemoryError("the refit", 3 * 2**30, 2**30, lowers)
    >>> str(exc)
    "the refit needs about 3.2 GB but 1.1 GB is available; lower it with solver='cg' or limit"
    >>> exc.message(flags=True)
    'the refit needs about 3.2 GB but 1.1 GB is available; lower it with --solver cg or --limit'
    """

    def __init__(
        self, what: str, needed: int, available: int, lowers: dict[str, str | None]
    ) -> None:
        self.what = what
        """The computation, e.g. ``"the exact refit of 56,120 features (a dense Gram)"``."""
        self.needed = int(needed)
        """Bytes it needs."""
        self.available = int(available)
        """Bytes available to it."""
        self.lowers = dict(lowers)
        """Arguments that lower the need, with the value to give (None: a smaller one)."""
        super().__init__(self.message())

    def message(self, *, flags: bool = False) -> str:
        """The one-line message, naming the options as flags (``--limit``) or arguments."""
        options = []
        for name, value in self.lowers.items():
            if flags:
                options.append(
                    f"--{name.replace('_', '-')}" + ("" if value is None else f" {value}")
                )
            else:
                options.append(name + ("" if value is None else f"={value!r}"))
        how = " or ".join([", ".join(options[:-1]), options[-1]] if len(options) > 1 else options)
        return (
            f"{self.what} needs about {_size(self.needed)} but {_size(self.available)} "
            f"is available; lower it with {how}"
        )


def _size(n_bytes: int) -> str:
    """``3.2 GB``, ``12.5 MB``: one decimal in the largest unit under which it is >= 1."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"
