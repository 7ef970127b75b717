"""Novel and reconstruction features of a larger SAE, and swap groups between two widths.

The definitions are those of "Stitching SAEs of different sizes".

A larger-SAE feature is **novel** iff its largest decoder cosine to the smaller SAE is
``<= threshold`` (default 0.7), a **reconstruction** feature otherwise. **Swap groups** are the
connected components of the bipartite graph "small i — large j where cos > threshold" (all
pairs above the threshold, not only nearest neighbours); swapping a group replaces its small
features by its large ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from saegeo.config import check_count, cosine_threshold
from saegeo.core.sae import SAE
from saegeo.geometry.residual import RESIDUAL_K, decoder_residual
from saegeo.geometry.similarity import decoder_cosine, decoder_cosine_pairs

NOVEL = "novel"
RECONSTRUCTION = "reconstruction"
KINDS = (NOVEL, RECONSTRUCTION)


def classify(
    small: SAE | torch.Tensor,
    large: SAE | torch.Tensor,
    *,
    threshold: float = 0.7,
    residual_k: int | None = RESIDUAL_K,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Each ``large`` feature's nearest ``small`` feature, whether it is novel, and how much of
    its direction its nearest ``small`` features leave unexplained.

    Parameters
    ----------
    small, large
        SAEs (or decoder matrices [width, d_in]) of the same d_in.
    threshold
        Novel iff ``max_cos <= threshold``.
    residual_k
        Nearest small rows in the least-squares fit of ``residual``
        (:func:`saegeo.geometry.residual.decoder_residual`); None leaves the column out.
    device, dtype, progress
        As for :func:`saegeo.decoder_cosine`.

    Returns
    -------
    pandas.DataFrame
        Indexed by large feature (``feature``): ``max_cos`` (float), ``nearest`` (the small
        feature reaching it, int; of exact ties the smallest index), ``kind`` (``"novel"`` or
        ``"reconstruction"``) and ``residual`` (float in [0, 1]: the share of the feature's
        unit decoder row outside the span of its ``residual_k`` nearest small rows; a novelty
        score that needs no activations).

    Examples
    --------
    >>> import torch
    >>> df = classify(torch.eye(3)[:2], torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]))
    >>> df["kind"].tolist()
    ['reconstruction', 'novel']
    """
    threshold = cosine_threshold(threshold)
    check_count("residual_k", residual_k, optional=True)
    n_small = small.width if isinstance(small, SAE) else len(torch.as_tensor(small))
    k = 1 if residual_k is None else max(1, min(residual_k, n_small))
    match = decoder_cosine(small, large, k=k, device=device, dtype=dtype, progress=progress)
    max_cos = match.values[:, 0].numpy().astype(np.float64)
    # Of exactly tied nearest features the smallest index, as with k=1.
    tied = match.values == match.values[:, :1]
    nearest = torch.where(tied, match.indices, torch.iinfo(torch.int64).max).min(dim=1).values
    table = pd.DataFrame(
        {
            "max_cos": max_cos,
            "nearest": nearest.numpy().astype(np.int64),
            "kind": np.where(max_cos <= threshold, NOVEL, RECONSTRUCTION),
        },
        index=pd.RangeIndex(len(max_cos), name="feature"),
    )
    if residual_k is not None:
        table["residual"] = decoder_residual(small, large, k=k, match=match)
    return table


def swap_groups(
    small: SAE,
    large: SAE,
    *,
    threshold: float = 0.7,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Swap groups of ``small`` and ``large``, most similar first.

    The groups alone, from the decoders: arguments and frame as for :func:`saegeo.swap_groups`
    without activations, which adds each group's effect on the reconstruction.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> small = SAE.from_decoder(torch.eye(3)[:2])
    >>> large = SAE.from_decoder(torch.tensor([[1.0, 0.1, 0], [1.0, -0.1, 0], [0, 0, 1.0]]))
    >>> swap_groups(small, large)[["small", "large"]].values.tolist()
    [[[0], [0, 1]]]
    """
    threshold = cosine_threshold(threshold)
    pairs = decoder_cosine_pairs(
        small, large, threshold=threshold, device=device, dtype=dtype, progress=progress
    ).tocoo()
    n_small, n_large = pairs.shape
    columns = ["small", "large", "n_small", "n_large", "max_cos"]
    if pairs.nnz == 0:
        return pd.DataFrame({c: [] for c in columns}, index=pd.RangeIndex(0, name="group"))
    n = n_small + n_large
    graph = sp.coo_matrix((np.ones(pairs.nnz), (pairs.row, n_small + pairs.col)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    edge_label = label[pairs.row]
    components = np.unique(edge_label)
    best = np.full(label.max() + 1, -np.inf)
    np.maximum.at(best, edge_label, pairs.data.astype(np.float64))
    # Members of every component at once: sort the nodes by label.
    order = np.argsort(label, kind="stable")
    starts = np.searchsorted(label[order], components)
    stops = np.searchsorted(label[order], components, side="right")
    rows = []
    for component, lo, hi in zip(components, starts, stops, strict=True):
        members = order[lo:hi]
        small_members = members[members < n_small]
        large_members = members[members >= n_small] - n_small
        rows.append(
            (
                small_members.tolist(),
                large_members.tolist(),
                small_members.size,
                large_members.size,
                float(best[component]),
            )
        )
    rows.sort(key=lambda row: (-row[4], row[1][0]))
    frame = pd.DataFrame(rows, columns=columns)
    frame.index.name = "group"
    return frame
