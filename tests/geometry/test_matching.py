"""One-to-one feature matching against a dense linear_sum_assignment reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import saegeo as sg
from saegeo.errors import SaegeoError, ShapeError
from saegeo.geometry.matching import match_features
from saegeo.geometry.similarity import unit_rows


def reference(W_a: torch.Tensor, W_b: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (sorted by a) and their cosines from the whole float64 cosine matrix."""
    cos = (unit_rows(W_a.double()) @ unit_rows(W_b.double()).T).numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    order = np.argsort(rows)
    return rows[order], cols[order], cos[rows[order], cols[order]]


def noisy_twin(n_a: int, n_b: int, d: int, noise: float, seed: int):
    """Decoder b holds a's rows in shuffled order plus noise, and extra random rows."""
    g = torch.Generator().manual_seed(seed)
    W_a = torch.randn(n_a, d, generator=g)
    W_b = torch.randn(n_b, d, generator=g)
    take = min(n_a, n_b)
    perm = torch.randperm(n_b, generator=g)[:take]
    W_b[perm] = W_a[:take] + noise * torch.randn(take, d, generator=g)
    return W_a, W_b


@pytest.mark.parametrize("shape", [(40, 40), (30, 55), (55, 30)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_path_equals_reference(shape, seed):
    g = torch.Generator().manual_seed(seed)
    W_a, W_b = torch.randn(shape[0], 12, generator=g), torch.randn(shape[1], 12, generator=g)
    rows, cols, cos = reference(W_a, W_b)
    match = match_features(W_a, W_b, method="dense")
    assert match.method == "dense" and len(match.pairs) == min(shape)
    # Random Gaussian costs have no ties: the optimal assignment is unique.
    np.testing.assert_array_equal(match.pairs["a"], rows)
    np.testing.assert_array_equal(match.pairs["b"], cols)
    np.testing.assert_allclose(match.pairs["decoder_cos"], cos, atol=1e-6)
    assert match.mean_cos == pytest.approx(cos.mean(), abs=1e-6)
    assert match.shared_fraction == pytest.approx((cos > 0.7).mean())


@pytest.mark.parametrize("shape", [(40, 40), (30, 55), (55, 30)])
def test_sparse_path_with_every_pair_a_candidate_equals_reference(shape):
    g = torch.Generator().manual_seed(3)
    W_a, W_b = torch.randn(shape[0], 12, generator=g), torch.randn(shape[1], 12, generator=g)
    rows, cols, _ = reference(W_a, W_b)
    match = match_features(W_a, W_b, method="sparse", candidates=max(shape))
    assert match.method == "sparse"
    np.testing.assert_array_equal(match.pairs["a"], rows)
    np.testing.assert_array_equal(match.pairs["b"], cols)


def candidate_pairs(W_a: torch.Tensor, W_b: torch.Tensor, k: int) -> set[tuple[int, int]]:
    """Each feature's k best partners in the other decoder, both ways."""
    cos = unit_rows(W_a.double()) @ unit_rows(W_b.double()).T
    best_b, best_a = cos.topk(k, dim=1).indices, cos.topk(k, dim=0).indices
    return {(i, int(j)) for i in range(cos.shape[0]) for j in best_b[i]} | {
        (int(i), j) for j in range(cos.shape[1]) for i in best_a[:, j]
    }


@pytest.mark.parametrize("shape", [(200, 200), (150, 260), (260, 150)])
@pytest.mark.parametrize("noise", [0.3, 0.8])
def test_sparse_path_equals_reference_when_the_optimum_uses_candidates(shape, noise):
    W_a, W_b = noisy_twin(*shape, d=32, noise=noise, seed=4)
    rows, cols, cos = reference(W_a, W_b)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) <= candidate_pairs(W_a, W_b, 8)
    match = match_features(W_a, W_b, method="sparse", candidates=8)
    np.testing.assert_array_equal(match.pairs["a"], rows)
    np.testing.assert_array_equal(match.pairs["b"], cols)
    np.testing.assert_allclose(match.pairs["decoder_cos"], cos, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_sparse_path_never_beats_the_dense_optimum(seed):
    # With few candidates on unstructured data the sparse path may fall short of the optimum,
    # never above it, and still returns a full one-to-one matching.
    g = torch.Generator().manual_seed(seed)
    W_a, W_b = torch.randn(60, 6, generator=g), torch.randn(45, 6, generator=g)
    _, _, cos = reference(W_a, W_b)
    match = match_features(W_a, W_b, method="sparse", candidates=2)
    assert len(match.pairs) == 45
    assert match.pairs["a"].is_unique and match.pairs["b"].is_unique
    assert match.pairs["decoder_cos"].sum() <= cos.sum() + 1e-6


def test_auto_goes_sparse_past_max_dense():
    W_a, W_b = noisy_twin(100, 100, d=16, noise=0.2, seed=5)
    assert match_features(W_a, W_b).method == "dense"
    sparse = match_features(W_a, W_b, max_dense=100 * 100 - 1)
    assert sparse.method == "sparse"
    assert sparse.pairs.equals(match_features(W_a, W_b, method="dense").pairs)


def test_encoder_cosines_and_shared_rule():
    g = torch.Generator().manual_seed(6)
    W_dec = torch.randn(20, 10, generator=g)
    W_enc = torch.randn(10, 20, generator=g)
    a = sg.SAE(W_enc=W_enc, b_enc=torch.zeros(20), W_dec=W_dec, b_dec=torch.zeros(10))
    perm = torch.randperm(20, generator=g)
    # b: a's features shuffled; its encoder rows 0..9 of the shuffle are replaced by noise.
    W_enc_b = W_enc[:, perm].clone()
    W_enc_b[:, :10] = torch.randn(10, 10, generator=g)
    b = sg.SAE(W_enc=W_enc_b, b_enc=torch.zeros(20), W_dec=W_dec[perm], b_dec=torch.zeros(10))
    by_decoder = match_features(a, b)
    np.testing.assert_array_equal(by_decoder.pairs["b"], perm.argsort().numpy())
    expected_enc = torch.nn.functional.cosine_similarity(
        W_enc.T, W_enc_b.T[perm.argsort()], dim=1
    ).double()
    np.testing.assert_allclose(by_decoder.pairs["encoder_cos"], expected_enc.numpy(), atol=1e-6)
    assert by_decoder.shared_fraction == 1.0
    both = match_features(a, b, encoder=True)
    assert both.shared_fraction == pytest.approx(
        ((both.pairs["decoder_cos"] > 0.7) & (both.pairs["encoder_cos"] > 0.7)).mean()
    )
    assert both.shared_fraction <= 0.5 + 1e-9


def test_encoder_cosine_is_nan_for_decoder_matrices():
    match = match_features(torch.eye(3), torch.eye(3))
    assert match.pairs["encoder_cos"].isna().all() and match.shared_fraction == 1.0


def test_user_errors():
    with pytest.raises(ShapeError, match="d_in=3 but b has d_in=4"):
        match_features(torch.eye(3), torch.eye(4))
    with pytest.raises(SaegeoError, match="encoder=True needs SAEs"):
        match_features(torch.eye(3), torch.eye(3), encoder=True)
    with pytest.raises(SaegeoError, match="threshold"):
        match_features(torch.eye(3), torch.eye(3), threshold=2.0)
    with pytest.raises(SaegeoError, match="method"):
        match_features(torch.eye(3), torch.eye(3), method="greedy")  # type: ignore[arg-type]


def test_seed_stability_matched_reports_both_figures():
    # b holds a's first direction twice: max-cosine finds both copies, matching only one.
    a = torch.eye(4)
    b = torch.stack([torch.eye(4)[0], torch.eye(4)[0], torch.eye(4)[1], torch.eye(4)[2]])
    report = sg.seed_stability_matched(b, a)
    assert report.max_cos == sg.seed_stability(b, a) == 1.0
    assert report.matched == 0.75
    assert report.mean_matched_cos == pytest.approx(0.75)
