"""The co-firing, nesting and containment metrics of feature DAGs, the tree-recovery scoring
rule, and tree recovery on a small family trained by SAELens on a SAELens synthetic
hierarchy."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from helpers.cofiring import naive_cofiring, naive_presence, naive_present
from test_dag import edge_scores, nested_family

import saegeo as sg
from saegeo.trees.dag import DEFAULT_THRESHOLDS, feature_dag
from saegeo.trees.recovery import latent_features, recovery, subtree_matrix, true_pairs

# --------------------------------------------------------------------------- DAG metrics


@pytest.mark.parametrize("metric", ["cofiring", "nesting", "containment"])
def test_cofiring_metrics_edges_match_dense_reference(metric):
    fam = nested_family(widths=(5, 9, 14), d=8, noise=0.6)
    acts = torch.randn(400, 8)
    G = feature_dag(fam, metric=metric, acts=acts, progress=False, device="cpu", batch_size=64)
    threshold = DEFAULT_THRESHOLDS[metric]
    assert G.graph["metric"] == metric and G.graph["threshold"] == threshold
    codes = [sg.encode_codes(sae, acts, progress=False).toarray() for sae in fam]
    x = acts.double().numpy()
    expected = {}
    for level in range(len(fam) - 1):
        W = fam[level].W_dec.double().numpy()
        parent = naive_present(W, codes[level], x) if metric == "containment" else codes[level]
        score = naive_cofiring(parent, codes[level + 1], weighted=False)
        if metric != "cofiring":
            presence = naive_presence(W, codes[level], codes[level + 1], x)
            score = np.where(score > 0, np.minimum(score, presence), 0.0)
        for i, j in zip(*np.nonzero(score > threshold), strict=True):
            expected[((level, int(i)), (level + 1, int(j)))] = score[i, j]
    got = edge_scores(G)
    assert expected and got.keys() == expected.keys()
    assert max(abs(got[e] - expected[e]) for e in got) < 1e-5


@pytest.mark.parametrize("metric", ["cofiring", "nesting", "containment"])
def test_cofiring_metrics_need_activations(metric):
    with pytest.raises(sg.SaegeoError, match=f"metric='{metric}' needs activations"):
        feature_dag(nested_family(), metric=metric)


# --------------------------------------------------------------------------- scoring rule


def test_latents_below_half_cosine_are_unscored():
    directions = torch.eye(3)
    W = torch.tensor([[1.0, 0.2, 0.0], [1.0, 1.0, 1.0], [0.0, -1.0, 0.1], [0.6, 0.8, 0.0]])
    # cosines to the best feature: 0.98, 0.577, -0.0 (feature 2 at 0.0995), 0.8
    assert latent_features(W, directions).tolist() == [0, 0, -1, 1]
    assert latent_features(W, directions, min_cos=0.6).tolist() == [0, -1, -1, 1]


def test_true_pairs_are_continuations_children_and_deeper_descendants():
    parent = [-1, -1, 0, 0, 2]  # 0 -> {2, 3}, 2 -> 4; 1 alone
    assert subtree_matrix(parent)[0].tolist() == [True, False, True, True, True]
    features = [np.array([0, 1, -1]), np.array([4, 1, 3, 2, 0])]
    expected = {((0, 0), (1, j)) for j in (0, 2, 3, 4)} | {((0, 1), (1, 1))}
    assert true_pairs(features, parent) == expected
    edges = [
        ((0, 0), (1, 3)),  # child: correct
        ((0, 1), (1, 2)),  # unrelated: wrong
        ((0, 2), (1, 0)),  # from an unscored latent: left out
        ((0, 0), (1, 0)),  # grandchild: correct
    ]
    r = recovery(edges, features, parent)
    assert (r.correct, r.predicted, r.true_pairs) == (2, 3, 5)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 5)
    assert recovery([], features, parent).precision == 1.0


def test_subtree_matrix_rejects_a_cycle():
    with pytest.raises(sg.SaegeoError, match="not a forest"):
        subtree_matrix([1, 0])


# --------------------------------------------------------------------------- SAELens family


def test_nesting_and_containment_recover_a_saelens_synthetic_hierarchy():
    """TopK SAEs of widths 3 (k=1) and 12 (k=2) trained by SAELens's own trainer on a SAELens
    synthetic hierarchy (3 roots with 3 mutually exclusive children each, 32 dimensions,
    400 steps each). Scored by saegeo.trees.recovery, nesting and containment recover the
    hierarchy: observed precision 1.0 and recall 0.9 for both (one child latent of the wider
    SAE fires on a sibling's tokens too). Here, unlike in the benchmark's deeper families, the
    child latents carry their parent's direction (k is as large as the features on a token,
    and the parent latent has no room in the narrow SAE), so decoder cosine does as well."""
    pytest.importorskip("sae_lens")
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import (
        ActivationGenerator,
        FeatureDictionary,
        HierarchyConfig,
        generate_hierarchy,
        train_toy_sae,
    )

    torch.manual_seed(1)
    n_features, d = 12, 32
    hierarchy = generate_hierarchy(
        n_features,
        HierarchyConfig(
            total_root_nodes=3, branching_factor=3, max_depth=1, mutually_exclusive_portion=1.0
        ),
        seed=0,
    )
    parent = [-1] * n_features
    for root in hierarchy.roots:
        for child in root.children:
            parent[child.feature_index] = root.feature_index
    base = torch.tensor([0.15 if p < 0 else 0.15 * 0.3 for p in parent])
    probs = base * hierarchy.compute_probability_correction_factors(base)
    generator = ActivationGenerator(n_features, probs, modify_activations=hierarchy.modifier)
    dictionary = FeatureDictionary(n_features, d, seed=0)
    saes = []
    for width, k in [(3, 1), (12, 2)]:
        lens = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k))
        train_toy_sae(
            lens, dictionary, generator, training_samples=400 * 512, batch_size=512, lr=3e-3
        )
        with tempfile.TemporaryDirectory() as tmp:
            lens.save_model(tmp)
            saes.append(sg.load_sae(tmp))
    family = sg.Family(saes)
    with torch.no_grad():
        acts = dictionary(generator(8000))
    features = [latent_features(sae.W_dec, dictionary.feature_vectors) for sae in family]
    results = {}
    for metric in ("decoder_cosine", "masked_cosine", "nesting", "containment"):
        G = feature_dag(family, metric=metric, acts=acts, progress=False, device="cpu")
        results[metric] = recovery(G.edges, features, parent)
    assert results["nesting"].true_pairs >= 9, results
    for metric in ("nesting", "containment"):
        found = results[metric]
        assert found.precision >= 0.9 and found.recall >= 0.9, results
        assert found.precision >= results["masked_cosine"].precision, results
