"""Matching-pursuit encoding with exactly SAELens's selection, coefficients and stop rules."""

from __future__ import annotations

import torch


@torch.no_grad()
def matching_pursuit(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    *,
    residual_threshold: float = 1e-2,
    max_iterations: int | None = None,
    stop_on_duplicate_support: bool = True,
) -> torch.Tensor:
    """Codes [batch, width] for centred inputs [batch, d_in] over dictionary W_dec [width, d_in].

    Each iteration picks ``j = argmax relu(r W_decᵀ)``, adds ``relu(<r, d_j>)`` to latent ``j``
    and subtracts that multiple of ``d_j`` from the residual. A row stops after
    ``max_iterations`` (default d_in), once its residual norm is below ``residual_threshold``
    (when > 0), or when its support did not change (``stop_on_duplicate_support``).
    """
    batch, d_in = residual_BD.shape
    width = W_dec_FD.shape[0]
    max_iterations = d_in if max_iterations is None else max_iterations
    residual_BD = residual_BD.clone()
    acts_BF = torch.zeros(batch, width, dtype=residual_BD.dtype, device=residual_BD.device)
    done_B = torch.zeros(batch, dtype=torch.bool, device=residual_BD.device)
    prev_support_BF = torch.zeros(batch, width, dtype=torch.bool, device=residual_BD.device)
    for _ in range(max_iterations):
        indices_B = (residual_BD @ W_dec_FD.T).relu().max(dim=1).indices
        selected_BD = W_dec_FD[indices_B]
        values_B = (residual_BD * selected_BD).sum(dim=-1).relu() * (~done_B)
        acts_BF[torch.arange(batch), indices_B] += values_B
        residual_BD -= values_B[:, None] * selected_BD
        if stop_on_duplicate_support:
            support_BF = acts_BF != 0
            done_B |= (support_BF == prev_support_BF).all(dim=1)
            prev_support_BF = support_BF
        if residual_threshold > 0:
            done_B |= residual_BD.norm(dim=-1) < residual_threshold
        if (stop_on_duplicate_support or residual_threshold > 0) and bool(done_B.all()):
            break
    return acts_BF
