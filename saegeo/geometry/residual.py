"""A novelty score from decoders alone: what a wider feature's direction adds to its neighbours.

A wider feature can have no single close counterpart in the narrower SAE (low max cosine) and
still lie almost in the span of a few narrower directions: then adding it mostly re-expresses
what the narrower SAE already writes. The **decoder residual** of wider feature j is the share
of its unit decoder row left unexplained by a least-squares fit on the unit rows of the ``k``
narrower features with the largest cosine to it:

    residual[j] = min_c ||w_j - N_j^T c||^2,   w_j = W_dec_large[j] / ||W_dec_large[j]||,

where N_j [k, d_in] holds those narrower rows, scaled to unit norm. It lies in [0, 1]: 0 when
w_j is in their span, 1 when it is orthogonal to all of them. With k = 1 it is
1 - max_cos^2 (for max_cos >= 0). It needs no activations.
"""

from __future__ import annotations

import numpy as np
import torch

from saegeo.config import check_count
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.geometry.similarity import CosineMatch, decoder_cosine, unit_rows

RESIDUAL_K = 8
"""Narrower rows in the least-squares fit by default."""
CHUNK_ROWS = 1024
"""Wider features whose fits are solved together (a [rows, d_in, k] float64 batch)."""


def _decoder(x: SAE | torch.Tensor) -> torch.Tensor:
    return (x.W_dec if isinstance(x, SAE) else torch.as_tensor(x)).detach().cpu()


@torch.no_grad()
def decoder_residual(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    *,
    k: int = RESIDUAL_K,
    match: CosineMatch | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> np.ndarray:
    """Share of each ``large`` feature's unit decoder row unexplained by its ``k`` nearest
    ``small`` rows (module docstring).

    Parameters
    ----------
    small, large
        SAEs, or decoder matrices [width, d_in], of the same d_in.
    k
        Nearest narrower rows in the fit (at most ``small.width`` are used).
    match
        :func:`saegeo.decoder_cosine` of the pair with at least ``k`` neighbours, if already
        computed; its first ``k`` indices are used.
    device, progress
        As for :func:`saegeo.decoder_cosine` (the fits run on the CPU).

    Returns
    -------
    numpy.ndarray
        [large.width] float64 in [0, 1].

    Examples
    --------
    >>> import torch
    >>> small = torch.eye(3)[:2]
    >>> large = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    >>> decoder_residual(small, large, k=2).round(3).tolist()
    [0.0, 0.5]
    """
    W_small_SD, W_large_LD = _decoder(small), _decoder(large)
    check_count("k", k)
    k = min(k, W_small_SD.shape[0])
    if match is None:
        match = decoder_cosine(small, large, k=k, device=device, progress=progress)
    elif match.indices.shape != (W_large_LD.shape[0], match.indices.shape[1]) or (
        match.indices.shape[1] < k
    ):
        raise SaegeoError(
            f"decoder_residual(): match must hold {k} neighbours for each of "
            f"{W_large_LD.shape[0]} large features, got {tuple(match.indices.shape)}"
        )
    near_LK = match.indices[:, :k]
    small_SD = unit_rows(W_small_SD.double())
    out = np.empty(W_large_LD.shape[0], dtype=np.float64)
    for start in range(0, W_large_LD.shape[0], CHUNK_ROWS):
        w_LD = unit_rows(W_large_LD[start : start + CHUNK_ROWS].double())
        basis_LDK = small_SD[near_LK[start : start + CHUNK_ROWS]].transpose(1, 2)
        # gelsd: an SVD-based solve that copes with near-duplicate narrower rows.
        coef_LK1 = torch.linalg.lstsq(basis_LDK, w_LD.unsqueeze(2), driver="gelsd").solution
        left_LD = w_LD - (basis_LDK @ coef_LK1).squeeze(2)
        # A zero row (a latent that never trained) has nothing to explain: residual 1.
        norm_L = w_LD.square().sum(dim=1)
        residual_L = torch.where(norm_L > 0, left_LD.square().sum(dim=1), 1.0)
        out[start : start + w_LD.shape[0]] = residual_L.clamp(0.0, 1.0).numpy()
    return out
