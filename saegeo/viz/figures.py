"""Interactive plotly figures of feature trees and splits.

Every function returns a ``plotly.graph_objects.Figure``, which shows inline in Jupyter; save
it as a standalone page with :func:`save_html` (plotly.js embedded, so the page works
offline). :func:`forest_html` puts the top trees of a forest on one page.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import torch

from saegeo.config import check_choice
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.formats.family import Family, as_family
from saegeo.geometry.similarity import unit_rows
from saegeo.runtime.outputs import GENERATOR_META
from saegeo.trees.dag import labels_by_id, node_id, parse_node_id, tree_root, walk_tree

TreeKind = Literal["icicle", "sunburst", "treemap"]
_TRACES = {"icicle": go.Icicle, "sunburst": go.Sunburst, "treemap": go.Treemap}
_LABEL_CHARS = 40


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "–" if value is None else format(float(value), spec)


def _plain(text: str) -> str:
    """Text safe inside plotly's HTML-like labels: quotes stay as they are, since plotly
    does not decode &quot; and would show it literally."""
    return html.escape(text, quote=False)


def _short(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def tree_figure(
    T: nx.DiGraph,
    *,
    labels: Mapping[Any, str] | None = None,
    kind: TreeKind = "icicle",
    title: str | None = None,
    score_range: tuple[float, float] | None = None,
) -> go.Figure:
    """An interactive figure of one feature tree: root on the left, wider SAEs to the right.

    Parameters
    ----------
    T
        A tree from :func:`saegeo.feature_tree` (or :func:`saegeo.trees.tree_json.tree_from_json`).
    labels
        Optional text per node (``"level/feature"`` or ``(level, feature)``): a description or
        the top tokens (:func:`saegeo.lm.labels.feature_labels`), shown on the boxes above the
        node id (shortened) and in full on hover; node attributes ``label`` are used otherwise.
    kind
        ``"icicle"`` (default), ``"sunburst"`` or ``"treemap"``. Boxes are sized by leaves and
        coloured by the score of the edge from their parent (the root by the top of the scale).
    title
        Figure title; by default the root, the widths and the metric.
    score_range
        ``(low, high)`` of the colour scale; default :func:`tree_score_range` of this tree.
        Pass :func:`tree_score_range` of several trees to draw them on one scale.

    Hover shows the node id, the SAE (width and name), the score, other parents, the firing
    frequency and maximum activation where the tree has them, the label, and for published
    SAEs the feature's log10 density and Neuronpedia page.
    """
    check_choice("kind", kind, get_args(TreeKind))
    root = tree_root(T)
    by_id = labels_by_id(labels)
    nodes = [node for node, _ in walk_tree(T)]  # siblings best first, as in the table
    ids, parents, texts, scores, custom = [], [], [], [], []
    for node in nodes:
        data = T.nodes[node]
        nid = node_id(node)
        label = by_id.get(nid, data.get("label"))
        parent = next(iter(T.predecessors(node)), None)
        ids.append(nid)
        parents.append("" if parent is None else node_id(parent))
        texts.append(nid if not label else f"<b>{_plain(_short(str(label)))}</b><br>{nid}")
        scores.append(data.get("score"))
        others = ", ".join(f"{pid} ({s:.2f})" for pid, s in data.get("other_parents", []))
        custom.append(
            [
                nid,
                f"{data.get('width', '?')} ({_plain(str(data.get('source', '')))})",
                _fmt(data.get("score"), ".3f") if data.get("score") is not None else "root",
                _fmt(data.get("freq")),
                _fmt(data.get("max_act")),
                others or "–",
                _plain(str(label)) if label else "–",
                _fmt(data.get("log_feature_density")),
                str(data.get("neuronpedia") or "–"),
            ]
        )
    low, top = tree_score_range([T]) if score_range is None else score_range
    colors = [top if s is None else s for s in scores]
    metric = str(T.graph.get("metric", "score"))
    trace = _TRACES[kind](
        ids=ids,
        labels=ids,
        parents=parents,
        text=texts,
        texttemplate="%{text}",
        customdata=custom,
        hovertemplate=(
            "<b>%{customdata[0]}</b><br>SAE width %{customdata[1]}<br>"
            f"{metric}: %{{customdata[2]}}<br>other parents: %{{customdata[5]}}<br>"
            "freq: %{customdata[3]}<br>max act: %{customdata[4]}<br>"
            "label: %{customdata[6]}<br>published log10 density: %{customdata[7]}<br>"
            "Neuronpedia: %{customdata[8]}<extra></extra>"
        ),
        marker={
            "colors": colors,
            "colorscale": "Blues",
            "cmin": low,
            "cmax": top,
            "showscale": True,
            "colorbar": {"title": {"text": metric}},
        },
        maxdepth=-1,
        sort=False,
    )
    fig = go.Figure(trace)
    if title is None:
        widths = " → ".join(str(lv["width"]) for lv in T.graph.get("levels", []))
        threshold = T.graph.get("threshold")
        rule = f"{metric} > {threshold:g}" if threshold is not None else metric
        title = f"Feature tree {node_id(root)} — widths {widths} — {rule}"
    fig.update_layout(title={"text": _plain(title)}, margin={"t": 50, "l": 10, "r": 10, "b": 10})
    return fig


SCALE_QUANTILE = 0.95
"""The colour scale of trees ends at this quantile of their scores."""


def tree_score_range(trees: Sequence[nx.DiGraph]) -> tuple[float, float]:
    """One colour scale for the scores of ``trees``: from the lower of their edge threshold and
    their lowest score to the :data:`SCALE_QUANTILE` quantile of their scores. Higher scores
    take the scale's top colour: a few max-scaled masked cosines of 3 or more would otherwise
    wash every other box out.

    Examples
    --------
    >>> T = nx.DiGraph(threshold=0.7)
    >>> T.add_node((0, 0), score=None)
    >>> T.add_node((1, 3), score=0.9)
    >>> tree_score_range([T])
    (0.7, 0.9)
    """
    known = [
        float(data["score"])
        for T in trees
        for _, data in T.nodes(data=True)
        if data.get("score") is not None
    ]
    thresholds = [float(T.graph["threshold"]) for T in trees if "threshold" in T.graph]
    top = float(np.quantile(known, SCALE_QUANTILE)) if known else 1.0
    low = min(thresholds + known, default=0.0)
    return low, max(top, low + 1e-6)


def _decoders(family: Family | Sequence[SAE], level: int) -> tuple[torch.Tensor, torch.Tensor]:
    fam = as_family(family)
    if not 0 <= level < len(fam) - 1:
        raise ArgumentError(
            "level", level, f"must lie in [0, {len(fam) - 2}] (a level with a wider SAE after it)"
        )
    return fam[level].W_dec, fam[level + 1].W_dec


def cosine_heatmap(
    family: Family | Sequence[SAE],
    *,
    level: int,
    small: Sequence[int],
    large: Sequence[int],
    labels: Mapping[Any, str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Decoder cosines between ``small`` features of ``level`` (columns) and ``large``
    features of ``level + 1`` (rows), as an annotated heatmap."""
    W_small_SD, W_large_LD = _decoders(family, level)
    for name, idx, width in (
        ("small", small, W_small_SD.shape[0]),
        ("large", large, W_large_LD.shape[0]),
    ):
        if not len(idx) or any(not 0 <= int(i) < width for i in idx):
            raise ArgumentError(name, list(idx), f"must list features in [0, {width})")
    cos_LS = (
        unit_rows(W_large_LD[list(large)].float()) @ unit_rows(W_small_SD[list(small)].float()).T
    )
    by_id = labels_by_id(labels)

    def tick(level_: int, feature: int) -> str:
        nid = node_id((level_, feature))
        label = by_id.get(nid)
        return nid if not label else f"{nid} {_plain(_short(label))}"

    x = [tick(level, int(i)) for i in small]
    y = [tick(level + 1, int(j)) for j in large]
    fig = go.Figure(
        go.Heatmap(
            z=cos_LS.tolist(),
            x=x,
            y=y,
            zmin=-1,
            zmax=1,
            zmid=0,
            colorscale="RdBu_r",
            texttemplate="%{z:.2f}",
            colorbar={"title": {"text": "decoder cosine"}},
            hovertemplate="small %{x}<br>large %{y}<br>cos %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": _plain(title or f"Decoder cosine, level {level} vs {level + 1}")},
        xaxis={"title": {"text": f"level {level} (narrower)"}, "type": "category"},
        yaxis={
            "title": {"text": f"level {level + 1} (wider)"},
            "type": "category",
            "autorange": "reversed",
        },
    )
    return fig


def split_heatmap(
    family: Family | Sequence[SAE],
    parent: tuple[int, int] | str,
    *,
    G: nx.DiGraph | None = None,
    threshold: float = 0.7,
    n_neighbours: int = 5,
    labels: Mapping[Any, str] | None = None,
) -> go.Figure:
    """The decoder-cosine heatmap of one split: a parent's children at the next level (rows)
    against the parent and its neighbourhood at its own level (columns).

    Children are the parent's successors in the feature DAG ``G`` when given, else the wider
    features whose decoder cosine to the parent is > ``threshold``; with none, the three
    nearest are shown. The neighbourhood is the parent, its ``n_neighbours`` nearest features
    by decoder cosine, and (with ``G``) the children's other parents.
    """
    level, feature = parse_node_id(parent, name="parent")
    W_small_SD, W_large_LD = _decoders(family, level)
    if feature >= W_small_SD.shape[0]:
        raise SaegeoError(
            f"split_heatmap(): parent {node_id((level, feature))} is beyond width "
            f"{W_small_SD.shape[0]}"
        )
    parent_D = unit_rows(W_small_SD[feature : feature + 1].float())[0]
    to_large_L = unit_rows(W_large_LD.float()) @ parent_D
    to_small_S = unit_rows(W_small_SD.float()) @ parent_D
    if G is not None:
        children = [c[1] for c in G.successors((level, feature))]
    else:
        children = (to_large_L > threshold).nonzero().squeeze(1).tolist()
    if not children:
        children = to_large_L.topk(min(3, to_large_L.numel())).indices.tolist()
    children.sort(key=lambda j: -float(to_large_L[j]))
    to_small_S[feature] = float("inf")
    small = to_small_S.topk(min(n_neighbours + 1, to_small_S.numel())).indices.tolist()
    if G is not None:
        for child in children:
            for other in G.predecessors((level + 1, child)):
                if other[1] not in small:
                    small.append(other[1])
    return cosine_heatmap(
        family,
        level=level,
        small=small,
        large=children,
        labels=labels,
        title=f"Split of {node_id((level, feature))}: its children at level "
        f"{level + 1} vs its neighbourhood at level {level}",
    )


_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.tree-nodes { border-collapse: collapse; font-size: 0.85em;
                   font-variant-numeric: tabular-nums; margin: 0.5em 0 1.5em; }
table.tree-nodes th, table.tree-nodes td { border: 1px solid #ddd; padding: 2px 8px;
                                           text-align: right; white-space: nowrap; }
table.tree-nodes th { background: #f4f4f4; }
table.tree-nodes .text { text-align: left; white-space: normal; max-width: 36em; }
"""
"""CSS of the tree pages: the node tables under the figures."""


def _link(url: Any) -> str:
    """A clickable link to a feature's page (http and https only), else a dash."""
    text = str(url or "")
    if not text.startswith(("https://", "http://")):
        return "–"
    return f'<a href="{html.escape(text)}" target="_blank" rel="noopener">{html.escape(text)}</a>'


def tree_table_html(
    T: nx.DiGraph, *, labels: Mapping[Any, str] | None = None, max_rows: int = 300
) -> str:
    """The features of a tree as an HTML table, depth first (children best first), indented by
    level: id, SAE width, score of the edge from the parent, label, and where the tree has
    them, firing frequency, maximum activation, other parents, and the Neuronpedia page as a
    link that opens it.

    Examples
    --------
    >>> T = nx.DiGraph(metric="decoder_cosine", root="0/3")
    >>> T.add_node((0, 3), width=8, score=None,
    ...            neuronpedia="https://www.neuronpedia.org/gpt2-small/8-res_fs768-jb/3")
    >>> T.add_node((1, 5), width=16, score=0.9)
    >>> T.add_edge((0, 3), (1, 5), score=0.9)
    >>> page = tree_table_html(T, labels={"1/5": "cat"})
    >>> '<a href="https://www.neuronpedia.org/gpt2-small/8-res_fs768-jb/3"' in page
    True
    """
    by_id = labels_by_id(labels)
    metric = html.escape(str(T.graph.get("metric", "score")))
    present = {key for _, data in T.nodes(data=True) for key, v in data.items() if v}
    # (header, is text, cell of a node's data and label); columns nothing in the tree fills
    # are left out.
    columns: list[tuple[str, bool, Callable[[dict[str, Any], Any], str]]] = [
        ("width", False, lambda d, _: html.escape(str(d.get("width", "–")))),
        (
            metric,
            False,
            lambda d, _: "root" if d.get("score") is None else _fmt(d["score"], ".3f"),
        ),
        ("label", True, lambda _, label: html.escape(str(label)) if label else "–"),
    ]
    if "freq" in present:
        columns.append(("freq", False, lambda d, _: _fmt(d.get("freq"))))
    if "max_act" in present:
        columns.append(("max act", False, lambda d, _: _fmt(d.get("max_act"))))
    if "other_parents" in present:
        columns.append(
            (
                "other parents",
                True,
                lambda d, _: (
                    html.escape(
                        ", ".join(f"{pid} ({s:.2f})" for pid, s in d.get("other_parents", []))
                    )
                    or "–"
                ),
            )
        )
    if "neuronpedia" in present:
        columns.append(("Neuronpedia", True, lambda d, _: _link(d.get("neuronpedia"))))

    def css(text: bool) -> str:
        return ' class="text"' if text else ""

    head = '<tr><th class="text">feature</th>' + "".join(
        f"<th{css(text)}>{name}</th>" for name, text, _ in columns
    )
    rows: list[str] = []
    for node, depth in walk_tree(T):
        if len(rows) == max_rows:
            break
        data = T.nodes[node]
        nid = node_id(node)
        label = by_id.get(nid, data.get("label"))
        cells = f'<td class="text" style="padding-left: {0.5 + 1.5 * depth}em">{nid}</td>'
        cells += "".join(f"<td{css(text)}>{cell(data, label)}</td>" for _, text, cell in columns)
        rows.append(f'<tr data-feature="{nid}">{cells}</tr>')
    more = T.number_of_nodes() - len(rows)
    note = f"<p>… and {more:,} more features (all are in the JSON).</p>" if more > 0 else ""
    body = "".join(rows)
    return (
        f'<table class="tree-nodes"><thead>{head}</tr></thead><tbody>{body}</tbody></table>{note}'
    )


def tree_section_html(
    T: nx.DiGraph,
    fig: go.Figure,
    *,
    labels: Mapping[Any, str] | None = None,
    include_plotlyjs: bool = True,
    height: str = "520px",
) -> str:
    """A tree's figure and, below it, its table of features (:func:`tree_table_html`): open
    for trees of up to 40 features, folded away for larger ones."""
    figure = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, default_height=height)
    n = T.number_of_nodes()
    opened = " open" if n <= 40 else ""
    table = tree_table_html(T, labels=labels)
    return (
        f"{figure}<details{opened}><summary>The {n:,} features of this tree</summary>"
        f"{table}</details>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{GENERATOR_META}'
        f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def forest_html(
    trees: Sequence[nx.DiGraph],
    *,
    labels: Mapping[Any, str] | None = None,
    top: int = 10,
    kind: TreeKind = "icicle",
    title: str = "Feature forest",
) -> str:
    """A standalone HTML page (plotly.js embedded) with the figures of the first ``top`` trees,
    on one colour scale (:func:`tree_score_range`), each above its table of features."""
    shown = list(trees[:top])
    scale = tree_score_range(shown)
    parts = []
    for rank, T in enumerate(shown):
        fig = tree_figure(
            T,
            labels=labels,
            kind=kind,
            title=f"#{rank + 1}: feature tree {node_id(tree_root(T))} "
            f"({T.number_of_nodes()} features)",
            score_range=scale,
        )
        parts.append(tree_section_html(T, fig, labels=labels, include_plotlyjs=rank == 0))
    if not parts:
        parts.append("<p>No trees.</p>")
    return _page(title, "\n".join(f"<section>{part}</section>" for part in parts))


def tree_page(
    T: nx.DiGraph, *, labels: Mapping[Any, str] | None = None, kind: TreeKind = "icicle"
) -> str:
    """One tree as a standalone HTML page: its figure above its table of features."""
    fig = tree_figure(T, labels=labels, kind=kind)
    title = f"Feature tree {node_id(tree_root(T))}"
    return _page(title, tree_section_html(T, fig, labels=labels, height="640px"))


def save_html(
    fig: go.Figure | str, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a figure (or a page from :func:`forest_html`) as standalone HTML, atomically.

    plotly.js is embedded, so the page needs no network. ``path`` must be new, or (with
    ``overwrite=True``) a page saegeo wrote; anything else there is refused
    (:mod:`saegeo.runtime.claim`).
    """
    from saegeo.runtime.claim import claim_output
    from saegeo.runtime.outputs import Output

    with claim_output(Output.named(path, "html", "path"), force=overwrite) as claim:
        claim.path.write_text(fig if isinstance(fig, str) else figure_page(fig), encoding="utf-8")
        claim.commit()
    return Path(path)


def figure_page(fig: go.Figure) -> str:
    """A figure as a standalone HTML page (plotly.js embedded), marked as written by saegeo."""
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    return page.replace("<head>", f"<head>\n    {GENERATOR_META}", 1)
