"""Novel vs reconstruction features across a family, as tables a notebook can use.

The analysis is that of "Stitching SAEs of different sizes".

For every adjacent pair of widths: the share of the larger SAE's features that are novel, the
2×2 table of kind × sign of ``delta_mse``, and the cumulative MSE of the smaller SAE as the
novel (or the reconstruction) features are added together, best ``delta_mse`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    StreamOptions,
    read,
    stream,
    stream_options,
    with_stream_options,
)
from saegeo.config import check_count
from saegeo.core.feature_info import neuronpedia_url
from saegeo.core.sae import SAE
from saegeo.deprecation import module_aliases, renamed
from saegeo.effects.delta import PreparedPair, pair_cumulative_mse, pair_delta_mse, prepared_pair
from saegeo.effects.explained import pair_explained_share, roc_auc
from saegeo.effects.hybrid import TopkMode
from saegeo.errors import SaegeoError
from saegeo.formats.family import Family, as_family
from saegeo.geometry.classify import KINDS, NOVEL, classify

DECREASES = "delta_mse < 0"
DOES_NOT_DECREASE = "delta_mse >= 0"
PUBLISHED_GPT2_PAIR = {
    "small_width": 768,
    "large_width": 1536,
    "n_novel": 657,
    "novel_decreases": 628,
    "novel_does_not_decrease": 29,
    "reconstruction_decreases": 281,
    "reconstruction_does_not_decrease": 598,
}
"""The GPT2-768 → GPT2-1536 pair (layer 8 resid_pre) as published in "Stitching SAEs of
different sizes": the novel features and the 2×2 table kind × sign(delta_mse)."""

PUBLISHED_PAIR_NAME = "Stitching SAEs of different sizes: GPT2-768 → GPT2-1536"
"""The label of :data:`PUBLISHED_GPT2_PAIR`'s row in :func:`published_pair_table`."""


class FamilyNovelty(NamedTuple):
    """Novel-vs-reconstruction results for every adjacent pair of a family."""

    summary: pd.DataFrame
    """One row per pair: ``small``, ``large`` (names), ``small_width``, ``large_width``,
    ``n_novel``, ``share_novel`` and, with activations, the four cells of
    :func:`kind_sign_table` (``novel_decreases``, ``novel_does_not_decrease``,
    ``reconstruction_decreases``, ``reconstruction_does_not_decrease``), the mean
    ``delta_mse`` of each kind (``mean_delta_novel``, ``mean_delta_reconstruction``) and how
    well each novelty score predicts ``delta_mse < 0`` (:func:`score_aucs`: ``auc_max_cos``,
    ``auc_residual``, ``auc_explained``)."""
    features: pd.DataFrame
    """Every larger-SAE feature of every pair: ``pair`` (index of the pair), ``feature``,
    ``max_cos``, ``nearest``, ``kind``, ``residual`` and, with activations, ``delta_mse`` and
    ``explained``."""
    curves: pd.DataFrame
    """Cumulative curves (with activations and ``points`` > 0): ``pair``, ``kind``,
    ``n_added``, ``mse``, ``l0``."""


@with_stream_options
def novelty_table(
    small: SAE,
    large: SAE,
    acts: ActsLike | None = None,
    *,
    threshold: float = 0.7,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """:func:`saegeo.classify` of the pair (``residual`` included), with ``delta_mse`` and
    ``explained`` columns when ``acts`` is given.

    ``explained`` (:func:`saegeo.effects.explained.explained_share`) is the share of each
    feature's decoder contribution that the smaller SAE's reconstruction already holds on the
    tokens where it fires (NaN where it never fires): a second novelty score beside ``max_cos``,
    whose ``kind`` stays the published rule.

    For SAEs published with Neuronpedia ids, ``neuronpedia`` holds each larger-SAE feature's
    page and ``nearest_neuronpedia`` that of its nearest smaller-SAE feature.

    Parameters
    ----------
    small, large
        The narrower and the wider SAE (same d_in).
    acts
        Activations [N, d_in] (a store, a tensor or a path); None: the decoders' columns only.
    threshold
        A larger-SAE feature is novel iff its largest decoder cosine to the smaller SAE is
        ``<= threshold``.
    topk
        TopK pairs: ``"reencode"`` forms a TopK union with the smaller SAE's ``k``;
        ``"jumprelu"`` first converts both with :meth:`SAE.to_jumprelu` on the same tokens.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).
    """
    settings = stream_options(options)  # checked even without acts, before the decoders' work
    batches = None if acts is None else stream(acts, **settings)
    pair = None if batches is None else prepared_pair(small, large, batches, topk)
    return _novelty_table(small, large, pair, threshold, settings["device"], settings["progress"])


def _novelty_table(
    small: SAE,
    large: SAE,
    pair: PreparedPair | None,
    threshold: float,
    device: str | torch.device,
    progress: bool | None,
) -> pd.DataFrame:
    """:func:`novelty_table` with the pair prepared for its activations (None: the decoders'
    columns only)."""
    table = classify(small, large, threshold=threshold, device=device, progress=progress)
    if neuronpedia_url(large, 0) is not None:
        table["neuronpedia"] = [neuronpedia_url(large, j) for j in table.index]
    if neuronpedia_url(small, 0) is not None:
        table["nearest_neuronpedia"] = [neuronpedia_url(small, i) for i in table["nearest"]]
    if pair is not None:
        table["delta_mse"] = pair_delta_mse(pair)
        table["explained"] = pair_explained_share(pair)["explained"]
    return table


def kind_sign_table(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of kind × sign of ``delta_mse``, the 2×2 table of the stitching paper.

    ``table`` has columns ``kind`` and ``delta_mse`` (see :func:`novelty_table`). Rows
    ``novel``, ``reconstruction``; columns ``"delta_mse < 0"`` and ``"delta_mse >= 0"`` (a
    feature that never fires has delta 0 and counts in the second).
    """
    decreases = table["delta_mse"] < 0
    out = pd.DataFrame(
        {
            DECREASES: [int((decreases & (table["kind"] == kind)).sum()) for kind in KINDS],
            DOES_NOT_DECREASE: [
                int((~decreases & (table["kind"] == kind)).sum()) for kind in KINDS
            ],
        },
        index=pd.Index(KINDS, name="kind"),
    )
    return out


def score_aucs(table: pd.DataFrame) -> dict[str, float]:
    """ROC AUC of each novelty score for the sign of ``delta_mse`` (positive: ``< 0``).

    ``table`` is :func:`novelty_table`'s result with activations. Low ``max_cos``, high
    ``residual`` and low ``explained`` predict that adding a feature lowers the MSE; features
    with no ``explained`` (never firing) are left out of all, so the AUCs count the same
    features. NaN when every scored feature falls on one side.
    """
    scored = table[table["explained"].notna()]
    lowers = (scored["delta_mse"] < 0).to_numpy()
    scores = {"max_cos": -1.0, "residual": 1.0, "explained": -1.0}
    return {
        f"auc_{score}": roc_auc(sign * scored[score].to_numpy(), lowers)
        for score, sign in scores.items()
        if score in scored
    }


@with_stream_options
def cumulative_curves(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    table: pd.DataFrame,
    *,
    points: int = 11,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """MSE of ``small`` with each kind's features added together, lowest ``delta_mse`` first.

    ``table`` is :func:`novelty_table`'s result with ``delta_mse``. Each kind's curve is
    evaluated at ``points`` evenly spaced counts (see :func:`saegeo.effects.delta.cumulative_mse`).

    Returns
    -------
    pandas.DataFrame
        Columns ``kind``, ``n_added``, ``mse``, ``l0``.
    """
    batches = read(acts, options)
    return _cumulative_curves(prepared_pair(small, large, batches, topk), table, points=points)


def _cumulative_curves(pair: PreparedPair, table: pd.DataFrame, *, points: int) -> pd.DataFrame:
    """:func:`cumulative_curves` of a prepared pair."""
    curves = []
    for kind in KINDS:
        chosen = table[table["kind"] == kind]
        order = chosen.sort_values("delta_mse", kind="stable").index.to_numpy()
        curve = pair_cumulative_mse(pair, order, points=points)
        curve.insert(0, "kind", kind)
        curves.append(curve)
    return pd.concat(curves, ignore_index=True)


@with_stream_options
def family_novelty(
    family: Family | Sequence[SAE],
    acts: ActsLike | None = None,
    *,
    threshold: float = 0.7,
    points: int = 11,
    topk: TopkMode = "reencode",
    **options: Unpack[StreamOptions],
) -> FamilyNovelty:
    """The novelty analysis of "Stitching SAEs of different sizes" for every adjacent pair.

    See :class:`FamilyNovelty` for what each table of the result holds.

    Without ``acts`` only the geometry (kinds, shares) is computed. ``points=0`` skips the
    cumulative curves, whose every point re-evaluates a hybrid SAE on the activations.
    """
    check_count("points", points, minimum=0)
    fam = as_family(family)
    if len(fam) < 2:
        raise SaegeoError(f"family_novelty(): needs at least two SAEs, got {len(fam)}")
    settings = stream_options(options)
    batches = None if acts is None else stream(acts, **settings)
    summaries, features, curves = [], [], []
    for pair, (small, large) in enumerate(fam.pairs()):
        prepared = None if batches is None else prepared_pair(small, large, batches, topk)
        table = _novelty_table(
            small, large, prepared, threshold, settings["device"], settings["progress"]
        )
        n_novel = int((table["kind"] == NOVEL).sum())
        row: dict[str, object] = {
            "small": small.name,
            "large": large.name,
            "small_width": small.width,
            "large_width": large.width,
            "n_novel": n_novel,
            "share_novel": n_novel / max(large.width, 1),
        }
        if prepared is not None:
            cells = kind_sign_table(table)
            for kind in KINDS:
                row[f"{kind}_decreases"] = int(cells.loc[kind, DECREASES])
                row[f"{kind}_does_not_decrease"] = int(cells.loc[kind, DOES_NOT_DECREASE])
            for kind in KINDS:
                chosen = table.loc[table["kind"] == kind, "delta_mse"]
                row[f"mean_delta_{kind}"] = float(chosen.mean()) if len(chosen) else np.nan
            row.update(score_aucs(table))
            if points > 0:
                curve = _cumulative_curves(prepared, table, points=points)
                curve.insert(0, "pair", pair)
                curves.append(curve)
        summaries.append(row)
        features.append(table.reset_index().assign(pair=pair))
    feature_frame = pd.concat(features, ignore_index=True)
    feature_frame = feature_frame[["pair", *[c for c in feature_frame if c != "pair"]]]
    curve_frame = (
        pd.concat(curves, ignore_index=True)
        if curves
        else pd.DataFrame(columns=["pair", "kind", "n_added", "mse", "l0"])
    )
    return FamilyNovelty(pd.DataFrame(summaries), feature_frame, curve_frame)


def kind_sign_frame(result: FamilyNovelty) -> pd.DataFrame:
    """The 2×2 table of every pair, stacked (columns pair, small, large, kind and the counts)."""
    frames = []
    for pair, table in result.features.groupby("pair"):
        cells = kind_sign_table(table).reset_index()
        row = result.summary.iloc[int(pair)]
        cells.insert(0, "large", row["large"])
        cells.insert(0, "small", row["small"])
        cells.insert(0, "pair", pair)
        frames.append(cells)
    return pd.concat(frames, ignore_index=True)


def published_pair_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-pair figures of "Stitching SAEs of different sizes" for every pair of
    ``summary``, under the paper's own GPT-2 pair (:data:`PUBLISHED_GPT2_PAIR`).

    ``summary`` is :attr:`FamilyNovelty.summary` computed with activations. Columns: the pair,
    the novel share, the novel features that lower the MSE when added alone and the
    reconstruction features that do not (each as "count / of kind" and as a share).
    """
    rows: list[dict[str, Any]] = [{"pair": PUBLISHED_PAIR_NAME, **PUBLISHED_GPT2_PAIR}]
    rows += [
        {"pair": f"{row['small']} → {row['large']}", **row} for row in summary.to_dict("records")
    ]
    table = []
    for row in rows:
        n_novel = int(row["novel_decreases"] + row["novel_does_not_decrease"])
        n_rec = int(row["reconstruction_decreases"] + row["reconstruction_does_not_decrease"])
        width = int(row["large_width"])
        table.append(
            {
                "pair": row["pair"],
                "novel share": f"{n_novel:,} / {width:,} = {n_novel / width:.0%}",
                "novel with delta_mse < 0": _share(int(row["novel_decreases"]), n_novel),
                "reconstruction with delta_mse >= 0": _share(
                    int(row["reconstruction_does_not_decrease"]), n_rec
                ),
            }
        )
    return pd.DataFrame(table)


def _share(count: int, total: int) -> str:
    return f"{count:,} / {total:,} = {count / total:.0%}" if total else "0 / 0"


seed_003_table = renamed(published_pair_table, "seed_003_table")
__getattr__ = module_aliases(
    __name__, {"SEED_003_FIRST_PAIR": ("PUBLISHED_GPT2_PAIR", PUBLISHED_GPT2_PAIR)}
)
