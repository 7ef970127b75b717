"""Harvest settings: which layer, how the text is cut into contexts, how activations are stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from saegeo.config import fail

StoreDtype = Literal["float16", "bfloat16", "float32"]
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
ModelDtype = Literal["auto", "float16", "bfloat16", "float32"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)


@dataclass(frozen=True)
class HarvestConfig:
    """How :func:`saegeo.lm.harvest.harvest` runs a language model and stores its activations.

    Examples
    --------
    >>> HarvestConfig(layer=15, max_tokens=100_000).tokens_per_context
    126
    """

    layer: int | None = None
    """The block whose output is stored, 0-based; None is the middle block (n_layers // 2)."""
    context: int = 128
    """Tokens per model input, BOS included."""
    skip_first: int = 1
    """Text tokens at the start of each context that are run but not stored. The first position
    after BOS often carries a massive activation (an attention sink, up to 100× the typical
    norm) that would dominate every squared error; 0 stores them all."""
    batch_size: int = 16
    """Contexts per forward pass."""
    max_tokens: int | None = None
    """Stop after this many stored tokens in all, of every rank together under a process group
    (None: the whole text source)."""
    dtype: StoreDtype = "float16"
    """The stored dtype."""
    model_dtype: ModelDtype = "auto"
    """The dtype the model computes in; ``auto`` is bfloat16 where the device multiplies it fast
    (see :func:`saegeo.lm.models.load_model`), else float32."""
    device: str | torch.device = "auto"
    """Where the model runs; ``auto`` is CUDA when present."""
    gguf_file: str | None = None
    """The GGUF file inside the model directory or repository, for GGUF checkpoints."""
    text_source: str | None = None
    """A name for texts given as a list of strings, recorded in the store's metadata."""
    shard_tokens: int = 65536
    """About how many tokens per shard (rounded down to whole contexts); under a process group,
    the share of work each rank takes in turn."""
    compile: bool | None = None
    """Compile the blocks that run with ``torch.compile`` (1.1–1.4× faster on a CPU, after a few
    seconds of compiling; see :mod:`saegeo.lm.forward`); None compiles on a CPU when the call
    harvests at least ``saegeo.lm.harvest.COMPILE_MIN_TOKENS`` tokens."""
    progress: bool | None = None
    """Progress bar (tokens): None on a terminal, True always, False never."""
    hook: str | None = None
    """A TransformerLens hook name in place of ``layer``: ``blocks.L.hook_resid_pre`` (L >= 1,
    the output of block L - 1) or ``blocks.L.hook_resid_post`` (see :mod:`saegeo.lm.sites`)."""
    center_writing_weights: bool = False
    """Store the residual stream of the TransformerLens model loaded with
    ``center_writing_weights=True``: each token minus its mean across d_model, on LayerNorm
    models (RMSNorm models are left as they are, as TransformerLens does)."""

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            fail(self, "dtype", f"choose one of {', '.join(STORE_DTYPES)}")
        if self.model_dtype not in MODEL_DTYPES:
            fail(self, "model_dtype", f"choose one of {', '.join(MODEL_DTYPES)}")
        if self.layer is not None and self.layer < 0:
            fail(self, "layer", "must be a block index >= 0 (or None for the middle block)")
        if self.skip_first < 0:
            fail(self, "skip_first", "must be at least 0")
        if self.context < 2 + self.skip_first:
            fail(
                self,
                "context",
                f"must be at least {2 + self.skip_first} (BOS, {self.skip_first} skipped "
                "tokens and one stored token)",
            )
        if self.batch_size < 1:
            fail(self, "batch_size", "must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            fail(self, "max_tokens", "must be at least 1")
        if self.shard_tokens < 1:
            fail(self, "shard_tokens", "must be at least 1")

    @property
    def tokens_per_context(self) -> int:
        """Tokens stored per context: ``context - 1 - skip_first``."""
        return self.context - 1 - self.skip_first
