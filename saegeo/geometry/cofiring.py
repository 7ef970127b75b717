"""Co-firing scores of latent pairs: how often a parent latent fires where a child latent does.

In a true feature hierarchy a child fires only where its parent fires, so for a parent latent
``i`` and a child latent ``j`` of a wider SAE, the **co-firing** score

``P(i fires | j fires) = |{t : a_i(t) > 0 and b_j(t) > 0}| / |{t : b_j(t) > 0}|``

is near 1, while it is near 0 for siblings (mutually exclusive, or independent given the
parent) and for unrelated latents, and equals the child's conditional probability (well
under 1) when the roles are reversed. With ``weighted=True`` each of the child's tokens
counts with its activation, ``Σ_t 1[a_i(t) > 0] b_j(t) / Σ_t b_j(t)``: the share of the
child's activation mass that falls where the parent fires.

Co-firing misses a parent whose latent goes silent where a child latent fires (absorption:
the child latent writes the parent's direction itself). The **presence** of parent ``i`` on
child ``j``'s tokens looks at the input instead: how much of the parent's decoder direction
the input holds, on average, where ``j`` fires, relative to where ``i`` itself fires,

``presence(i, j) = d̂_i · (x̄_j − x̄) / d̂_i · (x̄_i − x̄)``,

with ``x̄_j`` the mean input over the tokens where ``j`` fires and ``x̄`` the mean input. The
**nesting** score is the smaller of the two, ``min(P(i fires | j fires), presence(i, j))``:
high only when the child's tokens lie inside the parent's by firing *and* by content.

Nesting misses a true parent whose latent goes silent where the child fires (absorption: the
child latent writes the parent's direction itself), although the parent's direction is still
in the input there. The parent is **present** on a token where its latent fires or the input
holds at least half its own share of the parent's direction, ``d̂_i · (x − x̄) >= ½ d̂_i ·
(x̄_i − x̄)`` (:func:`present_codes`). The **containment** score counts those tokens instead of
the firing ones, ``min(P(i present | j fires), presence(i, j))`` (:func:`containment`).

Every quantity is a co-activation sum over the tokens, computed from sparse codes A [N, P]
and B [N, C] with sparse products (``1[A]ᵀ 1[B]``, ``1[A]ᵀ B``, ``1[B]ᵀ X``), children grouped
as in :func:`saegeo.geometry.masked_cosine.masked_cosine` so that memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from saegeo.acts.streaming import ActsLike, BatchStream, progress_bar, stream
from saegeo.errors import ShapeError
from saegeo.geometry.sparse_codes import (
    MAX_PAIRS,
    PairSelection,
    as_csr,
    checked_pair,
    child_groups,
    safe_divide,
    with_data,
)


def cofiring(
    codes_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    *,
    weighted: bool = False,
    min_score: float = 0.0,
    top_k: int | None = None,
    max_pairs: int = MAX_PAIRS,
    progress: bool | None = None,
) -> sp.csr_matrix:
    """P(parent fires | child fires) of every (parent, child) latent pair, as csr [P, C].

    Parameters
    ----------
    codes_parent, codes_child
        Sparse codes [N, P] and [N, C] of the same N tokens (see :func:`saegeo.encode_codes`).
        A latent fires on a token where its code is non-zero.
    weighted
        Weight each of the child's tokens by its activation ``|b_j(t)|``: the share of the
        child's activation mass on the tokens where the parent fires.
    min_score
        Entries ``<= min_score`` are dropped.
    top_k
        Keep only the ``top_k`` best parents of each child (ties: the smaller parent index).
    max_pairs
        Co-firing pairs held at once per sparse product; bounds memory.
    progress
        Show a progress bar on a terminal: None shows one when children come in several groups.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 [P, C] with values in [0, 1]. Pairs that never co-fire are 0 (absent).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> parent = sp.csr_matrix([[1.0], [1.0], [0.0], [0.0]])
    >>> child = sp.csr_matrix([[2.0], [0.0], [1.0], [0.0]])
    >>> float(cofiring(parent, child)[0, 0])
    0.5
    >>> round(float(cofiring(parent, child, weighted=True)[0, 0]), 4)
    0.6667
    """
    select = PairSelection(min_score, top_k, max_pairs, progress)
    A, B = checked_pair(codes_parent, codes_child, "cofiring", select)
    return _cofiring_csr(A, B, select, weighted=weighted)


def _cofiring_csr(
    A: sp.csr_matrix,
    B: sp.csr_matrix,
    select: PairSelection,
    *,
    weighted: bool = False,
    pair_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> sp.csr_matrix:
    """Co-firing of every pair that ``select`` keeps, as csr [P, C]; with
    ``pair_scores(rows, cols)``, the smaller of the co-firing and that score (computed only
    where co-firing passes ``min_score``)."""
    n_parents = A.shape[1]
    B_csc = B.tocsc()
    weights_csc = with_data(B_csc, np.abs(B_csc.data) if weighted else np.ones_like(B_csc.data))
    total_C = np.asarray(weights_csc.sum(axis=0)).ravel()
    parents_PN = A.tocsc().T.tocsr()  # the transpose of a csc is a csr without copying
    parents_on_PN = with_data(parents_PN, np.ones_like(parents_PN.data))

    groups = child_groups(A, B_csc, select.max_pairs)
    rows_out, cols_out, vals_out = [], [], []
    bar = progress_bar(None, "co-firing", select.progress, iterable=groups, unit="group")
    for start, stop in bar:
        weights_NC = weights_csc[:, start:stop].tocsr()
        # Weights are positive, so the product's pattern is exactly the co-firing pairs.
        together = parents_on_PN @ weights_NC
        rows = np.repeat(np.arange(n_parents, dtype=np.int64), np.diff(together.indptr))
        cols = together.indices.astype(np.int64) + start
        scores = safe_divide(together.data, total_C[cols])
        if pair_scores is not None:  # computed only where co-firing passes
            cols, rows, scores = select.above(cols, rows, scores)
            scores = np.minimum(scores, pair_scores(rows, cols))
        cols, rows, scores = select.kept(cols, rows, scores)
        del together
        rows_out.append(rows.astype(np.int32))
        cols_out.append(cols.astype(np.int32))
        vals_out.append(scores.astype(np.float32))
    entries = (
        (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out)))
        if vals_out
        else (np.zeros(0, np.float32), (np.zeros(0, np.int32), np.zeros(0, np.int32)))
    )
    return sp.csr_matrix(entries, shape=(n_parents, B.shape[1]), dtype=np.float32)


class InputMeans(NamedTuple):
    """Mean input over the tokens where each latent fires, and over all tokens."""

    on_latent: np.ndarray
    """float64 [F, D]: mean activation vector over the tokens where each latent fires (zeros for
    a latent that never fires)."""
    overall: np.ndarray
    """float64 [D]: mean activation vector over all tokens."""


def input_means(
    codes: sp.spmatrix,
    acts: ActsLike,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
) -> InputMeans:
    """Mean input where each latent of ``codes`` [N, F] fires, from one pass over ``acts``.

    ``acts`` must be the activations the codes were encoded from (same order, same ``limit``);
    memory is F·D for the sums plus one batch.
    """
    matrix = as_csr(codes, "codes", caller="input_means")
    batches = stream(acts, batch_size=batch_size, limit=limit, device="cpu", progress=False)
    on_NF = with_data(matrix, np.ones_like(matrix.data))
    sums_FD = np.zeros((matrix.shape[1], batches.store.d_in))
    total_D = np.zeros(batches.store.d_in)
    for start, stop, x_BD in _aligned_batches(matrix, batches, "input_means"):
        sums_FD += on_NF[start:stop].T @ x_BD
        total_D += x_BD.sum(axis=0)
    counts_F = np.asarray(on_NF.sum(axis=0)).ravel()
    on_latent = safe_divide(sums_FD, np.maximum(counts_F, 1)[:, None])
    return InputMeans(on_latent, total_D / max(matrix.shape[0], 1))


def _aligned_batches(
    codes: sp.csr_matrix, batches: BatchStream, caller: str
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, x_BD)``: float64 batches with the rows of ``codes`` they match; a
    ShapeError naming ``caller`` unless the batches cover exactly the codes' tokens."""
    n_tokens = codes.shape[0]
    start = 0
    for batch_BD in batches:
        x_BD = batch_BD.double().numpy()
        stop = start + x_BD.shape[0]
        if stop > n_tokens:
            break
        yield start, stop, x_BD
        start = stop
    if start != n_tokens:
        raise ShapeError(
            f"{caller}(): codes cover {n_tokens} tokens but acts {batches.store.source} give "
            f"{start if start < n_tokens else 'more'}; pass the activations (and limit) the "
            "codes were encoded from"
        )


def _unit_rows(W_dec_FD: np.ndarray | torch.Tensor) -> np.ndarray:
    """Decoder rows [F, D] scaled to unit norm, as float64 numpy."""
    W_FD = torch.as_tensor(W_dec_FD).detach().double().cpu().numpy()
    return W_FD / np.maximum(np.linalg.norm(W_FD, axis=1, keepdims=True), 1e-12)


def _own_share(unit_FD: np.ndarray, means: InputMeans) -> np.ndarray:
    """``d̂_i · (x̄_i − x̄)`` [F]: how much of its direction the input holds where i fires."""
    return np.einsum("fd,fd->f", unit_FD, means.on_latent - means.overall)


def present_codes(
    codes: sp.spmatrix,
    acts: ActsLike,
    W_dec_FD: np.ndarray | torch.Tensor,
    means: InputMeans,
    *,
    fraction: float = 0.5,
    batch_size: int = 4096,
    limit: int | None = None,
) -> sp.csr_matrix:
    """Where each latent fires or its decoder direction is in the input, as 0/1 csr [N, F].

    Latent ``i`` is present on token ``t`` when its code is non-zero or
    ``d̂_i · (x_t − x̄) >= fraction · d̂_i · (x̄_i − x̄)``: the input holds at least ``fraction``
    of the share of ``i``'s direction it holds, on average, where ``i`` fires. A latent whose
    share is <= 0 is present only where it fires.

    Parameters
    ----------
    codes
        Sparse codes [N, F] of one SAE on ``acts`` (see :func:`saegeo.encode_codes`).
    acts
        The activations [N, d_in] the codes were encoded from (same order, same ``limit``).
    W_dec_FD
        The SAE's decoder [F, d_in].
    means
        :func:`input_means` of ``codes`` on ``acts``.
    fraction
        Share of the latent's own share of its direction that makes it present.
    batch_size, limit
        Tokens projected at once (memory is one dense [batch_size, F] block), and the cap on
        tokens read.

    Returns
    -------
    scipy.sparse.csr_matrix
        float64 [N, F] of ones where the latent is present.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> codes = sp.csr_matrix([[1.0], [0.0], [0.0], [0.0]])  # silent on token 1
    >>> means = input_means(codes, x)
    >>> present_codes(codes, x, torch.tensor([[1.0, 0.0]]), means).toarray().ravel().tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    matrix = as_csr(codes, "codes", caller="present_codes")
    unit_FD = _unit_rows(W_dec_FD)
    if unit_FD.shape != (matrix.shape[1], means.on_latent.shape[1]) or (
        means.on_latent.shape[0] != matrix.shape[1]
    ):
        raise ShapeError(
            f"present_codes(): W_dec_FD {unit_FD.shape} and means "
            f"{means.on_latent.shape} must both be [{matrix.shape[1]}, d_in] like the codes"
        )
    own_F = _own_share(unit_FD, means)
    cut_F = np.where(own_F > 0, fraction * own_F, np.inf)
    batches = stream(acts, batch_size=batch_size, limit=limit, device="cpu", progress=False)
    blocks = []
    for start, stop, x_BD in _aligned_batches(matrix, batches, "present_codes"):
        in_input = sp.csr_matrix((x_BD - means.overall) @ unit_FD.T >= cut_F)
        blocks.append(in_input.maximum(matrix[start:stop] != 0))
    if not blocks:
        return sp.csr_matrix(matrix.shape, dtype=np.float64)
    present = sp.vstack(blocks, format="csr").astype(np.float64)
    present.eliminate_zeros()
    return present


def presence_scores(
    W_dec_PD: np.ndarray | torch.Tensor,
    means_parent: InputMeans,
    means_child: InputMeans,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    chunk: int = 1 << 16,
) -> np.ndarray:
    """Presence of parent ``rows[e]`` on child ``cols[e]``'s tokens, for each pair ``e``.

    ``d̂_i · (x̄_j − x̄) / d̂_i · (x̄_i − x̄)``, 0 where the parent's own term is <= 0.
    """
    unit_PD = _unit_rows(W_dec_PD)
    own_P = _own_share(unit_PD, means_parent)
    child_CD = means_child.on_latent - means_parent.overall
    out = np.zeros(rows.size)
    for start in range(0, rows.size, chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = np.einsum("ed,ed->e", unit_PD[r], child_CD[c])
    own = own_P[rows]
    return np.where(own > 0, out / np.where(own > 0, own, 1.0), 0.0)


def nesting(
    codes_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    W_dec_PD: np.ndarray | torch.Tensor,
    means_parent: InputMeans,
    means_child: InputMeans,
    *,
    min_score: float = 0.0,
    top_k: int | None = None,
    max_pairs: int = MAX_PAIRS,
    progress: bool | None = None,
) -> sp.csr_matrix:
    """``min(P(parent fires | child fires), presence(parent, child))`` as csr [P, C].

    Parameters
    ----------
    codes_parent, codes_child
        Sparse codes [N, P] and [N, C] of the same N tokens.
    W_dec_PD
        The parent SAE's decoder [P, D].
    means_parent, means_child
        :func:`input_means` of each SAE's codes on the same activations.
    min_score, top_k, max_pairs, progress
        As in :func:`cofiring`. Presence is computed only for pairs whose co-firing passes
        ``min_score``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 [P, C]; pairs that never co-fire are 0 (absent).
    """
    select = PairSelection(min_score, top_k, max_pairs, progress)
    return _min_with_presence(
        codes_parent, codes_child, W_dec_PD, means_parent, means_child, "nesting", select
    )


def containment(
    present_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    W_dec_PD: np.ndarray | torch.Tensor,
    means_parent: InputMeans,
    means_child: InputMeans,
    *,
    min_score: float = 0.0,
    top_k: int | None = None,
    max_pairs: int = MAX_PAIRS,
    progress: bool | None = None,
) -> sp.csr_matrix:
    """``min(P(parent present | child fires), presence(parent, child))`` as csr [P, C].

    The parent is present on a token where its latent fires or the input holds its direction
    (:func:`present_codes`), so a parent whose latent is absorbed by the child's, silent on
    the child's tokens while its direction is there, still contains the child. Never below
    :func:`nesting` of the same pair.

    Parameters
    ----------
    present_parent
        :func:`present_codes` [N, P] of the parent SAE.
    codes_child
        Sparse codes [N, C] of the child SAE on the same N tokens.
    W_dec_PD
        The parent SAE's decoder [P, D].
    means_parent, means_child
        :func:`input_means` of each SAE's codes (where the latents *fire*) on the same
        activations.
    min_score, top_k, max_pairs, progress
        As in :func:`cofiring`. Presence is computed only for pairs whose first term passes
        ``min_score``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 [P, C]; pairs where the parent is never present with the child are 0 (absent).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    >>> parent = sp.csr_matrix([[1.0], [1.0], [0.0], [0.0]])  # silent on token 2
    >>> child = sp.csr_matrix([[0.0], [1.0], [1.0], [0.0]])
    >>> W = torch.tensor([[1.0, 0.0]])
    >>> means_p, means_c = input_means(parent, x), input_means(child, x)
    >>> float(nesting(parent, child, W, means_p, means_c)[0, 0])
    0.5
    >>> present = present_codes(parent, x, W, means_p)
    >>> float(containment(present, child, W, means_p, means_c)[0, 0])
    1.0
    """
    select = PairSelection(min_score, top_k, max_pairs, progress)
    return _min_with_presence(
        present_parent, codes_child, W_dec_PD, means_parent, means_child, "containment", select
    )


def _min_with_presence(
    codes_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    W_dec_PD: np.ndarray | torch.Tensor,
    means_parent: InputMeans,
    means_child: InputMeans,
    caller: str,
    select: PairSelection,
) -> sp.csr_matrix:
    """The smaller of co-firing of ``codes_parent`` with ``codes_child`` and presence."""
    A, B = checked_pair(codes_parent, codes_child, caller, select)
    W_PD = torch.as_tensor(W_dec_PD)
    if tuple(W_PD.shape) != (A.shape[1], means_parent.on_latent.shape[1]):
        raise ShapeError(
            f"{caller}(): W_dec_PD must be [{A.shape[1]}, d_in], got {tuple(W_PD.shape)}"
        )
    if means_parent.on_latent.shape[0] != A.shape[1] or (
        means_child.on_latent.shape[0] != B.shape[1]
    ):
        raise ShapeError(f"{caller}(): means_parent/means_child do not match the codes' widths")

    def presence(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return presence_scores(W_PD, means_parent, means_child, rows, cols)

    return _cofiring_csr(A, B, select, pair_scores=presence)
