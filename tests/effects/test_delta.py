"""delta_mse, swap deltas and cumulative curves against re-encoding hybrid SAEs one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.property import PROPERTY
from helpers.sae import mse, random_sae
from hypothesis import given
from hypothesis import strategies as st

import saegeo as sg
from saegeo.effects.delta import cumulative_mse, delta_mse, swap_deltas
from saegeo.effects.hybrid import hybrid
from saegeo.errors import SaegeoError


def l0(sae: sg.SAE, x_BD: torch.Tensor) -> float:
    return float((sae.encode(x_BD) != 0).sum(dim=1).double().mean())


def topk_union(small: sg.SAE, large: sg.SAE, j: int) -> sg.SAE:
    """Small's TopK with large feature j appended (its bias re-centred), written out by hand."""
    b_enc_j = large.b_enc[j] + (small.centring() - large.centring()) @ large.W_enc[:, j]
    return small.replace(
        W_enc=torch.cat([small.W_enc, large.W_enc[:, [j]]], dim=1),
        b_enc=torch.cat([small.b_enc, b_enc_j[None]]),
        W_dec=torch.cat([small.W_dec, large.W_dec[[j]]]),
    )


def naive_delta(small: sg.SAE, large: sg.SAE, x_BD: torch.Tensor) -> np.ndarray:
    """Re-encode small + feature j for every j (the definition)."""
    base = mse(small, x_BD)
    out = []
    for j in range(large.width):
        if small.arch == "topk":
            union = topk_union(small, large, j)
        else:
            union = sg.concat([small, large.select([j])])
        out.append(mse(union, x_BD) - base)
    return np.array(out)


ARCHS = ["relu", "jumprelu", "topk", "matching_pursuit"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_delta_mse_matches_reencoding_each_hybrid(acts, arch, apply_b_dec):
    # Different b_dec, and for additive and TopK pairs a different centring rule, in each SAE.
    small = random_sae(12, arch, seed=1, apply_b_dec=apply_b_dec)
    other = apply_b_dec if arch == "matching_pursuit" else not apply_b_dec
    large = random_sae(24, arch, seed=2, apply_b_dec=other)
    result = delta_mse(small, large, acts, batch_size=100, device="cpu", progress=False)
    expected = naive_delta(small, large, acts)
    assert result.name == "delta_mse" and result.index.name == "feature"
    assert (expected < 0).sum() > 5
    if arch != "matching_pursuit":  # adding an atom to a pursuit rarely hurts
        assert (expected > 0).sum() > 2
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("arch", ["relu", "topk", "matching_pursuit"])
@pytest.mark.parametrize(
    "norm", ["expected_average_only_in", "constant_norm_rescale", "layer_norm"]
)
def test_delta_mse_under_input_normalisation(acts, arch, norm):
    small = random_sae(10, arch, seed=3, norm=norm)
    large = random_sae(20, arch, seed=4, norm=norm)
    result = delta_mse(small, large, acts, batch_size=64, device="cpu", progress=False)
    np.testing.assert_allclose(
        result.to_numpy(), naive_delta(small, large, acts), rtol=1e-5, atol=1e-9
    )


def test_delta_mse_float32_matches_float64_reference(acts):
    small64, large64 = random_sae(12, "relu", seed=5), random_sae(24, "jumprelu", seed=6)
    expected = naive_delta(small64, large64, acts)
    small, large = small64.to(dtype=torch.float32), large64.to(dtype=torch.float32)
    result = delta_mse(small, large, acts.float(), device="cpu", progress=False)
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-4, atol=1e-5)


def test_topk_as_jumprelu_uses_converted_saes(acts):
    small, large = random_sae(12, "topk", seed=7), random_sae(24, "topk", seed=8)
    result = delta_mse(small, large, acts, topk="jumprelu", device="cpu", progress=False)
    small_j, large_j = small.to_jumprelu(acts), large.to_jumprelu(acts)
    np.testing.assert_allclose(
        result.to_numpy(), naive_delta(small_j, large_j, acts), rtol=1e-5, atol=1e-9
    )


def test_mixed_pairs_are_user_errors(acts):
    with pytest.raises(SaegeoError, match="to_jumprelu"):
        delta_mse(random_sae(8, "topk", seed=0), random_sae(8, "relu", seed=1), acts)
    with pytest.raises(SaegeoError, match="cannot add"):
        delta_mse(random_sae(8, "matching_pursuit", seed=0), random_sae(8, "relu", seed=1), acts)
    with pytest.raises(SaegeoError, match="^topk='x': must be one of 'reencode', 'jumprelu'$"):
        delta_mse(random_sae(8, "relu", seed=0), random_sae(8, "relu", seed=1), acts, topk="x")
    with pytest.raises(SaegeoError, match="d_in"):
        delta_mse(random_sae(8, "relu", seed=0), random_sae(8, "relu", seed=1), acts[:, :3])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_swap_deltas_match_reencoding(acts, arch, norm):
    small = random_sae(12, arch, seed=1, norm=norm)
    large = random_sae(24, arch, seed=2, apply_b_dec=arch == "matching_pursuit", norm=norm)
    groups_small, groups_large = [[0, 3], [5], [7, 8, 9]], [[1], [2, 4, 20], [10]]
    result = swap_deltas(
        small, large, acts, groups_small, groups_large, batch_size=50, device="cpu"
    )
    assert list(result.columns) == ["delta_mse", "delta_l0"]
    base_mse, base_l0 = mse(small, acts), l0(small, acts)
    for g, (members_small, members_large) in enumerate(
        zip(groups_small, groups_large, strict=True)
    ):
        swapped = hybrid(small, large, add=members_large, remove=members_small)
        # Re-encoding paths evaluate in float32 (saegeo.effects.metrics); closed forms in float64.
        assert result.delta_mse[g] == pytest.approx(mse(swapped, acts) - base_mse, abs=1e-5)
        assert result.delta_l0[g] == pytest.approx(l0(swapped, acts) - base_l0, abs=1e-9)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_cumulative_mse_evaluates_hybrids(acts, arch):
    small, large = random_sae(8, arch, seed=1), random_sae(16, arch, seed=2)
    order = [5, 1, 9, 12, 0]
    curve = cumulative_mse(small, large, acts, order, points=3, device="cpu")
    assert curve["n_added"].tolist() == [0, 2, 5]
    assert curve["mse"][0] == pytest.approx(mse(small, acts), rel=1e-5)
    assert curve["mse"][1] == pytest.approx(mse(hybrid(small, large, add=[5, 1]), acts), rel=1e-5)
    assert curve["l0"][2] == pytest.approx(l0(hybrid(small, large, add=order), acts), abs=1e-9)


@PROPERTY
@given(
    arch=st.sampled_from(ARCHS),
    widths=st.tuples(st.integers(4, 10), st.integers(1, 14)),
    apply_b_dec=st.tuples(st.booleans(), st.booleans()),
    n_tokens=st.integers(1, 40),
    batch_size=st.integers(1, 50),
    scale=st.sampled_from([0.1, 1.5, 20.0]),
    seed=st.integers(0, 2**16),
)
def test_property_delta_mse_equals_reencoding(
    arch, widths, apply_b_dec, n_tokens, batch_size, scale, seed
):
    small = random_sae(widths[0], arch, seed=seed, apply_b_dec=apply_b_dec[0])
    # A pursuit pair shares its centring (a union dictionary has one b_dec).
    other = apply_b_dec[0] if arch == "matching_pursuit" else apply_b_dec[1]
    large = random_sae(widths[1], arch, seed=seed + 1, apply_b_dec=other)
    g = torch.Generator().manual_seed(seed)
    x_BD = scale * torch.randn(n_tokens, small.d_in, generator=g, dtype=torch.float64) + 0.5
    result = delta_mse(small, large, x_BD, batch_size=batch_size, device="cpu", progress=False)
    expected = naive_delta(small, large, x_BD)
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-6, atol=1e-9 * scale**2)
