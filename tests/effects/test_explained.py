"""The explained-share novelty score against a dense per-feature computation; the ROC AUC
against the pairwise definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg
from saegeo.core.normalization import output_scale
from saegeo.effects.delta import delta_mse
from saegeo.effects.explained import explained_share, roc_auc
from saegeo.errors import SaegeoError


def naive_explained(small: sg.SAE, large: sg.SAE, x_BD: torch.Tensor) -> np.ndarray:
    """[L, 3] explained, present, energy: one feature at a time, token by token."""
    scale_B = output_scale(small.normalize_activations, x_BD)
    codes_BS = small.encode(x_BD)
    recon_BD = small.forward(x_BD)
    acts_BL = large.encode(x_BD)
    rows = []
    for j in range(large.width):
        sq = rebuilt = held = 0.0
        for t in range(x_BD.shape[0]):
            c_D = scale_B[t] * acts_BL[t, j] * large.W_dec[j]
            part_D = scale_B[t] * (codes_BS[t] @ small.W_dec)
            # The input less the small SAE's bias terms: what its codes have to rebuild.
            y_D = x_BD[t] - (recon_BD[t] - part_D)
            sq += float(c_D @ c_D)
            rebuilt += float(part_D @ c_D)
            held += float(y_D @ c_D)
        explained = rebuilt / held if sq > 0 and held > 0 else np.nan
        rows.append((explained, held / sq if sq > 0 else np.nan, sq / x_BD.shape[0]))
    return np.array(rows)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "matching_pursuit"])
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_explained_share_matches_dense_reference(acts, arch, norm):
    small = random_sae(10, arch, seed=11, norm=norm)
    large = random_sae(22, arch, seed=12, norm=norm, apply_b_dec=arch == "matching_pursuit")
    x_BD = acts[:60]
    result = explained_share(small, large, x_BD, batch_size=16, device="cpu", progress=False)
    assert list(result.columns) == ["explained", "present", "energy"]
    assert result.index.name == "feature" and len(result) == large.width
    expected = naive_explained(small, large, x_BD)
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-6, atol=1e-6)
    assert result["explained"].notna().sum() > large.width // 2


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_additive_delta_mse_follows_from_the_scores(acts, arch):
    small, large = random_sae(12, arch, seed=1), random_sae(24, arch, seed=2, apply_b_dec=False)
    scores = explained_share(small, large, acts, device="cpu", progress=False)
    delta = delta_mse(small, large, acts, device="cpu", progress=False)
    assert scores["explained"].notna().sum() > 12
    unexplained = scores["present"] * (1 - scores["explained"])
    identity = scores["energy"] * (1 - 2 * unexplained.fillna(0.0))
    np.testing.assert_allclose(identity.to_numpy(), delta.to_numpy(), rtol=1e-6, atol=1e-9)


def test_row_blocks_bound_memory_without_changing_results(acts, monkeypatch):
    small, large = random_sae(8, "topk", seed=3), random_sae(20, "topk", seed=4)
    whole = explained_share(small, large, acts, device="cpu", progress=False)
    monkeypatch.setattr("saegeo.effects.explained.BLOCK_ELEMENTS", 45)  # two rows per block
    blocked = explained_share(small, large, acts, batch_size=7, device="cpu", progress=False)
    np.testing.assert_allclose(blocked.to_numpy(), whole.to_numpy(), rtol=1e-9, atol=1e-12)


def test_explained_share_rejects_mismatched_inputs(acts):
    small = random_sae(8, "relu", seed=0)
    with pytest.raises(SaegeoError, match="d_in"):
        explained_share(small, random_sae(8, "relu", seed=1), acts[:, :3], progress=False)
    with pytest.raises(SaegeoError, match="to_jumprelu"):
        explained_share(random_sae(8, "topk", seed=0), small, acts, progress=False)


def naive_auc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive], score[~positive]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    # Few distinct values, so that ties between and within classes are common.
    score = rng.integers(0, 6, size=n).astype(float) + (rng.random(n) if seed % 2 else 0.0)
    positive = rng.random(n) < 0.4
    positive[:2] = [True, False]
    assert roc_auc(score, positive) == pytest.approx(naive_auc(score, positive), abs=1e-12)


def test_roc_auc_edge_cases():
    assert roc_auc(np.array([1.0, 2.0, 3.0]), np.array([False, True, True])) == 1.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))
    with pytest.raises(SaegeoError, match="NaN"):
        roc_auc(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(SaegeoError, match="entries"):
        roc_auc(np.array([1.0, 2.0]), np.array([True]))
