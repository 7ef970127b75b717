"""The interpolation path between adjacent members, against evaluating each step directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.stitch import CPU, toy_acts, toy_family

from saegeo.core.sae import concat
from saegeo.effects.metrics import evaluate
from saegeo.stitch.interpolation import _pair_steps, interpolation_path


def test_interpolation_path_matches_direct_evaluation():
    family, x = toy_family(), toy_acts(600)
    path = interpolation_path(family, x, **CPU)
    for pair in (0, 1):
        small, large = family[pair], family[pair + 1]
        rows = path[path["pair"] == pair]
        steps = _pair_steps(small, large, threshold=0.7, device=torch.device("cpu"))
        assert len(rows) == len(steps)
        assert rows["action"].tolist()[0] == "start"
        union = concat([small, large])
        mask = np.zeros(union.width, dtype=bool)
        for row, (_, _, added, removed) in zip(rows.itertuples(), steps, strict=True):
            mask[removed] = False
            mask[added] = True
            direct = evaluate(union.select(np.nonzero(mask)[0].tolist()), x, device="cpu")
            assert row.mse == pytest.approx(direct.mse, rel=1e-5, abs=1e-9)
            assert row.l0 == pytest.approx(direct.l0)
            assert row.n_features == mask.sum()
    # Novel features come first, most novel first; swaps follow, most similar first.
    first = path[path["pair"] == 0]
    adds, swaps = first[first["action"] == "add"], first[first["action"] == "swap"]
    assert adds["cos"].is_monotonic_increasing and swaps["cos"].is_monotonic_decreasing
    assert adds.index.max() < swaps.index.min()
    # Every base feature has a child, so the path ends at the larger SAE.
    end = first.iloc[-1]
    assert end["mse"] == pytest.approx(evaluate(family[1], x, device="cpu").mse, rel=1e-5)


def test_interpolation_path_points_and_matching_pursuit():
    family, x = toy_family("matching_pursuit")[:2], toy_acts(200)
    path = interpolation_path(family, x, points=3, **CPU)
    assert path["step"].tolist() == [0, 6, 12]
    assert path["mse"].iloc[0] == pytest.approx(evaluate(family[0], x, device="cpu").mse)


@pytest.mark.gpu
def test_gpu_interpolation_path_matches_cpu():
    family, x = toy_family(), toy_acts()
    path = interpolation_path(family, x, device="cuda", progress=False)
    assert len(path) == len(interpolation_path(family, x, **CPU))
