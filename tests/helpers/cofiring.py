"""Dense, one-pair-at-a-time references for the co-firing scores (saegeo.geometry.cofiring)."""

from __future__ import annotations

import numpy as np


def naive_cofiring(parent_NP: np.ndarray, child_NC: np.ndarray, *, weighted: bool) -> np.ndarray:
    """P(parent fires | child fires), one pair at a time [P, C]."""
    out = np.zeros((parent_NP.shape[1], child_NC.shape[1]))
    for p in range(parent_NP.shape[1]):
        for c in range(child_NC.shape[1]):
            on_child = child_NC[:, c] != 0
            weight = np.abs(child_NC[:, c]) if weighted else on_child.astype(float)
            total = weight[on_child].sum()
            both = on_child & (parent_NP[:, p] != 0)
            out[p, c] = weight[both].sum() / total if total > 0 else 0.0
    return out


def naive_means(codes_NF: np.ndarray, x_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    means = np.zeros((codes_NF.shape[1], x_ND.shape[1]))
    for f in range(codes_NF.shape[1]):
        on = codes_NF[:, f] != 0
        if on.any():
            means[f] = x_ND[on].mean(axis=0)
    return means, x_ND.mean(axis=0)


def naive_presence(W_PD, parent_NP, child_NC, x_ND) -> np.ndarray:
    """d̂_i · (mean x on j's tokens − mean x) / d̂_i · (mean x on i's tokens − mean x)."""
    mean = x_ND.mean(axis=0)
    out = np.zeros((parent_NP.shape[1], child_NC.shape[1]))
    for p in range(parent_NP.shape[1]):
        unit = W_PD[p] / np.linalg.norm(W_PD[p])
        on_p = parent_NP[:, p] != 0
        own = unit @ (x_ND[on_p].mean(axis=0) - mean) if on_p.any() else 0.0
        for c in range(child_NC.shape[1]):
            on_c = child_NC[:, c] != 0
            there = unit @ (x_ND[on_c].mean(axis=0) - mean) if on_c.any() else -mean @ unit
            out[p, c] = there / own if own > 0 else 0.0
    return out


def naive_present(W_FD, codes_NF, x_ND, fraction: float = 0.5) -> np.ndarray:
    """1 where latent f fires or d̂_f · (x − mean x) >= fraction · d̂_f · (mean x on f − mean x)."""
    mean = x_ND.mean(axis=0)
    out = np.zeros(codes_NF.shape)
    for f in range(codes_NF.shape[1]):
        unit = W_FD[f] / np.linalg.norm(W_FD[f])
        on = codes_NF[:, f] != 0
        own = unit @ (x_ND[on].mean(axis=0) - mean) if on.any() else 0.0
        for t in range(codes_NF.shape[0]):
            out[t, f] = float(on[t] or (own > 0 and unit @ (x_ND[t] - mean) >= fraction * own))
    return out
