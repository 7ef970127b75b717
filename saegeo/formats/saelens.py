"""The SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``, read and written.

Reading follows ``sae_lens.SAE.load_from_disk``: every field of ``cfg.json`` is checked for
type and range and against the weights' shapes, and each SAELens architecture has one reader
below (``READERS``). Training saves of BatchTopK and Matryoshka-BatchTopK SAEs (architecture
``batchtopk`` / ``matryoshka_batchtopk`` with a ``topk_threshold``) load as the JumpReLU SAE
that SAELens's inference save of the same SAE holds: with ``rescale_acts_by_decoder_norm`` the
decoder norms are folded into the encoder, and the threshold, which SAELens compares with the
norm-scaled pre-activations, stays as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saegeo.core.normalization import NORMALIZATIONS
from saegeo.core.sae import SAE
from saegeo.errors import FormatError, SaegeoError
from saegeo.formats.reading import Config, read_json_object, read_safetensors, require_tensors
from saegeo.formats.saelens_config import saelens_metadata, upgrade_config
from saegeo.runtime.atomic import usual_mode
from saegeo.runtime.outputs import SAELENS_CFG, SAELENS_FORMAT_VERSION, SAELENS_WEIGHTS, SAVED_BY

ENCODER_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def fold_decoder_norm(
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scale latent j by ``||d_j||``: codes computed as ``pre·||d||``, decoded by ``d/||d||``."""
    norm_F = W_dec.norm(dim=-1).clamp_min(1e-8)
    return (
        W_enc * norm_F,
        b_enc * norm_F,
        W_dec / norm_F[:, None],
        None if threshold is None else threshold * norm_F,
    )


# --------------------------------------------------------------------------- reading


def read_saelens(path: Path) -> SAE:
    """The SAE in the SAELens directory ``path`` (see the module docstring)."""
    # Pre-6.0 configs are read in the 6.0 layout, as SAELens reads them.
    cfg_path = path / SAELENS_CFG
    cfg = Config(upgrade_config(read_json_object(cfg_path), cfg_path), cfg_path)
    weights = read_safetensors(path / SAELENS_WEIGHTS)
    arch = cfg.string("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if arch == "standard" and activation == "topk":  # SAELens < 6 kept TopK as an activation
        arch = "topk"
        if "k" not in cfg:
            cfg.fields["k"] = cfg.mapping("activation_fn_kwargs").get("k")
    reader = READERS.get(arch)
    if reader is None:
        raise SaegeoError(
            f"{path / SAELENS_CFG}: unsupported architecture {arch!r}; saegeo reads "
            f"{', '.join(READERS)} (gated SAEs and transcoders are not single-site SAEs of "
            "these kinds)"
        )
    sae = reader(cfg, weights, _common(cfg, path), path / SAELENS_WEIGHTS)
    _check_sizes(cfg, sae)
    return sae


def _common(cfg: Config, path: Path) -> dict[str, Any]:
    """The settings every architecture reads: centring, normalisation, metadata."""
    metadata = saelens_metadata(cfg)
    if metadata.get("matryoshka_widths") is None:
        metadata.pop("matryoshka_widths", None)
    metadata.setdefault("name", path.name)
    metadata["source"] = str(path)
    normalize = cfg.string(
        "normalize_activations", "none", choices=(*NORMALIZATIONS, "covariance_whitening")
    )
    return {
        "apply_b_dec_to_input": cfg.boolean("apply_b_dec_to_input", True),
        # SAELens runs covariance whitening as the identity at inference.
        "normalize_activations": "none" if normalize == "covariance_whitening" else normalize,
        "metadata": metadata,
    }


def _check_sizes(cfg: Config, sae: SAE) -> None:
    """``d_in``/``d_sae`` in the config, where given, must be the weights' sizes."""
    for key, actual in (("d_in", sae.d_in), ("d_sae", sae.width)):
        declared = cfg.integer(key, None, minimum=1)
        if declared is not None and declared != actual:
            raise FormatError(
                f"{cfg.source}: {key} is {declared} but the weights have {actual}; the config "
                "does not belong to these weights"
            )
    widths = sae.metadata.get("matryoshka_widths")
    if widths and widths[-1] > sae.width:
        raise FormatError(f"{cfg.source}: matryoshka_widths {widths} exceed the width {sae.width}")


Weights = dict[str, torch.Tensor]
Reader = Callable[[Config, Weights, dict[str, Any], Path], SAE]


def _read_relu(cfg: Config, weights: Weights, common: dict[str, Any], source: Path) -> SAE:
    w = require_tensors(weights, ENCODER_TENSORS, source)
    return SAE(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], arch="relu", **common)


def _read_jumprelu(cfg: Config, weights: Weights, common: dict[str, Any], source: Path) -> SAE:
    w = require_tensors(weights, ENCODER_TENSORS, source)
    if "threshold" in w:
        threshold = require_tensors(w, ["threshold"], source)["threshold"]
    elif "log_threshold" in w:
        threshold = require_tensors(w, ["log_threshold"], source)["log_threshold"].exp()
    else:
        raise FormatError(f"{source}: a jumprelu SAE needs a 'threshold' tensor")
    return SAE(
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        arch="jumprelu",
        threshold=threshold,
        **common,
    )


def _read_topk(cfg: Config, weights: Weights, common: dict[str, Any], source: Path) -> SAE:
    w = require_tensors(weights, ENCODER_TENSORS, source)
    k = cfg.integer("k", minimum=1)
    W_enc, b_enc, W_dec = w["W_enc"], w["b_enc"], w["W_dec"]
    if cfg.boolean("rescale_acts_by_decoder_norm", False):
        W_enc, b_enc, W_dec, _ = fold_decoder_norm(W_enc, b_enc, W_dec)
    return SAE(W_enc, b_enc, W_dec, w["b_dec"], arch="topk", k=k, **common)


def _read_batchtopk(cfg: Config, weights: Weights, common: dict[str, Any], source: Path) -> SAE:
    """A BatchTopK training save: JumpReLU with the running threshold (SAELens's inference
    conversion), or, without a threshold, the per-token TopK it approximates."""
    if "topk_threshold" not in weights:
        return _read_topk(cfg, weights, common, source)
    w = require_tensors(weights, [*ENCODER_TENSORS, "topk_threshold"], source)
    W_enc, b_enc, W_dec = w["W_enc"], w["b_enc"], w["W_dec"]
    if cfg.boolean("rescale_acts_by_decoder_norm", False):
        W_enc, b_enc, W_dec, _ = fold_decoder_norm(W_enc, b_enc, W_dec)
    if w["topk_threshold"].numel() != 1:  # SAELens reads it with .item()
        raise FormatError(
            f"{source}: topk_threshold must hold one number (the running BatchTopK threshold), "
            f"got shape {list(w['topk_threshold'].shape)}"
        )
    threshold_F = torch.full_like(b_enc, float(w["topk_threshold"]))
    return SAE(W_enc, b_enc, W_dec, w["b_dec"], arch="jumprelu", threshold=threshold_F, **common)


def _read_matching_pursuit(
    cfg: Config, weights: Weights, common: dict[str, Any], source: Path
) -> SAE:
    w = require_tensors(weights, ["W_dec", "b_dec"], source)
    return SAE.from_decoder(
        w["W_dec"],
        w["b_dec"],
        residual_threshold=cfg.number("residual_threshold", 1e-2, minimum=0.0),
        max_iterations=cfg.integer("max_iterations", None, minimum=1),
        stop_on_duplicate_support=cfg.boolean("stop_on_duplicate_support", True),
        **common,
    )


READERS: dict[str, Reader] = {
    "standard": _read_relu,
    "jumprelu": _read_jumprelu,
    "topk": _read_topk,
    "batchtopk": _read_batchtopk,
    "matryoshka_batchtopk": _read_batchtopk,
    "matching_pursuit": _read_matching_pursuit,
}
"""One reader per SAELens ``architecture``."""


# --------------------------------------------------------------------------- writing


def write_saelens(sae: SAE, path: Path) -> Path:
    """Write ``sae``'s SAELens files (``SAE.load_from_disk`` reads them) into the directory
    ``path``, made if missing; :func:`saegeo.save_sae` makes that appear whole or not at all."""
    arch = sae.architecture
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.width,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": "none",
        # "source" is where the SAE was last read from, set again on every load.
        "metadata": {
            **json_safe({k: v for k, v in sae.metadata.items() if k != "source"}),
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "saved_by": SAVED_BY,
        },
        "architecture": arch.saelens_name,
        **arch.saelens_config(sae),
    }
    weights = arch.saelens_weights(sae)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in weights.items()},
        str(path / SAELENS_WEIGHTS),
    )
    usual_mode(path / SAELENS_WEIGHTS)  # safetensors makes its files 0600
    (path / SAELENS_CFG).write_text(
        json.dumps(cfg, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def json_safe(obj: Any) -> Any:
    """``obj`` with tensors turned into lists, non-finite floats into None and anything else
    unserialisable into str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)
