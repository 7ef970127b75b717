"""Feature DAGs, trees and forests: edges against dense references, best-parent trees, ranking,
and recovery of known hierarchies."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
from helpers.tree import scored_dag, synthetic_family, tree_edges

import saegeo as sg
import saegeo.trees.dag as dag_module
from saegeo.errors import SaegeoError
from saegeo.trees.dag import feature_dag, feature_tree, forest, forest_roots, node_id, parse_node_id
from saegeo.trees.forest import FOREST_COLUMNS


def relu_sae(W_dec: torch.Tensor, *, bias: float = -0.2, name: str | None = None) -> sg.SAE:
    """A ReLU SAE with tied encoder, so latents fire where the input points along them."""
    width, d_in = W_dec.shape
    return sg.SAE(
        W_enc=W_dec.T.clone(),
        b_enc=torch.full((width,), bias),
        W_dec=W_dec,
        b_dec=torch.zeros(d_in),
        arch="relu",
        metadata={"name": name or f"relu-{width}"},
    )


def nested_family(widths=(6, 12, 24), d: int = 10, noise: float = 0.4) -> sg.Family:
    """Each SAE's rows are noisy copies of the previous one's, so edges and multi-parents exist."""
    W = torch.nn.functional.normalize(torch.randn(widths[0], d), dim=1)
    saes = [relu_sae(W, name=f"w{widths[0]}")]
    for width in widths[1:]:
        base = W[torch.arange(width) % W.shape[0]]
        W = torch.nn.functional.normalize(base + noise * torch.randn(width, d) / d**0.5, dim=1)
        saes.append(relu_sae(W, name=f"w{width}"))
    return sg.Family(saes)


def dense_cosine(a: sg.SAE, b: sg.SAE) -> np.ndarray:
    A = torch.nn.functional.normalize(a.W_dec, dim=1)
    B = torch.nn.functional.normalize(b.W_dec, dim=1)
    return (A @ B.T).numpy()  # [small, large]


def naive_directed_mcs(parent_NP: np.ndarray, child_NC: np.ndarray) -> np.ndarray:
    """The tree view's directed MCS with max scaling, one pair at a time [P, C]."""
    out = np.zeros((parent_NP.shape[1], child_NC.shape[1]))
    for p in range(parent_NP.shape[1]):
        for c in range(child_NC.shape[1]):
            on = child_NC[:, c] != 0
            a, b = parent_NP[on, p], child_NC[on, c]
            den = math.sqrt((a @ a) * (b @ b))
            if den > 0:
                out[p, c] = (a @ b) / den * child_NC[:, c].max() / parent_NP[:, p].max()
    return out


def edge_scores(G: nx.DiGraph) -> dict:
    return {(u, v): data["score"] for u, v, data in G.edges(data=True)}


# --------------------------------------------------------------------------- DAG edges


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_decoder_cosine_edges_match_dense_reference(threshold):
    fam = nested_family()
    G = feature_dag(fam, threshold=threshold, device="cpu")
    expected = {}
    for level, (small, large) in enumerate(fam.pairs()):
        cos = dense_cosine(small, large)
        for i, j in zip(*np.nonzero(cos > threshold), strict=True):
            expected[((level, int(i)), (level + 1, int(j)))] = float(cos[i, j])
    got = edge_scores(G)
    assert got.keys() == expected.keys()
    assert max(abs(got[e] - expected[e]) for e in got) < 1e-5
    assert any(G.in_degree(n) > 1 for n in G)  # the reference has children with several parents


def test_child_gets_every_parent_above_threshold_not_only_the_nearest():
    # 40 narrow features within a few degrees of one direction: the wide feature along that
    # direction has all 40 as parents.
    direction = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
    small = direction + 0.05 * torch.randn(40, 16)
    large = torch.cat([direction, torch.randn(50, 16)])  # wider, so level 1
    G = feature_dag([sg.SAE.from_decoder(small), sg.SAE.from_decoder(large)], threshold=0.9)
    assert sorted(G.predecessors((1, 0))) == [(0, i) for i in range(40)]


def test_masked_cosine_edges_match_per_pair_reference():
    fam = nested_family(widths=(5, 9, 14), d=8, noise=0.6)
    acts = torch.randn(400, 8)
    G = feature_dag(fam, metric="masked_cosine", acts=acts, progress=False, device="cpu")
    assert G.graph["threshold"] == 0.6
    expected = {}
    codes = [sg.encode_codes(sae, acts, progress=False).toarray() for sae in fam]
    for level in range(len(fam) - 1):
        mcs = naive_directed_mcs(codes[level].astype(np.float64), codes[level + 1])
        for i, j in zip(*np.nonzero(mcs > 0.6), strict=True):
            expected[((level, int(i)), (level + 1, int(j)))] = mcs[i, j]
    got = edge_scores(G)
    assert expected and got.keys() == expected.keys()
    assert max(abs(got[e] - expected[e]) for e in got) < 1e-4


def test_each_sae_is_encoded_once(monkeypatch):
    calls = []
    real = dag_module.encode_codes

    def counting(sae, acts, **kwargs):
        calls.append(sae.name)
        return real(sae, acts, **kwargs)

    monkeypatch.setattr(dag_module, "encode_codes", counting)
    fam = nested_family(widths=(4, 8, 16, 32), d=8)
    feature_dag(fam, metric="masked_cosine", acts=torch.randn(100, 8), progress=False)
    assert calls == fam.names


def test_node_and_graph_attributes():
    fam = nested_family(widths=(4, 8), d=8)
    acts = torch.randn(300, 8)
    G = feature_dag(fam, acts=acts, progress=False)
    assert G.number_of_nodes() == 12
    assert G.graph == {
        "metric": "decoder_cosine",
        "threshold": 0.7,
        "levels": [
            {"level": 0, "width": 4, "source": "w4"},
            {"level": 1, "width": 8, "source": "w8"},
        ],
    }
    codes = sg.encode_codes(fam[1], acts, progress=False).toarray()
    for j in range(8):
        data = G.nodes[(1, j)]
        assert (data["level"], data["feature"], data["width"], data["source"]) == (1, j, 8, "w8")
        assert data["freq"] == pytest.approx((codes[:, j] != 0).mean())
        assert data["max_act"] == pytest.approx(codes[:, j].max())
    assert all(u[0] + 1 == v[0] for u, v in G.edges)
    assert "freq" not in feature_dag(fam).nodes[(0, 0)]  # no activations, no statistics


def test_single_sae_gives_nodes_without_edges():
    G = feature_dag([sg.SAE.from_decoder(torch.eye(3))])
    assert G.number_of_nodes() == 3 and G.number_of_edges() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "masked_cosine"}, "needs activations"),
        ({"metric": "cosine"}, "metric"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": True}, "threshold"),
    ],
)
def test_user_errors(kwargs, message):
    with pytest.raises(SaegeoError, match=message):
        feature_dag(nested_family(widths=(2, 4), d=4), **kwargs)


# --------------------------------------------------------------------------- trees


@pytest.fixture
def diamond() -> nx.DiGraph:
    """(0,0) splits into (1,0) and (1,1), which both reach (2,5); (0,1) also reaches (1,1)."""
    edges = {
        ((0, 0), (1, 0)): 0.9,
        ((0, 0), (1, 1)): 0.8,
        ((0, 1), (1, 1)): 0.95,
        ((1, 0), (2, 5)): 0.75,
        ((1, 1), (2, 5)): 0.85,
        ((1, 1), (2, 6)): 0.72,
    }
    return scored_dag(edges, metric="decoder_cosine", threshold=0.7, levels=[])


def test_tree_keeps_best_parent_within_reachable_set(diamond):
    T = feature_tree(diamond, root=(0, 0))
    assert nx.is_arborescence(T)
    assert set(T.edges) == {((0, 0), (1, 0)), ((0, 0), (1, 1)), ((1, 1), (2, 5)), ((1, 1), (2, 6))}
    assert T.nodes[(2, 5)]["score"] == 0.85
    assert T.nodes[(2, 5)]["other_parents"] == [["1/0", 0.75]]
    # (0, 1) scores higher for (1, 1) but is not reachable from the root: not listed.
    assert T.nodes[(1, 1)]["other_parents"] == []
    assert T.nodes[(0, 0)]["score"] is None
    assert T.graph["root"] == "0/0" and T.graph["metric"] == "decoder_cosine"
    assert diamond.number_of_edges() == 6  # the DAG is left alone


def test_tree_ties_go_to_the_lower_feature():
    G = nx.DiGraph()
    G.add_edges_from(
        [((0, 0), (1, 3)), ((0, 0), (1, 1)), ((1, 3), (2, 0)), ((1, 1), (2, 0))], score=0.8
    )
    T = feature_tree(G, "0/0")
    assert list(T.predecessors((2, 0))) == [(1, 1)]
    assert T.nodes[(2, 0)]["other_parents"] == [["1/3", 0.8]]


def test_tree_root_forms_and_errors(diamond):
    assert set(feature_tree(diamond, "1/1")) == set(feature_tree(diamond, [1, 1]))
    for bad in ["1-1", "a/b", "1/", (1, -1), (1.5, 2), "7/0"]:
        with pytest.raises(SaegeoError, match="root"):
            feature_tree(diamond, bad)


def test_node_ids_round_trip():
    for node in [(0, 0), (3, 98303)]:
        assert parse_node_id(node_id(node)) == node
    assert node_id(" 2/7".strip()) == "2/7"


# --------------------------------------------------------------------------- forests


def test_forest_roots_include_parentless_features_that_split(diamond):
    diamond.add_edge((1, 7), (2, 8), score=0.9)  # new at level 1, splits at level 2
    diamond.add_node((1, 9))  # new at level 1, no children: no tree
    assert forest_roots(diamond) == [(0, 0), (0, 1), (1, 7)]
    table, trees = forest(diamond)
    assert table["root"].tolist() == ["0/0", "0/1", "1/7"]
    assert [node_id(dag_module.tree_root(T)) for T in trees] == table["root"].tolist()
    assert table.loc[0, ["size", "depth", "n_children", "n_leaves", "max_branching"]].tolist() == [
        5,
        2,
        2,
        3,
        2,
    ]
    assert table.loc[0, "n_multi_parent"] == 1


def test_forest_ranking_and_min_size():
    G = nx.DiGraph()
    G.add_nodes_from([(0, 0), (0, 1), (0, 2), (0, 3)])
    # 0/1: a chain of 4 (big, no split); 0/2: splits into 3 at once; 0/3 alone.
    G.add_edges_from([((0, 1), (1, 0)), ((1, 0), (2, 0)), ((2, 0), (3, 0))], score=0.9)
    G.add_edges_from([((0, 2), (1, j)) for j in (1, 2, 3)], score=0.8)
    by_size, _ = forest(G, rank_by="size")
    by_split, trees = forest(G, rank_by="split", min_size=2)
    assert by_size["root"].tolist() == ["0/1", "0/2", "0/0", "0/3"]
    assert by_split["root"].tolist() == ["0/2", "0/1"]
    assert by_split["split_at"].tolist() == ["0/2", None]
    assert by_split.index.name == "rank" and len(trees) == 2
    assert tuple(by_split.columns) == FOREST_COLUMNS
    # The documented contract: every column is described in forest()'s Returns.
    returns = forest.__doc__.split("Returns")[1].split("Examples")[0]
    assert all(f"``{column}``" in returns for column in FOREST_COLUMNS)
    for rank_by in ("split", "size"):
        empty, none = forest(G, rank_by=rank_by, min_size=99)
        assert empty.empty and none == [] and list(empty.columns) == list(by_split.columns)
    with pytest.raises(SaegeoError, match="rank_by"):
        forest(G, rank_by="width")
    with pytest.raises(SaegeoError, match="min_size"):
        forest(G, min_size=0)
    with pytest.raises(SaegeoError, match="max_children"):
        forest(G, max_children=0)


def test_forest_table_has_root_statistics_with_activations():
    fam = nested_family(widths=(4, 8), d=8)
    G = feature_dag(fam, acts=torch.randn(200, 8), progress=False)
    table, _ = forest(G)
    assert {"freq", "max_act"} <= set(table.columns)


# --------------------------------------------------------------------------- recovery


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return hits / max(len(found), 1), hits / max(len(truth), 1)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_recovers_synthetic_hierarchy(noise):
    """Decoders built as wider SAEs learn a toy hierarchy (true directions plus noise).

    A level-l latent is the sum of its feature and its ancestors, so a true parent and child
    latent have decoder cosine 0.82-0.85 and any other pair about 0 ± noise: with noise up to
    0.2 (relative to unit rows) every tree edge must be a true edge and every true edge found.
    """
    tf = synthetic_family(n_roots=4, branching=3, depth=2, d=64, noise=noise, n_unrelated=3)
    G = feature_dag(tf.family)
    _, trees = forest(G, min_size=2)
    assert precision_recall(tree_edges(trees), tf.truth) == (1.0, 1.0)


def candidate_directions(toy) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a latent standing for each true feature points, [n_features, d] twice.

    ``bare``: the feature plus its ancestors (a child fires only with its parent, so its
    latent carries the parent's direction: feature splitting). ``absorbed``: that plus each
    descendant weighted by its probability given the feature, the conditional mean an SAE
    learns when it is too narrow for the descendants (feature absorption).
    """
    bare, absorbed = [], []
    for f in range(toy.n_features):
        v = toy.directions[f] + sum(toy.directions[a] for a in nx.ancestors(toy.tree, f))
        bare.append(v / v.norm())
        for desc in nx.descendants(toy.tree, f):
            path = nx.shortest_path(toy.tree, f, desc)[1:]
            v = v + float(toy.prob[path].prod()) * toy.directions[desc]
        absorbed.append(v / v.norm())
    return torch.stack(bare), torch.stack(absorbed)


SEED_2_MISS = (
    "seed 2: one width-6 latent learns a mixture of two children, so decoder cosine finds only "
    "9 of 13 true child edges (recall 0.69); precision stays 1.0"
)


@pytest.mark.parametrize(
    "seed",
    [
        0,
        pytest.param(1, marks=pytest.mark.slow),
        pytest.param(
            2, marks=[pytest.mark.slow, pytest.mark.xfail(strict=True, reason=SEED_2_MISS)]
        ),
        pytest.param(3, marks=pytest.mark.slow),
    ],
)
def test_recovers_hierarchy_from_trained_family(seed):
    """Train a TopK family at widths 3, 6, 12 on a toy hierarchy (3 roots, 2 children each,
    2 grandchildren each; each child fires with probability 1/2 when its parent fires) and
    check that the forest's edges follow the true hierarchy.

    Ground truth: a latent stands for the true feature whose bare or absorbed direction
    (:func:`candidate_directions`) is within decoder cosine 0.9 of it (in d=32 a chance match
    is impossible); latents with no such feature (about 1 in 5 in these short runs) are left
    out of the scoring. An edge a -> b is true iff a's feature is b's feature or one of its
    ancestors (a wider SAE may already split a feature a level early). Precision: the
    fraction of tree edges between scored latents that are true. Recall: the fraction of
    scored latents with a true parent one level up whose tree parent is a true parent.

    Requirements:

    - decoder cosine: precision and recall >= 0.85. A true parent and child latent sit at
      cosine 0.84-1.0, but in this toy two sibling leaves share their ancestors' directions
      (cosine 2/3 before training noise, close to the 0.7 threshold), so a leaf that an SAE
      learns a level early may get a sibling as parent. Observed (seeds 0-5, each member
      trained from its own seed): precision 1.0 everywhere, recall 1.0 except seed 2 (0.69,
      marked as a known miss below).
    - masked cosine: precision and recall >= 0.8. Scores come from co-firing on 40k tokens and
      max-scaling can favour a weak, broadly firing parent, which best-parent assignment then keeps
      (the Matryoshka SAE tree view). Observed (seeds 0-5): precision 0.81-1.0, recall 0.87-1.0;
      seed 0 gives 0.88 and 1.0.
    """
    from saegeo.training.toy import ToyConfig, make_toy_model
    from saegeo.training.trainer import TrainConfig, train_family

    toy = make_toy_model(
        ToyConfig(
            n_roots=3,
            branching=2,
            depth=2,
            d=32,
            root_prob=0.1,
            child_prob=0.5,
            directions="orthogonal",
            seed=seed,
        )
    )
    store = toy.to_store(40_000, seed=seed)
    config = TrainConfig(
        arch="topk",
        k=2,
        tokens=40_000,
        batch_size=256,
        lr=1e-2,
        eval_tokens=0,
        progress=False,
        device="cpu",
        seed=seed,
    )
    family = train_family(store, [3, 6, 12], config).family

    bare, absorbed = candidate_directions(toy)
    feature = {}
    for level, sae in enumerate(family):
        W = torch.nn.functional.normalize(sae.W_dec, dim=1)
        best = torch.maximum(W @ bare.T, W @ absorbed.T).max(dim=1)
        for j, (f, cos) in enumerate(zip(best.indices.tolist(), best.values.tolist(), strict=True)):
            if cos > 0.9:
                feature[(level, j)] = f
    assert len(feature) >= 12, f"training learned too little to score: {feature}"

    def is_true(a, b) -> bool:
        return feature[a] == feature[b] or feature[a] in nx.ancestors(toy.tree, feature[b])

    children = {b for b in feature if any(a[0] == b[0] - 1 and is_true(a, b) for a in feature)}
    for metric, required in (("decoder_cosine", 0.85), ("masked_cosine", 0.8)):
        G = feature_dag(family, metric=metric, acts=store, progress=False, device="cpu")
        _, trees = forest(G, min_size=2)
        found = {(a, b) for a, b in tree_edges(trees) if a in feature and b in feature}
        precision = sum(is_true(a, b) for a, b in found) / max(len(found), 1)
        recall = sum(any(e[1] == b and is_true(*e) for e in found) for b in children) / len(
            children
        )
        assert precision >= required and recall >= required, (metric, precision, recall)
