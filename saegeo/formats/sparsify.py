"""EleutherAI sparsify's layout: ``cfg.json`` + ``sae.safetensors`` (TopK SAEs)."""

from __future__ import annotations

from pathlib import Path

from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.formats.reading import Config, read_json_object, read_safetensors, require_tensors

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"


def read_sparsify(path: Path) -> SAE:
    """The TopK SAE in the sparsify directory ``path`` (decoder ``W_dec`` [F, D] as saved)."""
    cfg = Config(read_json_object(path / SPARSIFY_CFG), path / SPARSIFY_CFG)
    source = path / SPARSIFY_WEIGHTS
    weights = read_safetensors(source)
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in weights:
        raise SaegeoError(
            f"{path}: sparsify transcoders and skip connections are not SAEs of "
            "one site; saegeo reads plain sparsify SAEs"
        )
    cfg.string("activation", "topk", choices=("topk",))
    k = cfg.integer("k", minimum=1)
    w = require_tensors(weights, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], source)
    return SAE(
        W_enc=w["encoder.weight"].T,
        b_enc=w["encoder.bias"],
        W_dec=w["W_dec"],
        b_dec=w["b_dec"],
        arch="topk",
        k=k,
        metadata={
            "name": path.name,
            "source": str(path),
            "format": "sparsify",
            **{key: cfg.get(key) for key in ("hookpoint", "layer") if key in cfg},
        },
    )
