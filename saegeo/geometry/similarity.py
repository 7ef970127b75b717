"""Decoder-cosine similarity between the features of two SAEs, blocked to bound memory.

The cosine matrix [large.width, small.width] is never held whole. Both decoders are scaled to
unit rows once; the matrix is then produced one tile of at most ``block_elements`` entries at a
time, each tile by a single matrix product into a reused buffer, and reduced at once: to a
running top-k per large feature (:func:`decoder_cosine`) or to the entries above a threshold
(:func:`decoder_cosine_pairs`). Peak memory is the two unit decoders plus one tile, whatever
the widths; the work is matmul-bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from saegeo.acts.streaming import progress_bar
from saegeo.config import check_choice, check_count, cosine_threshold
from saegeo.core.finite import all_finite
from saegeo.core.sae import SAE, as_input
from saegeo.errors import ArgumentError, SaegeoError, ShapeError
from saegeo.runtime import distributed
from saegeo.runtime.devices import resolve_device
from saegeo.runtime.memory import decoder_cosine_bytes, require_argument

# Largest similarity tile held at once, in elements (256 MiB of float32); on CUDA four times
# that, where each tile's fixed costs (launches, the row merge) weigh more against its product.
BLOCK_ELEMENTS = 64 * 1024 * 1024
CUDA_BLOCK_ELEMENTS = 4 * BLOCK_ELEMENTS
# Fewest large-feature rows per tile before the small axis is split too: thinner tiles make
# poor matrix products.
MIN_TILE_ROWS = 256
# Cosines from bfloat16 products can be off by ~1e-2; candidates within this margin of a
# threshold are recomputed in float32 before the threshold is applied.
BF16_MARGIN = 0.05
LOW_PRECISION = (torch.bfloat16, torch.float16)


class CosineMatch(NamedTuple):
    """Nearest smaller-SAE features for every larger-SAE feature, best first."""

    values: torch.Tensor
    """Cosine similarities [large.width, k], float32, descending along each row."""
    indices: torch.Tensor
    """Indices [large.width, k] (int64) of the matching smaller-SAE features."""


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero), whatever their scale.

    Each row is first divided by its largest entry, so that the squares behind its norm
    neither overflow (a row of 1e30s, whose float32 norm is inf) nor underflow (1e-30s).

    Examples
    --------
    >>> unit_rows(torch.tensor([[3e30, 4e30], [0.0, 0.0], [3e-30, 4e-30]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000],
            [0.6000, 0.8000]])
    """
    scaled_FD = W_FD / W_FD.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(W_FD.dtype).tiny)
    return scaled_FD / scaled_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _decoder(x: SAE | torch.Tensor, name: str) -> torch.Tensor:
    W_FD = x.W_dec if isinstance(x, SAE) else as_input(x, name)
    if W_FD.ndim != 2:
        raise ShapeError(
            f"decoder_cosine(): {name} must be an SAE or a 2-D decoder "
            f"[width, d_in], got shape {tuple(W_FD.shape)}"
        )
    if not W_FD.is_floating_point():
        W_FD = W_FD.float()
    if not all_finite(W_FD):
        raise SaegeoError(
            f"decoder_cosine(): the {name} decoder holds NaN or infinite values; "
            "its cosines would be NaN"
        )
    return W_FD


def _block_elements(block_elements: int | None, device: torch.device) -> int:
    if block_elements is not None:
        return block_elements
    return CUDA_BLOCK_ELEMENTS if device.type == "cuda" else BLOCK_ELEMENTS


def _tile_shape(n_small: int, block_elements: int) -> tuple[int, int]:
    """(large rows, small columns) of one tile holding at most ``block_elements`` entries."""
    check_count("block_elements", block_elements)
    cols = min(n_small, max(1, block_elements // MIN_TILE_ROWS))
    rows = max(1, block_elements // max(cols, 1))
    return rows, cols


class _Tile(NamedTuple):
    start: int
    """First large feature of the tile."""
    col: int
    """First small feature of the tile."""
    cosines: torch.Tensor
    """Cosines [rows, cols] (a view into a reused buffer: consume before the next tile)."""
    large_rows: torch.Tensor
    """The tile's unit large rows [rows, d_in], in the product's dtype."""


def _require_memory(
    n_small: int,
    W_large_LD: torch.Tensor,
    k: int,
    device: torch.device,
    dtype: torch.dtype,
    block_elements: int | None,
) -> None:
    """Refuse, naming ``device``, where the products' largest allocations exceed its memory."""
    n_large, d_in = W_large_LD.shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    tile = _tile_shape(n_small, _block_elements(block_elements, device))
    need = decoder_cosine_bytes(
        n_small, n_large, d_in, min(k, n_small), (min(tile[0], n_large), tile[1]), itemsize
    )
    require_argument(
        need,
        device,
        what=f"decoder cosines of {n_large} x {n_small} features (d_in {d_in})",
        argument="device",
        value=str(device),
        advice="compute on a device with more free memory",
    )


class _Operands(NamedTuple):
    """Both decoders ready for the tiled cosine products."""

    W_small32_SD: torch.Tensor
    """Unit small rows in float32, on ``device``."""
    W_small_SD: torch.Tensor
    """The same in the products' dtype."""
    W_large_LD: torch.Tensor
    """This rank's contiguous share of the large rows (all of them without
    ``torch.distributed``), on ``device``."""
    first: int
    """The first large row of that share."""
    n_large: int
    """Large rows on every rank together."""
    device: torch.device
    """Where the products run."""
    dtype: torch.dtype
    """The products' dtype."""
    block_elements: int
    """Largest tile, in elements."""

    def tiles(self, progress: bool | None, desc: str) -> Iterator[_Tile]:
        """Every tile of the cosine matrix between the small and this rank's large rows."""
        n_small, n_large = self.W_small_SD.shape[0], self.W_large_LD.shape[0]
        rows, cols = _tile_shape(n_small, self.block_elements)
        rows = min(rows, n_large)
        buffer = torch.empty(rows * cols, dtype=self.dtype, device=self.device)
        with progress_bar(n_large, desc, progress, unit="feat") as bar:
            for start in range(0, n_large, rows):
                stop = min(start + rows, n_large)
                large_LD = unit_rows(self.W_large_LD[start:stop].to(self.device, torch.float32))
                large_LD = large_LD.to(self.dtype)
                for col in range(0, n_small, cols):
                    small_part_SD = self.W_small_SD[col : col + cols]
                    out_LS = buffer[: (stop - start) * small_part_SD.shape[0]].view(
                        stop - start, small_part_SD.shape[0]
                    )
                    torch.mm(large_LD, small_part_SD.T, out=out_LS)
                    yield _Tile(start, col, out_LS, large_LD)
                bar.update(stop - start)


def _prepare(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    k: int = 1,
    block_elements: int | None = None,
) -> _Operands:
    """Both decoders checked and on the device, each rank with its share of the large rows."""
    W_small_SD, W_large_LD = _decoder(small, "small"), _decoder(large, "large")
    if W_small_SD.shape[1] != W_large_LD.shape[1]:
        names = [
            sae.name if isinstance(sae, SAE) else what
            for sae, what in ((small, "small"), (large, "large"))
        ]
        raise ShapeError(
            f"decoder_cosine(): {names[0]} has d_in={W_small_SD.shape[1]} but {names[1]} "
            f"has d_in={W_large_LD.shape[1]}; both must read the same model site"
        )
    check_choice("dtype", dtype, (torch.float32, torch.float64, torch.bfloat16, torch.float16))
    torch_device = resolve_device(device)
    _require_memory(W_small_SD.shape[0], W_large_LD, k, torch_device, dtype, block_elements)
    small32_SD = unit_rows(W_small_SD.to(torch_device, torch.float32))
    small_SD = small32_SD.to(dtype) if dtype != torch.float32 else small32_SD
    # Under torch.distributed each rank takes a contiguous share of the large rows.
    first, stop = distributed.shard(W_large_LD.shape[0])
    return _Operands(
        small32_SD,
        small_SD,
        W_large_LD[first:stop].to(torch_device),
        first,
        W_large_LD.shape[0],
        torch_device,
        dtype,
        _block_elements(block_elements, torch_device),
    )


@torch.no_grad()
def decoder_cosine(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    *,
    k: int = 1,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    block_elements: int | None = None,
    progress: bool | None = None,
) -> CosineMatch:
    """Top-``k`` decoder cosines from each ``large`` feature to the ``small`` features.

    Parameters
    ----------
    small, large
        SAEs or decoder matrices [width, d_in] of the same d_in.
    k
        How many nearest small features to keep per large feature.
    device
        Where the products run; ``"auto"`` is CUDA when present.
    dtype
        Dtype of the products. ``torch.bfloat16`` is faster on GPUs and recent CPUs; it picks
        the top-k from bfloat16 cosines, whose values are then recomputed in float32 (near-ties
        may be ordered differently from float32).
    block_elements
        Largest tile of the cosine matrix held at once, in elements; None is ``BLOCK_ELEMENTS``
        (256 MiB of float32), four times that on CUDA. Both axes are split when the small SAE
        alone would exceed it.
    progress
        Show a progress bar: None on a terminal, True always, False never
        (:mod:`saegeo.acts.streaming`).

    Returns
    -------
    CosineMatch
        ``values`` and ``indices`` [large.width, k], best first, on the CPU. Of exactly tied
        small features, k=1 returns the smallest index; for k > 1 tied ones come in any order.

    Examples
    --------
    >>> import torch
    >>> match = decoder_cosine(torch.eye(3), torch.tensor([[1.0, 1.0, 0.0]]), device="cpu")
    >>> round(float(match.values[0, 0]), 4), int(match.indices[0, 0])
    (0.7071, 0)
    """
    check_count("k", k)
    operands = _prepare(small, large, device, dtype, k=k, block_elements=block_elements)
    torch_device = operands.device
    n_small, n_large = operands.W_small_SD.shape[0], operands.W_large_LD.shape[0]
    if k > n_small:
        raise ArgumentError("k", k, f"exceeds the {n_small} features of the smaller SAE")
    values_LK = torch.full((n_large, k), -torch.inf, dtype=dtype, device=torch_device)
    indices_LK = torch.zeros((n_large, k), dtype=torch.long, device=torch_device)
    for tile in operands.tiles(progress, "decoder cosine"):
        rows = slice(tile.start, tile.start + tile.cosines.shape[0])
        if k == 1:
            # max is a single cheap pass over the tile; topk sorts.
            best_vals, best_idx = tile.cosines.max(dim=1, keepdim=True)
        else:
            best_vals, best_idx = tile.cosines.topk(min(k, tile.cosines.shape[1]), dim=1)
        best_idx = best_idx + tile.col
        if tile.col == 0:
            if best_vals.shape[1] == k:
                values_LK[rows], indices_LK[rows] = best_vals, best_idx
                continue
            values_LK[rows, : best_vals.shape[1]] = best_vals
            indices_LK[rows, : best_vals.shape[1]] = best_idx
            continue
        # Later tiles along the small axis merge with the running top-k. For k=1 a tie keeps
        # the smaller index, as max over the whole row does; torch.topk orders ties arbitrarily.
        run_vals, run_idx = values_LK[rows], indices_LK[rows]
        if k == 1:
            take = best_vals > run_vals
            run_vals.copy_(torch.where(take, best_vals, run_vals))
            run_idx.copy_(torch.where(take, best_idx, run_idx))
        else:
            merged_idx = torch.cat([run_idx, best_idx], dim=1)
            top = torch.cat([run_vals, best_vals], dim=1).topk(k, dim=1)
            run_vals.copy_(top.values)
            run_idx.copy_(merged_idx.gather(1, top.indices))
    if dtype in LOW_PRECISION:
        values_LK = _exact_values(operands, indices_LK)
        # Recomputed values can reorder near-ties; keep each row best first.
        order = values_LK.argsort(dim=1, descending=True, stable=True)
        values_LK, indices_LK = values_LK.gather(1, order), indices_LK.gather(1, order)
    return CosineMatch(*distributed.concat_ranks(values_LK.float().cpu(), indices_LK.cpu()))


def _exact_values(operands: _Operands, indices_LK: torch.Tensor) -> torch.Tensor:
    """float32 cosines of large feature l with small features ``indices_LK[l]`` [L, K]."""
    small32_SD, W_large_LD, device = operands.W_small32_SD, operands.W_large_LD, operands.device
    n_large, k = indices_LK.shape
    d_in = small32_SD.shape[1]
    values_LK = torch.empty(n_large, k, dtype=torch.float32, device=device)
    rows = max(1, operands.block_elements // max(k * d_in, 1))
    for start in range(0, n_large, rows):
        stop = min(start + rows, n_large)
        large_LD = unit_rows(W_large_LD[start:stop].to(device, torch.float32))
        near_LKD = small32_SD[indices_LK[start:stop]]
        values_LK[start:stop] = torch.einsum("lkd,ld->lk", near_LKD, large_LD)
    return values_LK


@torch.no_grad()
def decoder_cosine_pairs(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    *,
    threshold: float,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    block_elements: int | None = None,
    progress: bool | None = None,
) -> sp.csr_matrix:
    """Every (small i, large j) pair with decoder cosine ``> threshold``, as a sparse matrix.

    Parameters
    ----------
    small, large
        SAEs or decoder matrices [width, d_in] of the same d_in.
    threshold
        Keep pairs whose cosine is strictly above it.
    device, dtype, block_elements, progress
        As for :func:`decoder_cosine`; with ``bfloat16`` the candidates near the threshold are
        recomputed in float32, so the kept set is exact.

    Returns
    -------
    scipy.sparse.csr_matrix
        [small.width, large.width] float32 cosines of the kept pairs.
    """
    operands = _prepare(small, large, device, dtype, block_elements=block_elements)
    small32_SD, W_large_LD, first = operands.W_small32_SD, operands.W_large_LD, operands.first
    shape = (small32_SD.shape[0], operands.n_large)
    exact = dtype not in LOW_PRECISION
    cut = threshold if exact else threshold - BF16_MARGIN
    rows_L, cols_S, vals = [], [], []
    for tile in operands.tiles(progress, "decoder cosine pairs"):
        hit_L, hit_S = (tile.cosines > cut).nonzero(as_tuple=True)
        if hit_L.numel() == 0:
            continue
        if exact:
            value = tile.cosines[hit_L, hit_S].float()
        else:
            picked = (hit_L + tile.start).to(W_large_LD.device)
            large_LD = unit_rows(W_large_LD[picked].to(operands.device, torch.float32))
            value = (large_LD * small32_SD[hit_S + tile.col]).sum(dim=1)
            keep = value > threshold
            hit_L, hit_S, value = hit_L[keep], hit_S[keep], value[keep]
        rows_L.append((hit_L + tile.start + first).cpu())
        cols_S.append((hit_S + tile.col).cpu())
        vals.append(value.cpu())
    empty = torch.zeros(0, dtype=torch.long)
    large_N, small_N, value_N = distributed.concat_ranks(
        torch.cat(rows_L) if rows_L else empty,
        torch.cat(cols_S) if cols_S else empty,
        torch.cat(vals) if vals else torch.zeros(0),
    )
    if not value_N.numel():
        return sp.csr_matrix(shape, dtype=np.float32)
    return sp.csr_matrix(
        (value_N.numpy(), (small_N.numpy(), large_N.numpy())),
        shape=shape,
        dtype=np.float32,
    )


def seed_stability(
    sae: SAE | torch.Tensor,
    other: SAE | torch.Tensor,
    *,
    threshold: float = 0.7,
    device: str | torch.device = "auto",
) -> float:
    """Share of ``sae``'s features whose largest decoder cosine to ``other``'s is > ``threshold``.

    With two SAEs of one width trained from different seeds this measures how reproducible
    the learned directions are: a converged dictionary finds most of its features again.
    Rows of zero norm (latents that never trained) count as not found.

    Examples
    --------
    >>> import torch
    >>> seed_stability(torch.eye(4), torch.eye(4)[[1, 0, 3]], device="cpu")
    0.75
    """
    threshold = cosine_threshold(threshold)
    values = decoder_cosine(other, sae, device=device, progress=False).values[:, 0]
    return float((values > threshold).float().mean())
