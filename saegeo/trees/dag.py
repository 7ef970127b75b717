"""Feature DAGs and trees across the widths of an SAE family.

The feature DAG of a family has one node ``(level, feature)`` per latent of every SAE, level 0
being the narrowest, and edges only from level ``l`` to level ``l + 1``. An edge
``(l, i) -> (l + 1, j)`` with attribute ``score`` says that feature ``j`` of the wider SAE
continues feature ``i`` of the narrower one:

- ``metric="decoder_cosine"``: ``cos(W_dec_l[i], W_dec_{l+1}[j]) > threshold`` (default 0.7).
  Every parent above the threshold gets an edge, not only the nearest.
- ``metric="masked_cosine"``: the directed masked cosine similarity of parent ``i`` and child
  ``j`` (on the tokens where ``j`` fires, scaled by ``max(a_j) / max(a_i)``, as in
  the Matryoshka SAE tree view) is
  ``> threshold`` (default 0.6). Needs activations.
- ``metric="cofiring"``: the probability that parent ``i`` fires on a token where child ``j``
  fires, ``P(i fires | j fires)``, is ``> threshold`` (default 0.6;
  :func:`saegeo.geometry.cofiring.cofiring`). A child feature fires only where its parent
  does, so a true parent scores near 1 whatever its decoder looks like. Needs activations.
- ``metric="nesting"``: the smaller of that co-firing and the *presence* of the parent's
  decoder direction in the input where the child fires (relative to where the parent fires)
  is ``> threshold`` (default 0.45; :func:`saegeo.geometry.cofiring.nesting`): the child's
  tokens lie inside the parent's by firing and by content. Needs activations, and only the
  codes' non-zeros besides them.
- ``metric="containment"``: nesting where the parent also counts as firing on the tokens
  whose input holds its decoder direction (at least half of its share where it fires), so
  that a parent latent absorbed by its child's, silent on the child's tokens, still gets the
  edge: ``min(P(i present | j fires), presence)`` is ``> threshold`` (default 0.5;
  :func:`saegeo.geometry.cofiring.containment`). Needs activations; the recommended metric
  for hierarchies (best F1 in ``analyses/tree_recovery.py``).

A feature tree is the sub-DAG reachable from one root in which a node with several parents
keeps only its best-scoring one; the others are listed under ``other_parents``. A forest is
the set of trees of a DAG (:func:`saegeo.trees.forest.forest`, which also ranks them).

Node ids are tuples ``(level, feature)`` in graphs and strings ``"level/feature"`` in JSON
and figures (:func:`node_id`, :func:`parse_node_id`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

import networkx as nx
import numpy as np
import scipy.sparse as sp
from typing_extensions import Unpack

from saegeo.acts.codes import encode_codes
from saegeo.acts.streaming import (
    ActsLike,
    StreamOptions,
    checked_store,
    stream_options,
    with_stream_options,
)
from saegeo.config import check_choice, cosine_threshold
from saegeo.core.feature_info import log_feature_density, neuronpedia_url
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.formats.family import Family, as_family
from saegeo.geometry.cofiring import (
    InputMeans,
    cofiring,
    containment,
    input_means,
    nesting,
    present_codes,
)
from saegeo.geometry.masked_cosine import masked_cosine
from saegeo.geometry.similarity import decoder_cosine_pairs

Metric = Literal["decoder_cosine", "masked_cosine", "cofiring", "nesting", "containment"]

DEFAULT_THRESHOLDS: dict[str, float] = {
    "decoder_cosine": 0.7,
    "masked_cosine": 0.6,
    "cofiring": 0.6,
    "nesting": 0.45,
    "containment": 0.5,
}
"""Edge thresholds used when ``threshold=None``: "Stitching SAEs of different sizes" for decoder
cosine, the Matryoshka SAE tree view for MCS;
for co-firing, the threshold chosen on held-out synthetic families by
``analyses/tree_recovery.py``."""

Node = tuple[int, int]


# --------------------------------------------------------------------------- node ids


def node_id(node: Node | str) -> str:
    """The string id ``"level/feature"`` of a node.

    Examples
    --------
    >>> node_id((1, 290))
    '1/290'
    >>> node_id("1/290")
    '1/290'
    """
    if isinstance(node, str):
        return node_id(parse_node_id(node))
    level, feature = node
    return f"{int(level)}/{int(feature)}"


def parse_node_id(value: Any, *, name: str = "node") -> Node:
    """The node ``(level, feature)`` named by ``"level/feature"`` or a pair of integers.

    Raises :class:`~saegeo.errors.ArgumentError`, naming ``name``, for anything else.

    Examples
    --------
    >>> parse_node_id("2/17")
    (2, 17)
    >>> parse_node_id([0, 3])
    (0, 3)
    """
    if isinstance(value, str):
        parts = value.strip().split("/")
        if len(parts) == 2 and all(re.fullmatch(r"[0-9]+", p.strip()) for p in parts):
            return int(parts[0]), int(parts[1])
    elif isinstance(value, Sequence) and len(value) == 2:
        level, feature = value
        if _is_int(level) and _is_int(feature) and level >= 0 and feature >= 0:
            return int(level), int(feature)
    raise ArgumentError(
        name, value, "must be LEVEL/FEATURE (two non-negative integers such as 0/12)"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --------------------------------------------------------------------------- DAG


@with_stream_options
def feature_dag(
    family: Family | Sequence[SAE],
    *,
    metric: Metric = "decoder_cosine",
    threshold: float | None = None,
    acts: ActsLike | None = None,
    **options: Unpack[StreamOptions],
) -> nx.DiGraph:
    """The feature DAG of ``family``: nodes ``(level, feature)``, edges level l -> l + 1.

    Parameters
    ----------
    family
        SAEs of one model site; sorted by width, level 0 is the narrowest.
    metric
        ``"decoder_cosine"`` (edge iff the decoder cosine is > threshold) or
        ``"masked_cosine"`` (edge iff the directed, max-scaled MCS of parent and child is
        > threshold; needs ``acts``) or ``"cofiring"`` (edge iff P(parent fires | child
        fires) > threshold; needs ``acts``) or ``"nesting"`` (edge iff the smaller of that
        and the parent's presence in the input on the child's tokens is > threshold; needs
        ``acts``) or ``"containment"`` (as nesting, with the parent counted on the tokens
        where its direction is in the input though its latent is silent; needs ``acts``).
    threshold
        Edge threshold; None takes :data:`DEFAULT_THRESHOLDS` (0.7, 0.6, 0.6, 0.45, 0.5).
    acts
        Activations [N, d_in] (store, tensor or path). Each SAE's codes are encoded once; they
        give the MCS and the node attributes ``freq`` (fraction of tokens where the feature
        fires) and ``max_act``. Optional for ``decoder_cosine``.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`); ``limit`` caps the
        tokens read, and ``device`` also runs the decoder cosines
        (:func:`saegeo.geometry.similarity.decoder_cosine_pairs`, blocked, so memory stays bounded).

    Returns
    -------
    networkx.DiGraph
        Node attributes ``level``, ``feature``, ``width``, ``source`` (the SAE's name),
        ``neuronpedia`` (the feature's page) and ``log_feature_density`` where the SAE was
        published with them, and, with ``acts``, ``freq`` and ``max_act``; edge attribute
        ``score``; graph attributes
        ``metric``, ``threshold`` and ``levels`` (a list of ``{"level", "width", "source"}``).

    Examples
    --------
    A feature of the narrowest SAE that splits in two, one half of which splits again
    (the widest SAE's last two features are unrelated to the others):

    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> levels = [
    ...     [[1.0, 0, 0]],
    ...     [[1.0, 0.3, 0], [1.0, -0.3, 0]],
    ...     [[1.0, 0.6, 0.2], [1.0, 0.6, -0.2], [0, 0, 1.0], [0, 1.0, 0]],
    ... ]
    >>> G = feature_dag([SAE.from_decoder(torch.tensor(rows)) for rows in levels])
    >>> [(u, v, round(G.edges[u, v]["score"], 2)) for u, v in sorted(G.edges)]
    [((0, 0), (1, 0), 0.96), ((0, 0), (1, 1), 0.96), ((1, 0), (2, 0), 0.96), ((1, 0), (2, 1), 0.96)]
    """
    fam = as_family(family)
    check_choice("metric", metric, get_args(Metric))
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[metric]
    if metric == "decoder_cosine":
        threshold = cosine_threshold(threshold)
    elif (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.floating))
        or not math.isfinite(threshold)
    ):
        raise ArgumentError("threshold", threshold, "must be a finite number")
    threshold = float(threshold)
    if metric != "decoder_cosine" and acts is None:
        raise SaegeoError(
            f"feature_dag(): metric={metric!r} needs activations; pass acts (a store, "
            "a tensor or array [N, d_in], or a path)"
        )

    levels: list[dict[str, Any]] = [
        {"level": level, "width": sae.width, "source": sae.name} for level, sae in enumerate(fam)
    ]
    G = nx.DiGraph(metric=metric, threshold=threshold, levels=levels)
    for entry in levels:
        G.add_nodes_from(
            (
                (entry["level"], j),
                {
                    "level": entry["level"],
                    "feature": j,
                    "width": entry["width"],
                    "source": entry["source"],
                },
            )
            for j in range(entry["width"])
        )
        _set_published_info(G, entry["level"], fam[entry["level"]])

    settings = stream_options(options)
    batch_size, limit, progress = settings["batch_size"], settings["limit"], settings["progress"]
    store = checked_store(acts) if acts is not None else None

    def encode(level: int) -> tuple[sp.csr_matrix, InputMeans | None]:
        assert store is not None
        codes = encode_codes(fam[level], store, **settings)
        _set_activation_stats(G, level, codes)
        means = (
            input_means(codes, store, batch_size=batch_size, limit=limit)
            if metric in ("nesting", "containment")
            else None
        )
        return codes, means

    # Codes of two adjacent levels are held at a time; each SAE is encoded once.
    codes_prev, means_prev = encode(0) if store is not None else (None, None)
    for level, (small, large) in enumerate(fam.pairs()):
        codes_next, means_next = encode(level + 1) if store is not None else (None, None)
        if metric == "decoder_cosine":
            M = decoder_cosine_pairs(
                small, large, threshold=threshold, device=settings["device"], progress=progress
            ).tocoo()
        elif metric == "cofiring":
            M = cofiring(codes_prev, codes_next, min_score=threshold, progress=progress).tocoo()
        elif metric in ("nesting", "containment"):
            assert means_prev is not None and means_next is not None
            score: Callable[..., sp.csr_matrix] = nesting
            parent_codes = codes_prev
            if metric == "containment":
                assert store is not None
                score = containment
                parent_codes = present_codes(
                    codes_prev, store, small.W_dec, means_prev, batch_size=batch_size, limit=limit
                )
            M = score(
                parent_codes,
                codes_next,
                small.W_dec,
                means_prev,
                means_next,
                min_score=threshold,
                progress=progress,
            ).tocoo()
        else:
            M = masked_cosine(
                codes_prev,
                codes_next,
                directed=True,
                scale_by_max=True,
                min_score=threshold,
                progress=progress,
            ).tocoo()
        G.add_edges_from(
            ((level, int(i)), (level + 1, int(j)), {"score": float(s)})
            for i, j, s in zip(M.row, M.col, M.data, strict=True)
        )
        codes_prev, means_prev = codes_next, means_next
    return G


def _set_published_info(G: nx.DiGraph, level: int, sae: SAE) -> None:
    """Node attributes ``neuronpedia`` (URL) and ``log_feature_density`` where ``sae`` has them."""
    density = log_feature_density(sae)
    has_page = neuronpedia_url(sae, 0) is not None
    if density is None and not has_page:
        return
    for j in range(sae.width):
        data = G.nodes[(level, j)]
        if has_page:
            data["neuronpedia"] = neuronpedia_url(sae, j)
        if density is not None:
            data["log_feature_density"] = float(density[j])


def _set_activation_stats(G: nx.DiGraph, level: int, codes: sp.csr_matrix) -> None:
    n_tokens = codes.shape[0]
    counts = np.asarray(codes.getnnz(axis=0)).ravel()
    freq = counts / n_tokens if n_tokens else np.zeros_like(counts, dtype=np.float64)
    max_act = (
        np.asarray(codes.max(axis=0).todense()).ravel() if n_tokens else np.zeros(codes.shape[1])
    )
    for j in range(codes.shape[1]):
        data = G.nodes[(level, j)]
        data["freq"] = float(freq[j])
        data["max_act"] = float(max_act[j])


# --------------------------------------------------------------------------- trees


def feature_tree(G: nx.DiGraph, root: Node | str) -> nx.DiGraph:
    """The tree of ``G`` below ``root``: the reachable sub-DAG, one parent per node.

    A node reachable from ``root`` along several parents (all within the reachable set) keeps
    only its best-scoring parent (ties: the lowest feature index); the others go, best first,
    into node attribute ``other_parents`` as ``[id, score]`` pairs with ids ``"level/feature"``.

    Parameters
    ----------
    G
        A feature DAG (:func:`feature_dag`, or :func:`saegeo.trees.tree_json.dag_from_json`).
    root
        ``(level, feature)`` or ``"level/feature"``.

    Returns
    -------
    networkx.DiGraph
        A tree rooted at ``root``. Nodes keep the DAG's attributes and gain ``score`` (the
        score of the kept edge, None for the root) and ``other_parents``; edges keep ``score``.
        Graph attributes: the DAG's (``metric``, ``threshold``, ``levels``) and ``root``.

    Examples
    --------
    >>> G = nx.DiGraph()
    >>> G.add_edge((0, 0), (1, 0), score=0.9)
    >>> G.add_edge((0, 0), (1, 1), score=0.8)
    >>> G.add_edge((1, 0), (2, 5), score=0.75)
    >>> G.add_edge((1, 1), (2, 5), score=0.95)
    >>> T = feature_tree(G, "0/0")
    >>> sorted(T.edges)
    [((0, 0), (1, 0)), ((0, 0), (1, 1)), ((1, 1), (2, 5))]
    >>> T.nodes[(2, 5)]["other_parents"]
    [['1/0', 0.75]]
    """
    root = parse_node_id(root, name="root")
    if root not in G:
        raise SaegeoError(
            f"root {node_id(root)} is not a node of the feature DAG (levels {_describe_levels(G)})"
        )
    reachable = nx.descendants(G, root) | {root}
    T = nx.DiGraph(**G.graph)
    T.graph["root"] = node_id(root)
    root_data = dict(G.nodes[root])
    root_data.update(score=None, other_parents=[])
    T.add_node(root, **root_data)
    # Parents come before children when nodes are taken level by level.
    for node in sorted(reachable - {root}, key=_node_order):
        candidates = sorted(
            (
                (parent, float(G.edges[parent, node]["score"]))
                for parent in G.predecessors(node)
                if parent in reachable
            ),
            key=lambda item: (-item[1], _node_order(item[0])),
        )
        (best, score), others = candidates[0], candidates[1:]
        data = dict(G.nodes[node])
        data.update(score=score, other_parents=[[node_id(p), s] for p, s in others])
        T.add_node(node, **data)
        T.add_edge(best, node, score=score)
    return T


def _node_order(node: Any) -> tuple[int, int]:
    level, feature = node
    return int(level), int(feature)


def _describe_levels(G: nx.DiGraph) -> str:
    levels = G.graph.get("levels")
    if not levels:
        return "unknown"
    return ", ".join(f"{lv['level']}: 0..{lv['width'] - 1}" for lv in levels)


def tree_root(T: nx.DiGraph) -> Node:
    """The root of a feature tree (its graph attribute, else its node without a parent)."""
    if "root" in T.graph:
        return parse_node_id(T.graph["root"], name="tree root")
    roots = [n for n, d in T.in_degree() if d == 0]
    if len(roots) != 1:
        raise SaegeoError(f"a feature tree has exactly one root, this graph has {len(roots)}")
    return roots[0]


def ordered_children(T: nx.DiGraph, node: Node) -> list[Node]:
    """The children of ``node`` in ``T``, best score first (ties: the lower feature index):
    the order of tree JSON, figures and tables."""
    return sorted(T.successors(node), key=lambda c: (-float(T.edges[node, c].get("score", 0.0)), c))


def walk_tree(T: nx.DiGraph) -> Iterator[tuple[Node, int]]:
    """``(node, depth)`` of every node of a tree, depth first from its root, children in
    :func:`ordered_children` order.

    Examples
    --------
    >>> T = nx.DiGraph(root="0/0")
    >>> T.add_edge((0, 0), (1, 4), score=0.8)
    >>> T.add_edge((0, 0), (1, 2), score=0.9)
    >>> T.add_edge((1, 4), (2, 0), score=0.9)
    >>> [(node_id(n), d) for n, d in walk_tree(T)]
    [('0/0', 0), ('1/2', 1), ('1/4', 1), ('2/0', 2)]
    """
    stack = [(tree_root(T), 0)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in reversed(ordered_children(T, node)))


def tree_stats(T: nx.DiGraph) -> dict[str, Any]:
    """Shape of a feature tree: size, depth, children of the root, leaves, branching.

    Examples
    --------
    >>> T = nx.DiGraph(root="0/0")
    >>> T.add_edges_from([((0, 0), (1, 0)), ((0, 0), (1, 1)), ((1, 1), (2, 3))])
    >>> tree_stats(T)["n_leaves"], tree_stats(T)["depth"]
    (2, 2)
    """
    root = tree_root(T)
    depths = nx.single_source_shortest_path_length(T, root)
    out_degree = dict(T.out_degree())
    return {
        "root": node_id(root),
        "level": int(root[0]),
        "feature": int(root[1]),
        "size": T.number_of_nodes(),
        "depth": max(depths.values()),
        "n_children": out_degree[root],
        "n_leaves": sum(1 for d in out_degree.values() if d == 0),
        "max_branching": max(out_degree.values()),
        "n_multi_parent": sum(1 for _, data in T.nodes(data=True) if data.get("other_parents")),
    }


# --------------------------------------------------------------------------- forests


def __getattr__(name: str) -> Any:
    # Forests and their ranking live in saegeo.trees.forest; they were first defined here,
    # and ``from saegeo.trees.dag import forest`` keeps working.
    if name in ("forest", "forest_roots"):
        from saegeo.trees import forest as forest_module

        return getattr(forest_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def labels_by_id(labels: Mapping[Any, str] | None) -> dict[str, str]:
    """User labels keyed by ``"level/feature"``, whether given by id string or node tuple."""
    if not labels:
        return {}
    return {
        node_id(parse_node_id(key, name="labels key")): str(value) for key, value in labels.items()
    }
