"""Autograd modes that saegeo's functions keep whatever mode their caller is in.

Researchers call models under ``torch.inference_mode()`` or ``torch.no_grad()`` (SAELens's own
code and most notebooks do). Two things must hold there:

- work handed to worker threads runs in the caller's mode: torch keeps grad mode and inference
  mode per thread, and a new thread starts with autograd on and inference mode off, so an
  in-place update of a tensor the caller made under inference mode fails in a worker
  (:func:`in_callers_mode`);
- training turns autograd on for itself, inference mode off included, so that
  ``train_sae`` or ``refit_sgd`` called inside ``torch.no_grad()`` trains
  (:func:`with_gradients`).

Examples
--------
>>> import torch
>>> @with_gradients
... def grad_of_square(x):
...     x = x.clone().requires_grad_(True)
...     (x**2).sum().backward()
...     return x.grad
>>> with torch.inference_mode():
...     grad_of_square(torch.tensor([3.0]))
tensor([6.])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def in_callers_mode(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` wrapped to run in the grad mode and inference mode of the thread that wraps it,
    for submitting to worker threads."""
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    return run


def with_gradients(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run with autograd on and inference mode off, whatever its caller's mode.

    Tensors the caller made under inference mode stay readable inside (functional operations
    on them give normal tensors); ``fn`` must not save them for backward or update them in
    place, which training code does not (it copies its inputs into its own buffers).
    """

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return run
