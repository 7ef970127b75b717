"""How much memory a computation may take: the device's free memory within this process's limits.

Large allocations are estimated before they are made and refused with one line
(:class:`saegeo.errors.InsufficientMemoryError`) where they would not fit, instead of an
allocator error after minutes of work, or the kernel's OOM killer.
"""

from __future__ import annotations

import resource

import torch

from saegeo.errors import InsufficientMemoryError


def _meminfo_bytes(key: str, path: str = "/proc/meminfo") -> int | None:
    """A ``kB`` field of ``/proc/meminfo`` (or ``/proc/self/status``) in bytes; None if absent."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` may take; None where that cannot be read.

    CUDA: the device's free memory. CPU: the smaller of the memory the kernel reports as
    available (``MemAvailable``) and what this process's address-space limit (``ulimit -v``,
    ``prlimit --as``) leaves above its present size.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    limits = [_meminfo_bytes("MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = _meminfo_bytes("VmSize", "/proc/self/status") or 0
        limits.append(max(0, soft - size))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


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
    :func:`available_bytes`.
    Where the free memory cannot be read, nothing is refused.
    """
    free = available_bytes(device) if available is None else available
    if free is not None and needed > free:
        raise InsufficientMemoryError(what, needed, free, lowers)
