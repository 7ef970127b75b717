"""Sparse codes [tokens, latents] as scipy matrices: the helpers every co-activation score shares.

Scores between the latents of two SAEs (masked cosine, co-firing, nesting) are sums over the
tokens where pairs of latents fire together, so each is a sparse product of their codes. These
helpers check and convert codes, keep a sparsity pattern with new values, and group children
so that each product holds at most ``max_pairs`` co-firing pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from saegeo.config import check_count
from saegeo.errors import ShapeError
from saegeo.runtime.memory import cofiring_pairs_bytes, require_argument

MAX_PAIRS = 1 << 24
"""Co-firing (parent, child) pairs held at once per product (~12 bytes each)."""


def as_csr(
    codes: sp.spmatrix | np.ndarray, name: str, *, caller: str = "masked_cosine"
) -> sp.csr_matrix:
    """``codes`` [tokens, latents] as a float64 CSR matrix with no stored zeros and sorted
    indices (a copy); a ShapeError naming ``caller`` and ``name`` unless it is 2-D."""
    if not (sp.issparse(codes) or isinstance(codes, np.ndarray)) or codes.ndim != 2:
        raise ShapeError(f"{caller}(): {name} must be a 2-D sparse matrix [tokens, latents]")
    matrix = sp.csr_matrix(codes, dtype=np.float64, copy=True)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


class PairSelection(NamedTuple):
    """Which scored (parent, child) pairs a co-activation score keeps, and how it gets there:
    the options every score of this kind takes (:func:`saegeo.masked_cosine`,
    :func:`saegeo.cofiring`, :func:`saegeo.nesting`, :func:`saegeo.containment`)."""

    min_score: float
    """Entries ``<= min_score`` are dropped."""
    top_k: int | None
    """Keep only the ``top_k`` best parents of each child (ties: the smaller parent index)."""
    max_pairs: int
    """Co-firing pairs held at once per sparse product; bounds memory."""
    progress: bool | None
    """The progress bar over groups of children: None on a terminal, True always, False never."""

    def above(
        self, child: np.ndarray, parent: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries ``(child, parent, scores)`` whose score is above ``min_score``."""
        keep = scores > self.min_score
        return child[keep], parent[keep], scores[keep]

    def kept(
        self, child: np.ndarray, parent: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries ``(child, parent, scores)`` above ``min_score``, then the ``top_k``
        best of each child, in their original order."""
        child, parent, scores = self.above(child, parent, scores)
        if self.top_k is not None:
            best = top_k_per_child(child, parent, scores, self.top_k)
            child, parent, scores = child[best], parent[best], scores[best]
        return child, parent, scores


def checked_pair(
    codes_parent: sp.spmatrix | np.ndarray,
    codes_child: sp.spmatrix | np.ndarray,
    caller: str,
    select: PairSelection,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Parent and child codes as CSR matrices (see :func:`as_csr`), checked to cover the same
    tokens, with ``select``'s ``top_k`` and ``max_pairs`` checked too; errors name ``caller``."""
    A = as_csr(codes_parent, "codes_parent", caller=caller)
    B = as_csr(codes_child, "codes_child", caller=caller)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(
            f"{caller}(): parent codes cover {A.shape[0]} tokens, child codes "
            f"{B.shape[0]}; encode the same activations with both SAEs"
        )
    check_count("top_k", select.top_k, optional=True)
    check_count("max_pairs", select.max_pairs)
    return A, B


def with_data(matrix: sp.spmatrix, data: np.ndarray) -> sp.spmatrix:
    """The same sparsity pattern with new values."""
    out = matrix.copy()
    out.data = data
    return out


def column_max(matrix: sp.csc_matrix) -> np.ndarray:
    """Largest stored value of each column (0 for empty columns)."""
    out = np.zeros(matrix.shape[1])
    nonempty = np.diff(matrix.indptr) > 0
    if nonempty.any():
        out[nonempty] = np.maximum.reduceat(matrix.data, matrix.indptr[:-1][nonempty])
    return out


def column_norm(matrix: sp.csc_matrix) -> np.ndarray:
    """Euclidean norm of each column."""
    return np.sqrt(np.asarray(with_data(matrix, matrix.data**2).sum(axis=0)).ravel())


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 wherever the quotient is not finite."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    out[~np.isfinite(out)] = 0.0
    return out


def aligned(pattern: sp.csr_matrix, other: sp.csr_matrix) -> np.ndarray:
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


def child_groups(
    A: sp.csr_matrix, B: sp.csc_matrix, max_pairs: int, *, caller: str = "co-firing scores"
) -> list[tuple[int, int]]:
    """Consecutive child ranges whose co-firing pairs with all parents stay <= max_pairs.

    A child's pairs are bounded by the parent latents active on its tokens, summed. Where the
    largest group's products would not fit in free memory, raises the ArgumentError of
    ``max_pairs``, naming ``caller``.
    """
    parents_per_token = np.diff(A.indptr).astype(np.float64)
    bound = np.asarray(with_data(B, np.ones_like(B.data)).T @ parents_per_token).ravel()
    cum = np.cumsum(bound)
    groups, start = [], 0
    n_children = B.shape[1]
    while start < n_children:
        base = cum[start - 1] if start else 0.0
        stop = int(np.searchsorted(cum, base + max_pairs, side="right"))
        stop = min(max(stop, start + 1), n_children)
        groups.append((start, stop))
        start = stop
    largest = max((cum[stop - 1] - (cum[start - 1] if start else 0.0) for start, stop in groups),
                  default=0.0)  # fmt: skip
    require_argument(
        cofiring_pairs_bytes(int(largest)),
        torch.device("cpu"),
        what=f"{caller} over {int(largest)} co-firing pairs at once",
        argument="max_pairs",
        value=max_pairs,
        advice="lower it",
    )
    return groups


def top_k_per_child(
    child: np.ndarray, parent: np.ndarray, values: np.ndarray, k: int
) -> np.ndarray:
    """Positions, in their original order, of the ``k`` largest values of each child among
    entries (child, parent, values) ordered by child; ties keep the smaller parent index."""
    order = np.lexsort((parent, -values, child))
    sorted_child = child[order]
    first = np.ones(sorted_child.size, dtype=bool)
    first[1:] = sorted_child[1:] != sorted_child[:-1]
    run_starts = np.flatnonzero(first)
    rank = np.arange(sorted_child.size) - np.repeat(
        run_starts, np.diff(np.append(run_starts, sorted_child.size))
    )
    return np.sort(order[rank < k])
