"""Hybrid SAEs: a smaller SAE with a larger one's features added or its own removed."""

from __future__ import annotations

import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg
from saegeo.effects.hybrid import hybrid, output_scale
from saegeo.errors import SaegeoError


def test_hybrid_of_additive_saes_is_concat(acts):
    small, large = random_sae(6, "relu", seed=1), random_sae(9, "jumprelu", seed=2)
    union = hybrid(small, large, add=[4, 2], remove=[1])
    reference = sg.concat([small.select([0, 2, 3, 4, 5]), large.select([4, 2])])
    torch.testing.assert_close(union.encode(acts), reference.encode(acts))
    with pytest.raises(SaegeoError, match="distinct"):
        hybrid(small, large, add=[1, 1])
    with pytest.raises(SaegeoError, match="no latents"):
        hybrid(small, large, remove=range(6))


def test_output_scale_is_the_decode_slope(acts):
    for norm in ("none", "constant_norm_rescale", "layer_norm"):
        sae = random_sae(5, "relu", seed=0, norm=norm)
        codes = sae.encode(acts)
        bump = torch.zeros_like(codes)
        bump[:, 0] = 1.0
        slope = (sae.decode(codes + bump, acts) - sae.decode(codes, acts))[:, 0] / sae.W_dec[0, 0]
        torch.testing.assert_close(output_scale(sae, acts), slope)
