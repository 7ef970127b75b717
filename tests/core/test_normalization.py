"""The input normalisation rules, against SAELens's own and against their defining identities."""

from __future__ import annotations

import pytest
import torch
from helpers.saelens import make_lens_sae

from saegeo.core import normalization
from saegeo.errors import SaegeoError

KINDS = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]


def inputs() -> torch.Tensor:
    return torch.randn(32, 16) * 3 + 1


@pytest.mark.parametrize("kind", KINDS)
def test_normalize_and_denormalize_match_saelens(kind):
    lens = make_lens_sae("standard", d_in=16, d_sae=8, normalize_activations=kind)
    x = inputs()
    y = torch.randn_like(x)
    torch.testing.assert_close(
        normalization.normalize(kind, x), lens.run_time_activation_norm_fn_in(x)
    )
    torch.testing.assert_close(
        normalization.denormalize(kind, y, x), lens.run_time_activation_norm_fn_out(y)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_decode_target_weights_the_error_exactly(kind):
    x, z = inputs().double(), torch.randn(32, 16).double()
    y, w = normalization.decode_target(kind, x)
    lhs = (w * (y - z).pow(2).sum(1)).sum()
    rhs = (x - normalization.denormalize(kind, z, x)).pow(2).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("kind", KINDS)
def test_output_scale_is_the_slope_of_denormalize(kind):
    x, y, d = inputs().double(), torch.randn(32, 16).double(), torch.randn(32, 16).double()
    slope = normalization.denormalize(kind, y + d, x) - normalization.denormalize(kind, y, x)
    torch.testing.assert_close(slope, normalization.output_scale(kind, x)[:, None] * d)


def test_denormalize_needs_the_input_where_it_uses_it():
    y = torch.randn(4, 16)
    assert normalization.denormalize("none", y, None) is y
    with pytest.raises(SaegeoError, match="needs the input x"):
        normalization.denormalize("layer_norm", y, None)


def test_unknown_normalisation_names_the_source():
    with pytest.raises(SaegeoError, match="cfg.json: unsupported normalize_activations 'whiten'"):
        normalization.check("whiten", "cfg.json")
