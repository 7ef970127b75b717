"""Reconstruction and sparsity metrics of an SAE over activations, in one streaming pass.

Definitions (those of ``docs/concepts.md``):

- **MSE**: mean over tokens of ``||x - x_hat||²``, summed over d_in;
- **FVU**: ``Σ||x - x_hat||² / Σ||x - mean(x)||²`` (1 - explained variance);
- **L0**: mean number of non-zero latents per token;
- **dead fraction**: fraction of latents that never fire on the evaluated tokens.

Memory stays bounded: batches are encoded one at a time and only sums are kept, in float64.
Every FVU in saegeo takes its denominator from :class:`Moments`, which merges the variance
batch by batch (Chan et al.) so that a large mean does not cancel it away, and builds its
metrics with :func:`metrics_from_sums`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, BatchStream, StreamOptions, read, with_stream_options
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.runtime import distributed


class Metrics(NamedTuple):
    """How well an SAE reconstructs a set of activations, and how sparsely."""

    mse: float
    """Mean over tokens of the squared error summed over d_in."""
    fvu: float
    """Fraction of variance unexplained: total squared error over total variance."""
    l0: float
    """Mean number of active latents per token."""
    dead_fraction: float
    """Fraction of latents that never fire on these tokens."""
    n_tokens: int
    """Number of tokens evaluated."""
    freq: torch.Tensor
    """Firing frequency of each latent [width]: the fraction of tokens it is active on."""

    @property
    def explained_variance(self) -> float:
        """1 - FVU."""
        return 1.0 - self.fvu

    def as_dict(self) -> dict[str, float | int]:
        """The scalar metrics, for tables and JSON."""
        return {
            "mse": self.mse,
            "fvu": self.fvu,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "n_tokens": self.n_tokens,
        }


class Moments:
    """Streaming token count, mean [D] and summed squared deviation ``Σ||x - mean||²``, float64.

    Batches are merged with Chan et al.'s update, which never subtracts two large sums, so the
    variance of activations with a large mean keeps its precision. Partial moments of disjoint
    token sets combine with :meth:`merge` (or ``+``), e.g. across shards or ranks.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]])
    >>> m = Moments(2)
    >>> m.add(x[:2]); m.add(x[2:])
    >>> m.n, m.mean_D.tolist(), m.m2
    (3, [3.0, 12.0], 32.0)
    >>> (Moments.of(x[:1]) + Moments.of(x[1:])).m2
    32.0
    """

    def __init__(self, d_in: int, device: str | torch.device = "cpu") -> None:
        self.n = 0
        """Tokens added."""
        self.mean_D = torch.zeros(d_in, dtype=torch.float64, device=device)
        """Mean of the tokens added [D]."""
        self.m2 = 0.0
        """Σ_t ||x_t - mean||²: the FVU's denominator."""

    @classmethod
    def of(cls, x_BD: torch.Tensor) -> Moments:
        """The moments of one batch [B, D]."""
        moments = cls(x_BD.shape[1], x_BD.device)
        moments.add(x_BD)
        return moments

    def add(self, x_BD: torch.Tensor) -> None:
        """Add a batch of tokens [B, D] in place."""
        x_BD = x_BD.to(device=self.mean_D.device, dtype=torch.float64)
        n_b = x_BD.shape[0]
        if n_b == 0:
            return
        mean_b = x_BD.mean(0)
        self._combine(n_b, mean_b, float((x_BD - mean_b).pow(2).sum()))

    def merge(self, other: Moments) -> Moments:
        """The moments of both token sets together (neither operand changes)."""
        out = Moments(self.mean_D.shape[0], self.mean_D.device)
        out.n, out.mean_D, out.m2 = self.n, self.mean_D.clone(), self.m2
        out._combine(other.n, other.mean_D.to(out.mean_D.device), other.m2)
        return out

    __add__ = merge

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: float) -> None:
        if n_b == 0:
            return
        delta = mean_b - self.mean_D
        total = self.n + n_b
        self.m2 += m2_b + float(delta.pow(2).sum()) * self.n * n_b / total
        self.mean_D += delta * (n_b / total)
        self.n = total

    def fvu(self, squared_error: float) -> float:
        """``squared_error / m2``; NaN where the tokens have no variance."""
        return squared_error / self.m2 if self.m2 > 0 else float("nan")

    def __repr__(self) -> str:
        return f"Moments(n={self.n}, m2={self.m2:.6g})"


def metrics_from_sums(squared_error: float, moments: Moments, fired_F: torch.Tensor) -> Metrics:
    """Metrics from streamed sums: ``Σ||x - x̂||²``, the inputs' moments and, per latent [F],
    the number of tokens it fired on."""
    n = max(moments.n, 1)
    fired_F = fired_F.double()
    return Metrics(
        mse=squared_error / n,
        fvu=moments.fvu(squared_error),
        l0=float(fired_F.sum()) / n,
        dead_fraction=float((fired_F == 0).double().mean()) if fired_F.numel() else 0.0,
        n_tokens=moments.n,
        freq=(fired_F / n).float().cpu(),
    )


@with_stream_options
@torch.no_grad()
def evaluate(
    sae: SAE,
    acts: ActsLike,
    **options: Unpack[StreamOptions],
) -> Metrics:
    """MSE, FVU, L0 and dead fraction of ``sae`` on ``acts`` (a store, tensor [N, d_in] or path).

    ``options`` set how ``acts`` is read and where the work runs
    (:class:`~saegeo.acts.streaming.StreamOptions`).

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> sae = SAE.from_decoder(torch.eye(4))
    >>> m = evaluate(sae, torch.eye(4) * 2)
    >>> round(m.fvu, 6), m.l0, m.dead_fraction
    (0.0, 1.0, 0.0)
    """
    batches = read(acts, options)
    return evaluate_batches(sae, batches)


@torch.no_grad()
def evaluate_batches(sae: SAE, batches: BatchStream) -> Metrics:
    """:func:`evaluate` on the tokens of ``batches`` (read in ``sae``'s dtype)."""
    sae, batches = batches.for_sae(sae, "evaluate")
    batches = batches.replace(sharded=True)  # sums reduced over ranks below
    moments = Moments(sae.d_in, batches.device)
    squared_error = 0.0
    fired_F = torch.zeros(sae.width, dtype=torch.float64, device=batches.device)
    for x_BD in batches:
        codes_BF = sae.encode(x_BD)
        x_hat_BD = sae.decode(codes_BF, x_BD)
        squared_error += float((x_BD.double() - x_hat_BD.double()).pow(2).sum())
        fired_F += (codes_BF != 0).sum(0).double()
        moments.add(x_BD)
    (squared_error,) = distributed.all_reduce_sums(squared_error)
    distributed.all_reduce_(fired_F)
    moments = distributed.merge_moments(moments)
    if moments.n == 0:
        raise SaegeoError(f"evaluate(): no activations in {batches.store.source}")
    return metrics_from_sums(squared_error, moments, fired_F)
