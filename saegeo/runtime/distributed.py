"""Ranks of a ``torch.distributed`` process group: shares of the tokens and the reductions.

saegeo never starts a process group: the caller does (``torch.distributed.init_process_group``)
or ``torchrun`` does for the command line (:func:`init_from_env`). Without an initialised
group, every function here is the single-process no-op: rank 0 of 1, the whole token range,
reductions that return their input.

Under a group of ``W`` ranks, every statistic that is a sum over tokens is computed on a
disjoint, contiguous share of the tokens per rank (:func:`shard`) and summed with one
collective. Sums are reduced in float64; :class:`~saegeo.effects.metrics.Moments` are
gathered and merged in rank order (:func:`merge_moments`), so every rank ends with the same
value, equal to the single-process one up to float64 rounding.

Every rank calls a function with the same arguments (the same activations, SAEs and codes);
the function splits the work itself. What is split, and what is combined:

- token sums (``evaluate``, ``fixed_code_metrics``, ``accumulate_stats``, ``delta_mse``,
  ``swap_deltas``): float64 all-reduce of the sums, of the size of the result ([F+1, F+1]
  and [F+1, D] for the exact refit, [F] or [L] otherwise);
- codes (``encode_codes``): each rank encodes its tokens and the rows are gathered
  (:func:`gather_rows`), so every rank holds the whole [N, F] sparse matrix, 8 bytes per
  non-zero (float32 value, int32 column) plus 8 per row: N·L0 values, as one process holds;
- co-activations (``masked_cosine``): from those codes, each rank scores a contiguous share of
  the child groups (each group's products stay within ``max_pairs`` entries) and the kept
  entries are gathered; no rank builds a dense [P, C] matrix, and each holds the result once;
- decoder cosine: each rank takes a contiguous share of the larger SAE's rows; the top-k
  ([L, k]) or the kept pairs are gathered;
- training (``train_sae``): gradients averaged over ranks each step (:func:`average_gradients_`);
- harvesting (``harvest``): whole shards of the store, dealt out in turn; each rank writes its
  own and rank 0 lists every round of them in ``meta.json`` (the entries are gathered).

Calibrations that are not sums (a TopK SAE's JumpReLU threshold) read every token on every rank.

**Errors.** Each reduction first exchanges one integer, the number of ranks that have
failed (:func:`check_peers`). A rank that fails outside a reduction calls
:func:`agree_on_error` with its message; its peers, waiting in their next reduction (or in
their own :func:`agree_on_error` at the end of a command), see the count, gather the
messages and raise :class:`PeerError` with the message of the lowest failing rank. So every
rank stops with the same one-line message, and none is left waiting in a collective.

Examples
--------
>>> shard(10)
(0, 10)
>>> import torch
>>> all_reduce_(torch.ones(2)).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from saegeo.errors import SaegeoError

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
"""Set by ``torchrun`` for every process it starts."""


class PeerError(SaegeoError):
    """Another rank failed; the message is that rank's (the lowest failing rank's)."""


def is_distributed() -> bool:
    """Whether a process group is initialised (and so statistics are sharded and reduced)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0: the one that writes outputs and shows progress."""
    return rank() == 0


def span(n: int, part: int, parts: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``part`` when ``n`` rows are cut into ``parts``
    contiguous parts whose sizes differ by at most one."""
    return n * part // parts, n * (part + 1) // parts


def shard(n_tokens: int) -> tuple[int, int]:
    """This rank's tokens ``[start, stop)`` of ``n_tokens``: contiguous, disjoint, covering."""
    return span(n_tokens, rank(), world_size())


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """Where a collective needs ``tensor``: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor.device.type != "cpu" else tensor.device


def check_peers() -> None:
    """Exchange this rank's status (ok) with its peers; raise :class:`PeerError` if any failed.

    Every reduction calls this first; see the module docstring.
    """
    if not is_distributed():
        return
    failed = torch.zeros(1, dtype=torch.int64)
    failed = failed.to(_comm_device(failed))
    dist.all_reduce(failed)
    if int(failed.item()) > 0:
        raise PeerError(_first_message(None))


def _first_message(message: str | None) -> str:
    messages: list[str | None] = [None] * world_size()
    dist.all_gather_object(messages, message)
    return next(m for m in messages if m is not None)


def agree_on_error(message: str | None) -> str | None:
    """Every rank's verdict: the lowest failing rank's message, or None if all succeeded.

    Call it on every rank at the end of a piece of work, with this rank's error message (or
    None). A rank whose peers are waiting inside a reduction releases them (they raise
    :class:`PeerError`). Without a process group it returns ``message``.
    """
    if not is_distributed():
        return message
    failed = torch.tensor([0 if message is None else 1], dtype=torch.int64)
    failed = failed.to(_comm_device(failed))
    dist.all_reduce(failed)
    if int(failed.item()) == 0:
        return None
    return _first_message(message)


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (integers exactly, floats in float64)."""
    if not is_distributed():
        return tensor
    check_peers()
    wide = torch.int64 if not tensor.is_floating_point() else torch.float64
    buffer = tensor.to(device=_comm_device(tensor), dtype=wide)
    dist.all_reduce(buffer)
    tensor.copy_(buffer.to(device=tensor.device, dtype=tensor.dtype))
    return tensor


def all_reduce_sums(*values: float) -> tuple[float, ...]:
    """Python numbers summed over ranks (in float64; integers come back as floats)."""
    if not is_distributed():
        return tuple(float(v) for v in values)
    summed = all_reduce_(torch.tensor([float(v) for v in values], dtype=torch.float64))
    return tuple(summed.tolist())


def average_gradients_(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over ranks, in one all-reduce (what
    ``DistributedDataParallel`` does for a module); a missing gradient counts as zeros."""
    if not is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce_(torch.cat([g.reshape(-1) for g in grads])) / world_size()
    for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = part.view_as(p).to(p.dtype)


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    check_peers()
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def merge_moments(moments: Any) -> Any:
    """:class:`~saegeo.effects.metrics.Moments` of every rank's tokens, merged in rank order.

    Each rank sends its count, mean [D] and m2 (D + 2 numbers); every rank gets the same result.
    """
    if not is_distributed():
        return moments
    device = moments.mean_D.device
    states = all_gather((moments.n, moments.mean_D.cpu(), moments.m2))
    merged = type(moments)(moments.mean_D.shape[0], device)
    for n, mean_D, m2 in states:
        part = type(moments)(mean_D.shape[0], device)
        part.n, part.mean_D, part.m2 = n, mean_D.to(device), m2
        merged = merged.merge(part)
    return merged


def gather_rows(block: Any) -> Any:
    """Every rank's rows stacked in rank order (a ``scipy.sparse`` matrix, e.g. codes).

    Each rank ends with the whole matrix: its bytes are those of the single-process result.
    """
    if not is_distributed():
        return block
    import scipy.sparse as sp

    parts = all_gather(block.tocsr())
    return sp.vstack(parts, format="csr", dtype=block.dtype)


def split_items(n_items: int) -> range:
    """This rank's share of ``n_items`` independent work items (contiguous)."""
    start, stop = shard(n_items)
    return range(start, stop)


def concat_ranks(*tensors: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, ...]:
    """Every rank's tensors, each concatenated in rank order along ``dim`` (sizes may
    differ), on the device of the inputs."""
    if not is_distributed():
        return tensors
    gathered = all_gather([t.cpu() for t in tensors])
    return tuple(
        torch.cat([g[i] for g in gathered], dim=dim).to(t.device) for i, t in enumerate(tensors)
    )


def env_has_torchrun() -> bool:
    """Whether ``torchrun``'s variables are set (and more than one rank is asked for)."""
    return all(name in os.environ for name in ENV_VARS)


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Start the process group ``torchrun`` describes: NCCL when every rank of a host has a
    GPU of its own, else gloo (ranks then share the host's devices).

    For the command line only; library functions never call it. Returns whether it started
    one (False if the variables are absent or a group already exists).
    """
    if is_distributed() or not env_has_torchrun() or not dist.is_available():
        return False
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    own_gpu = torch.cuda.is_available() and local_ranks <= torch.cuda.device_count()
    backend = "nccl" if own_gpu and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def destroy() -> None:
    """End the process group (the command line's, after every rank has agreed on the outcome).

    The ranks first wait for each other, so that none leaves the group while another may still
    be finishing the last collective with it.
    """
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()
