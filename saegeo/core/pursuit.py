"""Matching-pursuit encoding with exactly SAELens's selection, coefficients and stop rules.

SAELens (``sae_lens.saes.matching_pursuit_sae._encode_matching_pursuit``) recomputes every
correlation ``r W_decᵀ`` at every iteration: O(d_in · width) per row and iteration.
:func:`matching_pursuit` returns the same codes by two faster routes, in batches of rows that
bound memory (split across threads on a CPU):

``gram``
    Updates the correlations with the Gram matrix ``W_dec W_decᵀ`` instead of recomputing
    them, O(width) per row and iteration, with near-ties settled by exact correlations
    (:mod:`saegeo.core.gram_route`; on CUDA two fused kernels an iteration).
``direct``
    SAELens's recomputation, for dictionaries whose Gram matrix does not fit in memory, but
    only over the rows still running.

Both drop finished rows from the working set. Rows are independent in SAELens (a row's
``done`` flag only masks its own updates), so each row runs exactly SAELens's iterations up to
and including the one in which it finishes, and then keeps its codes. The rules of an
iteration are :mod:`saegeo.core.pursuit_rules`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Literal

import torch

from saegeo.config import check_choice, check_count
from saegeo.core import gram_route, gram_update
from saegeo.core.grad_mode import in_callers_mode
from saegeo.core.pursuit_rules import StopRules, pursue
from saegeo.errors import SaegeoError, ShapeError
from saegeo.runtime.devices import resolve_device
from saegeo.runtime.memory import available_memory

Method = Literal["auto", "gram", "direct"]
METHODS: tuple[str, ...] = ("auto", "gram", "direct")

# The Gram route pays off once recomputing a row of correlations (2 · d_in · width flops) costs
# more than the few memory passes over width that updating it takes.
GRAM_MIN_D_IN = 64
# Bytes of correlations per batch of rows (bounds memory). On CUDA a batch may take up to
# CUDA_BATCH_BYTES, within an eighth of the free memory: each iteration costs a few launches
# whatever the batch, so larger batches mean fewer of them.
BATCH_BYTES = 256 * 2**20
CUDA_BATCH_BYTES = 2**30
# Fewest rows per thread for which a CPU pursuit is split across threads.
MIN_SHARE_ROWS = 64


@torch.no_grad()
def matching_pursuit(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    *,
    residual_threshold: float = 1e-2,
    max_iterations: int | None = None,
    stop_on_duplicate_support: bool = True,
    method: Method = "auto",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    gram_FF: torch.Tensor | None = None,
) -> torch.Tensor:
    """Codes [batch, width] for centred inputs [batch, d_in] over dictionary W_dec [width, d_in].

    Each iteration picks ``j = argmax relu(r W_decᵀ)`` (index 0 when no correlation is
    positive), adds ``relu(<r, d_j>)`` to latent ``j`` and subtracts that multiple of ``d_j``
    from the residual. A row stops after ``max_iterations`` (default d_in), once its residual
    norm is below ``residual_threshold`` (when > 0), or when its support did not change
    (``stop_on_duplicate_support``). The result equals SAELens's ``_encode_matching_pursuit``:
    same supports, values to float tolerance.

    Parameters
    ----------
    residual_BD
        centred (and normalised) inputs [batch, d_in]; further leading dimensions
        are flattened and restored, as in SAELens.
    W_dec_FD
        dictionary [width, d_in]; rows need not have unit norm.
    residual_threshold
        stop a row once ``||r|| < residual_threshold``; 0 or less disables.
    max_iterations
        iteration cap per row; None means d_in.
    stop_on_duplicate_support
        stop a row whose support did not grow in an iteration.
    method
        ``gram`` (update correlations with ``W_dec W_decᵀ``), ``direct`` (recompute
        them) or ``auto``, which picks ``gram`` when all of these hold and ``direct``
        otherwise: the dtype is float32 or float64; d_in >= 64; the Gram matrix and two
        batches of correlations fit in half the free memory of the device; and
        width <= batch · max_iterations / 4, so that building the Gram matrix costs at most
        a quarter of recomputing correlations for every row and iteration.
    batch_size
        rows encoded together; None keeps each batch's correlations near 256 MB (on CUDA up
        to 1 GiB, within an eighth of the free memory).
    device
        where to compute; None keeps ``residual_BD``'s device, ``"auto"`` means CUDA
        when present. The codes come back on ``residual_BD``'s device.
    gram_FF
        a precomputed ``W_dec W_decᵀ`` [width, width] to reuse across calls.

    Returns
    -------
    torch.Tensor
        Codes [batch, width] in ``residual_BD``'s dtype.

    Examples
    --------
    >>> import torch
    >>> W_dec_FD = torch.eye(3)
    >>> matching_pursuit(torch.tensor([[2.0, -1.0, 0.5]]), W_dec_FD, residual_threshold=0)
    tensor([[2.0000, 0.0000, 0.5000]])
    """
    _check_inputs(residual_BD, W_dec_FD, method, max_iterations, batch_size)
    out_device = residual_BD.device
    out_shape = (*residual_BD.shape[:-1], W_dec_FD.shape[0])
    compute_device = _resolve_device(device, residual_BD.device)
    residual_BD = residual_BD.reshape(-1, residual_BD.shape[-1]).to(compute_device)
    W_dec_FD = W_dec_FD.to(compute_device)
    batch, d_in = residual_BD.shape
    width = W_dec_FD.shape[0]
    iterations = d_in if max_iterations is None else max_iterations
    if method == "auto":
        method = choose_method(
            batch,
            width,
            d_in,
            iterations,
            W_dec_FD.dtype,
            compute_device,
            gram_given=gram_FF is not None,
        )
    if batch_size is None:
        batch_size = default_batch_size(width, W_dec_FD.dtype, compute_device)

    acts_BF = torch.zeros(batch, width, dtype=residual_BD.dtype, device=compute_device)
    if iterations == 0 or batch == 0:
        return acts_BF.to(out_device).reshape(out_shape)
    rules = StopRules.of(residual_threshold, max_iterations, stop_on_duplicate_support, d_in)
    if method == "gram" and gram_update.fused_iteration(compute_device, W_dec_FD.dtype):
        W_dec_FD = W_dec_FD.contiguous()  # as the kernels read it
        gram_FP = gram_route.padded_gram(W_dec_FD, gram_FF)

        def run(rows: slice) -> None:
            gram_route.pursue_gram_fused(residual_BD[rows], W_dec_FD, gram_FP, acts_BF[rows], rules)

    elif method == "gram":
        gram_FP = gram_route.padded_gram(W_dec_FD, gram_FF)
        tile_rows = gram_route.tile_rows(gram_FP.shape[1], W_dec_FD.dtype, compute_device)

        def run(rows: slice) -> None:
            gram_route.pursue_gram(
                residual_BD[rows], W_dec_FD, gram_FP, acts_BF[rows], rules, tile_rows
            )

    else:

        def run(rows: slice) -> None:
            _pursue_direct(residual_BD[rows], W_dec_FD, acts_BF[rows], rules)

    _run_batches(run, batch, batch_size, compute_device)
    return acts_BF.to(out_device).reshape(out_shape)


def _run_batches(
    run: Callable[[slice], None], batch: int, batch_size: int, device: torch.device
) -> None:
    """``run`` over consecutive row ranges of at most ``batch_size`` rows covering ``batch``.

    On a CPU with several intra-op threads, the rows are split into one contiguous share per
    thread, each pursued by its own Python thread with one intra-op thread (the setting is
    restored afterwards). A pursuit is hundreds of medium-sized operations per batch: split
    across OpenMP threads, each one ends at a barrier, and on a CPU shared with other
    processes the threads spin there for cores that are busy elsewhere. Whole shares of rows
    need no barrier; rows are independent, so the codes are the same either way.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    shares = max(1, min(threads, batch // MIN_SHARE_ROWS))
    if shares == 1:
        for start in range(0, batch, batch_size):
            run(slice(start, min(start + batch_size, batch)))
        return
    bounds = [batch * i // shares for i in range(shares + 1)]
    per_share = max(1, batch_size // shares)  # the same memory as one batch in all

    @in_callers_mode  # worker threads start outside the caller's inference mode
    def run_share(lo: int, hi: int) -> None:
        for start in range(lo, hi, per_share):
            run(slice(start, min(start + per_share, hi)))

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(shares) as pool:
            for future in [pool.submit(run_share, lo, hi) for lo, hi in pairwise(bounds)]:
                future.result()
    finally:
        torch.set_num_threads(threads)


def choose_method(
    batch: int,
    width: int,
    d_in: int,
    iterations: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    gram_given: bool = False,
) -> Literal["gram", "direct"]:
    """The route ``method="auto"`` takes; the rule is documented in :func:`matching_pursuit`."""
    if dtype not in (torch.float32, torch.float64) or d_in < GRAM_MIN_D_IN:
        return "direct"
    if not gram_given and width > batch * iterations / 4:
        return "direct"
    itemsize = torch.empty((), dtype=dtype).element_size()
    gram_bytes = 0 if gram_given else width * gram_route.padded(width) * itemsize
    rows = min(batch, default_batch_size(width, dtype, device))
    work_bytes = 2 * rows * gram_route.padded(width) * itemsize
    free = available_memory(device)
    if free is not None and gram_bytes + work_bytes > free / 2:
        return "direct"
    return "gram"


def default_batch_size(width: int, dtype: torch.dtype, device: torch.device | None = None) -> int:
    """Rows per batch so that a batch's correlations [batch, width] take about 256 MB (on
    CUDA up to 1 GiB, within an eighth of the free memory)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    budget = BATCH_BYTES
    if device is not None and device.type == "cuda":
        free = available_memory(device) or 0
        budget = max(BATCH_BYTES, min(CUDA_BATCH_BYTES, free // 8))
    return max(1, budget // (gram_route.padded(width) * itemsize))


def _check_inputs(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    method: str,
    max_iterations: int | None,
    batch_size: int | None,
) -> None:
    if W_dec_FD.ndim != 2:
        raise ShapeError(f"W_dec must be 2-D [width, d_in], got shape {tuple(W_dec_FD.shape)}")
    if residual_BD.ndim < 1 or residual_BD.shape[-1] != W_dec_FD.shape[1]:
        raise ShapeError(
            f"residual must end in d_in = {W_dec_FD.shape[1]} (W_dec's columns), "
            f"got shape {tuple(residual_BD.shape)}"
        )
    if residual_BD.dtype != W_dec_FD.dtype:
        raise SaegeoError(
            f"residual dtype {residual_BD.dtype} differs from W_dec dtype {W_dec_FD.dtype}; "
            "cast one to the other"
        )
    check_choice("method", method, METHODS)
    check_count("max_iterations", max_iterations, minimum=0, optional=True)
    check_count("batch_size", batch_size, optional=True)


def _resolve_device(device: str | torch.device | None, default: torch.device) -> torch.device:
    return default if device is None else resolve_device(device)


def _pursue_direct(
    residual_BD: torch.Tensor,
    W_dec_FD: torch.Tensor,
    acts_BF: torch.Tensor,
    rules: StopRules,
) -> None:
    """SAELens's recomputation of every correlation, over the rows still running."""
    pursue(
        residual_BD,
        lambda residual_RD, _: residual_RD @ W_dec_FD.T,
        lambda idx_R, _: W_dec_FD.index_select(0, idx_R),
        acts_BF,
        rules,
    )
