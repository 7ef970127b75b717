"""Decoder-cosine similarity between the features of two SAEs, blocked to bound memory."""

from __future__ import annotations

from typing import NamedTuple

import torch

from saegeo.devices import resolve_device
from saegeo.errors import SaegeoError, ShapeError
from saegeo.sae import SAE

# Largest similarity block held at once, in elements (256 MiB of float32).
BLOCK_ELEMENTS = 64 * 1024 * 1024


class CosineMatch(NamedTuple):
    """Nearest smaller-SAE features for every larger-SAE feature, best first."""

    values: torch.Tensor
    """Cosine similarities [large.width, k], descending along each row."""
    indices: torch.Tensor
    """Indices [large.width, k] of the matching smaller-SAE features."""


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return W_FD / W_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _decoder(x: SAE | torch.Tensor) -> torch.Tensor:
    return x.W_dec if isinstance(x, SAE) else torch.as_tensor(x)


@torch.no_grad()
def decoder_cosine(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    *,
    k: int = 1,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    block_elements: int = BLOCK_ELEMENTS,
) -> CosineMatch:
    """Top-``k`` decoder cosines from each ``large`` feature to the ``small`` features.

    ``small`` and ``large`` are SAEs or decoder matrices [width, d_in]. The cosine matrix
    [large.width, small.width] is never held whole: blocks of large rows of at most
    ``block_elements`` entries are multiplied and reduced to their top-k at once.
    ``dtype=torch.bfloat16`` trades precision for speed on GPUs.
    """
    W_small_SD, W_large_LD = _decoder(small), _decoder(large)
    if W_small_SD.shape[1] != W_large_LD.shape[1]:
        raise ShapeError(f"decoder_cosine(): d_in {W_small_SD.shape[1]} vs {W_large_LD.shape[1]}")
    n_small = W_small_SD.shape[0]
    if not 1 <= k <= n_small:
        raise SaegeoError(f"decoder_cosine(): k must lie in [1, {n_small}], got {k}")
    torch_device = resolve_device(device)
    small_SD = unit_rows(W_small_SD.to(torch_device, torch.float32)).to(dtype)
    n_large = W_large_LD.shape[0]
    rows = max(1, block_elements // max(n_small, 1))
    values = torch.empty(n_large, k, dtype=torch.float32)
    indices = torch.empty(n_large, k, dtype=torch.long)
    for start in range(0, n_large, rows):
        stop = min(start + rows, n_large)
        block_LD = unit_rows(W_large_LD[start:stop].to(torch_device, torch.float32)).to(dtype)
        top = (block_LD @ small_SD.T).topk(k, dim=-1)
        values[start:stop] = top.values.float().cpu()
        indices[start:stop] = top.indices.cpu()
    return CosineMatch(values, indices)
