"""Activations shared by the tests of the effects on reconstruction."""

from __future__ import annotations

import pytest
import torch
from helpers.sae import D_IN


@pytest.fixture
def acts() -> torch.Tensor:
    return 1.5 * torch.randn(160, D_IN, dtype=torch.float64) + 0.5
