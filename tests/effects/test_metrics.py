"""Streaming metrics against their definitions computed in one go."""

from __future__ import annotations

import pytest
import torch

from saegeo.core.sae import SAE
from saegeo.effects.metrics import evaluate
from saegeo.errors import ShapeError


def _sae(d: int = 8, width: int = 20) -> SAE:
    return SAE(
        W_enc=torch.randn(d, width),
        b_enc=torch.randn(width) - 1.0,
        W_dec=torch.randn(width, d),
        b_dec=torch.randn(d),
        arch="relu",
    )


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_streaming_equals_definitions(batch_size: int) -> None:
    sae = _sae()
    x = torch.randn(500, 8) * 3 + 1.0
    metrics = evaluate(sae, x, batch_size=batch_size, device="cpu")
    x64 = x.double()
    codes = sae.encode(x)
    err = (x64 - sae.decode(codes).double()).pow(2).sum(1)
    assert metrics.n_tokens == 500
    assert metrics.mse == pytest.approx(float(err.mean()), rel=1e-6)
    assert metrics.fvu == pytest.approx(
        float(err.sum() / (x64 - x64.mean(0)).pow(2).sum()), rel=1e-6
    )
    assert metrics.l0 == pytest.approx(float((codes != 0).sum(1).double().mean()))
    fired = (codes != 0).any(0)
    assert metrics.dead_fraction == pytest.approx(1 - float(fired.double().mean()))
    torch.testing.assert_close(metrics.freq, (codes != 0).float().mean(0))
    assert metrics.explained_variance == pytest.approx(1 - metrics.fvu)
    assert set(metrics.as_dict()) == {"mse", "fvu", "l0", "dead_fraction", "n_tokens"}


def test_fvu_survives_a_large_mean() -> None:
    # float32 sums of squares would cancel the small variance under a mean of 1e4
    x = torch.randn(4000, 8) + 1e4
    sae = _sae()
    sae = sae.replace(W_dec=torch.zeros_like(sae.W_dec), b_dec=x.mean(0))
    metrics = evaluate(sae, x, batch_size=333, device="cpu")
    assert metrics.fvu == pytest.approx(1.0, abs=1e-3)


def test_limit_and_shape_errors() -> None:
    sae = _sae()
    assert evaluate(sae, torch.randn(100, 8), limit=30, device="cpu").n_tokens == 30
    with pytest.raises(ShapeError, match="d_in"):
        evaluate(sae, torch.randn(10, 5), device="cpu")
