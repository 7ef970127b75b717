"""Claiming an output: held from the start of the work, put in place only where nothing else is.

:func:`claim_output` checks an output location (:mod:`saegeo.runtime.outputs`), then holds it for
the length of a ``with`` block:

- a lock file beside it (``.NAME.saegeo-lock``, made exclusively, holding the process id) keeps
  a second saegeo writer off the same path until the first is done; a lock left by a process
  that no longer runs (killed) is taken over, with the temporaries it left;
- the writer writes into :attr:`OutputClaim.temp`, a temporary file or directory beside the
  output, which :meth:`OutputClaim.commit` renames onto the output. The rename refuses to
  replace anything the claim did not find there when it started: a file or directory that
  appeared at the path meanwhile, or a previous output that changed or gained files saegeo did
  not write, stays, and the result is kept beside it (``NAME.saegeo-new``, or
  ``STEM.saegeo-new.SUFFIX`` for a file), named in the error;
- replacing a previous saegeo output (``force``) moves it aside, puts the new one in place,
  and then deletes only the files that saegeo wrote there;
- whatever ends the block early (an error, an interrupt, a signal that the command line turns
  into one) removes the temporary and the lock.

Outputs of the kinds a command resumes (a store, the demo's directory, a checkpoint) are written
in place; their claim is the lock alone.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saegeo.runtime.atomic import NAME_MAX, disk_errors, temp_prefix, usual_mode
from saegeo.runtime.outputs import (
    DIRECTORY_KINDS,
    RESUMED_KINDS,
    Output,
    check_existing,
    final_path,
    output_kind,
    saegeo_entries,
)

__all__ = ["OutputClaim", "claim_output", "interrupt", "rename_noreplace"]

LOCK_SUFFIX = "saegeo-lock"
KEPT_TAG = "saegeo-new"
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


class OutputClaim:
    """An output location held by this process (see the module docstring)."""

    def __init__(
        self, out: Output, final: Path, temp: Path | None, previous: tuple[int, int] | None
    ) -> None:
        self.out = out
        """The output, as the caller named it."""
        self.final = final
        """Its absolute path."""
        self.temp = temp
        """Where to write it (None for the kinds written in place)."""
        self.previous = previous
        """The (device, inode) of what the claim checked at the path, if anything."""
        self.committed = False

    @property
    def path(self) -> Path:
        """Where the writer writes: the temporary, or the output itself for resumed kinds."""
        return self.temp if self.temp is not None else self.final

    def commit(self) -> Path:
        """Put the temporary in place of the output and return the output's path.

        Raises
        ------
        OutputError
            Something the claim did not find at the path appeared there meanwhile; it stays,
            and the result is kept beside it under a name the message gives.
        """
        if self.temp is None or self.committed:
            self.committed = True
            return self.final
        usual_mode(self.temp, like=self.final)
        with _signals_deferred(), disk_errors(self.final, where=self.out.label):
            if self.previous is None:
                placed = _try_rename(self.temp, self.final)
            else:
                placed = self._replace_previous(self.temp)
            if not placed:
                kept = _kept_name(self.final, self.out.kind)
                rename_noreplace(self.temp, kept)
                self.committed = True
                raise self.out.error(
                    "appeared or changed while saegeo ran, and saegeo never replaces what it "
                    f"did not write: it stays as it is, and the result is in {kept}"
                )
        self.committed = True
        return self.final

    def _replace_previous(self, temp: Path) -> bool:
        """Move the previous output aside, the new one in, then delete what saegeo wrote of
        the previous one; False (nothing moved) if the previous output is not what the claim
        found."""
        if _identity(self.final) != self.previous or _changed(self.out, self.final):
            return False
        aside = self.final.with_name(
            tempfile.mktemp(prefix=temp_prefix(self.final), suffix=".old", dir="")
        )
        if not _try_rename(self.final, aside):
            return False
        if not _try_rename(temp, self.final):
            # Something took the path in the instant between the two renames: the previous
            # output goes back if it can, else stays in sight beside it.
            if not _try_rename(aside, self.final):
                _try_rename(aside, self.final.with_name(f"{self.final.name}.saegeo-previous"))
            return False
        _remove_previous(aside, self.out, self.final)
        return True


@contextlib.contextmanager
def claim_output(out: Output, *, force: bool = False) -> Iterator[OutputClaim]:
    """Hold ``out`` for the block: check it, lock it, give a temporary to write (module
    docstring). Call :meth:`OutputClaim.commit` at the end of the block; an uncommitted
    temporary is removed.

    Parameters
    ----------
    out
        The output; its ``flag`` is a command's flag (``--out``) or a Python argument
        (``path``), for messages.
    force
        Replace a previous saegeo output of the same kind (``--force``, ``overwrite=True``).

    Raises
    ------
    OutputError
        The path is refused (:func:`saegeo.runtime.outputs.check_outputs`), or another saegeo
        process holds it.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> with claim_output(Output(root / "t.csv", "table")) as claim:
    ...     _ = claim.temp.write_text("feature,max_cos,nearest,kind\\n")
    ...     claim.commit().name
    't.csv'
    """
    final = final_path(out)
    previous = _identity(final)  # before the check: what is replaced is what was checked
    check_existing(out, force)
    with disk_errors(final, where=out.label):
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(out, final)
    temp: Path | None = None
    try:
        with disk_errors(final, where=out.label):
            if out.kind not in RESUMED_KINDS:
                prefix, parent = temp_prefix(final), str(final.parent)
                if out.kind in DIRECTORY_KINDS:
                    temp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
                else:
                    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
                    os.close(fd)
                    temp = Path(name)
            yield OutputClaim(out, final, temp, previous)
    finally:
        if temp is not None and (temp.exists() or temp.is_symlink()):
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, atomically refusing (``FileExistsError``) where
    ``target`` exists, even as an empty directory, which a plain rename would replace.

    Linux's ``renameat2(RENAME_NOREPLACE)`` where the file system has it; elsewhere a hard link
    for a file, and otherwise a check just before the rename.
    """
    if _renameat2(source, target):
        return
    if not source.is_dir():
        try:
            os.link(source, target)  # fails where target exists
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: check, then rename
            pass
        else:
            source.unlink()
            return
    if target.exists() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _changed(out: Output, path: Path) -> bool:
    """Whether the previous output at ``path`` is no longer one saegeo may replace: rewritten
    as something else, or holding something saegeo did not write there."""
    if path.is_dir():
        return bool(saegeo_entries(path, out.kind)[1]) or (
            any(path.iterdir()) and output_kind(path) != out.kind
        )
    return path.stat().st_size > 0 and output_kind(path) != out.kind


_deferring = 0
_deferred: list[BaseException] = []


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` (from a signal handler) now, or, while an output is being put in place,
    as soon as it is: a signal between the renames would leave the previous output set aside
    and the new one deleted with its temporary."""
    if _deferring:
        _deferred.append(exc)
        return
    raise exc


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """The block runs whole: :func:`interrupt` waits for its end."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _deferred:
            raise _deferred.pop()


def _renameat2(source: Path, target: Path) -> bool:
    """``renameat2(source, target, RENAME_NOREPLACE)``; False where the system lacks it."""
    libc = _libc()
    if libc is None:
        return False
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not on this file system
        return False
    raise OSError(code, os.strerror(code), str(target))


@functools.cache
def _libc() -> Any:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "renameat2") else None
    except OSError:
        return None


def _try_rename(source: Path, target: Path) -> bool:
    """:func:`rename_noreplace`; False where ``target`` exists."""
    try:
        rename_noreplace(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _kept_name(final: Path, kind: str) -> Path:
    """A free name beside ``final`` that says it holds saegeo's result: ``out.saegeo-new``,
    ``table.saegeo-new.csv`` (then ``-2``, ``-3``...), within the file system's limit."""
    stem, suffix = (final.name, "") if kind in DIRECTORY_KINDS else (final.stem, final.suffix)
    for n in range(1, 1000):
        tag = KEPT_TAG if n == 1 else f"{KEPT_TAG}-{n}"
        name = f"{stem}.{tag}{suffix}"
        if len(os.fsencode(name)) > NAME_MAX:
            name = temp_prefix(final)[1:] + tag + suffix
        candidate = final.with_name(name)
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise OSError(errno.EEXIST, "no free name to keep the result under", str(final))


def _remove_previous(aside: Path, out: Output, final: Path) -> None:
    """Delete what saegeo wrote of the previous output moved to ``aside``; anything else found
    there (added in the instant before it moved) is kept, visibly, beside ``final``."""
    if not aside.is_dir() or aside.is_symlink():
        aside.unlink(missing_ok=True)
        return
    ours, _ = saegeo_entries(aside, out.kind)
    for entry in ours:
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    try:
        aside.rmdir()
    except OSError:
        with contextlib.suppress(OSError):
            rename_noreplace(aside, final.with_name(f"{final.name}.saegeo-previous"))


def _take_lock(out: Output, final: Path) -> Path:
    """Make ``.NAME.saegeo-lock`` beside ``final`` exclusively, or refuse: another live
    process holds it. A lock whose process has ended is taken over, and the temporaries beside
    ``final`` that the ended process left are removed."""
    lock = final.with_name(temp_prefix(final) + LOCK_SUFFIX)
    for _ in range(2):
        # Written whole under another name, then linked: a lock never exists without its stamp.
        fd, stamp = tempfile.mkstemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        try:
            os.link(stamp, lock)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise out.error(
                    f"another saegeo process ({holder}) is writing it; wait for it to finish, "
                    f"or remove {lock} if no saegeo command runs"
                ) from None
            _remove_leftovers(final)
            lock.unlink(missing_ok=True)
            continue
        finally:
            Path(stamp).unlink(missing_ok=True)
        return lock
    raise out.error("another saegeo process took it just now; choose another path")


def _holder(lock: Path) -> str | None:
    """``process N`` if the process that made ``lock`` still runs (or may: on another host, or
    unreadable), None if it has ended."""
    try:
        pid_text, host = lock.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return "unknown process"
    if host != socket.gethostname():
        return f"process {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"process {pid}"


def _remove_leftovers(final: Path) -> None:
    """Remove the temporaries (``.NAME.xxxxxxxx.tmp``/``.old``) that a killed writer left."""
    prefix = temp_prefix(final)
    for entry in final.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not name.endswith((".tmp", ".old")):
            continue
        if len(name) != len(prefix) + 8 + 4:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
