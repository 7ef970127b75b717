"""The decoder residual against a naive per-feature least-squares fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saegeo as sg
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.geometry.residual import decoder_residual


def naive_residual(W_small: np.ndarray, W_large: np.ndarray, k: int) -> np.ndarray:
    small = W_small / np.linalg.norm(W_small, axis=1, keepdims=True)
    out = []
    for row in W_large:
        w = row / np.linalg.norm(row)
        near = np.argsort(-(small @ w), kind="stable")[:k]
        coef, *_ = np.linalg.lstsq(small[near].T, w, rcond=None)
        out.append(np.sum((w - small[near].T @ coef) ** 2))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_matches_a_naive_fit(k):
    g = torch.Generator().manual_seed(0)
    W_small, W_large = torch.randn(40, 16, generator=g), torch.randn(2500, 16, generator=g)
    expected = naive_residual(W_small.double().numpy(), W_large.double().numpy(), k)
    np.testing.assert_allclose(decoder_residual(W_small, W_large, k=k), expected, atol=1e-9)


def test_k_one_is_one_minus_squared_cosine_and_limits():
    g = torch.Generator().manual_seed(1)
    W_small, W_large = torch.randn(30, 12, generator=g), torch.randn(50, 12, generator=g)
    table = sg.classify(W_small, W_large, residual_k=1, device="cpu")
    positive = table["max_cos"] > 0
    np.testing.assert_allclose(
        table["residual"][positive], 1 - table["max_cos"][positive] ** 2, atol=1e-6
    )
    # In the span of the small rows: 0; orthogonal to them: 1; more rows than the small SAE
    # has: all of them; a zero row: 1.
    small = torch.eye(4)[:2]
    large = torch.tensor([[3.0, -2.0, 0, 0], [0, 0, 1.0, 1.0], [1.0, 0, 1.0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(decoder_residual(small, large, k=8), [0, 1, 0.5, 1], atol=1e-12)


def test_duplicate_small_rows_are_handled():
    small = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    large = torch.tensor([[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(decoder_residual(small, large, k=3), [1 / 3], atol=1e-12)


def test_classify_column_and_errors():
    g = torch.Generator().manual_seed(2)
    W_small, W_large = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    table = sg.classify(W_small, W_large, device="cpu")
    np.testing.assert_allclose(table["residual"], decoder_residual(W_small, W_large), atol=1e-12)
    assert "residual" not in sg.classify(W_small, W_large, residual_k=None, device="cpu")
    with pytest.raises(SaegeoError, match="residual_k"):
        sg.classify(W_small, W_large, residual_k=0)
    with pytest.raises(ArgumentError, match="^k=0: must be an integer >= 1$"):
        decoder_residual(W_small, W_large, k=0)
