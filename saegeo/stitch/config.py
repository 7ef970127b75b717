"""Stitching settings: which features a Frankenstein SAE takes, how its decoder is refit."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from saegeo.acts.streaming import ActsLike, BatchStream, stream
from saegeo.config import cosine_threshold, fail, override
from saegeo.stitch.refit import SOLVERS, Solver
from saegeo.stitch.refit_cg import MAX_ITERATIONS, TOL

Retrain = Literal["exact", "sgd", "none"]
RETRAINS: tuple[str, ...] = get_args(Retrain)


@dataclass(frozen=True)
class StitchConfig:
    """How :func:`saegeo.frankenstein` stitches a family and refits the decoder.

    Examples
    --------
    >>> config = StitchConfig(threshold=0.6, retrain="none")
    >>> config.with_overrides(swap=True).swap
    True
    """

    threshold: float = 0.7
    """A member feature is added iff its largest decoder cosine to the Frankenstein so far is
    <= this (and swap groups join features whose cosine is > this); in [-1, 1]."""
    upto: int | None = None
    """Use the members of width <= ``upto``; a value below the narrowest width is a member
    index instead (inclusive). None uses every member."""
    swap: bool = False
    """Also swap each swap group's wider features in for its narrower ones."""
    retrain: Retrain = "exact"
    """Decoder refit with the encoder frozen: ``exact`` (least squares,
    :func:`saegeo.refit_exact`), ``sgd`` (Adam, :func:`saegeo.refit_sgd`) or ``none``."""
    ridge: float = 1e-6
    """``exact``: ridge towards the current decoder, relative to the mean Gram diagonal."""
    solver: Solver = "auto"
    """``exact``: ``cholesky`` (a dense Gram matrix, 8·F² bytes), ``cg`` (conjugate gradients
    on the kept codes, memory that grows with the non-zero codes) or ``auto`` (dense for
    small widths where it fits, else ``cg``; :func:`saegeo.stitch.refit.choose_solver`)."""
    refit_tol: float = TOL
    """``exact`` by ``cg``: stop when the estimated excess squared error is at most this
    fraction of the squared error (:mod:`saegeo.stitch.refit_cg`)."""
    refit_max_iterations: int = MAX_ITERATIONS
    """``exact`` by ``cg``: at most this many iterations per step."""
    sgd_tokens: int | None = None
    """``sgd``: training tokens; None means 10 passes over the activations."""
    sgd_lr: float = 1e-3
    """``sgd``: Adam learning rate."""
    checkpoint: str | os.PathLike[str] | None = None
    """``sgd``: a resumable checkpoint file of the last step's training."""
    batch_size: int = 4096
    """Tokens per batch of every pass over the activations."""
    limit: int | None = None
    """Use only the first ``limit`` tokens of the activations (None: all)."""
    device: str | torch.device = "auto"
    """Where to compute; ``auto`` is CUDA when present."""
    progress: bool | None = None
    """Progress bars: None on a terminal, True always, False never."""

    def __post_init__(self) -> None:
        if self.retrain not in RETRAINS:
            fail(self, "retrain", f"choose one of {', '.join(RETRAINS)}")
        cosine_threshold(self.threshold, owner=type(self).__name__)
        if self.upto is not None and self.upto < 0:
            fail(self, "upto", "must be a width or member index >= 0")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            fail(self, "ridge", "must be >= 0")
        if self.solver not in SOLVERS:
            fail(self, "solver", f"choose one of {', '.join(SOLVERS)}")
        if not (math.isfinite(self.refit_tol) and 0 < self.refit_tol < 1):
            fail(self, "refit_tol", "must lie in (0, 1)")
        if self.refit_max_iterations < 1:
            fail(self, "refit_max_iterations", "must be >= 1")
        if self.sgd_tokens is not None and self.sgd_tokens < 1:
            fail(self, "sgd_tokens", "must be >= 1")
        if not (math.isfinite(self.sgd_lr) and self.sgd_lr > 0):
            fail(self, "sgd_lr", "must be > 0")
        if self.batch_size < 1:
            fail(self, "batch_size", "must be >= 1")
        if self.limit is not None and self.limit < 1:
            fail(self, "limit", "must be >= 1")

    def stream(self, acts: ActsLike) -> BatchStream:
        """Batches of ``acts`` as these settings read them (``batch_size``, ``limit``,
        ``device``, ``progress``)."""
        return stream(
            acts,
            batch_size=self.batch_size,
            limit=self.limit,
            device=self.device,
            progress=self.progress,
        )

    def with_overrides(self, **overrides: Any) -> StitchConfig:
        """This configuration with some fields replaced (an unknown name raises an error)."""
        return override(self, overrides)
