"""Small SAEs built by hand, shared by the tests of several modules."""

from __future__ import annotations

import torch

import saegeo as sg


def relu_pair(seed: int = 0) -> tuple[sg.SAE, sg.SAE, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_small_SD = torch.randn(6, 8, generator=g)
    W_large_LD = torch.cat(
        [W_small_SD + 0.1 * torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)]
    )

    def make(W_FD: torch.Tensor) -> sg.SAE:
        W_FD = W_FD / W_FD.norm(dim=1, keepdim=True)
        return sg.SAE(
            W_enc=W_FD.T.clone(),
            b_enc=-0.3 * torch.ones(W_FD.shape[0]),
            W_dec=W_FD,
            b_dec=torch.zeros(8),
        )

    return make(W_small_SD), make(W_large_LD), torch.randn(300, 8, generator=g)
