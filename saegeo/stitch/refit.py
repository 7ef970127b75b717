"""Decoder refits with the encoder frozen: the exact least-squares solution, and Adam.

With the codes ``a`` [N, F] fixed, the decoder that minimises the reconstruction error is a
least-squares problem in ``Θ = [W_dec; b_dec]`` [F+1, D] with design ``Z = [a 1]``:
``(ZᵀZ) Θ = ZᵀX``. :func:`accumulate_stats` gathers ``ZᵀZ`` (from sparse co-activation
products) and ``ZᵀX`` in one streaming pass; :func:`solve_decoder` solves the system by
Cholesky with a small ridge that pulls rarely active features towards their current
direction (least squares via ``lstsq`` if the factorisation fails); :func:`with_decoder` puts the
solution into the SAE without changing its codes. :func:`refit_sgd` trains the same decoder
with Adam instead (:mod:`saegeo.stitch.refit_sgd`), for comparison.

What "encoder frozen" means per architecture:

- ``relu``/``jumprelu``: the codes are exactly what they were. A new ``b_dec`` would move
  the input centring (``apply_b_dec_to_input``), so the difference is folded into ``b_enc``;
  each decoder row's norm is moved into its encoder column, bias and threshold, which scales
  that latent and leaves ``forward`` unchanged, so decoder rows stay unit norm.
- ``topk``: as above except that norms stay in the decoder, since rescaling latents would
  change which k are largest.
- ``matching_pursuit``: the encoder *is* the dictionary, so no refit can keep it. The codes
  that the pursuit computes with the current dictionary are held fixed while the dictionary
  is solved for (``b_dec``, which is also the input centring, stays as it is), and the rows
  are then scaled to unit norm, as the pursuit's coefficients need. This is one step of the
  method of optimal directions (MOD). At inference the pursuit re-encodes with the new
  dictionary, so the fixed-code error that the refit minimises is not the error the refit
  SAE reaches; report that from a fresh evaluation.

Inputs that the SAE normalises (``constant_norm_rescale``, ``layer_norm``) are refit in the
normalised space, with each token weighted so that the objective is the input-space squared
error exactly (see :func:`decode_target`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, BatchStream, StreamOptions, read, with_stream_options
from saegeo.core.finite import all_finite
from saegeo.core.sae import SAE
from saegeo.effects.metrics import Metrics, Moments, metrics_from_sums
from saegeo.errors import SaegeoError, ShapeError
from saegeo.runtime import distributed, memory
from saegeo.stitch import refit_cg
from saegeo.stitch.refit_sums import (
    DecoderSolve,
    RefitStats,
    TokenSums,
    decode_target,
    fits_bias,
    output_bias,
    sparse_codes_FB,
)

__all__ = [
    "SOLVERS",
    "DecoderSolve",
    "DecoderStats",
    "Refit",
    "Solver",
    "accumulate",
    "accumulate_stats",
    "choose_solver",
    "decode_target",
    "dense_bytes",
    "dense_stats",
    "fits_bias",
    "fixed_code_metrics",
    "output_bias",
    "refit_exact",
    "refit_exact_batches",
    "solve_decoder",
    "solve_exact",
    "with_decoder",
]

Solver = Literal["auto", "cholesky", "cg"]
SOLVERS: tuple[str, ...] = get_args(Solver)

# Entries of the padded co-activation outer products built at once (float64 values and int64
# indices: 16 bytes each).
PAIR_BUDGET = 1 << 22
# The Gram matrix of a batch comes from one sparse × dense product (cost ~nnz·F) unless the
# co-active pairs (Σ_t L0_t²) are fewer than nnz·F / SPMM_RATIO; a pair costs about this many
# multiply-adds of the product.
SPMM_RATIO = 64


@dataclass(frozen=True, eq=False)
class DecoderStats(RefitStats):
    """Sufficient statistics of the decoder least-squares problem for fixed codes: the sums
    every refit keeps (:class:`~saegeo.stitch.refit_sums.RefitStats`) and the Gram matrix."""

    gram: torch.Tensor
    """Σ_t w_t z_t z_tᵀ [F+1, F+1], float64; the last row and column belong to the bias."""

    def select(self, idx: torch.Tensor | list[int]) -> DecoderStats:
        """The statistics of the SAE that keeps only features ``idx`` (codes unchanged)."""
        idx_F = torch.as_tensor(idx, dtype=torch.long, device=self.gram.device).reshape(-1)
        rows = torch.cat([idx_F, idx_F.new_tensor([self.width])])
        return self.replace(
            gram=self.gram[rows][:, rows],
            cross=self.cross[rows],
            active=self.active[idx_F.to(self.active.device)],
        )

    def sse(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> float:
        theta = self.theta(W_dec, b_dec)
        value = self.target_sq - 2 * float((theta * self.cross).sum())
        value += float((theta * (self.gram @ theta)).sum())
        return max(value, 0.0)

    def merge(self, other: DecoderStats) -> DecoderStats:
        """The statistics of both token sets together (same SAE, disjoint tokens)."""
        if other.gram.shape != self.gram.shape or other.cross.shape != self.cross.shape:
            raise ShapeError(
                f"DecoderStats.merge(): statistics of {self.width} and {other.width} features "
                "cannot be combined"
            )
        if not torch.equal(self.shift, other.shift.to(self.shift.device)):
            raise SaegeoError("DecoderStats.merge(): statistics of SAEs with different b_dec")
        device = self.gram.device
        return self.replace(
            gram=self.gram + other.gram.to(device),
            cross=self.cross + other.cross.to(device),
            target_sq=self.target_sq + other.target_sq,
            moments=self.moments.merge(other.moments),
            active=self.active + other.active.to(self.active.device),
            n_tokens=self.n_tokens + other.n_tokens,
        )


class Refit(NamedTuple):
    """A refit SAE and how it fits the tokens it was fit on."""

    sae: SAE
    """The SAE with its new decoder (see the module docstring for what stays frozen)."""
    before: Metrics
    """Fit of the original SAE on the fitting tokens."""
    after: Metrics
    """Fit of the new decoder on the same tokens with the codes held fixed (for matching
    pursuit this is not what re-encoding with the new dictionary gives)."""
    n_tokens: int
    """Tokens the fit used: the store's (or ``limit``) for exact, tokens trained on for SGD."""
    seconds: float
    """Wall time of the fit itself (the exact pass and solve, or the SGD steps)."""
    method: str
    """``cholesky``, ``lstsq`` or ``cg`` for the exact solve, ``adam`` for SGD."""
    iterations: int = 0
    """Conjugate-gradient iterations of the exact solve (0 for a dense solve and for SGD)."""
    residual: float = math.nan
    """Relative residual of the exact solve's normal equations (NaN for SGD)."""


# --------------------------------------------------------------------------- pure helpers


def _add_gram_(gram: torch.Tensor, acts_BF: torch.Tensor, w_B: torch.Tensor) -> None:
    """gram[:F, :F] += Σ_t w_t a_t a_tᵀ from the non-zeros of each row, in place.

    Rows are sorted by their number of active latents K and processed in chunks as padded
    [rows, K, K] outer products, so the work is Σ_t K_t² rather than B·F².
    """
    counts_B = (acts_BF != 0).sum(dim=1)
    order_B = counts_B.argsort()
    counts = counts_B[order_B].cpu().numpy().astype(np.int64)
    n_rows = len(counts)
    start = int(np.searchsorted(counts, 1))
    stride = gram.shape[1]
    sqrt_w_B = w_B.to(torch.float64).sqrt()
    while start < n_rows:
        # The largest chunk [start, stop) whose padded size (stop−start)·K² fits the budget.
        sizes = np.arange(1, n_rows - start + 1) * counts[start:] ** 2
        stop = start + max(1, int(np.searchsorted(sizes, PAIR_BUDGET, side="right")))
        k = int(counts[stop - 1])
        rows = order_B[start:stop]
        top = acts_BF[rows].topk(k, dim=1, sorted=False)
        values_RK = top.values.to(torch.float64) * sqrt_w_B[rows, None]
        flat_RKK = top.indices[:, :, None] * stride + top.indices[:, None, :]
        gram.view(-1).index_add_(
            0, flat_RKK.reshape(-1), (values_RK[:, :, None] * values_RK[:, None, :]).reshape(-1)
        )
        start = stop


@torch.no_grad()
def accumulate_stats(sae: SAE, batches: BatchStream) -> DecoderStats:
    """One pass over ``batches``: the statistics of the decoder least-squares problem of ``sae``.

    ``batches`` says which tokens, how many at a time and on which device
    (:func:`saegeo.acts.streaming.stream`). Memory is O(F²) for the Gram matrix (float64), on
    that device (:func:`dense_bytes`); where that does not fit,
    :func:`saegeo.stitch.refit_cg.accumulate_codes` keeps the codes instead. Beyond encoding,
    each batch costs one sparse × dense product, O(L0·(F + D)) per token, or, when the SAE is
    wide enough for that to cost more (see ``SPMM_RATIO``), O(L0² + L0·D) per token through the
    co-active pairs alone.
    """
    sae, batches = batches.for_sae(sae, "accumulate_stats")
    batches = batches.replace(sharded=True)  # sums reduced over ranks below
    width = sae.width
    memory.require(
        dense_bytes(width, width, sae.d_in),
        f"the exact refit's dense Gram matrix of {width:,} features",
        {"solver": "cg", "upto": None},
        batches.device,
    )
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64, device=batches.device)
    sums = TokenSums(sae, batches.device)
    for x_BD in batches:
        acts_BF = sae.encode(x_BD)
        _, w_B, rows, cols = sums.add(sae, x_BD, acts_BF)
        _add_batch_gram_(gram, acts_BF, w_B, rows, cols)
    sums.reduce_()
    distributed.all_reduce_(gram)
    if sums.n_tokens == 0:
        raise SaegeoError(f"activations {batches.store.source}: no tokens to fit on")
    gram[:width, width] = gram[width, :width] = sums.code_sum
    gram[width, width] = sums.weight_sum
    return DecoderStats.of(sums, gram=gram)


def _add_batch_gram_(
    gram: torch.Tensor,
    acts_BF: torch.Tensor,
    w_B: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> None:
    """gram[:F, :F] += Σ_t w_t a_t a_tᵀ over a batch whose non-zeros are (``rows``, ``cols``)."""
    width = acts_BF.shape[1]
    pairs = int((torch.bincount(rows, minlength=acts_BF.shape[0]) ** 2).sum())
    if width * rows.numel() <= SPMM_RATIO * pairs:
        # One sparse × dense product: O(nnz·F).
        weighted = acts_BF[rows, cols].to(torch.float64) * w_B[rows].to(torch.float64)
        codes_FB = sparse_codes_FB(rows, cols, weighted, width, len(acts_BF))
        gram[:width, :width] += torch.sparse.mm(codes_FB, acts_BF.to(torch.float64))
    else:
        # Wide and sparse: only the co-active pairs, O(Σ_t L0_t²).
        _add_gram_(gram, acts_BF, w_B)


def dense_stats(codes: refit_cg.CodeStats, *, batch_size: int = 4096) -> DecoderStats:
    """The dense statistics (Gram matrix) of the problem whose codes ``codes`` keeps.

    For the steps of a stitch narrow enough that a dense solve is the faster (see
    :func:`choose_solver`); the Gram matrix is built ``batch_size`` tokens at a time.
    """
    width, d_in = codes.width, codes.cross.shape[1]
    device = codes.cross.device
    memory.require(
        dense_bytes(width, width, d_in),
        f"the exact refit's dense Gram matrix of {width:,} features",
        {"solver": "cg", "upto": None},
        device,
    )
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64, device=device)
    rows, cols, values = codes.rows.long(), codes.cols.long(), codes.values
    bounds = torch.searchsorted(rows, torch.arange(0, len(codes.weight) + batch_size, batch_size))
    for start, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        first = start * batch_size
        n_rows = min(batch_size, len(codes.weight) - first)
        acts_BF = torch.zeros(n_rows, width, dtype=values.dtype, device=device)
        acts_BF[rows[lo:hi] - first, cols[lo:hi]] = values[lo:hi]
        w_B = codes.weight[first : first + n_rows]
        _add_batch_gram_(gram, acts_BF, w_B, rows[lo:hi] - first, cols[lo:hi])
    distributed.all_reduce_(gram)
    gram[:width, width] = gram[width, :width] = codes.code_sum
    gram[width, width] = codes.weight_sum
    return DecoderStats.of(codes, gram=gram)


def solve_decoder(
    stats: DecoderStats,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    ridge: float = 1e-6,
    fit_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The MSE-optimal decoder [F, D] and bias [D] for the codes behind ``stats``.

    Solves ``(G + λP) Θ = C + λP Θ₀`` where ``Θ₀ = [W_dec; b_dec]`` is the current decoder,
    ``P`` the identity on feature rows (not the bias) and ``λ = ridge · mean(diag G)``: the
    ridge pulls a rarely active feature towards its current direction instead of towards
    zero, and ``ridge=0`` is plain least squares. Features that never fire keep their rows.
    With ``fit_bias=False`` the bias stays ``b_dec``. Cholesky is tried first; if the matrix is
    not positive definite, ``torch.linalg.lstsq`` (gelsd, minimum norm) solves it on the CPU.
    Returns ``(W_dec, b_dec, method)`` in the dtype and device of ``W_dec``;
    :func:`solve_exact` also gives the residual, and solves by conjugate gradients where the
    statistics keep the codes instead of the Gram matrix.
    """
    solved = _solve_dense(stats, W_dec, b_dec, ridge=ridge, fit_bias=fit_bias)
    return solved.W_dec, solved.b_dec, solved.method


def _solve_dense(
    stats: DecoderStats,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    ridge: float,
    fit_bias: bool,
) -> DecoderSolve:
    width = stats.width
    if tuple(W_dec.shape) != (width, stats.cross.shape[1]):
        raise ShapeError(
            f"solve_decoder(): W_dec has shape {tuple(W_dec.shape)}, statistics "
            f"are for {width} features of d_in {stats.cross.shape[1]}"
        )
    device = stats.gram.device
    theta0 = stats.theta(W_dec, b_dec)
    live_F = stats.active.to(device) > 0
    live = torch.nonzero(live_F).reshape(-1)
    unknowns = torch.cat([live, live.new_tensor([width])]) if fit_bias else live
    gram = stats.gram[unknowns][:, unknowns]
    rhs = stats.cross[unknowns].clone()
    if not fit_bias:
        rhs -= stats.gram[live, width, None] * theta0[width][None]
    n_live = live.numel()
    diag = gram.diagonal()[:n_live]
    lam = ridge * (float(diag.mean()) if n_live else 0.0)
    if lam > 0:
        gram.diagonal()[:n_live] += lam
        rhs[:n_live] += lam * theta0[live]
    theta = theta0.clone()
    method, residual = "cholesky", 0.0
    if unknowns.numel():
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            solution = torch.cholesky_solve(rhs, factor)
        else:
            method = "lstsq"
            solution = torch.linalg.lstsq(gram.cpu(), rhs.cpu(), driver="gelsd").solution
        del factor
        solution = solution.to(device)
        scale = float(rhs.norm())
        residual = float((rhs - gram @ solution).norm()) / scale if scale > 0 else 0.0
        theta[unknowns] = solution
    if not all_finite(theta):
        raise SaegeoError("solve_decoder(): the solution is not finite; raise the ridge")
    return DecoderSolve(
        theta[:width].to(W_dec.device, W_dec.dtype),
        (theta[width] + stats.shift.to(device)).to(b_dec.device, b_dec.dtype),
        method,
        0,
        residual,
    )


# --------------------------------------------------------------------------- choosing


# Above this width the conjugate-gradient solve is the faster on a CPU (measured on the
# published-scale stand-in; docs/scale.md), and the dense one needs gigabytes.
DENSE_MAX_WIDTH = 16384


def dense_bytes(union_width: int, width: int, d_in: int) -> int:
    """Bytes of a dense refit: the Gram matrix of ``union_width`` features and the copies
    a solve of ``width`` of them makes (selection, factor, product), float64."""
    return 8 * ((union_width + 1) ** 2 + 3 * (width + 1) ** 2 + 4 * (union_width + 1) * d_in)


def choose_solver(solver: Solver, width: int, d_in: int, device: torch.device | str = "cpu") -> str:
    """``cholesky`` or ``cg`` for an exact refit of ``width`` features (``solver="auto"``:
    dense up to ``DENSE_MAX_WIDTH`` features on a CPU, as far as the free memory allows on
    CUDA, where a dense factorisation is fast; conjugate gradients beyond)."""
    if solver not in SOLVERS:
        raise SaegeoError(f"solver={solver!r}: choose one of {', '.join(SOLVERS)}")
    if solver != "auto":
        return solver
    device = torch.device(device)
    free = memory.available_memory(device)
    fits = free is None or dense_bytes(width, width, d_in) <= free // 2
    # Every rank takes the same choice (the dense one only where it fits on all of them).
    fits = distributed.all_reduce_sums(0.0 if fits else 1.0)[0] == 0
    if device.type == "cuda":
        return "cholesky" if fits else "cg"
    return "cholesky" if fits and width <= DENSE_MAX_WIDTH else "cg"


def accumulate(solver: str, sae: SAE, batches: BatchStream) -> DecoderStats | refit_cg.CodeStats:
    """The statistics that ``solver`` (``cholesky`` or ``cg``) solves from: a dense Gram
    matrix (:func:`accumulate_stats`) or the codes
    (:func:`~saegeo.stitch.refit_cg.accumulate_codes`)."""
    if solver == "cg":
        return refit_cg.accumulate_codes(sae, batches)
    return accumulate_stats(sae, batches)


def solve_exact(
    stats: DecoderStats | refit_cg.CodeStats,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    ridge: float = 1e-6,
    fit_bias: bool = True,
    tol: float = refit_cg.TOL,
    max_iterations: int = refit_cg.MAX_ITERATIONS,
    start: torch.Tensor | None = None,
) -> DecoderSolve:
    """The MSE-optimal decoder for ``stats``: Cholesky on a dense Gram matrix
    (:func:`solve_decoder`), conjugate gradients on kept codes
    (:func:`~saegeo.stitch.refit_cg.solve_decoder_cg`, with ``tol``, ``max_iterations`` and
    ``start``); the same problem, the same answer to the stopping rule's tolerance."""
    if isinstance(stats, refit_cg.CodeStats):
        return refit_cg.solve_decoder_cg(
            stats,
            W_dec,
            b_dec,
            ridge=ridge,
            fit_bias=fit_bias,
            tol=tol,
            max_iterations=max_iterations,
            start=start,
        )
    return _solve_dense(stats, W_dec, b_dec, ridge=ridge, fit_bias=fit_bias)


def with_decoder(sae: SAE, W_dec: torch.Tensor, b_dec: torch.Tensor) -> SAE:
    """``sae`` with decoder ``W_dec`` [F, D] and output bias ``b_dec`` [D], codes kept fixed.

    ``forward`` then equals decoding the original codes with ``W_dec`` and ``b_dec``; how the
    change is folded into the encoder is the architecture's rule
    (:meth:`saegeo.core.architectures.Architecture.with_decoder`).
    """
    return sae.architecture.with_decoder(
        sae, W_dec.to(sae.device, sae.dtype), b_dec.to(sae.device, sae.dtype)
    )


# --------------------------------------------------------------------------- exact refit


@with_stream_options
def refit_exact(
    sae: SAE,
    acts: ActsLike,
    *,
    ridge: float = 1e-6,
    solver: Solver = "auto",
    tol: float = refit_cg.TOL,
    max_iterations: int = refit_cg.MAX_ITERATIONS,
    **options: Unpack[StreamOptions],
) -> Refit:
    """The MSE-optimal decoder for the codes of ``sae`` on ``acts``, from one pass.

    ``solver`` is ``cholesky`` (a dense Gram matrix, :func:`accumulate_stats`), ``cg``
    (conjugate gradients on the kept codes, :mod:`saegeo.stitch.refit_cg`, with ``tol`` and
    ``max_iterations``) or ``auto`` (:func:`choose_solver`). See :func:`solve_exact` and
    :func:`with_decoder`. ``options`` set how ``acts`` is read and where the work runs
    (:class:`~saegeo.acts.streaming.StreamOptions`).

    Examples
    --------
    >>> import torch
    >>> sae = SAE.from_decoder(torch.eye(4)).to(dtype=torch.float32)
    >>> result = refit_exact(sae, torch.randn(64, 4), progress=False, device="cpu")
    >>> result.after.mse <= result.before.mse + 1e-6
    True
    """
    batches = read(acts, options)
    return refit_exact_batches(
        sae, batches, ridge=ridge, solver=solver, tol=tol, max_iterations=max_iterations
    )


def refit_exact_batches(
    sae: SAE, batches: BatchStream, *, ridge: float, solver: Solver, tol: float, max_iterations: int
) -> Refit:
    """:func:`refit_exact` on the tokens of ``batches``."""
    start = time.perf_counter()
    method = choose_solver(solver, sae.width, sae.d_in, batches.device)
    stats = accumulate(method, sae, batches)
    b_out = output_bias(sae)
    solved = solve_exact(
        stats,
        sae.W_dec,
        b_out,
        ridge=ridge,
        fit_bias=fits_bias(sae),
        tol=tol,
        max_iterations=max_iterations,
    )
    refit = with_decoder(sae, solved.W_dec, solved.b_dec)
    seconds = time.perf_counter() - start
    return Refit(
        refit,
        stats.metrics(sae.W_dec, b_out),
        stats.metrics(solved.W_dec, solved.b_dec),
        stats.n_tokens,
        seconds,
        solved.method,
        solved.iterations,
        solved.residual,
    )


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def fixed_code_metrics(
    sae: SAE, decoders: list[tuple[torch.Tensor, torch.Tensor]], batches: BatchStream
) -> list[Metrics]:
    """Metrics of several decoders (W_dec [F, D], output bias [D]) on the codes of ``sae``.

    One pass over ``batches``: every decoder reconstructs from the codes that ``sae`` computes,
    so this is the error a refit minimises (see the module docstring).
    """
    sae, batches = batches.for_sae(sae, "fixed_code_metrics")
    batches = batches.replace(sharded=True)  # sums reduced over ranks below
    sse = [0.0] * len(decoders)
    moments = Moments(sae.d_in, batches.device)
    active = torch.zeros(sae.width, dtype=torch.long, device=batches.device)
    for x_BD in batches:
        acts_BF = sae.encode(x_BD)
        y_BD, w_B = decode_target(sae, x_BD)
        for i, (W_dec, b_dec) in enumerate(decoders):
            W_dec, b_dec = W_dec.to(sae.device, sae.dtype), b_dec.to(sae.device, sae.dtype)
            error_BD = y_BD - (acts_BF @ W_dec + b_dec)
            sse[i] += float((w_B.double() * (error_BD.double() ** 2).sum(dim=1)).sum())
        moments.add(x_BD)
        active += (acts_BF != 0).sum(dim=0)
    sse = list(distributed.all_reduce_sums(*sse))
    distributed.all_reduce_(active)
    moments = distributed.merge_moments(moments)
    if moments.n == 0:
        raise SaegeoError(f"activations {batches.store.source}: no tokens to evaluate on")
    return [metrics_from_sums(value, moments, active) for value in sse]
