"""Activation statistics of every feature of every member, from one streaming pass.

Each batch of activations is encoded by every member of the family in turn, and per feature
the pass accumulates: the tokens where it fires, the sum and the largest of its activations,
a histogram of its non-zero activations on fixed log-spaced bins (:data:`HIST_EDGES`, the same
for every feature, so the pass needs no second look at the data), and its ``k`` strongest
tokens with the feature's activation on each token of a window around them. The top-k works
like one bounded heap per feature, kept as arrays [F, K] so that a batch updates every heap at
once: only activations above a feature's current k-th value are looked at, and ties keep the
earlier token, as :func:`saegeo.lm.snippets.top_snippets` does. Memory is O(F · K · window)
per member plus three batches of codes, whatever the number of tokens.

The window of a strong token reaches into the next batch, so a batch's candidates are settled
when the next batch has been encoded (the codes of the previous, current and next batch are
held; the window must be shorter than a batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from typing_extensions import Unpack

from saegeo.acts.codes import csr_codes
from saegeo.acts.streaming import (
    ActsLike,
    StreamOptions,
    stream,
    stream_options,
    with_stream_options,
)
from saegeo.config import check_count
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError
from saegeo.formats.family import Family, as_family

HIST_EDGES = 10.0 ** np.arange(-3.0, 5.0 + 1e-9, 0.1)
"""Edges of the activation histograms: ten bins per decade from 1e-3 to 1e5; activations
outside fall into the first or last bin."""


@dataclass(frozen=True)
class MemberStats:
    """Activation statistics of one member's features over ``n_tokens`` tokens."""

    n_tokens: int
    """Tokens read."""
    count: np.ndarray
    """Tokens where each feature fires [F] (int64)."""
    total: np.ndarray
    """Sum of each feature's activations [F] (float64)."""
    max_act: np.ndarray
    """Largest activation of each feature [F] (0 where it never fires)."""
    hist: np.ndarray
    """Counts of non-zero activations per bin of :data:`HIST_EDGES` [F, H] (int64)."""
    top_rows: np.ndarray
    """Positions of each feature's ``K`` strongest tokens, strongest first [F, K] (-1: none)."""
    top_values: np.ndarray
    """Their activations [F, K] (float32; -inf where none)."""
    windows: np.ndarray
    """The feature's activation on each token of the window around them [F, K, W] (float32):
    ``before`` tokens, the token, ``after`` tokens."""
    window: tuple[int, int]
    """``(before, after)``."""

    @property
    def freq(self) -> np.ndarray:
        """Fraction of tokens where each feature fires [F]."""
        return self.count / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> np.ndarray:
        """Mean activation where each feature fires [F] (0 where it never fires)."""
        return np.divide(
            self.total, self.count, out=np.zeros_like(self.total), where=self.count > 0
        )


class _Accumulator:
    """The running statistics of one member (see the module docstring)."""

    def __init__(self, width: int, k: int, window: tuple[int, int]) -> None:
        self.width, self.k, self.window = width, k, window
        n_window = window[0] + 1 + window[1]
        self.count_F = np.zeros(width, dtype=np.int64)
        self.sum_F = np.zeros(width, dtype=np.float64)
        self.max_F = np.zeros(width, dtype=np.float64)
        self.hist_flat = np.zeros(width * (len(HIST_EDGES) - 1), dtype=np.int64)
        self.top_rows_FK = np.full((width, k), -1, dtype=np.int64)
        self.top_values_FK = np.full((width, k), -np.inf, dtype=np.float32)
        self.window_FKW = np.zeros((width, k, n_window), dtype=np.float32)

    def add_counts(self, codes: sp.csr_matrix) -> None:
        coo = codes.tocoo()
        cols, values = coo.col.astype(np.int64), coo.data.astype(np.float64)
        self.count_F += np.bincount(cols, minlength=self.width)
        self.sum_F += np.bincount(cols, weights=values, minlength=self.width)
        np.maximum.at(self.max_F, cols, values)
        n_bins = len(HIST_EDGES) - 1
        bins = np.clip(np.searchsorted(HIST_EDGES, values, side="right") - 1, 0, n_bins - 1)
        self.hist_flat += np.bincount(cols * n_bins + bins, minlength=self.hist_flat.size)

    def add_top(self, codes: sp.csr_matrix, first_row: int, context: _Context) -> None:
        """Offer the non-zeros of ``codes`` (rows from ``first_row``) to the top-k heaps."""
        coo = codes.tocoo()
        rows = coo.row.astype(np.int64) + first_row
        cols, values = coo.col.astype(np.int64), coo.data.astype(np.float32)
        better = values > self.top_values_FK[cols, -1]
        if not better.any():
            return
        rows, cols, values = rows[better], cols[better], values[better]
        windows = context.lookup(rows, cols, self.window)
        touched = np.unique(cols)
        k = self.k
        old_rows = self.top_rows_FK[touched].reshape(-1)
        old_values = self.top_values_FK[touched].reshape(-1)
        old_windows = self.window_FKW[touched].reshape(touched.size * k, -1)
        all_cols = np.concatenate([np.repeat(touched, k), cols])
        all_rows = np.concatenate([old_rows, rows])
        all_values = np.concatenate([old_values, values])
        all_windows = np.concatenate([old_windows, windows])
        # Per feature, strongest first; ties: the earlier token (empty slots, row -1, last).
        empty = all_rows < 0
        order = np.lexsort(
            (np.where(empty, np.iinfo(np.int64).max, all_rows), -all_values, all_cols)
        )
        sorted_cols = all_cols[order]
        starts = np.searchsorted(sorted_cols, touched)
        rank = np.arange(order.size) - np.repeat(starts, np.diff(np.append(starts, order.size)))
        keep = order[rank < k]
        slot = rank[rank < k]
        target = all_cols[keep]
        self.top_rows_FK[target, slot] = all_rows[keep]
        self.top_values_FK[target, slot] = all_values[keep]
        self.window_FKW[target, slot] = all_windows[keep]

    def result(self, n_tokens: int) -> MemberStats:
        return MemberStats(
            n_tokens=n_tokens,
            count=self.count_F,
            total=self.sum_F,
            max_act=self.max_F,
            hist=self.hist_flat.reshape(self.width, -1),
            top_rows=self.top_rows_FK,
            top_values=self.top_values_FK,
            windows=self.window_FKW,
            window=self.window,
        )


class _Context:
    """Codes of consecutive batches stacked, to read a feature's activation at any row."""

    def __init__(self, blocks: Sequence[sp.csr_matrix], first_row: int) -> None:
        codes = sp.vstack(list(blocks), format="csr") if blocks else None
        self.first_row = first_row
        if codes is None or codes.nnz == 0:
            self.keys = np.empty(0, dtype=np.int64)
            self.values = np.empty(0, dtype=np.float32)
            self.n_rows = 0 if codes is None else codes.shape[0]
            return
        codes.sort_indices()
        width = codes.shape[1]
        rows = np.repeat(np.arange(codes.shape[0], dtype=np.int64), np.diff(codes.indptr))
        self.keys = rows * width + codes.indices.astype(np.int64)  # sorted: CSR is row-major
        self.values = codes.data.astype(np.float32)
        self.width, self.n_rows = width, codes.shape[0]

    def lookup(self, rows: np.ndarray, cols: np.ndarray, window: tuple[int, int]) -> np.ndarray:
        """Activation of feature ``cols[i]`` on rows ``rows[i] - before .. rows[i] + after``
        [len(rows), W] (0 outside the held batches, where the window leaves the data)."""
        before, after = window
        local = rows[:, None] - self.first_row + np.arange(-before, after + 1)[None, :]
        inside = (local >= 0) & (local < self.n_rows)
        out = np.zeros(local.shape, dtype=np.float32)
        if self.keys.size == 0:
            return out
        keys = np.where(inside, local, 0) * self.width + cols[:, None]
        at = np.clip(np.searchsorted(self.keys, keys), 0, self.keys.size - 1)
        found = inside & (self.keys[at] == keys)
        out[found] = self.values[at[found]]
        return out


@with_stream_options
def family_stats(
    family: Family | Sequence[SAE],
    acts: ActsLike,
    *,
    k: int = 10,
    window: tuple[int, int] = (8, 4),
    **options: Unpack[StreamOptions],
) -> list[MemberStats]:
    """:class:`MemberStats` of every member of ``family``, from one pass over ``acts``.

    Parameters
    ----------
    family
        SAEs of one model site (level 0 the narrowest).
    acts
        Activations [N, d_in] (store, tensor or path).
    k
        Strongest tokens kept per feature.
    window
        ``(before, after)``: tokens around each of them whose activations are kept; each must
        be smaller than ``batch_size``.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).

    Returns
    -------
    list of MemberStats
        One per member, narrowest first.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> eye = torch.eye(2)
    >>> sae = SAE(W_enc=eye, b_enc=torch.zeros(2), W_dec=eye, b_dec=torch.zeros(2))
    >>> x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [2.0, 0.0]])
    >>> stats = family_stats([sae], x, k=2, window=(1, 1), progress=False)[0]
    >>> stats.count.tolist(), stats.top_rows.tolist(), stats.windows[0, 0].tolist()
    ([3, 1], [[1, 3], [1, -1]], [1.0, 3.0, 0.0])
    """
    fam = as_family(family)
    check_count("k", k)
    settings = stream_options(options)
    before, after = (int(w) for w in window)
    if min(before, after) < 0 or max(before, after) >= settings["batch_size"]:
        raise ArgumentError(
            "window",
            window,
            f"must be two integers >= 0 and < batch_size ({settings['batch_size']})",
        )
    batches = stream(
        acts, **settings, d_in=fam[0], desc="feature statistics", what="family_stats()"
    )
    saes = [sae.to(batches.device) for sae in fam]
    accumulators = [_Accumulator(sae.width, k, (before, after)) for sae in saes]
    # held[m] = [(first_row, codes)] of the previous and current batch, settled one batch late.
    held: list[list[tuple[int, sp.csr_matrix]]] = [[] for _ in saes]
    n_tokens = 0

    def settle(m: int, lookahead: sp.csr_matrix | None) -> None:
        blocks = held[m]
        first_row, codes = blocks[-1]
        context_blocks = [c for _, c in blocks] + ([lookahead] if lookahead is not None else [])
        context = _Context(context_blocks, blocks[0][0])
        accumulators[m].add_top(codes, first_row, context)

    with torch.no_grad():
        for x_BD in batches:
            for m, sae in enumerate(saes):
                codes = csr_codes(sae.encode(x_BD.to(sae.dtype)))
                accumulators[m].add_counts(codes)
                if held[m]:
                    settle(m, codes)
                held[m] = [*held[m][-1:], (n_tokens, codes)]
            n_tokens += x_BD.shape[0]
    for m in range(len(saes)):
        if held[m]:
            settle(m, None)
    return [acc.result(n_tokens) for acc in accumulators]
