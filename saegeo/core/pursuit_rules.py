"""The rules of one matching-pursuit iteration, as SAELens applies them, in one place.

Every pursuit in saegeo uses them: the choice of atom (:func:`select_atoms`), the update of
codes and residual (:func:`apply_atoms`) and the stop rules (:class:`StopRules`).
:func:`pursue` runs them over any dictionary given as functions (the ``direct`` route of
:func:`saegeo.core.pursuit.matching_pursuit`, and delta-MSE's pursuit over a smaller dictionary
plus one atom per row); the Gram route (:mod:`saegeo.core.gram_route`) runs them on updated
correlations, and :func:`saegeo.training.sparse_ops.pursuit_with_grad` replays them with
gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


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
