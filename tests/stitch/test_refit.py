"""The exact decoder refit: statistics against dense references, the solve against lstsq,
codes kept fixed by the folding."""

from __future__ import annotations

import pytest
import torch
from helpers.refit import D, F, N, acts, random_sae

from saegeo.acts.streaming import stream
from saegeo.core.sae import SAE
from saegeo.effects.metrics import evaluate
from saegeo.errors import SaegeoError
from saegeo.stitch import refit as refit_module
from saegeo.stitch.refit import (
    accumulate_stats,
    decode_target,
    output_bias,
    refit_exact,
    solve_decoder,
    with_decoder,
)


def design(sae: SAE, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense reference: Z = [codes 1], target and weight, in float64."""
    codes = sae.encode(x_BD).double()
    y_BD, w_B = decode_target(sae, x_BD)
    z = torch.cat([codes, torch.ones(len(x_BD), 1, dtype=torch.float64)], dim=1)
    return z, y_BD.double(), w_B.double()


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
@pytest.mark.parametrize("route", ["spmm", "pairs"])
def test_stats_match_dense_reference(monkeypatch, normalize, route):
    monkeypatch.setattr(refit_module, "SPMM_RATIO", 10**9 if route == "spmm" else 0)
    monkeypatch.setattr(refit_module, "PAIR_BUDGET", 300)  # many padded chunks
    sae, x = random_sae(normalize_activations=normalize), acts()
    stats = accumulate_stats(sae, stream(x, batch_size=64, device="cpu", progress=False))
    z, y, w = design(sae, x)
    torch.testing.assert_close(stats.gram, z.T @ (w[:, None] * z), rtol=1e-7, atol=1e-7)
    # Targets are accumulated relative to the SAE's output bias.
    y = y - output_bias(sae).double()
    torch.testing.assert_close(stats.shift, output_bias(sae).double())
    torch.testing.assert_close(stats.cross, z.T @ (w[:, None] * y), rtol=1e-5, atol=1e-4)
    assert stats.target_sq == pytest.approx(float((w * (y**2).sum(1)).sum()), rel=1e-9)
    assert stats.active.tolist() == (sae.encode(x) != 0).sum(0).tolist()
    assert stats.n_tokens == N
    # The statistics give the input-space metrics that evaluate() measures directly.
    expected = evaluate(sae, x, device="cpu")
    got = stats.metrics(sae.W_dec, output_bias(sae))
    assert got.mse == pytest.approx(expected.mse, rel=1e-5)
    assert got.fvu == pytest.approx(expected.fvu, rel=1e-5)
    assert got.l0 == pytest.approx(expected.l0)


def test_exact_solve_matches_lstsq():
    sae, x = random_sae(), acts()
    stats = accumulate_stats(sae, stream(x, device="cpu", progress=False))
    W_dec, b_dec, method = solve_decoder(stats, sae.W_dec, sae.b_dec, ridge=0.0)
    z, y, _ = design(sae, x)
    expected = torch.linalg.lstsq(z, y).solution
    assert method == "cholesky"
    torch.testing.assert_close(W_dec.double(), expected[:F], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b_dec.double(), expected[F], rtol=1e-4, atol=1e-4)
    # refit_exact's SAE computes exactly that least-squares reconstruction.
    result = refit_exact(sae, x, ridge=0.0, device="cpu", progress=False)
    torch.testing.assert_close(result.sae(x).double(), z @ expected, rtol=1e-4, atol=1e-4)
    assert result.after.mse == pytest.approx(float(((z @ expected - y) ** 2).sum(1).mean()))


def test_fixed_bias_solve_matches_lstsq():
    sae, x = random_sae(), acts()
    stats = accumulate_stats(sae, stream(x, device="cpu", progress=False))
    W_dec, b_dec, _ = solve_decoder(stats, sae.W_dec, sae.b_dec, ridge=0.0, fit_bias=False)
    z, y, _ = design(sae, x)
    expected = torch.linalg.lstsq(z[:, :F], y - sae.b_dec.double()).solution
    torch.testing.assert_close(W_dec.double(), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(b_dec, sae.b_dec)


def test_singular_system_falls_back_to_lstsq():
    sae = random_sae()
    sae = sae.replace(
        W_enc=torch.cat([sae.W_enc[:, :1]] * F, dim=1),
        b_enc=torch.zeros(F),
        threshold=torch.zeros(F),
    )  # identical codes: a singular Gram matrix
    stats = accumulate_stats(sae, stream(acts(), device="cpu", progress=False))
    W_dec, b_dec, method = solve_decoder(stats, sae.W_dec, sae.b_dec, ridge=0.0)
    assert method == "lstsq"
    assert torch.isfinite(W_dec).all() and torch.isfinite(b_dec).all()


def test_dead_features_keep_their_rows():
    sae = random_sae()
    threshold = sae.threshold.clone()
    threshold[:3] = 1e6  # never fire
    sae = sae.replace(threshold=threshold)
    result = refit_exact(sae, acts(), device="cpu", progress=False)
    unit = sae.W_dec[:3] / sae.W_dec[:3].norm(dim=1, keepdim=True)
    torch.testing.assert_close(result.sae.W_dec[:3], unit)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
def test_with_decoder_keeps_codes_and_forward(arch, centre, normalize):
    sae = random_sae(arch, apply_b_dec_to_input=centre, normalize_activations=normalize)
    x = acts(64)
    W_new, b_new = torch.randn(F, D) * 3, torch.randn(D)
    folded = with_decoder(sae, W_new, b_new)
    codes = sae.encode(x)
    expected = sae.replace(W_dec=W_new, b_dec=b_new).decode(codes, x)
    torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
    if arch == "topk":
        torch.testing.assert_close(folded.W_dec, W_new)
    else:
        # Decoder rows are unit norm; each latent is the old one times its row's norm. The
        # re-centred pre-activations differ from the old ones by float32 rounding of terms of
        # size |x|·|W_enc|, hence the same tolerance as the forward pass.
        torch.testing.assert_close(folded.W_dec.norm(dim=1), torch.ones(F))
        torch.testing.assert_close(
            folded.encode(x), codes * W_new.norm(dim=1), rtol=1e-4, atol=1e-4
        )


def test_new_b_dec_is_folded_into_b_enc():
    sae, x = random_sae(apply_b_dec_to_input=True), acts()
    result = refit_exact(sae, x, device="cpu", progress=False)
    assert not torch.allclose(result.sae.b_dec, sae.b_dec)
    assert (result.sae.encode(x) != 0).equal(sae.encode(x) != 0)
    assert evaluate(result.sae, x, device="cpu").mse == pytest.approx(result.after.mse, rel=1e-5)


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
def test_refit_never_worse_than_before(normalize):
    sae, x = random_sae(normalize_activations=normalize), acts()
    exact = refit_exact(sae, x, device="cpu", progress=False)
    assert exact.after.mse <= exact.before.mse
    assert evaluate(exact.sae, x, device="cpu").mse == pytest.approx(exact.after.mse, rel=1e-5)


def test_matching_pursuit_refit_is_one_mod_step():
    W_FD = torch.randn(F, D)
    sae = SAE.from_decoder(
        W_FD / W_FD.norm(dim=1, keepdim=True), b_dec=torch.full((D,), 0.5), max_iterations=4
    )
    x = acts()
    result = refit_exact(sae, x, device="cpu", progress=False)
    new = result.sae
    assert new.arch == "matching_pursuit" and torch.equal(new.W_enc, new.W_dec.T)
    torch.testing.assert_close(new.W_dec.norm(dim=1), torch.ones(F))
    assert torch.equal(new.b_dec, sae.b_dec)  # the pursuit's centring stays
    assert result.after.mse <= result.before.mse
    # With the old codes rescaled by the row norms, the new dictionary reconstructs as
    # the fixed-code solution does.
    stats = accumulate_stats(sae, stream(x, device="cpu", progress=False))
    W_dec, b_dec, _ = solve_decoder(stats, sae.W_dec, sae.b_dec, fit_bias=False)
    assert result.after.mse == pytest.approx(stats.metrics(W_dec, b_dec).mse)


def test_errors_name_the_problem():
    sae = random_sae()
    with pytest.raises(SaegeoError, match="d_in"):
        refit_exact(sae, torch.randn(10, D + 1), device="cpu", progress=False)


@pytest.mark.gpu
def test_gpu_refit_matches_cpu():
    sae, x = random_sae(), acts()
    cpu = refit_exact(sae, x, device="cpu", progress=False)
    gpu = refit_exact(sae, x, device="cuda", progress=False)
    assert gpu.after.mse == pytest.approx(cpu.after.mse, rel=1e-4)
    torch.testing.assert_close(gpu.sae.W_dec.cpu(), cpu.sae.W_dec, rtol=1e-3, atol=1e-4)


def test_stats_of_two_shards_merge_into_the_stats_of_both():
    sae, x = random_sae(), acts() + 1e3
    whole = accumulate_stats(sae, stream(x, device="cpu", progress=False))
    first = accumulate_stats(sae, stream(x[:150], device="cpu", progress=False))
    second = accumulate_stats(sae, stream(x[150:], device="cpu", progress=False))
    merged = first.merge(second)
    assert merged.n_tokens == whole.n_tokens and torch.equal(merged.active, whole.active)
    torch.testing.assert_close(merged.gram, whole.gram)
    torch.testing.assert_close(merged.cross, whole.cross)
    assert merged.target_sq == pytest.approx(whole.target_sq, rel=1e-12)
    assert merged.moments.m2 == pytest.approx(whole.moments.m2, rel=1e-10)
    b_out = output_bias(sae)
    assert merged.metrics(sae.W_dec, b_out).fvu == pytest.approx(
        whole.metrics(sae.W_dec, b_out).fvu, rel=1e-9
    )
    # Selecting features commutes with merging.
    idx = [0, 3, 7]
    torch.testing.assert_close(
        first.select(idx).merge(second.select(idx)).cross, whole.select(idx).cross
    )
    with pytest.raises(SaegeoError, match="b_dec"):
        first.merge(accumulate_stats(random_sae(), stream(x[:10], device="cpu", progress=False)))
