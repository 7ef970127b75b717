"""Finite checks by sums, against torch.isfinite entry by entry."""

from __future__ import annotations

import pytest
import torch

from saegeo.core.finite import all_finite, finite_row_mask

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_row_mask_matches_isfinite(dtype: torch.dtype) -> None:
    x = torch.randn(300, 40).to(dtype)
    bad = torch.randperm(300)[:30]
    values = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[bad, torch.randint(0, 40, (30,))] = values[torch.arange(30) % 3].to(dtype)
    x[bad[:3], 0], x[bad[:3], 1] = float("inf"), -float("inf")  # their sum is NaN
    big = torch.finfo(dtype).max
    x[7], x[8] = big, -big  # finite rows whose sums overflow
    mask = finite_row_mask(x)
    assert mask.tolist() == torch.isfinite(x).all(dim=-1).tolist()
    assert bool(mask[7]) and bool(mask[8])
    assert finite_row_mask(x.reshape(3, 100, 40)).tolist() == mask.reshape(3, 100).tolist()


def test_all_finite() -> None:
    x = torch.randn(5, 6)
    assert all_finite(x) and all_finite(x[0]) and all_finite(x[0, 0])
    assert all_finite(torch.empty(0, 3)) and all_finite(torch.arange(4))
    assert all_finite(torch.full((2, 3), torch.finfo(torch.float16).max, dtype=torch.float16))
    x[4, 5] = float("nan")
    assert not all_finite(x) and not all_finite(x[4]) and not all_finite(x[4, 5])
    assert not all_finite(torch.tensor([1 + 1j, complex("inf")]))
