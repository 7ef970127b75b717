"""Swap groups with the effect of swapping each one in: the groups come from the decoders
(:func:`saegeo.geometry.classify.swap_groups`), their ``delta_mse`` and ``delta_l0`` from the
activations (:func:`saegeo.effects.delta.swap_deltas`)."""

from __future__ import annotations

import pandas as pd
import torch

from saegeo.acts.streaming import ActsLike, stream
from saegeo.core.sae import SAE
from saegeo.effects.delta import pair_swap_deltas, prepared_pair
from saegeo.effects.hybrid import TopkMode
from saegeo.geometry.classify import swap_groups as decoder_swap_groups


def swap_groups(
    small: SAE,
    large: SAE,
    *,
    threshold: float = 0.7,
    acts: ActsLike | None = None,
    topk: TopkMode = "reencode",
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Swap groups of ``small`` and ``large``, most similar first, with their effect.

    Parameters
    ----------
    small, large
        SAEs of the same d_in.
    threshold
        An edge joins small i and large j when their decoder cosine is ``> threshold``.
    acts
        Activations; when given, each group's ``delta_mse`` and ``delta_l0`` from swapping it
        in alone (small members removed, large members added) are added, computed as in
        :func:`saegeo.effects.delta.swap_deltas` (``topk``, ``batch_size``, ``limit`` apply there).
    device, dtype, progress
        As for :func:`saegeo.decoder_cosine`.

    Returns
    -------
    pandas.DataFrame
        One row per group with at least one edge (index ``group``, by ``max_cos`` descending,
        then smallest large member): ``small`` and ``large`` (sorted lists of member
        indices), ``n_small``, ``n_large``, ``max_cos`` (the largest cosine in the group) and,
        with ``acts``, ``delta_mse`` and ``delta_l0``.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> small = SAE.from_decoder(torch.eye(4)[:2])
    >>> large = SAE.from_decoder(torch.tensor([[1.0, 0.2, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    >>> acts = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    >>> groups = swap_groups(small, large, acts=acts, device="cpu", progress=False)
    >>> groups[["small", "large"]].values.tolist(), list(groups.columns[-2:])
    ([[[1], [1]], [[0], [0]]], ['delta_mse', 'delta_l0'])
    """
    frame = decoder_swap_groups(
        small, large, threshold=threshold, device=device, dtype=dtype, progress=progress
    )
    if acts is None:
        return frame
    batches = stream(acts, batch_size=batch_size, limit=limit, device=device, progress=progress)
    pair = prepared_pair(small, large, batches, topk)
    return frame.join(pair_swap_deltas(pair, frame["small"].tolist(), frame["large"].tolist()))
