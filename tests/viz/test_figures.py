"""Plotly figures of trees and splits: contents, hover text, standalone HTML."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from helpers.tree import in_page, synthetic_family

import saegeo.trees.dag as dag_module
from saegeo.errors import SaegeoError
from saegeo.trees.dag import feature_dag, forest, node_id
from saegeo.trees.tree_json import tree_from_json, tree_to_json
from saegeo.viz.figures import (
    cosine_heatmap,
    forest_html,
    save_html,
    split_heatmap,
    tree_figure,
    tree_page,
    tree_score_range,
    tree_table_html,
)


@pytest.fixture(scope="module")
def toy():
    return synthetic_family(n_roots=2, branching=2, depth=2, d=32, noise=0.1)


@pytest.fixture(scope="module")
def dag(toy):
    return feature_dag(toy.family, acts=toy.toy.to_store(1000), progress=False)


@pytest.fixture(scope="module")
def trees(dag):
    return forest(dag, min_size=2)[1]


def test_tree_figure_holds_every_node_with_hover(trees):
    T = trees[0]
    root = node_id(next(n for n in T if T.in_degree(n) == 0))
    fig = tree_figure(T, labels={root: "dogs & <cats>"})
    assert isinstance(fig, go.Figure)
    trace = fig.data[0]
    assert isinstance(trace, go.Icicle)
    assert sorted(trace.ids) == sorted(node_id(n) for n in T)
    parents = dict(zip(trace.ids, trace.parents, strict=True))
    assert parents[root] == ""
    assert all(parents[node_id(v)] == node_id(u) for u, v in T.edges)
    hover = {row[0]: row for row in trace.customdata}
    assert hover[root][2] == "root" and hover[root][6] == "dogs &amp; &lt;cats&gt;"
    child = node_id(next(iter(T.successors(next(n for n in T if T.in_degree(n) == 0)))))
    assert float(hover[child][2]) > 0.7  # the edge score
    assert hover[child][3] != "–" and hover[child][4] != "–"  # freq and max_act
    for key in ("score", "freq", "max act", "label"):
        assert key in trace.hovertemplate or "decoder_cosine" in trace.hovertemplate


def test_tree_figure_renders_standalone_html(trees, tmp_path):
    T = trees[0]
    path = save_html(tree_figure(T), tmp_path / "tree.html")
    text = path.read_text()
    assert all(in_page(node_id(n), text) for n in T)
    assert (
        'src="https://cdn.plot.ly' not in text and len(text) > 1_000_000
    )  # plotly.js embedded: offline
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["sunburst", "treemap"])
def test_other_tree_kinds_and_trees_read_from_json(trees, kind):
    T = tree_from_json(tree_to_json(trees[0], labels={"1/0": "x"}))
    fig = tree_figure(T, kind=kind)
    assert type(fig.data[0]).__name__.lower() == kind
    assert len(fig.data[0].ids) == T.number_of_nodes()


def test_tree_figure_rejects_unknown_kind(trees):
    with pytest.raises(SaegeoError, match="kind"):
        tree_figure(trees[0], kind="pie")


def test_forest_page_embeds_plotly_once(trees, tmp_path):
    html = forest_html(trees, top=2)
    assert html.count("<section>") == 2
    assert html.count("plotly.js v") == 1 and 'src="https://cdn.plot.ly' not in html
    for T in trees[:2]:
        assert all(in_page(node_id(n), html) for n in T)
    assert save_html(html, tmp_path / "forest.html").read_text() == html
    assert "No trees" in forest_html([])


def test_cosine_heatmap_values(toy):
    family = toy.family
    fig = cosine_heatmap(family, level=1, small=[0, 2], large=[3, 1, 4])
    z = torch.tensor(fig.data[0].z)
    unit = torch.nn.functional.normalize
    expected = unit(family[2].W_dec[[3, 1, 4]], dim=1) @ unit(family[1].W_dec[[0, 2]], dim=1).T
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=0)
    assert list(fig.data[0].x) == ["1/0", "1/2"] and list(fig.data[0].y) == ["2/3", "2/1", "2/4"]
    with pytest.raises(SaegeoError, match="large"):
        cosine_heatmap(family, level=1, small=[0], large=[99])
    with pytest.raises(SaegeoError, match="level"):
        cosine_heatmap(family, level=2, small=[0], large=[0])


def test_split_heatmap_shows_children_against_neighbourhood(toy, dag):
    parent = next(n for n in dag if n[0] == 0 and dag.out_degree(n) > 0)
    fig = split_heatmap(toy.family, parent, G=dag, n_neighbours=2)
    heat = fig.data[0]
    children = sorted(node_id(c) for c in dag.successors(parent))
    assert sorted(heat.y) == children
    assert heat.x[0] == node_id(parent) and len(heat.x) >= 2
    column = [row[0] for row in heat.z]
    assert column == sorted(column, reverse=True) and min(column) > 0.7
    # Without the DAG, children are the wider features above the decoder-cosine threshold.
    assert sorted(split_heatmap(toy.family, node_id(parent)).data[0].y) == children


def test_forest_page_draws_every_tree_on_one_colour_scale(trees):
    assert len(trees) >= 2
    html = forest_html(trees, top=3)
    shown = trees[:3]
    low, high = tree_score_range(shown)
    scores = [float(d["score"]) for T in shown for _, d in T.nodes(data=True) if d.get("score")]
    assert low <= min(scores) and high == pytest.approx(np.quantile(scores, 0.95))
    assert any(tree_score_range([T]) != (low, high) for T in shown)  # scales would differ
    # Each figure's marker carries the shared range, not its own tree's.
    assert html.count(f'"cmin":{low}') == len(shown) == html.count(f'"cmax":{high}')
    single = tree_figure(trees[1]).data[0].marker
    shared = tree_figure(trees[1], score_range=(low, high)).data[0].marker
    assert (shared.cmin, shared.cmax) == (low, high)
    assert single.cmin >= low and single.cmax <= high


def test_tree_boxes_show_labels_and_the_table_links_neuronpedia(trees):
    T = trees[0].copy()
    root = dag_module.tree_root(T)
    url = "https://www.neuronpedia.org/gpt2-small/8-res_fs768-jb/12"
    T.nodes[root]["neuronpedia"] = url
    labels = {node_id(root): "dogs · cats"}
    trace = tree_figure(T, labels=labels).data[0]
    text = dict(zip(trace.ids, trace.text, strict=True))
    assert text[node_id(root)] == f"<b>dogs · cats</b><br>{node_id(root)}"
    table = tree_table_html(T, labels=labels)
    assert f'<a href="{url}" target="_blank" rel="noopener">' in table
    # Boxes and rows list siblings in the same order (best score first), as the JSON does.
    order = [node_id(n) for n, _ in dag_module.walk_tree(T)]
    assert list(trace.ids) == order and trace.sort is False
    assert [table.index(f'data-feature="{i}"') for i in order] == sorted(
        table.index(f'data-feature="{i}"') for i in order
    )
    assert table.count("<tr data-feature=") == T.number_of_nodes()
    assert f'<tr data-feature="{node_id(root)}">' in table and "dogs · cats" in table
    page = tree_page(T, labels=labels)
    assert f'<a href="{url}"' in page and in_page(node_id(root), page)
    # A URL that is not http(s) never becomes a link.
    T.nodes[root]["neuronpedia"] = "javascript:alert(1)"
    assert "javascript:" not in tree_table_html(T)
