"""How much of a wider feature's contribution a narrower SAE's reconstruction already explains.

"Stitching SAEs of different sizes" calls a wider feature novel when its largest decoder cosine to
the narrower SAE is at most 0.7, and asks for more principled criteria: a feature can be far from
every narrower feature and still be spanned by a *combination* of them. The score here looks at what
the narrower SAE actually reconstructs on the tokens where the feature fires.

**Definition.** On token ``t`` let ``c_j(t) = s(t) f_j(t) d_j`` be large feature ``j``'s
decoder contribution (``f_j`` its activation in its own SAE, ``d_j`` its decoder row, ``s`` the
output normalisation's scale, :func:`saegeo.effects.hybrid.output_scale`), ``ŷ(t) = s(t) a(t)
W_dec`` the narrower SAE's reconstruction without its bias (``a`` its codes), ``r(t) = x(t) -
x̂(t)`` its error and ``y(t) = ŷ(t) + r(t)`` the input less the narrower SAE's bias terms.
Summing over the tokens (only those where ``j`` fires count):

    present_j   = Σ <y, c_j> / Σ ||c_j||²      (how much of its contribution the input holds)
    explained_j = Σ <ŷ, c_j> / Σ <y, c_j>      (the share of that the narrower SAE rebuilds)
    energy_j    = Σ ||c_j||² / N

``explained`` is 1 when the narrower reconstruction already holds all of the input's component
along the feature's contributions (whatever combination of its features does so) and 0 when it
holds none of it. It is a ratio of two projections on the same contributions, so it does not
change when the wider SAE scales ``f_j`` or ``d_j``.

**Why it predicts delta_mse.** For additive pairs (relu, jumprelu) the feature fires in the
union exactly as in its own SAE, and the closed form of :mod:`saegeo.effects.delta`,
``delta_j = mean (s²f²||d||² - 2sf<r, d>)``, is exactly

    delta_j = energy_j · (1 - 2 present_j (1 - explained_j)),

so adding ``j`` lowers the MSE iff ``explained_j < 1 - 1 / (2 present_j)``. When the wider
decoder is least-squares optimal for its codes, its error is orthogonal to each feature's
activations, so ``present_j = 1 + Σ_i≠j Σ f_i f_j <d_i, d_j> / Σ f_j² ||d_j||²``: 1 up to the
overlap with the features that fire with it, and the threshold is ``1/2``
(``EXPLAINED_THRESHOLD``). Shrunken activations (an L1 penalty) and co-firing parents raise
``present`` and the threshold with it. The projection coefficient ``Σ <ŷ, c_j> / Σ ||c_j||² =
explained_j · present_j`` would carry that scale into the score; the ratio leaves it out.

For TopK pairs (``topk="reencode"``) and matching pursuit, ``f_j`` is still the activation in
the feature's own SAE; the identity above then holds only approximately (the union displaces or
re-selects latents), and the score keeps its meaning as a property of the pair.

One streaming pass computes all three: the narrower SAE's codes, the wider SAE's activations and
two products with the wider decoder per batch, in row blocks of at most ``BLOCK_ELEMENTS``
[tokens × features] entries, with float64 products and sums (memory bounded whatever the
widths; finite float32 activations give finite scores, however large).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, BatchStream, StreamOptions, read, with_stream_options
from saegeo.core.sae import SAE
from saegeo.effects.delta import BLOCK_ELEMENTS, PreparedPair, prepared_pair
from saegeo.effects.hybrid import TopkMode, output_scale
from saegeo.errors import SaegeoError

EXPLAINED_THRESHOLD = 0.5
"""``explained`` below which adding a feature is predicted to lower the MSE (see the module
docstring: ``delta_mse < 0`` iff ``explained < 1 - 1 / (2 present)``, with ``present ≈ 1``)."""


@torch.no_grad()
def _contribution_sums(
    small: SAE, large: SAE, batches: BatchStream
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Σ||c||², Σ<ŷ, c>, Σ<r, c> per large feature [L] (float64) and the token count."""
    device = batches.device
    W_dec_LD = large.W_dec
    sq_norm_L = (W_dec_LD.double() ** 2).sum(dim=1)
    rows = max(1, BLOCK_ELEMENTS // max(large.width, 1))
    sum_sq_L = torch.zeros(large.width, dtype=torch.float64, device=device)
    sum_explained_L = torch.zeros_like(sum_sq_L)
    sum_residual_L = torch.zeros_like(sum_sq_L)
    n_tokens = 0
    for x_BD in batches:
        n_tokens += x_BD.shape[0]
        for start in range(0, x_BD.shape[0], rows):
            x_RD = x_BD[start : start + rows]
            scale_R1 = output_scale(small, x_RD)[:, None]
            codes_RS = small.encode(x_RD)
            recon_RD = scale_R1 * (codes_RS @ small.W_dec)
            residual_RD = x_RD - small.decode(codes_RS, x_RD)
            acts_RL = scale_R1 * large.encode(x_RD)
            sum_sq_L += (acts_RL.double() ** 2).sum(0)
            # Products in float64: of float32 factors near 1e19 or more, float32 ones overflow.
            acts64_RL = acts_RL.double()
            sum_explained_L += (acts64_RL * (recon_RD @ W_dec_LD.T)).sum(0)
            sum_residual_L += (acts64_RL * (residual_RD @ W_dec_LD.T)).sum(0)
    sum_sq_L = sum_sq_L * sq_norm_L
    return (
        sum_sq_L.cpu().numpy(),
        sum_explained_L.cpu().numpy(),
        sum_residual_L.cpu().numpy(),
        n_tokens,
    )


@with_stream_options
def explained_share(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    *,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """How much of each ``large`` feature's contribution ``small``'s reconstruction explains.

    Parameters
    ----------
    small, large
        The narrower and the wider SAE (same d_in and input normalisation; the pairs
        :func:`saegeo.delta_mse` accepts).
    acts
        Activations [N, d_in]: an ActivationStore, a tensor or a path.
    topk
        As for :func:`saegeo.delta_mse`: ``"jumprelu"`` first converts TopK SAEs with
        :meth:`SAE.to_jumprelu` on the same tokens.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).

    Returns
    -------
    pandas.DataFrame
        Indexed by large feature (``feature``), columns ``explained``, ``present`` and
        ``energy`` (module docstring); ``explained`` and ``present`` are NaN for features that
        never fire on these tokens, and ``explained`` too where ``present <= 0`` (the input
        holds nothing along the feature's contributions). For additive pairs ``delta_mse =
        energy * (1 - 2 * present * (1 - explained))``; a low ``explained`` (below
        ``EXPLAINED_THRESHOLD``) predicts that adding the feature lowers the MSE.

    Examples
    --------
    >>> import torch
    >>> small = SAE(W_enc=torch.eye(2)[:, :1], b_enc=torch.zeros(1),
    ...             W_dec=torch.eye(2)[:1], b_dec=torch.zeros(2))
    >>> large = SAE(W_enc=torch.eye(2), b_enc=torch.zeros(2),
    ...             W_dec=torch.eye(2), b_dec=torch.zeros(2))
    >>> table = explained_share(small, large, torch.tensor([[1.0, 2.0]]), progress=False)
    >>> table["explained"].tolist(), table["present"].tolist(), table["energy"].tolist()
    ([1.0, 0.0], [1.0, 1.0], [1.0, 4.0])

    Large feature 0 duplicates the small one (explained 1: adding it doubles that part, delta
    ``1 * (1 - 0) = 1``); feature 1 is new (delta ``4 * (1 - 2) = -4``).
    """
    batches = read(acts, options)
    return pair_explained_share(prepared_pair(small, large, batches, topk))


def pair_explained_share(pair: PreparedPair) -> pd.DataFrame:
    """:func:`explained_share` of a prepared pair."""
    small, large, _, batches = pair
    batches = batches.replace(desc="explained share")
    sum_sq_L, sum_explained_L, sum_residual_L, n_tokens = _contribution_sums(small, large, batches)
    if n_tokens == 0:
        raise SaegeoError(f"explained_share(): no activations in {batches.store.source}")
    sum_input_L = sum_explained_L + sum_residual_L
    fires_L, holds_L = sum_sq_L > 0, sum_input_L > 0
    return pd.DataFrame(
        {
            "explained": np.where(
                fires_L & holds_L, sum_explained_L / np.where(holds_L, sum_input_L, 1.0), np.nan
            ),
            "present": np.where(fires_L, sum_input_L / np.where(fires_L, sum_sq_L, 1.0), np.nan),
            "energy": sum_sq_L / n_tokens,
        },
        index=pd.RangeIndex(large.width, name="feature"),
    )


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the labels ``positive`` (bool).

    The probability that a random positive scores above a random negative, ties counting one
    half (the Mann–Whitney statistic, from average ranks). NaN when either class is empty.

    Examples
    --------
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if score.shape != positive.shape:
        raise SaegeoError(
            f"roc_auc(): score has {score.size} entries but positive has {positive.size}"
        )
    if np.isnan(score).any():
        raise SaegeoError("roc_auc(): score holds NaN; drop those entries first")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    # Average rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    ends = np.r_[starts[1:], score.size]
    ranks = np.empty(score.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
