"""Output guards: a saegeo writer never deletes or overwrites what saegeo did not write.

Every ``saegeo`` command, and every library function that writes a whole output
(:func:`saegeo.save_sae`, :func:`saegeo.train_family`'s ``out_dir``), names its outputs before it
computes anything. :func:`check_outputs` (the commands' early check) and
:func:`saegeo.runtime.claim.claim_output` (which also holds the path until the output is in place)
refuse, with one line naming the flag or argument and the path:

- an output that is one of the command's inputs, or a directory that holds one;
- two outputs at the same path (``tree --out X --html X``);
- an output path that names no new entry: ``.``, ``..``, ``/``, the current directory or one
  above it, a file output written with a trailing slash, or a name longer than the file
  system allows;
- an existing, non-empty output that is not a saegeo output of the same kind; with
  ``--force`` (``overwrite=True`` in Python), a previous saegeo output of the same kind is
  replaced (atomically: the old one stays until the new one is complete), unless it holds
  files that saegeo did not write there (:func:`foreign_entries`), which are never deleted;
  without it, it is refused too. Kinds that a command resumes (an activation store, the
  demo's cache, a refit checkpoint) are reused as they are;
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
``sae``       a directory with ``cfg.json`` whose ``metadata`` says ``"saved_by": "saegeo"``
              (or, written before that key, ``sae_lens_version`` 6.0.0 without SAELens's
              ``sae_lens_training_version``) (:func:`saegeo.save_sae`)
``stitched``  a directory with ``report.json`` of schema ``saegeo.frankenstein_report.v1``
              beside ``cfg.json`` (``stitch``)
``family``    a directory with ``family.json`` of format ``saegeo.family.v1`` (``train``)
``store``     a directory with ``meta.json`` of format ``saegeo.activations.v1`` (``harvest``,
              resumed)
``demo``      a directory whose ``settings.json`` holds the demo's settings and nothing else,
              beside nothing but the demo's own entries (``demo``, resumed)
``checkpoint``  a torch checkpoint file, a zip archive (``stitch --checkpoint``, resumed)
``explore``   a directory with ``explorer.json`` of schema ``saegeo.explorer.v1`` beside
              ``index.html`` (``explore``)
============  ===============================================================================
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saegeo.errors import ArgumentError

OutputKind = Literal[
    "table",
    "matches",
    "tree",
    "html",
    "sae",
    "stitched",
    "family",
    "store",
    "demo",
    "checkpoint",
    "explore",
]

# What saegeo writes, as the layers that write it and this module that recognises it both
# need it; the writers import these names from here.
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens config layout saegeo writes (SAELens reads configs without a version as pre-6.0
and renames their keys)."""
SAVED_BY = "saegeo"
"""``metadata.saved_by`` of every ``cfg.json`` saegeo writes: how it knows its own SAEs."""
STORE_FORMAT = "saegeo.activations.v1"
"""The ``format`` of an activation store's ``meta.json``."""
REPORT_SCHEMA = "saegeo.frankenstein_report.v1"
"""The ``schema`` of the ``report.json`` beside a stitched SAE."""
TREE_SCHEMA = "saegeo.feature_tree.v1"
FOREST_SCHEMA = "saegeo.feature_forest.v1"
GENERATOR_META = '<meta name="generator" content="saegeo">'
"""In the head of every HTML page saegeo writes: how :func:`output_kind` knows its pages."""

TABLE_HEADER = "feature,max_cos,nearest,kind"
MATCHES_HEADER = "pair,a,b,decoder_cos,encoder_cos"
TREE_SCHEMAS = (TREE_SCHEMA, FOREST_SCHEMA)
EXPLORER_SCHEMA = "saegeo.explorer.v1"
EXPLORER_DATA_DIR = "data"
"""The folder of an explorer site's per-member data scripts (``member-0.js``, ...)."""
EXPLORER_DATA_FILE = re.compile(r"[a-z]+-\d+\.js")
"""The names of the scripts in :data:`EXPLORER_DATA_DIR`."""
"""The ``schema`` of the ``explorer.json`` beside an explorer site's ``index.html``."""
FAMILY_FORMAT = "saegeo.family.v1"
"""The ``format`` of the ``family.json`` that training writes."""
REPORT_FILE = "report.json"
FAMILY_FILES = ("family.json", "metrics.csv")
SAE_DIR_FILES = (SAELENS_CFG, SAELENS_WEIGHTS)
DIRECTORY_FILES: dict[str, tuple[str, ...]] = {
    "sae": SAE_DIR_FILES,
    "stitched": (*SAE_DIR_FILES, REPORT_FILE),
    "family": FAMILY_FILES,  # and the member directories its family.json lists
    "explore": ("explorer.json", "index.html"),  # and its data scripts (EXPLORER_DATA_DIR)
}
"""The files each directory kind that ``--force`` replaces holds: all that it may delete."""
DEMO_ENTRIES = frozenset({"settings.json", "stages.json", "acts", "family", "report"})
"""What the demo writes at the top of its directory."""
DEMO_SETTINGS = frozenset(
    {
        "model",
        "layer",
        "tokens",
        "context",
        "skip_first",
        "retrain",
        "arch",
        "k",
        "multipliers",
        "train_tokens",
        "seed",
    }
)
"""The keys of the demo's ``settings.json`` (``DemoSettings``'s fields; a test holds them equal)."""
DEMO_REQUIRED = frozenset({"model", "layer", "tokens", "multipliers"})
"""Keys every demo's ``settings.json`` has held."""

DIRECTORY_KINDS = frozenset({"sae", "stitched", "family", "store", "demo", "explore"})
RESUMED_KINDS = frozenset({"store", "demo", "checkpoint"})
DESCRIPTIONS = {
    "table": "saegeo classify table",
    "matches": "saegeo match table",
    "tree": "saegeo tree JSON",
    "html": "saegeo HTML page",
    "sae": "saegeo SAE directory",
    "stitched": "saegeo stitch output",
    "family": "saegeo train family",
    "store": "saegeo activation store",
    "demo": "saegeo demo directory",
    "checkpoint": "saegeo refit checkpoint",
    "explore": "saegeo explorer site",
}
HEAD_BYTES = 4096
NAME_MAX = 255
"""Bytes in one file name where the file system does not say (``pathconf``)."""


class OutputError(ArgumentError):
    """An output location that saegeo must not, or cannot, write.

    ``name`` is the Python argument (``path``, ``out_dir``) or the command's flag (``--out``);
    the message reads ``path='x': problem`` or ``--out x: problem`` accordingly, and a problem
    that ``overwrite=True`` would solve names ``--force`` in the command line's form.

    Examples
    --------
    >>> str(OutputError("path", "notes", "holds a previous output", replaceable=True))
    "path='notes': holds a previous output; pass overwrite=True to replace it"
    >>> str(OutputError("--out", "notes", "holds a previous output", replaceable=True))
    '--out notes: holds a previous output; pass --force to replace it'
    """

    def __init__(self, name: str, path: object, problem: str, *, replaceable: bool = False):
        self.cli_problem = problem + ("; pass --force to replace it" if replaceable else "")
        """The problem in the command line's terms."""
        hint = "; pass overwrite=True to replace it" if replaceable else ""
        super().__init__(name, str(path), problem + hint)
        if name.startswith("-"):
            self.args = (f"{name} {path}: {self.cli_problem}",)


@dataclass(frozen=True)
class Output:
    """One location a command or a library function writes."""

    path: Path
    """Where, as the user gave it."""
    kind: OutputKind
    """What saegeo writes there (see the module docstring)."""
    flag: str = "--out"
    """The flag (``--out``) or Python argument (``path``) that named it, for messages."""
    slash: bool = False
    """Whether the user spelt the path with a trailing slash (which ``Path`` drops)."""

    @classmethod
    def named(cls, path: str | os.PathLike[str], kind: OutputKind, flag: str) -> Output:
        """The output at ``path`` as the user spelt it."""
        text = os.fspath(path)
        return cls(Path(text), kind, flag, slash=text.endswith(("/", os.sep)) and len(text) > 1)

    @property
    def label(self) -> str:
        """``--out PATH`` or ``path='PATH'``, as messages name the output."""
        if self.flag.startswith("-"):
            return f"{self.flag} {self.path}"
        return f"{self.flag}={str(self.path)!r}"

    def error(self, problem: str, *, replaceable: bool = False) -> OutputError:
        """An :class:`OutputError` about this output."""
        return OutputError(self.flag, self.path, problem, replaceable=replaceable)


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
        if not os.fspath(out.path).strip():
            raise out.error("empty path; give the name of a new file or directory")
        real = _resolved(out.path)
        if real in seen:
            raise out.error(f"the same path as {seen[real]}")
        seen[real] = f"{out.flag} {out.path}"
        for source in sources:
            if real == source:
                raise out.error("is one of the command's inputs; choose another path")
            if source.is_relative_to(real):
                raise out.error(f"holds the input {source}; choose another path")
        final_path(out)
        check_existing(out, force)
        _check_writable(out, need_bytes)


def final_path(out: Output) -> Path:
    """``out.path`` made absolute, once checked to name a new entry in an existing name space.

    Refused: an empty path, ``/``, the current directory or one above it (``.``, ``..``), a
    file output spelt with a trailing slash, and a last name longer than the file system's
    limit.
    """
    text = os.fspath(out.path)
    if not text.strip():
        raise out.error("empty path; give the name of a new file or directory")
    final = Path(os.path.abspath(text))
    if final == final.parent:
        raise out.error("is the root directory; give the name of a new directory")
    if Path(os.path.realpath(os.getcwd())).is_relative_to(_resolved(final)):
        raise out.error(
            "is the current directory or one above it; give the name of a new directory, "
            "such as ./out"
        )
    if out.slash and out.kind not in DIRECTORY_KINDS:
        raise out.error("ends in a slash, which names a directory, but the output is a file")
    size, limit = len(os.fsencode(final.name)), name_max(final.parent)
    if size > limit:
        raise out.error(
            f"the name is {size} bytes long, longer than the file system allows ({limit}); "
            "choose a shorter name"
        )
    return final


def name_max(directory: Path) -> int:
    """The longest file name, in bytes, that the file system holding ``directory`` takes."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def output_kind(path: str | os.PathLike[str]) -> OutputKind | None:
    """The kind of saegeo output at ``path``, or None where it holds something else.

    Only the first few kilobytes of a file are read, and only of regular files.
    """
    path = Path(path)
    if path.is_dir():
        if (
            _json_field(path / REPORT_FILE, "schema") == REPORT_SCHEMA
            and (path / SAELENS_CFG).is_file()
        ):
            return "stitched"
        if (
            _json_field(path / "explorer.json", "schema") == EXPLORER_SCHEMA
            and (path / "index.html").is_file()
        ):
            return "explore"
        if _json_field(path / "family.json", "format") == FAMILY_FORMAT:
            return "family"
        if _json_field(path / "meta.json", "format") == STORE_FORMAT:
            return "store"
        if _is_demo(path):
            return "demo"
        if _is_saved_sae(path):
            return "sae"
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


def saegeo_entries(path: Path, kind: OutputKind) -> tuple[list[Path], list[Path]]:
    """What a previous output of ``kind`` at ``path`` holds: (the files and directories saegeo
    wrote there, everything else), files before the directories that hold them.

    A file output is all saegeo's; a directory output holds what its writer writes (an SAE's
    ``cfg.json`` and weights; a stitched SAE's and ``report.json``; a family's ``family.json``,
    ``metrics.csv`` and the member directories it lists) and temporary files saegeo left there.
    """
    if kind not in DIRECTORY_KINDS:
        return [path], []
    names = DIRECTORY_FILES.get(kind, ())
    members: set[str] = set()
    if kind == "family":
        listed = _json_field(path / "family.json", "members")
        for member in listed if isinstance(listed, list) else []:
            name = member.get("path") if isinstance(member, dict) else None
            if isinstance(name, str) and name and Path(name).name == name and name != "..":
                members.add(name)
    ours: list[Path] = []
    foreign: list[Path] = []
    for entry in sorted(path.iterdir()):
        if entry.name in members and entry.is_dir() and not entry.is_symlink():
            inside_ours, inside_foreign = saegeo_entries(entry, "sae")
            ours += inside_ours
            foreign += inside_foreign
            ours.append(entry)
        elif kind == "explore" and entry.name == EXPLORER_DATA_DIR and entry.is_dir():
            scripts = list(entry.iterdir())
            inside = [f for f in scripts if EXPLORER_DATA_FILE.fullmatch(f.name) and f.is_file()]
            ours += inside
            foreign += [f for f in scripts if f not in inside]
            (ours if len(inside) == len(scripts) else foreign).append(entry)
        elif _leftover(entry.name, names) or (entry.name in names and entry.is_file()):
            ours.append(entry)
        else:
            foreign.append(entry)
    return ours, foreign


def check_existing(out: Output, force: bool) -> None:
    """Refuse ``out`` if something is at its path that saegeo may not replace (module
    docstring): a file where a directory goes or back, a special file, a foreign output, a
    previous output of the same kind without ``force`` or holding foreign files."""
    path = out.path
    if not (path.exists() or path.is_symlink()):
        return
    if not path.exists():
        raise out.error("a broken symbolic link; choose another path")
    is_dir = path.is_dir()
    wants_dir = out.kind in DIRECTORY_KINDS
    if is_dir != wants_dir:
        found = "a directory" if is_dir else "a file"
        raise out.error(
            f"is {found}, but the output is a {'directory' if wants_dir else 'file'}; "
            "choose another path"
        )
    if not is_dir and not stat.S_ISREG(path.stat().st_mode):
        raise out.error("not a regular file; choose another path")
    if _empty(path):
        return
    kind = output_kind(path)
    if kind != out.kind:
        raise out.error(
            f"exists and is not a {DESCRIPTIONS[out.kind]}; saegeo never replaces what it did "
            "not write: choose another path or remove it"
        )
    if out.kind in RESUMED_KINDS:
        return
    if not force:
        raise out.error(f"holds a previous {DESCRIPTIONS[out.kind]}", replaceable=True)
    _, foreign = saegeo_entries(path, out.kind)
    if foreign:
        raise out.error(
            f"holds a previous {DESCRIPTIONS[out.kind]} and {foreign[0].relative_to(path)}, "
            "which saegeo did not write there and never deletes; move it out, or choose "
            "another path"
        )


def _check_writable(out: Output, need_bytes: int) -> None:
    target = Path(os.path.abspath(out.path))
    existing = target if target.exists() and target.is_dir() else target.parent
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        raise out.error(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise out.error(f"cannot write in {existing} (permission denied)")
    if need_bytes:
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise out.error(
                f"needs about {_size(need_bytes)} but {existing} has {_size(free)} free"
            )


def _is_demo(path: Path) -> bool:
    settings = path / "settings.json"
    try:
        info = settings.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 2**20:
            return False
        doc = json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Settings added in a later version may be missing; anything not a demo setting may not.
    if not isinstance(doc, dict) or not DEMO_REQUIRED <= set(doc) <= DEMO_SETTINGS:
        return False
    return all(
        entry.name in DEMO_ENTRIES or _leftover(entry.name, DEMO_ENTRIES)
        for entry in path.iterdir()
    )


def _is_saved_sae(path: Path) -> bool:
    metadata = _json_field(path / SAELENS_CFG, "metadata")
    if not isinstance(metadata, dict) or not (path / SAELENS_WEIGHTS).is_file():
        return False
    if metadata.get("saved_by") == SAVED_BY:
        return True
    return (
        metadata.get("sae_lens_version") == SAELENS_FORMAT_VERSION
        and "sae_lens_training_version" not in metadata
    )


def _leftover(name: str, names: Sequence[str] | frozenset[str]) -> bool:
    """Whether ``name`` is a temporary file saegeo made beside one of ``names`` and left behind
    (``.cfg.json.x1y2z3.tmp``)."""
    return (
        name.startswith(".")
        and name.endswith(".tmp")
        and any(name.startswith(f".{known}.") for known in names)
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
