"""The least-squares gain of a reconstruction, against a dense least-squares fit."""

from __future__ import annotations

import pytest
import torch
from helpers.sae import mse, random_sae

from saegeo.effects.shrinkage import reconstruction_gain


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("norm", ["none", "expected_average_only_in"])
def test_the_gain_is_the_least_squares_scale_of_the_reconstruction(arch, norm, acts):
    sae = random_sae(12, arch, seed=1, norm=norm)
    with torch.no_grad():
        codes = sae.encode(acts)
        bias = sae.decode(torch.zeros_like(codes), acts)
        y = (sae.decode(codes, acts) - bias).flatten()
    target = (acts - bias).flatten()
    expected = torch.linalg.lstsq(y[:, None], target[:, None]).solution.item()
    assert reconstruction_gain(sae, acts, batch_size=37) == pytest.approx(expected, rel=1e-9)


def test_scaling_the_decoder_by_the_gain_lowers_the_mse_and_leaves_a_gain_of_one(acts):
    sae = random_sae(12, "relu", seed=2, apply_b_dec=False)
    gain = reconstruction_gain(sae, acts)
    scaled = sae.replace(W_dec=sae.W_dec * gain)
    assert mse(scaled, acts) < mse(sae, acts)
    assert reconstruction_gain(scaled, acts) == pytest.approx(1.0, rel=1e-9)
    shrunk = sae.replace(W_dec=sae.W_dec / 2)
    assert reconstruction_gain(shrunk, acts) == pytest.approx(2 * gain, rel=1e-9)


def test_an_sae_that_never_fires_has_no_gain(acts):
    sae = random_sae(12, "relu", seed=3)
    silent = sae.replace(b_enc=torch.full_like(sae.b_enc, -1e6))
    assert reconstruction_gain(silent, acts) != reconstruction_gain(silent, acts)  # NaN


def test_numpy_activations_give_the_same_gain(acts):
    sae = random_sae(12, "relu", seed=4)
    assert reconstruction_gain(sae, acts.numpy()) == reconstruction_gain(sae, acts)
