"""Feature trees, forests and DAGs as JSON documents (plain dicts; writing is left to the caller).

- ``saegeo.feature_tree.v1``: one tree (:func:`tree_to_json`, :func:`tree_from_json`), the format
  of ``docs/concepts.md``, specified by the JSON Schema ``feature_tree.v1.schema.json`` shipped in
  the package (:func:`tree_schema`).
- ``saegeo.feature_forest.v1``: ranked trees of one DAG (:func:`forest_to_json`,
  :func:`forest_from_json`); each entry of ``trees`` is a complete tree document
  (``feature_forest.v1.schema.json``).
- A whole DAG as networkx node-link data (:func:`dag_to_json`, :func:`dag_from_json`), node
  ids written as ``"level/feature"`` strings.

Readers accept keys they do not know (later versions add keys, never rename them); writers
emit the keys below and, where the tree has them, the optional ``freq``, ``max_act``,
``label``, ``neuronpedia`` (the feature's Neuronpedia page) and ``log_feature_density``
(log10 of its published firing rate).

Write a document atomically with :func:`saegeo.runtime.atomic.write_json`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx

from saegeo.errors import ArgumentError, FormatError, SaegeoError
from saegeo.runtime.outputs import FOREST_SCHEMA, TREE_SCHEMA
from saegeo.runtime.paths import regular_file
from saegeo.trees.dag import labels_by_id, node_id, ordered_children, parse_node_id, tree_root

TREE_SCHEMA_FILE = "feature_tree.v1.schema.json"
FOREST_SCHEMA_FILE = "feature_forest.v1.schema.json"

TREE_KEYS = ("schema", "metric", "threshold", "levels", "tree")
"""Keys of a tree document, in the order written."""
LEVEL_KEYS = ("level", "width", "source")
"""Keys of each entry of ``levels``."""
NODE_KEYS = ("id", "level", "feature", "score", "other_parents", "children")
"""Keys every node of a tree document has."""
OPTIONAL_NODE_KEYS = ("freq", "max_act", "label", "neuronpedia", "log_feature_density")
"""Keys a node has where the tree knows them (activations given, labels supplied)."""
FOREST_KEYS = ("schema", "metric", "threshold", "levels", "trees")
"""Keys of a forest document (plus ``rank_by`` when known)."""


# --------------------------------------------------------------------------- schemas


@functools.cache
def _load_schema(filename: str) -> dict[str, Any]:
    text = resources.files("saegeo.trees").joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


def tree_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``saegeo.feature_tree.v1`` (a fresh copy)."""
    return json.loads(json.dumps(_load_schema(TREE_SCHEMA_FILE)))


def forest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``saegeo.feature_forest.v1`` (a fresh copy).

    Its ``trees`` refer to the tree schema by its ``$id``, and the forest schema embeds that
    schema under ``$defs``, so any JSON Schema validator resolves the reference without a
    registry (``jsonschema.validate(doc, forest_schema())``).
    """
    return json.loads(json.dumps(_load_schema(FOREST_SCHEMA_FILE)))


@functools.cache
def _validator(filename: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_load_schema(filename))


def _validate(doc: Any, filename: str, schema_name: str, source: str) -> None:
    if not isinstance(doc, Mapping):
        raise FormatError(
            f"{source}: a {schema_name} document is a JSON object, got {type(doc).__name__}"
        )
    if doc.get("schema") != schema_name:
        raise FormatError(f"{source}: expected schema {schema_name!r}, got {doc.get('schema')!r}")
    error = jsonschema.exceptions.best_match(_validator(filename).iter_errors(doc))
    if error is not None:
        raise FormatError(
            f"{source}: not a valid {schema_name} document: at {error.json_path}: {error.message}"
        )


def validate_tree(doc: Any, *, source: str = "tree document") -> None:
    """Raise :class:`saegeo.FormatError`, naming ``source``, unless ``doc`` is a valid tree."""
    _validate(doc, TREE_SCHEMA_FILE, TREE_SCHEMA, source)


def validate_forest(doc: Any, *, source: str = "forest document") -> None:
    """Raise :class:`saegeo.FormatError`, naming ``source``, unless ``doc`` is a valid forest."""
    _validate(doc, FOREST_SCHEMA_FILE, FOREST_SCHEMA, source)


# --------------------------------------------------------------------------- trees


def _header(G: nx.DiGraph, what: str) -> dict[str, Any]:
    missing = [key for key in ("metric", "threshold", "levels") if key not in G.graph]
    if missing:
        raise SaegeoError(
            f"{what}: the graph lacks attributes {missing}; build it with saegeo.feature_dag"
        )
    return {
        "metric": str(G.graph["metric"]),
        "threshold": float(G.graph["threshold"]),
        "levels": [{key: entry[key] for key in LEVEL_KEYS} for entry in G.graph["levels"]],
    }


def tree_to_json(T: nx.DiGraph, *, labels: Mapping[Any, str] | None = None) -> dict[str, Any]:
    """The ``saegeo.feature_tree.v1`` document of a feature tree, as a dict.

    Children are ordered by score, best first (ties: lower feature index first).

    Parameters
    ----------
    T
        A tree from :func:`saegeo.feature_tree` (or :func:`tree_from_json`).
    labels
        Optional labels or token examples by node (``"level/feature"`` or ``(level, feature)``);
        they override node attributes ``label`` and are written as ``label``.

    Examples
    --------
    >>> import networkx as nx
    >>> T = nx.DiGraph(metric="decoder_cosine", threshold=0.7, root="0/12",
    ...                levels=[{"level": 0, "width": 768, "source": "gpt2-768"},
    ...                        {"level": 1, "width": 1536, "source": "gpt2-1536"}])
    >>> T.add_node((0, 12), level=0, feature=12, score=None, other_parents=[])
    >>> T.add_node((1, 1290), level=1, feature=1290, score=0.99, other_parents=[])
    >>> T.add_edge((0, 12), (1, 1290), score=0.99)
    >>> doc = tree_to_json(T)
    >>> doc["tree"]["id"], doc["tree"]["children"][0]["id"], doc["tree"]["children"][0]["score"]
    ('0/12', '1/1290', 0.99)
    """
    doc: dict[str, Any] = {"schema": TREE_SCHEMA, **_header(T, "tree_to_json()")}
    by_id = labels_by_id(labels)

    def node_doc(node: tuple[int, int]) -> dict[str, Any]:
        data = T.nodes[node]
        level, feature = parse_node_id(node, name="tree node")
        score = data.get("score")
        out: dict[str, Any] = {
            "id": node_id(node),
            "level": level,
            "feature": feature,
            "score": None if score is None else float(score),
            "other_parents": [[str(pid), float(s)] for pid, s in data.get("other_parents", [])],
        }
        for key in ("freq", "max_act"):
            # Optional keys: a value that is not a finite number is left out, never NaN.
            if data.get(key) is not None and math.isfinite(float(data[key])):
                out[key] = float(data[key])
        label = by_id.get(out["id"], data.get("label"))
        if label is not None:
            out["label"] = str(label)
        if data.get("neuronpedia") is not None:
            out["neuronpedia"] = str(data["neuronpedia"])
        density = data.get("log_feature_density")
        if density is not None and math.isfinite(float(density)):
            out["log_feature_density"] = float(density)
        out["children"] = [node_doc(child) for child in ordered_children(T, node)]
        return out

    doc["tree"] = node_doc(tree_root(T))
    return doc


def tree_from_json(doc: Mapping[str, Any], *, source: str = "tree document") -> nx.DiGraph:
    """Read a ``saegeo.feature_tree.v1`` document back into a tree (inverse of
    :func:`tree_to_json`).

    The document is validated first (:class:`saegeo.FormatError` names ``source`` and the
    offending place). Nodes get ``width`` and ``source`` from ``levels``, like the trees of
    :func:`saegeo.feature_tree`; keys unknown to v1 are kept as node attributes.
    """
    validate_tree(doc, source=source)
    header = {key: doc[key] for key in ("metric", "threshold", "levels")}
    by_level = {entry["level"]: entry for entry in header["levels"]}
    T = nx.DiGraph(**json.loads(json.dumps(header)), root=doc["tree"]["id"])
    stack: list[tuple[Mapping[str, Any], tuple[int, int] | None]] = [(doc["tree"], None)]
    while stack:
        item, parent = stack.pop()
        node = _file_node(item["id"], source)
        if node != (item["level"], item["feature"]):
            raise FormatError(
                f"{source}: node id {item['id']!r} does not match level "
                f"{item['level']} and feature {item['feature']}"
            )
        level = by_level.get(item["level"])
        if level is None or item["feature"] >= level["width"]:
            raise FormatError(f"{source}: node {item['id']} lies outside the levels listed")
        if node in T:
            raise FormatError(f"{source}: node {item['id']} appears twice")
        data = {key: value for key, value in item.items() if key not in ("id", "children")}
        data["other_parents"] = [list(pair) for pair in item["other_parents"]]
        data.update(width=level["width"], source=level["source"])
        T.add_node(node, **data)
        if parent is not None:
            if parent[0] + 1 != node[0]:
                raise FormatError(
                    f"{source}: edge {node_id(parent)} -> {item['id']} does not "
                    "go to the next level"
                )
            T.add_edge(parent, node, score=item["score"])
        stack.extend((child, node) for child in reversed(item["children"]))
    return T


# --------------------------------------------------------------------------- forests


def forest_to_json(
    G: nx.DiGraph,
    trees: Sequence[nx.DiGraph],
    *,
    rank_by: str | None = None,
    labels: Mapping[Any, str] | None = None,
) -> dict[str, Any]:
    """The ``saegeo.feature_forest.v1`` document of ``trees`` (in order) of the DAG ``G``.

    ``G`` gives the header (``metric``, ``threshold``, ``levels``), so an empty forest is
    still a complete document; ``rank_by`` is recorded when given.
    """
    doc: dict[str, Any] = {"schema": FOREST_SCHEMA, **_header(G, "forest_to_json()")}
    if rank_by is not None:
        doc["rank_by"] = str(rank_by)
    by_id = labels_by_id(labels)  # parsed once, then each tree gets its own nodes' labels
    doc["trees"] = [
        tree_to_json(T, labels={i: by_id[i] for i in map(node_id, T) if i in by_id}) for T in trees
    ]
    return doc


def forest_from_json(
    doc: Mapping[str, Any], *, source: str = "forest document"
) -> list[nx.DiGraph]:
    """The trees of a ``saegeo.feature_forest.v1`` document, in order."""
    validate_forest(doc, source=source)
    return [
        tree_from_json(tree, source=f"{source}: trees[{i}]") for i, tree in enumerate(doc["trees"])
    ]


# --------------------------------------------------------------------------- DAGs


def _edges_keyword(function: Any) -> dict[str, str]:
    # networkx >= 3.4 names the key with ``edges=``; older releases with ``link=``.
    params = inspect.signature(function).parameters
    return {"edges": "edges"} if "edges" in params else {"link": "edges"}


def dag_to_json(G: nx.DiGraph) -> dict[str, Any]:
    """A feature DAG as networkx node-link data with ``"level/feature"`` string ids.

    Examples
    --------
    >>> G = nx.DiGraph(metric="decoder_cosine", threshold=0.7, levels=[])
    >>> G.add_edge((0, 1), (1, 4), score=0.8)
    >>> data = dag_to_json(G)
    >>> [n["id"] for n in data["nodes"]], data["edges"][0]["score"]
    (['0/1', '1/4'], 0.8)
    >>> sorted(dag_from_json(data).edges)
    [((0, 1), (1, 4))]
    """
    H = nx.relabel_nodes(G, {node: node_id(node) for node in G}, copy=True)
    return nx.node_link_data(H, **_edges_keyword(nx.node_link_data))


def dag_from_json(doc: Mapping[str, Any], *, source: str = "DAG document") -> nx.DiGraph:
    """Read :func:`dag_to_json` output back into a DAG with ``(level, feature)`` nodes."""
    if not isinstance(doc, Mapping) or "nodes" not in doc or "edges" not in doc:
        raise FormatError(f"{source}: not node-link data with 'nodes' and 'edges'")
    try:
        H = nx.node_link_graph(
            dict(doc), directed=True, multigraph=False, **_edges_keyword(nx.node_link_graph)
        )
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise FormatError(f"{source}: unreadable node-link data ({exc})") from None
    mapping = {node: _file_node(node, source) for node in H}
    return nx.relabel_nodes(H, mapping, copy=True)


def read_labels(path: str | os.PathLike[str]) -> dict[str, str]:
    """Labels from a JSON file: an object mapping ``"level/feature"`` to text."""
    if Path(path).exists():
        regular_file(path, what="labels file")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaegeoError(f"{path}: no such labels file") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise FormatError(f"{path}: labels must be a JSON object of strings by LEVEL/FEATURE")
    try:
        return labels_by_id(doc)
    except SaegeoError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _file_node(value: Any, source: str) -> tuple[int, int]:
    """The node a file names, or a FormatError naming the file."""
    try:
        return parse_node_id(value)
    except ArgumentError:
        raise FormatError(
            f"{source}: node id {value!r} is not LEVEL/FEATURE (two non-negative integers)"
        ) from None
