"""Plain-text summaries of SAEs for ``saegeo info``."""

from __future__ import annotations

import torch

from saegeo.core.sae import SAE


def sparsity_settings(sae: SAE) -> str:
    """What controls the SAE's L0, in words."""
    return sae.architecture.settings(sae)


def describe_sae(sae: SAE) -> str:
    """A few lines: source, architecture, sizes, sparsity settings, decoder-norm summary."""
    norms_F = sae.W_dec.float().norm(dim=-1)
    q = torch.quantile(norms_F, torch.tensor([0.0, 0.5, 1.0])) if sae.width else torch.zeros(3)
    lines = [
        f"{sae.metadata.get('source', sae.name)}",
        f"  arch {sae.arch}  d_in {sae.d_in}  width {sae.width}  dtype "
        f"{str(sae.dtype).removeprefix('torch.')}",
        f"  sparsity: {sparsity_settings(sae)}",
        f"  decoder norms min/median/max {float(q[0]):.4g}/{float(q[1]):.4g}/{float(q[2]):.4g}",
        f"  apply_b_dec_to_input {sae.apply_b_dec_to_input}  normalize_activations "
        f"{sae.normalize_activations}",
    ]
    for key in (
        "release",
        "sae_id",
        "model_name",
        "hook_name",
        "neuronpedia_id",
        "matryoshka_widths",
    ):
        if sae.metadata.get(key) is not None:
            lines.append(f"  {key} {sae.metadata[key]}")
    return "\n".join(lines)
