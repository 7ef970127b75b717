"""Sparse codes of an SAE over activations, against its dense encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saegeo as sg
from saegeo.errors import SaegeoError


def test_encode_codes_matches_dense_encode():
    sae = sg.SAE(
        W_enc=torch.randn(6, 20),
        b_enc=torch.randn(20) * 0.1,
        W_dec=torch.randn(20, 6),
        b_dec=torch.zeros(6),
        arch="topk",
        k=3,
    )
    acts = torch.randn(37, 6)
    codes = sg.encode_codes(sae, acts, batch_size=10, progress=False)
    assert codes.shape == (37, 20) and codes.dtype == np.float32
    np.testing.assert_allclose(codes.toarray(), sae.encode(acts).numpy(), rtol=1e-6)
    with pytest.raises(SaegeoError, match="d_in"):
        sg.encode_codes(sae, torch.randn(4, 5), progress=False)
