"""SAE training losses as pure functions: tensors in, tensors out.

Reconstruction error is ``||x - x_hat||²`` summed over d_in and averaged over tokens (the
MSE of ``docs/concepts.md``). Sparsity penalties weight each latent by its decoder norm, so
that shrinking a decoder row cannot buy a smaller penalty:

- ``l1``: ``Σ_i |f_i|·||d_i||``;
- ``log`` ("Efficient Matryoshka loss calculation"): ``Σ_i log(|f_i|·||d_i|| + ε)``, computed as
  ``Σ_i log(1 + |f_i|·||d_i||/ε)``, which differs by the constant ``F·log ε`` and has the same
  gradient, so an inactive latent costs nothing.

The Matryoshka loss ("Efficient Matryoshka loss calculation") averages the loss of every prefix
``0:p_j`` of the latents, with one forward pass: the contribution of each group of latents between
consecutive prefix ends is decoded once and the prefix reconstructions are their cumulative sums.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch

from saegeo.config import check_choice
from saegeo.errors import SaegeoError

Sparsity = Literal["l1", "log", "none"]
SPARSITIES: tuple[str, ...] = get_args(Sparsity)
LOG_EPS = 0.1


def squared_error(x_BD: torch.Tensor, x_hat_BD: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error per token [B], summed over d_in."""
    return (x_hat_BD - x_BD).pow(2).sum(dim=-1)


def mse_loss(x_BD: torch.Tensor, x_hat_BD: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``||x - x_hat||²``: the MSE of ``docs/concepts.md``."""
    return squared_error(x_BD, x_hat_BD).mean()


def sparsity_loss(
    acts_BF: torch.Tensor,
    dec_norm_F: torch.Tensor,
    kind: Sparsity = "log",
    *,
    eps: float = LOG_EPS,
) -> torch.Tensor:
    """Sparsity penalty summed over latents and averaged over tokens (a scalar): the penalty of
    an activation is ``|f|·||d||`` (l1) or ``log(1 + |f|·||d||/ε)`` (log)."""
    check_choice("sparsity", kind, SPARSITIES)
    scaled_BF = acts_BF.abs() * dec_norm_F
    if kind == "l1":
        penalty_BF = scaled_BF
    elif kind == "log":
        penalty_BF = torch.log1p(scaled_BF / eps)
    else:
        return scaled_BF.new_zeros(())
    return penalty_BF.sum(dim=-1).mean()


class MatryoshkaLoss(NamedTuple):
    """The Matryoshka loss and its parts."""

    loss: torch.Tensor
    """Mean over prefixes of ``mse_p + coefficient·sparsity_p`` (a scalar)."""
    mse: torch.Tensor
    """MSE of each prefix's reconstruction [P], shortest prefix first."""
    sparsity: torch.Tensor
    """Sparsity penalty of each prefix's latents [P]."""


def check_bounds(bounds: torch.Tensor | list[int], width: int) -> torch.Tensor:
    """Prefix bounds ``[0, p_0, ..., p_last = width]`` as int64, checked strictly increasing."""
    bounds_P1 = torch.as_tensor(bounds, dtype=torch.long).reshape(-1)
    if (
        bounds_P1.numel() < 2
        or int(bounds_P1[0]) != 0
        or int(bounds_P1[-1]) != width
        or not bool((bounds_P1[1:] > bounds_P1[:-1]).all())
    ):
        raise SaegeoError(
            f"prefix bounds must rise strictly from 0 to the width {width}, got "
            f"{bounds_P1.tolist()}"
        )
    return bounds_P1


def prefix_groups(bounds: torch.Tensor | list[int], width: int) -> list[slice]:
    """The groups of latents ``bounds[j]:bounds[j+1]`` between consecutive prefix ends."""
    ends = check_bounds(bounds, width).tolist()
    return [slice(start, stop) for start, stop in zip(ends[:-1], ends[1:], strict=True)]


def prefix_reconstructions(
    acts_BF: torch.Tensor,
    W_dec_FD: torch.Tensor,
    b_dec_D: torch.Tensor,
    bounds: torch.Tensor | list[int],
) -> torch.Tensor:
    """Reconstructions [P, B, D] from each prefix ``0:bounds[j+1]`` of the latents.

    Each group ``bounds[j]:bounds[j+1]`` is decoded once; a cumulative sum over groups gives
    the prefixes, so the cost is one decode whatever the number of prefixes.
    """
    groups = [
        acts_BF[:, group] @ W_dec_FD[group] for group in prefix_groups(bounds, W_dec_FD.shape[0])
    ]
    return torch.stack(groups).cumsum(dim=0) + b_dec_D


def matryoshka_loss(
    x_BD: torch.Tensor,
    acts_BF: torch.Tensor,
    W_dec_FD: torch.Tensor,
    b_dec_D: torch.Tensor,
    bounds: torch.Tensor | list[int],
    *,
    sparsity: Sparsity = "log",
    coefficient: float = 0.0,
    eps: float = LOG_EPS,
) -> MatryoshkaLoss:
    """The Matryoshka loss, averaged (not summed) over the P prefixes.

    The loss is that of "Efficient Matryoshka loss calculation", which sums the prefixes.

    ``bounds`` is ``[0, p_0, ..., p_{P-1} = width]``. Averaging keeps the meaning of the
    sparsity coefficient and the learning rate independent of the number of prefixes.
    """
    x_hat_PBD = prefix_reconstructions(acts_BF, W_dec_FD, b_dec_D, bounds)
    mse_P = squared_error(x_BD, x_hat_PBD).mean(dim=-1)
    dec_norm_F = W_dec_FD.norm(dim=-1)
    group_penalties = [
        sparsity_loss(acts_BF[:, group], dec_norm_F[group], sparsity, eps=eps)
        for group in prefix_groups(bounds, W_dec_FD.shape[0])
    ]
    sparsity_P = torch.stack(group_penalties).cumsum(dim=0)
    loss = (mse_P + coefficient * sparsity_P).mean()
    return MatryoshkaLoss(loss=loss, mse=mse_P, sparsity=sparsity_P)


def default_matryoshka_widths(width: int, levels: int = 4) -> list[int]:
    """Nested widths by halving: ``[width/2^(levels-1), ..., width/2, width]``."""
    widths = sorted({max(1, width >> shift) for shift in range(levels)})
    return widths


def pareto_prefix_bounds(
    width: int,
    n_prefixes: int,
    *,
    min_prefix: int = 1,
    power: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bounds ``[0, p_0, ..., width]`` of ``n_prefixes`` prefixes, the last one whole.

    The ``n_prefixes - 1`` shorter prefix ends j are drawn without replacement from
    ``[min_prefix, width)`` with probability ∝ ``(j - m + 1)^power - (j - m)^power``
    (m = min_prefix), a truncated Pareto law that favours short prefixes (the sampling of
    "Efficient Matryoshka loss calculation").
    """
    if not 1 <= n_prefixes <= width - min_prefix + 1 or min_prefix < 1:
        raise SaegeoError(
            f"pareto prefixes: need 1 <= n_prefixes <= width - min_prefix + 1 and min_prefix "
            f">= 1, got n_prefixes={n_prefixes}, width={width}, min_prefix={min_prefix}"
        )
    if n_prefixes == 1:
        return torch.tensor([0, width])
    steps = torch.arange(width - min_prefix + 1, dtype=torch.float64)
    weights = (steps[1:] ** power - steps[:-1] ** power).float()
    cuts = torch.multinomial(weights, n_prefixes - 1, replacement=False, generator=generator)
    cuts = (cuts + min_prefix).sort().values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([width])])


def topk_activations(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """Dense TopK activations [B, F]: the k largest of relu(pre) per token, zeros elsewhere."""
    top = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter(-1, top.indices, top.values.relu())


def batch_topk_activations(pre_BF: torch.Tensor, k: float) -> torch.Tensor:
    """Dense BatchTopK activations [B, F]: the ``k·B`` largest of relu(pre) over the batch."""
    flat = pre_BF.relu().flatten()
    top = flat.topk(int(k * pre_BF.shape[0]), sorted=False)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(pre_BF.shape)


def auxk_loss(residual_BD: torch.Tensor, aux_recon_BD: torch.Tensor, scale: float) -> torch.Tensor:
    """Aux-k loss: how well dead latents reconstruct the detached residual, times ``scale``."""
    return scale * squared_error(residual_BD.detach(), aux_recon_BD).mean()
