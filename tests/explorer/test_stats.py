"""The one-pass activation statistics against a naive computation on dense codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saegeo as sg
from saegeo.explorer.stats import HIST_EDGES, family_stats


def naive(codes_NF: np.ndarray, k: int, window: tuple[int, int]):
    """Count, sum, max, histogram, top-k rows and values and windows, feature by feature."""
    n, width = codes_NF.shape
    before, after = window
    padded = np.pad(codes_NF, ((before, after), (0, 0)))
    out = []
    for j in range(width):
        column = codes_NF[:, j]
        rows = np.flatnonzero(column)
        order = sorted(rows.tolist(), key=lambda r: (-column[r], r))[:k]
        bins = np.clip(np.searchsorted(HIST_EDGES, column[rows], side="right") - 1, 0, None)
        hist = np.bincount(np.minimum(bins, len(HIST_EDGES) - 2), minlength=len(HIST_EDGES) - 1)
        windows = [padded[r : r + before + 1 + after, j] for r in order]
        out.append((rows.size, column.sum(), column.max(initial=0), hist, order, windows))
    return out


@pytest.mark.parametrize("batch_size", [5, 7, 64])
def test_one_pass_equals_naive(batch_size):
    generator = torch.Generator().manual_seed(0)
    saes = [
        sg.SAE(
            W_enc=torch.randn(6, width, generator=generator),
            b_enc=torch.full((width,), -1.0),
            W_dec=torch.randn(width, 6, generator=generator),
            b_dec=torch.zeros(6),
        )
        for width in (3, 8)
    ]
    # Rounded inputs give tied activations, which must keep the earlier token.
    acts = torch.round(torch.randn(50, 6, generator=generator) * 2) / 2
    stats = family_stats(saes, acts, k=4, window=(3, 2), batch_size=batch_size, progress=False)
    for sae, member in zip(saes, stats, strict=True):
        codes = sg.encode_codes(sae, acts, progress=False).toarray()
        for j, (count, total, peak, hist, rows, windows) in enumerate(naive(codes, 4, (3, 2))):
            assert member.count[j] == count
            assert member.total[j] == pytest.approx(total, rel=1e-6)
            assert member.max_act[j] == pytest.approx(peak)
            np.testing.assert_array_equal(member.hist[j], hist)
            kept = member.top_rows[j][member.top_rows[j] >= 0]
            assert kept.tolist() == rows
            np.testing.assert_allclose(member.top_values[j][: len(rows)], codes[rows, j], rtol=1e-6)
            for got, expected in zip(member.windows[j], windows, strict=False):
                np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert member.n_tokens == 50


def test_window_must_fit_a_batch():
    sae = sg.SAE.from_decoder(torch.eye(3))
    with pytest.raises(sg.SaegeoError, match="window"):
        family_stats([sae], torch.ones(4, 3), window=(8, 4), batch_size=8, progress=False)
