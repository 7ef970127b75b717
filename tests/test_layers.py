"""The package's layers import only downward.

Each subpackage (or top-level module) of ``saegeo`` has a place in :data:`LAYERS`, lowest
first; a module may import from its own subpackage or from one below it, never from one above.
Imports inside functions and under ``TYPE_CHECKING`` count as well: an upward import delayed
until call time is still a dependency on the layer above. The same order is written out in the
documentation's design page.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import saegeo

LAYERS = (
    "errors",  # the error types every layer raises
    "deprecation",  # warning aliases of renamed names
    "config",  # the base of the option dataclasses
    "runtime",  # devices, torch.distributed, atomic writes, checked paths
    "core",  # the SAE, its architectures and rules, matching pursuit
    "formats",  # SAE files, published releases, families loaded from them
    "acts",  # activation stores, streaming, sparse codes
    "geometry",  # decoders or codes in, tables out
    "effects",  # reconstruction effects measured on activations
    "trees",  # feature DAGs, trees, forests and their JSON
    "stitch",  # Frankenstein SAEs and refits
    "training",  # training SAEs, toy models
    "lm",  # language models, harvesting, text
    "viz",  # figures and HTML pages
    "explorer",  # the feature card, the explorer widget and site
    "demo",  # the packaged pipeline
    "cli",  # the command line
)
"""saegeo's layers, from the ground up."""

TOP = {"__init__", "__main__"}
"""The public API (``import saegeo as sg``) and the entry point sit above every layer."""

PACKAGE = Path(saegeo.__file__).parent


def _layer(module: str) -> str:
    """The layer of a dotted module name under ``saegeo``: its first component."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``saegeo`` module that ``path`` imports, at any depth, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "saegeo":
                found += [(node.lineno, f"saegeo.{a.name}") for a in node.names]
            elif node.module.startswith("saegeo."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("saegeo.")]
    return found


def _modules() -> list[tuple[Path, str]]:
    """Every module of the package with its layer."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((path, _layer(".".join(rel.parts))))
    return out


def test_every_layer_is_placed() -> None:
    layers = {layer for _, layer in _modules()} - TOP
    assert layers <= set(LAYERS), f"place these in LAYERS: {sorted(layers - set(LAYERS))}"


def test_imports_go_down_the_layers() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path, layer in _modules():
        if layer in TOP:
            continue
        for line, target in _imports(path):
            other = _layer(target)
            if other in TOP or rank[other] > rank[layer]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_cycle_between_subpackages() -> None:
    """Implied by the order, but stated for whoever edits it: the subpackage graph is acyclic."""
    graph = nx.DiGraph()
    for path, layer in _modules():
        for _, target in _imports(path):
            if layer not in TOP and _layer(target) != layer:
                graph.add_edge(layer, _layer(target))
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)
