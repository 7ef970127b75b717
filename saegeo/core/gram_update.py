"""An iteration of matching pursuit's Gram route as two fused GPU kernels (Triton).

One iteration of :func:`saegeo.core.pursuit.matching_pursuit`'s Gram route chooses each
running row's atom from its drifting correlations (exact correlations settling near-ties),
applies SAELens's update to its codes and residual, and turns its correlations ``c`` into
``c - coef · G[j]`` with the maxima of their blocks of columns. In plain torch that is a few
dozen small operations per iteration, some of which wait for the GPU (``nonzero``); here it is
:func:`select_apply`, one program per row, and :func:`update`, which reads each correlation and
Gram entry once and writes the correlation and its block maximum, the least memory traffic the
update allows. Neither waits for the GPU, so the host queues iterations ahead of it. Rows
that have finished (``done``) are skipped instead of gathered out, so the rows keep their
places and no iteration needs to know how many are still running.

Triton ships with PyTorch's CUDA builds. Where it is missing, the tensors are not on CUDA or
the GPU is older than Triton supports, :func:`fused_iteration` is False and the pursuit keeps
its torch passes. The kernels compute each value in the correlations' dtype, in their own
order of summation, which the pursuit's drift bound covers, except the exact correlations that
settle near-ties, which are summed in float64 as on the CPU. They also run in Triton's
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is how they are tested without a
GPU, and the tests compile them for sm_75, sm_80 and sm_90 wherever Triton is installed.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

import torch

# Blocks of columns per program of the update at most: 16 blocks of 128 columns is 8 KiB of
# float32 per row.
BLOCKS_PER_PROGRAM = 16
NUM_WARPS = 4
# Entries of d_in per step of a dot product (coefficient, residual update, one candidate's
# exact correlation), and per step of the exact correlations of many candidate atoms of a
# block together ([block, EXACT_CHUNK] at a time; 4 keeps select_apply's kernel at 56
# registers a thread for sm_90, where 8 takes 80 and 32 takes 223).
D_CHUNK = 256
EXACT_CHUNK = 4
# Candidates of a block at most whose exact correlations are taken one dot product at a time
# (d_in / D_CHUNK steps each) rather than together (d_in / EXACT_CHUNK steps).
FEW = 16

_kernels: ModuleType | None = None  # the compiled kernels' module, once imported


def available() -> bool:
    """Whether Triton can be imported."""
    return importlib.util.find_spec("triton") is not None


def fused_iteration(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernels run for ``dtype`` (float32 or float64) on ``device``: a CUDA
    device Triton compiles for (compute capability 7.0 or later) with Triton installed, or
    Triton's interpreter."""
    if dtype not in (torch.float32, torch.float64) or not available():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)


def select_apply(
    corr_RP: torch.Tensor,
    block_max_RK: torch.Tensor,
    drift_R: torch.Tensor,
    residual_RD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    acts_BF: torch.Tensor,
    rows_R: torch.Tensor,
    done_R: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """Each running row's choice of atom and SAELens's update with it, in place.

    The choice is :func:`saegeo.core.gram_route.select_gram`'s: the argmax of the drifting
    correlations where it is clear by more than the drift bound ``drift_R`` [R], else the
    exact argmax over the atoms still in contention. The update is
    :func:`saegeo.core.pursuit_rules.apply_atoms`'s: ``coef = relu(<r, d_j>)`` added to
    ``acts_BF[rows_R[r], j]`` and ``coef · d_j`` subtracted from ``residual_RD[r]``.

    Parameters
    ----------
    corr_RP, block_max_RK
        Drifting correlations [R, padded] and their block maxima [R, padded / BLOCK].
    drift_R
        Each row's drift bound [R].
    residual_RD, W_dec_FD
        Residuals [R, d_in] (updated) and the dictionary [width, d_in].
    acts_BF, rows_R
        Codes [batch, width] (updated) and each row's row in them [R] (int64).
    done_R
        Rows that have finished [R] (bool): they get coefficient 0 and nothing else changes.
    out
        ``(idx_R, coef_R, prior_R, norm_R)``, written for the running rows: the atom chosen
        (int64), its coefficient, its code before the update and the residual's new norm.
    """
    rows = corr_RP.shape[0]
    if rows == 0:
        return
    width, d_in = W_dec_FD.shape
    padded = corr_RP.shape[1]
    blocks = block_max_RK.shape[1]
    _check_contiguous(corr_RP, block_max_RK, residual_RD, W_dec_FD, acts_BF, *out)
    _compiled().select_apply_kernel[(rows,)](
        corr_RP,
        block_max_RK,
        drift_R,
        residual_RD,
        W_dec_FD,
        acts_BF,
        rows_R,
        done_R,
        *out,
        width,
        padded,
        blocks,
        d_in,
        **select_apply_settings(padded, blocks),
        **launch_options(),
    )


def update(
    corr_RP: torch.Tensor,
    gram_FP: torch.Tensor,
    idx_R: torch.Tensor,
    coef_R: torch.Tensor,
    done_R: torch.Tensor,
    block_max_RK: torch.Tensor,
) -> None:
    """``corr[r] -= coef[r] · gram[idx[r]]`` and its block maxima, in place, for every row
    not ``done``.

    Parameters
    ----------
    corr_RP
        Correlations [R, padded] (contiguous).
    gram_FP
        ``W_dec W_decᵀ`` [width, padded], zero in the padding columns (contiguous).
    idx_R, coef_R
        Each row's chosen atom [R] (int64) and its coefficient [R].
    done_R
        Rows left as they are [R] (bool).
    block_max_RK
        Output maxima [R, blocks] of each block of ``padded / blocks`` columns (a power of 2;
        NaN where a block holds a NaN, as ``torch.amax``).
    """
    rows, padded = corr_RP.shape
    if rows == 0:
        return
    blocks = block_max_RK.shape[1]
    settings = update_settings(padded, blocks)
    _check_contiguous(corr_RP, gram_FP, block_max_RK)
    grid = (rows, -(-blocks // settings["PER_PROGRAM"]))
    _compiled().gram_update_kernel[grid](
        corr_RP,
        gram_FP,
        idx_R,
        coef_R,
        done_R,
        block_max_RK,
        padded,
        blocks,
        **settings,
        **launch_options(),
    )


def select_apply_settings(padded: int, blocks: int) -> dict[str, int]:
    """The compile-time settings of :func:`select_apply`'s kernel."""
    return dict(
        BLOCK=padded // blocks,
        BLOCKS_POW2=_power_of_2(blocks),
        D_CHUNK=D_CHUNK,
        EXACT_CHUNK=EXACT_CHUNK,
        FEW=FEW,
    )


def update_settings(padded: int, blocks: int) -> dict[str, int]:
    """The compile-time settings of :func:`update`'s kernel."""
    per_program = min(BLOCKS_PER_PROGRAM, _power_of_2(blocks))
    return dict(BLOCK=padded // blocks, PER_PROGRAM=per_program)


def launch_options() -> dict[str, Any]:
    """Both kernels' launch options: fused multiply-adds allowed (said explicitly, as newer
    Triton asks), which the pursuit's drift bound covers."""
    return dict(num_warps=NUM_WARPS, enable_fp_fusion=True)


def _power_of_2(n: int) -> int:
    """The least power of 2 >= n."""
    return 1 << (n - 1).bit_length()


def _check_contiguous(*tensors: torch.Tensor) -> None:
    if not all(tensor.is_contiguous() for tensor in tensors):
        raise ValueError("gram update: tensors must be contiguous")


def _compiled() -> ModuleType:
    """The kernels' module, imported on first use so that importing saegeo never needs Triton."""
    global _kernels
    if _kernels is None:
        _kernels = importlib.import_module("saegeo.core.gram_kernel")
    return _kernels
