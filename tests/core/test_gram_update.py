"""The fused Gram update against the torch passes it replaces, on CUDA and in Triton's
interpreter (CPU); both skip where Triton is missing."""

from __future__ import annotations

import sys

import pytest
import torch
from pursuit_helpers import DYNAMIC, STATIC, assert_same_codes, decoder, sparse_inputs

from saegeo.core import gram_update, pursuit
from saegeo.core.pursuit import BLOCK, matching_pursuit

needs_triton = pytest.mark.skipif(not gram_update.available(), reason="needs Triton")


@pytest.fixture(params=["interpreter", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch) -> str:
    """Where the kernel runs; Triton reads TRITON_INTERPRET when the kernel is defined, so
    the kernel's module is imported afresh for each."""
    if request.param == "interpreter":
        if torch.cuda.is_available():
            pytest.skip("with CUDA the compiled kernel is tested (Triton picks its mode once)")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(gram_update, "_kernel", None)
    monkeypatch.delitem(sys.modules, "saegeo.core.gram_kernel", raising=False)
    return "cpu" if request.param == "interpreter" else "cuda"


def torch_update(source_SP, keep_R, gram_FP, idx_R, coef_R):
    """The torch passes: gather, Gram rows, update, block maxima."""
    rows = source_SP if keep_R is None else source_SP[keep_R]
    corr_RP = rows - coef_R[:, None] * gram_FP[idx_R]
    return corr_RP, corr_RP.view(corr_RP.shape[0], -1, BLOCK).amax(dim=-1)


@needs_triton
@pytest.mark.parametrize("width", [100, 300, 2500])
@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_matches_torch_passes(device, width, gather, dtype):
    g = torch.Generator().manual_seed(width)
    padded = -(-width // BLOCK) * BLOCK
    source_SP = torch.randn(23, padded, generator=g, dtype=dtype)
    source_SP[:, width:] = -torch.inf
    source_SP[4, 7] = torch.nan
    gram_FP = torch.randn(width, padded, generator=g, dtype=dtype)
    gram_FP[:, width:] = 0
    keep_R = torch.tensor([0, 2, 3, 4, 9, 22]) if gather else None
    rows = 23 if keep_R is None else keep_R.numel()
    idx_R = torch.randint(width, (rows,), generator=g)
    coef_R = torch.rand(rows, generator=g, dtype=dtype)
    expected = torch_update(source_SP, keep_R, gram_FP, idx_R, coef_R)

    source_SP, gram_FP, idx_R, coef_R = (t.to(device) for t in (source_SP, gram_FP, idx_R, coef_R))
    keep_R = None if keep_R is None else keep_R.to(device)
    corr_RP = source_SP if keep_R is None else torch.full_like(source_SP[:rows], 7.0)
    block_max_RK = torch.full((rows, padded // BLOCK), 7.0, dtype=dtype, device=device)
    gram_update.update(source_SP, keep_R, corr_RP, gram_FP, idx_R, coef_R, block_max_RK)
    # One rounding of coef · g apart at most (a fused multiply-add on the GPU).
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(corr_RP.cpu(), expected[0], atol=tol, rtol=tol, equal_nan=True)
    torch.testing.assert_close(block_max_RK.cpu(), expected[1], atol=tol, rtol=tol, equal_nan=True)


def reference(x_BD: torch.Tensor, W_dec_FD: torch.Tensor, **rules) -> torch.Tensor:
    """SAELens's recomputation in float64 on the CPU (the ``direct`` route, itself checked
    against SAELens in test_pursuit.py)."""
    return matching_pursuit(x_BD.double(), W_dec_FD.double(), method="direct", **rules)


@needs_triton
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_pursuit_through_the_fused_update_matches_saelens(device, unit, rules, monkeypatch):
    fused_calls = []
    update = gram_update.update

    def counting(*args):
        fused_calls.append(1)
        update(*args)

    monkeypatch.setattr(gram_update, "update", counting)
    W_dec_FD = decoder(300, 96, unit=unit)
    x_BD = sparse_inputs(W_dec_FD, 48)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", device=device, **rules)
    assert fused_calls
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gram", "direct"])
def test_cuda_float32_keeps_float64_supports(method):
    """float32 on CUDA: the supports of the float64 run on every row where float32 and
    float64 recomputation agree, whichever route (fused Gram update or recomputation)."""
    W_dec_FD = decoder(2000, 256, unit=True)
    x_BD = sparse_inputs(W_dec_FD, 512)
    exact = reference(x_BD, W_dec_FD, **DYNAMIC)
    naive32 = matching_pursuit(x_BD.float(), W_dec_FD.float(), method="direct", **DYNAMIC)
    agree = ((naive32 != 0) == (exact != 0)).all(dim=1)
    ours = matching_pursuit(x_BD.float(), W_dec_FD.float(), method=method, device="cuda", **DYNAMIC)
    assert ours.device.type == "cpu"
    assert bool(agree.float().mean() > 0.95)
    assert torch.equal((ours != 0)[agree], (exact != 0)[agree])


def test_fused_update_only_where_it_runs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gram_update.fused_update(torch.device("cpu")) is None
    monkeypatch.setattr(gram_update, "available", lambda: False)
    assert gram_update.fused_update(torch.device("cuda")) is None
    assert pursuit.CUDA_BATCH_BYTES >= pursuit.BATCH_BYTES
