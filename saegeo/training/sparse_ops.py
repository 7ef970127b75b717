"""Differentiable sparse operations for training TopK-style and matching-pursuit SAEs.

A TopK step needs the dense pre-activations only to choose which latents fire; after that
every product touches just the ``N = B·k`` selected (token, latent) entries. Entries are
given as ``rows`` [N] and ``cols`` [N] (int64), sorted by row and then column. Compared with
the dense forward and backward (five [B, D]×[D, F]-sized products) this leaves one, which is
what makes CPU training of wide SAEs practical. Each op here has a dense reference in the
tests.

Every sum over entries runs in a fixed order, so a training step is bit-for-bit reproducible on
CUDA as on a CPU: sums per latent go through :func:`column_sums` (entries sorted by latent,
then summed bag by bag), never through atomic ``index_add_``/``scatter_add_``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from saegeo.core.pursuit import matching_pursuit
from saegeo.core.pursuit_rules import StopRules, select_atoms


class Selection(NamedTuple):
    """Which (token, latent) entries fire, sorted by token then latent."""

    rows: torch.Tensor
    """Token index of each entry [N], int64, ascending."""
    cols: torch.Tensor
    """Latent index of each entry [N], int64, ascending within a token."""
    pre: torch.Tensor
    """Pre-activation value of each entry [N] (no gradient)."""


@torch.no_grad()
def select_topk(pre_BF: torch.Tensor, k: int) -> Selection:
    """The k largest pre-activations of each token (including non-positive ones)."""
    batch, width = pre_BF.shape
    top = pre_BF.topk(k, dim=-1, sorted=False)
    cols_BK, order_BK = top.indices.sort(dim=-1)
    values_BK = top.values.gather(-1, order_BK)
    rows = torch.arange(batch, device=pre_BF.device).repeat_interleave(k)
    return Selection(rows=rows, cols=cols_BK.reshape(-1), pre=values_BK.reshape(-1))


SAMPLE = 1 << 16
"""How many pre-activations :func:`select_batch_topk` samples to place its floor."""


@torch.no_grad()
def select_batch_topk(pre_BF: torch.Tensor, k: float, *, sample: int = SAMPLE) -> Selection:
    """The ``int(k·B)`` largest positive pre-activations over the whole batch.

    Among entries equal to the smallest chosen value, the first in (token, latent) order are
    chosen. A top-k over B·F values, or one per token, is slow on CPUs. Instead ``sample``
    entries spread evenly over the batch place a floor (:func:`_floor`) a little below the
    budget-th largest value; the entries that reach it, typically a few percent more than the
    budget, are gathered and the exact cut is made among them. Where the floor proves too
    high, every positive entry is a candidate, so the choice is exact either way.
    """
    batch, width = pre_BF.shape
    budget = int(k * batch)
    if budget <= 0:
        none = torch.empty(0, dtype=torch.long, device=pre_BF.device)
        return Selection(rows=none, cols=none, pre=pre_BF.new_empty(0))
    flat_N = pre_BF.reshape(-1)
    floor = _floor(flat_N, budget, width, sample)
    index_C = (flat_N >= floor if floor > 0 else flat_N > 0).nonzero().squeeze(1)
    if floor > 0 and index_C.numel() < budget:
        index_C = (flat_N > 0).nonzero().squeeze(1)
    values_C = flat_N[index_C]
    if values_C.numel() > budget:
        cut = values_C.kthvalue(values_C.numel() - budget + 1).values
        above_C = values_C > cut
        tied_C = values_C == cut
        keep_C = above_C | (tied_C & (tied_C.cumsum(0) <= budget - above_C.sum()))
        index_C, values_C = index_C[keep_C], values_C[keep_C]
    return Selection(rows=index_C // width, cols=index_C % width, pre=values_C)


def _floor(flat_N: torch.Tensor, budget: int, width: int, sample: int) -> float:
    """A value that at least ``budget`` entries of ``flat_N`` reach, with high probability,
    and not many more; 0.0 where a sample cannot place one (all positive entries are then
    candidates).

    The sample takes every ``stride``-th entry, the stride coprime to ``width`` so that every
    latent is sampled alike. Of its ``m`` entries about ``e = budget·m/N`` are in the
    budget; the floor is the sample's value at rank ``e + 4·√e + 1`` from the top, four
    standard deviations of that count (and one entry) past it.
    """
    n = flat_N.numel()
    stride = max(1, n // max(1, sample))
    while math.gcd(stride, width) > 1:
        stride += 1
    part_M = flat_N[::stride]
    m = part_M.numel()
    expected = budget * m / n
    rank = math.ceil(expected + 4 * math.sqrt(expected) + 1)
    if rank > m:
        return 0.0
    return float(part_M.kthvalue(m - rank + 1).values)


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]):
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # CSR support is marked beta
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, values, shape)


class ColumnBags(NamedTuple):
    """Entries grouped by latent: ``order`` sorts them by column (stably), ``offsets`` [n_cols]
    is where each column's bag starts in that order."""

    order: torch.Tensor
    offsets: torch.Tensor


def column_bags(cols: torch.Tensor, n_cols: int) -> ColumnBags:
    """The entries of each column, for :func:`column_sums`."""
    order = torch.argsort(cols, stable=True)
    return ColumnBags(order, _offsets(cols[order], n_cols))


def column_sums(
    bags: ColumnBags, rows: torch.Tensor, values: torch.Tensor, dense_BD: torch.Tensor
) -> torch.Tensor:
    """Aᵀ @ dense [n_cols, D] for the sparse A [n_rows, n_cols] given by its entries.

    Row ``j`` is ``Σ values[n] · dense[rows[n]]`` over column j's entries, summed in entry order
    by ``embedding_bag``'s forward pass, which has no atomics on any device.
    """
    return F.embedding_bag(
        rows[bags.order],
        dense_BD,
        bags.offsets,
        mode="sum",
        per_sample_weights=values[bags.order],
    )


def _sampled_dot(
    rows: torch.Tensor, cols: torch.Tensor, left_BD: torch.Tensor, right_FD: torch.Tensor
) -> torch.Tensor:
    """``<left[rows[n]], right[cols[n]]>`` for every entry n [N]."""
    if left_BD.device.type == "cpu":
        pattern = _csr(
            rows,
            cols,
            torch.ones_like(rows, dtype=left_BD.dtype),
            (left_BD.shape[0], right_FD.shape[0]),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse.sampled_addmm(pattern, left_BD, right_FD.T, beta=0.0).values()
    out = torch.empty(rows.numel(), dtype=left_BD.dtype, device=left_BD.device)
    chunk = max(1, (1 << 24) // max(1, left_BD.shape[1]))
    for start in range(0, rows.numel(), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = (left_BD[r] * right_FD[c]).sum(-1)
    return out


@torch.no_grad()
def exact_values(
    sel: Selection, x_BD: torch.Tensor, W_DF: torch.Tensor, b_F: torch.Tensor
) -> Selection:
    """``sel`` with its pre-activations recomputed as ``<x[rows], W[:, cols]> + b[cols]`` in
    the precision of ``x`` and ``W``: O(N·D), for selections made from low-precision products."""
    pre = _sampled_dot(sel.rows, sel.cols, x_BD, W_DF.T) + b_F[sel.cols]
    return sel._replace(pre=pre)


class _SampledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_BD, W_DF, b_F, rows, cols, values):  # type: ignore[override]
        ctx.save_for_backward(x_BD, W_DF, rows, cols)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_N):  # type: ignore[override]
        x_BD, W_DF, rows, cols = ctx.saved_tensors
        width = W_DF.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                cols,
                W_DF.T.contiguous(),
                _offsets(rows, x_BD.shape[0]),
                mode="sum",
                per_sample_weights=grad_N,
            )
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            bags = column_bags(cols, width)
        if ctx.needs_input_grad[1]:
            grad_W = column_sums(bags, rows, grad_N, x_BD).T
        if ctx.needs_input_grad[2]:
            ones_N1 = grad_N.new_ones(grad_N.shape[0], 1)
            grad_b = column_sums(bags, torch.arange(len(rows), device=rows.device), grad_N, ones_N1)
            grad_b = grad_b[:, 0]
        return grad_x, grad_W, grad_b, None, None, None


def sampled_linear(
    x_BD: torch.Tensor,
    W_DF: torch.Tensor,
    b_F: torch.Tensor,
    sel: Selection,
) -> torch.Tensor:
    """Entries ``(x @ W + b)[rows, cols]`` [N] with gradients to x, W and b.

    The forward pass returns ``sel.pre`` (already computed without gradient while selecting);
    the backward pass costs O(N·D).
    """
    return _SampledLinear.apply(x_BD, W_DF, b_F, sel.rows, sel.cols, sel.pre)


def _offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Where each row's entries start [n_rows], for ascending ``rows``.

    On CUDA a binary search: ``bincount`` there waits for the GPU to size its output. On a
    CPU the counts, five times faster than the search.
    """
    if rows.device.type != "cpu":
        return torch.searchsorted(rows, torch.arange(n_rows, device=rows.device, dtype=rows.dtype))
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rows, cols, values, W_FD, n_rows):  # type: ignore[override]
        ctx.save_for_backward(rows, cols, values, W_FD)
        ctx.n_rows = n_rows
        return F.embedding_bag(
            cols, W_FD, _offsets(rows, n_rows), mode="sum", per_sample_weights=values
        )

    @staticmethod
    def backward(ctx: Any, grad_RD):  # type: ignore[override]
        rows, cols, values, W_FD = ctx.saved_tensors
        grad_values = grad_W = None
        grad_RD = grad_RD.contiguous()
        if ctx.needs_input_grad[2]:
            grad_values = _sampled_dot(rows, cols, grad_RD, W_FD)
        if ctx.needs_input_grad[3]:
            grad_W = column_sums(column_bags(cols, W_FD.shape[0]), rows, values, grad_RD)
        return None, None, grad_values, grad_W, None


def sparse_decode(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, W_FD: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """``A @ W`` [n_rows, D] for the sparse A given by its entries (rows ascending).

    Gradients flow to ``values`` and ``W_FD``; no [N, D] tensor is ever formed.
    """
    return _SparseDecode.apply(rows, cols, values, W_FD, n_rows)


def sparse_prefix_reconstructions(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    W_dec_FD: torch.Tensor,
    b_dec_D: torch.Tensor,
    bounds_P1: torch.Tensor,
    n_rows: int,
) -> torch.Tensor:
    """Prefix reconstructions [P, B, D] from sparse codes; see ``losses.prefix_reconstructions``.

    Entry n belongs to group ``j`` where ``bounds[j] <= cols[n] < bounds[j+1]``; the groups are
    decoded together as P·B bags and summed cumulatively.
    """
    n_groups = bounds_P1.numel() - 1
    group = torch.bucketize(cols, bounds_P1[1:-1].to(cols.device), right=True)
    bag = group * n_rows + rows
    order = torch.argsort(bag, stable=True)
    decoded = sparse_decode(bag[order], cols[order], values[order], W_dec_FD, n_groups * n_rows)
    return decoded.reshape(n_groups, n_rows, -1).cumsum(dim=0) + b_dec_D


class _PursuitCoefficients(torch.autograd.Function):
    """Coefficients of a replayed pursuit from its scores; backward runs the recursion back.

    Step t picked support slot ``p_t`` with score ``u_t = c[p_t] - Σ_{s<t} v_s·G[p_s, p_t]``
    and added ``v_t = relu(u_t)·live_t`` to it. The backward pass walks the steps in reverse,
    so no per-step [B, K, K] gradient is ever formed.
    """

    @staticmethod
    def forward(ctx: Any, scores_BK, gram_BKK, pick_BT, live_BT, u_BT, v_BT, coef_BK):  # type: ignore[override]
        ctx.save_for_backward(gram_BKK, pick_BT, live_BT, u_BT, v_BT)
        return coef_BK.clone()

    @staticmethod
    def backward(ctx: Any, grad_coef_BK):  # type: ignore[override]
        gram_BKK, pick_BT, live_BT, u_BT, v_BT = ctx.saved_tensors
        batch, n_slots = grad_coef_BK.shape
        steps = pick_BT.shape[1]
        arange_B = torch.arange(batch, device=pick_BT.device)
        # gram_pp[b, s, t] = G[b, p_s, p_t]
        gram_pp_BTT = gram_BKK[arange_B[:, None, None], pick_BT[:, :, None], pick_BT[:, None, :]]
        direct_BT = grad_coef_BK.gather(1, pick_BT)
        gate_BT = (live_BT & (u_BT > 0)).to(grad_coef_BK.dtype)
        ubar_BT = torch.zeros_like(direct_BT)
        for t in range(steps - 1, -1, -1):
            later = (ubar_BT[:, t + 1 :] * gram_pp_BTT[:, t, t + 1 :]).sum(1)
            ubar_BT[:, t] = (direct_BT[:, t] - later) * gate_BT[:, t]
        # Steps are gathered onto their slots by products with the one-hot picks [B, T, K]
        # rather than scatter-adds, whose sums have no fixed order on CUDA.
        picked_BTK = F.one_hot(pick_BT, n_slots).to(grad_coef_BK.dtype)
        grad_scores = grad_gram = None
        if ctx.needs_input_grad[0]:
            grad_scores = torch.bmm(ubar_BT[:, None, :], picked_BTK)[:, 0]
        if ctx.needs_input_grad[1]:
            earlier_TT = torch.ones(steps, steps, device=pick_BT.device).triu(1)
            pair_BTT = -v_BT[:, :, None] * ubar_BT[:, None, :] * earlier_TT
            grad_gram = picked_BTK.transpose(1, 2) @ pair_BTT @ picked_BTK
        return grad_scores, grad_gram, None, None, None, None, None


def pursuit_with_grad(
    x_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    *,
    residual_threshold: float,
    max_iterations: int | None,
    stop_on_duplicate_support: bool,
) -> torch.Tensor:
    """Matching-pursuit codes [B, F] with gradients to ``x_BD`` and ``W_dec_FD``.

    The support comes from :func:`saegeo.core.pursuit.matching_pursuit` without gradient. The
    pursuit is then replayed over each token's own support (K latents) only: at every step
    the latent picked over the whole dictionary lies in that support, so the replay makes the
    same choices and computes the same coefficients as SAELens's training pass, whose
    choices are also made without gradient. The replay tracks the scores ``<r, d_k>``
    through the support's Gram matrix (``s_k -= v·<d_j, d_k>``), so a step costs O(B·K), and
    gradients flow back through the same recursion to the scores ``<x, d_k>`` and the Gram
    matrix, hence to ``x`` and the decoder rows.
    """
    batch, d_in = x_BD.shape
    with torch.no_grad():
        codes_BF = matching_pursuit(
            x_BD.detach(),
            W_dec_FD.detach(),
            residual_threshold=residual_threshold,
            max_iterations=max_iterations,
            stop_on_duplicate_support=stop_on_duplicate_support,
        )
        support_BF = codes_BF != 0
        n_support = max(1, int(support_BF.sum(1).max()))
        valid_BK, idx_BK = support_BF.to(x_BD.dtype).topk(n_support, dim=1)
        valid_BK = valid_BK.bool()
    local_BKD = F.embedding(idx_BK, W_dec_FD)
    scores_BK = torch.einsum("bd,bkd->bk", x_BD, local_BKD)
    gram_BKK = local_BKD @ local_BKD.transpose(1, 2)

    with torch.no_grad():
        rules = StopRules.of(residual_threshold, max_iterations, stop_on_duplicate_support, d_in)
        arange_B = torch.arange(batch, device=x_BD.device)
        current_BK = scores_BK.detach().clone()
        gram_nograd_BKK = gram_BKK.detach()
        coef_BK = torch.zeros_like(current_BK)
        done_B = torch.zeros(batch, dtype=torch.bool, device=x_BD.device)
        # Squared residual norm, for the stop rule, updated alongside the scores.
        norm2_B = x_BD.detach().double().pow(2).sum(-1)
        picks, lives, us, vs = [], [], [], []
        for _ in range(rules.iterations):
            # The same choice as over the whole dictionary: slots outside the support never
            # carry the maximum.
            pick_B, _ = select_atoms(current_BK.masked_fill(~valid_BK, -math.inf))
            u_B = current_BK[arange_B, pick_B]
            live_B = valid_BK[arange_B, pick_B] & ~done_B
            v_B = u_B.relu() * live_B
            prior_B = coef_BK[arange_B, pick_B]
            coef_BK[arange_B, pick_B] += v_B
            row_BK = gram_nograd_BKK[arange_B, pick_B]
            current_BK -= v_B[:, None] * row_BK
            norm2_B = (
                norm2_B
                - 2 * v_B.double() * u_B.double()
                + v_B.double().pow(2) * row_BK[arange_B, pick_B].double()
            ).clamp_min(0)
            picks.append(pick_B)
            lives.append(live_B)
            us.append(u_B)
            vs.append(v_B)
            done_B |= rules.finished(v_B, prior_B, norm2_B.sqrt())
            if bool(done_B.all()):
                break
    coef_BK = _PursuitCoefficients.apply(
        scores_BK,
        gram_BKK,
        torch.stack(picks, 1),
        torch.stack(lives, 1),
        torch.stack(us, 1),
        torch.stack(vs, 1),
        coef_BK,
    )
    out_BF = x_BD.new_zeros(batch, W_dec_FD.shape[0])
    return out_BF.scatter_add(1, idx_BK, coef_BK * valid_BK)
