"""The exact decoder refit by conjugate gradients: memory that grows with the codes, not with F².

The dense refit (:func:`saegeo.stitch.refit.accumulate_stats`) forms the Gram matrix
``G = Σ_t w_t z_t z_tᵀ`` [F+1, F+1] of the codes ``z = [a, 1]`` and factors it: 8·F² bytes
twice over, 25 GB at 56k features. Most of it is empty: a token's codes touch a few hundred
features. This module never forms ``G``. It keeps the codes themselves, sparse
(:class:`CodeStats`: 12 bytes per non-zero of a float32 SAE), and solves the same normal
equations by conjugate gradients, applying ``G = Aᵀ diag(w) A`` to the ``D`` columns of the
decoder at once through two sparse products, ``Aᵀ(w ⊙ A V)``. Memory is ``O(nnz + F·D + N·D)``.

The bias is eliminated exactly rather than iterated on: with ``s = Σ w a`` and ``Σw``, the
optimal bias for a decoder ``W`` is ``(c_b − Wᵀs)/Σw``, and ``W`` solves the centred system
``(G_FF − s sᵀ/Σw + λI) W = C_F − s c_bᵀ/Σw + λW₀``. Centring removes the one direction that
makes the uncentred system ill-conditioned (the sum of a token's non-negative codes is nearly
the same on every token, so it is nearly collinear with the bias's column of ones), and it is
applied as ``Aᵀ(w ⊙ (A V − sᵀV/Σw))``: the correction needs ``s``, which every rank holds, so
it costs no communication. Preconditioning is by the diagonal of the centred matrix (Jacobi):
co-firing groups in real families are small and change from step to step of a stitch, and
the diagonal is what balances features that fire on 5 tokens against those that fire on half.

**Stopping rule.** Conjugate gradients minimise ``f(W) = SSE(W) + λ||W − W₀||²`` over growing
Krylov spaces, and each iteration ``j`` lowers ``f`` by exactly ``α_j rⱼᵀzⱼ`` (summed over the
``D`` columns). The excess ``f(W_k) − min f`` equals the sum of all later decreases; the sum
over the next ``delay`` iterations is a lower bound that is tight when convergence is steady
(Hestenes and Stiefel's estimate, as used by Strakoš and Tichý). The solve stops at the first
iteration where that estimate for the iterate ``delay`` steps back is at most ``tol·f``; the
iterate returned is the newer one, whose excess is smaller still. With ``tol = 1e-8`` the
squared error is that of the exact minimiser to about 1e-8 relative, far below what float32
codes can tell apart. ``max_iterations`` caps the work; a solve that reaches it warns.

**Precision.** The codes are kept in the SAE's precision and the two sparse products of an
iteration run in float32; every vector of the iteration and every sum is float64, and the
squared errors reported (:meth:`CodeStats.sse`) are computed with float64 products. Where the
codes' magnitudes span so many orders that float32 products cannot reach the solution (a
relative residual above ``FALLBACK_RESIDUAL`` at the end), the iteration goes on from where it
stands with float64 products.

**Ranks.** Each rank keeps the codes of its own share of the tokens; the sums (cross terms,
``s``, the diagonal) are reduced once, and each iteration reduces the one product
``Aᵀ(w ⊙ A V)`` [F, D] (one all-reduce). Every rank then takes the same step, so the decoders agree
on every rank.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import torch

from saegeo.acts.streaming import BatchStream
from saegeo.config import check_count
from saegeo.core.finite import all_finite
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError, InsufficientMemoryError, SaegeoError, ShapeError
from saegeo.runtime import distributed, memory
from saegeo.stitch.refit_sums import DecoderSolve, RefitStats, TokenSums

logger = logging.getLogger(__name__)

TOL = 1e-8
"""Default ``tol``: the relative excess squared error at which the iteration stops."""
DELAY = 4
"""Iterations over which the excess squared error of an iterate is estimated."""
MAX_ITERATIONS = 1000
"""Default cap on the iterations of one solve."""
PRODUCT_DTYPE = torch.float32
"""Precision of the two sparse products of an iteration."""
FALLBACK_RESIDUAL = 1e-3
"""A float32 solve that ends with a larger relative residual goes on in float64."""
# Bytes per non-zero code: the kept codes (int32 row and column, float32 value), the two
# sparse matrices of a solve (int32 index, float32 value each) and a float64 copy of the values.
BYTES_PER_CODE = 12 + 8 + 8 + 8
# Float64 [F, D] matrices alive during a solve: the cross terms and their selected copy, the
# ridge target, the iterate, residual, preconditioned residual, direction, product and
# right-hand side, and the solution copied into the decoder.
SOLVE_MATRICES = 10


@dataclass(frozen=True, eq=False)
class CodeStats(RefitStats):
    """The decoder least-squares problem of fixed codes, with the codes kept sparse.

    The sums every refit keeps (:class:`~saegeo.stitch.refit_sums.RefitStats`), with the Gram
    matrix of :class:`saegeo.stitch.refit.DecoderStats` replaced by the codes of this rank's
    tokens and their weights ``w`` (``G = Aᵀ diag(w) A``).
    """

    rows: torch.Tensor
    """Token (on this rank) of each kept code [nnz], int32, ascending."""
    cols: torch.Tensor
    """Feature of each kept code [nnz], int32."""
    values: torch.Tensor
    """``a_tf`` [nnz], in the SAE's dtype (at least float32)."""
    weight: torch.Tensor
    """``w_t`` of this rank's tokens [n], float64 (1 unless the SAE normalises its input)."""
    code_sum: torch.Tensor
    """Σ_t w_t a_t [F], float64, over every rank (the Gram matrix's bias column)."""
    code_sq: torch.Tensor
    """Σ_t w_t a_t² [F], float64, over every rank (the Gram matrix's diagonal)."""
    weight_sum: float
    """Σ_t w_t over every rank."""

    @property
    def nnz(self) -> int:
        """Non-zero codes kept on this rank."""
        return int(self.values.numel())

    def select(self, idx: torch.Tensor | list[int]) -> CodeStats:
        """The statistics of the SAE that keeps only features ``idx`` (codes unchanged)."""
        idx_F = torch.as_tensor(idx, dtype=torch.long, device=self.cross.device).reshape(-1)
        new_col = torch.full((self.width,), -1, dtype=torch.int32, device=self.cols.device)
        new_col[idx_F.to(self.cols.device)] = torch.arange(
            len(idx_F), dtype=torch.int32, device=self.cols.device
        )
        col = new_col[self.cols.long()]
        keep = col >= 0
        return self.replace(
            rows=self.rows[keep],
            cols=col[keep],
            values=self.values[keep],
            cross=self.cross[torch.cat([idx_F, idx_F.new_tensor([self.width])])],
            code_sum=self.code_sum[idx_F],
            code_sq=self.code_sq[idx_F],
            active=self.active[idx_F.to(self.active.device)],
        )

    def codes(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The codes ``A`` [n, F] of this rank's tokens, sparse CSR in ``dtype``."""
        return _csr(self.rows, self.cols, self.values.to(dtype), (len(self.weight), self.width))

    def sse(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> float:
        theta = self.theta(W_dec, b_dec)
        fitted_ND = self.codes(torch.float64) @ theta[:-1] + theta[-1]
        fitted_sq = float((self.weight * (fitted_ND**2).sum(1)).sum())
        (fitted_sq,) = distributed.all_reduce_sums(fitted_sq)
        value = self.target_sq - 2 * float((theta * self.cross).sum()) + fitted_sq
        return max(value, 0.0)


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]):
    """A sparse CSR matrix of ``size`` from entries sorted by row (int32 indices)."""
    counts = torch.bincount(rows.long(), minlength=size[0])
    crow = torch.zeros(size[0] + 1, dtype=torch.int32, device=rows.device)
    crow[1:] = counts.cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        return torch.sparse_csr_tensor(
            crow, cols.to(torch.int32), values, size, check_invariants=False
        )


def solve_bytes(width: int, d_in: int, nnz: int, n_tokens: int) -> int:
    """Bytes a solve by :func:`solve_decoder_cg` needs on one rank: ``width`` features of
    ``d_in``, ``nnz`` kept codes over ``n_tokens`` tokens of that rank."""
    matrices = SOLVE_MATRICES * (width + 1) * d_in * 8
    return BYTES_PER_CODE * nnz + 16 * n_tokens * d_in + matrices


def _require_codes(sae: SAE, nnz: int, n_local: int, device: torch.device) -> None:
    """Refuse, on every rank alike, codes and a solve that would not fit (``nnz`` projected)."""
    problem: InsufficientMemoryError | None = None
    try:
        memory.require(
            solve_bytes(sae.width, sae.d_in, nnz, n_local),
            f"the exact refit of {sae.width:,} features on {n_local:,} tokens "
            f"({nnz / max(n_local, 1):.0f} non-zero codes per token)",
            {"limit": None, "upto": None},
            device,
        )
    except InsufficientMemoryError as exc:
        problem = exc
    message = distributed.agree_on_error(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if message is not None:
        raise distributed.PeerError(message)


@torch.no_grad()
def accumulate_codes(sae: SAE, batches: BatchStream) -> CodeStats:
    """One pass over ``batches``: the codes of ``sae`` and the sums of the refit problem.

    Arguments as for :func:`saegeo.stitch.refit.accumulate_stats`. Memory grows with the
    non-zero codes (12 bytes each), not with the width squared; after the first batch, the
    codes and solve that the whole pass implies are checked against the free memory
    (:class:`~saegeo.errors.InsufficientMemoryError` names what lowers them). Under
    ``torch.distributed`` each rank keeps the codes of its own tokens.
    """
    sae, batches = batches.for_sae(sae, "accumulate_codes")
    batches = batches.replace(sharded=True)  # sums reduced over ranks below
    start, stop = distributed.shard(batches.n_tokens)
    sums = TokenSums(sae, batches.device)
    code_sq = torch.zeros(sae.width, dtype=torch.float64, device=batches.device)
    rows: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    weight: list[torch.Tensor] = []
    seen, checked = 0, False
    for x_BD in batches:
        acts_BF = sae.encode(x_BD)
        _, w_B, rows_K, cols_K = sums.add(sae, x_BD, acts_BF)
        codes_K = acts_BF[rows_K, cols_K].to(torch.float64)
        code_sq.index_add_(0, cols_K, w_B[rows_K] * codes_K**2)
        rows.append((rows_K + seen).to(torch.int32))
        cols.append(cols_K.to(torch.int32))
        values.append(acts_BF[rows_K, cols_K].to(torch.promote_types(sae.dtype, torch.float32)))
        weight.append(w_B)
        seen += x_BD.shape[0]
        if not checked:
            _require_codes(sae, len(cols_K) * (stop - start) // seen, stop - start, batches.device)
            checked = True
    if not checked:  # a rank without tokens still takes part in the check
        _require_codes(sae, 0, 0, batches.device)
    sums.reduce_()
    distributed.all_reduce_(code_sq)
    if sums.n_tokens == 0:
        raise SaegeoError(f"activations {batches.store.source}: no tokens to fit on")
    empty = torch.zeros(0, dtype=torch.int32, device=batches.device)
    return CodeStats.of(
        sums,
        rows=torch.cat(rows) if rows else empty,
        cols=torch.cat(cols) if cols else empty,
        values=torch.cat(values) if values else empty.float(),
        weight=torch.cat(weight) if weight else empty.double(),
        code_sum=sums.code_sum,
        code_sq=code_sq,
        weight_sum=sums.weight_sum,
    )


class _Normal:
    """The normal-equations operator ``V ↦ (G_FF − [s sᵀ/Σw] + λI) V`` over the codes:
    ``Aᵀ(w ⊙ (A V − [sᵀV/Σw])) + λV``, the sparse products in float32."""

    def __init__(self, stats: CodeStats, lam: float, center: bool, dtype: torch.dtype) -> None:
        order = torch.argsort(stats.cols, stable=True)
        self.dtype = dtype
        self.S = stats.codes(dtype)
        self.St = _csr(
            stats.cols[order],
            stats.rows[order],
            stats.values[order].to(dtype),
            (stats.width, len(stats.weight)),
        )
        unit = bool((stats.weight == 1).all())
        self.weight = None if unit else stats.weight.to(dtype)[:, None]
        self.s = stats.code_sum
        self.weight_sum = stats.weight_sum
        self.lam, self.center = lam, center

    def __call__(self, V_FD: torch.Tensor) -> torch.Tensor:
        U_ND = self.S @ V_FD.to(self.dtype)
        if self.center:
            U_ND -= (self.s @ V_FD / self.weight_sum).to(self.dtype)
        if self.weight is not None:
            U_ND *= self.weight
        out_FD = distributed.all_reduce_((self.St @ U_ND).to(torch.float64))
        if self.lam:
            out_FD += self.lam * V_FD
        return out_FD


def solve_decoder_cg(
    stats: CodeStats,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    ridge: float,
    fit_bias: bool,
    tol: float,
    max_iterations: int,
    start: torch.Tensor | None = None,
) -> DecoderSolve:
    """The MSE-optimal decoder [F, D] and bias [D] for the codes behind ``stats``, by
    preconditioned conjugate gradients (see the module docstring for the stopping rule).

    Solves the problem of :func:`saegeo.stitch.refit.solve_decoder` (the same ``ridge``
    towards ``W_dec``; features that never fire keep their rows; ``fit_bias=False`` keeps
    ``b_dec``). ``start`` [F, D] is the first iterate (default ``W_dec``), e.g. a solution of
    a nearby problem. Stops when the estimated excess squared error is at most ``tol`` of the
    squared error, or after ``max_iterations``. :func:`saegeo.stitch.refit.solve_exact` calls
    it with the refit's defaults (:data:`TOL`, :data:`MAX_ITERATIONS`).

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> sae = SAE.from_decoder(torch.eye(4)).to(dtype=torch.float32)
    >>> from saegeo.acts.streaming import stream
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> stats = accumulate_codes(sae, stream(x, device="cpu", progress=False))
    >>> solved = solve_decoder_cg(
    ...     stats, sae.W_dec, sae.b_dec, ridge=0.0, fit_bias=False, tol=TOL, max_iterations=100
    ... )
    >>> solved.method, solved.residual < 1e-6
    ('cg', True)
    """
    width, d_in = stats.width, stats.cross.shape[1]
    if tuple(W_dec.shape) != (width, d_in):
        raise ShapeError(
            f"solve_decoder_cg(): W_dec has shape {tuple(W_dec.shape)}, statistics "
            f"are for {width} features of d_in {d_in}"
        )
    if not tol > 0:
        raise ArgumentError("tol", tol, "must be > 0")
    check_count("max_iterations", max_iterations)
    device = stats.cross.device
    theta0 = stats.theta(W_dec, b_dec)
    live = torch.nonzero(stats.active.to(device) > 0).reshape(-1)
    sub = stats if len(live) == width else stats.select(live)
    fixed_b = theta0[width]
    c_b = stats.cross[width]
    lam = ridge * (float(sub.code_sq.mean()) if len(live) else 0.0)
    target_FD = theta0[live]
    s_F = sub.code_sum
    if fit_bias:
        rhs_FD = sub.cross[:-1] - s_F[:, None] * (c_b / stats.weight_sum)[None]
        diag_F = sub.code_sq - s_F**2 / stats.weight_sum
        # The squared error at the optimal bias, without the terms in W: see the docstring.
        constant = stats.target_sq - float((c_b**2).sum()) / stats.weight_sum
    else:
        rhs_FD = sub.cross[:-1] - s_F[:, None] * fixed_b[None]
        diag_F = sub.code_sq.clone()
        constant = (
            stats.target_sq
            - 2 * float((fixed_b * c_b).sum())
            + stats.weight_sum * float((fixed_b**2).sum())
        )
    if lam > 0:
        rhs_FD += lam * target_FD
        diag_F += lam
        constant += lam * float((target_FD**2).sum())
    # A feature that fires on every token alike is the bias's column; it keeps a unit scale.
    inverse_F = torch.where(diag_F > 1e-12 * sub.code_sq, 1 / diag_F, 1 / sub.code_sq)
    x_FD = (target_FD if start is None else start.to(device, torch.float64)[live]).clone()
    iterations, begun = 0, time.perf_counter()
    scale = float(rhs_FD.norm())
    residual = 0.0
    for dtype in (PRODUCT_DTYPE, torch.float64):
        operator = _Normal(sub, lam, fit_bias, dtype)
        if len(live):
            x_FD, done = _pcg(
                operator, rhs_FD, x_FD, inverse_F, constant, tol, max_iterations - iterations
            )
            iterations += done
        residual_FD = rhs_FD - operator(x_FD)
        residual = float(residual_FD.norm()) / scale if scale > 0 else 0.0
        # Codes whose magnitudes span many orders defeat float32 products; the iteration then
        # goes on from where it stands with float64 ones.
        if residual <= FALLBACK_RESIDUAL or iterations >= max_iterations:
            break
        del operator
    logger.info(
        "conjugate gradients on %d features, %d codes: %d iterations, residual %.1e, %.1f s",
        len(live),
        sub.nnz,
        iterations,
        residual,
        time.perf_counter() - begun,
    )
    theta = theta0.clone()
    theta[live] = x_FD
    if fit_bias:
        theta[width] = (c_b - s_F @ x_FD) / stats.weight_sum
    if not all_finite(theta):
        raise SaegeoError("solve_decoder_cg(): the solution is not finite; raise the ridge")
    return DecoderSolve(
        theta[:width].to(W_dec.device, W_dec.dtype),
        (theta[width] + stats.shift.to(device)).to(b_dec.device, b_dec.dtype),
        "cg",
        iterations,
        residual,
    )


def _pcg(
    operator: _Normal,
    rhs_FD: torch.Tensor,
    x_FD: torch.Tensor,
    inverse_F: torch.Tensor,
    constant: float,
    tol: float,
    max_iterations: int,
) -> tuple[torch.Tensor, int]:
    """Jacobi-preconditioned conjugate gradients on the D columns at once, each with its own
    step; the stopping rule of the module docstring. Returns the iterate and iterations."""
    residual_FD = rhs_FD - operator(x_FD)
    # f(x) = constant + xᵀAx − 2 rhsᵀx, and A x = rhs − r.
    objective = constant - float((x_FD * (rhs_FD + residual_FD)).sum())
    z_FD = inverse_F[:, None] * residual_FD
    direction_FD = z_FD.clone()
    gamma_D = (residual_FD * z_FD).sum(0)
    decreases: list[float] = []
    excess = math.inf
    for iteration in range(1, max_iterations + 1):
        product_FD = operator(direction_FD)
        curvature_D = (direction_FD * product_FD).sum(0)
        alpha_D = torch.where(curvature_D > 0, gamma_D / curvature_D, torch.zeros_like(gamma_D))
        x_FD += alpha_D * direction_FD
        residual_FD -= alpha_D * product_FD
        decreases.append(float((alpha_D * gamma_D).sum()))
        objective -= decreases[-1]
        if len(decreases) >= DELAY:
            excess = math.fsum(decreases[-DELAY:])
            if excess <= tol * max(objective, 0.0):
                return x_FD, iteration
        z_FD = inverse_F[:, None] * residual_FD
        gamma_new_D = (residual_FD * z_FD).sum(0)
        if not bool((gamma_new_D > 0).any()):  # solved exactly
            return x_FD, iteration
        beta_D = torch.where(gamma_D > 0, gamma_new_D / gamma_D, torch.zeros_like(gamma_D))
        direction_FD = z_FD + beta_D * direction_FD
        gamma_D = gamma_new_D
    warnings.warn(
        f"the conjugate-gradient refit stopped after max_iterations={max_iterations} with an "
        f"estimated excess squared error of {excess / max(objective, 1e-300):.1e} relative "
        f"(tol={tol}); raise max_iterations for a closer fit",
        stacklevel=3,
    )
    return x_FD, max_iterations
