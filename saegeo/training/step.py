"""One training step of each architecture: parameters, initialisation, loss, constraints.

Everything here works in normalised units (inputs scaled to mean squared norm d_in); the
trainer in :mod:`saegeo.training.trainer` scales data in and folds the factor out of the saved SAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from saegeo.training import losses
from saegeo.training.config import (
    DEFAULT_COEFFICIENTS,
    TrainConfig,
    matryoshka_widths,
)
from saegeo.training.sparse_ops import (
    Selection,
    exact_values,
    pursuit_with_grad,
    sampled_linear,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_prefix_reconstructions,
)


def geometric_median(x_BD: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Weiszfeld's algorithm, started from the mean."""
    median_D = x_BD.mean(0)
    for _ in range(iterations):
        weights_B = 1.0 / (x_BD - median_D).norm(dim=1).clamp_min(1e-8)
        new_D = (weights_B[:, None] * x_BD).sum(0) / weights_B.sum()
        if float((new_D - median_D).norm()) < 1e-6 * float(median_D.norm().clamp_min(1e-8)):
            return new_D
        median_D = new_D
    return median_D


@dataclass
class TrainState:
    """Parameters and running statistics of one training run (in normalised units)."""

    W_dec: torch.nn.Parameter
    """Decoder [F, D]."""
    b_dec: torch.nn.Parameter
    """Decoder bias [D], also subtracted from the input."""
    W_enc: torch.nn.Parameter | None
    """Encoder [D, F]; None for matching pursuit (tied)."""
    b_enc: torch.nn.Parameter | None
    """Encoder bias [F]; None for matching pursuit."""
    since_fired: torch.Tensor
    """Training tokens since each latent last fired [F] (int64)."""
    coefficient: float
    """Current λ of the ReLU penalty (moved by the target-L0 controller)."""
    threshold_sum: float = 0.0
    """Running sum behind the BatchTopK threshold (bias-corrected by threshold_weight)."""
    threshold_weight: float = 0.0
    """Total weight of that running average."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Entries of the training history."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trained tensors."""
        return [p for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec) if p is not None]

    @property
    def threshold(self) -> float:
        """The BatchTopK inference threshold in normalised units."""
        return self.threshold_sum / self.threshold_weight if self.threshold_weight else 0.0


class StepOutput(NamedTuple):
    """One step's loss and what the bookkeeping needs."""

    loss: torch.Tensor
    """The loss to minimise (scalar, with gradient)."""
    mse: torch.Tensor
    """MSE of the batch's (whole-width) reconstruction (scalar, no gradient)."""
    l0: torch.Tensor
    """Mean active latents per token in the batch (scalar)."""
    fired: torch.Tensor
    """Latents that fired in the batch [F] (bool)."""

    @classmethod
    def of(
        cls, loss: torch.Tensor, mse: torch.Tensor, active: torch.Tensor, batch: int, fired
    ) -> StepOutput:
        """The output of a step whose ``active`` entries (bool, any shape) are its codes'
        non-zeros. Nothing here waits for the GPU: values stay on the device until read."""
        return cls(loss, mse.detach(), active.sum(dtype=torch.float64) / batch, fired)


def init_state(
    config: TrainConfig, width: int, sample_BD: torch.Tensor, device: torch.device
) -> TrainState:
    """Fresh parameters: random unit decoder rows, tied encoder, b_dec from ``sample_BD``
    (normalised inputs) as ``config.b_dec_init`` says.

    Every architecture starts from unit rows, the penalised ReLU ones included. Rows of norm
    0.1 (Anthropic's April 2024 recipe, tuned there for a learning rate of 5e-5) left many
    latents small, along the mean activation, near-duplicates of each other that carried
    almost no energy; likely because Adam, whose steps have about ``lr`` per element whatever
    the row's scale, turns a row of norm 0.1 by about ``lr·sqrt(d_in)/0.1`` radians a step,
    and the rows that had not yet grown drifted onto the one direction every token's error
    shares. On SmolLM2-135M (576 latents, ReLU + L1, 2,000 steps at lr 2e-3) latents with a
    twin above cosine 0.9 in their own SAE fell from 39% to 5% with unit rows, and the
    held-out FVU from 0.131 to 0.114 at about the same L0.
    """
    generator = torch.Generator().manual_seed(config.seed)
    d_in = sample_BD.shape[1]
    W_dec_FD = torch.randn(width, d_in, generator=generator)
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    if config.b_dec_init == "mean":
        b_dec_D = sample_BD.mean(0)
    elif config.b_dec_init == "geometric_median":
        b_dec_D = geometric_median(sample_BD)
    else:
        b_dec_D = torch.zeros(d_in)
    tied = config.architecture.sparsity == "pursuit"
    return TrainState(
        W_dec=torch.nn.Parameter(W_dec_FD.to(device)),
        b_dec=torch.nn.Parameter(b_dec_D.to(device)),
        W_enc=None if tied else torch.nn.Parameter(W_dec_FD.T.clone().to(device)),
        b_enc=None if tied else torch.nn.Parameter(torch.zeros(width, device=device)),
        since_fired=torch.zeros(width, dtype=torch.long, device=device),
        coefficient=(
            DEFAULT_COEFFICIENTS[config.sparsity]
            if config.sparsity_coefficient is None
            else config.sparsity_coefficient
        ),
    )


def aux_k_loss(
    config: TrainConfig,
    state: TrainState,
    x_in_BD: torch.Tensor,
    pre_BF: torch.Tensor,
    residual_BD: torch.Tensor,
    *,
    recompute: bool = False,
) -> torch.Tensor | None:
    """Dead latents' top pre-activations reconstructing the residual (OpenAI's aux-k).

    ``recompute``: ``pre_BF`` came from a low-precision product; the chosen entries are
    recomputed in float32 (:func:`saegeo.training.sparse_ops.exact_values`).
    """
    aux_k = x_in_BD.shape[1] // 2 if config.aux_k is None else config.aux_k
    # The dead latents' columns alone: usually a few, and never more than a copy of pre_BF.
    dead_index = (state.since_fired >= config.dead_tokens).nonzero().squeeze(1)
    n_dead = dead_index.numel()
    if aux_k <= 0 or n_dead == 0:
        return None
    assert state.W_enc is not None and state.b_enc is not None
    sel = select_topk(pre_BF[:, dead_index], min(aux_k, n_dead))
    sel = sel._replace(cols=dead_index[sel.cols])
    if recompute:
        sel = exact_values(sel, x_in_BD, state.W_enc, state.b_enc)
    values_N = sampled_linear(x_in_BD, state.W_enc, state.b_enc, sel).relu()
    recon_BD = sparse_decode(sel.rows, sel.cols, values_N, state.W_dec, x_in_BD.shape[0])
    return config.aux_coefficient * losses.auxk_loss(residual_BD, recon_BD, min(n_dead / aux_k, 1))


def prefix_bounds(config: TrainConfig, width: int, generator: torch.Generator) -> torch.Tensor:
    """This batch's Matryoshka prefix bounds ``[0, ..., width]``: fixed, or Pareto-sampled."""
    if config.prefixes == "pareto":
        n_prefixes = min(config.n_prefixes, width)
        return losses.pareto_prefix_bounds(
            width, n_prefixes, power=config.pareto_power, generator=generator
        )
    return torch.tensor([0, *matryoshka_widths(config, width)])


def forward_step(
    config: TrainConfig,
    state: TrainState,
    x_BD: torch.Tensor,
    coefficient: float,
    generator: torch.Generator,
    threshold_rate: float,
    matmul_dtype: torch.dtype = torch.float32,
) -> StepOutput:
    """Loss of one batch (inputs already normalised), with what the bookkeeping needs.

    ``matmul_dtype`` is the precision of the encoder and decoder products (see
    ``TrainConfig.matmul_dtype``); parameters, gradients' accumulation and the loss stay float32.
    """
    batch = x_BD.shape[0]
    width = state.W_dec.shape[0]
    x_in_BD = x_BD - state.b_dec
    arch = config.architecture
    if arch.sparsity == "pursuit":
        codes_BF = pursuit_with_grad(
            x_in_BD,
            state.W_dec,
            residual_threshold=config.residual_threshold,
            max_iterations=config.k,
            stop_on_duplicate_support=True,
        )
        mse = losses.mse_loss(x_BD, codes_BF @ state.W_dec + state.b_dec)
        active_BF = codes_BF.detach() != 0
        return StepOutput.of(mse, mse, active_BF, batch, active_BF.any(0))

    assert state.W_enc is not None and state.b_enc is not None
    low = matmul_dtype != torch.float32
    if arch.sparsity == "penalty":
        with torch.autocast(x_BD.device.type, dtype=matmul_dtype, enabled=low):
            acts_BF = (x_in_BD @ state.W_enc + state.b_enc).relu()
            decoded_BD = acts_BF @ state.W_dec if not arch.matryoshka else None
        acts_BF = acts_BF.float()
        if decoded_BD is not None:
            mse = losses.mse_loss(x_BD, decoded_BD.float() + state.b_dec)
            penalty = losses.sparsity_loss(acts_BF, state.W_dec.norm(dim=1), config.sparsity)
            loss = mse + coefficient * penalty
        else:
            parts = losses.matryoshka_loss(
                x_BD,
                acts_BF,
                state.W_dec,
                state.b_dec,
                prefix_bounds(config, width, generator),
                sparsity=config.sparsity,
                coefficient=coefficient,
            )
            loss, mse = parts.loss, parts.mse[-1]
        active_BF = acts_BF.detach() > 0
        return StepOutput.of(loss, mse, active_BF, batch, active_BF.any(0))

    with torch.no_grad():
        pre_BF = _pre_activations(x_in_BD, state.W_enc, state.b_enc, matmul_dtype)
    sel: Selection = (
        select_topk(pre_BF, config.k)
        if arch.sparsity == "topk"
        else select_batch_topk(pre_BF, config.k)
    )
    if low:
        sel = exact_values(sel, x_in_BD, state.W_enc, state.b_enc)
    values_N = sampled_linear(x_in_BD, state.W_enc, state.b_enc, sel).relu()
    if arch.matryoshka:
        recon_PBD = sparse_prefix_reconstructions(
            sel.rows,
            sel.cols,
            values_N,
            state.W_dec,
            state.b_dec,
            prefix_bounds(config, width, generator).to(x_BD.device),
            batch,
        )
        mse_P = (recon_PBD - x_BD).pow(2).sum(-1).mean(-1)
        loss, mse, x_hat_BD = mse_P.mean(), mse_P[-1], recon_PBD[-1]
    else:
        x_hat_BD = sparse_decode(sel.rows, sel.cols, values_N, state.W_dec, batch) + state.b_dec
        mse = losses.mse_loss(x_BD, x_hat_BD)
        loss = mse
    aux = aux_k_loss(config, state, x_in_BD, pre_BF, x_BD - x_hat_BD, recompute=low)
    if aux is not None:
        loss = loss + aux
    with torch.no_grad():
        active_N = values_N > 0
        # Inactive entries mark a spare last slot: no boolean indexing, which waits for the GPU.
        fired_F = torch.zeros(width + 1, dtype=torch.bool, device=x_BD.device)
        fired_F[torch.where(active_N, sel.cols, width)] = True
        fired_F = fired_F[:width]
        if arch.sparsity == "batchtopk" and bool(active_N.any()):
            # The inference threshold: a bias-corrected running average of the smallest
            # activation the batch kept.
            rate = threshold_rate
            smallest = values_N.detach()[active_N].min().item()
            state.threshold_sum = (1 - rate) * state.threshold_sum + rate * smallest
            state.threshold_weight = (1 - rate) * state.threshold_weight + rate
    return StepOutput.of(loss, mse, active_N, batch, fired_F)


def _pre_activations(
    x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``x W_enc + b_enc`` [B, F] computed, and returned, in ``dtype``, the bias added by the
    product itself (a separate addition costs a pass over [B, F]).

    A low-precision result is used only to choose latents (the chosen ones are recomputed in
    float32), so it is not converted back: at wide SAEs that conversion costs as much as the
    bfloat16 product itself.
    """
    return torch.addmm(b_enc_F.to(dtype), x_BD.to(dtype), W_enc_DF.to(dtype))


def lr_factor(step: int, steps: int, config: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, constant, linear decay to 0 at the end."""
    warmup = config.lr_warmup * steps
    decay_start = (1 - config.lr_decay) * steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= decay_start and config.lr_decay > 0:
        return max(0.0, (steps - step) / (steps - decay_start))
    return 1.0


@torch.no_grad()
def remove_parallel_grad_(W_dec_FD: torch.nn.Parameter) -> None:
    """Project out the gradient component along each (unit) decoder row."""
    if W_dec_FD.grad is None:
        return
    unit_FD = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    W_dec_FD.grad -= (W_dec_FD.grad * unit_FD).sum(1, keepdim=True) * unit_FD


@torch.no_grad()
def unit_norm_rows_(W_dec_FD: torch.nn.Parameter) -> None:
    """Scale each decoder row to unit norm, in place."""
    W_dec_FD.div_(W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12))
