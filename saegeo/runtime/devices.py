"""Device selection (``"auto"`` means CUDA when present, else CPU) and device facts."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from saegeo.errors import ArgumentError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``; ``"auto"`` picks CUDA when available.

    Raises
    ------
    ArgumentError
        naming ``device`` when it is not a device name, or this machine lacks it.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("bogus")
    Traceback (most recent call last):
    ...
    saegeo.errors.ArgumentError: device='bogus': unknown device; use auto, cpu, cuda, cuda:N or mps
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ArgumentError("device", device, f"unknown device; {DEVICE_CHOICES}") from None
    problem = _missing(parsed)
    if problem is not None:
        raise ArgumentError("device", device if isinstance(device, str) else str(device), problem)
    return parsed


DEVICE_CHOICES = "use auto, cpu, cuda, cuda:N or mps"


def _missing(device: torch.device) -> str | None:
    """Why this machine cannot compute on ``device``, or None when it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine; use cpu (or auto)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s), numbered from 0"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available here"
    return f"saegeo does not compute on {device.type} devices; {DEVICE_CHOICES}"


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
