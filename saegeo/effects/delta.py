"""What adding (or swapping in) a larger SAE's features does to a smaller SAE's reconstruction.

``delta_mse[j]`` (``docs/concepts.md``) is the MSE of the smaller SAE with large feature ``j``
added, minus the smaller SAE's MSE, on the same tokens; see :mod:`saegeo.effects.hybrid` for how the
union fires. Re-encoding one hybrid per feature costs ``large.width`` passes over the activations;
the paths below give the same numbers from one pass.

**Additive pairs** (relu, jumprelu). With ``r = x - x̂`` the smaller SAE's error on a token
(after its output normalisation, which scales an added term by ``s``, see
:func:`saegeo.effects.hybrid.output_scale`) and ``f_j`` feature ``j``'s activation in the union,
``||r - s f_j d_j||² - ||r||² = s² f_j² ||d_j||² - 2 s f_j <r, d_j>``, so

    delta_j = mean over tokens of (s² f_j² ||d_j||² - 2 s f_j <r, d_j>),

which vanishes where ``j`` does not fire. One pass computes the large SAE's activations on the
small SAE's centring, ``r`` and ``r W_decᵀ``: about two encodings of the large SAE.

**TopK pairs** (``topk="reencode"``). In the union, ``j`` takes a slot on a token iff its
pre-activation beats the smaller SAE's k-th largest, whose latent ``m`` (value ``v``) it
displaces: with ``r' = r + s v d_m`` the token adds ``||r'||² - ||r||² - 2 s p_j <r', d_j> +
s² p_j² ||d_j||²`` (``p_j = relu(pre_j)``). Same cost. ``topk="jumprelu"`` converts TopK SAEs
with :meth:`SAE.to_jumprelu` on the same tokens and uses the additive path.

**Matching pursuit.** A union pursuit runs exactly like the smaller SAE's own until the first
iteration in which atom ``j`` would be chosen (its correlation beats every other atom's and 0),
so ``delta_j`` gets a contribution only from tokens where that happens. One pass runs the
smaller SAE's pursuit and correlates its residual at every iteration with the large dictionary
(one large-dictionary pursuit's worth of products); then each such (token, feature) pair is
re-encoded over the smaller dictionary plus that one atom. The cost is one pursuit over
``small.width + 1`` atoms per pair: from about ``L0`` pairs per token for well-separated
dictionaries up to ``large.width`` per token (one-at-a-time re-encoding) in the worst case.

Swap groups (:func:`swap_deltas`) replace a group's small features by its large ones; additive
pairs use the same closed form for the summed change ``Δ`` of a group, TopK (``reencode``) and
pursuit pairs re-encode one hybrid per group: one pass over the activations per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    BatchStream,
    StreamOptions,
    progress_bar,
    read,
    with_stream_options,
)
from saegeo.config import check_count
from saegeo.core.pursuit_rules import StopRules, pursue
from saegeo.core.sae import SAE
from saegeo.effects.hybrid import TopkMode, hybrid, output_scale, prepare_pair, rebase
from saegeo.effects.metrics import evaluate_batches
from saegeo.errors import SaegeoError
from saegeo.runtime import distributed

# Entries of a [tokens, features] working block (bounds memory per product).
BLOCK_ELEMENTS = 1 << 24
# Rows (token, feature pairs) re-encoded together on the pursuit path.
PAIR_ROWS = 4096


class PreparedPair(NamedTuple):
    """Two SAEs ready for one pass over the same activations."""

    small: SAE
    """The smaller SAE, on the batches' device."""
    large: SAE
    """The larger SAE, on the same device in the smaller one's dtype."""
    kind: str
    """Their union: ``additive``, ``topk`` or ``pursuit``."""
    batches: BatchStream
    """The activations, in the smaller SAE's dtype."""


def prepared_pair(small: SAE, large: SAE, batches: BatchStream, topk: TopkMode) -> PreparedPair:
    """The pair ready for a pass over ``batches`` (see :func:`prepare_pair`: TopK SAEs are
    converted once here when ``topk="jumprelu"``), with its union kind."""
    small, large, kind = prepare_pair(small, large, batches, topk=topk)
    return PreparedPair(small, large, kind, batches.replace(dtype=small.dtype))


def mean_over_ranks(
    what: str, batches: BatchStream, n_tokens: int, *sums: np.ndarray
) -> list[np.ndarray]:
    """Each of ``sums`` summed over the ranks of ``torch.distributed`` and divided by the
    tokens of every rank; a SaegeoError naming ``what`` when there are none."""
    n_tokens = int(distributed.all_reduce_sums(n_tokens)[0])
    if n_tokens == 0:
        raise SaegeoError(f"{what}(): no activations in {batches.store.source}")
    return [distributed.all_reduce_(torch.from_numpy(total)).numpy() / n_tokens for total in sums]


@torch.no_grad()
def _delta_closed_form(
    small: SAE, large: SAE, batches: BatchStream, *, kind: str
) -> tuple[np.ndarray, int]:
    """Summed delta per large feature [L] (float64) and the token count: additive and TopK."""
    device = batches.device
    union_large = rebase(small, large)
    W_enc_DL, b_enc_L, W_dec_LD = union_large.W_enc, union_large.b_enc, union_large.W_dec
    sq_norm_L = (W_dec_LD.double() ** 2).sum(dim=1)
    n_large = large.width
    chunk = max(1, BLOCK_ELEMENTS // max(batches.batch_size, 1))
    sum_sq_L = torch.zeros(n_large, dtype=torch.float64, device=device)
    sum_cross_L = torch.zeros_like(sum_sq_L)
    sum_shift_L = torch.zeros_like(sum_sq_L)
    n_tokens = 0
    for x_BD in batches:
        n_tokens += x_BD.shape[0]
        x_in_BD = small.sae_in(x_BD)
        residual_BD = x_BD - small.forward(x_BD)
        scale_B = output_scale(small, x_BD)
        if kind == "topk":
            assert small.k is not None
            top = small.pre_acts(x_BD).topk(small.k, dim=1)
            kth_B, kth_idx_B = top.values[:, -1], top.indices[:, -1]
            shifted_BD = residual_BD + (scale_B * kth_B.relu())[:, None] * small.W_dec[kth_idx_B]
            shift_B = (shifted_BD.double() ** 2).sum(1) - (residual_BD.double() ** 2).sum(1)
            residual_BD = shifted_BD
        for start in range(0, n_large, chunk):
            cols = slice(start, min(start + chunk, n_large))
            pre_BL = x_in_BD @ W_enc_DL[:, cols] + b_enc_L[cols]
            if kind == "topk":
                wins_BL = pre_BL > kth_B[:, None]
                acts_BL = pre_BL.relu() * wins_BL.to(pre_BL.dtype)
                sum_shift_L[cols] += shift_B @ wins_BL.double()
            else:
                acts_BL = union_large.architecture.activate(union_large, pre_BL, cols)
            acts_BL = acts_BL * scale_B[:, None]
            sum_sq_L[cols] += (acts_BL.double() ** 2).sum(0)
            dots_BL = residual_BD @ W_dec_LD[cols].T
            # In float64: a float32 product of factors near 1e19 or more overflows.
            sum_cross_L[cols] += (acts_BL.double() * dots_BL).sum(0)
    total_L = sum_shift_L + sq_norm_L * sum_sq_L - 2.0 * sum_cross_L
    return total_L.cpu().numpy(), n_tokens


def _pursuit(
    residual_RD: torch.Tensor,
    W_SD: torch.Tensor,
    sae: SAE,
    *,
    extra_RD: torch.Tensor | None = None,
    watch_LD: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SAELens's matching pursuit of each row over ``W_SD`` (plus a per-row atom ``extra_RD``
    appended last), with ``sae``'s stop rules (:func:`saegeo.core.pursuit_rules.pursue`).

    With ``watch_LD`` it also returns, per row and watched atom [rows, L], whether that atom
    would have been chosen at some iteration: its correlation beats every atom's and 0.
    Returns (codes [rows, S (+1)], watched or None).
    """
    n_rows, d_in = residual_RD.shape
    n_small = W_SD.shape[0]
    rules = StopRules.of(
        sae.residual_threshold, sae.max_iterations, sae.stop_on_duplicate_support, d_in
    )
    acts_RS = residual_RD.new_zeros(n_rows, n_small + (extra_RD is not None))

    def correlate(running_RD: torch.Tensor, rows_R: torch.Tensor) -> torch.Tensor:
        corr_RS = running_RD @ W_SD.T
        if extra_RD is None:
            return corr_RS
        return torch.cat([corr_RS, (running_RD * extra_RD[rows_R]).sum(1, keepdim=True)], dim=1)

    def atoms(idx_R: torch.Tensor, rows_R: torch.Tensor) -> torch.Tensor:
        atom_RD = W_SD[idx_R.clamp(max=n_small - 1)]
        if extra_RD is None:
            return atom_RD
        return torch.where((idx_R == n_small)[:, None], extra_RD[rows_R], atom_RD)

    watched_RL = None
    on_select = None
    if watch_LD is not None:
        watched_RL = torch.zeros(
            n_rows, watch_LD.shape[0], dtype=torch.bool, device=residual_RD.device
        )
        chunk = max(1, BLOCK_ELEMENTS // max(n_rows, 1))

        def on_select(running_RD: torch.Tensor, rows_R: torch.Tensor, best_R: torch.Tensor):
            assert watch_LD is not None and watched_RL is not None
            for start in range(0, watch_LD.shape[0], chunk):
                cols = slice(start, start + chunk)
                watched_RL[rows_R, cols] |= (running_RD @ watch_LD[cols].T) > best_R[:, None]

    pursue(residual_RD, correlate, atoms, acts_RS, rules, on_select=on_select)
    return acts_RS, watched_RL


@torch.no_grad()
def _delta_pursuit(small: SAE, large: SAE, batches: BatchStream) -> tuple[np.ndarray, int]:
    """Summed delta per large feature [L] (float64) and the token count: matching pursuit."""
    device = batches.device
    W_small_SD, W_large_LD = small.W_dec, large.W_dec
    n_small = small.width
    total_L = torch.zeros(large.width, dtype=torch.float64, device=device)
    n_tokens = 0
    for x_BD in batches:
        n_tokens += x_BD.shape[0]
        x_in_BD = small.sae_in(x_BD)
        acts_BS, watched_BL = _pursuit(x_in_BD, W_small_SD, small, watch_LD=W_large_LD)
        assert watched_BL is not None
        error_B = ((x_BD - small.decode(acts_BS, x_BD)).double() ** 2).sum(1)
        scale_B = output_scale(small, x_BD)
        token_P, feature_P = watched_BL.nonzero(as_tuple=True)
        for start in range(0, token_P.numel(), PAIR_ROWS):
            t_R = token_P[start : start + PAIR_ROWS]
            j_R = feature_P[start : start + PAIR_ROWS]
            atom_RD = W_large_LD[j_R]
            codes_RS, _ = _pursuit(x_in_BD[t_R], W_small_SD, small, extra_RD=atom_RD)
            x_RD = x_BD[t_R]
            recon_RD = small.decode(codes_RS[:, :n_small], x_RD)
            recon_RD = recon_RD + (scale_B[t_R] * codes_RS[:, n_small])[:, None] * atom_RD
            hybrid_error_R = ((x_RD - recon_RD).double() ** 2).sum(1)
            total_L.index_add_(0, j_R, hybrid_error_R - error_B[t_R])
    return total_L.cpu().numpy(), n_tokens


@with_stream_options
def delta_mse(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    *,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.Series:
    """Change in ``small``'s MSE from adding each ``large`` feature alone, on ``acts``.

    Parameters
    ----------
    small, large
        The smaller SAE and the one whose features are added (same d_in and input
        normalisation). Additive pairs, TopK pairs and matching-pursuit pairs are supported;
        see the module docstring for the methods and their cost.
    acts
        Activations [N, d_in]: an ActivationStore, a tensor or a path.
    topk
        ``"reencode"``: TopK pairs form a TopK union with the smaller SAE's ``k``.
        ``"jumprelu"``: TopK SAEs are first converted with :meth:`SAE.to_jumprelu` on the same
        tokens, and the deltas are relative to the converted smaller SAE.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).

    Returns
    -------
    pandas.Series
        ``delta_mse`` indexed by large feature (``feature``); negative where adding the feature
        lowers the MSE, 0 for features that never fire on these tokens.
    """
    batches = read(acts, options)
    return pair_delta_mse(prepared_pair(small, large, batches, topk))


def pair_delta_mse(pair: PreparedPair) -> pd.Series:
    """:func:`delta_mse` of a prepared pair."""
    small, large, kind, batches = pair
    batches = batches.replace(desc="delta_mse", sharded=True)  # sums reduced over ranks below
    if kind == "pursuit":
        total_L, n_tokens = _delta_pursuit(small, large, batches)
    else:
        total_L, n_tokens = _delta_closed_form(small, large, batches, kind=kind)
    (mean_L,) = mean_over_ranks("delta_mse", batches, n_tokens, total_L)
    return pd.Series(mean_L, index=pd.RangeIndex(large.width, name="feature"), name="delta_mse")


# --------------------------------------------------------------------------- swap groups


@torch.no_grad()
def _swap_closed_form(
    small: SAE,
    large: SAE,
    batches: BatchStream,
    groups_small: Sequence[np.ndarray],
    groups_large: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Summed squared-error change and L0 change per group (float64), and the token count.

    A group's swap changes a token's reconstruction by ``Δ = s (Σ_large f d - Σ_small f d)``
    and its squared error by ``||Δ||² - 2 <r, Δ>``.
    """
    device = batches.device
    n_groups = len(groups_small)
    union_large = rebase(small, large)
    small_M = torch.as_tensor(
        np.concatenate([np.asarray(g, np.int64) for g in groups_small]), device=device
    )
    large_M = torch.as_tensor(
        np.concatenate([np.asarray(g, np.int64) for g in groups_large]), device=device
    )
    group_M = torch.as_tensor(
        np.concatenate(
            [np.full(len(g), i) for i, g in enumerate(groups_small)]
            + [np.full(len(g), i) for i, g in enumerate(groups_large)]
        ).astype(np.int64),
        device=device,
    )
    W_MD = torch.cat([small.W_dec[small_M], union_large.W_dec[large_M]])
    sign_M = torch.cat([-torch.ones(small_M.numel()), torch.ones(large_M.numel())]).to(
        device=device, dtype=small.dtype
    )
    W_enc_DM, b_enc_M = union_large.W_enc[:, large_M], union_large.b_enc[large_M]
    large_cols = union_large.select(large_M)
    sq_error_G = torch.zeros(n_groups, dtype=torch.float64, device=device)
    l0_G = torch.zeros(n_groups, dtype=torch.float64, device=device)
    n_tokens = 0
    for x_BD in batches:
        n_tokens += x_BD.shape[0]
        codes_BS = small.encode(x_BD)
        residual_BD = x_BD - small.decode(codes_BS, x_BD)
        pre_BM = small.sae_in(x_BD) @ W_enc_DM + b_enc_M
        large_BM = large_cols.architecture.activate(large_cols, pre_BM)
        acts_BM = torch.cat([codes_BS[:, small_M], large_BM], dim=1)
        l0_G.index_add_(0, group_M, ((acts_BM != 0).to(torch.float64) * sign_M.double()).sum(0))
        signed_BM = acts_BM * sign_M * output_scale(small, x_BD)[:, None]
        token_N, member_N = signed_BM.nonzero(as_tuple=True)  # sorted by token
        key_N = token_N * n_groups + group_M[member_N]
        # Parts of whole tokens, so that no (token, group) pair is split between parts.
        n_batch = x_BD.shape[0]
        step = max(1, PAIR_ROWS * 4 * n_batch // max(token_N.numel(), 1))
        edges = torch.searchsorted(
            token_N, torch.arange(0, n_batch + step, step, device=device)
        ).tolist()
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if hi <= lo:
                continue
            keys_U, slot_N = key_N[lo:hi].unique(return_inverse=True)
            delta_UD = torch.zeros(keys_U.numel(), x_BD.shape[1], dtype=x_BD.dtype, device=device)
            values_N = signed_BM[token_N[lo:hi], member_N[lo:hi]]
            delta_UD.index_add_(0, slot_N, values_N[:, None] * W_MD[member_N[lo:hi]])
            token_U = keys_U // n_groups
            change_U = (delta_UD.double() ** 2).sum(1) - 2.0 * (
                residual_BD[token_U].double() * delta_UD.double()
            ).sum(1)
            sq_error_G.index_add_(0, keys_U % n_groups, change_U)
    return sq_error_G.cpu().numpy(), l0_G.cpu().numpy(), n_tokens


@with_stream_options
def swap_deltas(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    groups_small: Sequence[Sequence[int]],
    groups_large: Sequence[Sequence[int]],
    *,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """MSE and L0 change of ``small`` when each group's small features are swapped for large ones.

    Groups must be disjoint (swap groups are). Arguments as for :func:`delta_mse`.

    Returns
    -------
    pandas.DataFrame
        One row per group (index ``group``, in the order given): ``delta_mse``, ``delta_l0``.
    """
    if len(groups_small) != len(groups_large):
        raise SaegeoError(
            f"swap_deltas(): {len(groups_small)} small groups but {len(groups_large)} large groups"
        )
    batches = read(acts, options)
    return pair_swap_deltas(prepared_pair(small, large, batches, topk), groups_small, groups_large)


def pair_swap_deltas(
    pair: PreparedPair,
    groups_small: Sequence[Sequence[int]],
    groups_large: Sequence[Sequence[int]],
) -> pd.DataFrame:
    """:func:`swap_deltas` of a prepared pair."""
    small, large, kind, batches = pair
    index = pd.RangeIndex(len(groups_small), name="group")
    if not len(groups_small):
        return pd.DataFrame({"delta_mse": [], "delta_l0": []}, index=index)
    gs = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups_small]
    gl = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups_large]
    if kind == "additive":
        batches = batches.replace(desc="swap deltas", sharded=True)  # sums reduced below
        sq_error_G, l0_G, n_tokens = _swap_closed_form(small, large, batches, gs, gl)
        mse_G, l0_G = mean_over_ranks("swap_deltas", batches, n_tokens, sq_error_G, l0_G)
        return pd.DataFrame({"delta_mse": mse_G, "delta_l0": l0_G}, index=index)
    quiet = batches.replace(progress=False)
    base = evaluate_batches(small, quiet)
    rows = []
    with progress_bar(len(gs), "swap groups", batches.progress) as bar:
        for members_small, members_large in zip(gs, gl, strict=True):
            swapped = evaluate_batches(
                hybrid(small, large, add=members_large, remove=members_small), quiet
            )
            rows.append((swapped.mse - base.mse, swapped.l0 - base.l0))
            bar.update(1)
    return pd.DataFrame(rows, columns=["delta_mse", "delta_l0"], index=index)


@with_stream_options
def cumulative_mse(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    order: Sequence[int],
    *,
    points: int = 11,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """MSE and L0 of ``small`` with the first ``n`` features of ``order`` added together.

    Each of ``points`` evenly spaced ``n`` (0 and ``len(order)`` included) is a real
    evaluation of the hybrid SAE (:func:`saegeo.effects.hybrid.hybrid`): one pass over the
    activations.

    Returns
    -------
    pandas.DataFrame
        Columns ``n_added``, ``mse``, ``l0``, one row per point.
    """
    batches = read(acts, options)
    return pair_cumulative_mse(prepared_pair(small, large, batches, topk), order, points=points)


def pair_cumulative_mse(pair: PreparedPair, order: Sequence[int], *, points: int) -> pd.DataFrame:
    """:func:`cumulative_mse` of a prepared pair."""
    small, large, _, batches = pair
    order_arr = np.asarray(order, dtype=np.int64).reshape(-1)
    check_count("points", points, minimum=2)
    counts = np.unique(np.linspace(0, order_arr.size, points).round().astype(np.int64))
    rows = []
    with progress_bar(len(counts), "cumulative mse", batches.progress) as bar:
        for n in counts:
            sae = hybrid(small, large, add=order_arr[:n]) if n else small
            metrics = evaluate_batches(sae, batches.replace(progress=False))
            rows.append((int(n), metrics.mse, metrics.l0))
            bar.update(1)
    return pd.DataFrame(rows, columns=["n_added", "mse", "l0"])
