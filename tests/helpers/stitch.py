"""A toy family with known directions, shared by the stitching and interpolation tests."""

from __future__ import annotations

import torch

from saegeo.core.sae import SAE, concat

D = 32
CPU = {"device": "cpu", "progress": False}


def true_directions(n: int = 24) -> torch.Tensor:
    U = torch.randn(D, D, generator=torch.Generator().manual_seed(0))
    return torch.linalg.qr(U).Q[:n]  # orthonormal


def toy_acts(n: int = 1500) -> torch.Tensor:
    """Sparse non-negative mixtures of the true directions, plus an offset and noise."""
    U = true_directions()
    g = torch.Generator().manual_seed(1)
    fires = torch.rand(n, len(U), generator=g) < 0.15
    magnitudes = (0.5 + torch.rand(n, len(U), generator=g)) * fires
    return magnitudes @ U + 0.01 * torch.randn(n, D, generator=g) + 0.2


def hand_sae(directions: torch.Tensor, arch: str = "jumprelu") -> SAE:
    """An SAE that reads and writes ``directions`` [F, D] (encoder = decoder transpose)."""
    width = directions.shape[0]
    settings: dict = {"threshold": torch.full((width,), 0.3)} if arch == "jumprelu" else {}
    if arch == "topk":
        settings["k"] = 4
    if arch == "matching_pursuit":
        return SAE.from_decoder(directions, b_dec=torch.full((D,), 0.2), max_iterations=6)
    return SAE(
        W_enc=directions.T.clone(),
        b_enc=torch.zeros(width),
        W_dec=directions.clone(),
        b_dec=torch.full((D,), 0.2),
        arch=arch,
        **settings,
    )


def toy_family(arch: str = "jumprelu") -> list[SAE]:
    """Widths 6, 12, 19: each keeps the narrower one's directions and adds 6 novel ones; the
    widest also holds a blend of directions 0 and 1 (cos 1/√2 > 0.7 with each)."""
    U = true_directions()
    blend = (U[0] + U[1]) / (U[0] + U[1]).norm()
    members = [U[:6], U[:12], torch.cat([U[:18], blend[None]])]
    return [hand_sae(m, arch).replace(metadata={"name": f"m{len(m)}"}) for m in members]


def subset_sae(family: list[SAE], features) -> SAE:
    """The Frankenstein of a step built directly: concat of the chosen features, in order."""
    parts = [family[m].select([j]) for m, j in features]
    return concat(parts)
