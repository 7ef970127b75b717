"""Reconstruction and sparsity metrics of an SAE over activations, in one streaming pass.

Definitions (those of the design document):

- **MSE**: mean over tokens of ``||x - x_hat||²``, summed over d_in;
- **FVU**: ``Σ||x - x_hat||² / Σ||x - mean(x)||²`` (1 - explained variance);
- **L0**: mean number of non-zero latents per token;
- **dead fraction**: fraction of latents that never fire on the evaluated tokens.

Memory stays bounded: batches are encoded one at a time and only sums are kept, in float64;
the variance is merged batch by batch (Chan et al.), so a large mean does not cancel it away.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from saegeo.core.devices import resolve_device
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError, ShapeError
from saegeo.io.store import ActivationStore, as_store


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


class _Moments:
    """Streaming token count, mean [D] and summed squared deviation, in float64."""

    def __init__(self, d_in: int, device: torch.device) -> None:
        self.n = 0
        self.mean_D = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.m2 = 0.0

    def add(self, x_BD: torch.Tensor) -> None:
        x_BD = x_BD.double()
        n_b = x_BD.shape[0]
        mean_b = x_BD.mean(0)
        m2_b = float((x_BD - mean_b).pow(2).sum())
        delta = mean_b - self.mean_D
        total = self.n + n_b
        self.m2 += m2_b + float(delta.pow(2).sum()) * self.n * n_b / total
        self.mean_D += delta * (n_b / total)
        self.n = total


@torch.no_grad()
def evaluate(
    sae: SAE,
    acts: ActivationStore | torch.Tensor | str,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> Metrics:
    """MSE, FVU, L0 and dead fraction of ``sae`` on ``acts`` (a store, tensor [N, d_in] or path).

    At most ``limit`` tokens are read, ``batch_size`` at a time.

    Examples:
        >>> import torch
        >>> from saegeo.core.sae import SAE
        >>> sae = SAE.from_decoder(torch.eye(4))
        >>> m = evaluate(sae, torch.eye(4) * 2)
        >>> round(m.fvu, 6), m.l0, m.dead_fraction
        (0.0, 1.0, 0.0)
    """
    store = as_store(acts)
    if store.d_in != sae.d_in:
        raise ShapeError(
            f"evaluate(): activations {store.source} have d_in={store.d_in}, but "
            f"{sae.name} expects d_in={sae.d_in}"
        )
    torch_device = resolve_device(device)
    sae = sae.to(torch_device)
    moments = _Moments(sae.d_in, torch_device)
    squared_error = 0.0
    active = 0
    fired_F = torch.zeros(sae.width, dtype=torch.float64, device=torch_device)
    total = store.n_tokens if limit is None else min(limit, store.n_tokens)
    with tqdm(
        total=total, desc=f"evaluate {sae.name}", unit="tok", disable=not progress, leave=False
    ) as bar:
        for x_BD in store.iter_batches(batch_size, limit=limit, device=torch_device):
            codes_BF = sae.encode(x_BD)
            x_hat_BD = sae.decode(codes_BF, x_BD)
            squared_error += float((x_BD.double() - x_hat_BD.double()).pow(2).sum())
            nonzero_BF = codes_BF != 0
            active += int(nonzero_BF.sum())
            fired_F += nonzero_BF.sum(0).double()
            moments.add(x_BD)
            bar.update(x_BD.shape[0])
    if moments.n == 0:
        raise SaegeoError(f"evaluate(): no activations in {store.source}")
    n = moments.n
    return Metrics(
        mse=squared_error / n,
        fvu=squared_error / moments.m2 if moments.m2 > 0 else float("nan"),
        l0=active / n,
        dead_fraction=float((fired_F == 0).double().mean()),
        n_tokens=n,
        freq=(fired_F / n).float().cpu(),
    )
