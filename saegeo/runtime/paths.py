"""Input paths: files are read only when they are regular files.

A FIFO, a socket or a device given where saegeo expects a file would block a read forever or
stream without end; these checks turn that into an error naming the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from saegeo.errors import FormatError


def regular_file(path: str | os.PathLike[str], *, what: str = "file") -> Path:
    """``path`` as a Path if it is a regular file (or a link to one); raise otherwise.

    Parameters
    ----------
    path
        The file to check.
    what
        What the file is, for the message (``"cfg.json"``, ``"activations"``).

    Raises
    ------
    FormatError
        ``path`` is missing, a directory, or not a regular file (a FIFO, socket or device).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     regular_file(f.name) == Path(f.name)
    True
    >>> regular_file("/")
    Traceback (most recent call last):
    ...
    saegeo.errors.FormatError: /: expected a file, found a directory
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FormatError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise FormatError(f"{path}: expected a {what}, found a directory")
    if not stat.S_ISREG(mode):
        raise FormatError(
            f"{path}: not a regular file (a FIFO, socket or device); saegeo reads the {what} "
            "only from a regular file"
        )
    return path
