"""Masked cosine similarity (MCS) between the activations of two SAEs' latents.

Every quantity is a co-activation sum, so sparse products give all pairs at once: with parent
codes A [N, P], child codes B [N, C] and 1[X] the activity indicator of X,

- directed MCS (on the tokens where the child fires):
  ``(AᵀB) / (sqrt((A∘A)ᵀ 1[B]) · ||B||)``, times ``max(B)/max(A)`` with ``scale_by_max``;
- the other direction (on the parent's tokens): ``(AᵀB) / (||A|| · sqrt(1[A]ᵀ (B∘B)))``;
- symmetric MCS (Towards Monosemanticity): the larger of the two, unscaled.

The products share one sparsity pattern (the pairs that co-fire), so their entries line up
without lookups. Children are processed in groups sized so that each group's products stay
within ``max_pairs`` entries; ``min_score`` and ``top_k`` are applied per group, so memory
follows what is kept, not the number of co-firing pairs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from saegeo.errors import SaegeoError, ShapeError

# Co-firing (parent, child) pairs held at once per product (~12 bytes each).
MAX_PAIRS = 1 << 24


def _as_csr(
    codes: sp.spmatrix | np.ndarray, name: str, *, caller: str = "masked_cosine"
) -> sp.csr_matrix:
    if not (sp.issparse(codes) or isinstance(codes, np.ndarray)) or codes.ndim != 2:
        raise ShapeError(f"{caller}(): {name} must be a 2-D sparse matrix [tokens, latents]")
    matrix = sp.csr_matrix(codes, dtype=np.float64, copy=True)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _with_data(matrix: sp.spmatrix, data: np.ndarray) -> sp.spmatrix:
    """The same sparsity pattern with new values."""
    out = matrix.copy()
    out.data = data
    return out


def _column_max(matrix: sp.csc_matrix) -> np.ndarray:
    """Largest stored value of each column (0 for empty columns)."""
    out = np.zeros(matrix.shape[1])
    nonempty = np.diff(matrix.indptr) > 0
    if nonempty.any():
        out[nonempty] = np.maximum.reduceat(matrix.data, matrix.indptr[:-1][nonempty])
    return out


def _column_norm(matrix: sp.csc_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(_with_data(matrix, matrix.data**2).sum(axis=0)).ravel())


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    out[~np.isfinite(out)] = 0.0
    return out


def _aligned(pattern: sp.csr_matrix, other: sp.csr_matrix) -> np.ndarray:
    """Values of ``other`` at each stored entry of ``pattern`` (0 where ``other`` has none).

    Products of operands with equal patterns store their entries in the same order, and the
    products of non-negative codes share one pattern: that is the fast path. Codes with
    negative values can cancel to an unstored zero; then entries are matched by position.
    """
    if (
        other.nnz == pattern.nnz
        and np.array_equal(other.indptr, pattern.indptr)
        and np.array_equal(other.indices, pattern.indices)
    ):
        return other.data
    other.sort_indices()
    n_cols = np.int64(pattern.shape[1])
    keys = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(pattern.indptr))
    keys = keys * n_cols + pattern.indices
    other_keys = np.repeat(np.arange(other.shape[0], dtype=np.int64), np.diff(other.indptr))
    other_keys = other_keys * n_cols + other.indices
    pos = np.searchsorted(other_keys, keys).clip(max=max(other.nnz - 1, 0))
    found = other_keys[pos] == keys if other.nnz else np.zeros(keys.size, dtype=bool)
    return np.where(found, other.data[pos] if other.nnz else 0.0, 0.0)


def _child_groups(A: sp.csr_matrix, B: sp.csc_matrix, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive child ranges whose co-firing pairs with all parents stay <= max_pairs.

    A child's pairs are bounded by the parent latents active on its tokens, summed.
    """
    parents_per_token = np.diff(A.indptr).astype(np.float64)
    bound = np.asarray(_with_data(B, np.ones_like(B.data)).T @ parents_per_token).ravel()
    cum = np.cumsum(bound)
    groups, start = [], 0
    n_children = B.shape[1]
    while start < n_children:
        base = cum[start - 1] if start else 0.0
        stop = int(np.searchsorted(cum, base + max_pairs, side="right"))
        stop = min(max(stop, start + 1), n_children)
        groups.append((start, stop))
        start = stop
    return groups


def masked_cosine(
    codes_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    *,
    directed: bool = True,
    scale_by_max: bool = True,
    min_score: float = 0.0,
    top_k: int | None = None,
    max_pairs: int = MAX_PAIRS,
    progress: bool | None = None,
) -> sp.csr_matrix:
    """MCS of every (parent, child) latent pair, as ``scipy.sparse.csr_matrix`` [P, C].

    Parameters
    ----------
    codes_parent, codes_child
        Sparse codes [N, P] and [N, C] of the same N tokens (see :func:`saegeo.encode_codes`).
    directed
        Directed MCS on the child's tokens (seed 002); False gives the symmetric MCS of
        Towards Monosemanticity (the larger of both directions) and ignores ``scale_by_max``.
    scale_by_max
        Multiply the directed MCS by ``max(child) / max(parent)``.
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
        float32 [P, C]. Pairs that never co-fire are 0 (absent).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> parent = sp.csr_matrix([[1.0], [1.0], [0.0]])
    >>> child = sp.csr_matrix([[2.0], [0.0], [2.0]])
    >>> round(float(masked_cosine(parent, child, scale_by_max=False)[0, 0]), 4)
    0.7071
    """
    A, B = _as_csr(codes_parent, "codes_parent"), _as_csr(codes_child, "codes_child")
    if A.shape[0] != B.shape[0]:
        raise ShapeError(
            f"masked_cosine(): parent codes cover {A.shape[0]} tokens, child codes "
            f"{B.shape[0]}; encode the same activations with both SAEs"
        )
    if top_k is not None and top_k < 1:
        raise SaegeoError(f"masked_cosine(): top_k must be >= 1, got {top_k}")
    if max_pairs < 1:
        raise SaegeoError(f"masked_cosine(): max_pairs must be >= 1, got {max_pairs}")
    n_parents, n_children = A.shape[1], B.shape[1]
    A_csc, B_csc = A.tocsc(), B.tocsc()
    parents_PN = A_csc.T.tocsr()  # the transpose of a csc is a csr without copying
    parents_sq_PN = _with_data(parents_PN, parents_PN.data**2)
    parents_on_PN = _with_data(parents_PN, np.ones_like(parents_PN.data))
    child_norm_C = _column_norm(B_csc)
    parent_norm_P = _column_norm(A_csc)
    ratio_parent_P = _safe_divide(np.ones(n_parents), _column_max(A_csc))
    child_max_C = _column_max(B_csc)

    groups = _child_groups(A, B_csc, max_pairs)
    rows_out, cols_out, vals_out = [], [], []
    show = progress or (progress is None and len(groups) > 1)
    for start, stop in tqdm(
        groups, desc="masked cosine", unit="group", leave=False, disable=None if show else True
    ):
        children_NC = B_csc[:, start:stop].tocsr()
        children_on_NC = _with_data(children_NC, np.ones_like(children_NC.data))
        # Squares are positive, so this product's pattern is exactly the co-firing pairs.
        parent_sq_on_child = parents_sq_PN @ children_on_NC
        numerator = parents_PN @ children_NC
        num = _aligned(parent_sq_on_child, numerator)
        rows = np.repeat(np.arange(n_parents, dtype=np.int64), np.diff(parent_sq_on_child.indptr))
        cols = parent_sq_on_child.indices.astype(np.int64) + start
        scores = _safe_divide(num, np.sqrt(parent_sq_on_child.data) * child_norm_C[cols])
        del numerator
        if not directed:
            child_sq_on_parent = parents_on_PN @ _with_data(children_NC, children_NC.data**2)
            backward = _safe_divide(
                num, parent_norm_P[rows] * np.sqrt(_aligned(parent_sq_on_child, child_sq_on_parent))
            )
            scores = np.maximum(scores, backward)
            del child_sq_on_parent, backward
        elif scale_by_max:
            scores = scores * child_max_C[cols] * ratio_parent_P[rows]
        keep = scores > min_score
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
        if top_k is not None:
            best = _top_k_per_column(cols, scores, top_k)
            rows, cols, scores = rows[best], cols[best], scores[best]
        del parent_sq_on_child
        rows_out.append(rows.astype(np.int32))
        cols_out.append(cols.astype(np.int32))
        vals_out.append(scores.astype(np.float32))
    if not vals_out:
        return sp.csr_matrix((n_parents, n_children), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
        shape=(n_parents, n_children),
        dtype=np.float32,
    )


def _top_k_per_column(cols: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values of each column among entries (cols, values).

    Ties keep the earlier entry (entries come ordered by parent index).
    """
    order = np.lexsort((-values, cols))  # by column, then value descending; stable
    sorted_cols = cols[order]
    first = np.ones(sorted_cols.size, dtype=bool)
    first[1:] = sorted_cols[1:] != sorted_cols[:-1]
    run_starts = np.flatnonzero(first)
    run_lengths = np.diff(np.append(run_starts, sorted_cols.size))
    rank = np.arange(sorted_cols.size) - np.repeat(run_starts, run_lengths)
    return np.sort(order[rank < k])
