"""Training losses and sparse training ops, each against a naive reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from saegeo.core.pursuit import matching_pursuit
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.training import losses
from saegeo.training.sparse_ops import (
    pursuit_with_grad,
    sampled_linear,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_prefix_reconstructions,
)

B, D, W = 64, 12, 40


def _relu_sae(width: int = W, d: int = D) -> SAE:
    W_dec = torch.randn(width, d) * torch.rand(width, 1)  # decoder norms differ
    return SAE(
        W_enc=torch.randn(d, width) / d**0.5,
        b_enc=torch.randn(width) * 0.1,
        W_dec=W_dec,
        b_dec=torch.randn(d) * 0.1,
        arch="relu",
    )


def test_sparsity_penalties() -> None:
    acts = torch.tensor([[0.0, 2.0, -3.0]])
    norms = torch.tensor([1.0, 0.5, 2.0])
    assert_close(losses.sparsity_loss(acts, norms, "l1"), torch.tensor(1.0 + 6.0))
    # seed 004's log penalty, minus its constant F·log(eps)
    seed_form = sum(math.log(a * n + 0.1) for a, n in zip([0, 2, 3], [1, 0.5, 2], strict=True))
    expected = seed_form - 3 * math.log(0.1)
    assert_close(losses.sparsity_loss(acts, norms, "log"), torch.tensor(expected))
    assert float(losses.sparsity_loss(acts, norms, "none")) == 0.0
    with pytest.raises(SaegeoError, match="sparsity"):
        losses.sparsity_loss(acts, norms, "l2")  # type: ignore[arg-type]


def test_mse_definition() -> None:
    x = torch.randn(B, D)
    x_hat = torch.randn(B, D)
    assert_close(losses.mse_loss(x, x_hat), ((x - x_hat) ** 2).sum(1).mean())


@pytest.mark.parametrize("sparsity", ["log", "l1"])
@pytest.mark.parametrize("bounds", [[0, 5, 10, 20, 40], [0, 40], [0, 1, 39, 40]])
def test_matryoshka_cumsum_equals_naive_per_prefix(sparsity: str, bounds: list[int]) -> None:
    sae = _relu_sae()
    x = torch.randn(B, D) * 2
    acts = sae.encode(x)
    fast = losses.matryoshka_loss(
        x, acts, sae.W_dec, sae.b_dec, bounds, sparsity=sparsity, coefficient=0.3
    )
    naive_mse, naive_sparsity = [], []
    for width in bounds[1:]:
        prefix = sae.select(range(width))  # a separate SAE and forward pass per prefix
        prefix_acts = prefix.encode(x)
        naive_mse.append(((x - prefix.decode(prefix_acts)) ** 2).sum(-1).mean())
        naive_sparsity.append(
            losses.sparsity_loss(prefix_acts, prefix.W_dec.norm(dim=-1), sparsity)
        )
    naive_mse_P, naive_sparsity_P = torch.stack(naive_mse), torch.stack(naive_sparsity)
    assert_close(fast.mse, naive_mse_P, atol=1e-5, rtol=1e-5)
    assert_close(fast.sparsity, naive_sparsity_P, atol=1e-5, rtol=1e-5)
    assert_close(fast.loss, (naive_mse_P + 0.3 * naive_sparsity_P).mean(), atol=1e-5, rtol=1e-5)


def test_matryoshka_gradients_match_naive() -> None:
    W_dec = torch.randn(W, D, requires_grad=True)
    acts = torch.randn(B, W).relu().requires_grad_()
    x = torch.randn(B, D)
    bounds = [0, 8, 16, 40]
    losses.matryoshka_loss(x, acts, W_dec, torch.zeros(D), bounds, coefficient=0.1).loss.backward()
    fast_grads = W_dec.grad.clone(), acts.grad.clone()
    W_dec.grad, acts.grad = None, None
    total = 0
    for p in bounds[1:]:
        x_hat = acts[:, :p] @ W_dec[:p]
        penalty = torch.log1p(acts[:, :p].abs() * W_dec[:p].norm(dim=-1) / 0.1).sum(-1).mean()
        total = total + ((x - x_hat) ** 2).sum(-1).mean() + 0.1 * penalty
    (total / 3).backward()
    assert_close(fast_grads[0], W_dec.grad, atol=1e-5, rtol=1e-5)
    assert_close(fast_grads[1], acts.grad, atol=1e-5, rtol=1e-5)


def test_bad_bounds_raise() -> None:
    with pytest.raises(SaegeoError, match="bounds"):
        losses.prefix_reconstructions(
            torch.ones(2, 4), torch.ones(4, 3), torch.zeros(3), [0, 3, 3, 4]
        )
    with pytest.raises(SaegeoError, match="bounds"):
        losses.check_bounds([0, 2], 4)


def test_pareto_prefix_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = [losses.pareto_prefix_bounds(1000, 10, generator=gen) for _ in range(300)]
    for bounds in draws:
        assert bounds.numel() == 11 and int(bounds[0]) == 0 and int(bounds[-1]) == 1000
        assert bool((bounds[1:] > bounds[:-1]).all())
    cuts = torch.cat([b[1:-1] for b in draws]).float()
    # the truncated Pareto law with power 0.5 favours short prefixes: P(cut < 250) = 0.5 for
    # one draw; drawing 9 without replacement pushes it a little lower
    assert 0.35 < float((cuts < 250).float().mean()) < 0.6
    again = losses.pareto_prefix_bounds(1000, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[0])
    assert losses.pareto_prefix_bounds(50, 1).tolist() == [0, 50]
    with pytest.raises(SaegeoError, match="n_prefixes"):
        losses.pareto_prefix_bounds(5, 10)


def test_default_matryoshka_widths() -> None:
    assert losses.default_matryoshka_widths(4608) == [576, 1152, 2304, 4608]
    assert losses.default_matryoshka_widths(2) == [1, 2]


# ----------------------------------------------------------------------------- sparse ops


def _dense(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.zeros(shape, dtype=values.dtype).index_put((rows, cols), values)


def test_select_topk_matches_dense() -> None:
    pre = torch.randn(B, W)
    sel = select_topk(pre, 5)
    assert bool((sel.rows[1:] >= sel.rows[:-1]).all())
    dense = _dense(sel.rows, sel.cols, sel.pre, (B, W)).relu()
    assert_close(dense, losses.topk_activations(pre, 5))


@pytest.mark.parametrize("candidates", [None, 2])
def test_select_batch_topk_matches_dense(candidates: int | None) -> None:
    pre = torch.randn(B, W)
    pre[3] += 5.0  # one token holds far more than its share, forcing the exact fallback
    sel = select_batch_topk(pre, 4, candidates=candidates)
    dense = _dense(sel.rows, sel.cols, sel.pre, (B, W))
    assert_close(dense, losses.batch_topk_activations(pre, 4))
    order_key = sel.rows * W + sel.cols
    assert bool((order_key[1:] > order_key[:-1]).all())


def test_sampled_linear_and_sparse_decode_match_dense() -> None:
    x = torch.randn(B, D, requires_grad=True)
    W_enc = torch.randn(D, W, requires_grad=True)
    b_enc = torch.randn(W, requires_grad=True)
    W_dec = torch.randn(W, D, requires_grad=True)
    target = torch.randn(B, D)

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
    done = torch.zeros(batch, dtype=torch.bool)
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


@pytest.mark.parametrize("stop_dup", [True, False])
def test_pursuit_with_grad_matches_full_pursuit(stop_dup: bool) -> None:
    W_dec = torch.randn(W, D)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    x = torch.randn(B, D, requires_grad=True)
    kwargs = {"residual_threshold": 0.5, "max_iterations": 6, "stop_on_duplicate_support": stop_dup}
    fast = pursuit_with_grad(x, W_dec, **kwargs)
    assert_close(fast.detach(), matching_pursuit(x.detach(), W_dec.detach(), **kwargs))
    target = torch.randn(B, D)
    ((fast @ W_dec - target) ** 2).sum().backward()
    fast_grads = x.grad.clone(), W_dec.grad.clone()
    x.grad, W_dec.grad = None, None
    ref = _pursuit_full_reference(x, W_dec, 0.5, 6, stop_dup)
    assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    ((ref @ W_dec - target) ** 2).sum().backward()
    assert_close(fast_grads[0], x.grad, atol=1e-4, rtol=1e-4)
    assert_close(fast_grads[1], W_dec.grad, atol=1e-4, rtol=1e-4)
