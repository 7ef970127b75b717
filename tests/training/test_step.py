"""Training steps' helpers."""

from __future__ import annotations

import torch

from saegeo.training.step import geometric_median


def test_geometric_median_resists_outliers() -> None:
    points = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    median = geometric_median(points)
    torch.testing.assert_close(median, torch.ones(4), atol=0.1, rtol=0)
    assert float(points.mean(0)[0]) > 9.0
