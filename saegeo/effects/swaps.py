"""Swap groups with the effect of swapping each one in: the groups come from the decoders
(:func:`saegeo.geometry.classify.swap_groups`), their ``delta_mse`` and ``delta_l0`` from the
activations (:func:`saegeo.effects.delta.swap_deltas`)."""

from __future__ import annotations

import pandas as pd
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    StreamOptions,
    stream,
    stream_options,
    with_stream_options,
)
from saegeo.core.sae import SAE
from saegeo.effects.delta import pair_swap_deltas, prepared_pair
from saegeo.effects.hybrid import TopkMode
from saegeo.geometry.classify import swap_groups as decoder_swap_groups


@with_stream_options
def swap_groups(
    small: SAE,
    large: SAE,
    *,
    threshold: float = 0.7,
    acts: ActsLike | None = None,
    topk: TopkMode = "reencode",
    dtype: torch.dtype = torch.float32,
    **options: Unpack[StreamOptions],
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
        :func:`saegeo.effects.delta.swap_deltas` (``topk`` applies there).
    dtype
        As for :func:`saegeo.decoder_cosine`.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`); ``device`` and
        ``progress`` apply to the decoder cosines too.

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
    settings = stream_options(options)
    frame = decoder_swap_groups(
        small,
        large,
        threshold=threshold,
        device=settings["device"],
        dtype=dtype,
        progress=settings["progress"],
    )
    if acts is None:
        return frame
    batches = stream(acts, **settings)
    pair = prepared_pair(small, large, batches, topk)
    return frame.join(pair_swap_deltas(pair, frame["small"].tolist(), frame["large"].tolist()))
