"""Shared inputs and checks of the matching-pursuit tests (no SAELens needed)."""

from __future__ import annotations

import torch

STATIC = dict(residual_threshold=0.0, max_iterations=12, stop_on_duplicate_support=False)
DYNAMIC = dict(residual_threshold=0.3, max_iterations=None, stop_on_duplicate_support=True)


def assert_same_codes(ours_BF: torch.Tensor, ref_BF: torch.Tensor) -> None:
    assert ours_BF.shape == ref_BF.shape and ours_BF.dtype == ref_BF.dtype
    assert torch.equal(ours_BF != 0, ref_BF != 0), "supports differ"
    torch.testing.assert_close(ours_BF, ref_BF, rtol=1e-5, atol=1e-5 * ref_BF.abs().max().item())


def decoder(width: int, d_in: int, *, unit: bool, dtype=torch.float64) -> torch.Tensor:
    W_dec_FD = torch.randn(width, d_in, dtype=dtype)
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    if not unit:
        # Norms below sqrt(2): larger ones make the un-normalised coefficient overshoot.
        W_dec_FD *= torch.empty(width, 1, dtype=dtype).uniform_(0.4, 1.3)
    return W_dec_FD


def sparse_inputs(W_dec_FD: torch.Tensor, batch: int, noise: float = 0.05) -> torch.Tensor:
    """Rows built from 1..12 atoms plus noise, so that rows stop at different iterations."""
    width, d_in = W_dec_FD.shape
    codes_BF = torch.zeros(batch, width, dtype=W_dec_FD.dtype)
    for row in range(batch):
        k = int(torch.randint(1, 13, ()))
        codes_BF[row, torch.randperm(width)[:k]] = torch.rand(k, dtype=W_dec_FD.dtype) + 0.5
    return codes_BF @ W_dec_FD + noise * torch.randn(batch, d_in, dtype=W_dec_FD.dtype)
