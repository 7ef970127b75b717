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


# --------------------------------------------------------------------------- Moments


def _large_mean(n: int, d: int, mean: float, dtype: torch.dtype) -> torch.Tensor:
    """Tokens with mean ``mean`` in every coordinate and spread 1."""
    g = torch.Generator().manual_seed(3)
    return (mean + torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)


def _centred_m2(x: torch.Tensor) -> float:
    """Reference Σ||x - mean||²: two passes in float64, centring before squaring."""
    x64 = x.double().numpy()
    return float(((x64 - x64.mean(0)) ** 2).sum())


@pytest.mark.parametrize(
    ("mean", "dtype"), [(1e4, torch.float32), (1e8, torch.float64), (0.0, torch.float32)]
)
def test_moments_keep_the_variance_of_a_large_mean(mean: float, dtype: torch.dtype) -> None:
    from saegeo.effects.metrics import Moments

    x = _large_mean(4000, 16, mean, dtype)
    reference = _centred_m2(x)
    moments = Moments(16)
    for batch in x.split(333):
        moments.add(batch)
    assert moments.n == 4000
    assert moments.m2 == pytest.approx(reference, rel=1e-9)
    torch.testing.assert_close(moments.mean_D, x.double().mean(0), rtol=1e-12, atol=0)
    if mean:
        # The naive Σ||x||² - ||Σx||²/n in the inputs' own precision (what the refit and the
        # interpolation path used) cancels away every digit at this mean: float32 at 1e4,
        # float64 at 1e8 (Σx² ~ n·d·mean² against a variance of n·d).
        naive = float((x**2).sum() - (x.sum(0) ** 2).sum() / x.shape[0])
        assert abs(naive - reference) > 0.1 * reference


def test_moments_merge_like_one_pass() -> None:
    from saegeo.effects.metrics import Moments

    x = _large_mean(900, 5, 1e4, torch.float32)
    parts = [Moments.of(x[:100]), Moments.of(x[100:650]), Moments.of(x[650:])]
    merged = parts[0] + parts[1] + parts[2]
    whole = Moments.of(x)
    assert merged.n == whole.n == 900
    assert merged.m2 == pytest.approx(whole.m2, rel=1e-10)
    torch.testing.assert_close(merged.mean_D, whole.mean_D)
    assert parts[0].n == 100  # merging leaves its operands as they were
    assert (Moments(5) + whole).m2 == whole.m2 and (whole + Moments(5)).m2 == whole.m2
    assert Moments(5).fvu(1.0) != Moments(5).fvu(1.0)  # NaN without variance


def _large_mean_family(mean: float = 1e4) -> tuple[list[SAE], torch.Tensor]:
    """Two JumpReLU SAEs (widths 3 and 6) centred on a mean of ``mean``, and their tokens."""
    d = 8
    g = torch.Generator().manual_seed(5)
    U = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q.float()
    mu = torch.full((d,), mean)
    fires = torch.rand(2000, 6, generator=g) < 0.3
    x = mu + (fires * (1 + torch.rand(2000, 6, generator=g))) @ U[:6]
    x = x + 0.05 * torch.randn(2000, d, generator=g)

    def sae(width: int) -> SAE:
        return SAE(
            W_enc=U[:width].T.clone(),
            b_enc=torch.zeros(width),
            W_dec=U[:width].clone(),
            b_dec=mu.clone(),
            arch="jumprelu",
            threshold=torch.full((width,), 0.5),
            metadata={"name": f"m{width}"},
        )

    return [sae(3), sae(6)], x


def test_every_fvu_agrees_with_float64_numpy_on_a_large_mean() -> None:
    from saegeo.acts.streaming import stream
    from saegeo.stitch.interpolation import interpolation_path
    from saegeo.stitch.refit import accumulate_stats, output_bias

    family, x = _large_mean_family()
    m2 = _centred_m2(x)
    fvu64 = []
    for sae in family:
        # evaluate() measures the float32 forward; the refit's statistics reconstruct in
        # float64, which at this mean differs by the float32 rounding of x̂ (about 1e-3).
        x_hat32 = sae(x).double()
        codes = sae.encode(x).double()
        x_hat64 = codes @ sae.W_dec.double() + sae.b_dec.double()
        sse32 = float(((x.double() - x_hat32) ** 2).sum())
        sse64 = float(((x.double() - x_hat64) ** 2).sum())
        assert 1e-3 < sse64 / m2 < 0.9
        evaluated = evaluate(sae, x, batch_size=300, device="cpu")
        assert evaluated.fvu == pytest.approx(sse32 / m2, rel=1e-6)
        stats = accumulate_stats(sae, stream(x, batch_size=300, device="cpu", progress=False))
        assert stats.moments.m2 == pytest.approx(m2, rel=1e-9)
        refit_fvu = stats.metrics(sae.W_dec, output_bias(sae)).fvu
        assert refit_fvu == pytest.approx(sse64 / m2, rel=1e-6)
        fvu64.append(sse64 / m2)
    path = interpolation_path(family, x, batch_size=300, device="cpu", progress=False)
    # The path starts at the smaller SAE and, every feature having a child, ends at the larger.
    assert path["fvu"].iloc[0] == pytest.approx(fvu64[0], rel=1e-6)
    assert path["fvu"].iloc[-1] == pytest.approx(fvu64[1], rel=1e-6)
    n = x.shape[0]
    assert (path["fvu"] * m2).to_numpy() == pytest.approx((path["mse"] * n).to_numpy(), rel=1e-9)
