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
