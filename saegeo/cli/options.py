"""Command-line flags made from the library's own declarations.

Each option is declared once, where the library takes it: a field of a configuration dataclass
(:class:`saegeo.StitchConfig`, :class:`saegeo.TrainConfig`, :class:`saegeo.HarvestConfig`) or a
keyword argument of the function a command calls. Its type, default, choices and help become
the flag's, read from the annotation, the default, a ``Literal`` and the field's docstring (or
the function's numpydoc ``Parameters`` entry). Values are range-checked where the library
checks them: a bad value raises :class:`saegeo.errors.ArgumentError` naming the field, which
the command line shows with the flag (:data:`FLAG_NAMES`).

Examples
--------
>>> from saegeo.stitch.config import StitchConfig
>>> option = options_of(StitchConfig)["retrain"]
>>> option.flag, option.default, option.choices
('--retrain', 'exact', ('exact', 'sgd', 'none'))
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

FLAG_NAMES = {"max_tokens": "--tokens", "texts": "--text", "out_dir": "--out"}
"""Arguments that a flag of another name sets; every other ``name`` is ``--name`` with dashes."""


def flag_of(name: str) -> str:
    """The flag that sets the library argument ``name``.

    Examples
    --------
    >>> flag_of("batch_size"), flag_of("max_tokens")
    ('--batch-size', '--tokens')
    """
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


class Option(NamedTuple):
    """One library argument as a flag."""

    name: str
    """The field or keyword argument."""
    flag: str
    """The flag that sets it."""
    kind: str
    """``int``, ``float``, ``str``, ``path``, ``bool``, ``choice``, ``ints`` or ``device``."""
    default: Any
    """The library's default."""
    optional: bool
    """Whether None is allowed (the flag may be left out)."""
    choices: tuple[str, ...] | None
    """The allowed values of a ``Literal``."""
    help: str
    """The field's docstring or the parameter's description, as plain text."""


def options_of(owner: type | Callable[..., Any]) -> dict[str, Option]:
    """Every field of a configuration dataclass, or every keyword-only argument of a function
    (its options; what it takes positionally is its input), as an :class:`Option`, by name.

    A function's stream options (``**options: Unpack[StreamOptions]``) are among its keywords,
    as its signature shows them, and take their help from :func:`saegeo.acts.streaming.stream`.
    """
    module = sys.modules[owner.__module__]
    if dataclasses.is_dataclass(owner):
        docs = _field_docs(owner)  # type: ignore[arg-type]
        found = [(f.name, str(f.type), f.default) for f in dataclasses.fields(owner) if f.init]
    else:
        docs = _parameter_docs(owner)
        if owner.__annotations__.get("options") == "Unpack[StreamOptions]":
            from saegeo.acts.streaming import stream

            docs = {**_parameter_docs(stream), **docs}
        parameters = inspect.signature(owner).parameters.values()
        found = [
            (p.name, str(p.annotation), p.default)
            for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        ]
    return {
        name: _option(name, annotation, default, docs.get(name, ""), module)
        for name, annotation, default in found
    }


def _option(name: str, annotation: str, default: Any, doc: str, module: Any) -> Option:
    parts = [part.strip() for part in _split_union(annotation)]
    optional = "None" in parts
    parts = [part for part in parts if part != "None"]
    choices = None
    if any("torch.device" in part for part in parts):
        kind = "device"
    elif any("PathLike" in part for part in parts):
        kind = "path"
    elif parts == ["bool"]:
        kind = "bool"
    elif parts == ["int"]:
        kind = "int"
    elif parts in (["float"], ["int", "float"], ["float", "int"]):
        kind = "float"
    elif parts == ["str"]:
        kind = "str"
    elif parts and parts[0].startswith("tuple[int"):
        kind = "ints"
    else:
        choices = _literal_choices(parts, module)
        kind = "choice" if choices else "str"
    return Option(name, flag_of(name), kind, default, optional, choices, _plain(doc))


def _split_union(annotation: str) -> list[str]:
    """``"tuple[int, ...] | None"`` → ``["tuple[int, ...]", "None"]`` (brackets respected)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(annotation):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "|" and depth == 0:
            parts.append(annotation[start:i])
            start = i + 1
    return [*parts, annotation[start:]]


def _literal_choices(parts: list[str], module: Any) -> tuple[str, ...] | None:
    if len(parts) != 1:
        return None
    text = parts[0]
    if text.startswith(("Literal[", "typing.Literal[")):
        return tuple(ast.literal_eval(text[text.index("[") : -1] + "]"))
    alias = getattr(module, text, None)
    if typing.get_origin(alias) is typing.Literal:
        return tuple(str(choice) for choice in typing.get_args(alias))
    return None


def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (``name: type = value`` then a
    string), read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = following.value.value
    return docs


def _parameter_docs(function: Callable[..., Any]) -> dict[str, str]:
    """The numpydoc ``Parameters`` entries of a function, by parameter (an entry that names
    several, ``a, b``, describes each of them)."""
    doc = inspect.getdoc(function) or ""
    match = re.search(r"^Parameters\n-+\n(.*?)(?:^\S[^\n]*\n-+\n|\Z)", doc, re.M | re.S)
    docs: dict[str, str] = {}
    if not match:
        return docs
    names: list[str] = []
    lines: list[str] = []
    for line in [*match.group(1).splitlines(), ""]:
        if line and not line.startswith(" "):
            for name in names:
                docs[name] = " ".join(lines)
            names = [n.strip() for n in line.split(":")[0].split(",")]
            lines = []
        elif line.strip():
            lines.append(line.strip())
    for name in names:
        docs[name] = " ".join(lines)
    return docs


def _plain(doc: str) -> str:
    """A docstring as one line of help: reST roles and literals unwrapped, ``%`` escaped."""
    text = " ".join(doc.split())
    text = re.sub(r":\w+:`~?(?:saegeo\.)?([^`]+)`", r"\1", text)
    text = text.replace("``", "")
    text = re.sub(r"\bNone\b", "unset", text)  # a flag left out passes None
    return text.replace("%", "%%")


# --------------------------------------------------------------------------- flags


def add_options(
    parser: argparse.ArgumentParser,
    owner: type | Callable[..., Any],
    names: Sequence[str],
    *,
    required: Sequence[str] = (),
) -> None:
    """Add the flags of ``owner``'s options ``names`` to ``parser``."""
    from saegeo.cli import args as types

    options = options_of(owner)
    for name in names:
        option = options[name]
        kwargs: dict[str, Any] = {"dest": name, "help": option.help}
        if option.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = option.default
            kwargs["type"] = {
                "int": types.integer(),
                "float": types.real(),
                "path": types.path,
                "ints": types.integer_list,
                "device": types.device,
            }.get(option.kind, str)
            if option.choices:
                kwargs["choices"] = option.choices
            if name in required:
                kwargs["required"] = True
            elif option.default is not None:
                kwargs["help"] += " (default %(default)s)"
        metavar = {"int": "N", "float": "X", "ints": "W,W,..."}.get(option.kind)
        if metavar:
            kwargs["metavar"] = metavar
        action = parser.add_argument(option.flag, **kwargs)
        action.owner = owner  # type: ignore[attr-defined]  # where the option is declared


def option_values(args: argparse.Namespace, owner: type | Callable[..., Any]) -> dict[str, Any]:
    """The parsed values of every option of ``owner`` that the command's parser has."""
    return {name: getattr(args, name) for name in options_of(owner) if hasattr(args, name)}
