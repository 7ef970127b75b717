"""Interactive plotly figures of feature trees and splits.

Every function returns a ``plotly.graph_objects.Figure``, which shows inline in Jupyter; save
it as a standalone page with :func:`save_html` (plotly.js embedded, so the page works
offline). :func:`forest_html` puts the top trees of a forest on one page.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import networkx as nx
import plotly.graph_objects as go
import torch

from saegeo.core.family import Family
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.geometry.similarity import unit_rows
from saegeo.io.outputs import GENERATOR_META
from saegeo.trees.dag import labels_by_id, node_id, parse_node_id, tree_root

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
) -> go.Figure:
    """An interactive figure of one feature tree: root on the left, wider SAEs to the right.

    Parameters
    ----------
    T
        A tree from :func:`saegeo.feature_tree` (or :func:`saegeo.trees.tree_json.tree_from_json`).
    labels
        Optional text per node (``"level/feature"`` or ``(level, feature)``): a description or
        token examples, shown on the boxes (shortened) and in full on hover; node attributes
        ``label`` are used otherwise.
    kind
        ``"icicle"`` (default), ``"sunburst"`` or ``"treemap"``. Boxes are sized by leaves and
        coloured by the score of the edge from their parent (the root by the largest score).
    title
        Figure title; by default the root, the widths and the metric.

    Hover shows the node id, the SAE (width and name), the score, other parents, the firing
    frequency and maximum activation where the tree has them, the label, and for published
    SAEs the feature's log10 density and Neuronpedia page.
    """
    if kind not in _TRACES:
        raise SaegeoError(f"tree_figure(): kind must be one of {get_args(TreeKind)}, got {kind!r}")
    root = tree_root(T)
    by_id = labels_by_id(labels)
    nodes = [root] + [n for n in nx.topological_sort(T) if n != root]
    ids, parents, texts, scores, custom = [], [], [], [], []
    for node in nodes:
        data = T.nodes[node]
        nid = node_id(node)
        label = by_id.get(nid, data.get("label"))
        parent = next(iter(T.predecessors(node)), None)
        ids.append(nid)
        parents.append("" if parent is None else node_id(parent))
        texts.append(nid if not label else f"{nid}<br>{_plain(_short(str(label)))}")
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
    known = [s for s in scores if s is not None]
    top = max(known, default=1.0)
    low = min([float(T.graph.get("threshold", min(known, default=0.0)))] + known)
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
            "cmax": max(top, low + 1e-6),
            "showscale": True,
            "colorbar": {"title": {"text": metric}},
        },
        maxdepth=-1,
    )
    fig = go.Figure(trace)
    if title is None:
        widths = " → ".join(str(lv["width"]) for lv in T.graph.get("levels", []))
        threshold = T.graph.get("threshold")
        rule = f"{metric} > {threshold:g}" if threshold is not None else metric
        title = f"Feature tree {node_id(root)} — widths {widths} — {rule}"
    fig.update_layout(title={"text": _plain(title)}, margin={"t": 50, "l": 10, "r": 10, "b": 10})
    return fig


def _decoders(
    family: Family | Sequence[SAE], level: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    fam = family if isinstance(family, Family) else Family(list(family))
    if not 0 <= level < len(fam) - 1:
        raise SaegeoError(
            f"{name}: level must lie in [0, {len(fam) - 2}] (a level with a wider "
            f"SAE after it), got {level}"
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
    W_small_SD, W_large_LD = _decoders(family, level, "cosine_heatmap()")
    for name, idx, width in (
        ("small", small, W_small_SD.shape[0]),
        ("large", large, W_large_LD.shape[0]),
    ):
        if not len(idx) or any(not 0 <= int(i) < width for i in idx):
            raise SaegeoError(
                f"cosine_heatmap(): {name} must list features in [0, {width}), got {list(idx)}"
            )
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
    W_small_SD, W_large_LD = _decoders(family, level, "split_heatmap()")
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


def forest_html(
    trees: Sequence[nx.DiGraph],
    *,
    labels: Mapping[Any, str] | None = None,
    top: int = 10,
    kind: TreeKind = "icicle",
    title: str = "Feature forest",
) -> str:
    """A standalone HTML page (plotly.js embedded) with the figures of the first ``top`` trees."""
    parts = []
    for rank, T in enumerate(trees[:top]):
        fig = tree_figure(
            T,
            labels=labels,
            kind=kind,
            title=f"#{rank + 1}: feature tree {node_id(tree_root(T))} "
            f"({T.number_of_nodes()} features)",
        )
        parts.append(
            fig.to_html(full_html=False, include_plotlyjs=(rank == 0), default_height="520px")
        )
    if not parts:
        parts.append("<p>No trees.</p>")
    body = "\n".join(f"<section>{part}</section>" for part in parts)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{GENERATOR_META}'
        f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def save_html(
    fig: go.Figure | str, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a figure (or a page from :func:`forest_html`) as standalone HTML, atomically.

    plotly.js is embedded, so the page needs no network. ``path`` must be new, or (with
    ``overwrite=True``) a page saegeo wrote; anything else there is refused
    (:mod:`saegeo.io.claim`).
    """
    from saegeo.io.claim import claim_output
    from saegeo.io.outputs import Output

    with claim_output(Output.named(path, "html", "path"), force=overwrite) as claim:
        claim.path.write_text(fig if isinstance(fig, str) else figure_page(fig), encoding="utf-8")
        claim.commit()
    return Path(path)


def figure_page(fig: go.Figure) -> str:
    """A figure as a standalone HTML page (plotly.js embedded), marked as written by saegeo."""
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    return page.replace("<head>", f"<head>\n    {GENERATOR_META}", 1)
