"""Frankenstein SAEs (seed 003): stitch the novel features of wider SAEs into a narrow one.

:func:`frankenstein` starts from the narrowest SAE of a family and, for each wider member in
order, adds every feature whose largest decoder cosine to the features already in the
Frankenstein is at most ``threshold``. The comparison is with the Frankenstein as it stood
before that member's step, as in seed 003: features of one member are never compared with
each other, so two near-duplicates from the same SAE are both added (the SAE trained them
side by side). With ``swap``, each step also replaces the features of every swap group by
the group's wider features (a swap group is a connected component of the bipartite graph
"Frankenstein feature i — member feature j where cos > threshold", see DESIGN.md). The
decoder is then refit with the encoder frozen (:mod:`saegeo.refit`).

Added features fire exactly as in their own SAE (:func:`saegeo.concat`): additive members
(relu, jumprelu, and topk after :meth:`SAE.to_jumprelu` on the activations) give a jumprelu
Frankenstein; matching-pursuit members give a pursuit over the union dictionary, whose codes
depend on the whole dictionary (see :mod:`saegeo.refit` for what a refit keeps there).

:func:`saegeo.interpolation.interpolation_path` draws seed 003's curve between two widths.

``saegeo.frankenstein`` (the package attribute) is the function; import this module's other
names with ``from saegeo.frankenstein import ...``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import pandas as pd
import torch

from saegeo.classify import swap_groups
from saegeo.devices import resolve_device
from saegeo.errors import SaegeoError, ShapeError
from saegeo.family import Family
from saegeo.metrics import Metrics, evaluate
from saegeo.refit import (
    Acts,
    accumulate_stats,
    output_bias,
    refit_exact,
    solve_decoder,
    with_decoder,
)
from saegeo.refit_sgd import refit_sgd
from saegeo.sae import ADDITIVE_ARCHS, SAE, concat
from saegeo.similarity import decoder_cosine
from saegeo.store import ActivationStore, as_store

Retrain = Literal["exact", "sgd", "none"]
RETRAINS: tuple[str, ...] = get_args(Retrain)
REPORT_SCHEMA = "saegeo.frankenstein_report.v1"

Feature = tuple[int, int]
"""A feature of a family: (member index, feature index in that member)."""


# --------------------------------------------------------------------------- the plan


class StitchStep(NamedTuple):
    """What one member of the family contributes to a Frankenstein SAE."""

    member: int
    """Index of the member in the family (0 is the narrowest, the base)."""
    offered: int
    """Features the member has (all are considered)."""
    added: tuple[int, ...]
    """Member features added as novel (max cosine to the Frankenstein <= threshold)."""
    swapped_in: tuple[int, ...]
    """Member features swapped in for their swap group."""
    swapped_out: tuple[Feature, ...]
    """Frankenstein features that the swaps removed."""
    features: tuple[Feature, ...]
    """The Frankenstein after this step: kept features in order, then the new ones."""


def _members_upto(family: Family, upto: int | None) -> int:
    """How many members (from the narrowest) ``upto`` includes."""
    if upto is None:
        return len(family)
    upto = int(upto)
    if upto < 0:
        raise SaegeoError(f"upto must be a width or member index >= 0, got {upto}")
    if upto < family.widths[0]:  # no member is narrower than the base: an index
        if upto >= len(family):
            raise SaegeoError(
                f"upto={upto}: the family has {len(family)} members (widths {family.widths})"
            )
        return upto + 1
    return sum(1 for width in family.widths if width <= upto)


def _decoder_rows(family: Family, features: Sequence[Feature]) -> torch.Tensor:
    """Decoder rows [len(features), D] of ``features``, in order (one gather per member)."""
    member_F = torch.tensor([m for m, _ in features])
    index_F = torch.tensor([j for _, j in features])
    rows_FD = torch.empty(len(features), family.d_in, dtype=family[0].dtype)
    for m in member_F.unique().tolist():
        at = member_F == m
        rows_FD[at] = family[m].W_dec.cpu()[index_F[at]].to(rows_FD.dtype)
    return rows_FD


def plan_frankenstein(
    family: Family | Sequence[SAE],
    *,
    threshold: float = 0.7,
    upto: int | None = None,
    swap: bool = False,
    device: str | torch.device = "auto",
) -> list[StitchStep]:
    """Which features a Frankenstein takes from each member (decoder geometry only).

    ``upto`` keeps the members of width <= ``upto``; a value below the narrowest width is a
    member index instead (inclusive). A feature is added when its largest decoder cosine to
    the Frankenstein before this member's step is <= ``threshold`` (compared in float32, the
    precision of the cosines).

    Examples:
        >>> import torch
        >>> from saegeo.sae import SAE
        >>> small = SAE.from_decoder(torch.eye(4)[:2])
        >>> large = SAE.from_decoder(torch.eye(4))
        >>> [step.added for step in plan_frankenstein([small, large], device="cpu")]
        [(0, 1), (2, 3)]
    """
    family = family if isinstance(family, Family) else Family(list(family))
    if not -1.0 <= threshold <= 1.0:
        raise SaegeoError(f"threshold must lie in [-1, 1], got {threshold}")
    torch_device = resolve_device(device)
    n_members = _members_upto(family, upto)
    base = family[0]
    features: list[Feature] = [(0, j) for j in range(base.width)]
    steps = [StitchStep(0, base.width, tuple(range(base.width)), (), (), tuple(features))]
    for m in range(1, n_members):
        member = family[m]
        current_SD = _decoder_rows(family, features)
        match = decoder_cosine(current_SD, member.W_dec, k=1, device=torch_device, progress=False)
        added = torch.nonzero(match.values[:, 0] <= threshold).reshape(-1).tolist()
        swapped_in: list[int] = []
        removed: set[int] = set()
        if swap:
            groups = swap_groups(
                SAE.from_decoder(current_SD),
                member,
                threshold=threshold,
                device=torch_device,
                progress=False,
            )
            for small_idx, large_idx in zip(groups["small"], groups["large"], strict=True):
                removed.update(small_idx)
                swapped_in.extend(large_idx)
        swapped_out = tuple(features[i] for i in sorted(removed))
        kept = [f for i, f in enumerate(features) if i not in removed]
        new = sorted(set(added) | set(swapped_in))
        features = kept + [(m, j) for j in new]
        steps.append(
            StitchStep(
                m,
                member.width,
                tuple(added),
                tuple(sorted(swapped_in)),
                swapped_out,
                tuple(features),
            )
        )
    return steps


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class StepReport:
    """One row of a Frankenstein report: a member's step and the SAE after it."""

    source: str
    """Name of the member."""
    width: int
    """The member's width."""
    offered: int
    """Member features considered (all of them)."""
    added: int
    """Novel features added."""
    swapped_in: int
    """Member features swapped in."""
    swapped_out: int
    """Frankenstein features swapped out."""
    n_features: int
    """Width of the Frankenstein after this step."""
    mse_before: float
    """MSE of the Frankenstein after this step, before its decoder refit."""
    fvu_before: float
    """FVU before the refit."""
    l0_before: float
    """Mean L0 before the refit."""
    mse_after: float
    """MSE after refitting this step's Frankenstein (NaN where it was not refit)."""
    fvu_after: float
    """FVU after the refit (NaN where it was not refit)."""
    l0_after: float
    """Mean L0 after the refit (NaN where it was not refit)."""


@dataclass(frozen=True)
class FrankensteinReport:
    """How a Frankenstein SAE was stitched and how well each stage reconstructs.

    Every step is refit for ``retrain="exact"``; for ``"sgd"`` only the last (the returned
    SAE); for ``"none"`` none. For matching pursuit the "after" columns come from re-encoding
    with the refit dictionary.
    """

    threshold: float
    """Decoder-cosine threshold: a feature is added iff its max cosine is <= this."""
    swap: bool
    """Whether swap groups were swapped in."""
    retrain: str
    """``exact``, ``sgd`` or ``none``."""
    n_tokens: int
    """Tokens of the activations the metrics and the refit used."""
    steps: tuple[StepReport, ...]
    """One row per member, narrowest first."""
    sources: tuple[str, ...]
    """Names of the members used, narrowest first (indices of ``provenance``)."""
    provenance: tuple[Feature, ...]
    """(member index, feature index) of each feature of the returned SAE, in order."""
    refit_seconds: float
    """Wall time of the refit (the exact pass and solves, or the SGD steps)."""
    refit_method: str
    """``cholesky``, ``lstsq``, ``adam`` or ``none``."""

    def to_frame(self) -> pd.DataFrame:
        """The steps as a DataFrame, one row per member."""
        return pd.DataFrame([asdict(step) for step in self.steps])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN written as null) with schema ``REPORT_SCHEMA``."""
        return {
            "schema": REPORT_SCHEMA,
            "threshold": self.threshold,
            "swap": self.swap,
            "retrain": self.retrain,
            "n_tokens": self.n_tokens,
            "refit_seconds": self.refit_seconds,
            "refit_method": self.refit_method,
            "sources": list(self.sources),
            "steps": [{k: _json_number(v) for k, v in asdict(step).items()} for step in self.steps],
            "provenance": [list(f) for f in self.provenance],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FrankensteinReport:
        """The report that :meth:`to_dict` wrote."""
        if doc.get("schema") != REPORT_SCHEMA:
            raise SaegeoError(f"not a Frankenstein report (schema {doc.get('schema')!r})")
        steps = []
        for step in doc["steps"]:
            fields: dict[str, Any] = {k: math.nan if v is None else v for k, v in step.items()}
            steps.append(StepReport(**fields))
        return cls(
            threshold=doc["threshold"],
            swap=doc["swap"],
            retrain=doc["retrain"],
            n_tokens=doc["n_tokens"],
            steps=tuple(steps),
            sources=tuple(doc["sources"]),
            provenance=tuple((int(m), int(j)) for m, j in doc["provenance"]),
            refit_seconds=doc["refit_seconds"],
            refit_method=doc["refit_method"],
        )


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --------------------------------------------------------------------------- the builder


def prepare_members(
    family: Family,
    n_members: int,
    store: ActivationStore,
    *,
    batch_size: int,
    limit: int | None,
    device: torch.device,
) -> list[SAE]:
    """The first ``n_members`` members, on ``device``, in a form that :func:`saegeo.concat`
    unions: TopK SAEs become JumpReLU (:meth:`SAE.to_jumprelu` on ``store``)."""
    saes = [family[m].to(device) for m in range(n_members)]
    archs = {sae.arch for sae in saes}
    if "matching_pursuit" in archs and archs != {"matching_pursuit"}:
        raise SaegeoError(
            f"cannot stitch matching-pursuit SAEs with additive ones "
            f"({', '.join(sorted(archs))}); use one kind per family"
        )
    for sae in saes:
        if sae.d_in != store.d_in:
            raise ShapeError(
                f"activations {store.source} have d_in={store.d_in}, but "
                f"{sae.name} expects d_in={sae.d_in}"
            )
    return [
        sae.to_jumprelu(store.iter_batches(batch_size, limit=limit, dtype=sae.dtype, device=device))
        if sae.arch == "topk"
        else sae
        for sae in saes
    ]


def _union(members: list[SAE], features: Sequence[Feature]) -> tuple[SAE, dict[Feature, int]]:
    """One SAE holding ``features`` (grouped by member, ascending) and each one's position."""
    ordered = sorted(set(features))
    by_member: dict[int, list[int]] = {}
    for m, j in ordered:
        by_member.setdefault(m, []).append(j)
    union = concat([members[m].select(idx) for m, idx in by_member.items()])
    return union, {f: i for i, f in enumerate(ordered)}


class FrankensteinSteps(NamedTuple):
    """A Frankenstein SAE after every member's step (see :func:`frankenstein_steps`)."""

    saes: tuple[SAE, ...]
    """The refit Frankenstein after each step, narrowest first (unrefit for ``"none"``)."""
    unrefit: tuple[SAE, ...]
    """The same features with the decoders of their own SAEs, before any refit."""
    report: FrankensteinReport
    """The report of the last step's Frankenstein; its rows cover every step."""


def frankenstein(
    family: Family | Sequence[SAE],
    acts: Acts,
    *,
    threshold: float = 0.7,
    upto: int | None = None,
    swap: bool = False,
    retrain: Retrain = "exact",
    ridge: float = 1e-6,
    sgd_tokens: int | None = None,
    sgd_lr: float = 1e-3,
    checkpoint: str | os.PathLike[str] | None = None,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[SAE, FrankensteinReport]:
    """Stitch a Frankenstein SAE from ``family`` and refit its decoder on ``acts``.

    See :func:`plan_frankenstein` for ``threshold``, ``upto`` and ``swap``. ``retrain`` is
    ``exact`` (least squares, :func:`saegeo.refit.refit_exact` with ``ridge``), ``sgd`` (Adam,
    :func:`saegeo.refit_sgd.refit_sgd` with ``sgd_tokens``, ``sgd_lr`` and a resumable
    ``checkpoint`` file) or ``none``. The metrics use the first ``limit`` tokens of ``acts``,
    read ``batch_size`` at a time on ``device``. Returns the SAE and its report.

    Examples:
        >>> import saegeo as sg
        >>> fam = sg.Family.load("runs/family")  # doctest: +SKIP
        >>> sae, report = sg.frankenstein(fam, "acts.npy", threshold=0.7)  # doctest: +SKIP
        >>> report.to_frame()[["source", "added", "n_features", "mse_after"]]  # doctest: +SKIP
    """
    stitched = _stitch(
        family,
        acts,
        every_step=False,
        threshold=threshold,
        upto=upto,
        swap=swap,
        retrain=retrain,
        ridge=ridge,
        sgd_tokens=sgd_tokens,
        sgd_lr=sgd_lr,
        checkpoint=checkpoint,
        batch_size=batch_size,
        limit=limit,
        device=device,
        progress=progress,
    )
    return stitched.saes[-1], stitched.report


def frankenstein_steps(
    family: Family | Sequence[SAE],
    acts: Acts,
    *,
    threshold: float = 0.7,
    upto: int | None = None,
    swap: bool = False,
    retrain: Retrain = "exact",
    ridge: float = 1e-6,
    sgd_tokens: int | None = None,
    sgd_lr: float = 1e-3,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> FrankensteinSteps:
    """The Frankenstein SAE after every step, each refit: ``saes[i]`` is
    ``frankenstein(..., upto=family.widths[i])``, from one stitching pass.

    The plan of a step depends only on the steps before it, so the Frankenstein up to member
    ``i`` is the full one's step ``i``; additive members share one pass over ``acts`` for every
    step's exact refit. With ``retrain="sgd"`` each step is trained on its own. Arguments as
    for :func:`frankenstein`.
    """
    return _stitch(
        family,
        acts,
        every_step=True,
        threshold=threshold,
        upto=upto,
        swap=swap,
        retrain=retrain,
        ridge=ridge,
        sgd_tokens=sgd_tokens,
        sgd_lr=sgd_lr,
        checkpoint=None,
        batch_size=batch_size,
        limit=limit,
        device=device,
        progress=progress,
    )


def _stitch(
    family: Family | Sequence[SAE],
    acts: Acts,
    *,
    every_step: bool,
    threshold: float,
    upto: int | None,
    swap: bool,
    retrain: Retrain,
    ridge: float,
    sgd_tokens: int | None,
    sgd_lr: float,
    checkpoint: str | os.PathLike[str] | None,
    batch_size: int,
    limit: int | None,
    device: str | torch.device,
    progress: bool,
) -> FrankensteinSteps:
    """The stitching behind :func:`frankenstein` (``every_step=False``: SGD trains only the
    last step, whose SAE ends ``saes``) and :func:`frankenstein_steps`."""
    if retrain not in RETRAINS:
        raise SaegeoError(f"retrain must be one of {', '.join(RETRAINS)}, got {retrain!r}")
    family = family if isinstance(family, Family) else Family(list(family))
    store = as_store(acts)
    torch_device = resolve_device(device)
    steps = plan_frankenstein(
        family, threshold=threshold, upto=upto, swap=swap, device=torch_device
    )
    members = prepare_members(
        family, len(steps), store, batch_size=batch_size, limit=limit, device=torch_device
    )
    union, position = _union(members, [f for step in steps for f in step.features])
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "limit": limit,
        "device": torch_device,
        "progress": progress,
    }
    nan = Metrics(math.nan, math.nan, math.nan, math.nan, 0, torch.zeros(0))
    unrefit = [union.select([position[f] for f in step.features]) for step in steps]
    refit: list[SAE | None] = [None] * len(steps)
    rows: list[tuple[Metrics, Metrics]] = []
    refit_seconds, method = 0.0, "none"
    if union.arch in ADDITIVE_ARCHS:
        # Codes of additive features do not depend on each other: one pass serves every step.
        start = time.perf_counter()
        stats = accumulate_stats(union, store, **options)
        refit_seconds = time.perf_counter() - start if retrain == "exact" else 0.0
        b_out = output_bias(union)
        for k, step in enumerate(steps):
            idx = [position[f] for f in step.features]
            sub, W_dec = stats.select(idx), union.W_dec[idx]
            before, after = sub.metrics(W_dec, b_out), nan
            if retrain == "exact":
                start = time.perf_counter()
                W_new, b_new, method = solve_decoder(sub, W_dec, b_out, ridge=ridge)
                refit_seconds += time.perf_counter() - start
                after = sub.metrics(W_new, b_new)
                refit[k] = with_decoder(unrefit[k], W_new, b_new)
            rows.append((before, after))
    else:
        for k, sae in enumerate(unrefit):
            if retrain == "exact":
                exact = refit_exact(sae, store, ridge=ridge, **options)
                refit_seconds += exact.seconds
                method = exact.method
                rows.append((exact.before, _evaluate(exact.sae, store, options)))
                refit[k] = exact.sae
            else:
                rows.append((_evaluate(sae, store, options), nan))
    if retrain == "sgd":
        refit_seconds, method = 0.0, "adam"
        for k in range(len(steps)) if every_step else [len(steps) - 1]:
            trained = refit_sgd(
                unrefit[k],
                store,
                tokens=sgd_tokens,
                lr=sgd_lr,
                checkpoint=checkpoint,
                **options,
            )
            refit_seconds += trained.seconds
            method, refit[k] = trained.method, trained.sae
            after = (
                trained.after
                if unrefit[k].arch in ADDITIVE_ARCHS
                else _evaluate(trained.sae, store, options)
            )
            rows[k] = (rows[k][0], after)
    sources = tuple(family[m].name for m in range(len(steps)))
    settings = {"threshold": threshold, "swap": swap, "retrain": retrain}

    def named(sae: SAE, n_members: int, suffix: str = "") -> SAE:
        return sae.to("cpu").replace(
            metadata={
                "name": f"frankenstein-{sae.width}{suffix}",
                "sources": list(sources[:n_members]),
                "frankenstein": settings,
            }
        )

    saes = tuple(
        named(sae if sae is not None else unrefit[k], k + 1)
        for k, sae in enumerate(refit)
        if every_step or k == len(steps) - 1
    )
    report = FrankensteinReport(
        threshold=float(threshold),
        swap=bool(swap),
        retrain=retrain,
        n_tokens=rows[0][0].n_tokens,
        steps=tuple(
            _step_report(family[step.member], step, before, after)
            for step, (before, after) in zip(steps, rows, strict=True)
        ),
        sources=sources,
        provenance=steps[-1].features,
        refit_seconds=refit_seconds,
        refit_method=method,
    )
    unrefit_named = tuple(
        named(sae, k + 1, "-unrefit")
        for k, sae in enumerate(unrefit)
        if every_step or k == len(steps) - 1
    )
    return FrankensteinSteps(saes, unrefit_named, report)


def frankenstein_curve(
    family: Family | Sequence[SAE],
    acts: Acts,
    *,
    eval_acts: Acts | None = None,
    threshold: float = 0.7,
    swap: bool = False,
    retrain: Retrain = "exact",
    ridge: float = 1e-6,
    sgd_tokens: int | None = None,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Seed 003's comparison: Frankenstein SAEs stitched up to each width vs the members.

    For every width of the family a Frankenstein is stitched from the members up to it and
    refit on ``acts`` (:func:`frankenstein_steps`, one stitching pass); see
    :func:`compare_frankensteins` for the frame it returns. Pass held-out ``eval_acts`` for a
    fair comparison, since the refit fits ``acts`` (default: evaluated on ``acts``).
    """
    stitched = frankenstein_steps(
        family,
        acts,
        threshold=threshold,
        swap=swap,
        retrain=retrain,
        ridge=ridge,
        sgd_tokens=sgd_tokens,
        batch_size=batch_size,
        limit=limit,
        device=device,
        progress=progress,
    )
    return compare_frankensteins(
        family,
        stitched,
        acts if eval_acts is None else eval_acts,
        batch_size=batch_size,
        limit=limit if eval_acts is None else None,
        device=device,
        progress=progress,
    )


def compare_frankensteins(
    family: Family | Sequence[SAE],
    stitched: FrankensteinSteps,
    eval_acts: Acts,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Every member and every step of ``stitched`` (refit and not), evaluated on ``eval_acts``.

    Returns a long DataFrame, one row per SAE: ``kind`` (``original``, ``frankenstein`` or
    ``unrefit``), ``name``, ``upto`` (width of the widest member used), ``n_features``,
    ``l0``, ``mse``, ``fvu``, ``nearest`` (the member whose width is nearest to
    ``n_features``, in log scale) and ``mse_vs_nearest`` (MSE over that member's MSE).
    """
    family = family if isinstance(family, Family) else Family(list(family))
    eval_store = as_store(eval_acts)
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "device": resolve_device(device),
        "progress": progress,
        "limit": limit,
    }
    records: list[dict[str, Any]] = []

    def record(kind: str, upto: int, sae: SAE) -> None:
        metrics = _evaluate(sae, eval_store, options)
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


def _evaluate(sae: SAE, store: ActivationStore, options: dict[str, Any]) -> Metrics:
    """metrics.evaluate with a progress bar only on a terminal, as elsewhere in this module."""
    progress = options["progress"] and sys.stderr.isatty()
    return evaluate(sae, store, **{**options, "progress": progress})


def _step_report(member: SAE, step: StitchStep, before: Metrics, after: Metrics) -> StepReport:
    return StepReport(
        source=member.name,
        width=member.width,
        offered=step.offered,
        added=len(step.added),
        swapped_in=len(step.swapped_in),
        swapped_out=len(step.swapped_out),
        n_features=len(step.features),
        mse_before=before.mse,
        fvu_before=before.fvu,
        l0_before=before.l0,
        mse_after=after.mse,
        fvu_after=after.fvu,
        l0_after=after.l0,
    )
