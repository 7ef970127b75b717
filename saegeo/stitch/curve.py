"""Frankenstein SAEs compared with the members they are stitched from.

The comparison is that of "Stitching SAEs of different sizes".

:func:`frankenstein_curve` stitches the Frankenstein up to every width in one pass
(:func:`saegeo.stitch.frankenstein.frankenstein_steps`) and :func:`compare_frankensteins` evaluates
it, before and after its refit, beside every member on the same (held-out) activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, BatchStream, StreamOptions, read, with_stream_options
from saegeo.config import override
from saegeo.core.sae import SAE
from saegeo.effects.metrics import evaluate_batches
from saegeo.formats.family import Family, as_family
from saegeo.stitch.config import StitchConfig
from saegeo.stitch.frankenstein import FrankensteinSteps, frankenstein_steps


def frankenstein_curve(
    family: Family | Sequence[SAE],
    acts: ActsLike,
    config: StitchConfig | None = None,
    *,
    eval_acts: ActsLike | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """The stitching paper's comparison: Frankenstein SAEs stitched up to each width vs the members.

    For every width of the family a Frankenstein is stitched from the members up to it and
    refit on ``acts`` (:func:`frankenstein_steps` with ``config`` and keyword ``overrides``,
    one stitching pass); see :func:`compare_frankensteins` for the frame it returns. Pass
    held-out ``eval_acts`` for a fair comparison, since the refit fits ``acts`` (default:
    evaluated on ``acts``).
    """
    config = override(config or StitchConfig(), overrides)
    stitched = frankenstein_steps(family, acts, config)
    if eval_acts is None:
        return _compare(family, stitched, config.stream(acts))
    return _compare(family, stitched, config.with_overrides(limit=None).stream(eval_acts))


@with_stream_options
def compare_frankensteins(
    family: Family | Sequence[SAE],
    stitched: FrankensteinSteps,
    eval_acts: ActsLike,
    **options: Unpack[StreamOptions],
) -> pd.DataFrame:
    """Every member and every step of ``stitched`` (refit and not), evaluated on ``eval_acts``.

    Returns a long DataFrame, one row per SAE: ``kind`` (``original``, ``frankenstein`` or
    ``unrefit``), ``name``, ``upto`` (width of the widest member used), ``n_features``,
    ``l0``, ``mse``, ``fvu``, ``nearest`` (the member whose width is nearest to
    ``n_features``, in log scale) and ``mse_vs_nearest`` (MSE over that member's MSE).
    ``options`` set how ``eval_acts`` is read and where the work runs
    (:class:`~saegeo.acts.streaming.StreamOptions`).
    """
    return _compare(family, stitched, read(eval_acts, options))


def _compare(
    family: Family | Sequence[SAE], stitched: FrankensteinSteps, batches: BatchStream
) -> pd.DataFrame:
    """:func:`compare_frankensteins` on the tokens of ``batches``."""
    family = as_family(family)
    records: list[dict[str, Any]] = []

    def record(kind: str, upto: int, sae: SAE) -> None:
        metrics = evaluate_batches(sae, batches)
        records.append(
            {
                "kind": kind,
                "name": sae.name,
                "upto": upto,
                "n_features": sae.width,
                "l0": metrics.l0,
                "mse": metrics.mse,
                "fvu": metrics.fvu,
            }
        )

    for member in family:
        record("original", member.width, member)
    for step, sae, unrefit in zip(
        stitched.report.steps, stitched.saes, stitched.unrefit, strict=True
    ):
        record("frankenstein", step.width, sae)
        record("unrefit", step.width, unrefit)
    frame = pd.DataFrame.from_records(records)
    originals = frame[frame["kind"] == "original"]
    log_widths = np.log(originals["n_features"].to_numpy(dtype=float))
    nearest = [int(np.argmin(np.abs(log_widths - math.log(n)))) for n in frame["n_features"]]
    frame["nearest"] = originals["name"].to_numpy()[nearest]
    frame["mse_vs_nearest"] = frame["mse"].to_numpy() / originals["mse"].to_numpy()[nearest]
    return frame
