"""Output guards: a command never deletes or overwrites what it did not write.

Every ``saegeo`` command names its inputs and outputs before it computes anything and calls
:func:`check_outputs`, which refuses (with one line naming the flag and the path):

- an output that is one of the command's inputs, or a directory that holds one;
- two outputs at the same path (``tree --out X --html X``);
- an existing, non-empty output that is not a saegeo output of the same kind; with
  ``--force``, a previous saegeo output of the same kind is replaced (atomically: the old one
  stays until the new one is complete); without it, it is refused too. Kinds that a command
  resumes (an activation store, the demo's cache, a refit checkpoint) are reused as they are;
- an output whose nearest existing ancestor is not a directory, is not writable, or (where
  the command can tell how much it will write) lacks the free space.

saegeo recognises its own outputs by what they hold, not by marker files, so outputs written
before these checks existed are recognised too:

============  ===============================================================================
kind          recognised by
============  ===============================================================================
``table``     a CSV file whose header starts ``feature,max_cos,nearest,kind`` (``classify``)
``matches``   a CSV file whose header starts ``pair,a,b,decoder_cos,encoder_cos`` (``match``)
``tree``      a JSON file that opens with ``"schema": "saegeo.feature_tree.v1"`` or
              ``"saegeo.feature_forest.v1"`` (``tree``)
``html``      an HTML file with ``<meta name="generator" content="saegeo">`` (``tree --html``)
``stitched``  a directory with ``report.json`` of schema ``saegeo.frankenstein_report.v1``
              beside ``cfg.json`` (``stitch``)
``family``    a directory with ``family.json`` of format ``saegeo.family.v1`` (``train``)
``store``     a directory with ``meta.json`` of format ``saegeo.activations.v1`` (``harvest``,
              resumed)
``demo``      a directory with the demo's ``settings.json`` (``demo``, resumed)
``checkpoint``  a torch checkpoint file, a zip archive (``stitch --checkpoint``, resumed)
============  ===============================================================================
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saegeo.errors import SaegeoError
from saegeo.io.store import STORE_FORMAT
from saegeo.stitch.report import REPORT_SCHEMA

OutputKind = Literal[
    "table", "matches", "tree", "html", "stitched", "family", "store", "demo", "checkpoint"
]

GENERATOR_META = '<meta name="generator" content="saegeo">'
"""In the head of every HTML page saegeo writes: how :func:`output_kind` knows its pages."""

TABLE_HEADER = "feature,max_cos,nearest,kind"
MATCHES_HEADER = "pair,a,b,decoder_cos,encoder_cos"
TREE_SCHEMAS = ("saegeo.feature_tree.v1", "saegeo.feature_forest.v1")
FAMILY_FORMAT = "saegeo.family.v1"
"""The ``format`` of the ``family.json`` that training writes."""

DIRECTORY_KINDS = frozenset({"stitched", "family", "store", "demo"})
RESUMED_KINDS = frozenset({"store", "demo", "checkpoint"})
DESCRIPTIONS = {
    "table": "saegeo classify table",
    "matches": "saegeo match table",
    "tree": "saegeo tree JSON",
    "html": "saegeo HTML page",
    "stitched": "saegeo stitch output",
    "family": "saegeo train family",
    "store": "saegeo activation store",
    "demo": "saegeo demo directory",
    "checkpoint": "saegeo refit checkpoint",
}
HEAD_BYTES = 4096


class OutputError(SaegeoError):
    """An output location that the command must not, or cannot, write."""


@dataclass(frozen=True)
class Output:
    """One location a command writes."""

    path: Path
    """Where, as the user gave it."""
    kind: OutputKind
    """What saegeo writes there (see the module docstring)."""
    flag: str = "--out"
    """The flag (or argument) that named it, for messages."""


def check_outputs(
    outputs: Sequence[Output],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    *,
    force: bool = False,
    need_bytes: int = 0,
) -> None:
    """Refuse outputs that would destroy data or fail after the computing (module docstring).

    Parameters
    ----------
    outputs
        Every location the command writes.
    inputs
        Every file or directory the command reads (None entries are ignored).
    force
        Replace previous saegeo outputs of the same kind.
    need_bytes
        An estimate of what the command writes in all; the file system of each output must
        have this much free space.

    Raises
    ------
    OutputError
        With one line naming the flag, the path and what to do.
    """
    seen: dict[Path, str] = {}
    sources = [_resolved(Path(p)) for p in inputs if p is not None and str(p)]
    for out in outputs:
        if not str(out.path):
            raise OutputError(f"{out.flag}: empty path")
        real = _resolved(out.path)
        if real in seen:
            raise OutputError(f"{out.flag} {out.path}: the same path as {seen[real]}")
        seen[real] = f"{out.flag} {out.path}"
        for source in sources:
            if real == source:
                raise OutputError(
                    f"{out.flag} {out.path}: is one of the command's inputs; choose another path"
                )
            if source.is_relative_to(real):
                raise OutputError(
                    f"{out.flag} {out.path}: holds the input {source}; choose another path"
                )
        _check_existing(out, force)
        _check_writable(out, need_bytes)


def output_kind(path: str | os.PathLike[str]) -> OutputKind | None:
    """The kind of saegeo output at ``path``, or None where it holds something else.

    Only the first few kilobytes of a file are read, and only of regular files.
    """
    path = Path(path)
    if path.is_dir():
        if (
            _json_field(path / "report.json", "schema") == REPORT_SCHEMA
            and (path / "cfg.json").is_file()
        ):
            return "stitched"
        if _json_field(path / "family.json", "format") == FAMILY_FORMAT:
            return "family"
        if _json_field(path / "meta.json", "format") == STORE_FORMAT:
            return "store"
        if (path / "settings.json").is_file() and _json_field(
            path / "settings.json", "multipliers"
        ):
            return "demo"
        return None
    head = _head(path)
    if head is None:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "checkpoint"
    text = head.decode("utf-8", errors="replace")
    header = text.split("\n", 1)[0].rstrip("\r")
    if header.startswith(TABLE_HEADER):
        return "table"
    if header.startswith(MATCHES_HEADER):
        return "matches"
    compact = "".join(text.split())
    if any(f'"schema":"{name}"' in compact for name in TREE_SCHEMAS):
        return "tree"
    if GENERATOR_META in text:
        return "html"
    return None


def _check_existing(out: Output, force: bool) -> None:
    path = out.path
    if not (path.exists() or path.is_symlink()):
        return
    if not path.exists():
        raise OutputError(f"{out.flag} {path}: a broken symbolic link; choose another path")
    is_dir = path.is_dir()
    wants_dir = out.kind in DIRECTORY_KINDS
    if is_dir != wants_dir:
        found = "a directory" if is_dir else "a file"
        raise OutputError(
            f"{out.flag} {path}: is {found}, but the output is a "
            f"{'directory' if wants_dir else 'file'}; choose another path"
        )
    if not is_dir and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(f"{out.flag} {path}: not a regular file; choose another path")
    if _empty(path):
        return
    kind = output_kind(path)
    if kind != out.kind:
        raise OutputError(
            f"{out.flag} {path}: exists and is not a {DESCRIPTIONS[out.kind]}; saegeo never "
            "replaces what it did not write: choose another path or remove it"
        )
    if out.kind not in RESUMED_KINDS and not force:
        raise OutputError(
            f"{out.flag} {path}: holds a previous {DESCRIPTIONS[out.kind]}; "
            "pass --force to replace it"
        )


def _check_writable(out: Output, need_bytes: int) -> None:
    target = Path(os.path.abspath(out.path))
    existing = target if target.exists() and target.is_dir() else target.parent
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{out.flag} {out.path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{out.flag} {out.path}: cannot write in {existing} (permission denied)")
    if need_bytes:
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise OutputError(
                f"{out.flag} {out.path}: needs about {_size(need_bytes)} but {existing} has "
                f"{_size(free)} free"
            )


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _empty(path: Path) -> bool:
    if path.is_dir():
        return not any(path.iterdir())
    return path.stat().st_size == 0


def _head(path: Path) -> bytes | None:
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return None


def _json_field(path: Path, key: str) -> object:
    """``key`` of the JSON object in ``path``, or None (small regular files only)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 16 * 2**20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get(key) if isinstance(doc, dict) else None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
