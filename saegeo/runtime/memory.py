"""Free memory, read in one place, and the checks made before a large allocation.

A function about to allocate much (decoder cosines, sparse codes, a harvest's forward pass, an
exact refit) estimates its largest allocations with a small pure function (``*_bytes`` here
and beside the refit, each tested) and refuses in one line, naming the size needed, what is
free and what lowers the need, rather than failing minutes later in the allocator or the
kernel's OOM killer: :func:`require_argument` where one argument lowers it (an
:class:`~saegeo.errors.ArgumentError`, shown with its flag on the command line), :func:`require`
where several options do (an :class:`~saegeo.errors.InsufficientMemoryError`). Estimates are
upper bounds within a small factor; where free memory cannot be read nothing is refused.

Examples
--------
>>> format_bytes(3 * 2**30)
'3.0 GiB'
>>> sparse_codes_bytes(n_tokens=1_000_000, l0=64.0)
1032000008
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from saegeo.errors import ArgumentError, InsufficientMemoryError

MEMINFO = Path("/proc/meminfo")
PROC_STATUS = Path("/proc/self/status")


def _proc_bytes(path: Path, key: str) -> int | None:
    """A ``kB`` field of ``/proc/meminfo`` or ``/proc/self/status`` in bytes; None if absent."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` may take; None where that cannot be read.

    CUDA: the device's free memory. CPU: the smaller of the memory the kernel reports as
    available (``MemAvailable``: free pages plus reclaimable caches; the free pages where it
    is missing) and what this process's address-space limit (``ulimit -v``, ``prlimit --as``)
    leaves above its present size.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free = _proc_bytes(MEMINFO, "MemAvailable")
    if free is None:
        try:
            free = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            free = None
    limits = [free]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - (_proc_bytes(PROC_STATUS, "VmSize") or 0)))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def physical_memory() -> int | None:
    """This machine's physical memory in bytes; None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``'1.5 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def require_argument(
    need: int, device: torch.device, *, what: str, argument: str, value: object, advice: str
) -> None:
    """Raise the ArgumentError of ``argument`` (currently ``value``) when ``what`` needs more
    than the free memory of ``device``; ``advice`` says what to do with the argument."""
    free = available_memory(device)
    if free is None or need <= free:
        return
    raise ArgumentError(
        argument,
        value,
        f"{what} needs about {format_bytes(need)} on {device}, but {format_bytes(free)} is "
        f"free; {advice}",
    )


def require(
    needed: int,
    what: str,
    lowers: dict[str, str | None],
    device: torch.device | str = "cpu",
    *,
    available: int | None = None,
) -> None:
    """Raise :class:`~saegeo.errors.InsufficientMemoryError` if ``needed`` bytes will not
    fit on ``device``.

    ``what`` names the computation and ``lowers`` the arguments that lower the need (see
    :class:`~saegeo.errors.InsufficientMemoryError`); ``available`` overrides
    :func:`available_memory`.
    Where the free memory cannot be read, nothing is refused.
    """
    free = available_memory(device) if available is None else available
    if free is not None and needed > free:
        raise InsufficientMemoryError(what, needed, free, lowers)


# ----------------------------------------------------------------------------- estimates


def decoder_cosine_bytes(
    n_small: int, n_large: int, d_in: int, k: int, tile: tuple[int, int], itemsize: int
) -> int:
    """Peak bytes of :func:`saegeo.decoder_cosine`: the unit small decoder (float32, and in
    the product's dtype of ``itemsize`` bytes), the large decoder moved to the device, one
    tile [rows, cols] with its unit large rows, and the running top-k values and indices."""
    rows, cols = tile
    small = n_small * d_in * (4 + (itemsize if itemsize != 4 else 0))
    large = n_large * d_in * 4
    tile_bytes = rows * cols * itemsize + 2 * rows * d_in * 4
    return small + large + tile_bytes + n_large * k * (itemsize + 8)


def sparse_codes_bytes(n_tokens: int, l0: float) -> int:
    """Peak bytes of :func:`saegeo.encode_codes`: float32 values and int32 column indices of
    ``n_tokens · l0`` non-zeros, twice over (the batches' blocks and the stacked matrix exist
    together), and the row pointers."""
    nonzeros = int(n_tokens * l0)
    return 2 * nonzeros * (4 + 4) + 8 * (n_tokens + 1)


def forward_bytes(
    batch: int, context: int, d_model: int, d_ff: int, n_heads: int, itemsize: int
) -> int:
    """Peak bytes of one transformer block's forward on ``batch`` contexts of ``context``
    tokens: a few residual-width tensors, the MLP's hidden layer (with its gate) and the
    attention scores of every head (as eager attention holds them)."""
    tokens = batch * context
    return itemsize * (tokens * (6 * d_model + 2 * d_ff) + batch * n_heads * context * context)


def cofiring_pairs_bytes(pairs: int) -> int:
    """Peak bytes of one group of co-firing pairs in :func:`saegeo.masked_cosine` and the
    co-firing scores: per pair, three sparse products' float64 values and int32 indices, the
    int64 child and parent of each entry, its float64 score and the keep mask."""
    return pairs * (3 * (8 + 4) + 2 * 8 + 8 + 1)
