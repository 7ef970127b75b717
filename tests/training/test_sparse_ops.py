"""Sparse training ops, each against the dense or naive computation it replaces."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from saegeo.core.pursuit import matching_pursuit
from saegeo.training import losses
from saegeo.training.sparse_ops import (
    _floor,
    pursuit_with_grad,
    sampled_linear,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_prefix_reconstructions,
)

B, D, W = 64, 12, 40
DEVICES = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["cpu", "cuda"]
)


def _dense(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    zeros = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return zeros.index_put((rows, cols), values)


def test_select_topk_matches_dense() -> None:
    pre = torch.randn(B, W)
    sel = select_topk(pre, 5)
    assert bool((sel.rows[1:] >= sel.rows[:-1]).all())
    dense = _dense(sel.rows, sel.cols, sel.pre, (B, W)).relu()
    assert_close(dense, losses.topk_activations(pre, 5))


def _batch_topk_reference(pre: torch.Tensor, k: float) -> set[tuple[int, int]]:
    """The int(k·B) largest positive entries, ties to the first in (token, latent) order."""
    width = pre.shape[1]
    flat = pre.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    chosen = [i for i in order[: int(k * pre.shape[0])] if flat[i] > 0]
    return {(i // width, i % width) for i in chosen}


def _chosen(sel) -> set[tuple[int, int]]:
    return set(zip(sel.rows.tolist(), sel.cols.tolist(), strict=True))


@pytest.mark.parametrize(
    ("shape", "sample"),
    [((B, W), 1 << 16), ((B, W), 16), ((512, 300), 1 << 16)],
    ids=["whole", "small-sample", "strided"],
)
def test_select_batch_topk_matches_dense(shape: tuple[int, int], sample: int) -> None:
    pre = torch.randn(shape)
    pre[3] += 5.0  # one token holds far more than its share
    sel = select_batch_topk(pre, 4, sample=sample)
    dense = _dense(sel.rows, sel.cols, sel.pre, shape)
    assert_close(dense, losses.batch_topk_activations(pre, 4))
    order_key = sel.rows * shape[1] + sel.cols
    assert bool((order_key[1:] > order_key[:-1]).all())


@DEVICES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_batch_topk_breaks_ties_by_position(device: str, dtype: torch.dtype) -> None:
    pre = torch.randint(-3, 4, (B, W)).to(device, dtype)  # many entries share each value
    sel = select_batch_topk(pre, 4, sample=16)
    assert sel.rows.numel() == 4 * B
    assert _chosen(sel) == _batch_topk_reference(pre.float().cpu(), 4)
    assert_close(sel.pre, pre[sel.rows, sel.cols])


def test_select_batch_topk_exact_where_the_sample_misleads() -> None:
    # Every sampled entry is large and nothing else is: the sampled floor lets too few through.
    pre = torch.randn(B, W)
    stride = 161  # what a sample of 16 takes from 64 x 40 entries (coprime to 40)
    pre.view(-1)[::stride] = 10.0
    sel = select_batch_topk(pre, 4, sample=16)
    assert _chosen(sel) == _batch_topk_reference(pre, 4)
    assert sel.rows.numel() == 4 * B


def test_select_batch_topk_keeps_every_positive_entry_when_too_few() -> None:
    pre = -torch.rand(B, W)
    pre[5, 7], pre[9, 0] = 1.0, 2.0
    for sample in (16, 1 << 16):
        sel = select_batch_topk(pre, 4, sample=sample)
        assert _chosen(sel) == {(5, 7), (9, 0)}
    assert select_batch_topk(pre, 0.01).rows.numel() == 0  # a budget of no entries


def test_floor_lets_through_the_budget_and_not_many_more() -> None:
    # Every eighth latent is five times larger: a sample that met only some latents (a stride
    # sharing a factor with the width) would place the floor far from the budget.
    batch, width, k = 4096, 64, 4
    scale = torch.where(torch.arange(width) % 8 == 0, 5.0, 1.0)
    for _ in range(8):
        flat = (torch.randn(batch, width) * scale).flatten()
        floor = _floor(flat, k * batch, width, sample=1024)
        assert k * batch <= int((flat >= floor).sum()) <= 2 * k * batch


@DEVICES
def test_sampled_linear_and_sparse_decode_match_dense(device: str) -> None:
    x = torch.randn(B, D).to(device).requires_grad_()
    W_enc = torch.randn(D, W).to(device).requires_grad_()
    b_enc = torch.randn(W).to(device).requires_grad_()
    W_dec = torch.randn(W, D).to(device).requires_grad_()
    target = torch.randn(B, D).to(device)

    with torch.no_grad():
        sel = select_topk(x @ W_enc + b_enc, 6)
    vals = sampled_linear(x, W_enc, b_enc, sel).relu()
    out = sparse_decode(sel.rows, sel.cols, vals, W_dec, B)
    ((out - target) ** 2).sum().backward()
    fast = [t.grad.clone() for t in (x, W_enc, b_enc, W_dec)]
    for t in (x, W_enc, b_enc, W_dec):
        t.grad = None

    mask = _dense(sel.rows, sel.cols, torch.ones_like(sel.pre), (B, W))
    dense_acts = ((x @ W_enc + b_enc) * mask).relu()
    dense_out = dense_acts @ W_dec
    assert_close(out, dense_out, atol=1e-5, rtol=1e-5)
    ((dense_out - target) ** 2).sum().backward()
    for got, t in zip(fast, (x, W_enc, b_enc, W_dec), strict=True):
        assert_close(got, t.grad, atol=1e-4, rtol=1e-4)


def test_sparse_prefix_reconstructions_match_dense() -> None:
    pre = torch.randn(B, W)
    sel = select_batch_topk(pre, 6)
    vals = sel.pre.clone().requires_grad_()
    W_dec = torch.randn(W, D, requires_grad=True)
    b_dec = torch.randn(D)
    bounds = torch.tensor([0, 3, 10, 25, 40])
    fast = sparse_prefix_reconstructions(sel.rows, sel.cols, vals, W_dec, b_dec, bounds, B)
    fast.pow(2).sum().backward()
    fast_grads = vals.grad.clone(), W_dec.grad.clone()
    vals.grad, W_dec.grad = None, None
    dense = losses.prefix_reconstructions(
        _dense(sel.rows, sel.cols, vals, (B, W)), W_dec, b_dec, bounds
    )
    assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    dense.pow(2).sum().backward()
    assert_close(fast_grads[0], vals.grad, atol=1e-4, rtol=1e-4)
    assert_close(fast_grads[1], W_dec.grad, atol=1e-4, rtol=1e-4)


def _pursuit_full_reference(x, W_dec, residual_threshold, max_iterations, stop_dup):
    """SAELens's training pass: choices without gradient over the whole dictionary."""
    residual = x
    batch = x.shape[0]
    acts = x.new_zeros(batch, W_dec.shape[0])
    prev = torch.zeros_like(acts, dtype=torch.bool)
    done = torch.zeros(batch, dtype=torch.bool, device=x.device)
    for _ in range(max_iterations):
        with torch.no_grad():
            idx = (residual @ W_dec.T).relu().max(dim=1).indices
        atom = W_dec[idx]
        value = (residual * atom).sum(-1).relu() * (~done)
        acts = acts + torch.nn.functional.one_hot(idx, W_dec.shape[0]) * value[:, None]
        residual = residual - value[:, None] * atom
        with torch.no_grad():
            if stop_dup:
                support = acts != 0
                done = done | (support == prev).all(1)
                prev = support
            if residual_threshold > 0:
                done = done | (residual.norm(dim=-1) < residual_threshold)
    return acts


@DEVICES
@pytest.mark.parametrize("stop_dup", [True, False])
def test_pursuit_with_grad_matches_full_pursuit(stop_dup: bool, device: str) -> None:
    W_dec = torch.randn(W, D)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).to(device).requires_grad_()
    x = torch.randn(B, D).to(device).requires_grad_()
    kwargs = {"residual_threshold": 0.5, "max_iterations": 6, "stop_on_duplicate_support": stop_dup}
    fast = pursuit_with_grad(x, W_dec, **kwargs)
    assert_close(fast.detach(), matching_pursuit(x.detach(), W_dec.detach(), **kwargs))
    target = torch.randn(B, D).to(device)
    ((fast @ W_dec - target) ** 2).sum().backward()
    fast_grads = x.grad.clone(), W_dec.grad.clone()
    x.grad, W_dec.grad = None, None
    ref = _pursuit_full_reference(x, W_dec, 0.5, 6, stop_dup)
    assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    ((ref @ W_dec - target) ** 2).sum().backward()
    assert_close(fast_grads[0], x.grad, atol=1e-4, rtol=1e-4)
    assert_close(fast_grads[1], W_dec.grad, atol=1e-4, rtol=1e-4)
