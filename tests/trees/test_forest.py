"""Forest ranking: best-parent splits, hubs, and the true splits of a toy hierarchy first."""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from helpers.tree import synthetic_family

import saegeo as sg
from saegeo.trees.dag import feature_dag, node_id, tree_root
from saegeo.trees.forest import forest, split_summary


def test_split_summary_counts_only_children_it_parents_best():
    G = nx.DiGraph(levels=[{"level": 0, "width": 3}, {"level": 1, "width": 6}])
    G.add_edges_from([((0, 0), (1, j)) for j in range(3)], score=0.8)
    G.add_edge((0, 1), (1, 0), score=0.95)  # 1/0 continues 0/1 better than 0/0
    G.add_edge((0, 1), (1, 3), score=0.9)
    G.add_edge((0, 1), (1, 4), score=0.72)
    G.add_edge((0, 2), (1, 4), score=0.72)  # a tie goes to the lower index, 0/1
    assert split_summary(G, (0, 0)) == {
        "n_split_children": 2,
        "split_score": 0.8,
        "hub": False,
        "splits": True,
    }
    assert split_summary(G, (0, 1))["split_score"] == 0.9  # 0.95, 0.9, 0.72
    assert split_summary(G, (0, 2))["n_split_children"] == 0
    # Width ratio 2: more than 8 children make a hub, whatever the scores.
    G.add_edges_from([((0, 2), (1, j)) for j in range(6, 15)], score=0.99)
    assert split_summary(G, (0, 2))["hub"]
    assert not split_summary(G, (0, 2), max_children=10)["hub"]


def test_split_ranking_puts_the_true_splits_of_a_toy_hierarchy_first():
    """A toy hierarchy (4 roots × 4 children × 4 grandchildren, learnt as wider SAEs learn it)
    plus two distractors at the narrowest width: a hub whose direction 30 wider latents lean
    on, and an impostor between two true roots, which reaches a true root's children but is
    not their best parent. The four true roots rank first, the impostor after them, the hub
    last; ranking by size (or by children alone) would open on the hub."""
    tf = synthetic_family(n_roots=4, branching=4, depth=2, d=96, n_unrelated=2, seed=3)
    generator = torch.Generator().manual_seed(7)
    W0, W1 = tf.family[0].W_dec, tf.family[1].W_dec
    latent_of = {f: node for node, f in tf.feature_of.items()}
    true_roots = [latent_of[int(r)] for r in np.flatnonzero(tf.toy.parent.numpy() < 0)]
    (_, a), (_, b) = true_roots[:2]
    hub_D = torch.nn.functional.normalize(torch.randn(96, generator=generator), dim=0)
    impostor_D = torch.nn.functional.normalize(W0[a] + 0.3 * W0[b], dim=0)
    leaning_HD = hub_D + 0.5 * torch.nn.functional.normalize(
        torch.randn(30, 96, generator=generator), dim=1
    )
    family = sg.Family(
        [
            sg.SAE.from_decoder(torch.cat([W0, hub_D[None], impostor_D[None]])),
            sg.SAE.from_decoder(torch.cat([W1, leaning_HD])),
            tf.family[2],
        ]
    )
    hub, impostor = f"0/{W0.shape[0]}", f"0/{W0.shape[0] + 1}"
    G = feature_dag(family)
    assert G.out_degree((0, W0.shape[0])) == 30
    table, trees = forest(G, min_size=2)
    assert set(table["root"][:4]) == {node_id(r) for r in true_roots}
    assert (table["split_at"][:4] == table["root"][:4]).all()
    assert (table["n_split_children"][:4] == 4).all()
    assert table["root"].iloc[-1] == hub and table["hub"].iloc[-1]
    assert not table["hub"].iloc[:-1].any()
    row = table.set_index("root").loc[impostor]
    assert row["n_children"] >= 2 and row["n_split_children"] == 0 and row["split_at"] != impostor
    assert [node_id(tree_root(T)) for T in trees] == table["root"].tolist()
    by_size, _ = forest(G, rank_by="size", min_size=2)
    assert by_size["root"].iloc[0] == hub
