"""Feature DAGs and trees across the widths of an SAE family.

The feature DAG of a family has one node ``(level, feature)`` per latent of every SAE, level 0
being the narrowest, and edges only from level ``l`` to level ``l + 1``. An edge
``(l, i) -> (l + 1, j)`` with attribute ``score`` says that feature ``j`` of the wider SAE
continues feature ``i`` of the narrower one:

- ``metric="decoder_cosine"``: ``cos(W_dec_l[i], W_dec_{l+1}[j]) > threshold`` (default 0.7).
  Every parent above the threshold gets an edge, not only the nearest.
- ``metric="masked_cosine"``: the directed masked cosine similarity of parent ``i`` and child
  ``j`` (on the tokens where ``j`` fires, scaled by ``max(a_j) / max(a_i)``, seed 002) is
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
the set of trees of a DAG (see :func:`forest` for which nodes are roots).

Node ids are tuples ``(level, feature)`` in graphs and strings ``"level/feature"`` in JSON
and figures (:func:`node_id`, :func:`parse_node_id`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from saegeo.core.codes import encode_codes
from saegeo.core.family import Family
from saegeo.core.feature_info import log_feature_density, neuronpedia_url
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
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
from saegeo.io.streaming import ActsLike, checked_store

Metric = Literal["decoder_cosine", "masked_cosine", "cofiring", "nesting", "containment"]
RankBy = Literal["size", "split"]

DEFAULT_THRESHOLDS: dict[str, float] = {
    "decoder_cosine": 0.7,
    "masked_cosine": 0.6,
    "cofiring": 0.6,
    "nesting": 0.45,
    "containment": 0.5,
}
"""Edge thresholds used when ``threshold=None``: seed 003 for decoder cosine, seed 002 for MCS;
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

    Raises :class:`SaegeoError`, naming ``name``, for anything else.

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
    raise SaegeoError(
        f"{name} must be LEVEL/FEATURE (two non-negative integers such as 0/12), got {value!r}"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --------------------------------------------------------------------------- DAG


def feature_dag(
    family: Family | Sequence[SAE],
    *,
    metric: Metric = "decoder_cosine",
    threshold: float | None = None,
    acts: ActsLike | None = None,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
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
    batch_size, limit, device
        Passed to :func:`saegeo.encode_codes` (``limit`` caps the tokens read);
        ``device`` also runs the decoder cosines
        (:func:`saegeo.geometry.similarity.decoder_cosine_pairs`, blocked, so memory stays bounded).
    progress
        Show progress bars: None on a terminal, True always, False never
        (:mod:`saegeo.io.streaming`).

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
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> small = SAE.from_decoder(torch.eye(3)[:2])
    >>> large = SAE.from_decoder(torch.tensor([[1.0, 0.1, 0], [1.0, -0.1, 0], [0, 0, 1.0]]))
    >>> G = feature_dag([small, large])
    >>> sorted(G.edges)
    [((0, 0), (1, 0)), ((0, 0), (1, 1))]
    >>> G.graph["metric"], G.graph["threshold"], [lv["width"] for lv in G.graph["levels"]]
    ('decoder_cosine', 0.7, [2, 3])
    """
    fam = family if isinstance(family, Family) else Family(list(family))
    if metric not in get_args(Metric):
        raise SaegeoError(
            f"feature_dag(): metric must be one of {get_args(Metric)}, got {metric!r}"
        )
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[metric]
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.floating))
        or not math.isfinite(threshold)
    ):
        raise SaegeoError(f"feature_dag(): threshold must be a finite number, got {threshold!r}")
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

    store = checked_store(acts) if acts is not None else None

    def encode(level: int) -> tuple[sp.csr_matrix, InputMeans | None]:
        assert store is not None
        codes = encode_codes(
            fam[level], store, batch_size=batch_size, limit=limit, device=device, progress=progress
        )
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
                small, large, threshold=threshold, device=device, progress=progress
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


def forest_roots(G: nx.DiGraph) -> list[Node]:
    """The roots of the forest of ``G``: every level-0 node, and every deeper node that has
    no parent but has children (a feature new at its width that splits further)."""
    roots = [n for n in G if n[0] == 0]
    roots += [n for n in G if n[0] > 0 and G.in_degree(n) == 0 and G.out_degree(n) > 0]
    return sorted(roots, key=_node_order)


def forest(
    G: nx.DiGraph,
    *,
    rank_by: RankBy = "size",
    min_size: int = 1,
    roots: Iterable[Node | str] | None = None,
) -> tuple[pd.DataFrame, list[nx.DiGraph]]:
    """All feature trees of ``G``, ranked, with a table of their shapes.

    Roots (:func:`forest_roots`) are every level-0 feature and every deeper feature with no
    parent but with children: a feature that is new at its width and splits in wider SAEs
    roots its own tree. Deeper features with neither parents nor children are not trees.
    A node reachable from several roots appears in each of their trees.

    Parameters
    ----------
    G
        A feature DAG.
    rank_by
        ``"size"``: most nodes first (then deeper, then more leaves). ``"split"``: the roots
        that split most first: most children at the next level, then most leaves, then size.
    min_size
        Leave out trees with fewer nodes (``min_size=2`` drops lone features).
    roots
        Build the trees of these roots instead of :func:`forest_roots`.

    Returns
    -------
    (pandas.DataFrame, list of networkx.DiGraph)
        One row per tree, best first, index ``rank`` (0 is best), columns ``root`` (id),
        ``level``, ``feature``, ``size``, ``depth`` (edges from root to the deepest node),
        ``n_children`` (of the root), ``n_leaves``, ``max_branching`` (most children of any
        node), ``n_multi_parent`` (nodes with ``other_parents``) and, where the DAG has them,
        the root's ``freq`` and ``max_act``. The trees, from :func:`feature_tree`, in the same
        order.

    Examples
    --------
    >>> G = nx.DiGraph()
    >>> G.add_nodes_from([(0, 0), (0, 1)])
    >>> G.add_edges_from([((0, 1), (1, 0)), ((0, 1), (1, 1))], score=0.9)
    >>> table, trees = forest(G, rank_by="split")
    >>> table[["root", "size", "n_children"]].values.tolist()
    [['0/1', 3, 2], ['0/0', 1, 0]]
    """
    if rank_by not in get_args(RankBy):
        raise SaegeoError(f"forest(): rank_by must be one of {get_args(RankBy)}, got {rank_by!r}")
    if isinstance(min_size, bool) or not _is_int(min_size) or min_size < 1:
        raise SaegeoError(f"forest(): min_size must be an integer >= 1, got {min_size!r}")
    root_nodes = (
        forest_roots(G) if roots is None else [parse_node_id(r, name="root") for r in roots]
    )
    rows, trees = [], []
    for root in root_nodes:
        T = feature_tree(G, root)
        if T.number_of_nodes() < min_size:
            continue
        row = tree_stats(T)
        for key in ("freq", "max_act"):
            if key in G.nodes[root]:
                row[key] = G.nodes[root][key]
        rows.append(row)
        trees.append(T)
    columns = [
        "root",
        "level",
        "feature",
        "size",
        "depth",
        "n_children",
        "n_leaves",
        "max_branching",
        "n_multi_parent",
    ]
    table = pd.DataFrame(
        rows, columns=columns + [c for c in ("freq", "max_act") if rows and c in rows[0]]
    )
    if rank_by == "size":
        keys = ["size", "depth", "n_leaves"]
    else:
        keys = ["n_children", "n_leaves", "size"]
    order = table.sort_values(
        keys + ["level", "feature"], ascending=[False] * len(keys) + [True, True], kind="stable"
    ).index
    table = table.loc[order].reset_index(drop=True)
    table.index.name = "rank"
    return table, [trees[i] for i in order]


def labels_by_id(labels: Mapping[Any, str] | None) -> dict[str, str]:
    """User labels keyed by ``"level/feature"``, whether given by id string or node tuple."""
    if not labels:
        return {}
    return {
        node_id(parse_node_id(key, name="labels key")): str(value) for key, value in labels.items()
    }
