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

Under ``torch.distributed`` every rank passes the same codes (as
:func:`saegeo.acts.codes.encode_codes` returns them: each rank encodes its share of the tokens
and the rows are gathered, N·L0 values per rank). Each rank scores a contiguous share of the
child groups and the kept entries are gathered: beyond the codes, a rank holds its groups'
products (``max_pairs`` entries at a time) and the whole result, never a dense [P, C] matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from saegeo.acts.streaming import progress_bar
from saegeo.geometry.sparse_codes import (
    MAX_PAIRS,
    PairSelection,
    aligned,
    checked_pair,
    child_groups,
    column_max,
    column_norm,
    safe_divide,
    with_data,
)
from saegeo.runtime import distributed


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
        Directed MCS on the child's tokens (the Matryoshka SAE tree view); False gives the symmetric
        MCS of Towards Monosemanticity (the larger of both directions) and ignores ``scale_by_max``.
    scale_by_max
        Multiply the directed MCS by ``max(child) / max(parent)``.
    min_score
        Entries ``<= min_score`` are dropped.
    top_k
        Keep only the ``top_k`` best parents of each child (ties: the smaller parent index).
    max_pairs
        Co-firing pairs held at once per sparse product; bounds memory.
    progress
        Show a progress bar: None on a terminal, True always, False never
        (:mod:`saegeo.acts.streaming`).

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
    select = PairSelection(min_score, top_k, max_pairs, progress)
    A, B = checked_pair(codes_parent, codes_child, "masked_cosine", select)
    n_parents, n_children = A.shape[1], B.shape[1]
    A_csc, B_csc = A.tocsc(), B.tocsc()
    # Products run child-major: children [C_g, N] @ parents [N, P] gives, per child, its
    # co-firing parents, which is the [P, C] result's column layout, so the kept entries of all
    # groups concatenate into a CSC matrix with no sorting.
    parents_sq_NP = with_data(A, A.data**2)
    parents_on_NP = with_data(A, np.ones_like(A.data))
    child_norm_C = column_norm(B_csc)
    parent_norm_P = column_norm(A_csc)
    ratio_parent_P = safe_divide(np.ones(n_parents), column_max(A_csc))
    child_max_C = column_max(B_csc)

    groups = child_groups(A, B_csc, max_pairs, caller="masked_cosine()")
    # Under torch.distributed each rank scores a contiguous share of the child groups; the kept
    # entries are gathered below.
    groups = [groups[i] for i in distributed.split_items(len(groups))]
    parents_out, vals_out = [], []
    counts_C = np.zeros(n_children, dtype=np.int64)
    for start, stop in progress_bar(None, "masked cosine", progress, iterable=groups, unit="group"):
        children_CN = B_csc[:, start:stop].T  # the transpose of a csc is a csr without copying
        children_on_CN = with_data(children_CN, np.ones_like(children_CN.data))
        # Squares are positive, so this product's pattern is exactly the co-firing pairs.
        parent_sq_on_child = children_on_CN @ parents_sq_NP
        num = aligned(parent_sq_on_child, children_CN @ A)
        child = np.repeat(
            np.arange(start, stop, dtype=np.int64), np.diff(parent_sq_on_child.indptr)
        )
        parent = parent_sq_on_child.indices.astype(np.int64)
        scores = safe_divide(num, np.sqrt(parent_sq_on_child.data) * child_norm_C[child])
        if not directed:
            child_sq_on_parent = with_data(children_CN, children_CN.data**2) @ parents_on_NP
            backward = safe_divide(
                num,
                parent_norm_P[parent] * np.sqrt(aligned(parent_sq_on_child, child_sq_on_parent)),
            )
            scores = np.maximum(scores, backward)
            del child_sq_on_parent, backward
        elif scale_by_max:
            scores *= child_max_C[child] * ratio_parent_P[parent]
        del parent_sq_on_child, num
        child, parent, scores = select.kept(child, parent, scores)
        counts_C[start:stop] = np.bincount(child - start, minlength=stop - start)
        parents_out.append(parent.astype(np.int32))
        vals_out.append(scores.astype(np.float32))
    if distributed.is_distributed():
        parts = distributed.all_gather(
            (
                counts_C,
                np.concatenate(parents_out) if parents_out else np.zeros(0, np.int32),
                np.concatenate(vals_out) if vals_out else np.zeros(0, np.float32),
            )
        )
        counts_C = np.sum([part[0] for part in parts], axis=0)
        parents_out, vals_out = [part[1] for part in parts], [part[2] for part in parts]
    indptr = np.zeros(n_children + 1, dtype=np.int64)
    np.cumsum(counts_C, out=indptr[1:])
    result = sp.csc_matrix(
        (
            np.concatenate(vals_out) if vals_out else np.zeros(0, np.float32),
            np.concatenate(parents_out) if parents_out else np.zeros(0, np.int32),
            indptr,
        ),
        shape=(n_parents, n_children),
    )
    return result.tocsr()
