"""The rules of one pursuit iteration against their plain definitions."""

from __future__ import annotations

import torch

from saegeo.core.pursuit_rules import StopRules, apply_atoms, select_atoms


def test_select_atoms_is_argmax_of_relu():
    corr_BF = torch.randn(64, 37, dtype=torch.float64)
    corr_BF[3] = -1.0  # nothing positive: atom 0
    corr_BF[4, [5, 9]] = 10.0  # a tie: the first
    corr_BF[5] = 0.0
    idx_B, best_B = select_atoms(corr_BF)
    relu_BF = corr_BF.relu()
    expected_B = torch.tensor([int(torch.nonzero(r == r.max())[0]) for r in relu_BF])
    assert torch.equal(idx_B, expected_B)
    assert torch.equal(best_B, relu_BF.max(dim=1).values)
    assert idx_B[3] == 0 and idx_B[4] == 5


def test_finished_is_saelens_support_and_residual_test():
    """ "Support unchanged" compared with whole supports, as SAELens does, on codes that only
    ever grow."""
    g = torch.Generator().manual_seed(0)
    prior_BF = (torch.rand(200, 6, generator=g) < 0.4).double()
    idx_B = torch.randint(6, (200,), generator=g)
    coef_B = torch.rand(200, generator=g, dtype=torch.float64) * (
        torch.rand(200, generator=g) < 0.8
    )
    norm_B = torch.rand(200, generator=g, dtype=torch.float64)
    after_BF = prior_BF.clone()
    after_BF[torch.arange(200), idx_B] += coef_B
    same_support_B = ((after_BF != 0) == (prior_BF != 0)).all(dim=1)
    prior_B = prior_BF[torch.arange(200), idx_B]
    for threshold in (0.0, 0.3):
        for duplicate in (False, True):
            rules = StopRules(threshold, 10, duplicate)
            expected_B = coef_B == 0
            if duplicate:
                expected_B |= same_support_B
            if threshold > 0:
                expected_B |= norm_B < threshold
            assert torch.equal(rules.finished(coef_B, prior_B, norm_B), expected_B)


def test_apply_atoms_updates_codes_and_residual():
    g = torch.Generator().manual_seed(1)
    residual_BD = torch.randn(5, 8, generator=g, dtype=torch.float64)
    atom_BD = torch.randn(5, 8, generator=g, dtype=torch.float64)
    idx_B, rows_B = torch.tensor([0, 2, 2, 1, 3]), torch.tensor([4, 0, 1, 2, 3])
    acts_BF = torch.zeros(5, 4, dtype=torch.float64)
    before_BD = residual_BD.clone()
    coef_B, _ = apply_atoms(residual_BD, atom_BD, idx_B, rows_B, acts_BF, StopRules(0, 1, False))
    expected_B = (before_BD * atom_BD).sum(dim=1).clamp_min(0)
    torch.testing.assert_close(coef_B, expected_B)
    torch.testing.assert_close(residual_BD, before_BD - expected_B[:, None] * atom_BD)
    assert torch.equal(acts_BF[rows_B, idx_B], coef_B)
    assert int((acts_BF != 0).sum()) == int((coef_B != 0).sum())
