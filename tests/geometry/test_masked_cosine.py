"""Masked cosine similarity from sparse products against per-pair loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from helpers.property import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

from saegeo.errors import SaegeoError, ShapeError
from saegeo.geometry.masked_cosine import masked_cosine


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else 0.0


def naive_mcs(parent_NP: np.ndarray, child_NC: np.ndarray, *, directed: bool, scale: bool):
    """The tree view's definitions, one pair at a time [P, C]."""
    n_parents, n_children = parent_NP.shape[1], child_NC.shape[1]
    out = np.zeros((n_parents, n_children))
    for p in range(n_parents):
        for c in range(n_children):
            on_child = child_NC[:, c] != 0
            score = _cosine(parent_NP[on_child, p], child_NC[on_child, c])
            if directed and scale and score:
                score *= child_NC[:, c].max() / parent_NP[:, p].max()
            if not directed:
                on_parent = parent_NP[:, p] != 0
                score = max(score, _cosine(parent_NP[on_parent, p], child_NC[on_parent, c]))
            out[p, c] = score
    return out


def naive_filter(scores_PC: np.ndarray, min_score: float, top_k: int | None) -> np.ndarray:
    out = np.where(scores_PC > min_score, scores_PC, 0.0)
    if top_k is not None:
        for c in range(out.shape[1]):
            best = np.argsort(-out[:, c], kind="stable")[:top_k]
            keep = np.zeros(out.shape[0], dtype=bool)
            keep[best] = True
            out[~keep, c] = 0.0
    return out


@pytest.fixture
def codes() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(0)
    parent = sp.random(500, 14, density=0.2, format="csr", random_state=rng) * 3.0
    child = sp.csr_matrix(sp.random(500, 23, density=0.15, format="csr", random_state=rng))
    child.data[:5] = 0.0  # stored zeros are inactive
    return sp.csr_matrix(parent), child


@pytest.mark.parametrize(
    ("directed", "scale"), [(True, True), (True, False), (False, False), (False, True)]
)
@pytest.mark.parametrize("max_pairs", [1 << 25, 40, 1])
def test_matches_per_pair_loops(codes, directed, scale, max_pairs):
    parent, child = codes
    expected = naive_mcs(parent.toarray(), child.toarray(), directed=directed, scale=scale)
    result = masked_cosine(
        parent, child, directed=directed, scale_by_max=scale, max_pairs=max_pairs
    )
    assert result.shape == (14, 23) and result.dtype == np.float32
    np.testing.assert_allclose(result.toarray(), expected, atol=1e-5)


@pytest.mark.parametrize(("min_score", "top_k"), [(0.3, None), (0.0, 2), (0.2, 1), (-1.0, 3)])
def test_min_score_and_top_k_per_child(codes, min_score, top_k):
    parent, child = codes
    scores = naive_mcs(parent.toarray(), child.toarray(), directed=True, scale=True)
    result = masked_cosine(parent, child, min_score=min_score, top_k=top_k, max_pairs=50)
    expected = naive_filter(scores, min_score, top_k)
    # Pairs that never co-fire are absent even when min_score < 0.
    expected[(parent.T.astype(bool) @ child.astype(bool)).toarray() == 0] = 0.0
    np.testing.assert_allclose(result.toarray(), expected, atol=1e-5)
    if top_k is not None:
        assert (np.diff(result.tocsc().indptr) <= top_k).all()


def test_top_k_ties_keep_the_smaller_parent():
    parent = sp.csr_matrix(np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    child = sp.csr_matrix(np.array([[2.0], [2.0]]))
    result = masked_cosine(parent, child, scale_by_max=False, top_k=2)
    assert result.tocoo().row.tolist() == [0, 1]


def test_negative_codes_take_the_matched_path():
    # Values that cancel leave an unstored zero in A^T B (parent 0) but not in (A∘A)^T 1[B].
    parent = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 2.0], [0.0, 1.0]]))
    child = sp.csr_matrix(np.array([[1.0], [-1.0], [0.5]]))
    for directed in (True, False):
        expected = naive_mcs(parent.toarray(), child.toarray(), directed=directed, scale=False)
        result = masked_cosine(parent, child, directed=directed, scale_by_max=False, min_score=-2.0)
        assert expected[1, 0] < 0
        np.testing.assert_allclose(result.toarray(), expected, atol=1e-6)


def test_user_errors():
    with pytest.raises(ShapeError, match="tokens"):
        masked_cosine(sp.csr_matrix((3, 2)), sp.csr_matrix((4, 2)))
    with pytest.raises(SaegeoError, match="top_k"):
        masked_cosine(sp.csr_matrix((3, 2)), sp.csr_matrix((3, 2)), top_k=0)


def test_empty_children():
    result = masked_cosine(sp.csr_matrix(np.ones((3, 2))), sp.csr_matrix((3, 0)))
    assert result.shape == (2, 0) and result.nnz == 0


@st.composite
def sparse_codes(draw: st.DrawFn, n_tokens: int) -> sp.csr_matrix:
    """Sparse codes [n_tokens, F] with small integer values (ties and equal maxima included),
    negative ones sometimes, and stored zeros."""
    width = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    values = rng.integers(-1 if draw(st.booleans()) else 0, 4, size=(n_tokens, width))
    values = values * (rng.random((n_tokens, width)) < draw(st.floats(0.05, 0.9)))
    codes = sp.csr_matrix(values.astype(np.float64))
    if codes.nnz and draw(st.booleans()):
        codes.data[0] = 0.0  # a stored zero is inactive
    return codes


@PROPERTY
@given(
    data=st.data(),
    n_tokens=st.integers(1, 40),
    directed=st.booleans(),
    scale=st.booleans(),
    max_pairs=st.sampled_from([1, 7, 1 << 25]),
)
def test_property_masked_cosine_equals_its_dense_definition(
    data, n_tokens, directed, scale, max_pairs
):
    parent = data.draw(sparse_codes(n_tokens))
    child = data.draw(sparse_codes(n_tokens))
    expected = naive_mcs(parent.toarray(), child.toarray(), directed=directed, scale=scale)
    result = masked_cosine(
        parent, child, directed=directed, scale_by_max=scale, min_score=-2.0, max_pairs=max_pairs
    )
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-5, atol=1e-6)
