"""Co-firing, input means, presence, nesting and containment from sparse products against dense
loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers.cofiring import naive_cofiring, naive_means, naive_presence, naive_present
from test_masked_cosine import naive_filter

from saegeo.errors import SaegeoError, ShapeError
from saegeo.geometry.cofiring import (
    cofiring,
    containment,
    input_means,
    nesting,
    presence_scores,
    present_codes,
)

N, P, C, D = 400, 12, 21, 9


@pytest.fixture
def data() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    parent = sp.csr_matrix(sp.random(N, P, density=0.25, format="csr", random_state=rng) * 3.0)
    child = sp.csr_matrix(sp.random(N, C, density=0.12, format="csr", random_state=rng))
    child.data[:4] = 0.0  # stored zeros are inactive
    # Children that fire only where parent 0 fires, so that some scores are exactly 1.
    child = child.tolil()
    child[:, 0] = parent[:, 0].multiply(rng.random((N, 1)) < 0.5) * 2.0
    child = child.tocsr()
    x = rng.normal(size=(N, D)) + 0.5
    W = rng.normal(size=(P, D))
    return parent, child, x, W


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_pairs", [1 << 25, 30, 1])
@pytest.mark.parametrize(("min_score", "top_k"), [(0.0, None), (0.3, None), (0.0, 2)])
def test_cofiring_matches_dense_reference(data, weighted, max_pairs, min_score, top_k):
    parent, child, _, _ = data
    expected = naive_filter(
        naive_cofiring(parent.toarray(), child.toarray(), weighted=weighted), min_score, top_k
    )
    got = cofiring(
        parent, child, weighted=weighted, min_score=min_score, top_k=top_k, max_pairs=max_pairs
    )
    assert got.shape == (P, C) and got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), expected, atol=1e-6)
    assert got.toarray()[0, 0] == pytest.approx(1.0)  # child 0 fires only with parent 0


def test_input_means_match_dense_reference(data):
    parent, _, x, _ = data
    means = input_means(parent, torch.tensor(x, dtype=torch.float64), batch_size=37)
    expected_FD, expected_D = naive_means(parent.toarray(), x)
    np.testing.assert_allclose(means.on_latent, expected_FD, atol=1e-6)
    np.testing.assert_allclose(means.overall, expected_D, atol=1e-6)


def test_presence_and_nesting_match_dense_reference(data):
    parent, child, x, W = data
    acts = torch.tensor(x, dtype=torch.float64)
    means_p, means_c = input_means(parent, acts), input_means(child, acts)
    presence_PC = naive_presence(W, parent.toarray(), child.toarray(), x)
    rows, cols = np.divmod(np.arange(P * C), C)
    got = presence_scores(W, means_p, means_c, rows, cols, chunk=50)
    np.testing.assert_allclose(got.reshape(P, C), presence_PC, atol=1e-6)

    cofire_PC = naive_cofiring(parent.toarray(), child.toarray(), weighted=False)
    for min_score, top_k in [(0.0, None), (0.2, None), (0.0, 1)]:
        # Pairs that never co-fire are absent, whatever their presence.
        expected = np.where(cofire_PC > 0, np.minimum(cofire_PC, presence_PC), 0.0)
        expected = naive_filter(expected, min_score, top_k)
        M = nesting(parent, child, W, means_p, means_c, min_score=min_score, top_k=top_k)
        np.testing.assert_allclose(M.toarray(), expected, atol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_present_codes_match_dense_reference(data, fraction):
    parent, _, x, W = data
    acts = torch.tensor(x, dtype=torch.float64)
    means = input_means(parent, acts)
    got = present_codes(parent, acts, W, means, fraction=fraction, batch_size=37)
    expected = naive_present(W, parent.toarray(), x, fraction)
    assert got.shape == (N, P) and sp.issparse(got)
    np.testing.assert_allclose(got.toarray(), expected, atol=1e-6)
    # Present wherever the latent fires, and somewhere it does not.
    assert (got.toarray()[parent.toarray() != 0] == 1).all() and got.nnz > parent.nnz


@pytest.mark.parametrize(("min_score", "top_k"), [(0.0, None), (0.3, None), (0.0, 1)])
def test_containment_matches_dense_reference(data, min_score, top_k):
    parent, child, x, W = data
    acts = torch.tensor(x, dtype=torch.float64)
    means_p, means_c = input_means(parent, acts), input_means(child, acts)
    present = present_codes(parent, acts, W, means_p, batch_size=64)
    present_NP = naive_present(W, parent.toarray(), x)
    together_PC = naive_cofiring(present_NP, child.toarray(), weighted=False)
    presence_PC = naive_presence(W, parent.toarray(), child.toarray(), x)
    expected = np.where(together_PC > 0, np.minimum(together_PC, presence_PC), 0.0)
    expected = naive_filter(expected, min_score, top_k)
    M = containment(present, child, W, means_p, means_c, min_score=min_score, top_k=top_k)
    assert M.shape == (P, C) and M.dtype == np.float32
    np.testing.assert_allclose(M.toarray(), expected, atol=1e-6)
    nested = nesting(parent, child, W, means_p, means_c, min_score=min_score, top_k=top_k)
    if top_k is None:
        assert (M.toarray() >= nested.toarray() - 1e-6).all()


def test_nesting_separates_a_parent_from_a_sibling():
    """A parent whose latent is silent on half its child's tokens keeps high presence, and a
    sibling that co-fires by chance has none, so only the parent passes."""
    rng = np.random.default_rng(1)
    parent_dir, child_dir, sibling_dir = np.eye(3)
    n = 2000
    parent_on = rng.random(n) < 0.3
    child_on = parent_on & (rng.random(n) < 0.5)
    sibling_on = parent_on & ~child_on & (rng.random(n) < 0.5)
    x = np.outer(parent_on, parent_dir) + np.outer(child_on, child_dir)
    x += np.outer(sibling_on, sibling_dir)
    # The parent latent goes silent on 40% of its child's tokens (absorption); a latent for the
    # sibling feature fires on its own tokens and on 60% of the child's tokens by mistake.
    parent_code = parent_on & ~(child_on & (rng.random(n) < 0.4))
    sibling_code = sibling_on | (child_on & (rng.random(n) < 0.6))
    codes_parent = sp.csr_matrix(np.stack([parent_code, sibling_code], axis=1).astype(float))
    codes_child = sp.csr_matrix(child_on[:, None].astype(float))
    acts = torch.tensor(x)
    means_p, means_c = input_means(codes_parent, acts), input_means(codes_child, acts)
    scores = cofiring(codes_parent, codes_child).toarray()[:, 0]
    assert scores[0] == pytest.approx(0.6, abs=0.05) and scores[1] == pytest.approx(0.6, abs=0.05)
    W = np.stack([parent_dir, sibling_dir])
    nested = nesting(codes_parent, codes_child, W, means_p, means_c).toarray()[:, 0]
    assert nested[0] == pytest.approx(scores[0]) and nested[1] < 0.1
    # Containment counts the tokens where the absorbed parent's direction is in the input.
    present = present_codes(codes_parent, acts, W, means_p)
    contained = containment(present, codes_child, W, means_p, means_c).toarray()[:, 0]
    assert contained[0] == pytest.approx(1.0) and contained[1] < 0.1


def test_errors(data):
    parent, child, x, W = data
    with pytest.raises(ShapeError, match="cofiring\\(\\): parent codes cover 400 tokens"):
        cofiring(parent, child[:10])
    with pytest.raises(ShapeError, match="cofiring\\(\\): codes_parent must be a 2-D"):
        cofiring(np.zeros(3), child)
    with pytest.raises(SaegeoError, match="top_k=0: must be an integer >= 1"):
        cofiring(parent, child, top_k=0)
    with pytest.raises(ShapeError, match="input_means\\(\\): codes cover 400 tokens"):
        input_means(parent, torch.tensor(x[:100]))
    means_p, means_c = input_means(parent, torch.tensor(x)), input_means(child, torch.tensor(x))
    with pytest.raises(ShapeError, match="W_dec_PD must be"):
        nesting(parent, child, W[:3], means_p, means_c)
    with pytest.raises(ShapeError, match="do not match"):
        nesting(parent, child, W, means_c, means_p)
    with pytest.raises(ShapeError, match="present_codes\\(\\): codes cover 400 tokens"):
        present_codes(parent, torch.tensor(x[:100]), W, means_p)
    with pytest.raises(ShapeError, match="present_codes\\(\\): W_dec_FD"):
        present_codes(parent, torch.tensor(x), W[:3], means_p)
    with pytest.raises(ShapeError, match="containment\\(\\): W_dec_PD must be"):
        containment(parent, child, W[:3], means_p, means_c)
