"""Decoder refit by Adam with the encoder frozen: the iterative counterpart of the exact refit.

:func:`refit_sgd` trains the same decoder (and ``b_dec``) that
:func:`saegeo.stitch.refit.refit_exact` solves for, on GPU when present, for a token budget,
with a progress bar and a resumable checkpoint. See :mod:`saegeo.stitch.refit` for what
"encoder frozen" means for each architecture.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    BatchStream,
    StreamOptions,
    progress_bar,
    read,
    with_stream_options,
)
from saegeo.config import check_count
from saegeo.core.grad_mode import with_gradients
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.runtime.atomic import atomic_file
from saegeo.stitch.refit import (
    Refit,
    decode_target,
    fits_bias,
    fixed_code_metrics,
    output_bias,
    with_decoder,
)

CHECKPOINT_FORMAT = "saegeo.refit_sgd.v1"


@with_stream_options
@with_gradients
def refit_sgd(
    sae: SAE,
    acts: ActsLike,
    *,
    tokens: int | None = None,
    lr: float = 1e-3,
    decay_fraction: float = 0.2,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    max_seconds: float | None = None,
    callback: Callable[[int, float], None] | None = None,
    **options: Unpack[StreamOptions],
) -> Refit:
    """Train the decoder (and, for additive SAEs, ``b_dec``) with Adam, codes fixed.

    Batches cycle through ``acts`` in order (the first ``limit`` tokens) until ``tokens`` have
    been seen (default: 10 passes). The learning rate is ``lr``, decaying linearly to zero over
    the last ``decay_fraction`` of the steps. ``checkpoint`` names a file that receives the
    state every ``checkpoint_every`` steps and at the end, atomically; calling again with the
    same arguments resumes from it (a finished run returns at once). ``max_seconds`` stops
    early (the state is checkpointed); ``callback(step, loss)`` runs after every step. The
    result's metrics come from one more pass over the fitting tokens. ``options`` set how
    ``acts`` is read and where the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).
    """
    batches = read(acts, options)
    return refit_sgd_batches(
        sae,
        batches,
        tokens=tokens,
        lr=lr,
        checkpoint=checkpoint,
        decay_fraction=decay_fraction,
        checkpoint_every=checkpoint_every,
        max_seconds=max_seconds,
        callback=callback,
    )


@with_gradients
def refit_sgd_batches(
    sae: SAE,
    batches: BatchStream,
    *,
    tokens: int | None,
    lr: float,
    checkpoint: str | os.PathLike[str] | None,
    decay_fraction: float = 0.2,
    checkpoint_every: int = 100,
    max_seconds: float | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> Refit:
    """:func:`refit_sgd` on the tokens of ``batches``, cycled through in batches of theirs (its
    progress bar counts steps)."""
    progress, batch_size = batches.progress, batches.batch_size
    sae, batches = batches.replace(progress=False).for_sae(sae, "refit_sgd")
    n_data = batches.n_tokens
    if n_data == 0:
        raise SaegeoError(f"activations {batches.store.source}: no tokens to fit on")
    tokens = 10 * n_data if tokens is None else int(tokens)
    check_count("tokens", tokens)
    check_count("checkpoint_every", checkpoint_every)
    if not lr > 0:
        raise ArgumentError("lr", lr, "must be > 0")
    if not 0 <= decay_fraction <= 1:
        raise ArgumentError("decay_fraction", decay_fraction, "must lie in [0, 1]")
    batches_per_pass = math.ceil(n_data / batch_size)
    total_steps = math.ceil(tokens / batch_size)
    fit_bias = fits_bias(sae)
    W_dec = sae.W_dec.detach().clone().float().requires_grad_(True)
    b_out = output_bias(sae).detach().clone().float().requires_grad_(fit_bias)
    params = [W_dec, b_out] if fit_bias else [W_dec]
    optimizer = torch.optim.Adam(params, lr=lr)
    decay_start = total_steps * (1 - decay_fraction)

    def lr_at(step: int) -> float:
        if step < decay_start:
            return lr
        return lr * max(0.0, (total_steps - step) / max(total_steps - decay_start, 1))

    fingerprint = _fingerprint(
        sae,
        tokens=tokens,
        lr=lr,
        batch_size=batch_size,
        n_data=n_data,
        decay_fraction=decay_fraction,
    )
    step = 0
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and path.exists():
        step = _load_checkpoint(path, fingerprint, W_dec, b_out, optimizer)

    def save() -> None:
        if path is not None:
            _save_checkpoint(path, fingerprint, step, W_dec, b_out, optimizer)

    start = time.perf_counter()
    bar = progress_bar(total_steps, f"sgd refit {sae.name}", progress, initial=step, unit="step")
    try:
        while step < total_steps:
            skip = step % batches_per_pass
            for i, x_BD in enumerate(batches):
                if i < skip:
                    continue
                with torch.no_grad():
                    acts_BF = sae.encode(x_BD).float()
                    y_BD, w_B = decode_target(sae, x_BD)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                error_BD = y_BD.float() - (acts_BF @ W_dec + b_out)
                loss = (w_B.float() * (error_BD**2).sum(dim=1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                if callback is not None:
                    callback(step, float(loss.detach()))
                if step % checkpoint_every == 0 and step < total_steps:
                    save()
                out_of_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
                if step >= total_steps or out_of_time:
                    break
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                break
        seconds = time.perf_counter() - start
        save()
    finally:
        bar.close()
    W_new, b_new = W_dec.detach().to(sae.dtype), b_out.detach().to(sae.dtype)
    decoders = [(sae.W_dec, output_bias(sae)), (W_new, b_new)]
    before, after = fixed_code_metrics(sae, decoders, batches.replace(progress=progress))
    return Refit(
        with_decoder(sae, W_new, b_new),
        before,
        after,
        min(step * batch_size, tokens),
        seconds,
        "adam",
    )


def _fingerprint(sae: SAE, **settings: Any) -> dict[str, Any]:
    """What identifies an SGD refit, so that a checkpoint resumes only its own problem."""
    sums = [float(t.double().sum()) for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    return {"width": sae.width, "d_in": sae.d_in, "arch": sae.arch, "weight_sums": sums, **settings}


def _save_checkpoint(
    path: Path,
    fingerprint: dict[str, Any],
    step: int,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "step": step,
        "W_dec": W_dec.detach().cpu(),
        "b_dec": b_dec.detach().cpu(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(
    path: Path,
    fingerprint: dict[str, Any],
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> int:
    try:
        with warnings.catch_warnings():  # a refused legacy file is reported below, once
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file
        raise SaegeoError(
            f"{path}: unreadable refit checkpoint ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SaegeoError(f"{path}: not a saegeo SGD refit checkpoint")
    if state["fingerprint"] != fingerprint:
        raise SaegeoError(
            f"{path}: checkpoint of a different refit (SAE or settings differ); "
            "delete it or pass another path"
        )
    with torch.no_grad():
        W_dec.copy_(state["W_dec"])
        b_dec.copy_(state["b_dec"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
