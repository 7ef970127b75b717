"""The fused Gram iteration's kernels against the torch passes they replace, on CUDA and in
Triton's interpreter (CPU), and compiled for a GPU the machine need not have; all skip where
Triton is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.pursuit import DYNAMIC, STATIC, assert_same_codes, decoder, sparse_inputs

from saegeo.core import gram_route, gram_update, pursuit, pursuit_rules
from saegeo.core.gram_route import BLOCK
from saegeo.core.pursuit import matching_pursuit
from saegeo.runtime.devices import host_syncs

needs_triton = pytest.mark.skipif(not gram_update.available(), reason="needs Triton")


@pytest.fixture(params=["interpreter", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch) -> str:
    """Where the kernels run."""
    if request.param == "interpreter" and torch.cuda.is_available():
        pytest.skip("with CUDA the compiled kernels are tested (Triton picks its mode once)")
    fresh_kernels(monkeypatch, interpreted=request.param == "interpreter")
    return "cpu" if request.param == "interpreter" else "cuda"


def fresh_kernels(monkeypatch, *, interpreted: bool) -> None:
    """Triton reads TRITON_INTERPRET when a kernel is defined, so the kernels' module is
    imported afresh, and dropped again after the test."""
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(gram_update, "_kernels", None)
    monkeypatch.setitem(sys.modules, "saegeo.core.gram_kernel", None)
    monkeypatch.delitem(sys.modules, "saegeo.core.gram_kernel")


def torch_update(corr_RP, gram_FP, idx_R, coef_R, done_R):
    """The torch passes: Gram rows, update, block maxima; finished rows unchanged."""
    new_RP = torch.where(done_R[:, None], corr_RP, corr_RP - coef_R[:, None] * gram_FP[idx_R])
    return new_RP, new_RP.view(new_RP.shape[0], -1, BLOCK).amax(dim=-1)


@needs_triton
@pytest.mark.parametrize("width", [100, 300, 2500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_matches_torch_passes(device, width, dtype):
    g = torch.Generator().manual_seed(width)
    padded = -(-width // BLOCK) * BLOCK
    rows = 23
    corr_RP = torch.randn(rows, padded, generator=g, dtype=dtype)
    corr_RP[:, width:] = -torch.inf
    corr_RP[4, 7] = torch.nan
    gram_FP = torch.randn(width, padded, generator=g, dtype=dtype)
    gram_FP[:, width:] = 0
    idx_R = torch.randint(width, (rows,), generator=g)
    coef_R = torch.rand(rows, generator=g, dtype=dtype)
    done_R = torch.rand(rows, generator=g) < 0.3
    block_max_RK = torch.full((rows, padded // BLOCK), 7.0, dtype=dtype)
    block_max_RK[done_R] = corr_RP[done_R].view(-1, padded // BLOCK, BLOCK).amax(dim=-1)
    expected = torch_update(corr_RP, gram_FP, idx_R, coef_R, done_R)

    tensors = [t.to(device) for t in (corr_RP, gram_FP, idx_R, coef_R, done_R, block_max_RK)]
    gram_update.update(*tensors)
    corr_RP, block_max_RK = tensors[0], tensors[-1]
    # One rounding of coef · g apart at most (a fused multiply-add on the GPU).
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(corr_RP.cpu(), expected[0], atol=tol, rtol=tol, equal_nan=True)
    torch.testing.assert_close(block_max_RK.cpu(), expected[1], atol=tol, rtol=tol, equal_nan=True)


def iteration_state(width: int, d_in: int, dtype: torch.dtype, seed: int):
    """A batch of rows part-way through a pursuit: correlations drifted from the exact ones,
    their block maxima, drift bounds and codes. Rows 0-5 have drift bounds that leave several
    atoms in contention (exact path), row 6 a NaN correlation, row 7 correlations all -inf,
    row 8 a three-way tie (one atom three times, twice in a block), rows 9 and 10 are finished,
    row 11 no positive correlation (exact path, atom 0); the rest are plain."""
    g = torch.Generator().manual_seed(seed)
    rows, padded = 29, -(-width // BLOCK) * BLOCK
    W_dec_FD = torch.randn(width, d_in, generator=g, dtype=dtype) / d_in**0.5
    W_dec_FD[:, 0] = W_dec_FD[:, 0].abs() + 0.1
    W_dec_FD[[6, width - 1]] = W_dec_FD[5].clone()  # one atom three times, in two blocks
    W_dec_FD[width - 2, 3] = 0
    residual_RD = torch.randn(rows, d_in, generator=g, dtype=dtype)
    residual_RD[6, 3] = torch.inf  # a NaN correlation with atom width - 2, ±inf elsewhere
    residual_RD[8] += 3 * W_dec_FD[5]
    residual_RD[11] = 0
    residual_RD[11, 0] = -1
    corr_RP = torch.full((rows, padded), -torch.inf, dtype=dtype)
    corr_RP[:, :width] = residual_RD @ W_dec_FD.T
    corr_RP[:, :width] += 1e-4 * torch.randn(rows, width, generator=g, dtype=dtype)
    corr_RP[7] = -torch.inf
    corr_RP[8, [5, 6, width - 1]] = corr_RP[8, :width].max() + 1
    scale_R = torch.rand(rows, generator=g, dtype=dtype) + 1
    # Drift bounds from 1 to 100.
    scale_R[:6] = torch.logspace(0, 2, 6, dtype=dtype) / gram_route.drift_bound(
        torch.ones((), dtype=dtype), dtype
    )
    acts_BF = torch.zeros(rows + 3, width, dtype=dtype)
    rows_R = torch.randperm(rows + 3, generator=g)[:rows]
    acts_BF[rows_R, torch.randint(width, (rows,), generator=g)] = 1.0
    done_R = torch.zeros(rows, dtype=torch.bool)
    done_R[[9, 10]] = True
    block_max_RK = corr_RP.view(rows, -1, BLOCK).amax(dim=-1)
    return corr_RP, block_max_RK, scale_R, residual_RD, W_dec_FD, acts_BF, rows_R, done_R


def torch_select_apply(corr_RP, block_max_RK, scale_R, residual_RD, W_dec_FD, acts_BF, rows_R):
    """The torch route's selection and update of rows [R], on copies: (idx, coef, prior, norm,
    residual, codes)."""
    residual_RD, acts_BF = residual_RD.clone(), acts_BF.clone()
    idx_R = gram_route.select_gram(corr_RP, block_max_RK, residual_RD, W_dec_FD, scale_R)
    prior_R = acts_BF[rows_R, idx_R]
    coef_R, _ = pursuit_rules.apply_atoms(
        residual_RD, W_dec_FD[idx_R], idx_R, rows_R, acts_BF, pursuit_rules.StopRules(0.0, 1, False)
    )
    return idx_R, coef_R, prior_R, residual_RD.norm(dim=-1), residual_RD, acts_BF


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf · 0
# At width 260 the last block holds 4 atoms (one at a time), at 2500 68 (together).
@pytest.mark.parametrize(("width", "d_in"), [(260, 40), (2500, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_apply_matches_torch_route(device, width, d_in, dtype, monkeypatch):
    exact_rows = []
    exact_argmax = gram_route.exact_argmax

    def counting(corr_UP, *args):
        exact_rows.append(corr_UP.shape[0])
        return exact_argmax(corr_UP, *args)

    monkeypatch.setattr(gram_route, "exact_argmax", counting)
    state = iteration_state(width, d_in, dtype, seed=width)
    corr_RP, block_max_RK, scale_R, residual_RD, W_dec_FD, acts_BF, rows_R, done_R = state
    running = ~done_R
    expected = torch_select_apply(
        *(t[running] for t in state[:4]), W_dec_FD, acts_BF, rows_R[running]
    )
    rows = corr_RP.shape[0]
    idx_R = torch.full((rows,), -1, dtype=torch.long)
    coef_R, prior_R, norm_R = torch.full((3, rows), 7.0, dtype=dtype)
    drift_R = gram_route.drift_bound(scale_R, dtype)
    on_device = [
        t.to(device, copy=True) for t in (*state[:2], drift_R, *state[3:], idx_R, coef_R, prior_R)
    ]
    norm_R = norm_R.to(device, copy=True)
    gram_update.select_apply(*on_device[:8], (*on_device[8:], norm_R))
    got = [t.cpu() for t in (*on_device[8:], norm_R, on_device[3], on_device[5])]

    assert exact_rows == [10], f"rows 0-8 and 11 take the exact path, not {exact_rows}"
    assert torch.equal(got[0][running], expected[0])
    assert torch.equal(got[0][done_R], idx_R[done_R])
    assert bool((got[1][done_R] == 0).all())
    tol = dict(atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5, equal_nan=True)
    for ours, theirs in zip(got[1:4], expected[1:4], strict=True):
        torch.testing.assert_close(ours[running], theirs, **tol)
    torch.testing.assert_close(got[4][running], expected[4], **tol)
    torch.testing.assert_close(got[4][done_R], residual_RD[done_R], **tol)
    torch.testing.assert_close(got[5], expected[5], **tol)
    assert not torch.equal(got[5], acts_BF)


def reference(x_BD: torch.Tensor, W_dec_FD: torch.Tensor, **rules) -> torch.Tensor:
    """SAELens's recomputation in float64 on the CPU (the ``direct`` route, itself checked
    against SAELens in test_pursuit.py)."""
    return matching_pursuit(x_BD.double(), W_dec_FD.double(), method="direct", **rules)


@needs_triton
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_pursuit_through_the_fused_iteration_matches_saelens(device, unit, rules, monkeypatch):
    rows_per_call = []
    select_apply = gram_update.select_apply

    def counting(corr_RP, *args):
        rows_per_call.append(corr_RP.shape[0])
        select_apply(corr_RP, *args)

    monkeypatch.setattr(gram_update, "select_apply", counting)
    W_dec_FD = decoder(300, 96, unit=unit)
    x_BD = sparse_inputs(W_dec_FD, 48)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", device=device, batch_size=20, **rules)
    # Three batches; with early stops, the running rows are gathered part-way through.
    assert rows_per_call[0] == 20 and rows_per_call[-1] <= 8
    assert (min(rows_per_call) < 8) == (rules is DYNAMIC)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


@needs_triton
def test_fused_pursuit_takes_any_layout(device):
    """Transposed (non-contiguous) inputs and dictionary give the same codes."""
    W_dec_FD = decoder(200, 64, unit=True)
    x_BD = sparse_inputs(W_dec_FD, 12)
    expected = matching_pursuit(x_BD, W_dec_FD, method="gram", device=device, **STATIC)
    W_T = W_dec_FD.T.contiguous().T
    x_T = x_BD.T.contiguous().T
    assert not (W_T.is_contiguous() or x_T.is_contiguous())
    got = matching_pursuit(x_T, W_T, method="gram", device=device, **STATIC)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.gpu
@needs_triton
def test_fused_pursuit_waits_for_the_gpu_only_at_its_checks():
    """No wait in the iterations between checks; one per check."""
    W_dec_FD = decoder(1000, 128, unit=True, dtype=torch.float32).cuda()
    x_BD = sparse_inputs(W_dec_FD.cpu(), 256).cuda()
    gram_FP = gram_route.padded_gram(W_dec_FD, None)
    acts_BF = torch.zeros(256, 1000, device="cuda")

    def pursue(iterations: int) -> None:
        rules = pursuit_rules.StopRules(0.0, iterations, False)
        gram_route.pursue_gram_fused(x_BD, W_dec_FD, gram_FP, acts_BF, rules)

    pursue(2)  # compiles the kernels
    torch.cuda.synchronize()
    assert host_syncs(lambda: pursue(gram_route.CHECK_EVERY)) == 0
    assert host_syncs(lambda: pursue(3 * gram_route.CHECK_EVERY)) == 2


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


def test_fused_iteration_only_where_it_runs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(gram_update, "available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    cuda = torch.device("cuda")
    assert gram_update.fused_iteration(cuda, torch.float32)
    assert gram_update.fused_iteration(cuda, torch.float64)
    assert not gram_update.fused_iteration(torch.device("cpu"), torch.float32)
    assert not gram_update.fused_iteration(cuda, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (6, 1))
    assert not gram_update.fused_iteration(cuda, torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gram_update.fused_iteration(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(gram_update, "available", lambda: False)
    assert not gram_update.fused_iteration(cuda, torch.float32)
    assert pursuit.CUDA_BATCH_BYTES >= pursuit.BATCH_BYTES


@needs_triton
@pytest.mark.parametrize(
    ("dtype", "capability"), [("fp32", 75), ("fp32", 80), ("fp32", 90), ("fp64", 90)]
)
def test_kernels_compile_for_gpus(dtype, capability):
    """Both kernels compile to machine code for T4, A100 and H100/H200 GPUs (no GPU needed):
    type errors that Triton's interpreter lets pass fail here. In a process of its own: the
    interpreter, once used, leaves parts of triton.language patched for the rest of the
    process."""
    script = Path(__file__).parents[1] / "helpers/kernel.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(script), dtype, str(capability)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
