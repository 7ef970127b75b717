"""Matching pursuit against SAELens's ``_encode_matching_pursuit`` and ``MatchingPursuitSAE``."""

from __future__ import annotations

import pytest
import torch
from helpers.pursuit import DYNAMIC, STATIC, assert_same_codes, decoder, sparse_inputs

from saegeo.core import gram_route, pursuit
from saegeo.core.pursuit import choose_method, matching_pursuit
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError, ShapeError

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.matching_pursuit_sae import (  # noqa: E402
    MatchingPursuitSAEConfig,
    _encode_matching_pursuit,
)

METHODS = ["gram", "direct"]


def reference(x_BD: torch.Tensor, W_dec_FD: torch.Tensor, **rules) -> torch.Tensor:
    return _encode_matching_pursuit(
        x_BD,
        W_dec_FD,
        rules["residual_threshold"],
        max_iterations=rules["max_iterations"],
        stop_on_duplicate_support=rules["stop_on_duplicate_support"],
    )


# ----------------------------------------------------------------- against the function


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
@pytest.mark.parametrize("width", [200, 256])  # padded to whole blocks, and not
def test_matches_saelens_float64(method, unit, rules, width):
    W_dec_FD = decoder(width, 48, unit=unit)
    x_BD = torch.cat([sparse_inputs(W_dec_FD, 48), torch.randn(16, 48, dtype=torch.float64)])
    ours = matching_pursuit(x_BD, W_dec_FD, method=method, **rules)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_matches_saelens_float32(method, unit, rules):
    W_dec_FD = decoder(768, 64, unit=unit, dtype=torch.float32)
    x_BD = torch.cat([sparse_inputs(W_dec_FD, 64), 3 * torch.randn(64, 64)])
    ours = matching_pursuit(x_BD, W_dec_FD, method=method, **rules)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


def test_float32_long_static_run_keeps_supports():
    # 48 iterations on dense inputs: many near-ties for the Gram updates to drift across.
    W_dec_FD = decoder(2048, 128, unit=True, dtype=torch.float32)
    x_BD = torch.randn(192, 128)
    rules = dict(residual_threshold=0.0, max_iterations=48, stop_on_duplicate_support=False)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", **rules)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


def test_float32_near_ties_settle_as_saelens_where_its_runs_agree():
    # Pairs of atoms whose correlations differ by about float32 rounding (norms 0.8-1.2,
    # b_dec-centred inputs built from the pairs): SAELens's float32 and float64 runs agree on
    # some rows only, and there the Gram route's supports must equal theirs.
    g = torch.Generator().manual_seed(0)
    W_dec_FD = torch.randn(512, 64, generator=g)
    W_dec_FD *= (0.8 + 0.4 * torch.rand(512, 1, generator=g)) / W_dec_FD.norm(dim=1, keepdim=True)
    W_dec_FD[1:256:2] = W_dec_FD[0:256:2] * (1 + 2e-7 * torch.randn(128, 1, generator=g))
    codes_BF = torch.zeros(512, 512).scatter_(
        1, 2 * torch.randint(0, 128, (512, 4), generator=g), 0.5 + torch.rand(512, 4, generator=g)
    )
    x_BD = codes_BF @ W_dec_FD + 0.05 * torch.randn(512, 64, generator=g)
    rules = dict(residual_threshold=0.0, max_iterations=16, stop_on_duplicate_support=False)
    ref32_BF = reference(x_BD, W_dec_FD, **rules)
    ref64_BF = reference(x_BD.double(), W_dec_FD.double(), **rules)
    settled_B = ((ref32_BF != 0) == (ref64_BF != 0)).all(dim=1)
    assert 50 < int(settled_B.sum()) < 500  # near-ties that float32 rounding flips, and not
    ours_BF = matching_pursuit(x_BD, W_dec_FD, method="gram", **rules)
    same_B = ((ours_BF != 0) == (ref32_BF != 0)).all(dim=1)
    assert bool(same_B[settled_B].all())


def test_gram_drift_stays_well_inside_its_bound(monkeypatch):
    # Clustered atoms (cosines near 0.95) and inputs built from them: the updates c -= coef·G[j]
    # nearly cancel, the worst case for drift. Every selection compares the kept correlations
    # with SAELens's recomputed ones, in units of the drift bound.
    base_FD = torch.randn(64, 128).repeat_interleave(16, dim=0)
    W_dec_FD = base_FD + 0.05 * torch.randn(1024, 128)
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    x_BD = 5 * sparse_inputs(W_dec_FD, 96)
    worst = []
    select = gram_route.select_gram

    def measured(corr_BP, block_max_BK, residual_BD, W_dec_FD, scale_B):
        exact_BF = residual_BD @ W_dec_FD.T
        drift_B = (corr_BP[:, : W_dec_FD.shape[0]] - exact_BF).abs().amax(dim=1)
        worst.append(float((drift_B / gram_route.drift_bound(scale_B, corr_BP.dtype)).max()))
        return select(corr_BP, block_max_BK, residual_BD, W_dec_FD, scale_B)

    monkeypatch.setattr(gram_route, "select_gram", measured)
    rules = dict(residual_threshold=0.0, max_iterations=48, stop_on_duplicate_support=False)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", **rules)
    assert len(worst) == 48 and max(worst) < 0.25
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


@pytest.mark.parametrize("method", METHODS)
def test_rows_stop_at_different_iterations(method):
    W_dec_FD = decoder(256, 48, unit=True)
    x_BD = sparse_inputs(W_dec_FD, 64, noise=0.01)
    rules = dict(residual_threshold=0.15, max_iterations=None, stop_on_duplicate_support=False)
    ref = reference(x_BD, W_dec_FD, **rules)
    assert len(set((ref != 0).sum(dim=1).tolist())) > 5  # the threshold really stops rows apart
    assert_same_codes(matching_pursuit(x_BD, W_dec_FD, method=method, **rules), ref)


@pytest.mark.parametrize("method", METHODS)
def test_duplicate_support_stops_rows_early(method):
    W_dec_FD = decoder(64, 48, unit=False)
    x_BD = torch.randn(64, 48, dtype=torch.float64)
    rules = dict(residual_threshold=0.0, max_iterations=40, stop_on_duplicate_support=True)
    ref = reference(x_BD, W_dec_FD, **rules)
    assert (ref != 0).sum(dim=1).max() < 40  # every row re-selected an atom and stopped
    assert_same_codes(matching_pursuit(x_BD, W_dec_FD, method=method, **rules), ref)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_rows_without_positive_correlation(method, rules):
    # Non-negative atoms against non-positive inputs: every correlation is <= 0, so SAELens
    # picks atom 0 with coefficient 0. Mixed into a batch with ordinary rows and a zero row.
    W_dec_FD = decoder(128, 32, unit=False).abs()
    x_BD = torch.randn(24, 32, dtype=torch.float64)
    x_BD[:8] = -x_BD[:8].abs()
    x_BD[8] = 0
    ref = reference(x_BD, W_dec_FD, **rules)
    assert (ref[:9] == 0).all()
    assert_same_codes(matching_pursuit(x_BD, W_dec_FD, method=method, **rules), ref)


@pytest.mark.parametrize("method", METHODS)
def test_exact_ties_resolve_to_the_first_atom(method):
    W_dec_FD = decoder(96, 32, unit=True)
    W_dec_FD[50:60] = W_dec_FD[10:20]  # duplicated atoms tie exactly; torch's max takes the first
    x_BD = torch.cat([W_dec_FD[10:20] * 2 + 0.01 * torch.randn(10, 32), torch.randn(22, 32)])
    ours = matching_pursuit(x_BD, W_dec_FD, method=method, **STATIC)
    ref = reference(x_BD, W_dec_FD, **STATIC)
    assert (ref[:, 50:60] == 0).all()
    assert_same_codes(ours, ref)


@pytest.mark.parametrize("drift_factor", [1e20, float("inf")], ids=["all-candidates", "inf"])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_gram_exact_route_for_every_row(monkeypatch, rules, drift_factor):
    # A huge drift bound makes every row unclear at every iteration, with every atom a
    # candidate; an infinite one sends every row through SAELens's expression.
    monkeypatch.setattr(gram_route, "DRIFT_FACTOR", drift_factor)
    W_dec_FD = decoder(200, 48, unit=False, dtype=torch.float32)
    x_BD = sparse_inputs(W_dec_FD, 40)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", **rules)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **rules))


@pytest.mark.parametrize("method", METHODS)
def test_small_batches_and_tiles(monkeypatch, method):
    monkeypatch.setattr(gram_route, "CPU_TILE_BYTES", 3 * 128 * 8)  # three rows per tile
    W_dec_FD = decoder(128, 24, unit=True)
    x_BD = sparse_inputs(W_dec_FD, 30)
    ours = matching_pursuit(x_BD, W_dec_FD, method=method, batch_size=7, **DYNAMIC)
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **DYNAMIC))


def test_given_gram_and_leading_dimensions():
    W_dec_FD = decoder(128, 32, unit=True)
    x_BD = torch.randn(2, 5, 32, dtype=torch.float64)
    ours = matching_pursuit(x_BD, W_dec_FD, method="gram", gram_FF=W_dec_FD @ W_dec_FD.T)
    ref = _encode_matching_pursuit(x_BD, W_dec_FD, 1e-2, None, True)
    assert ours.shape == (2, 5, 128)
    assert_same_codes(ours, ref)


def test_defaults_and_zero_iterations():
    W_dec_FD = decoder(64, 16, unit=True)
    x_BD = torch.randn(8, 16, dtype=torch.float64)
    ref = _encode_matching_pursuit(x_BD, W_dec_FD, 1e-2, None, True)
    assert_same_codes(matching_pursuit(x_BD, W_dec_FD), ref)
    assert_same_codes(matching_pursuit(x_BD[0], W_dec_FD, device="auto"), ref[0])  # one row
    assert (matching_pursuit(x_BD, W_dec_FD, max_iterations=0) == 0).all()


# ----------------------------------------------------------------- choosing and checking


def test_auto_rule():
    cpu = torch.device("cpu")
    assert choose_method(4096, 4608, 576, 64, torch.float32, cpu) == "gram"
    assert choose_method(4096, 4608, 32, 64, torch.float32, cpu) == "direct"  # small d_in
    assert choose_method(4096, 4608, 576, 64, torch.bfloat16, cpu) == "direct"
    assert choose_method(1, 4608, 576, 64, torch.float32, cpu) == "direct"  # Gram not amortised
    assert choose_method(1, 4608, 576, 64, torch.float32, cpu, gram_given=True) == "gram"


def test_auto_falls_back_to_direct_without_memory(monkeypatch):
    monkeypatch.setattr(pursuit, "available_memory", lambda device: 1024)
    assert choose_method(4096, 4608, 576, 64, torch.float32, torch.device("cpu")) == "direct"


def test_user_errors_name_the_argument():
    W_dec_FD = torch.randn(16, 8)
    x_BD = torch.randn(4, 8)
    with pytest.raises(SaegeoError, match="method"):
        matching_pursuit(x_BD, W_dec_FD, method="fast")  # type: ignore[arg-type]
    with pytest.raises(SaegeoError, match="max_iterations"):
        matching_pursuit(x_BD, W_dec_FD, max_iterations=-1)
    with pytest.raises(SaegeoError, match="batch_size"):
        matching_pursuit(x_BD, W_dec_FD, batch_size=0)
    with pytest.raises(ShapeError, match="d_in"):
        matching_pursuit(torch.randn(4, 9), W_dec_FD)
    with pytest.raises(SaegeoError, match="dtype"):
        matching_pursuit(x_BD.double(), W_dec_FD)
    with pytest.raises(ShapeError, match="gram_FF"):
        matching_pursuit(x_BD, W_dec_FD, method="gram", gram_FF=torch.eye(3))


# ----------------------------------------------------------------- through the SAE classes


@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("rules", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_sae_encode_matches_saelens_sae(unit, rules):
    W_dec_FD = decoder(512, 64, unit=unit, dtype=torch.float32)
    b_dec_D = 0.1 * torch.randn(64)
    x_BD = sparse_inputs(W_dec_FD, 64) + b_dec_D
    cfg = MatchingPursuitSAEConfig(d_in=64, d_sae=512, **rules)
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    theirs.load_state_dict({"W_dec": W_dec_FD, "b_dec": b_dec_D})
    ours = SAE.from_decoder(W_dec_FD, b_dec_D, **rules)
    with torch.no_grad():
        ref_BF = theirs.encode(x_BD)
        assert_same_codes(ours.encode(x_BD), ref_BF)
        torch.testing.assert_close(ours.decode(ref_BF), theirs.decode(ref_BF))


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_saelens_on_cpu(method):
    W_dec_FD = decoder(1024, 96, unit=True)
    x_BD = sparse_inputs(W_dec_FD, 256)
    ours = matching_pursuit(x_BD, W_dec_FD, method=method, device="cuda", **DYNAMIC)
    assert ours.device.type == "cpu"
    assert_same_codes(ours, reference(x_BD, W_dec_FD, **DYNAMIC))
