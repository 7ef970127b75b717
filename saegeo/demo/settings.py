"""What the demo harvests and analyses: its settings, the shipped family and its site."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saegeo.errors import ArgumentError
from saegeo.training.config import TrainArch

DEFAULT_ROOT = Path("reports/demo")


SHIPPED_FAMILY = Path(__file__).resolve().parents[1] / "data" / "demo_family"
"""The BatchTopK family shipped with saegeo, the one the demo analyses: SAELens directories
stored in float16, with ``family.json`` (the harvest and training settings, the held-out
tokens), ``metrics.csv`` (held-out metrics and degenerate-latent shares of each member) and
``seed_stability.json``; ``analyses/demo_family.py`` makes it from scratch."""

SHIPPED_RELU_FAMILY = Path(__file__).resolve().parents[1] / "data" / "relu_family"
"""The ReLU + L1 family shipped beside it, with the architecture of the GPT-2 family of
"Stitching SAEs of different sizes" (the L1 coefficient held fixed): same site, activations,
widths and training tokens, the same files; ``analyses/demo_family.py --arch relu`` makes it."""

SHIPPED_FAMILIES = {"BatchTopK": SHIPPED_FAMILY, "ReLU + L1": SHIPPED_RELU_FAMILY}
"""Every shipped family by the name the report gives its architecture, the demo's first."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo harvests, and the family it analyses: the shipped one, or one trained here.

    The defaults are the shipped family's site; with ``retrain`` False the harvest must stay
    there, since the family was trained on it.
    """

    model: str = "smollm2-135m-instruct"
    """The language model: the packaged default, a Hugging Face name or a local path."""
    layer: int = 5
    """Residual stream after this block (0-based)."""
    tokens: int = 81_920
    """Tokens of packaged BBC news to harvest, from the first: the shipped family's held-out
    tokens (the first :data:`EVAL_TOKENS`, a fifth of the default) and the refit tokens after
    them; with ``retrain``, the training tokens too."""
    context: int = 128
    """Tokens per model input."""
    skip_first: int = 1
    """Text tokens at the start of each context left out (see saegeo.lm.harvest)."""
    retrain: bool = False
    """Train a family here with the settings below instead of using the shipped one."""
    arch: TrainArch = "batchtopk"
    """With ``retrain``: training architecture of the family (see saegeo.training.trainer)."""
    k: int = 32
    """With ``retrain``: active latents per token."""
    multipliers: tuple[int, ...] = (1, 2, 4, 8)
    """With ``retrain``: family widths as multiples of the model's width."""
    train_tokens: int = 600_000
    """With ``retrain``: training tokens per member (the store is cycled through)."""
    seed: int = 0
    """With ``retrain``: seed of the training runs."""

    @classmethod
    def retrained(cls) -> DemoSettings:
        """A family trained here from scratch in minutes (``saegeo demo --retrain``)."""
        return cls(tokens=300_000, retrain=True)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Small settings for a fast look (and for the test suite's notebook runs)."""
        return cls(tokens=40_000, retrain=True, multipliers=(1, 2, 4), train_tokens=200_000, k=16)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def shipped_record(family_dir: Path = SHIPPED_FAMILY) -> dict[str, Any]:
    """A shipped family's ``family.json`` (the demo's by default): its members, harvest and
    training settings."""
    return json.loads((family_dir / "family.json").read_text())


def check_shipped_site(settings: DemoSettings) -> None:
    """The harvest settings of ``settings`` must be those the shipped family was trained on."""
    harvest = shipped_record()["harvest"]
    for name in HARVEST_SETTINGS:
        if name != "tokens" and getattr(settings, name) != harvest[name]:
            raise ArgumentError(
                name,
                getattr(settings, name),
                f"the shipped family was trained with {name}={harvest[name]!r}; keep it, or "
                "set retrain=True to train a family on this site",
                owner="DemoSettings",
            )


HARVEST_SETTINGS = ("model", "layer", "tokens", "context", "skip_first")
TRAIN_SETTINGS = ("arch", "k", "multipliers", "train_tokens", "seed")


EVAL_TOKENS = 16_384
"""Tokens at the start of the store held out for every metric (train_family holds out the
same tokens for its own evaluation)."""
NOVELTY_TOKENS = 8192
"""Held-out tokens behind the novelty section's delta-MSE and curves."""
NOVELTY_POINTS = 7
"""Points on each cumulative novelty curve."""
TREE_MIN_SIZE = 3
"""Features a tree needs to be listed in ``trees.json``."""
TREE_COUNT = 50
"""Trees kept in ``trees.json``, most clearly splitting first."""
TREES_SHOWN = 3
"""Trees drawn in the report, on one colour scale."""
STITCH_TOKENS = 50_000
"""Tokens after the held-out ones that the Frankenstein decoder is refit on."""
