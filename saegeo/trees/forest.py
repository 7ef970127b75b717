"""Forests: every feature tree of a DAG, ranked so that the trees that really split come first.

A forest has one tree per root (:func:`forest_roots`). The split ranking
(:func:`forest`, ``rank_by="split"``) rests on :func:`split_summary`: a feature *splits* when at
least two features of the next width have it as their best parent (:func:`best_parent`) and
it is not a *hub*, a feature with more children than :data:`HUB_FACTOR` times the width ratio.
The rule and its measured effect are described in the documentation's feature-trees page.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import networkx as nx
import numpy as np
import pandas as pd

from saegeo.config import check_choice, check_count
from saegeo.trees.dag import (
    Node,
    feature_tree,
    node_id,
    parse_node_id,
    tree_stats,
)

RankBy = Literal["size", "split"]

FOREST_COLUMNS = (
    "root",
    "level",
    "feature",
    "size",
    "depth",
    "n_children",
    "n_leaves",
    "max_branching",
    "n_multi_parent",
    "n_split_children",
    "split_at",
    "split_score",
    "hub",
)
"""The columns of :func:`forest`'s table, in order (``freq`` and ``max_act`` follow where the
DAG has them); what each holds is in :func:`forest`'s Returns."""


def forest_roots(G: nx.DiGraph) -> list[Node]:
    """The roots of the forest of ``G``: every level-0 node, and every deeper node that has
    no parent but has children (a feature new at its width that splits further)."""
    roots = [n for n in G if n[0] == 0]
    roots += [n for n in G if n[0] > 0 and G.in_degree(n) == 0 and G.out_degree(n) > 0]
    return sorted(roots)


HUB_FACTOR = 4
"""A root with more children than this many times the width ratio of its level and the next
is a hub (:func:`split_summary`)."""


def best_parent(G: nx.DiGraph, node: Node) -> tuple[Node, float] | None:
    """The parent of ``node`` in ``G`` with the largest score (ties: the lowest feature index),
    as :func:`feature_tree` keeps it, and that score; None for a node without parents."""
    candidates = [
        (parent, float(G.edges[parent, node]["score"])) for parent in G.predecessors(node)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda item: (-item[1], item[0]))


def split_summary(
    G: nx.DiGraph, node: Node | str, *, max_children: int | None = None
) -> dict[str, Any]:
    """How clearly ``node`` splits at the next width: the statistics that rank roots.

    - ``n_split_children``: children whose best parent in ``G`` is ``node``
      (:func:`best_parent`). A child that continues another feature better is not part of
      this feature's split.
    - ``split_score``: the score of the second-best of those children, the weaker side of the
      split (None with fewer than two).
    - ``hub``: the node has more children (above the threshold, whoever their best parent)
      than ``max_children``; default :data:`HUB_FACTOR` times the ratio of the next width to
      the node's. A feature that parents that many is a dense or catch-all latent (one firing
      on a large share of tokens, or a direction most features lean on), not a split.
    - ``splits``: at least two split children and not a hub.

    Examples
    --------
    >>> G = nx.DiGraph(levels=[{"level": 0, "width": 2}, {"level": 1, "width": 4}])
    >>> G.add_edge((0, 0), (1, 0), score=0.9)
    >>> G.add_edge((0, 0), (1, 1), score=0.8)
    >>> G.add_edge((0, 1), (1, 1), score=0.95)  # 1/1 continues 0/1 better
    >>> G.add_edge((0, 1), (1, 2), score=0.75)
    >>> split_summary(G, "0/1")
    {'n_split_children': 2, 'split_score': 0.75, 'hub': False, 'splits': True}
    >>> split_summary(G, "0/0")["splits"]
    False
    """
    return _split_summary(G, parse_node_id(node), max_children, lambda c: best_parent(G, c))


def _split_summary(
    G: nx.DiGraph,
    node: Node,
    max_children: int | None,
    best_of: Callable[[Node], tuple[Node, float] | None],
) -> dict[str, Any]:
    """:func:`split_summary` with the best parents given by ``best_of`` (a forest caches them)."""
    scores = sorted(
        (
            float(G.edges[node, child]["score"])
            for child in G.successors(node)
            if (best := best_of(child)) is not None and best[0] == node
        ),
        reverse=True,
    )
    limit = HUB_FACTOR * _width_ratio(G, node[0]) if max_children is None else max_children
    hub = G.out_degree(node) > limit
    return {
        "n_split_children": len(scores),
        "split_score": scores[1] if len(scores) >= 2 else None,
        "hub": bool(hub),
        "splits": len(scores) >= 2 and not hub,
    }


def _width_ratio(G: nx.DiGraph, level: int) -> float:
    """Width of ``level + 1`` over width of ``level`` (2 where the graph does not say)."""
    widths = {entry["level"]: entry["width"] for entry in G.graph.get("levels", [])}
    if level in widths and level + 1 in widths and widths[level] > 0:
        return max(widths[level + 1] / widths[level], 1.0)
    return 2.0


def _tree_split(
    T: nx.DiGraph, root: Node, summary_of: Callable[[Node], dict[str, Any]]
) -> dict[str, Any]:
    """The split that ranks the tree of ``root``: the root's own when it splits, else the
    clearest split below it; and whether any node of the tree is a hub. ``summary_of`` gives
    a node's :func:`split_summary`."""
    own = summary_of(root)
    found = own if own["splits"] else None
    split_at = root if own["splits"] else None
    hub = own["hub"]
    for node in T:
        if node == root or T.out_degree(node) < 2:
            continue
        summary = summary_of(node)
        hub = hub or summary["hub"]
        if own["splits"] or not summary["splits"]:
            continue
        if found is None or summary["split_score"] > found["split_score"]:
            found, split_at = summary, node
    return {
        "n_split_children": own["n_split_children"],
        "split_at": None if split_at is None else node_id(split_at),
        "split_score": None if found is None else found["split_score"],
        "hub": bool(hub),
    }


def forest(
    G: nx.DiGraph,
    *,
    rank_by: RankBy = "split",
    min_size: int = 1,
    roots: Iterable[Node | str] | None = None,
    max_children: int | None = None,
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
        ``"split"`` (default): the trees that split most clearly first. A feature *splits*
        when at least two children at the next width have it as their best parent and it is
        not a hub (:func:`split_summary`). First come the trees whose root splits, then those
        where a descendant splits (the root continues unsplit for a width or more), then
        those without a split, and last the trees that hold a hub; within each group, the
        clearer split first (``split_score``, the score of the split's second-best child),
        then more split children, then size. ``"size"``: most nodes first (then deeper, then
        more leaves).
    min_size
        Leave out trees with fewer nodes (``min_size=2`` drops lone features).
    roots
        Build the trees of these roots instead of :func:`forest_roots`.
    max_children
        A root with more children is a hub; default :data:`HUB_FACTOR` times the ratio of
        the next width to the root's (:func:`split_summary`).

    Returns
    -------
    (pandas.DataFrame, list of networkx.DiGraph)
        One row per tree, best first, index ``rank`` (0 is best), columns ``root`` (id),
        ``level``, ``feature``, ``size``, ``depth`` (edges from root to the deepest node),
        ``n_children`` (of the root), ``n_leaves``, ``max_branching`` (most children of any
        node), ``n_multi_parent`` (nodes with ``other_parents``), ``n_split_children`` (of
        the root, :func:`split_summary`), ``split_at`` (the id of the split that ranks the
        tree: the root's or the clearest below it; None without one), ``split_score`` (that
        split's score, NaN without one), ``hub`` (some node of the tree is a hub) and, where
        the DAG has them, the root's ``freq`` and ``max_act``. The trees, from
        :func:`feature_tree`, in the same order.

    Examples
    --------
    >>> G = nx.DiGraph()
    >>> G.add_nodes_from([(0, 0), (0, 1)])
    >>> G.add_edges_from([((0, 1), (1, 0)), ((0, 1), (1, 1))], score=0.9)
    >>> table, trees = forest(G)
    >>> table[["root", "size", "n_children", "split_at"]].values.tolist()
    [['0/1', 3, 2, '0/1'], ['0/0', 1, 0, None]]
    """
    check_choice("rank_by", rank_by, get_args(RankBy))
    check_count("min_size", min_size)
    check_count("max_children", max_children, optional=True)
    root_nodes = (
        forest_roots(G) if roots is None else [parse_node_id(r, name="root") for r in roots]
    )
    # Each node's best parent and split are found once, however many trees hold it.
    best_of = functools.cache(lambda child: best_parent(G, child))
    summary_of = functools.cache(lambda node: _split_summary(G, node, max_children, best_of))

    rows, trees = [], []
    for root in root_nodes:
        T = feature_tree(G, root)
        if T.number_of_nodes() < min_size:
            continue
        row = tree_stats(T)
        row.update(_tree_split(T, root, summary_of))
        for key in ("freq", "max_act"):
            if key in G.nodes[root]:
                row[key] = G.nodes[root][key]
        rows.append(row)
        trees.append(T)
    table = pd.DataFrame(
        rows,
        columns=[*FOREST_COLUMNS, *(c for c in ("freq", "max_act") if rows and c in rows[0])],
    )
    table = table.astype({"hub": bool, "split_score": float})  # also when the forest is empty
    table["split_at"] = table["split_at"].astype(object).where(table["split_at"].notna(), None)
    if rank_by == "size":
        keys, ascending = ["size", "depth", "n_leaves"], [False, False, False]
    else:
        # 0: the root splits, 1: a descendant splits, 2: no split, 3: the tree holds a hub.
        below = table["split_at"].notna() & (table["split_at"] != table["root"])
        table["_group"] = np.select(
            [table["hub"], table["split_at"] == table["root"], below], [3, 0, 1], default=2
        )
        table["_strength"] = table["split_score"].fillna(-np.inf)
        keys = ["_group", "_strength", "n_split_children", "size"]
        ascending = [True, False, False, False]
    order = table.sort_values(
        keys + ["level", "feature"], ascending=ascending + [True, True], kind="stable"
    ).index
    table = table.drop(columns=["_group", "_strength"], errors="ignore")
    table = table.loc[order].reset_index(drop=True)
    table.index.name = "rank"
    return table, [trees[i] for i in order]
