"""One-to-one matching of two SAEs' features (the Hungarian algorithm on decoder cosines).

The max-cosine rule of :func:`saegeo.classify` lets many features find the same partner, so
near-duplicate latents inflate how many features "reappear". Comparing dictionaries across
seeds or hyperparameters is therefore done with a one-to-one matching (Paulo & Belrose,
"Sparse Autoencoders Trained on the Same Data Learn Different Features"): the assignment of
the narrower SAE's features to distinct features of the other that maximises the summed
cosine, solved by :func:`scipy.optimize.linear_sum_assignment`. Reported are the matched
pairs, the share of them above a threshold (0.7, as in "Stitching SAEs of different sizes")
and their mean cosine (PW-MCC).

Two paths give the assignment:

- **dense**: the whole score matrix [a.width, b.width] in float64 (built one row block at a
  time from unit rows), solved exactly. Used while it holds at most ``max_dense`` entries.
- **sparse**: each feature's ``candidates`` best partners in the other SAE, both ways
  (:func:`saegeo.decoder_cosine`, blocked, so memory stays bounded); the minimum-cost full
  matching over these pairs (:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`),
  where a feature may instead take a private "unmatched" slot costing more than any real pair;
  the features left in those slots are then matched among themselves densely. Its summed score
  equals the dense optimum whenever some dense optimum uses candidate pairs only (that
  matching is feasible here, and no slot is cheaper than a real pair, so completing the slots
  cannot cost more than the optimum found); the pairs themselves can then differ only among
  equal-score alternatives. Otherwise its sum is lower than the dense optimum.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from saegeo.config import check_choice, check_count, cosine_threshold
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError, ShapeError
from saegeo.geometry.similarity import decoder_cosine, seed_stability, unit_rows

MatchMethod = Literal["auto", "dense", "sparse"]
MAX_DENSE = 2**25
"""Most entries of the score matrix solved densely by default (256 MiB of float64)."""
DENSE_ROWS = 1024
"""Rows of the dense score matrix computed per matrix product."""
# Sparse-path costs are 2 - score with score in [-1, 1], so every real pair costs at most 3
# and no cost is 0 (which a sparse matrix would drop); an unmatched slot costs 3.
COST_SHIFT = 2.0
SLOT_COST = 3.0


class FeatureMatch(NamedTuple):
    """A one-to-one matching of two SAEs' features (:func:`match_features`)."""

    pairs: pd.DataFrame
    """One row per matched pair (``min(a.width, b.width)`` rows, by ``a``): ``a`` and ``b``
    (feature indices), ``decoder_cos``, ``encoder_cos`` (NaN where a decoder matrix was
    given instead of an SAE) and ``shared`` (above the threshold)."""
    shared_fraction: float
    """Share of the matched pairs that are shared: ``decoder_cos > threshold`` (and, with
    ``encoder=True``, ``encoder_cos > threshold`` too)."""
    mean_cos: float
    """Mean decoder cosine over the matched pairs (PW-MCC)."""
    threshold: float
    """The threshold of ``shared``."""
    method: str
    """``"dense"`` or ``"sparse"``: the path that solved the assignment."""


def _directions(x: SAE | torch.Tensor, name: str, encoder: bool) -> tuple[torch.Tensor, ...]:
    """Unit decoder rows [F, D] and, for an SAE, unit encoder columns as rows [F, D]."""
    if isinstance(x, SAE):
        return unit_rows(x.W_dec.float().cpu()), unit_rows(x.W_enc.T.float().cpu())
    W_FD = torch.as_tensor(x)
    if W_FD.ndim != 2:
        raise ShapeError(
            f"match_features(): {name} must be an SAE or a 2-D decoder [width, d_in], "
            f"got shape {tuple(W_FD.shape)}"
        )
    if encoder:
        raise SaegeoError(
            f"match_features(): encoder=True needs SAEs, but {name} is a decoder matrix"
        )
    return (unit_rows(W_FD.float().cpu()),)


def _scores(directions: tuple[torch.Tensor, ...], encoder: bool) -> torch.Tensor:
    """Rows whose dot products are the matching score: the decoder cosine, or with
    ``encoder`` the mean of the decoder and encoder cosines."""
    if not encoder:
        return directions[0]
    return torch.cat(directions, dim=1) / math.sqrt(2.0)


def _dense_scores(a_FD: torch.Tensor, b_FD: torch.Tensor) -> np.ndarray:
    """The whole score matrix [a, b] in float64, one block of rows at a time."""
    out = np.empty((a_FD.shape[0], b_FD.shape[0]), dtype=np.float64)
    for start in range(0, a_FD.shape[0], DENSE_ROWS):
        block = a_FD[start : start + DENSE_ROWS].double() @ b_FD.double().T
        out[start : start + block.shape[0]] = block.numpy()
    return out


def _dense_assignment(a_FD: torch.Tensor, b_FD: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = linear_sum_assignment(_dense_scores(a_FD, b_FD), maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def _sparse_assignment(
    a_FD: torch.Tensor, b_FD: torch.Tensor, candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """The assignment over candidate pairs, completed densely (module docstring); a is the
    narrower side."""
    n_a, n_b = a_FD.shape[0], b_FD.shape[0]
    options = dict(device="cpu", progress=False)
    near_b = decoder_cosine(b_FD, a_FD, k=min(candidates, n_b), **options)  # type: ignore[arg-type]
    near_a = decoder_cosine(a_FD, b_FD, k=min(candidates, n_a), **options)  # type: ignore[arg-type]
    rows = np.concatenate(
        [
            np.repeat(np.arange(n_a), near_b.indices.shape[1]),
            near_a.indices.numpy().ravel(),
        ]
    )
    cols = np.concatenate(
        [near_b.indices.numpy().ravel(), np.repeat(np.arange(n_b), near_a.indices.shape[1])]
    )
    values = np.concatenate([near_b.values.numpy().ravel(), near_a.values.numpy().ravel()])
    # A pair found from both sides appears twice; a sparse matrix would add the two.
    _, first = np.unique(rows * n_b + cols, return_index=True)
    rows, cols, values = rows[first], cols[first], values[first].astype(np.float64)
    graph = sp.csr_matrix(
        (
            np.concatenate([COST_SHIFT - values, np.full(n_a, SLOT_COST)]),
            (np.concatenate([rows, np.arange(n_a)]), np.concatenate([cols, n_b + np.arange(n_a)])),
        ),
        shape=(n_a, n_b + n_a),
    )
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    real = matched_cols < n_b
    rows_out, cols_out = [matched_rows[real]], [matched_cols[real]]
    left_a = matched_rows[~real]
    if left_a.size:
        left_b = np.setdiff1d(np.arange(n_b), matched_cols[real])
        sub_rows, sub_cols = _dense_assignment(a_FD[left_a], b_FD[left_b])
        rows_out.append(left_a[sub_rows])
        cols_out.append(left_b[sub_cols])
    rows_all, cols_all = np.concatenate(rows_out), np.concatenate(cols_out)
    order = np.argsort(rows_all)
    return rows_all[order].astype(np.int64), cols_all[order].astype(np.int64)


def match_features(
    a: SAE | torch.Tensor,
    b: SAE | torch.Tensor,
    *,
    threshold: float = 0.7,
    encoder: bool = False,
    method: MatchMethod = "auto",
    candidates: int = 8,
    max_dense: int = MAX_DENSE,
) -> FeatureMatch:
    """Match ``a``'s features one to one with ``b``'s, maximising the summed cosine.

    Parameters
    ----------
    a, b
        SAEs, or decoder matrices [width, d_in], of the same d_in; the widths may differ
        (the narrower SAE's features are all matched).
    threshold
        A matched pair is shared when its decoder cosine is ``> threshold`` (0.7 as in
        "Stitching SAEs of different sizes").
    encoder
        Match on the mean of the decoder and encoder cosines instead of the decoder cosine
        alone, and count a pair as shared only when both cosines exceed ``threshold``.
    method
        ``"dense"`` (exact), ``"sparse"`` (over each feature's ``candidates`` best partners;
        see the module docstring for when it can differ) or ``"auto"``: dense while the score
        matrix has at most ``max_dense`` entries.
    candidates
        Best partners per feature, both ways, that the sparse path considers.
    max_dense
        Largest score matrix (entries) that ``"auto"`` solves densely; float64, so 8 bytes
        each, plus the solver's own copy.

    Returns
    -------
    FeatureMatch
        The pairs with both cosines, the shared fraction and the mean matched cosine.

    Examples
    --------
    >>> import torch
    >>> a = torch.eye(3)
    >>> b = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.2, 0.0], [0.0, 0.8, 0.6]])
    >>> m = match_features(a, b)
    >>> m.pairs[["a", "b"]].values.tolist(), round(m.shared_fraction, 3)
    ([[0, 1], [1, 0], [2, 2]], 0.667)
    """
    threshold = cosine_threshold(threshold)
    check_choice("method", method, ("auto", "dense", "sparse"))
    check_count("candidates", candidates)
    dirs_a, dirs_b = _directions(a, "a", encoder), _directions(b, "b", encoder)
    if dirs_a[0].shape[1] != dirs_b[0].shape[1]:
        raise ShapeError(
            f"match_features(): a has d_in={dirs_a[0].shape[1]} but b has "
            f"d_in={dirs_b[0].shape[1]}; both must read the same model site"
        )
    score_a, score_b = _scores(dirs_a, encoder), _scores(dirs_b, encoder)
    if method == "auto":
        method = "dense" if score_a.shape[0] * score_b.shape[0] <= max_dense else "sparse"
    # The solvers take the narrower side as rows.
    flip = score_a.shape[0] > score_b.shape[0]
    rows_F, cols_F = (score_b, score_a) if flip else (score_a, score_b)
    if method == "dense":
        rows, cols = _dense_assignment(rows_F, cols_F)
    else:
        rows, cols = _sparse_assignment(rows_F, cols_F, candidates)
    idx_a, idx_b = (cols, rows) if flip else (rows, cols)
    order = np.argsort(idx_a)
    idx_a, idx_b = idx_a[order], idx_b[order]
    decoder_cos = (dirs_a[0][idx_a] * dirs_b[0][idx_b]).sum(dim=1).double().numpy()
    if len(dirs_a) == 2 and len(dirs_b) == 2:
        encoder_cos = (dirs_a[1][idx_a] * dirs_b[1][idx_b]).sum(dim=1).double().numpy()
    else:
        encoder_cos = np.full(len(idx_a), np.nan)
    shared = decoder_cos > threshold
    if encoder:
        shared &= encoder_cos > threshold
    pairs = pd.DataFrame(
        {
            "a": idx_a,
            "b": idx_b,
            "decoder_cos": decoder_cos,
            "encoder_cos": encoder_cos,
            "shared": shared,
        },
        index=pd.RangeIndex(len(idx_a), name="pair"),
    )
    return FeatureMatch(
        pairs=pairs,
        shared_fraction=float(shared.mean()),
        mean_cos=float(decoder_cos.mean()),
        threshold=float(threshold),
        method=method,
    )


class SeedStability(NamedTuple):
    """How reproducible one SAE's features are in another (:func:`seed_stability_matched`)."""

    max_cos: float
    """Share of ``sae``'s features whose largest decoder cosine to ``other`` is above the
    threshold (:func:`saegeo.seed_stability`); near-duplicate latents can all count."""
    matched: float
    """Share of one-to-one matched pairs above the threshold (:func:`match_features`)."""
    mean_matched_cos: float
    """Mean decoder cosine of the matched pairs (PW-MCC)."""


def seed_stability_matched(
    sae: SAE | torch.Tensor,
    other: SAE | torch.Tensor,
    *,
    threshold: float = 0.7,
    device: str | torch.device = "auto",
) -> SeedStability:
    """Seed stability by the largest cosine and by one-to-one matching, side by side.

    Parameters
    ----------
    sae, other
        SAEs, or decoder matrices [width, d_in], usually of one width and different seeds.
    threshold
        A feature (or matched pair) counts as found again above it.
    device
        Where the max-cosine products run.

    Examples
    --------
    >>> import torch
    >>> twin = torch.eye(3)[[0, 0, 1]]  # the first direction twice, the third missing
    >>> seed_stability_matched(twin, torch.eye(3), device="cpu")[:2]
    (1.0, 0.6666666666666666)
    """
    match = match_features(sae, other, threshold=threshold)
    return SeedStability(
        max_cos=seed_stability(sae, other, threshold=threshold, device=device),
        matched=match.shared_fraction,
        mean_matched_cos=match.mean_cos,
    )
