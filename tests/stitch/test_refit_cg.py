"""The conjugate-gradient refit against the dense Cholesky one: the same sums, the same answer.

Tolerances: the squared error within 1e-6 relative of the dense solve's (the issue's bar; the
stopping rule aims at 1e-8), decoders within 1e-3 relative in Frobenius norm (rows of features
that fire on a handful of tokens are the least determined; the ridge holds them).
"""

from __future__ import annotations

import pytest
import torch
from helpers.sae import random_sae

from saegeo.acts.streaming import stream
from saegeo.errors import InsufficientMemoryError, SaegeoError
from saegeo.stitch import refit as refit_module
from saegeo.stitch import refit_cg
from saegeo.stitch.refit import (
    accumulate_stats,
    choose_solver,
    fits_bias,
    output_bias,
    refit_exact,
    solve_exact,
)
from saegeo.stitch.refit_cg import accumulate_codes

CPU = {"device": "cpu", "progress": False}


def _family_and_acts(width: int = 96, n: int = 1500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sae = random_sae(width, "jumprelu", seed=seed + 10)
    x_BD = torch.randn(n, sae.d_in, generator=g, dtype=torch.float64) + 0.5
    return sae, x_BD


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_code_sums_equal_the_dense_statistics(norm):
    sae = random_sae(40, "jumprelu", seed=3, norm=norm)
    x_BD = torch.randn(300, sae.d_in, generator=torch.Generator().manual_seed(1)) + 0.5
    dense = accumulate_stats(sae, stream(x_BD, batch_size=64, **CPU))
    codes = accumulate_codes(sae, stream(x_BD, batch_size=64, **CPU))
    width = sae.width
    torch.testing.assert_close(codes.cross, dense.cross, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(codes.code_sum, dense.gram[:width, width], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(codes.code_sq, dense.gram.diagonal()[:width], rtol=1e-9, atol=1e-12)
    assert codes.weight_sum == pytest.approx(float(dense.gram[width, width]), rel=1e-12)
    assert codes.target_sq == pytest.approx(dense.target_sq, rel=1e-12)
    assert torch.equal(codes.active, dense.active) and codes.n_tokens == dense.n_tokens
    # Aᵀ diag(w) A is the Gram matrix.
    A = codes.codes(torch.float64).to_dense()
    gram = A.T @ (codes.weight[:, None] * A)
    torch.testing.assert_close(gram, dense.gram[:width, :width], rtol=1e-9, atol=1e-9)
    # Squared errors of any decoder agree.
    W_FD = torch.randn(width, sae.d_in, generator=torch.Generator().manual_seed(2))
    b_D = torch.randn(sae.d_in, generator=torch.Generator().manual_seed(3))
    assert codes.sse(W_FD, b_D) == pytest.approx(dense.sse(W_FD, b_D), rel=1e-9)


@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("ridge", [1e-6, 0.0])
def test_cg_solve_equals_the_dense_solve(fit_bias, ridge):
    sae, x_BD = _family_and_acts()
    dense = accumulate_stats(sae, stream(x_BD, **CPU))
    codes = accumulate_codes(sae, stream(x_BD, **CPU))
    b_out = output_bias(sae)
    want = solve_exact(dense, sae.W_dec, b_out, ridge=ridge, fit_bias=fit_bias)
    got = solve_exact(codes, sae.W_dec, b_out, ridge=ridge, fit_bias=fit_bias)
    assert want.method == "cholesky" and got.method == "cg"
    assert 0 < got.iterations < 200 and got.residual < 1e-3
    mse_want = dense.metrics(want.W_dec, want.b_dec).mse
    mse_got = dense.metrics(got.W_dec, got.b_dec).mse
    assert mse_got == pytest.approx(mse_want, rel=1e-6)
    assert mse_want < dense.metrics(sae.W_dec, b_out).mse  # a refit that changes something
    assert _relative(got.W_dec, want.W_dec) < 1e-3
    assert _relative(got.b_dec, want.b_dec) < 1e-3
    if not fit_bias:
        assert torch.equal(got.b_dec, b_out)


def test_dead_features_keep_their_rows_and_a_selection_solves_alike():
    sae, x_BD = _family_and_acts()
    dense = accumulate_stats(sae, stream(x_BD, **CPU))
    codes = accumulate_codes(sae, stream(x_BD, **CPU))
    idx = torch.arange(0, sae.width, 3)
    dense_sub, codes_sub = dense.select(idx), codes.select(idx)
    W_dec, b_out = sae.W_dec[idx], output_bias(sae)
    for name in ("cross", "active"):
        torch.testing.assert_close(getattr(codes_sub, name), getattr(dense_sub, name))
    W_dec = W_dec.clone()
    codes_sub = codes_sub.replace(active=codes_sub.active.clone())
    dense_sub = dense_sub.replace(active=dense_sub.active.clone())
    codes_sub.active[0] = dense_sub.active[0] = 0  # as if feature 0 never fired
    want = solve_exact(dense_sub, W_dec, b_out)
    got = solve_exact(codes_sub, W_dec, b_out)
    assert torch.equal(got.W_dec[0], W_dec[0]) and torch.equal(want.W_dec[0], W_dec[0])
    assert _relative(got.W_dec, want.W_dec) < 1e-3


def test_stopping_rule_tolerance_and_cap():
    sae, x_BD = _family_and_acts()
    dense = accumulate_stats(sae, stream(x_BD, **CPU))
    codes = accumulate_codes(sae, stream(x_BD, **CPU))
    b_out = output_bias(sae)
    best = dense.sse(*solve_exact(dense, sae.W_dec, b_out)[:2])
    excess = []
    for tol in (1e-3, 1e-6, 1e-10):
        solved = solve_exact(codes, sae.W_dec, b_out, tol=tol)
        excess.append(dense.sse(solved.W_dec, solved.b_dec) / best - 1)
        # The rule bounds the excess of the iterate returned (a lower-bound estimate, so
        # allow a factor).
        assert excess[-1] <= 10 * tol + 1e-9
    assert excess[0] > excess[2]
    with pytest.warns(UserWarning, match="max_iterations=2"):
        capped = solve_exact(codes, sae.W_dec, b_out, max_iterations=2)
    assert capped.iterations == 2
    with pytest.raises(SaegeoError, match="tol"):
        solve_exact(codes, sae.W_dec, b_out, tol=0.0)


def test_a_warm_start_converges_to_the_same_decoder_in_fewer_iterations():
    sae, x_BD = _family_and_acts()
    codes = accumulate_codes(sae, stream(x_BD, **CPU))
    b_out = output_bias(sae)
    cold = solve_exact(codes, sae.W_dec, b_out)
    warm = solve_exact(codes, sae.W_dec, b_out, start=cold.W_dec)
    assert warm.iterations < cold.iterations
    assert _relative(warm.W_dec, cold.W_dec) < 1e-3


@pytest.mark.parametrize("arch", ["jumprelu", "matching_pursuit"])
def test_refit_exact_with_either_solver_gives_the_same_fit(arch):
    sae = random_sae(48, arch, seed=5)
    x_BD = torch.randn(800, sae.d_in, generator=torch.Generator().manual_seed(4)) + 0.5
    dense = refit_exact(sae, x_BD, solver="cholesky", **CPU)
    cg = refit_exact(sae, x_BD, solver="cg", **CPU)
    assert (dense.method, cg.method) == ("cholesky", "cg")
    assert dense.iterations == 0 and cg.iterations > 0
    assert dense.residual < 1e-9 and cg.residual < 1e-3
    assert cg.before.mse == pytest.approx(dense.before.mse, rel=1e-9)
    assert cg.after.mse == pytest.approx(dense.after.mse, rel=1e-6)
    assert fits_bias(sae) == (arch != "matching_pursuit")


def test_auto_solver_is_dense_for_small_widths_and_cg_where_the_gram_would_not_fit(monkeypatch):
    assert choose_solver("auto", 100, 16, "cpu") == "cholesky"
    assert choose_solver("auto", refit_module.DENSE_MAX_WIDTH + 1, 16, "cpu") == "cg"
    assert choose_solver("cholesky", 10**6, 16, "cpu") == "cholesky"
    monkeypatch.setattr(refit_module.memory, "available_memory", lambda device: 10**6)
    assert choose_solver("auto", 1000, 16, "cpu") == "cg"
    with pytest.raises(SaegeoError, match="solver='dense'"):
        choose_solver("dense", 10, 16, "cpu")  # type: ignore[arg-type]


def test_allocations_that_would_not_fit_are_refused_before_they_are_made(monkeypatch):
    sae, x_BD = _family_and_acts()
    monkeypatch.setattr(refit_module.memory, "available_memory", lambda device: 10**5)
    with pytest.raises(InsufficientMemoryError, match=r"dense Gram .* solver='cg' or upto"):
        accumulate_stats(sae, stream(x_BD, **CPU))
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* lower it with limit") as e:
        accumulate_codes(sae, stream(x_BD, batch_size=100, **CPU))
    assert e.value.needed > 10**5 and e.value.available == 10**5
    assert "--limit or --upto" in e.value.message(flags=True)
    # What the check projects from the first batch covers what the pass keeps.
    monkeypatch.undo()
    codes = accumulate_codes(sae, stream(x_BD, **CPU))
    assert refit_cg.solve_bytes(sae.width, sae.d_in, codes.nnz, len(x_BD)) > 12 * codes.nnz


def test_cg_refit_over_two_ranks_equals_the_single_process_one(tmp_path):
    import numpy as np
    from helpers.distributed import cg_refit, run_ranks

    single = cg_refit()
    ranks = run_ranks(cg_refit, 2, tmp_path)
    for result in ranks:
        assert result["mse"] == pytest.approx(single["mse"], rel=1e-6)
        assert result["mse_before"] == pytest.approx(single["mse_before"], rel=1e-9)
        np.testing.assert_allclose(result["W_dec"], single["W_dec"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result["b_dec"], single["b_dec"], rtol=1e-4, atol=1e-5)
        # One reduction of the product per iteration, and one each for the first and the
        # final residual.
        assert result["reductions"] == result["iterations"] + 2
    # Both ranks take the same steps.
    np.testing.assert_array_equal(ranks[0]["W_dec"], ranks[1]["W_dec"])
    assert ranks[0]["iterations"] == ranks[1]["iterations"] > 0


def test_the_dense_statistics_of_kept_codes_equal_the_accumulated_ones():
    from saegeo.stitch.refit import dense_stats

    sae = random_sae(40, "jumprelu", seed=3, norm="layer_norm")
    x_BD = torch.randn(300, sae.d_in, generator=torch.Generator().manual_seed(1)) + 0.5
    want = accumulate_stats(sae, stream(x_BD, batch_size=64, **CPU))
    got = dense_stats(accumulate_codes(sae, stream(x_BD, batch_size=64, **CPU)), batch_size=70)
    torch.testing.assert_close(got.gram, want.gram, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.cross, want.cross)
    assert got.target_sq == want.target_sq and got.n_tokens == want.n_tokens


def test_an_auto_stitch_solves_narrow_steps_densely_and_wide_ones_by_cg(monkeypatch):
    from helpers.stitch import toy_acts, toy_family

    from saegeo.stitch.frankenstein import frankenstein

    family, x_BD = toy_family(), toy_acts()
    _, dense = frankenstein(family, x_BD, solver="cholesky", **CPU)
    monkeypatch.setattr(refit_module, "DENSE_MAX_WIDTH", 8)
    # The union (over 8 features) keeps its codes; steps of at most 8 features solve densely.
    _, mixed = frankenstein(family, x_BD, solver="auto", **CPU)
    assert [s.refit_method for s in mixed.steps] == ["cholesky", "cg", "cg"]
    assert [s.refit_method for s in dense.steps] == ["cholesky"] * 3
    assert mixed.refit_method == "cg" and mixed.refit_iterations > 0
    for a, b in zip(mixed.steps, dense.steps, strict=True):
        assert a.mse_after == pytest.approx(b.mse_after, rel=1e-6)
        assert a.mse_before == pytest.approx(b.mse_before, rel=1e-9)


def test_codes_of_widely_spread_magnitudes_fall_back_to_float64_products():
    from saegeo.core.sae import SAE

    # Decoder rows of norm ~4 make the pursuit's codes explode on some tokens (MSE ~1e18):
    # float32 products cannot resolve the rest, and the solve goes on in float64.
    g = torch.Generator().manual_seed(0)
    sae = SAE.from_decoder(torch.randn(64, 16, generator=g))
    x_BD = torch.randn(2000, 16, generator=g)
    dense = refit_exact(sae, x_BD, solver="cholesky", **CPU)
    cg = refit_exact(sae, x_BD, solver="cg", **CPU)
    assert dense.before.mse > 1e12 and cg.residual < refit_cg.FALLBACK_RESIDUAL
    assert cg.after.mse == pytest.approx(dense.after.mse, rel=1e-6)
