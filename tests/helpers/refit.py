"""A random SAE and activations for the decoder-refit tests (exact and SGD)."""

from __future__ import annotations

import torch

from saegeo.core.sae import SAE

D, F, N = 8, 12, 400


def random_sae(arch: str = "jumprelu", **settings) -> SAE:
    extra: dict = {}
    if arch == "jumprelu":
        extra["threshold"] = torch.rand(F) * 0.5
    if arch == "topk":
        extra["k"] = 4
    return SAE(
        W_enc=torch.randn(D, F),
        b_enc=torch.randn(F) * 0.1,
        W_dec=torch.randn(F, D),
        b_dec=torch.randn(D) * 0.3,
        arch=arch,
        **extra,
        **settings,
    )


def acts(n: int = N) -> torch.Tensor:
    return torch.randn(n, D) + 0.5
