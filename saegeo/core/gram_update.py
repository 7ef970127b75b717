"""The Gram update of matching pursuit's correlations as one fused GPU kernel (Triton).

One iteration of :func:`saegeo.core.pursuit.matching_pursuit`'s Gram route turns each running
row's correlations ``c`` into ``c - coef · G[j]`` and takes the maxima of its blocks of
columns, after gathering the rows still running into a fresh buffer when some have finished.
In plain torch that is four passes over the correlations (gather, Gram rows, update, maxima);
here each program reads one row's correlations and its Gram row once, writes the updated
correlations once and their block maxima, which is the least memory traffic the update allows.

Triton ships with PyTorch's CUDA builds. Where it is missing, or the tensors are not on CUDA,
:func:`fused_update` is None and the pursuit keeps its torch passes; both compute each entry as
``c - coef · g`` in the correlations' dtype, and the pursuit's drift bound covers either
rounding. The kernel also runs in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, which is how it is tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

# Blocks of columns per program at most: 16 blocks of 128 columns is 8 KiB of float32 per row.
BLOCKS_PER_PROGRAM = 16
NUM_WARPS = 4

# update's signature: (source, keep, corr, gram, idx, coef, block_max) -> None
FusedUpdate = Callable[..., None]

_kernel: Any = None  # the compiled kernel, once imported


def available() -> bool:
    """Whether Triton can be imported."""
    return importlib.util.find_spec("triton") is not None


def fused_update(device: torch.device) -> FusedUpdate | None:
    """:func:`update` where it runs (CUDA with Triton, or Triton's interpreter), else None."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not available() or (device.type != "cuda" and not interpreted):
        return None
    return update


def update(
    source_SP: torch.Tensor,
    keep_R: torch.Tensor | None,
    corr_RP: torch.Tensor,
    gram_FP: torch.Tensor,
    idx_R: torch.Tensor,
    coef_R: torch.Tensor,
    block_max_RK: torch.Tensor,
) -> None:
    """``corr[r] = source[keep[r]] - coef[r] · gram[idx[r]]`` and its block maxima, in place.

    Parameters
    ----------
    source_SP
        Correlations [rows before, padded] (contiguous); may be ``corr_RP`` itself when
        ``keep_R`` is None.
    keep_R
        Row of ``source_SP`` for each output row [R] (int64), or None for row r itself.
    corr_RP
        Output correlations [R, padded] (contiguous).
    gram_FP
        ``W_dec W_decᵀ`` [width, padded], zero in the padding columns (contiguous).
    idx_R, coef_R
        Each row's chosen atom [R] (int64) and its coefficient [R].
    block_max_RK
        Output maxima [R, blocks] of each block of ``padded / blocks`` columns (a power of 2;
        NaN where a block holds a NaN, as ``torch.amax``).
    """
    rows, padded = corr_RP.shape
    if rows == 0:
        return
    blocks = block_max_RK.shape[1]
    per_program = min(BLOCKS_PER_PROGRAM, 1 << (blocks - 1).bit_length())
    for tensor in (source_SP, corr_RP, gram_FP, block_max_RK):
        if not tensor.is_contiguous():
            raise ValueError("gram update: tensors must be contiguous")
    kernel = _compiled()
    grid = (rows, -(-blocks // per_program))
    kernel[grid](
        source_SP,
        keep_R if keep_R is not None else idx_R,
        corr_RP,
        gram_FP,
        idx_R,
        coef_R,
        block_max_RK,
        padded,
        blocks,
        GATHER=keep_R is not None,
        BLOCK=padded // blocks,
        PER_PROGRAM=per_program,
        num_warps=NUM_WARPS,
    )


def _compiled() -> Any:
    """The Triton kernel, imported on first use so that importing saegeo never needs Triton."""
    global _kernel
    if _kernel is None:
        _kernel = importlib.import_module("saegeo.core.gram_kernel").gram_update_kernel
    return _kernel
