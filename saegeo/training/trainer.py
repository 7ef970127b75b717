"""Training SAEs and SAE families on activations, sized for minutes on a CPU.

Architectures (``TrainConfig.arch``) and what they are saved as:

| arch | training | saved as |
|---|---|---|
| ``topk`` | k largest latents per token | ``topk`` |
| ``batchtopk`` | k·B largest latents over the batch | ``jumprelu`` with the running threshold |
| ``relu`` | MSE + λ·(l1 or log) penalty | ``relu`` |
| ``matryoshka_batchtopk`` | BatchTopK, Matryoshka loss over prefixes | ``jumprelu`` |
| ``matryoshka_relu`` | ReLU, Matryoshka loss with the penalty | ``relu`` |
| ``matching_pursuit`` | tied decoder, at most k pursuit steps | ``matching_pursuit`` |

Every run normalises its inputs so that the mean squared norm is d_in (SAELens's
``expected_average_only_in``) and folds the factor back into the saved weights, scaling the
codes (not the decoder), so saved decoder rows keep the unit norm they were trained with.
The BatchTopK threshold is the running (bias-corrected) average of the smallest activation
selected in each batch, as SAELens keeps it. The first ``eval_tokens`` tokens of the store are
held out from training and used for the reported metrics.

Under ``torch.distributed`` training is data-parallel: every rank starts from the same weights,
trains on its contiguous share of the training rows (shuffled with its own seed), and the
gradients are averaged over ranks before each step, as ``DistributedDataParallel`` does; the
dead-latent counts, the BatchTopK threshold (each rank's estimate, averaged), the ReLU
penalty's control of L0 and the loss are kept the same on every rank. ``tokens`` counts the
tokens of all ranks together.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saegeo.acts.store import ActivationStore
from saegeo.acts.streaming import ActsLike, checked_store, progress_bar
from saegeo.core.grad_mode import with_gradients
from saegeo.core.sae import SAE
from saegeo.effects.metrics import Metrics, Moments, evaluate
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.formats.family import Family
from saegeo.formats.saelens import write_saelens
from saegeo.runtime import distributed
from saegeo.runtime.atomic import write_json, write_text
from saegeo.runtime.claim import claim_output
from saegeo.runtime.devices import fast_bfloat16, resolve_device
from saegeo.runtime.outputs import FAMILY_FORMAT, Output
from saegeo.training.config import (
    TRAIN_ARCHS,
    TrainConfig,
    matryoshka_widths,
)
from saegeo.training.step import (
    TrainState,
    forward_step,
    init_state,
    lr_factor,
    remove_parallel_grad_,
    unit_norm_rows_,
)

__all__ = [
    "TRAIN_ARCHS",
    "FamilyRun",
    "TrainConfig",
    "TrainReport",
    "matryoshka_widths",
    "train_family",
    "train_sae",
]

logger = logging.getLogger(__name__)
# Tokens used to estimate the input scale and the decoder bias initialisation.
DIVERGED_FVU = 100.0
"""A logged step whose fraction of variance unexplained exceeds this ends training as diverged:
a fresh SAE starts near 1, and an error 100 times the variance of its inputs is a runaway."""
INIT_TOKENS = 32_768


class TrainReport(NamedTuple):
    """What a training run did and how well its SAE reconstructs held-out activations."""

    arch: str
    """Training architecture."""
    width: int
    """Number of latents."""
    saved_arch: str
    """Architecture of the returned SAE (BatchTopK variants become jumprelu)."""
    tokens: int
    """Tokens trained on."""
    steps: int
    """Optimiser steps."""
    seconds: float
    """Wall time of the training loop (initialisation and evaluation excluded)."""
    tokens_per_second: float
    """Training throughput."""
    scale: float
    """Input normalisation factor used in training (1.0 when off)."""
    threshold: float | None
    """BatchTopK inference threshold in raw units; None for other architectures."""
    final_loss: float
    """Training loss of the last step."""
    train_dead_fraction: float
    """Fraction of latents that had not fired for ``dead_tokens`` tokens at the end."""
    metrics: Metrics | None
    """Held-out metrics (MSE, FVU, L0, dead fraction); None when ``eval_tokens`` is 0."""
    history: tuple[dict[str, float], ...]
    """Every ``log_every`` steps: step, tokens, loss, fvu and l0 of the training batch (and
    the ReLU architectures' λ, ``coefficient``)."""

    def row(self) -> dict[str, Any]:
        """One flat row for a metrics table."""
        metrics = self.metrics.as_dict() if self.metrics is not None else {}
        return {
            "arch": self.arch,
            "width": self.width,
            "saved_arch": self.saved_arch,
            **{f"eval_{k}": v for k, v in metrics.items()},
            "tokens": self.tokens,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "train_dead_fraction": self.train_dead_fraction,
            "threshold": self.threshold,
            "final_loss": self.final_loss,
        }


class FamilyRun(NamedTuple):
    """A trained family, its reports and where it was written."""

    family: Family
    """The trained SAEs, narrowest first."""
    reports: list[TrainReport]
    """One report per member, in the family's order."""
    paths: list[Path] | None
    """Each member's SAELens directory, when an output directory was given."""


# --------------------------------------------------------------------------- data


def _iter_rows(
    store: ActivationStore, start: int, stop: int, chunk: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Rows ``start:stop`` of the store in chunks of about ``chunk`` rows."""
    seen = 0
    for batch in store.iter_batches(chunk, limit=stop, device=device):
        lo = max(0, start - seen)
        seen += batch.shape[0]
        if lo < batch.shape[0]:
            yield batch[lo:]


def _cat_rows(store: ActivationStore, start: int, stop: int, purpose: str) -> torch.Tensor:
    """Rows ``start:stop`` of the store in one CPU tensor; a SaegeoError where none is left
    (every row skipped for holding NaN or Inf)."""
    parts = list(_iter_rows(store, start, stop, 8192, torch.device("cpu")))
    if not parts:
        raise _no_rows(store, purpose)
    return torch.cat(parts)


def _no_rows(store: ActivationStore, purpose: str) -> SaegeoError:
    return SaegeoError(
        f"activations {store.source}: no rows left {purpose}; all "
        f"{store.skipped_rows} rows read held NaN or Inf values and were skipped"
    )


def _shuffled_batches(
    store: ActivationStore,
    start: int,
    batch_size: int,
    buffer_tokens: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Endless batches of rows ``start:`` shuffled within windows of ``buffer_tokens``.

    Each window is copied behind the rows the last one left over, into one buffer allocated
    once, and each batch gathers its rows by its share of the window's permutation. No
    shuffled copy of the whole window is made: on a CPU, copies into fresh window-sized
    tensors cost several times what the copying itself does (the memory is new each time).
    """
    window = min(buffer_tokens, max(store.n_tokens - start, 0))
    pool = torch.empty(window + batch_size, store.d_in, device=device)
    held = 0  # rows left over from the last window, at the front of the buffer
    while True:
        rows_read = 0
        for chunk in _iter_rows(store, start, store.n_tokens, buffer_tokens, device):
            rows_read += chunk.shape[0]
            n = held + chunk.shape[0]
            pool[held:n] = chunk
            order = torch.randperm(n, generator=generator).to(device)
            n_full = n // batch_size * batch_size
            for first in range(0, n_full, batch_size):
                yield pool[order[first : first + batch_size]]
            held = n - n_full
            pool[:held] = pool[order[n_full:]]
        if rows_read == 0:
            raise _no_rows(store, "to train on")


# --------------------------------------------------------------------------- the model


# --------------------------------------------------------------------------- training


@with_gradients
def train_sae(
    acts: ActsLike,
    config: TrainConfig | None = None,
    *,
    snapshots: Collection[int] = (),
    on_snapshot: Callable[[int, SAE], None] | None = None,
) -> tuple[SAE, TrainReport]:
    """Train one SAE on ``acts`` (a store, tensor [N, d_in] or path) and report on it.

    ``on_snapshot(steps, sae)`` is called with the SAE as it stands after each number of
    optimiser steps in ``snapshots`` (saved as the finished SAE would be), for curves of a
    quantity against training time.

    Examples
    --------
    >>> from saegeo.training.toy import ToyConfig, make_toy_model
    >>> store = make_toy_model(ToyConfig(d=16)).to_store(20_000)
    >>> sae, report = train_sae(store, TrainConfig(width=64, k=4, tokens=20_000,
    ...                                            batch_size=512, progress=False))
    >>> sae.arch, sae.width, report.metrics.l0 <= 4
    ('topk', 64, True)
    """
    config = config or TrainConfig()
    store = checked_store(acts)
    device = resolve_device(config.device)
    width = config.width or 8 * store.d_in
    config = config.with_width(width)
    arch = config.architecture
    if arch.sparsity in ("topk", "batchtopk") and config.k > width:
        raise ArgumentError("k", config.k, f"exceeds the width {width}", owner="TrainConfig")
    n_eval = min(config.eval_tokens, store.n_tokens // 5)
    n_train = store.n_tokens - n_eval
    if n_train < 2:
        raise SaegeoError(
            f"activations {store.source}: {n_train} token(s) to train on; training needs at "
            "least 2 (and many more to learn anything)"
        )
    # Under torch.distributed: data-parallel, each rank on its share of the training rows,
    # gradients averaged (as DistributedDataParallel does), the same batch size on every rank.
    world = distributed.world_size()
    batch_size = min(config.batch_size, max(1, n_train // world))

    init_BD = _cat_rows(
        store, n_eval, min(store.n_tokens, n_eval + INIT_TOKENS), "to initialise from"
    )
    scale = (
        math.sqrt(store.d_in / float(init_BD.pow(2).sum(1).mean().clamp_min(1e-12)))
        if config.normalize
        else 1.0
    )
    if config.architecture.matryoshka and any(w > width for w in config.matryoshka_widths or ()):
        logger.warning(
            "matryoshka_widths %s exceed the width %d; keeping %s",
            list(config.matryoshka_widths or ()),
            width,
            matryoshka_widths(config, width),
        )
    state = init_state(config, width, init_BD * scale, device)
    matmul_dtype = _matmul_dtype(config, device)
    # Thresholds and stop rules are given in raw units; training runs in normalised ones.
    train_config = dataclasses.replace(config, residual_threshold=config.residual_threshold * scale)
    params = state.parameters()
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed + distributed.rank())
    first, stop = distributed.span(n_train, distributed.rank(), world)
    rows = store if world == 1 else store.slice(0, n_eval + stop)
    batches = _shuffled_batches(
        rows, n_eval + first, batch_size, config.shuffle_tokens, generator, device
    )
    steps = max(1, config.tokens // (batch_size * world))
    sparsity_warmup = max(1.0, config.sparsity_warmup * steps)
    threshold_rate = min(1.0, max(config.threshold_lr, 10 / steps))
    loss_value = float("nan")
    started = time.perf_counter()
    with progress_bar(
        steps * batch_size * world,
        f"train {config.arch}-{width}",
        config.progress,
        unit="tok",
        unit_scale=True,
    ) as bar:
        for step in range(steps):
            x_BD = next(batches) * scale
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(step, steps, config)
            coefficient = state.coefficient * min(1.0, (step + 1) / sparsity_warmup)
            out = forward_step(
                train_config, state, x_BD, coefficient, generator, threshold_rate, matmul_dtype
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            distributed.average_gradients_(params)
            if arch.unit_decoder:
                remove_parallel_grad_(state.W_dec)
            optimizer.step()
            if arch.unit_decoder:
                unit_norm_rows_(state.W_dec)
            fired, l0, loss_value = out.fired, out.l0, out.loss.item()
            if world > 1:  # every rank keeps the same bookkeeping
                fired = distributed.all_reduce_(fired.long()) > 0
                mean_l0, loss_value, threshold_sum = distributed.all_reduce_sums(
                    float(l0) / world, loss_value / world, state.threshold_sum / world
                )
                l0 = torch.tensor(mean_l0)
                state.threshold_sum = threshold_sum
            with torch.no_grad():
                state.since_fired += x_BD.shape[0] * world
                state.since_fired.masked_fill_(fired, 0)
            target = config.target_l0 if arch.sparsity == "penalty" else None
            if target is not None and step >= sparsity_warmup:
                # Multiplicative control of λ towards the target L0 (Glen Taggart's idea).
                state.coefficient *= math.exp(0.02 if float(l0) > target else -0.02)
            if not math.isfinite(loss_value):
                raise ArgumentError(
                    "lr",
                    config.lr,
                    f"training {config.arch}-{width} diverged at step {step}; lower it",
                    owner="TrainConfig",
                )
            if step % config.log_every == 0 or step == steps - 1:
                total_var = Moments.of(x_BD.detach()).m2 / x_BD.shape[0]
                entry = {
                    "step": step,
                    "tokens": (step + 1) * batch_size,
                    "loss": loss_value,
                    "fvu": float(out.mse) / total_var if total_var > 0 else float("nan"),
                    "l0": float(out.l0),
                }
                if arch.sparsity == "penalty":
                    entry["coefficient"] = coefficient
                if entry["fvu"] > DIVERGED_FVU:
                    raise ArgumentError(
                        "lr",
                        config.lr,
                        f"training {config.arch}-{width} diverged at step {step} (its squared "
                        f"error is {entry['fvu']:.3g} times the variance of the batch); lower it",
                        owner="TrainConfig",
                    )
                state.history.append(entry)
                bar.set_postfix(fvu=f"{entry['fvu']:.3f}", l0=f"{entry['l0']:.1f}")
            bar.update(x_BD.shape[0] * world)
            if on_snapshot is not None and step + 1 in snapshots:
                on_snapshot(step + 1, _export(config, state, scale))
    seconds = time.perf_counter() - started

    sae = _export(config, state, scale)
    metrics = None
    if n_eval:
        held_out = _cat_rows(store, 0, n_eval, "to evaluate on")
        metrics = evaluate(
            sae, held_out, batch_size=min(4096, config.batch_size), device=device, progress=False
        )
    report = TrainReport(
        arch=config.arch,
        width=width,
        saved_arch=sae.arch,
        tokens=steps * batch_size * world,
        steps=steps,
        seconds=seconds,
        tokens_per_second=steps * batch_size * world / max(seconds, 1e-9),
        scale=scale,
        threshold=(state.threshold / scale if arch.sparsity == "batchtopk" else None),
        final_loss=loss_value,
        train_dead_fraction=float((state.since_fired >= config.dead_tokens).float().mean()),
        metrics=metrics,
        history=tuple(state.history),
    )
    if metrics is not None:
        logger.info(
            "%s: held-out mse %.4g, fvu %.4f, l0 %.2f, dead %.3f, %.0f tok/s",
            sae.name,
            metrics.mse,
            metrics.fvu,
            metrics.l0,
            metrics.dead_fraction,
            report.tokens_per_second,
        )
    return sae, report


def _matmul_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """The dtype of the training products (``TrainConfig.matmul_dtype``)."""
    if config.matmul_dtype == "auto":
        low = config.architecture.sparsity != "pursuit" and fast_bfloat16(device)
        return torch.bfloat16 if low else torch.float32
    return torch.bfloat16 if config.matmul_dtype == "bfloat16" else torch.float32


@torch.no_grad()
def _export(config: TrainConfig, state: TrainState, scale: float) -> SAE:
    """The trained SAE in raw input units: codes divided by the scale, decoder unchanged."""
    width = state.W_dec.shape[0]
    W_dec = state.W_dec.detach().cpu().clone()
    b_dec = state.b_dec.detach().cpu() / scale
    metadata: dict[str, Any] = {
        "name": f"{config.arch}-{width}",
        "training": {**_config_dict(config), "input_scale": scale},
    }
    arch = config.architecture
    if arch.matryoshka:
        metadata["matryoshka_widths"] = matryoshka_widths(config, width)
    if arch.saved_as == "matching_pursuit":
        return SAE.from_decoder(
            W_dec,
            b_dec,
            residual_threshold=config.residual_threshold,
            max_iterations=config.k,
            stop_on_duplicate_support=True,
            metadata=metadata,
        )
    assert state.W_enc is not None and state.b_enc is not None
    common: dict[str, Any] = {
        "W_enc": state.W_enc.detach().cpu().clone(),
        "b_enc": state.b_enc.detach().cpu() / scale,
        "W_dec": W_dec,
        "b_dec": b_dec,
        "arch": arch.saved_as,
        "metadata": metadata,
    }
    if arch.saved_as == "topk":
        return SAE(k=config.k, **common)
    if arch.saved_as == "jumprelu":
        return SAE(threshold=torch.full((width,), state.threshold / scale), **common)
    return SAE(**common)


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    skip = {"progress", "device", "log_every"}
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(config).items()
        if k not in skip
    }


# --------------------------------------------------------------------------- families


def train_family(
    acts: ActsLike,
    widths: Sequence[int],
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    snapshots: Collection[int] = (),
    on_snapshot: Callable[[int, int, SAE], None] | None = None,
) -> FamilyRun:
    """Train one SAE per width with the same configuration and data.

    With ``out_dir``, each member is saved in SAELens layout to ``out_dir/<arch>-<width>/``
    with ``family.json`` and ``metrics.csv``; the directory appears once every member is
    trained, complete, or (interrupted) not at all. ``out_dir`` is claimed before training
    starts (:func:`saegeo.runtime.claim.claim_output`): it must be new or empty, or, with
    ``overwrite=True``, a family saegeo trained (replaced at the end, deleting only the files
    training wrote there); anything else there is refused, and anything that appears there
    during training is kept, the family then saved beside it. Member ``i`` is trained with
    seed ``config.seed + i``: with one seed every member would start from the same first
    decoder rows and, after short training, still share them, which reads as spurious
    reconstruction features across widths. ``on_snapshot(width, steps, sae)`` is called as
    :func:`train_sae` describes, for every member.
    """
    config = config or TrainConfig()
    widths = sorted(int(w) for w in widths)
    if not widths or widths[0] < 1 or len(set(widths)) != len(widths):
        raise ArgumentError("widths", widths, "must be distinct integers >= 1")
    store = checked_store(acts)
    if out_dir is None or not distributed.is_main():  # under torch.distributed, rank 0 writes
        run = _train_members(store, widths, config, None, snapshots, on_snapshot)
        if out_dir is None:
            return run
        return run._replace(paths=[Path(out_dir) / f"{config.arch}-{w}" for w in widths])

    with claim_output(Output.named(out_dir, "family", "out_dir"), force=overwrite) as claim:
        run = _train_members(store, widths, config, claim.path, snapshots, on_snapshot)
        claim.commit()
    return run._replace(paths=[Path(out_dir) / path.name for path in run.paths or []])


def _train_members(
    store: ActivationStore,
    widths: list[int],
    config: TrainConfig,
    out: Path | None,
    snapshots: Collection[int],
    on_snapshot: Callable[[int, int, SAE], None] | None,
) -> FamilyRun:
    """Train the members of :func:`train_family`, each saved under ``out`` as it is done."""
    saes: list[SAE] = []
    reports: list[TrainReport] = []
    paths: list[Path] = []
    for index, width in enumerate(widths):
        member = dataclasses.replace(config.with_width(width), seed=config.seed + index)
        sae, report = train_sae(
            store,
            member,
            snapshots=snapshots,
            on_snapshot=None if on_snapshot is None else functools.partial(on_snapshot, width),
        )
        saes.append(sae)
        reports.append(report)
        if out is not None:
            paths.append(out / f"{config.arch}-{width}")
            write_saelens(sae, paths[-1])
            write_summary(out, store, config, reports, paths)
    return FamilyRun(family=Family(saes), reports=reports, paths=paths if out else None)


def write_summary(
    out: Path,
    store: ActivationStore,
    config: TrainConfig,
    reports: list[TrainReport],
    paths: list[Path],
) -> None:
    """``family.json`` and ``metrics.csv`` under ``out`` for the members saved at ``paths``
    (what :func:`train_family` writes after each member)."""
    members = [
        {"name": path.name, "path": path.name, **report.row()}
        for report, path in zip(reports, paths, strict=True)
    ]
    write_json(
        out / "family.json",
        {
            "format": FAMILY_FORMAT,
            "acts": store.source,
            "d_in": store.d_in,
            "config": _config_dict(config),
            "members": members,
        },
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(members[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(members)
    write_text(out / "metrics.csv", buffer.getvalue())
