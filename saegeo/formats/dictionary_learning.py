"""saprmarks/dictionary_learning's layout: ``ae.pt`` (a state dict) + ``config.json``.

``ae.pt`` is loaded with ``torch.load(weights_only=True)``, so no pickled code ever runs. The
dictionary class is recognised from the state dict's keys (and ``config.json``'s
``trainer.dict_class``): AutoEncoder (ReLU), AutoEncoderTopK, BatchTopKSAE (JumpReLU with its
threshold), JumpReluAutoEncoder (decoder-norm scaling folded into the weights) and
MatryoshkaBatchTopKSAE (JumpReLU with ``matryoshka_widths`` from its group sizes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from saegeo.core.sae import SAE
from saegeo.errors import FormatError
from saegeo.formats import fields
from saegeo.formats.reading import Config, read_json_object, require_tensors
from saegeo.formats.saelens import fold_decoder_norm
from saegeo.runtime.paths import regular_file

DICTLEARN_WEIGHTS = "ae.pt"
DICTLEARN_CFG = "config.json"


def read_dictionary_learning(path: Path) -> SAE:
    """The SAE in the dictionary_learning directory ``path``."""
    source = regular_file(path / DICTLEARN_WEIGHTS, what="weights file")
    try:
        with warnings.catch_warnings():  # a refused legacy file is reported below, once
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal or a damaged archive
        raise FormatError(
            f"{source}: not a plain tensor state dict ({type(exc).__name__}); saegeo loads "
            "ae.pt with weights_only=True and never unpickles code"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{source}: expected a state dict of tensors")
    cfg_path = path / DICTLEARN_CFG
    outer = Config(read_json_object(cfg_path) if cfg_path.exists() else {}, cfg_path)
    trainer = Config(outer.mapping("trainer"), f"{cfg_path} (trainer)")
    dict_class = trainer.string("dict_class", "")
    metadata: dict[str, Any] = {
        "name": path.name,
        "source": str(path),
        "format": "dictionary_learning",
        "dict_class": dict_class,
    }
    for key in ("lm_name", "layer", "submodule_name"):
        if key in trainer:
            metadata[key] = trainer.get(key)

    if "encoder.weight" in state and "bias" in state:  # AutoEncoder (standard ReLU)
        w = require_tensors(
            state, ["encoder.weight", "encoder.bias", "decoder.weight", "bias"], source
        )
        return SAE(
            W_enc=w["encoder.weight"].T,
            b_enc=w["encoder.bias"],
            W_dec=w["decoder.weight"].T,
            b_dec=w["bias"],
            arch="relu",
            metadata=metadata,
        )
    if "encoder.weight" in state:  # AutoEncoderTopK / BatchTopKSAE
        w = require_tensors(
            state, ["encoder.weight", "encoder.bias", "decoder.weight", "b_dec"], source
        )
        W_enc, b_enc = w["encoder.weight"].T, w["encoder.bias"]
        W_dec, b_dec = w["decoder.weight"].T, w["b_dec"]
        threshold = _threshold_F(state, W_dec.shape[0], source)
        if "BatchTopK" in dict_class and threshold is not None and float(threshold.max()) >= 0:
            return SAE(
                W_enc, b_enc, W_dec, b_dec, arch="jumprelu", threshold=threshold, metadata=metadata
            )
        k: int | None = trainer.integer("k", None, minimum=1)
        if "k" in state:
            if state["k"].numel() != 1 or state["k"].is_floating_point():
                raise FormatError(f"{source}: 'k' must be one integer, got {state['k'].tolist()}")
            k = fields.integer(int(state["k"]), field="k", source=source, minimum=1)
        if k is None:
            raise FormatError(f"{source}: a TopK dictionary needs 'k' (state dict or config)")
        return SAE(W_enc, b_enc, W_dec, b_dec, arch="topk", k=k, metadata=metadata)
    if "W_enc" in state:  # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE
        w = require_tensors(state, ["W_enc", "b_enc", "W_dec", "b_dec"], source)
        W_enc, b_enc, W_dec, b_dec = w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]
        threshold = _threshold_F(state, W_dec.shape[0], source)
        if "group_sizes" in state:
            sizes = state["group_sizes"]
            if sizes.ndim != 1 or sizes.is_floating_point() or bool((sizes < 1).any()):
                raise FormatError(
                    f"{source}: group_sizes must be positive integers, got {sizes.tolist()}"
                )
            if int(sizes.sum()) != W_dec.shape[0]:
                raise FormatError(
                    f"{source}: group_sizes add up to {int(sizes.sum())}, "
                    f"not the width {W_dec.shape[0]}"
                )
            metadata["matryoshka_widths"] = torch.cumsum(sizes, 0).tolist()
            if threshold is None:
                raise FormatError(f"{source}: a Matryoshka BatchTopK dictionary needs 'threshold'")
            return SAE(
                W_enc, b_enc, W_dec, b_dec, arch="jumprelu", threshold=threshold, metadata=metadata
            )
        if threshold is None:
            raise FormatError(f"{source}: a JumpReLU dictionary needs 'threshold'")
        W_enc, b_enc, W_dec, threshold = fold_decoder_norm(W_enc, b_enc, W_dec, threshold)
        return SAE(
            W_enc,
            b_enc,
            W_dec,
            b_dec,
            arch="jumprelu",
            threshold=threshold,
            apply_b_dec_to_input=False,
            metadata=metadata,
        )
    raise FormatError(f"{source}: unrecognised dictionary_learning layout (keys {sorted(state)})")


def _threshold_F(state: dict[str, torch.Tensor], width: int, source: Path) -> torch.Tensor | None:
    """The threshold per latent [width] (a scalar threshold is broadcast), or None."""
    t = state.get("threshold")
    if t is None:
        return None
    require_tensors(state, ["threshold"], source)
    if t.numel() == 1:
        return t.reshape(1).expand(width).clone()
    if t.shape != (width,):
        raise FormatError(f"{source}: threshold has shape {tuple(t.shape)}, expected ({width},)")
    return t
