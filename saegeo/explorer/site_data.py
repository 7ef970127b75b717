"""The explorer's data, as the front end reads it: an index, and two documents per member.

The same documents feed the offline site (each written as a script that hands it to
``window.saegeoData``, so the page opens from ``file://``) and the Jupyter widget (sent as
messages when the page asks). Schema ``saegeo.explorer.v1``:

- ``index``: ``metric``, ``threshold``, ``novelty_threshold``, ``n_tokens``, ``has_text``,
  ``start`` (the feature a page opens on, :func:`start_feature`, or null) and ``levels``
  (``level``, ``width``, ``source``, ``neuronpedia``: the URL prefix or null).
- ``member-L``: one array per column over the member's features: ``freq``, ``max_act``,
  ``mean_act``, ``kind`` (1 novel, 0 reconstruction, null at level 0), ``max_cos``,
  ``nearest``, ``delta_mse``, ``explained``, ``residual``, ``n_children``, ``label``,
  ``parents`` and ``children`` (per feature, ``[index, score]`` pairs at the adjacent level,
  best first), ``swap`` (per feature, its swap group with the narrower member or -1) and
  ``swaps`` (those groups: ``[small indices, large indices, max_cos]``).
- ``snippets-L``: ``hist_edges`` (shared), per feature ``hist`` (``[first bin, counts...]``)
  and ``snippets`` (``[activation, centre, token ids, activations]``), and ``tokens``: the
  text of every token id used.

Floats are rounded to :data:`DIGITS` significant digits (the per-token activations of snippets
to :data:`SHADE_DIGITS`); NaN becomes null.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from saegeo.core.feature_info import NEURONPEDIA, neuronpedia_id
from saegeo.explorer.facts import FamilyFacts
from saegeo.explorer.stats import HIST_EDGES
from saegeo.runtime.outputs import EXPLORER_SCHEMA as SCHEMA

DIGITS = 6
SHADE_DIGITS = 3
"""Significant digits of the per-token activations of snippets (they only shade the text)."""


def rounded(values: Any, digits: int = DIGITS) -> list[float | None]:
    """Floats to ``digits`` significant digits, NaN and infinities as None.

    >>> rounded([1.23456789, float("nan"), 0.0])
    [1.23457, None, 0.0]
    """
    out: list[float | None] = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
    return out


def start_feature(facts: FamilyFacts) -> str | None:
    """The feature a page opens on: the root that splits most clearly (two or more children
    whose best parent it is, not a hub; the highest :func:`saegeo.trees.forest.split_summary`
    score, then the narrowest), as the forest ranks its trees; None where no root splits.

    Opening on the feature with the most children would open on a hub or an outlier."""
    from saegeo.trees.dag import node_id
    from saegeo.trees.forest import forest_roots, split_summary

    best: tuple[float, int, int] | None = None
    for root in forest_roots(facts.dag):
        summary = split_summary(facts.dag, root)
        if summary["splits"]:
            key = (-float(summary["split_score"]), root[0], root[1])
            best = key if best is None or key < best else best
    return None if best is None else node_id((best[1], best[2]))


def index_data(facts: FamilyFacts) -> dict[str, Any]:
    """The site's index (module docstring)."""
    stats = facts.stats
    return {
        "schema": SCHEMA,
        "metric": facts.metric,
        "threshold": facts.threshold,
        "novelty_threshold": facts.novelty_threshold,
        "n_tokens": None if stats is None else stats[0].n_tokens,
        "has_text": facts.tokens is not None,
        "start": start_feature(facts),
        "levels": [
            {
                "level": level,
                "width": sae.width,
                "source": sae.name,
                "neuronpedia": (
                    f"{NEURONPEDIA}/{neuronpedia_id(sae)}/" if neuronpedia_id(sae) else None
                ),
            }
            for level, sae in enumerate(facts.family)
        ],
    }


def member_data(facts: FamilyFacts, level: int) -> dict[str, Any]:
    """Member ``level``'s table and edges (module docstring)."""
    table = facts.features[level]
    width = len(table)
    G = facts.dag

    def column(name: str) -> list[float | None]:
        return rounded(table[name]) if name in table.columns else [None] * width

    def edges(pairs: Any) -> list[list[float]]:
        return [[int(j), s] for j, s in sorted(pairs, key=lambda p: -p[1])]

    parents = [
        edges(
            (p[1], rounded([G.edges[p, (level, j)]["score"]])[0])
            for p in G.predecessors((level, j))
        )
        for j in range(width)
    ]
    children = [
        edges(
            (c[1], rounded([G.edges[(level, j), c]["score"]])[0]) for c in G.successors((level, j))
        )
        for j in range(width)
    ]
    swap = [-1] * width
    swaps: list[list[Any]] = []
    if level > 0:
        for g, (_, group) in enumerate(facts.swaps[level - 1].iterrows()):
            swaps.append(
                [list(group["small"]), list(group["large"]), rounded([group["max_cos"]])[0]]
            )
            for j in group["large"]:
                swap[j] = g
    return {
        "level": level,
        "freq": column("freq"),
        "max_act": column("max_act"),
        "mean_act": column("mean_act"),
        "kind": (
            [int(k == "novel") for k in table["kind"]]
            if "kind" in table.columns
            else [None] * width
        ),
        "max_cos": column("max_cos"),
        "nearest": [int(i) for i in table["nearest"]]
        if "nearest" in table.columns
        else [None] * width,
        "delta_mse": column("delta_mse"),
        "explained": column("explained"),
        "residual": column("residual"),
        "n_children": [int(n) for n in table["n_children"]],
        "label": list(table["label"]) if "label" in table.columns else [""] * width,
        "parents": parents,
        "children": children,
        "swap": swap,
        "swaps": swaps,
    }


def snippet_data(facts: FamilyFacts, level: int) -> dict[str, Any]:
    """Member ``level``'s histograms and snippets (module docstring)."""
    width = facts.family[level].width
    out: dict[str, Any] = {
        "level": level,
        "hist_edges": rounded(HIST_EDGES),
        "hist": [[] for _ in range(width)],
        "snippets": [[] for _ in range(width)],
        "tokens": {},
    }
    if facts.stats is None:
        return out
    hist_FH = facts.stats[level].hist
    for j in range(width):
        filled = np.flatnonzero(hist_FH[j])
        if filled.size:
            lo, hi = int(filled[0]), int(filled[-1]) + 1
            out["hist"][j] = [lo, *hist_FH[j, lo:hi].tolist()]
    if facts.tokens is None:
        return out
    used: set[int] = set()
    ids_N = facts.tokens.token_ids
    for j in range(width):
        rows = []
        for s in facts.snippet_windows(level, j):
            ids = ids_N[s["positions"]].tolist()
            used.update(ids)
            rows.append(
                [rounded([s["activation"]])[0], s["centre"], ids, rounded(s["acts"], SHADE_DIGITS)]
            )
        out["snippets"][j] = rows
    ordered = sorted(used)
    out["tokens"] = dict(zip(map(str, ordered), facts.token_text(ordered), strict=True))
    return out
