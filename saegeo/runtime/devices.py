"""Device selection (``"auto"`` means CUDA when present, else CPU) and device facts."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``; ``"auto"`` picks CUDA when available."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices faster than float32: CUDA with bf16
    support, or a CPU with AVX-512 BF16 or AMX (as oneDNN reports it)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def host_syncs(fn: Callable[[], Any]) -> int:
    """How many calls in ``fn`` wait for the GPU (CUDA only): torch's sync debug mode warns at
    each one, and the warnings are counted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)
