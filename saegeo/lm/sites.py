"""TransformerLens hook names and model settings, as a ``transformers`` forward computes them.

Published SAEs name their site in TransformerLens terms (``hook_name`` such as
``blocks.8.hook_resid_pre``) and were trained on activations of a TransformerLens model loaded
with the release's ``model_from_pretrained_kwargs`` (SAELens loads it with
``HookedTransformer.from_pretrained_no_processing(model_name, **kwargs)``). :func:`site_for`
maps them onto saegeo's harvest, which runs the ``transformers`` model:

- ``blocks.L.hook_resid_pre``: the input of block L, the output of block L-1
  (``hidden_states[L]``), for L >= 1. ``blocks.0.hook_resid_pre`` (the embeddings) is refused.
- ``blocks.L.hook_resid_post``: the output of block L (``hidden_states[L + 1]``; for the last
  block, before the final norm, as in TransformerLens).
- Any other hook (``hook_resid_mid``, ``hook_mlp_out``, ``attn.hook_z``, ``hook_embed``, ...)
  is refused.

Model settings (``model_from_pretrained_kwargs``):

- ``center_writing_weights``: TransformerLens subtracts, from every weight and bias that writes
  to the residual stream (``W_E``, ``W_pos``, every ``W_O``/``b_O`` and ``W_out``/``b_out``),
  its mean across d_model, on models with LayerNorm (others are left as they are). LayerNorm
  reads its input minus the input's mean, so every block then computes exactly what it did
  before; by induction the residual stream at every position is the original one minus its
  mean across d_model. The harvest therefore subtracts each token's mean across d_model, on
  LayerNorm models (``center=True``), and leaves RMSNorm models as they are, like
  TransformerLens.
- ``fold_ln``, ``center_unembed``, ``fold_value_biases``, ``refactor_factored_attn_matrices``:
  they change weights but not the residual stream, so nothing is done.
- ``dtype``, ``device``, ``n_devices``: where the model runs; the harvest's own settings apply.
- ``default_prepend_bos=True`` is what the harvest does (it always starts contexts with BOS);
  anything else is refused, as is any other setting.

An SAE config's ``prepend_bos`` must be True (or absent) for the same reason; its
``context_size`` becomes the harvest's ``context``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saegeo.errors import SaegeoError

NEUTRAL_SETTINGS = frozenset(
    {
        "fold_ln",
        "center_unembed",
        "fold_value_biases",
        "refactor_factored_attn_matrices",
        "dtype",
        "device",
        "n_devices",
    }
)
"""TransformerLens settings that leave the residual stream unchanged."""
SUPPORTED_HOOKS = "blocks.L.hook_resid_pre (L >= 1) and blocks.L.hook_resid_post"
MODEL_NAMES = {
    "gpt2-small": "gpt2",
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "pythia-410m-deduped": "EleutherAI/pythia-410m-deduped",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
}
"""TransformerLens model names -> Hugging Face names for the families saegeo documents."""
_HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post)")


@dataclass(frozen=True)
class Site:
    """Where and how to harvest the activations an SAE reads."""

    hook_name: str
    """The TransformerLens hook name."""
    layer: int
    """The block whose output holds the activations (saegeo's harvest ``layer``)."""
    center_writing_weights: bool
    """Whether the TransformerLens model centred its writing weights (see the module)."""


def resolve_hook(hook_name: str, *, source: str = "hook") -> tuple[int, str]:
    """``(layer, point)`` of a supported hook name: the block whose output it is.

    >>> resolve_hook("blocks.8.hook_resid_pre"), resolve_hook("blocks.8.hook_resid_post")
    ((7, 'resid_pre'), (8, 'resid_post'))
    """
    match = _HOOK_RE.fullmatch(str(hook_name))
    if match is None:
        raise SaegeoError(
            f"{source} {hook_name!r}: saegeo harvests the residual stream only, {SUPPORTED_HOOKS}"
        )
    block, point = int(match.group(1)), match.group(2)
    if point == "resid_post":
        return block, point
    if block == 0:
        raise SaegeoError(
            f"{source} {hook_name!r}: the input of block 0 is the embedding output, which "
            f"saegeo does not harvest; supported: {SUPPORTED_HOOKS}"
        )
    return block - 1, point


def check_model_settings(settings: Mapping[str, Any] | None, *, source: str) -> bool:
    """Whether ``settings`` ask for ``center_writing_weights``; other settings are checked."""
    center = False
    for key, value in (settings or {}).items():
        if key == "center_writing_weights":
            center = bool(value)
        elif key == "default_prepend_bos":
            if value is not None and not value:
                raise SaegeoError(
                    f"{source}: default_prepend_bos={value!r}; saegeo's harvest always prepends BOS"
                )
        elif key not in NEUTRAL_SETTINGS:
            raise SaegeoError(
                f"{source}: model setting {key}={value!r} is not supported; saegeo applies "
                "center_writing_weights and accepts "
                f"{', '.join(sorted(NEUTRAL_SETTINGS | {'default_prepend_bos'}))}"
            )
    return center


def site_for(metadata: Mapping[str, Any], *, source: str = "SAE") -> Site:
    """The harvest site of an SAE from its metadata (``hook_name``, model settings)."""
    hook = metadata.get("hook_name") or metadata.get("hook_point")
    if not hook:
        raise SaegeoError(f"{source}: records no hook_name; harvest with --layer instead")
    layer, _ = resolve_hook(str(hook), source=f"{source}: hook_name")
    if metadata.get("prepend_bos") is False:
        raise SaegeoError(
            f"{source}: trained without a BOS token (prepend_bos=false); saegeo's harvest "
            "always prepends BOS"
        )
    center = check_model_settings(
        metadata.get("model_from_pretrained_kwargs"),
        source=f"{source}: model_from_pretrained_kwargs",
    )
    return Site(str(hook), layer, center)


def hf_model_name(model_name: str) -> str:
    """The Hugging Face name of a TransformerLens model name (unchanged when unknown)."""
    if model_name in MODEL_NAMES:
        return MODEL_NAMES[model_name]
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return model_name
    try:
        return str(get_official_model_name(model_name))
    except ValueError:
        return model_name


def uses_layer_norm(model: torch.nn.Module) -> bool:
    """Whether ``model`` normalises with LayerNorm (centring then matters; not for RMSNorm)."""
    return any(isinstance(module, torch.nn.LayerNorm) for module in model.modules())


def centred(acts_BTD: torch.Tensor) -> torch.Tensor:
    """Each token minus its mean across d_model (in float32): the residual stream of a
    TransformerLens LayerNorm model loaded with ``center_writing_weights``."""
    acts_BTD = acts_BTD.float()
    return acts_BTD - acts_BTD.mean(dim=-1, keepdim=True)
