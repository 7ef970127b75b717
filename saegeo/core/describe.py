"""Plain-text summaries of SAEs for ``saegeo info``."""

from __future__ import annotations

import torch

from saegeo.core.sae import SAE


def sparsity_settings(sae: SAE) -> str:
    """What controls the SAE's L0, in words."""
    if sae.arch == "topk":
        return f"k={sae.k}"
    if sae.arch == "jumprelu" and sae.threshold is not None:
        t = sae.threshold.float()
        return (
            f"threshold min/median/max {float(t.min()):.4g}/{float(t.median()):.4g}/"
            f"{float(t.max()):.4g}"
        )
    if sae.arch == "matching_pursuit":
        iters = sae.max_iterations if sae.max_iterations is not None else f"d_in={sae.d_in}"
        return (
            f"max_iterations={iters}, residual_threshold={sae.residual_threshold:g}, "
            f"stop_on_duplicate_support={sae.stop_on_duplicate_support}"
        )
    return "L1-trained ReLU (no explicit L0 setting)"


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
