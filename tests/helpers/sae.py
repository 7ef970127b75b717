"""Small SAEs built by hand, shared by the tests of several modules."""

from __future__ import annotations

from typing import Any

import torch

import saegeo as sg

D_IN = 16
"""The model width of :func:`random_sae`."""


def gaussian_sae(
    d_in: int, width: int, *, generator: torch.Generator | None = None, **options: Any
) -> sg.SAE:
    """An SAE with standard normal weights and zero biases; ``options`` go to :class:`~saegeo.SAE`
    (``arch``, ``k``, ...)."""
    return sg.SAE(
        W_enc=torch.randn(d_in, width, generator=generator),
        b_enc=torch.zeros(width),
        W_dec=torch.randn(width, d_in, generator=generator),
        b_dec=torch.zeros(d_in),
        **options,
    )


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


def random_sae(
    width: int, arch: str, *, seed: int, apply_b_dec: bool = True, norm: str = "none"
) -> sg.SAE:
    """A float64 SAE whose encoder roughly follows its decoder, so that latents fire sparsely."""
    g = torch.Generator().manual_seed(seed)
    W_dec_FD = torch.randn(width, D_IN, generator=g, dtype=torch.float64)
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    b_dec_D = 0.3 * torch.randn(D_IN, generator=g, dtype=torch.float64)
    settings = dict(apply_b_dec_to_input=apply_b_dec, normalize_activations=norm)
    if arch == "matching_pursuit":
        return sg.SAE.from_decoder(W_dec_FD, b_dec_D, **settings).to(dtype=torch.float64)
    extra = {}
    if arch == "jumprelu":
        extra["threshold"] = 0.3 * torch.rand(width, generator=g, dtype=torch.float64)
    if arch == "topk":
        extra["k"] = 4
    return sg.SAE(
        W_enc=W_dec_FD.T + 0.1 * torch.randn(D_IN, width, generator=g, dtype=torch.float64),
        b_enc=-0.2 * torch.rand(width, generator=g, dtype=torch.float64),
        W_dec=W_dec_FD,
        b_dec=b_dec_D,
        arch=arch,
        **settings,
        **extra,
    )


def mse(sae: sg.SAE, x_BD: torch.Tensor) -> float:
    return float(((x_BD - sae.forward(x_BD)) ** 2).sum(dim=1).mean())


def save_family_and_acts(root, widths_seeds, n_tokens: int) -> None:
    """Float32 JumpReLU SAEs ``root/w{width}`` (each from its seed) and ``root/acts.npy``
    [n_tokens, D_IN], seeded, for the command-line tests."""
    import numpy as np

    for width, seed in widths_seeds:
        sae = random_sae(width, "jumprelu", seed=seed).to(dtype=torch.float32)
        sg.save_sae(sae, root / f"w{width}")
    x_ND = np.random.default_rng(0).normal(size=(n_tokens, D_IN)).astype(np.float32) + 0.5
    np.save(root / "acts.npy", x_ND)
