"""Build SAEs with the real SAELens, for compatibility tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE as LensSAE
from sae_lens import JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAEConfig

CONFIGS = {
    "standard": StandardSAEConfig,
    "jumprelu": JumpReLUSAEConfig,
    "topk": TopKSAEConfig,
    "matching_pursuit": MatchingPursuitSAEConfig,
}


def make_lens_sae(arch: str, d_in: int = 16, d_sae: int = 48, **cfg: Any) -> LensSAE:
    """A SAELens SAE of ``arch`` with random (non-trivial) weights."""
    config = CONFIGS[arch](d_in=d_in, d_sae=d_sae, **cfg)
    sae = LensSAE.from_dict(config.to_dict())
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name == "threshold":
                param.copy_(torch.rand_like(param) * 0.5)
            elif name in ("b_enc", "b_dec"):
                param.copy_(torch.randn_like(param) * 0.1)
            else:
                param.copy_(torch.randn_like(param) / d_in**0.5)
    return sae


def save_lens_sae(sae: LensSAE, path: Path) -> Path:
    sae.save_model(path)
    return path
