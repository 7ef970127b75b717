"""Matching pursuit's Gram route: correlations updated rather than recomputed.

SAELens recomputes every correlation ``r W_decᵀ`` at every iteration, O(d_in · width) per row
and iteration. This route keeps the correlations ``c = r W_decᵀ`` and updates them with the
Gram matrix ``G = W_dec W_decᵀ``: after ``r -= coef · d_j`` they become ``c -= coef · G[j]``,
O(width) per row and iteration. The residual is kept too (O(d_in)), so coefficients
``<r, d_j>`` and residual norms are computed from it exactly as SAELens computes them; only the
argmax reads the updated correlations. Their float drift from SAELens's recomputed ones is
bounded per row (:func:`drift_bound`); where the best atom does not beat the runner-up (and 0)
by more than that bound, exact correlations of the few atoms still in contention decide
(:func:`select_gram`), so near-ties resolve as in SAELens.

The argmax reads block maxima that the update pass leaves behind, so each iteration streams the
correlations once: in cache-sized tiles of rows on a CPU (:func:`pursue_gram`), and on CUDA
through two fused kernels (:func:`pursue_gram_fused`, :mod:`saegeo.core.gram_update`): one
chooses and applies each row's atom, the other reads each correlation and Gram entry once and
writes the correlation and its block maximum; only one iteration in ``CHECK_EVERY`` waits for
the GPU. The iteration's rules are :mod:`saegeo.core.pursuit_rules`'s.
"""

from __future__ import annotations

import torch

from saegeo.core import gram_update
from saegeo.core.pursuit_rules import StopRules, apply_atoms, select_atoms
from saegeo.errors import ShapeError

# Measured drift of Gram-updated correlations from SAELens's stays below 5 units of eps · scale
# (see drift_bound) on random unit-norm, non-unit-norm, clustered and low-rank dictionaries
# with d_in up to 2304; 32 leaves a wide margin, and about 1% of selections then need exact
# correlations for a few candidate atoms.
DRIFT_FACTOR = 32.0
# Correlations per block whose maxima locate the argmax.
BLOCK = 128
# Bytes of correlations per tile of rows within an iteration on a CPU (keeps the update and the
# block maxima in cache).
CPU_TILE_BYTES = 2 * 2**20
# Iterations between the fused route's checks whether rows are still running (a check waits
# for the GPU); a check gathers the running rows into a smaller batch once at most half run.
CHECK_EVERY = 8


def padded(width: int) -> int:
    """Width rounded up to whole blocks."""
    return -(-width // BLOCK) * BLOCK


def tile_rows(padded_width: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per tile of a Gram update: cache-sized on a CPU, everything at once on a GPU."""
    if device.type != "cpu":
        return 2**62
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, CPU_TILE_BYTES // (padded_width * itemsize))


def padded_gram(W_dec_FD: torch.Tensor, gram_FF: torch.Tensor | None) -> torch.Tensor:
    """``W_dec W_decᵀ`` [width, padded width], zero in the padding columns."""
    width = W_dec_FD.shape[0]
    if gram_FF is None:
        gram_FF = W_dec_FD @ W_dec_FD.T
    elif gram_FF.shape != (width, width):
        raise ShapeError(
            f"gram_FF must be [width, width] = [{width}, {width}], got {tuple(gram_FF.shape)}"
        )
    gram_FF = gram_FF.to(device=W_dec_FD.device, dtype=W_dec_FD.dtype)
    pad = padded(width) - width
    return torch.nn.functional.pad(gram_FF, (0, pad)) if pad else gram_FF.contiguous()


def drift_bound(scale_B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """How far a Gram-updated correlation may sit from SAELens's recomputed one, per row [rows].

    ``scale_B`` is ``max ||d|| · (||r_0|| + Σ_s coef_s ||d_{j_s}||)`` over the row's iterations
    so far: each rounding, in the first product ``r_0 W_decᵀ``, in each update ``coef · G[j]``
    and in each residual update behind SAELens's own product, is eps times a quantity bounded
    by it.
    """
    return DRIFT_FACTOR * torch.finfo(dtype).eps * scale_B


def select_gram(
    corr_BP: torch.Tensor,
    block_max_BK: torch.Tensor,
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    scale_B: torch.Tensor,
) -> torch.Tensor:
    """SAELens's ``argmax relu(r W_decᵀ)`` [rows] from drifting correlations [rows, padded].

    The largest block maximum [rows, blocks] names the block holding the argmax. With drift
    bound ``δ``, a row is clear when every other correlation (every other block maximum, every
    other entry of that block) is below its maximum ``m`` minus ``2δ`` and ``m > δ``: SAELens's
    recomputed correlations then have the same unique argmax, and it is positive, so relu's
    zeros cannot tie with it. Other rows go to :func:`exact_argmax`.
    """
    rows, padded = corr_BP.shape
    best = block_max_BK.max(dim=1)
    drift_B = drift_bound(scale_B, corr_BP.dtype)
    floor_B1 = (best.values - 2 * drift_B)[:, None]
    arange_B = torch.arange(rows, device=corr_BP.device)
    block_BL = corr_BP.view(rows, padded // BLOCK, BLOCK)[arange_B, best.indices]
    idx_B = best.indices * BLOCK + block_BL.max(dim=1).indices
    # Comparisons with NaN are false, so a NaN maximum is never clear.
    clear_B = (block_max_BK >= floor_B1).sum(dim=1) == 1
    clear_B &= (block_BL >= floor_B1).sum(dim=1) == 1
    clear_B &= best.values > drift_B
    unclear_U = (~clear_B).nonzero().squeeze(1)
    if unclear_U.numel():
        idx_B[unclear_U] = exact_argmax(
            corr_BP[unclear_U], floor_B1[unclear_U, 0], residual_BD[unclear_U], W_dec_FD
        )
    return idx_B


def exact_argmax(
    corr_UP: torch.Tensor,
    floor_U: torch.Tensor,
    residual_UD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    *,
    exact_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """SAELens's argmax [rows] for rows whose drifting correlations [rows, padded] leave it open.

    Only atoms whose drifting correlation reaches ``floor_U`` (maximum minus twice the drift
    bound) can carry SAELens's maximum: every other one is, exactly, below the exact value of
    the drifting maximum's atom. Their exact correlations decide: ties go to the first atom and
    a maximum <= 0 to atom 0, as relu then max does. Rows with a non-finite floor (NaN or
    infinite correlations) take SAELens's own expression over all atoms.

    The candidates' correlations are summed in ``exact_dtype``, float64. Candidates this close
    differ by about the rounding of a float32 dot product, which orders them by its order of
    summation (SAELens's matrix product and an elementwise sum round differently); float64
    orders them as they are, and so does SAELens's float32 run wherever it agrees with its
    float64 run, on the rows whose codes are settled at all. Summed in float32, they missed
    SAELens's supports on 98 of 221 settled rows of a dictionary with near-duplicate atoms
    (``analyses/benchmarks/pursuit_ties.py``).
    """
    rows = corr_UP.shape[0]
    width = W_dec_FD.shape[0]
    finite_U = floor_U.isfinite()
    candidate_UF = (corr_UP[:, :width] >= floor_U[:, None]) & finite_U[:, None]
    row_K, atom_K = candidate_UF.nonzero(as_tuple=True)
    exact_K = (residual_UD[row_K].to(exact_dtype) * W_dec_FD[atom_K].to(exact_dtype)).sum(dim=-1)
    best_U = torch.full((rows,), -torch.inf, dtype=exact_K.dtype, device=exact_K.device)
    best_U = best_U.scatter_reduce(0, row_K, exact_K, "amax")
    at_best_K = exact_K == best_U[row_K]
    first_U = torch.full((rows,), width, dtype=torch.long, device=exact_K.device)
    first_U = first_U.scatter_reduce(0, row_K[at_best_K], atom_K[at_best_K], "amin")
    idx_U = torch.where(best_U > 0, first_U, torch.zeros_like(first_U))
    if not bool(finite_U.all()):
        rest = (~finite_U).nonzero().squeeze(1)
        idx_U[rest] = select_atoms(residual_UD[rest] @ W_dec_FD.T)[0]
    return idx_U


def pursue_gram(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    gram_FP: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
    tile_rows: int,
) -> None:
    """Matching pursuit of one batch of rows through Gram updates, into ``acts_BF``.

    ``gram_FP`` is ``W_dec W_decᵀ`` padded with zero columns to whole blocks; correlations
    carry -inf in those columns, which the updates leave at -inf. Each iteration updates the
    correlations of the rows still running tile by tile, taking the block maxima while a tile
    is in cache (on CUDA, :func:`pursue_gram_fused` instead); once some rows have finished, the
    others are gathered into a second buffer on the way (the two buffers then swap), so
    compaction costs no extra pass.
    """
    rows, _ = residual_BD.shape
    padded = gram_FP.shape[1]
    blocks = padded // BLOCK
    residual_BD = residual_BD.clone()
    rows_B = torch.arange(rows, device=residual_BD.device)
    norms_F = W_dec_FD.norm(dim=1)
    norm_max = norms_F.max()
    front_BP, block_max_BK = _correlations(residual_BD, W_dec_FD, padded)
    back_BP: torch.Tensor | None = None
    corr_BP = front_BP
    scale_B = residual_BD.norm(dim=-1) * norm_max
    for iteration in range(rules.iterations):
        idx_B = select_gram(corr_BP, block_max_BK, residual_BD, W_dec_FD, scale_B)
        coef_B, finished_B = apply_atoms(
            residual_BD, W_dec_FD.index_select(0, idx_B), idx_B, rows_B, acts_BF, rules
        )
        if iteration == rules.iterations - 1:
            break
        keep_B = (~finished_B).nonzero().squeeze(1)
        kept = keep_B.numel()
        if kept == 0:
            break
        source_BP = corr_BP
        if kept < rows_B.numel():
            rows_B, residual_BD = rows_B[keep_B], residual_BD[keep_B]
            idx_B, coef_B, scale_B = idx_B[keep_B], coef_B[keep_B], scale_B[keep_B]
            if back_BP is None:
                back_BP = torch.empty_like(front_BP)
            front_BP, back_BP = back_BP, front_BP
            corr_BP = front_BP[:kept]
            block_max_BK = block_max_BK[:kept]
        for start in range(0, kept, tile_rows):
            stop = min(start + tile_rows, kept)
            tile_TP = corr_BP[start:stop]
            if source_BP is not corr_BP:
                torch.index_select(source_BP, 0, keep_B[start:stop], out=tile_TP)
            update_TP = gram_FP.index_select(0, idx_B[start:stop])
            tile_TP.addcmul_(update_TP, coef_B[start:stop, None], value=-1)
            torch.amax(tile_TP.view(-1, blocks, BLOCK), dim=-1, out=block_max_BK[start:stop])
        scale_B += coef_B * norms_F[idx_B] * norm_max


def pursue_gram_fused(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    gram_FP: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
) -> None:
    """:func:`pursue_gram` through the fused kernels of :mod:`saegeo.core.gram_update`
    (``W_dec_FD`` contiguous).

    Each iteration is two kernels and a few elementwise operations, none of which waits for the
    GPU. Finished rows stay in place, marked ``done``, and the kernels skip them; every
    ``CHECK_EVERY`` iterations one check ends the batch once no row runs, and gathers the
    running rows into a smaller batch once at most half of them run.
    """
    rows = residual_BD.shape[0]
    dtype, device = residual_BD.dtype, residual_BD.device
    residual_RD = residual_BD.clone(memory_format=torch.contiguous_format)
    rows_R = torch.arange(rows, device=device)
    norms_F = W_dec_FD.norm(dim=1)
    norm_max = norms_F.max()
    corr_RP, block_max_RK = _correlations(residual_RD, W_dec_FD, gram_FP.shape[1])
    scale_R = residual_RD.norm(dim=-1) * norm_max
    done_R = torch.zeros(rows, dtype=torch.bool, device=device)
    idx_R = torch.zeros(rows, dtype=torch.long, device=device)
    coef_R, prior_R, norm_R = torch.empty(3, rows, dtype=dtype, device=device)
    for iteration in range(rules.iterations):
        out = (idx_R, coef_R, prior_R, norm_R)
        drift_R = drift_bound(scale_R, dtype)
        gram_update.select_apply(
            corr_RP, block_max_RK, drift_R, residual_RD, W_dec_FD, acts_BF, rows_R, done_R, out
        )
        done_R |= rules.finished(coef_R, prior_R, norm_R)
        if iteration == rules.iterations - 1:
            break
        scale_R += coef_R * norms_F[idx_R] * norm_max
        gram_update.update(corr_RP, gram_FP, idx_R, coef_R, done_R, block_max_RK)
        if iteration % CHECK_EVERY == CHECK_EVERY - 1:
            keep_R = (~done_R).nonzero().squeeze(1)
            if keep_R.numel() == 0:
                break
            if keep_R.numel() <= rows_R.numel() // 2:
                rows_R, residual_RD, corr_RP, block_max_RK, scale_R, done_R = (
                    tensor[keep_R]
                    for tensor in (rows_R, residual_RD, corr_RP, block_max_RK, scale_R, done_R)
                )
                idx_R, coef_R, prior_R, norm_R = (t[keep_R] for t in out)


def _correlations(
    residual_RD: torch.Tensor, W_dec_FD: torch.Tensor, padded: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlations ``r W_decᵀ`` [rows, padded], -inf in the padding columns, and the
    maxima of their blocks [rows, padded / BLOCK]."""
    rows, width = residual_RD.shape[0], W_dec_FD.shape[0]
    corr_RP = torch.empty(rows, padded, dtype=residual_RD.dtype, device=residual_RD.device)
    corr_RP[:, width:] = -torch.inf
    torch.matmul(residual_RD, W_dec_FD.T, out=corr_RP[:, :width])
    return corr_RP, corr_RP.view(rows, padded // BLOCK, BLOCK).amax(dim=-1)
