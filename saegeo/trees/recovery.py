"""How well feature-DAG edges recover a known feature hierarchy (for synthetic families).

The scoring rule of ``analyses/tree_recovery.py``:

- each latent stands for the true feature its decoder row is closest to (cosine); latents
  whose best cosine to every true feature is below ``min_cos`` (0.5) are left out (unscored);
- a latent pair ``(l, i) -> (l + 1, j)`` of adjacent widths, both scored, is a **true pair**
  when the true feature of ``j`` lies in the subtree of the true feature of ``i``, itself
  included (a continuation, a child or a deeper descendant);
- **precision** = true pairs among the predicted edges between scored latents / those edges;
  **recall** = true pairs among the predicted edges / all true pairs among scored latents of
  adjacent widths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from saegeo.errors import SaegeoError

Edge = tuple[tuple[int, int], tuple[int, int]]


class Recovery(NamedTuple):
    """Precision and recall of predicted edges against a true hierarchy."""

    precision: float
    """Correct edges / predicted edges between scored latents (1.0 when none is predicted)."""
    recall: float
    """Correct edges / true pairs among scored latents of adjacent widths (1.0 when none)."""
    correct: int
    """Predicted edges that are true pairs."""
    predicted: int
    """Predicted edges between scored latents."""
    true_pairs: int
    """True pairs among scored latents of adjacent widths."""


def latent_features(
    W_dec_FD: torch.Tensor, directions_TD: torch.Tensor, *, min_cos: float = 0.5
) -> np.ndarray:
    """The true feature [F] each latent stands for: argmax of decoder cosine, -1 below min_cos.

    Examples
    --------
    >>> latent_features(torch.tensor([[1.0, 0.1], [-1.0, 0.2]]), torch.eye(2)).tolist()
    [0, -1]
    """
    W_FD = torch.as_tensor(W_dec_FD).detach().double()
    T_TD = torch.as_tensor(directions_TD).detach().double()
    if W_FD.ndim != 2 or T_TD.ndim != 2 or W_FD.shape[1] != T_TD.shape[1]:
        raise SaegeoError(
            f"latent_features(): W_dec_FD {tuple(W_FD.shape)} and directions_TD "
            f"{tuple(T_TD.shape)} must be 2-D with the same d_in"
        )
    cos_FT = (W_FD / W_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (
        T_TD / T_TD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ).T
    best, feature = cos_FT.max(dim=1)
    return np.where(best.numpy() >= min_cos, feature.numpy(), -1)


def subtree_matrix(parent: Sequence[int]) -> np.ndarray:
    """``in_subtree[a, b]``: whether true feature ``b`` lies in the subtree of ``a`` (or is ``a``).

    Examples
    --------
    >>> subtree_matrix([-1, 0, 1, -1]).astype(int).tolist()
    [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    n = len(parent)
    in_subtree = np.eye(n, dtype=bool)
    for b in range(n):
        a, seen = int(parent[b]), 0
        while a >= 0:
            if a >= n or seen > n:
                raise SaegeoError(f"subtree_matrix(): parent is not a forest at feature {b}")
            in_subtree[a, b] = True
            a, seen = int(parent[a]), seen + 1
    return in_subtree


def true_pairs(features: Sequence[np.ndarray], parent: Sequence[int]) -> set[Edge]:
    """Every true pair ``((l, i), (l + 1, j))`` among scored latents of adjacent levels.

    ``features[l]`` is :func:`latent_features` of level ``l``.
    """
    in_subtree = subtree_matrix(parent)
    pairs: set[Edge] = set()
    for level in range(len(features) - 1):
        small, large = np.asarray(features[level]), np.asarray(features[level + 1])
        rows, cols = np.flatnonzero(small >= 0), np.flatnonzero(large >= 0)
        hits = in_subtree[np.ix_(small[rows], large[cols])]
        small_at, large_at = np.nonzero(hits)
        pairs.update(
            ((level, int(rows[a])), (level + 1, int(cols[b])))
            for a, b in zip(small_at, large_at, strict=True)
        )
    return pairs


def recovery(
    edges: Iterable[Edge], features: Sequence[np.ndarray], parent: Sequence[int]
) -> Recovery:
    """Precision and recall of ``edges`` (e.g. ``G.edges`` of a feature DAG) against the truth.

    Edges with an unscored end, or not between adjacent levels, are left out.

    Examples
    --------
    >>> features = [np.array([0, -1]), np.array([0, 1, 2])]
    >>> recovery([((0, 0), (1, 1)), ((0, 0), (1, 2)), ((0, 1), (1, 0))], features, [-1, 0, -1])
    Recovery(precision=0.5, recall=0.5, correct=1, predicted=2, true_pairs=2)
    """
    truth = true_pairs(features, parent)
    predicted = {
        (small, large)
        for small, large in ((tuple(map(int, a)), tuple(map(int, b))) for a, b in edges)
        if large[0] == small[0] + 1
        and 0 <= small[0] < len(features) - 1
        and features[small[0]][small[1]] >= 0
        and features[large[0]][large[1]] >= 0
    }
    correct = len(predicted & truth)
    return Recovery(
        precision=correct / len(predicted) if predicted else 1.0,
        recall=correct / len(truth) if truth else 1.0,
        correct=correct,
        predicted=len(predicted),
        true_pairs=len(truth),
    )
