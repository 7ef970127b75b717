"""Free memory, read in one place, and the check made before a large allocation.

A function about to allocate much (decoder cosines, sparse codes, a harvest's forward pass)
estimates its largest allocations with a small pure function (``*_bytes`` below, each
tested), and :func:`require` refuses in one line, naming the size needed, what is free and the
argument that lowers it, rather than failing minutes later in the allocator. Estimates are
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
from pathlib import Path

import torch

from saegeo.errors import ArgumentError

MEMINFO = Path("/proc/meminfo")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: CUDA's free memory, and on a CPU the
    kernel's ``MemAvailable`` (free pages plus reclaimable caches), else the free pages; None
    where neither can be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


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


def require(
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
