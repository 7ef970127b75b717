"""Training losses, each against a naive reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.training import losses

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
    # the log penalty of "Efficient Matryoshka loss calculation", minus its constant F·log(eps)
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
