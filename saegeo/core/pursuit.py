"""Matching-pursuit encoding with exactly SAELens's selection, coefficients and stop rules.

SAELens (``sae_lens.saes.matching_pursuit_sae._encode_matching_pursuit``) recomputes every
correlation ``r W_decᵀ`` at every iteration: O(d_in · width) per row and iteration. This module
returns the same codes by two faster routes.

``gram``
    Keeps the correlations ``c = r W_decᵀ`` and updates them with the Gram matrix
    ``G = W_dec W_decᵀ``: after ``r -= coef · d_j`` they become ``c -= coef · G[j]``, O(width)
    per row and iteration. The residual is kept too (O(d_in)), so coefficients ``<r, d_j>`` and
    residual norms are computed from it exactly as SAELens computes them; only the argmax reads
    the updated correlations. Their float drift from SAELens's recomputed ones is bounded per
    row (:func:`_drift_bound`); where the best atom does not beat the runner-up (and 0) by
    more than that bound, exact correlations of the few atoms still in contention decide, so
    near-ties resolve as in SAELens. The argmax reads block maxima that the update pass leaves
    behind, so each iteration streams the correlations once: in cache-sized tiles of rows on a
    CPU, and on CUDA through two fused kernels (:mod:`saegeo.core.gram_update`): one chooses
    and applies each row's atom, the other reads each correlation and Gram entry once and
    writes the correlation and its block maximum; only one iteration in ``CHECK_EVERY``
    waits for the GPU.
``direct``
    SAELens's recomputation, for dictionaries whose Gram matrix does not fit in memory, but
    only over the rows still running and in batches of rows.

Both drop finished rows from the working set. Rows are independent in SAELens (a row's
``done`` flag only masks its own updates), so each row runs exactly SAELens's iterations up to
and including the one in which it finishes, and then keeps its codes.

The rules of one iteration live here once and every pursuit in saegeo uses them: the choice of
atom (:func:`select_atoms`), the update of codes and residual (:func:`apply_atoms`) and the stop
rules (:class:`StopRules`). Besides the two routes above, :func:`pursue` runs them over any
dictionary given as functions (delta-MSE's pursuit over a smaller dictionary plus one atom per
row uses it), and :func:`saegeo.training.sparse_ops.pursuit_with_grad` replays them with
gradients.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Literal, NamedTuple

import torch

from saegeo.core import gram_update
from saegeo.errors import SaegeoError, ShapeError

Method = Literal["auto", "gram", "direct"]
METHODS: tuple[str, ...] = ("auto", "gram", "direct")

# Measured drift of Gram-updated correlations from SAELens's stays below 5 units of eps · scale
# (see _drift_bound) on random unit-norm, non-unit-norm, clustered and low-rank dictionaries
# with d_in up to 2304; 32 leaves a wide margin, and about 1% of selections then need exact
# correlations for a few candidate atoms.
DRIFT_FACTOR = 32.0
# The Gram route pays off once recomputing a row of correlations (2 · d_in · width flops) costs
# more than the few memory passes over width that updating it takes.
GRAM_MIN_D_IN = 64
# Correlations per block whose maxima locate the argmax.
BLOCK = 128
# Bytes of correlations per batch of rows (bounds memory) and per tile of rows within a Gram
# iteration on a CPU (keeps the update and the block maxima in cache). On CUDA a batch may take
# up to CUDA_BATCH_BYTES, within an eighth of the free memory: each iteration is a few dozen
# kernel launches whatever the batch, so larger batches mean fewer of them.
BATCH_BYTES = 256 * 2**20
CUDA_BATCH_BYTES = 2**30
CPU_TILE_BYTES = 2 * 2**20
# Fewest rows per thread for which a CPU pursuit is split across threads.
MIN_SHARE_ROWS = 64
# Iterations between the fused route's checks whether rows are still running (a check waits
# for the GPU); a check gathers the running rows into a smaller batch once at most half run.
CHECK_EVERY = 8


class StopRules(NamedTuple):
    """SAELens's stop rules, as one row experiences them."""

    residual_threshold: float
    """Stop once ``||r|| < residual_threshold``; 0 or less disables the rule."""
    iterations: int
    """Iterations at most (``max_iterations``, or d_in when that is None)."""
    stop_on_duplicate_support: bool
    """Stop once an iteration leaves the support unchanged."""

    @classmethod
    def of(
        cls,
        residual_threshold: float,
        max_iterations: int | None,
        stop_on_duplicate_support: bool,
        d_in: int,
    ) -> StopRules:
        """The rules of an SAE's settings; ``max_iterations=None`` means d_in, as in SAELens."""
        iterations = d_in if max_iterations is None else max_iterations
        return cls(residual_threshold, iterations, stop_on_duplicate_support)

    def finished(
        self, coef_B: torch.Tensor, prior_B: torch.Tensor, residual_norm_B: torch.Tensor
    ) -> torch.Tensor:
        """Which rows stop after an iteration that added ``coef_B`` to codes that were
        ``prior_B``, leaving residual norms ``residual_norm_B`` [rows] (bool).

        SAELens compares the whole support with the previous one. Codes start at 0 and only
        ever receive relu'd (non-negative) coefficients, so a non-zero code never returns to 0
        and the support only grows; it grew in this iteration exactly when the coefficient is
        non-zero and lands on an atom whose code was 0. "Support unchanged" is therefore
        "coefficient 0 or atom already in the support", an O(1) test per row. A row whose
        coefficient is 0 is finished under any rules: its residual stays as it is, so every
        later iteration picks the same atom with coefficient 0 and changes nothing.
        """
        finished_B = coef_B == 0
        if self.stop_on_duplicate_support:
            finished_B |= prior_B != 0
        if self.residual_threshold > 0:
            finished_B |= residual_norm_B < self.residual_threshold
        return finished_B


def select_atoms(corr_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens's choice ``argmax relu(corr)`` [rows] and its value ``max relu(corr)`` [rows].

    Computed without materialising the relu: where the maximum is positive (or NaN) relu keeps
    it and every entry tied with it, so the first maximal index is the same; elsewhere every
    relu'd entry is 0 and the index is 0.
    """
    best = corr_BF.max(dim=1)
    keep_B = best.values.gt(0) | best.values.isnan()
    idx_B = torch.where(keep_B, best.indices, torch.zeros_like(best.indices))
    return idx_B, torch.where(keep_B, best.values, torch.zeros_like(best.values))


@torch.no_grad()
def matching_pursuit(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    *,
    residual_threshold: float = 1e-2,
    max_iterations: int | None = None,
    stop_on_duplicate_support: bool = True,
    method: Method = "auto",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    gram_FF: torch.Tensor | None = None,
) -> torch.Tensor:
    """Codes [batch, width] for centred inputs [batch, d_in] over dictionary W_dec [width, d_in].

    Each iteration picks ``j = argmax relu(r W_decᵀ)`` (index 0 when no correlation is
    positive), adds ``relu(<r, d_j>)`` to latent ``j`` and subtracts that multiple of ``d_j``
    from the residual. A row stops after ``max_iterations`` (default d_in), once its residual
    norm is below ``residual_threshold`` (when > 0), or when its support did not change
    (``stop_on_duplicate_support``). The result equals SAELens's ``_encode_matching_pursuit``:
    same supports, values to float tolerance.

    Parameters
    ----------
    residual_BD
        centred (and normalised) inputs [batch, d_in]; further leading dimensions
        are flattened and restored, as in SAELens.
    W_dec_FD
        dictionary [width, d_in]; rows need not have unit norm.
    residual_threshold
        stop a row once ``||r|| < residual_threshold``; 0 or less disables.
    max_iterations
        iteration cap per row; None means d_in.
    stop_on_duplicate_support
        stop a row whose support did not grow in an iteration.
    method
        ``gram`` (update correlations with ``W_dec W_decᵀ``), ``direct`` (recompute
        them) or ``auto``, which picks ``gram`` when all of these hold and ``direct``
        otherwise: the dtype is float32 or float64; d_in >= 64; the Gram matrix and two
        batches of correlations fit in half the free memory of the device; and
        width <= batch · max_iterations / 4, so that building the Gram matrix costs at most
        a quarter of recomputing correlations for every row and iteration.
    batch_size
        rows encoded together; None keeps each batch's correlations near 256 MB (on CUDA up
        to 1 GiB, within an eighth of the free memory).
    device
        where to compute; None keeps ``residual_BD``'s device, ``"auto"`` means CUDA
        when present. The codes come back on ``residual_BD``'s device.
    gram_FF
        a precomputed ``W_dec W_decᵀ`` [width, width] to reuse across calls.

    Returns
    -------
    torch.Tensor
        Codes [batch, width] in ``residual_BD``'s dtype.

    Examples
    --------
    >>> import torch
    >>> W_dec_FD = torch.eye(3)
    >>> matching_pursuit(torch.tensor([[2.0, -1.0, 0.5]]), W_dec_FD, residual_threshold=0)
    tensor([[2.0000, 0.0000, 0.5000]])
    """
    _check_inputs(residual_BD, W_dec_FD, method, max_iterations, batch_size)
    out_device = residual_BD.device
    out_shape = (*residual_BD.shape[:-1], W_dec_FD.shape[0])
    compute_device = _resolve_device(device, residual_BD.device)
    residual_BD = residual_BD.reshape(-1, residual_BD.shape[-1]).to(compute_device)
    W_dec_FD = W_dec_FD.to(compute_device)
    batch, d_in = residual_BD.shape
    width = W_dec_FD.shape[0]
    iterations = d_in if max_iterations is None else max_iterations
    if method == "auto":
        method = choose_method(
            batch,
            width,
            d_in,
            iterations,
            W_dec_FD.dtype,
            compute_device,
            gram_given=gram_FF is not None,
        )
    if batch_size is None:
        batch_size = default_batch_size(width, W_dec_FD.dtype, compute_device)

    acts_BF = torch.zeros(batch, width, dtype=residual_BD.dtype, device=compute_device)
    if iterations == 0 or batch == 0:
        return acts_BF.to(out_device).reshape(out_shape)
    rules = StopRules.of(residual_threshold, max_iterations, stop_on_duplicate_support, d_in)
    if method == "gram" and gram_update.fused_iteration(compute_device, W_dec_FD.dtype):
        W_dec_FD = W_dec_FD.contiguous()  # as the kernels read it
        gram_FP = _padded_gram(W_dec_FD, gram_FF)

        def run(rows: slice) -> None:
            _pursue_gram_fused(residual_BD[rows], W_dec_FD, gram_FP, acts_BF[rows], rules)

    elif method == "gram":
        gram_FP = _padded_gram(W_dec_FD, gram_FF)
        tile_rows = _tile_rows(gram_FP.shape[1], W_dec_FD.dtype, compute_device)

        def run(rows: slice) -> None:
            _pursue_gram(residual_BD[rows], W_dec_FD, gram_FP, acts_BF[rows], rules, tile_rows)

    else:

        def run(rows: slice) -> None:
            _pursue_direct(residual_BD[rows], W_dec_FD, acts_BF[rows], rules)

    _run_batches(run, batch, batch_size, compute_device)
    return acts_BF.to(out_device).reshape(out_shape)


def _run_batches(
    run: Callable[[slice], None], batch: int, batch_size: int, device: torch.device
) -> None:
    """``run`` over consecutive row ranges of at most ``batch_size`` rows covering ``batch``.

    On a CPU with several intra-op threads, the rows are split into one contiguous share per
    thread, each pursued by its own Python thread with one intra-op thread (the setting is
    restored afterwards). A pursuit is hundreds of medium-sized operations per batch: split
    across OpenMP threads, each one ends at a barrier, and on a CPU shared with other
    processes the threads spin there for cores that are busy elsewhere. Whole shares of rows
    need no barrier; rows are independent, so the codes are the same either way.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    shares = max(1, min(threads, batch // MIN_SHARE_ROWS))
    if shares == 1:
        for start in range(0, batch, batch_size):
            run(slice(start, min(start + batch_size, batch)))
        return
    bounds = [batch * i // shares for i in range(shares + 1)]
    per_share = max(1, batch_size // shares)  # the same memory as one batch in all

    def run_share(lo: int, hi: int) -> None:
        for start in range(lo, hi, per_share):
            run(slice(start, min(start + per_share, hi)))

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(shares) as pool:
            for future in [pool.submit(run_share, lo, hi) for lo, hi in pairwise(bounds)]:
                future.result()
    finally:
        torch.set_num_threads(threads)


def choose_method(
    batch: int,
    width: int,
    d_in: int,
    iterations: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    gram_given: bool = False,
) -> Literal["gram", "direct"]:
    """The route ``method="auto"`` takes; the rule is documented in :func:`matching_pursuit`."""
    if dtype not in (torch.float32, torch.float64) or d_in < GRAM_MIN_D_IN:
        return "direct"
    if not gram_given and width > batch * iterations / 4:
        return "direct"
    itemsize = torch.empty((), dtype=dtype).element_size()
    gram_bytes = 0 if gram_given else width * _padded(width) * itemsize
    rows = min(batch, default_batch_size(width, dtype, device))
    work_bytes = 2 * rows * _padded(width) * itemsize
    free = available_memory(device)
    if free is not None and gram_bytes + work_bytes > free / 2:
        return "direct"
    return "gram"


def default_batch_size(width: int, dtype: torch.dtype, device: torch.device | None = None) -> int:
    """Rows per batch so that a batch's correlations [batch, width] take about 256 MB (on
    CUDA up to 1 GiB, within an eighth of the free memory)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    budget = BATCH_BYTES
    if device is not None and device.type == "cuda":
        free = available_memory(device) or 0
        budget = max(BATCH_BYTES, min(CUDA_BATCH_BYTES, free // 8))
    return max(1, budget // (_padded(width) * itemsize))


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (physical memory for a CPU); None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_inputs(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    method: str,
    max_iterations: int | None,
    batch_size: int | None,
) -> None:
    if W_dec_FD.ndim != 2:
        raise ShapeError(f"W_dec must be 2-D [width, d_in], got shape {tuple(W_dec_FD.shape)}")
    if residual_BD.ndim < 1 or residual_BD.shape[-1] != W_dec_FD.shape[1]:
        raise ShapeError(
            f"residual must end in d_in = {W_dec_FD.shape[1]} (W_dec's columns), "
            f"got shape {tuple(residual_BD.shape)}"
        )
    if residual_BD.dtype != W_dec_FD.dtype:
        raise SaegeoError(
            f"residual dtype {residual_BD.dtype} differs from W_dec dtype {W_dec_FD.dtype}; "
            "cast one to the other"
        )
    if method not in METHODS:
        raise SaegeoError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if max_iterations is not None and max_iterations < 0:
        raise SaegeoError(f"max_iterations must be >= 0 or None, got {max_iterations}")
    if batch_size is not None and batch_size < 1:
        raise SaegeoError(f"batch_size must be >= 1 or None, got {batch_size}")


def _resolve_device(device: str | torch.device | None, default: torch.device) -> torch.device:
    if device is None:
        return default
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _padded(width: int) -> int:
    """Width rounded up to whole blocks."""
    return -(-width // BLOCK) * BLOCK


def _tile_rows(padded_width: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per tile of a Gram update: cache-sized on a CPU, everything at once on a GPU."""
    if device.type != "cpu":
        return 2**62
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, CPU_TILE_BYTES // (padded_width * itemsize))


def _padded_gram(W_dec_FD: torch.Tensor, gram_FF: torch.Tensor | None) -> torch.Tensor:
    """``W_dec W_decᵀ`` [width, padded width], zero in the padding columns."""
    width = W_dec_FD.shape[0]
    if gram_FF is None:
        gram_FF = W_dec_FD @ W_dec_FD.T
    elif gram_FF.shape != (width, width):
        raise ShapeError(
            f"gram_FF must be [width, width] = [{width}, {width}], got {tuple(gram_FF.shape)}"
        )
    gram_FF = gram_FF.to(device=W_dec_FD.device, dtype=W_dec_FD.dtype)
    pad = _padded(width) - width
    return torch.nn.functional.pad(gram_FF, (0, pad)) if pad else gram_FF.contiguous()


def apply_atoms(
    residual_BD: torch.Tensor,
    atom_BD: torch.Tensor,
    idx_B: torch.Tensor,
    rows_B: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SAELens update of the working rows with their chosen atoms [rows, d_in] (indices
    ``idx_B``): ``(coef_B, finished_B)``.

    Updates ``residual_BD`` [rows, d_in] in place and adds the coefficients ``relu(<r, d>)``
    into ``acts_BF`` at ``(rows_B, idx_B)``; ``finished_B`` is :meth:`StopRules.finished`.
    """
    coef_B = (residual_BD * atom_BD).sum(dim=-1).relu()
    prior_B = acts_BF[rows_B, idx_B]
    acts_BF[rows_B, idx_B] = prior_B + coef_B
    residual_BD -= coef_B[:, None] * atom_BD
    return coef_B, rules.finished(coef_B, prior_B, residual_BD.norm(dim=-1))


def pursue(
    residual_BD: torch.Tensor,
    correlate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    atoms: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    acts_BA: torch.Tensor,
    rules: StopRules,
    *,
    on_select: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> None:
    """SAELens's iterations on a batch of rows, over the rows still running, into ``acts_BA``.

    The dictionary is given by two functions of the running rows' residuals [R, D] and their
    indices ``rows_R`` into the batch: ``correlate(residual_RD, rows_R)`` gives the
    correlations [R, A] with every atom, ``atoms(idx_R, rows_R)`` the chosen atoms [R, D].
    ``on_select(residual_RD, rows_R, best_R)`` sees each iteration's choice before it is
    applied (``best_R`` the largest relu'd correlation). ``residual_BD`` is not modified.
    """
    residual_BD = residual_BD.clone()
    rows_B = torch.arange(residual_BD.shape[0], device=residual_BD.device)
    for iteration in range(rules.iterations):
        idx_B, best_B = select_atoms(correlate(residual_BD, rows_B))
        if on_select is not None:
            on_select(residual_BD, rows_B, best_B)
        _, finished_B = apply_atoms(
            residual_BD, atoms(idx_B, rows_B), idx_B, rows_B, acts_BA, rules
        )
        if iteration == rules.iterations - 1:
            break
        keep_B = (~finished_B).nonzero().squeeze(1)
        if keep_B.numel() == 0:
            break
        if keep_B.numel() < rows_B.numel():
            rows_B, residual_BD = rows_B[keep_B], residual_BD[keep_B]


def _pursue_direct(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
) -> None:
    """SAELens's recomputation of every correlation, over the rows still running."""
    pursue(
        residual_BD,
        lambda residual_RD, _: residual_RD @ W_dec_FD.T,
        lambda idx_R, _: W_dec_FD.index_select(0, idx_R),
        acts_BF,
        rules,
    )


def _drift_bound(scale_B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """How far a Gram-updated correlation may sit from SAELens's recomputed one, per row [rows].

    ``scale_B`` is ``max ||d|| · (||r_0|| + Σ_s coef_s ||d_{j_s}||)`` over the row's iterations
    so far: each rounding, in the first product ``r_0 W_decᵀ``, in each update ``coef · G[j]``
    and in each residual update behind SAELens's own product, is eps times a quantity bounded
    by it.
    """
    return DRIFT_FACTOR * torch.finfo(dtype).eps * scale_B


def _select_gram(
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
    zeros cannot tie with it. Other rows go to :func:`_exact_argmax`.
    """
    rows, padded = corr_BP.shape
    best = block_max_BK.max(dim=1)
    drift_B = _drift_bound(scale_B, corr_BP.dtype)
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
        idx_B[unclear_U] = _exact_argmax(
            corr_BP[unclear_U], floor_B1[unclear_U, 0], residual_BD[unclear_U], W_dec_FD
        )
    return idx_B


def _exact_argmax(
    corr_UP: torch.Tensor,
    floor_U: torch.Tensor,
    residual_UD: torch.Tensor,
    W_dec_FD: torch.Tensor,
) -> torch.Tensor:
    """SAELens's argmax [rows] for rows whose drifting correlations [rows, padded] leave it open.

    Only atoms whose drifting correlation reaches ``floor_U`` (maximum minus twice the drift
    bound) can carry SAELens's maximum: every other one is, exactly, below the exact value of
    the drifting maximum's atom. Their exact correlations decide, computed as SAELens computes
    the coefficient: ties go to the first atom and a maximum <= 0 to atom 0, as relu then max
    does. Rows with a non-finite floor (NaN or infinite correlations) take SAELens's own
    expression over all atoms.
    """
    rows = corr_UP.shape[0]
    width = W_dec_FD.shape[0]
    finite_U = floor_U.isfinite()
    candidate_UF = (corr_UP[:, :width] >= floor_U[:, None]) & finite_U[:, None]
    row_K, atom_K = candidate_UF.nonzero(as_tuple=True)
    exact_K = (residual_UD[row_K] * W_dec_FD[atom_K]).sum(dim=-1)
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


def _pursue_gram(
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
    is in cache (on CUDA, :func:`_pursue_gram_fused` instead); once some rows have finished, the
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
        idx_B = _select_gram(corr_BP, block_max_BK, residual_BD, W_dec_FD, scale_B)
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


def _pursue_gram_fused(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    gram_FP: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
) -> None:
    """:func:`_pursue_gram` through the fused kernels of :mod:`saegeo.core.gram_update`
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
        drift_R = _drift_bound(scale_R, dtype)
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
