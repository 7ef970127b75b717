"""What every exact decoder refit accumulates over tokens, whatever solves it afterwards.

With the codes ``a_t`` [F] of a token fixed, its target ``y_t`` and weight ``w_t``
(:func:`decode_target`) and ``shift`` the SAE's output bias, the weighted squared error of a
decoder ``Θ = [W_dec; b − shift]`` needs, besides the codes' Gram matrix, the sums that
:class:`TokenSums` keeps: ``Σ w a yᵀ`` and ``Σ w yᵀ`` (the cross terms), ``Σ w ||y||²``,
``Σ w``, how often each feature fires, and the inputs' moments for the FVU. The dense refit
(:mod:`saegeo.stitch.refit`) adds the Gram matrix itself; the conjugate-gradient refit
(:mod:`saegeo.stitch.refit_cg`) keeps the codes instead: both are :class:`RefitStats`.
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch

from saegeo.core import normalization
from saegeo.core.sae import SAE
from saegeo.effects.metrics import Metrics, Moments, metrics_from_sums
from saegeo.runtime import distributed


class DecoderSolve(NamedTuple):
    """A decoder that minimises the fixed-code squared error, and how it was found."""

    W_dec: torch.Tensor
    """The decoder [F, D], in the dtype and device of the one it replaces."""
    b_dec: torch.Tensor
    """The output bias [D]."""
    method: str
    """``cholesky``, ``lstsq`` (dense) or ``cg`` (conjugate gradients)."""
    iterations: int
    """Conjugate-gradient iterations (0 for a dense solve)."""
    residual: float
    """``||rhs − A Θ|| / ||rhs||`` of the solved normal equations (Frobenius norms)."""


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


def decoder_theta(
    W_dec: torch.Tensor, b_dec: torch.Tensor, shift: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``[W_dec; b_dec − shift]`` [F+1, D], float64 on ``device``: a decoder [F, D] with
    output bias [D] in the terms of statistics whose targets are shifted by ``shift``."""
    bias = b_dec.to(device, torch.float64) - shift.to(device)
    return torch.cat([W_dec.to(device, torch.float64), bias[None]])


def sparse_codes_FB(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, width: int, n_rows: int
) -> torch.Tensor:
    """The sparse matrix [width, n_rows] holding ``values`` at (``cols``, ``rows``), float64."""
    with warnings.catch_warnings():
        # Some torch builds warn that the (deliberately skipped) checks are off.
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return torch.sparse_coo_tensor(
            torch.stack([cols, rows]),
            values.to(torch.float64),
            (width, n_rows),
            check_invariants=False,
        )


Stats = TypeVar("Stats", bound="RefitStats")


@dataclass(frozen=True, eq=False)
class RefitStats(ABC):
    """The sums of a fixed-code decoder least-squares problem that every solver keeps.

    With ``z = [a, 1]`` the codes of a token and ``y``, ``w`` its target and weight
    (:func:`decode_target`), the weighted squared error of a decoder ``Θ = [W_dec; b]`` is
    ``target_sq − 2⟨Θ', cross⟩ + ⟨Θ', G Θ'⟩`` with ``G = Σ_t w_t z_t z_tᵀ`` and
    ``Θ' = [W_dec; b − shift]`` (:meth:`theta`): targets are accumulated as ``y − shift``, the
    SAE's own output bias, so that a large mean of the activations does not cancel the squared
    error away. :class:`~saegeo.stitch.refit.DecoderStats` keeps ``G`` itself,
    :class:`~saegeo.stitch.refit_cg.CodeStats` the codes that make it up.
    """

    cross: torch.Tensor
    """Σ_t w_t z_t (y_t − shift)ᵀ [F+1, D], float64, over every rank; the last row belongs to
    the bias."""
    target_sq: float
    """Σ_t w_t ||y_t − shift||² over every rank."""
    moments: Moments
    """Mean and summed squared deviation of the inputs x_t, in the input space (for the
    FVU's denominator), over every rank."""
    active: torch.Tensor
    """Number of tokens on which each feature fires [F], int64, over every rank."""
    n_tokens: int
    """Tokens accumulated over every rank."""
    shift: torch.Tensor
    """The output bias [D], float64, subtracted from every target before accumulating."""

    @classmethod
    def of(cls: type[Stats], sums: RefitStats | TokenSums, **own: Any) -> Stats:
        """These statistics with the shared sums of ``sums`` and their own fields ``own``."""
        shared = {field.name: getattr(sums, field.name) for field in dataclasses.fields(RefitStats)}
        return cls(**shared, **own)

    @property
    def width(self) -> int:
        return int(self.active.shape[0])

    def replace(self: Stats, **changes: Any) -> Stats:
        """The same statistics with some fields changed."""
        return dataclasses.replace(self, **changes)

    def theta(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
        """``[W_dec; b_dec − shift]`` [F+1, D], float64: a decoder in the statistics' terms."""
        return decoder_theta(W_dec, b_dec, self.shift, self.cross.device)

    @abstractmethod
    def sse(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> float:
        """Σ_t ||x_t − x̂_t||² of decoder ``W_dec`` [F, D] with output bias ``b_dec`` [D]."""

    def metrics(self, W_dec: torch.Tensor, b_dec: torch.Tensor) -> Metrics:
        """The metrics of decoder ``W_dec`` [F, D] with output bias ``b_dec`` [D] on these codes."""
        return metrics_from_sums(self.sse(W_dec, b_dec), self.moments, self.active)


class TokenSums:
    """The token sums of one refit, accumulated batch by batch (see the module docstring).

    ``cross`` [F+1, D] holds ``Σ w a (y − shift)ᵀ`` in its first F rows and ``Σ w (y − shift)``
    in its last; :meth:`add` takes a batch, :meth:`reduce_` sums them over ranks.
    """

    def __init__(self, sae: SAE, device: torch.device) -> None:
        f64: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.width, self.d_in = sae.width, sae.d_in
        self.shift = output_bias(sae).to(**f64)
        """The output bias [D], subtracted from every target."""
        self.cross = torch.zeros(sae.width + 1, sae.d_in, **f64)
        self.target_sq = 0.0
        self.weight_sum = 0.0
        self.code_sum = torch.zeros(sae.width, **f64)
        """``Σ w a`` [F]: the Gram matrix's bias column."""
        self.moments = Moments(sae.d_in, device)
        self.active = torch.zeros(sae.width, dtype=torch.long, device=device)
        self.n_tokens = 0

    def add(
        self, sae: SAE, x_BD: torch.Tensor, acts_BF: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add one batch [B, D] whose codes are ``acts_BF`` [B, F].

        Returns the batch's shifted targets ``y − shift`` [B, D] (float64), weights [B]
        (float64) and the (row, column) indices of its non-zero codes, for the Gram matrix.
        """
        y_BD, w_B = decode_target(sae, x_BD)
        y_BD = y_BD.to(torch.float64) - self.shift
        w_B = w_B.to(torch.float64)
        rows, cols = acts_BF.nonzero(as_tuple=True)
        weighted = acts_BF[rows, cols].to(torch.float64) * w_B[rows]
        codes_FB = sparse_codes_FB(rows, cols, weighted, self.width, len(x_BD))
        self.code_sum.index_add_(0, cols, weighted)
        self.cross[: self.width] += torch.sparse.mm(codes_FB, y_BD)
        self.cross[self.width] += (w_B[:, None] * y_BD).sum(dim=0)
        self.target_sq += float((w_B * (y_BD**2).sum(1)).sum())
        self.weight_sum += float(w_B.sum())
        self.active += torch.bincount(cols, minlength=self.width)
        self.moments.add(x_BD)
        self.n_tokens += x_BD.shape[0]
        return y_BD, w_B, rows, cols

    def reduce_(self) -> None:
        """Sum every total over the ranks of a process group (nothing without one)."""
        distributed.all_reduce_(self.cross)
        distributed.all_reduce_(self.active)
        distributed.all_reduce_(self.code_sum)
        self.target_sq, self.weight_sum, tokens = distributed.all_reduce_sums(
            self.target_sq, self.weight_sum, self.n_tokens
        )
        self.n_tokens = int(tokens)
        self.moments = distributed.merge_moments(self.moments)
