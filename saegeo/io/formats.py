"""Reading SAEs from SAELens, dictionary_learning and sparsify files; writing SAELens layout.

Every reader returns a :class:`saegeo.SAE` whose ``encode``/``decode`` equal the original
library's on the same inputs. Conventions that only rescale latents (SAELens TopK's
``rescale_acts_by_decoder_norm``, dictionary_learning JumpReLU's decoder-norm scaling) are
folded into the weights, which leaves the codes and reconstructions unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saegeo.core.sae import SAE
from saegeo.errors import FormatError, SaegeoError
from saegeo.io.atomic import atomic_dir
from saegeo.io.paths import regular_files_in

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
DICTLEARN_WEIGHTS = "ae.pt"
DICTLEARN_CFG = "config.json"
# The SAELens config layout these files follow (SAELens reads configs without a version as
# pre-6.0 and renames their keys).
SAELENS_FORMAT_VERSION = "6.0.0"


def load_sae(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> SAE:
    """Read an SAE from a SAELens, dictionary_learning or sparsify directory (or ``ae.pt``).

    Examples:
        >>> sae = load_sae("path/to/sae")  # doctest: +SKIP
    """
    path = Path(path)
    regular_files_in(
        path, (SAELENS_CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, DICTLEARN_WEIGHTS, DICTLEARN_CFG)
    )
    if path.is_file() and path.name == DICTLEARN_WEIGHTS:
        path = path.parent
    if not path.exists():
        raise SaegeoError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise SaegeoError(
            f"{path}: expected an SAE directory (SAELens, dictionary_learning or sparsify layout)"
        )
    if (path / SAELENS_WEIGHTS).exists() or (
        (path / SAELENS_CFG).exists() and not (path / SPARSIFY_WEIGHTS).exists()
    ):
        sae = _load_saelens(path)
    elif (path / SPARSIFY_WEIGHTS).exists():
        sae = _load_sparsify(path)
    elif (path / DICTLEARN_WEIGHTS).exists():
        sae = _load_dictionary_learning(path)
    else:
        raise FormatError(
            f"{path}: no SAE files found; expected {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), "
            f"{DICTLEARN_WEIGHTS} + {DICTLEARN_CFG} (dictionary_learning) or "
            f"{SAELENS_CFG} + {SPARSIFY_WEIGHTS} (sparsify)"
        )
    sae = sae.to(dtype=dtype)
    sae.check(str(path))
    return sae


def save_sae(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``).

    The directory appears complete or not at all; an existing one is replaced.
    ``sae_lens.SAE.load_from_disk(path)`` reads it back.
    """
    sae.check("save_sae()")
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.width,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": "none",
        "metadata": {**_json_safe(sae.metadata), "sae_lens_version": SAELENS_FORMAT_VERSION},
        "architecture": {"relu": "standard"}.get(sae.arch, sae.arch),
    }
    weights = {"W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.arch == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    if sae.arch == "matching_pursuit":
        cfg.update(
            residual_threshold=sae.residual_threshold,
            max_iterations=sae.max_iterations,
            stop_on_duplicate_support=sae.stop_on_duplicate_support,
        )
    else:
        weights.update(W_enc=sae.W_enc, b_enc=sae.b_enc)
    if sae.threshold is not None:
        weights["threshold"] = sae.threshold
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            str(tmp / SAELENS_WEIGHTS),
        )
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- SAELens


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FormatError(f"{path}: missing; an SAE directory needs its config file")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return cfg


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FormatError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several error types on damaged files
        raise FormatError(
            f"{path}: unreadable safetensors file ({exc}); re-save or re-download it"
        ) from None


def _require(weights: dict[str, torch.Tensor], keys: list[str], source: Path) -> None:
    missing = [k for k in keys if k not in weights]
    if missing:
        raise FormatError(f"{source}: missing tensors {missing} (found {sorted(weights)})")


def _fold_decoder_norm(
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scale latent j by ||d_j||: codes computed as ``pre·||d||`` then decoded by ``d/||d||``."""
    norm_F = W_dec.norm(dim=-1).clamp_min(1e-8)
    return (
        W_enc * norm_F,
        b_enc * norm_F,
        W_dec / norm_F[:, None],
        None if threshold is None else threshold * norm_F,
    )


def _load_saelens(path: Path) -> SAE:
    cfg = _read_json(path / SAELENS_CFG)
    weights = _read_safetensors(path / SAELENS_WEIGHTS)
    source = path / SAELENS_WEIGHTS
    arch = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if arch == "standard" and activation == "topk":  # SAELens < 6 kept TopK as an activation
        arch = "topk"
        cfg.setdefault("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    metadata = dict(cfg.get("metadata") or {})
    for key in (
        "model_name",
        "hook_name",
        "hook_layer",
        "hook_point",
        "dataset_path",
        "context_size",
        "matryoshka_widths",
    ):
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    metadata.setdefault("name", path.name)
    metadata["source"] = str(path)
    common: dict[str, Any] = {
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize_activations": cfg.get("normalize_activations", "none") or "none",
        "metadata": metadata,
    }
    if common["normalize_activations"] == "covariance_whitening":
        common["normalize_activations"] = "none"  # SAELens runs it as identity at inference
    if arch == "matching_pursuit":
        _require(weights, ["W_dec", "b_dec"], source)
        return SAE(
            W_enc=weights["W_dec"].T,
            b_enc=torch.zeros(weights["W_dec"].shape[0]),
            W_dec=weights["W_dec"],
            b_dec=weights["b_dec"],
            arch="matching_pursuit",
            residual_threshold=float(cfg.get("residual_threshold", 1e-2)),
            max_iterations=cfg.get("max_iterations"),
            stop_on_duplicate_support=bool(cfg.get("stop_on_duplicate_support", True)),
            **common,
        )
    _require(weights, ["W_enc", "b_enc", "W_dec", "b_dec"], source)
    W_enc, b_enc, W_dec = weights["W_enc"], weights["b_enc"], weights["W_dec"]
    threshold = weights.get("threshold")
    if threshold is None and "log_threshold" in weights:
        threshold = weights["log_threshold"].exp()
    if arch in ("batchtopk", "matryoshka_batchtopk") and "topk_threshold" in weights:
        threshold = torch.full_like(b_enc, float(weights["topk_threshold"]))
        arch = "jumprelu"
    if arch == "standard":
        return SAE(
            W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=weights["b_dec"], arch="relu", **common
        )
    if arch == "jumprelu":
        if threshold is None:
            raise FormatError(f"{source}: a jumprelu SAE needs a 'threshold' tensor")
        if cfg.get("rescale_acts_by_decoder_norm"):
            W_enc, b_enc, W_dec, threshold = _fold_decoder_norm(W_enc, b_enc, W_dec, threshold)
        return SAE(
            W_enc=W_enc,
            b_enc=b_enc,
            W_dec=W_dec,
            b_dec=weights["b_dec"],
            arch="jumprelu",
            threshold=threshold,
            **common,
        )
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        if not isinstance(cfg.get("k"), int):
            raise FormatError(f"{path / SAELENS_CFG}: a topk SAE needs an integer 'k'")
        if cfg.get("rescale_acts_by_decoder_norm"):
            W_enc, b_enc, W_dec, _ = _fold_decoder_norm(W_enc, b_enc, W_dec)
        return SAE(
            W_enc=W_enc,
            b_enc=b_enc,
            W_dec=W_dec,
            b_dec=weights["b_dec"],
            arch="topk",
            k=int(cfg["k"]),
            **common,
        )
    raise SaegeoError(
        f"{path / SAELENS_CFG}: unsupported architecture {arch!r}; saegeo reads standard, "
        "jumprelu, topk (also BatchTopK and Matryoshka saved for inference) and matching_pursuit"
    )


# --------------------------------------------------------------------------- sparsify


def _load_sparsify(path: Path) -> SAE:
    cfg = _read_json(path / SAELENS_CFG)
    source = path / SPARSIFY_WEIGHTS
    weights = _read_safetensors(source)
    _require(weights, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], source)
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in weights:
        raise SaegeoError(
            f"{path}: sparsify transcoders and skip connections are not SAEs of "
            "one site; saegeo reads plain sparsify SAEs"
        )
    if cfg.get("activation", "topk") != "topk":
        raise SaegeoError(
            f"{path / SAELENS_CFG}: unsupported sparsify activation "
            f"{cfg.get('activation')!r}; saegeo reads topk"
        )
    if not isinstance(cfg.get("k"), int):
        raise FormatError(f"{path / SAELENS_CFG}: a sparsify SAE needs an integer 'k'")
    return SAE(
        W_enc=weights["encoder.weight"].T,
        b_enc=weights["encoder.bias"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        arch="topk",
        k=int(cfg["k"]),
        metadata={
            "name": path.name,
            "source": str(path),
            "format": "sparsify",
            **{k: cfg[k] for k in ("hookpoint", "layer") if k in cfg},
        },
    )


# --------------------------------------------------------------------------- dictionary_learning


def _load_dictionary_learning(path: Path) -> SAE:
    source = path / DICTLEARN_WEIGHTS
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal or a damaged archive
        raise FormatError(
            f"{source}: not a plain tensor state dict ({type(exc).__name__}); saegeo loads "
            "ae.pt with weights_only=True and never unpickles code"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{source}: expected a state dict of tensors")
    cfg_path = path / DICTLEARN_CFG
    trainer = _read_json(cfg_path).get("trainer", {}) if cfg_path.exists() else {}
    dict_class = str(trainer.get("dict_class", ""))
    metadata: dict[str, Any] = {
        "name": path.name,
        "source": str(path),
        "format": "dictionary_learning",
        "dict_class": dict_class,
    }
    for key in ("lm_name", "layer", "submodule_name"):
        if key in trainer:
            metadata[key] = trainer[key]

    def threshold_F(width: int) -> torch.Tensor | None:
        t = state.get("threshold")
        if t is None:
            return None
        return t.expand(width).clone() if t.numel() == 1 else t

    if "encoder.weight" in state and "bias" in state:  # AutoEncoder (standard ReLU)
        _require(state, ["encoder.weight", "encoder.bias", "decoder.weight"], source)
        return SAE(
            W_enc=state["encoder.weight"].T,
            b_enc=state["encoder.bias"],
            W_dec=state["decoder.weight"].T,
            b_dec=state["bias"],
            arch="relu",
            metadata=metadata,
        )
    if "encoder.weight" in state:  # AutoEncoderTopK / BatchTopKSAE
        _require(state, ["encoder.bias", "decoder.weight", "b_dec"], source)
        W_enc, b_enc = state["encoder.weight"].T, state["encoder.bias"]
        W_dec, b_dec = state["decoder.weight"].T, state["b_dec"]
        width = W_dec.shape[0]
        threshold = threshold_F(width)
        if "BatchTopK" in dict_class and threshold is not None and float(threshold.max()) >= 0:
            return SAE(
                W_enc=W_enc,
                b_enc=b_enc,
                W_dec=W_dec,
                b_dec=b_dec,
                arch="jumprelu",
                threshold=threshold,
                metadata=metadata,
            )
        k = int(state["k"]) if "k" in state else trainer.get("k")
        if k is None:
            raise FormatError(f"{source}: a TopK dictionary needs 'k' (state dict or config)")
        return SAE(
            W_enc=W_enc,
            b_enc=b_enc,
            W_dec=W_dec,
            b_dec=b_dec,
            arch="topk",
            k=int(k),
            metadata=metadata,
        )
    if "W_enc" in state:  # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE
        _require(state, ["b_enc", "W_dec", "b_dec"], source)
        W_enc, b_enc, W_dec, b_dec = state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"]
        width = W_dec.shape[0]
        threshold = threshold_F(width)
        if "group_sizes" in state:
            metadata["matryoshka_widths"] = torch.cumsum(state["group_sizes"], 0).tolist()
            if threshold is None:
                raise FormatError(f"{source}: a Matryoshka BatchTopK dictionary needs 'threshold'")
            return SAE(
                W_enc=W_enc,
                b_enc=b_enc,
                W_dec=W_dec,
                b_dec=b_dec,
                arch="jumprelu",
                threshold=threshold,
                metadata=metadata,
            )
        if threshold is None:
            raise FormatError(f"{source}: a JumpReLU dictionary needs 'threshold'")
        W_enc, b_enc, W_dec, threshold = _fold_decoder_norm(W_enc, b_enc, W_dec, threshold)
        return SAE(
            W_enc=W_enc,
            b_enc=b_enc,
            W_dec=W_dec,
            b_dec=b_dec,
            arch="jumprelu",
            threshold=threshold,
            apply_b_dec_to_input=False,
            metadata=metadata,
        )
    raise FormatError(f"{source}: unrecognised dictionary_learning layout (keys {sorted(state)})")


def _json_safe(obj: Any) -> Any:
    """``obj`` with tensors turned into lists and anything else unserialisable into str."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
