"""The interpolation path of "Stitching SAEs of different sizes" between two widths of a family.

Starting from the smaller SAE, add the larger SAE's novel features one at a time, then swap
its reconstruction groups in one at a time, recording size, L0 and MSE after every step. The
members are made additive as for Frankenstein SAEs (TopK through :meth:`SAE.to_jumprelu`), so
every feature fires as in its own SAE and one pass over the activations gives every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, BatchStream, StreamOptions, read, with_stream_options
from saegeo.config import check_count
from saegeo.core.sae import SAE, concat
from saegeo.effects.metrics import evaluate_batches
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.formats.family import Family, as_family
from saegeo.geometry.classify import swap_groups
from saegeo.geometry.similarity import decoder_cosine
from saegeo.stitch.frankenstein import prepare_members
from saegeo.stitch.refit import accumulate_stats, output_bias

# Evaluated points of a matching-pursuit interpolation path when none are asked for: each one
# re-encodes the activations.
MP_PATH_POINTS = 17

PathStep = tuple[str, float, np.ndarray, np.ndarray]


def _pair_steps(
    small: SAE, large: SAE, *, threshold: float, device: torch.device
) -> list[PathStep]:
    """(action, cos, features added, features removed) from ``small`` to ``large``.

    Feature indices address concat([small, large]): small first, then large.
    """
    n_small = small.width
    match = decoder_cosine(small, large, k=1, device=device, progress=False)
    max_cos = match.values[:, 0].numpy()
    novel = np.nonzero(max_cos <= threshold)[0]
    steps: list[PathStep] = [("start", math.nan, np.arange(n_small), np.zeros(0, np.int64))]
    for j in novel[np.argsort(max_cos[novel], kind="stable")]:
        steps.append(("add", float(max_cos[j]), np.array([n_small + j]), np.zeros(0, np.int64)))
    groups = swap_groups(small, large, threshold=threshold, device=device, progress=False)
    for group in groups.itertuples():
        steps.append(
            ("swap", group.max_cos, n_small + np.array(group.large), np.array(group.small))
        )
    return steps


def _evenly(n_steps: int, points: int | None) -> np.ndarray:
    if points is None or points >= n_steps:
        return np.arange(n_steps)
    return np.unique(np.linspace(0, n_steps - 1, max(points, 2)).round().astype(int))


@with_stream_options
def interpolation_path(
    family: Family | Sequence[SAE],
    acts: ActsLike,
    *,
    threshold: float = 0.7,
    pairs: Sequence[int] | None = None,
    points: int | None = None,
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """The stitching paper's path between adjacent widths: add novel features, then swap groups in.

    For each pair ``(family[i], family[i+1])`` with ``i`` in ``pairs`` (default all), the
    path starts at the smaller SAE, adds the larger SAE's novel features one at a time (most
    novel first: ascending max cosine), then swaps its reconstruction groups in one at a time
    in order of cosine (most similar first). Decoders are the original ones (no refit).

    For additive SAEs every step is evaluated exactly from one pass per pair (the Gram
    statistics of :mod:`saegeo.stitch.refit`); ``points`` keeps that many evenly spaced steps. For
    matching pursuit each point re-encodes the activations, so ``points`` defaults to
    ``MP_PATH_POINTS``. Memory is O((F_small + F_large)²). ``options`` set how ``acts`` is read
    and where the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).

    Returns a DataFrame with one row per evaluated step: ``pair``, ``small``, ``large``
    (names), ``step``, ``action`` (start, add, swap), ``cos`` (the added feature's max
    cosine, or the group's largest), ``n_added``, ``n_removed``, ``n_features``, ``l0``,
    ``mse``, ``fvu``.
    """
    check_count("points", points, optional=True)
    family = as_family(family)
    if len(family) < 2:
        raise SaegeoError("interpolation_path() needs a family of at least two SAEs")
    pairs = list(range(len(family) - 1)) if pairs is None else [int(i) for i in pairs]
    if any(not 0 <= i < len(family) - 1 for i in pairs):
        raise ArgumentError("pairs", pairs, f"each must lie in [0, {len(family) - 2}]")
    batches = read(acts, options)
    torch_device = batches.device
    members = prepare_members(family, len(family), batches)
    records: list[dict[str, Any]] = []
    for pair in pairs:
        small, large = members[pair], members[pair + 1]
        steps = _pair_steps(small, large, threshold=threshold, device=torch_device)
        union = concat([small, large])
        additive = union.additive
        if points is None and not additive:
            keep = set(_evenly(len(steps), MP_PATH_POINTS).tolist())
        else:
            keep = set(_evenly(len(steps), points).tolist())
        if additive:
            values = _path_metrics(union, batches, steps)
        mask = np.zeros(union.width, dtype=bool)
        for k, (action, cos, added, removed) in enumerate(steps):
            mask[removed] = False
            mask[added] = True
            if k not in keep:
                continue
            if additive:
                mse, fvu, l0 = values[k]
            else:
                subset = union.select(np.nonzero(mask)[0].tolist())
                metrics = evaluate_batches(subset, batches)
                mse, fvu, l0 = metrics.mse, metrics.fvu, metrics.l0
            records.append(
                {
                    "pair": pair,
                    "small": family[pair].name,
                    "large": family[pair + 1].name,
                    "step": k,
                    "action": action,
                    "cos": cos,
                    "n_added": len(added),
                    "n_removed": len(removed),
                    "n_features": int(mask.sum()),
                    "l0": l0,
                    "mse": mse,
                    "fvu": fvu,
                }
            )
    return pd.DataFrame.from_records(records)


def _path_metrics(
    union: SAE, batches: BatchStream, steps: list[PathStep]
) -> list[tuple[float, float, float]]:
    """(mse, fvu, l0) after every step, from one pass and incremental quadratic forms.

    With ``Θ = [W_dec; b]`` and ``m`` the indicator of the kept rows (the bias always kept),
    the squared error is ``T − 2 m·r + mᵀ M m`` with ``r = rowsum(Θ ∘ C)`` and
    ``M = G ∘ ΘΘᵀ``; each step updates ``u = M m`` for the rows it adds or removes.
    """
    stats = accumulate_stats(union, batches)
    device = stats.gram.device
    theta = stats.theta(union.W_dec, output_bias(union))
    M = stats.gram * (theta @ theta.T)
    r = (theta * stats.cross).sum(dim=1)
    width = union.width
    active = stats.active.double().to(device)
    n = stats.n_tokens
    mask = torch.zeros(width + 1, dtype=torch.bool, device=device)
    mask[width] = True
    u = M[:, width].clone()
    linear = float(r[width])
    quad = float(M[width, width])
    nnz = 0.0
    out = []
    for _, _, added, removed in steps:
        removed_t = torch.as_tensor(removed, dtype=torch.long, device=device)
        removed_t = removed_t[mask[removed_t]]
        if removed_t.numel():
            block = M[removed_t][:, removed_t]
            quad += -2 * float(u[removed_t].sum()) + float(block.sum())
            linear -= float(r[removed_t].sum())
            u -= M[:, removed_t].sum(dim=1)
            nnz -= float(active[removed_t].sum())
            mask[removed_t] = False
        added_t = torch.as_tensor(added, dtype=torch.long, device=device)
        added_t = added_t[~mask[added_t]]
        if added_t.numel():
            block = M[added_t][:, added_t]
            quad += 2 * float(u[added_t].sum()) + float(block.sum())
            linear += float(r[added_t].sum())
            u += M[:, added_t].sum(dim=1)
            nnz += float(active[added_t].sum())
            mask[added_t] = True
        sse = max(stats.target_sq - 2 * linear + quad, 0.0)
        out.append((sse / n, stats.moments.fvu(sse), nnz / n))
    return out
