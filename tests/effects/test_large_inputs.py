"""Finite activations give finite effect scores however large they are: every score equals its
float64 computation on float32 activations near 1e37, whose squares overflow float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg

SCALE = 1e37


def pair(arch: str, dtype: torch.dtype) -> list[sg.SAE]:
    return [random_sae(w, arch, seed=w).to(dtype=dtype) for w in (8, 16)]


def scores(saes: list[sg.SAE], x_BD: torch.Tensor) -> dict[str, np.ndarray]:
    small, large = saes
    explained = sg.explained_share(small, large, x_BD, progress=False)
    novelty = sg.family_novelty(saes, x_BD, points=0, progress=False).summary
    return {
        "delta_mse": sg.delta_mse(small, large, x_BD, progress=False).to_numpy(),
        **{f"explained.{c}": explained[c].to_numpy() for c in explained},
        **{
            f"novelty.{c}": novelty[c].to_numpy(dtype=float)
            for c in novelty
            if novelty[c].dtype.kind == "f"
        },
    }


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "matching_pursuit"])
def test_scores_of_huge_activations_are_their_float64_values(arch):
    x_BD = SCALE * torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    expected = scores(pair(arch, torch.float64), x_BD.double())
    actual = scores(pair(arch, torch.float32), x_BD)
    assert expected.keys() == actual.keys()
    assert np.isfinite(actual["delta_mse"]).all()
    for name, values in actual.items():
        # NaN only where the float64 score is NaN too (a feature that never fires).
        assert np.array_equal(np.isnan(values), np.isnan(expected[name])), name
        np.testing.assert_allclose(values, expected[name], rtol=1e-3, err_msg=name)
