"""Masked cosine similarity (MCS) between the activations of two SAEs' latents.

Every quantity is a co-activation sum, so one sparse product gives all pairs at once:
with parent codes A [N, P], child codes B [N, C] and 1[B] the child's activity indicator,

- directed MCS (on the tokens where the child fires):
  ``(AᵀB) / (sqrt((A∘A)ᵀ 1[B]) · ||B||)``, times ``max(B)/max(A)`` with ``scale_by_max``;
- the other direction (on the parent's tokens): ``(AᵀB) / (||A|| · sqrt(1[A]ᵀ (B∘B)))``;
- symmetric MCS (Towards Monosemanticity): the larger of the two, unscaled.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from saegeo.errors import SaegeoError, ShapeError


def _column_max(codes: sp.csr_matrix) -> np.ndarray:
    return np.asarray(codes.max(axis=0).todense()).ravel().astype(np.float64)


def _column_norm(codes: sp.csr_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(codes.multiply(codes).sum(axis=0)).ravel().astype(np.float64))


def _divide(numerator: sp.coo_matrix, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator.data / denominator
    out[~np.isfinite(out)] = 0.0
    return out


def masked_cosine(
    codes_parent: sp.spmatrix,
    codes_child: sp.spmatrix,
    *,
    directed: bool = True,
    scale_by_max: bool = True,
    min_score: float = 0.0,
    top_k: int | None = None,
) -> sp.csr_matrix:
    """MCS of every (parent, child) latent pair, as ``scipy.sparse.csr_matrix`` [P, C].

    ``codes_parent`` [N, P] and ``codes_child`` [N, C] are codes of the same N tokens
    (see :func:`saegeo.encode_codes`). ``directed=False`` gives the symmetric MCS and ignores
    ``scale_by_max``. Entries ``<= min_score`` are dropped; ``top_k`` keeps the k best parents
    of each child. Pairs that never co-fire are 0 (absent).
    """
    A = sp.csr_matrix(codes_parent, dtype=np.float64)
    B = sp.csr_matrix(codes_child, dtype=np.float64)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"masked_cosine(): parent codes cover {A.shape[0]} tokens, child codes "
                         f"{B.shape[0]}; encode the same activations with both SAEs")
    if top_k is not None and top_k < 1:
        raise SaegeoError(f"masked_cosine(): top_k must be >= 1, got {top_k}")
    numerator = (A.T @ B).tocoo()
    rows, cols = numerator.row, numerator.col
    child_active = B.copy()
    child_active.data[:] = 1.0
    parent_sq_on_child = (A.multiply(A).T @ child_active).tocsr()
    forward_den = np.sqrt(np.asarray(parent_sq_on_child[rows, cols]).ravel()) * _column_norm(B)[cols]
    scores = _divide(numerator, forward_den)
    if directed:
        if scale_by_max:
            max_A, max_B = _column_max(A), _column_max(B)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = max_B[cols] / max_A[rows]
            scores = scores * np.where(np.isfinite(ratio), ratio, 0.0)
    else:
        parent_active = A.copy()
        parent_active.data[:] = 1.0
        child_sq_on_parent = (parent_active.T @ B.multiply(B)).tocsr()
        backward_den = _column_norm(A)[rows] * np.sqrt(
            np.asarray(child_sq_on_parent[rows, cols]).ravel()
        )
        scores = np.maximum(scores, _divide(numerator, backward_den))
    keep = scores > min_score
    result = sp.csr_matrix(
        (scores[keep].astype(np.float32), (rows[keep], cols[keep])),
        shape=(A.shape[1], B.shape[1]),
    )
    if top_k is not None:
        result = _top_k_per_column(result, top_k)
    return result


def _top_k_per_column(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each column."""
    csc = matrix.tocsc()
    rows, cols, vals = [], [], []
    for col in range(csc.shape[1]):
        start, stop = csc.indptr[col], csc.indptr[col + 1]
        if stop == start:
            continue
        data, idx = csc.data[start:stop], csc.indices[start:stop]
        best = np.argsort(-data, kind="stable")[:k]
        rows.append(idx[best])
        cols.append(np.full(best.size, col))
        vals.append(data[best])
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=matrix.shape, dtype=np.float32)
