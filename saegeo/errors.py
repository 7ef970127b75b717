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
