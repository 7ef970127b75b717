"""Training configuration: which architecture, how long, how sparse, on what device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from saegeo.config import fail
from saegeo.training import losses

TrainArch = Literal[
    "topk", "batchtopk", "relu", "matryoshka_batchtopk", "matryoshka_relu", "matching_pursuit"
]
TRAIN_ARCHS: tuple[str, ...] = get_args(TrainArch)
Prefixes = Literal["fixed", "pareto"]
DecoderBiasInit = Literal["mean", "geometric_median", "zeros"]
PenaltyKind = Literal["l1", "log"]
MatmulDtype = Literal["auto", "float32", "bfloat16"]

Sparsity = Literal["topk", "batchtopk", "penalty", "pursuit"]


class TrainingArchitecture(NamedTuple):
    """How one training architecture makes its codes sparse and what it is saved as."""

    sparsity: Sparsity
    """``topk``: k latents per token; ``batchtopk``: k·B latents over the batch (a running
    threshold at inference); ``penalty``: ReLU with a sparsity penalty; ``pursuit``: matching
    pursuit over a tied dictionary."""
    matryoshka: bool
    """Trained with the Matryoshka loss over nested prefixes."""
    saved_as: str
    """``SAE.arch`` of the saved SAE."""

    @property
    def unit_decoder(self) -> bool:
        """Decoder rows kept at unit norm (every architecture but the penalised ReLU ones,
        whose penalty weights each latent by its row's norm instead)."""
        return self.sparsity != "penalty"


TRAINING_ARCHITECTURES: dict[str, TrainingArchitecture] = {
    "topk": TrainingArchitecture("topk", False, "topk"),
    "batchtopk": TrainingArchitecture("batchtopk", False, "jumprelu"),
    "relu": TrainingArchitecture("penalty", False, "relu"),
    "matryoshka_batchtopk": TrainingArchitecture("batchtopk", True, "jumprelu"),
    "matryoshka_relu": TrainingArchitecture("penalty", True, "relu"),
    "matching_pursuit": TrainingArchitecture("pursuit", False, "matching_pursuit"),
}
"""Every training architecture, by ``TrainConfig.arch``."""
assert tuple(TRAINING_ARCHITECTURES) == TRAIN_ARCHS
# λ of the ReLU penalties when none is given (inputs normalised to mean squared norm d_in).
DEFAULT_COEFFICIENTS = {"log": 0.3, "l1": 3.0}


MAX_SEED = 2**62
"""Seeds lie below this: torch's generators take 64-bit seeds, and family members and ranks
add their index to the seed."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE; ``train_family`` varies only the width."""

    arch: TrainArch = "topk"
    """Training architecture; see the module docstring for what each is saved as."""
    width: int | None = None
    """Number of latents; None means 8·d_in."""
    k: int = 32
    """Active latents per token (topk), mean active latents (batchtopk variants) or the most
    pursuit steps per token (matching_pursuit). Unused by the ReLU architectures."""
    sparsity: PenaltyKind = "log"
    """ReLU penalty: ``log`` (as in "Efficient Matryoshka loss calculation", ε = 0.1) or ``l1``,
    both weighted by decoder norms."""
    sparsity_coefficient: float | None = None
    """λ of the ReLU penalty, for inputs normalised to mean squared norm d_in; None means
    0.3 for ``log`` and 3.0 for ``l1``."""
    target_l0: float | None = None
    """ReLU architectures: adapt λ during training towards this mean L0 (None keeps λ)."""
    matryoshka_widths: tuple[int, ...] | None = None
    """Nested prefix widths, ending at the width; None halves the width three times."""
    prefixes: Prefixes = "fixed"
    """Matryoshka prefixes: the ``fixed`` widths, or ``pareto`` (n_prefixes drawn per batch)."""
    n_prefixes: int = 10
    """Prefixes per batch with pareto sampling, the whole width included."""
    pareto_power: float = 0.5
    """Power of the truncated Pareto law of the prefix ends (smaller favours short ones)."""
    tokens: int = 500_000
    """Training tokens per SAE (the store is cycled through if it holds fewer)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    lr: float = 2e-3
    """Adam learning rate at its peak."""
    lr_warmup: float = 0.05
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay: float = 0.2
    """Fraction of the steps, at the end, over which it falls linearly to 0."""
    sparsity_warmup: float = 0.05
    """Fraction of the steps over which λ rises linearly from 0 (ReLU architectures)."""
    b_dec_init: DecoderBiasInit = "mean"
    """Decoder bias initialisation: data ``mean``, ``geometric_median`` or ``zeros``."""
    normalize: bool = True
    """Scale inputs to mean squared norm d_in during training (folded out when saving)."""
    aux_k: int | None = None
    """Dead latents used by the aux-k loss (TopK variants); None means d_in // 2, 0 disables."""
    aux_coefficient: float = 1 / 32
    """Weight of the aux-k loss."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many training tokens counts as dead."""
    threshold_lr: float = 0.01
    """Rate of the running average behind the BatchTopK inference threshold (raised to
    10/steps in short runs, so that the average follows their last tenth)."""
    residual_threshold: float = 1e-2
    """Matching pursuit: a token stops once its residual norm is below this (raw units)."""
    eval_tokens: int = 16_384
    """Tokens held out (the first of the store, at most a fifth of it) for the reported
    metrics; 0 skips them."""
    shuffle_tokens: int = 262_144
    """Tokens read and shuffled together before being cut into batches."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ..."""
    matmul_dtype: MatmulDtype = "auto"
    """Precision of the encoder and decoder matrix products: ``bfloat16`` (weights, the Adam
    state and the loss stay float32; TopK-style architectures choose their latents from
    bfloat16 pre-activations and compute the chosen ones in float32), ``float32``, or ``auto``:
    bfloat16 where the device multiplies it fast (CUDA with bf16, CPUs with AVX-512 BF16 or
    AMX). Matching pursuit always runs in float32."""
    seed: int = 0
    """Seed of the initialisation, the shuffling and the prefix sampling (``train_family``
    gives each member its own seed derived from this one)."""
    log_every: int = 25
    """Steps between entries of the training history."""
    progress: bool | None = None
    """Progress bar: None on a terminal, True always, False never."""

    def __post_init__(self) -> None:
        choices = {
            "arch": TRAIN_ARCHS,
            "sparsity": get_args(PenaltyKind),
            "prefixes": get_args(Prefixes),
            "b_dec_init": get_args(DecoderBiasInit),
            "matmul_dtype": get_args(MatmulDtype),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(self, name, f"choose one of {', '.join(allowed)}")
        positive = ("k", "tokens", "batch_size", "n_prefixes", "log_every", "shuffle_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                fail(self, name, "must be >= 1")
        if self.width is not None and self.width < 1:
            fail(self, "width", "must be >= 1")
        if not 0 <= self.seed < MAX_SEED:
            fail(self, "seed", "must lie in [0, 2**62)")
        if self.lr <= 0:
            fail(self, "lr", "must be > 0")
        if self.target_l0 is not None and not self.target_l0 > 0:
            fail(self, "target_l0", "must be > 0")
        if (self.sparsity_coefficient or 0) < 0:
            fail(self, "sparsity_coefficient", "must be >= 0")
        if not 0 <= self.lr_warmup + self.lr_decay <= 1:
            fail(
                self,
                "lr_decay",
                f"lr_warmup + lr_decay must lie in [0, 1] (lr_warmup={self.lr_warmup})",
            )
        if self.eval_tokens < 0:
            fail(self, "eval_tokens", "must be >= 0")
        if self.dead_tokens < 1:
            fail(self, "dead_tokens", "must be >= 1")
        if self.matryoshka_widths is not None:
            widths = list(self.matryoshka_widths)
            if not widths or widths != sorted(set(widths)) or widths[0] < 1:
                fail(self, "matryoshka_widths", "must rise strictly from >= 1")

    @property
    def architecture(self) -> TrainingArchitecture:
        """What ``arch`` trains and is saved as."""
        return TRAINING_ARCHITECTURES[self.arch]

    def with_width(self, width: int) -> TrainConfig:
        """The same configuration at another width."""
        return dataclasses.replace(self, width=width)


def matryoshka_widths(config: TrainConfig, width: int) -> list[int]:
    """The nested widths a Matryoshka SAE of ``width`` is trained (fixed) or read (pareto) at:
    the configured ones below ``width``, then ``width``."""
    if config.matryoshka_widths is None:
        return losses.default_matryoshka_widths(width)
    return [w for w in config.matryoshka_widths if w < width] + [width]
