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

import time
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from saegeo.core import normalization
from saegeo.core.finite import all_finite
from saegeo.core.sae import SAE
from saegeo.effects.metrics import Metrics, Moments, metrics_from_sums
from saegeo.errors import SaegeoError, ShapeError
from saegeo.io import distributed
from saegeo.io.streaming import ActsLike, sae_stream

# Entries of the padded co-activation outer products built at once (float64 values and int64
# indices: 16 bytes each).
PAIR_BUDGET = 1 << 22
# The Gram matrix of a batch comes from one sparse × dense product (cost ~nnz·F) unless the
# co-active pairs (Σ_t L0_t²) are fewer than nnz·F / SPMM_RATIO; a pair costs about this many
# multiply-adds of the product.
SPMM_RATIO = 64


class DecoderStats(NamedTuple):
    """Sufficient statistics of the decoder least-squares problem for fixed codes.

    With ``z = [a, 1]`` the codes of a token and ``y``, ``w`` its target and weight
    (:func:`decode_target`), the weighted squared error of a decoder ``Θ = [W_dec; b]`` is
    ``target_sq − 2⟨Θ', cross⟩ + ⟨Θ', gram Θ'⟩`` with ``Θ' = [W_dec; b − shift]``
    (:meth:`theta`): targets are accumulated as ``y − shift``, the SAE's own output bias, so
    that a large mean of the activations does not cancel the squared error away.
    """

    gram: torch.Tensor
    """Σ_t w_t z_t z_tᵀ [F+1, F+1], float64; the last row and column belong to the bias."""
    cross: torch.Tensor
    """Σ_t w_t z_t y_tᵀ [F+1, D], float64."""
    target_sq: float
    """Σ_t w_t ||y_t||²."""
    moments: Moments
    """Mean and summed squared deviation of the inputs x_t, in the input space (for the
    FVU's denominator)."""
    active: torch.Tensor
    """Number of tokens on which each feature fires [F], int64."""
    n_tokens: int
    """Number of tokens accumulated."""
    shift: torch.Tensor
    """The output bias [D], float64, subtracted from every target before accumulating."""

    @property
    def width(self) -> int:
        return int(self.active.shape[0])

    def select(self, idx: torch.Tensor | list[int]) -> DecoderStats:
        """The statistics of the SAE that keeps only features ``idx`` (codes unchanged)."""
        idx_F = torch.as_tensor(idx, dtype=torch.long, device=self.gram.device).reshape(-1)
        rows = torch.cat([idx_F, idx_F.new_tensor([self.width])])
        return self._replace(
            gram=self.gram[rows][:, rows],
            cross=self.cross[rows],
            active=self.active[idx_F.to(self.active.device)],
        )

    def sse(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> float:
        """Σ_t ||x_t − x̂_t||² of decoder ``W_dec`` [F, D] with output bias ``b_dec`` [D]."""
        theta = self.theta(W_dec, b_dec)
        value = self.target_sq - 2 * float((theta * self.cross).sum())
        value += float((theta * (self.gram @ theta)).sum())
        return max(value, 0.0)

    def theta(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
        """``[W_dec; b_dec − shift]`` [F+1, D], float64: a decoder in the statistics' terms."""
        device = self.gram.device
        bias = b_dec.to(device, torch.float64) - self.shift.to(device)
        return torch.cat([W_dec.to(device, torch.float64), bias[None]])

    def metrics(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> Metrics:
        """The metrics of decoder ``W_dec`` [F, D] with output bias ``b_dec`` [D] on these codes."""
        return metrics_from_sums(self.sse(W_dec, b_dec), self.moments, self.active)

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
        return DecoderStats(
            gram=self.gram + other.gram.to(device),
            cross=self.cross + other.cross.to(device),
            target_sq=self.target_sq + other.target_sq,
            moments=self.moments.merge(other.moments),
            active=self.active + other.active.to(self.active.device),
            n_tokens=self.n_tokens + other.n_tokens,
            shift=self.shift,
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
    """``cholesky`` or ``lstsq`` for the exact solve, ``adam`` for SGD."""


# --------------------------------------------------------------------------- pure helpers


def output_bias(sae: SAE) -> torch.Tensor:
    """The bias ``decode`` adds [D] (``sae.architecture.output_bias``)."""
    return sae.architecture.output_bias(sae)


def fits_bias(sae: SAE) -> bool:
    """Whether a refit solves for ``b_dec`` (not for matching pursuit, whose input it centres)."""
    return sae.architecture.fits_bias


def decode_target(sae: SAE, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target [B, D] and weight [B] of a linear decode: ``Σ w_t||y_t − ẑ_t||² = Σ||x_t − x̂_t||²``.

    ``ẑ = a W_dec + b`` is what the decoder computes before undoing the input normalisation
    (:func:`saegeo.core.normalization.decode_target`).
    """
    x_BD = x_BD.to(device=sae.device, dtype=sae.dtype)
    return normalization.decode_target(sae.normalize_activations, x_BD)


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
def accumulate_stats(
    sae: SAE,
    acts: ActsLike,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> DecoderStats:
    """One streaming pass: the statistics of the decoder least-squares problem of ``sae``.

    ``acts`` is an ActivationStore, a tensor [N, D] or a path; ``progress`` as in
    :mod:`saegeo.io.streaming`. Memory is O(F²) for the Gram
    matrix (float64), on ``device``. Beyond encoding, each batch costs one sparse × dense
    product, O(L0·(F + D)) per token, or, when the SAE is wide enough for that to cost more
    (see ``SPMM_RATIO``), O(L0² + L0·D) per token through the co-active pairs alone.
    """
    sae, batches = sae_stream(sae, acts, batch_size, limit, device, progress, "accumulate_stats")
    batches = batches.replace(sharded=True)  # sums reduced over ranks below
    torch_device = batches.device
    width, d_in = sae.width, sae.d_in
    f64: dict[str, Any] = {"dtype": torch.float64, "device": torch_device}
    gram = torch.zeros(width + 1, width + 1, **f64)
    cross = torch.zeros(width + 1, d_in, **f64)
    moments = Moments(d_in, torch_device)
    active = torch.zeros(width, dtype=torch.long, device=torch_device)
    target_sq = 0.0
    n_tokens = 0
    shift_D = output_bias(sae).to(torch.float64)
    for x_BD in batches:
        acts_BF = sae.encode(x_BD)
        y_BD, w_B = decode_target(sae, x_BD)
        y_BD = y_BD.to(torch.float64) - shift_D
        rows, cols = acts_BF.nonzero(as_tuple=True)
        w64_B = w_B.to(torch.float64)
        with warnings.catch_warnings():
            # Some torch builds warn that the (deliberately skipped) checks are off.
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            codes_FB = torch.sparse_coo_tensor(
                torch.stack([cols, rows]),
                acts_BF[rows, cols].to(torch.float64) * w64_B[rows],
                (width, x_BD.shape[0]),
                check_invariants=False,
            )
        ones_B1 = torch.ones(x_BD.shape[0], 1, **f64)
        pairs = int((torch.bincount(rows, minlength=x_BD.shape[0]) ** 2).sum())
        if width * rows.numel() <= SPMM_RATIO * pairs:
            # Σ_t w_t a_t [a_t, y_t, 1]ᵀ as one sparse × dense product: O(nnz·(F + D)).
            rhs_BR = torch.cat([acts_BF.to(torch.float64), y_BD, ones_B1], 1)
            block_FR = torch.sparse.mm(codes_FB, rhs_BR)
            gram[:width, :width] += block_FR[:, :width]
            block_FR = block_FR[:, width:]
        else:
            # Wide and sparse: only the co-active pairs, O(Σ_t L0_t²).
            _add_gram_(gram, acts_BF, w_B)
            block_FR = torch.sparse.mm(codes_FB, torch.cat([y_BD, ones_B1], 1))
        cross[:width] += block_FR[:, :d_in]
        gram[:width, width] += block_FR[:, d_in]
        cross[width] += (w64_B[:, None] * y_BD).sum(dim=0)
        gram[width, width] += float(w_B.sum())
        active += torch.bincount(cols, minlength=width)
        target_sq += float((w_B.to(torch.float64) * (y_BD**2).sum(1)).sum())
        moments.add(x_BD)
        n_tokens += x_BD.shape[0]
    for total in (gram, cross, active):
        distributed.all_reduce_(total)
    target_sq, tokens = distributed.all_reduce_sums(target_sq, n_tokens)
    n_tokens, moments = int(tokens), distributed.merge_moments(moments)
    if n_tokens == 0:
        raise SaegeoError(f"activations {batches.store.source}: no tokens to fit on")
    gram[width, :width] = gram[:width, width]
    return DecoderStats(gram, cross, target_sq, moments, active, n_tokens, shift_D)


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
    Returns ``(W_dec, b_dec, method)`` in the dtype and device of ``W_dec``.
    """
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
    gram = stats.gram[unknowns][:, unknowns].clone()
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
    method = "cholesky"
    if unknowns.numel():
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            solution = torch.cholesky_solve(rhs, factor)
        else:
            method = "lstsq"
            solution = torch.linalg.lstsq(gram.cpu(), rhs.cpu(), driver="gelsd").solution
        theta[unknowns] = solution.to(device)
    if not all_finite(theta):
        raise SaegeoError("solve_decoder(): the solution is not finite; raise the ridge")
    return (
        theta[:width].to(W_dec.device, W_dec.dtype),
        (theta[width] + stats.shift.to(device)).to(b_dec.device, b_dec.dtype),
        method,
    )


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


def refit_exact(
    sae: SAE,
    acts: ActsLike,
    *,
    ridge: float = 1e-6,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> Refit:
    """The MSE-optimal decoder for the codes of ``sae`` on ``acts``, from one pass.

    See :func:`accumulate_stats`, :func:`solve_decoder` and :func:`with_decoder`.

    Examples
    --------
    >>> import torch
    >>> sae = SAE.from_decoder(torch.eye(4)).to(dtype=torch.float32)
    >>> result = refit_exact(sae, torch.randn(64, 4), progress=False, device="cpu")
    >>> result.after.mse <= result.before.mse + 1e-6
    True
    """
    start = time.perf_counter()
    stats = accumulate_stats(
        sae, acts, batch_size=batch_size, limit=limit, device=device, progress=progress
    )
    b_out = output_bias(sae)
    W_dec, b_dec, method = solve_decoder(
        stats, sae.W_dec, b_out, ridge=ridge, fit_bias=fits_bias(sae)
    )
    refit = with_decoder(sae, W_dec, b_dec)
    seconds = time.perf_counter() - start
    return Refit(
        refit,
        stats.metrics(sae.W_dec, b_out),
        stats.metrics(W_dec, b_dec),
        stats.n_tokens,
        seconds,
        method,
    )


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def fixed_code_metrics(
    sae: SAE,
    decoders: list[tuple[torch.Tensor, torch.Tensor]],
    acts: ActsLike,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> list[Metrics]:
    """Metrics of several decoders (W_dec [F, D], output bias [D]) on the codes of ``sae``.

    One pass over ``acts``: every decoder reconstructs from the codes that ``sae`` computes,
    so this is the error a refit minimises (see the module docstring).
    """
    sae, batches = sae_stream(sae, acts, batch_size, limit, device, progress, "fixed_code_metrics")
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
