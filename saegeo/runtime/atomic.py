"""Atomic writes: output appears under its final name complete, or not at all.

Temporary files and directories are made beside their final name (``.NAME.xxxxxxxx.tmp``, the
name shortened and hashed where that would pass the file system's limit), given the usual mode
(``0666``/``0777`` less the umask, or the mode of the output they replace) before the rename,
and removed whenever the block fails. A write that fails for want of space or quota is a
:class:`~saegeo.errors.SaegeoError` naming the path (:func:`disk_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saegeo.errors import SaegeoError

RESOURCE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file grew larger than the file system allows",
    errno.EROFS: "the file system is read-only",
}
"""Errors of writing that only space elsewhere (or freed) can solve."""
# How libraries that do not raise OSError (safetensors, torch.save) report a full disk.
FULL_DISK_TEXTS = ("No space left on device", "os error 28", "file write failed")
NAME_MAX = 255


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    with _deferred_file(path) as (tmp, final):
        yield tmp
        if tmp.exists():
            usual_mode(tmp, like=final)  # mkstemp makes 0600
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it in for ``path`` if the block succeeds.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    final = Path(os.path.abspath(path))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        with disk_errors(final):
            yield tmp
        usual_mode(tmp, like=final)  # mkdtemp makes 0700
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(final), suffix=".old", dir=final.parent))
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # the previous output stays where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_prefix(final: Path) -> str:
    """``.NAME.``, the prefix of temporary names beside ``final``, short enough that the
    temporary name (with mkstemp's eight characters and a four-character suffix) fits the
    file system's limit on a name's length.

    Examples
    --------
    >>> temp_prefix(Path("out/table.csv"))
    '.table.csv.'
    >>> len(temp_prefix(Path("x" * 255)).encode())
    241
    """
    prefix = f".{final.name}."
    room = NAME_MAX - 8 - 6
    if len(os.fsencode(prefix)) <= room:
        return prefix
    digest = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:12]
    head = os.fsencode(final.name)[: room - len(digest) - 3].decode("utf-8", errors="ignore")
    return f".{head}-{digest}."


def usual_mode(path: Path, *, like: Path | None = None) -> None:
    """Give ``path`` the mode of ``like`` where that exists (so replacing an output keeps its
    permissions), else the usual mode of a new file or directory: 0666 or 0777 less the umask.
    """
    try:
        mode = stat.S_IMODE(like.stat().st_mode) if like is not None else None
    except OSError:
        mode = None
    if mode is None:
        mode = (0o777 if path.is_dir() else 0o666) & ~_umask()
    os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ResourceError(SaegeoError):
    """A write failed for want of space, quota or a writable file system."""

    def __init__(self, where: str, problem: str) -> None:
        self.problem = problem
        """What ran out."""
        super().__init__(f"{where}: {problem}; free space or write elsewhere")


def resource_problem(exc: BaseException) -> str | None:
    """What ran out, where ``exc`` is a failed write for want of space, quota or a writable file
    system; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRORS:
        return RESOURCE_ERRORS[exc.errno]
    if isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
        text = str(exc)
        if any(part in text for part in FULL_DISK_TEXTS):
            return RESOURCE_ERRORS[errno.ENOSPC]
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike[str], *, where: str | None = None) -> Iterator[None]:
    """Turn a write that fails for want of space (or quota, or a writable file system) into a
    :class:`ResourceError` naming ``path`` (or ``where``: ``--out PATH``); the outermost of
    nested blocks names it, so a user sees the output they asked for, not a temporary.

    Examples
    --------
    >>> try:
    ...     with disk_errors("out.csv"):
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ... except ResourceError as exc:
    ...     print(exc)
    out.csv: no space left on the device; free space or write elsewhere
    """
    try:
        yield
    except Exception as exc:
        problem = exc.problem if isinstance(exc, ResourceError) else resource_problem(exc)
        if problem is None:
            raise
        raise ResourceError(where or os.fspath(path), problem) from None


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path.

    NaN and infinite floats, which JSON cannot hold, are written as ``null`` (a missing value).
    """
    text = json_text(obj, indent=indent)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (NaN and infinities as ``null``), newline-terminated.

    Examples
    --------
    >>> json_text({"mse": float("nan"), "l0": [1.5, float("inf")]}, indent=None)
    '{"mse": null, "l0": [1.5, null]}\\n'
    """
    return json.dumps(finite_or_null(obj), indent=indent, allow_nan=False) + "\n"


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths``; if the block succeeds, rename them all
    onto their final names, one after the other, with nothing left to compute in between.

    Nothing appears under a final name unless every file was written.
    """
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_deferred_file(path)) for path in paths]
        yield [tmp for tmp, _ in temps]
        for tmp, final in temps:
            if tmp.exists():
                usual_mode(tmp, like=final)
        for tmp, final in temps:
            os.replace(tmp, final)


@contextlib.contextmanager
def _deferred_file(path: str | os.PathLike[str]) -> Iterator[tuple[Path, Path]]:
    """A temporary file beside ``path`` and the final path; the temporary file is removed at
    the end unless the block moved it into place."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_errors(final):
            yield tmp, final
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
