"""Frankenstein SAEs: stitch the novel features of wider SAEs into a narrow one.

The construction is that of "Stitching SAEs of different sizes".

:func:`frankenstein` starts from the narrowest SAE of a family and, for each wider member in order,
adds every feature whose largest decoder cosine to the features already in the Frankenstein is at
most ``threshold``. The comparison is with the Frankenstein as it stood before that member's step,
as in the stitching paper: features of one member are never compared with each other, so two
near-duplicates from the same SAE are both added (the SAE trained them side by side). With ``swap``,
each step also replaces the features of every swap group by the group's wider features (a swap group
is a connected component of the bipartite graph "Frankenstein feature i — member feature j where cos
> threshold", see ``docs/concepts.md``). The decoder is then refit with the encoder frozen
(:mod:`saegeo.stitch.refit`).

Added features fire exactly as in their own SAE (:func:`saegeo.concat`): additive members
(relu, jumprelu, and topk after :meth:`SAE.to_jumprelu` on the activations) give a jumprelu
Frankenstein; matching-pursuit members give a pursuit over the union dictionary, whose codes
depend on the whole dictionary (see :mod:`saegeo.stitch.refit` for what a refit keeps there).

:func:`saegeo.stitch.interpolation.interpolation_path` draws the paper's curve between two widths.

:func:`saegeo.stitch.curve.frankenstein_curve` compares the Frankenstein up to each width
with the members; :mod:`saegeo.stitch.report` holds the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from saegeo.acts.streaming import ActsLike, BatchStream, checked_store
from saegeo.config import cosine_threshold, fail, override
from saegeo.core.architectures import union_kind
from saegeo.core.sae import SAE, concat
from saegeo.effects.hybrid import as_additive
from saegeo.effects.metrics import Metrics, evaluate_batches
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.formats.family import Family, as_family
from saegeo.geometry.classify import swap_groups
from saegeo.geometry.similarity import decoder_cosine
from saegeo.runtime.devices import resolve_device
from saegeo.stitch.config import RETRAINS, Retrain, StitchConfig
from saegeo.stitch.refit import (
    DecoderSolve,
    accumulate,
    choose_solver,
    dense_stats,
    output_bias,
    refit_exact_batches,
    solve_exact,
    with_decoder,
)
from saegeo.stitch.refit_cg import CodeStats
from saegeo.stitch.refit_sgd import refit_sgd_batches
from saegeo.stitch.report import Feature, FrankensteinReport, StepReport

__all__ = [
    "RETRAINS",
    "FrankensteinSteps",
    "Retrain",
    "StitchConfig",
    "StitchStep",
    "frankenstein",
    "frankenstein_steps",
    "plan_frankenstein",
    "prepare_members",
]


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
        raise ArgumentError("upto", upto, "must be a width or member index >= 0")
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

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> small = SAE.from_decoder(torch.eye(4)[:2])
    >>> large = SAE.from_decoder(torch.eye(4))
    >>> [step.added for step in plan_frankenstein([small, large], device="cpu")]
    [(0, 1), (2, 3)]
    """
    family = as_family(family)
    threshold = cosine_threshold(threshold)
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


# --------------------------------------------------------------------------- the builder


def prepare_members(family: Family, n_members: int, batches: BatchStream) -> list[SAE]:
    """The first ``n_members`` members, on the device of ``batches``, in a form that
    :func:`saegeo.concat` unions: TopK SAEs become JumpReLU calibrated on ``batches``
    (:func:`saegeo.effects.hybrid.as_additive`)."""
    saes = [family[m].to(batches.device) for m in range(n_members)]
    for sae in saes:
        checked_store(batches.store, sae)
    if len({sae.architecture.tied for sae in saes}) > 1:  # fail before any calibration pass
        union_kind(saes, "frankenstein()")
    return [as_additive(sae, batches) for sae in saes]


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
    acts: ActsLike,
    config: StitchConfig | None = None,
    **overrides: Any,
) -> tuple[SAE, FrankensteinReport]:
    """Stitch a Frankenstein SAE from ``family`` and refit its decoder on ``acts``.

    ``config`` (:class:`~saegeo.stitch.config.StitchConfig`, default settings when None) says
    how; its fields may also be given as keywords, which override it (``threshold=0.6``). See
    :func:`plan_frankenstein` for ``threshold``, ``upto`` and ``swap``. ``retrain`` is
    ``exact`` (least squares, :func:`saegeo.stitch.refit.refit_exact` with ``ridge``), ``sgd``
    (Adam, :func:`saegeo.stitch.refit_sgd.refit_sgd` with ``sgd_tokens``, ``sgd_lr`` and a
    resumable ``checkpoint`` file) or ``none``. The metrics use the first ``limit`` tokens of
    ``acts``, read ``batch_size`` at a time on ``device``. Returns the SAE and its report.

    Examples
    --------
    >>> import saegeo as sg
    >>> fam = sg.Family.load("runs/family")  # doctest: +SKIP
    >>> sae, report = sg.frankenstein(fam, "acts.npy", threshold=0.7)  # doctest: +SKIP
    >>> report.to_frame()[["source", "added", "n_features", "mse_after"]]  # doctest: +SKIP
    """
    stitched = _stitch(family, acts, override(config or StitchConfig(), overrides), False)
    return stitched.saes[-1], stitched.report


def frankenstein_steps(
    family: Family | Sequence[SAE],
    acts: ActsLike,
    config: StitchConfig | None = None,
    **overrides: Any,
) -> FrankensteinSteps:
    """The Frankenstein SAE after every step, each refit: ``saes[i]`` is
    ``frankenstein(..., upto=family.widths[i])``, from one stitching pass.

    The plan of a step depends only on the steps before it, so the Frankenstein up to member
    ``i`` is the full one's step ``i``; additive members share one pass over ``acts`` for every
    step's exact refit. With ``retrain="sgd"`` each step is trained on its own (so without a
    ``checkpoint``). Arguments as for :func:`frankenstein`.
    """
    config = override(config or StitchConfig(), overrides)
    if config.checkpoint is not None:
        fail(
            config, "checkpoint", "frankenstein_steps() trains every step on its own; leave it None"
        )
    return _stitch(family, acts, config, True)


def _stitch(
    family: Family | Sequence[SAE],
    acts: ActsLike,
    config: StitchConfig,
    every_step: bool,
) -> FrankensteinSteps:
    """The stitching behind :func:`frankenstein` (``every_step=False``: SGD trains only the
    last step, whose SAE ends ``saes``) and :func:`frankenstein_steps`."""
    family = as_family(family)
    batches = config.stream(acts)
    retrain, ridge = config.retrain, config.ridge
    steps = plan_frankenstein(
        family,
        threshold=config.threshold,
        upto=config.upto,
        swap=config.swap,
        device=batches.device,
    )
    members = prepare_members(family, len(steps), batches)
    union, position = _union(members, [f for step in steps for f in step.features])
    nan = Metrics(math.nan, math.nan, math.nan, math.nan, 0, torch.zeros(0))
    unrefit = [union.select([position[f] for f in step.features]) for step in steps]
    refit: list[SAE | None] = [None] * len(steps)
    rows: list[tuple[Metrics, Metrics]] = []
    solves: list[DecoderSolve | None] = [None] * len(steps)
    refit_seconds, method = 0.0, "none"
    exact_options: dict[str, Any] = {
        "ridge": ridge,
        "tol": config.refit_tol,
        "max_iterations": config.refit_max_iterations,
    }
    if union.additive:
        # Codes of additive features do not depend on each other: one pass serves every step.
        start = time.perf_counter()
        solver = choose_solver(config.solver, union.width, union.d_in, batches.device)
        stats = accumulate(solver, union, batches)
        refit_seconds = time.perf_counter() - start if retrain == "exact" else 0.0
        b_out = output_bias(union)
        # Each step's solve starts from the one before (its features mostly carry over).
        solved_UD = union.W_dec.to(torch.float64).clone()
        for k, step in enumerate(steps):
            idx = [position[f] for f in step.features]
            sub, W_dec = stats.select(idx), union.W_dec[idx]
            before, after = sub.metrics(W_dec, b_out), nan
            if retrain == "exact":
                start = time.perf_counter()
                if (
                    isinstance(sub, CodeStats)
                    and choose_solver(config.solver, len(idx), union.d_in, batches.device)
                    == "cholesky"
                ):
                    sub = dense_stats(sub, batch_size=config.batch_size)  # the faster here
                solves[k] = solved = solve_exact(
                    sub, W_dec, b_out, start=solved_UD[idx], **exact_options
                )
                refit_seconds += time.perf_counter() - start
                method = solved.method
                solved_UD[idx] = solved.W_dec.to(solved_UD)
                after = sub.metrics(solved.W_dec, solved.b_dec)
                refit[k] = with_decoder(unrefit[k], solved.W_dec, solved.b_dec)
            del sub
            rows.append((before, after))
        del stats
    else:
        for k, sae in enumerate(unrefit):
            if retrain == "exact":
                exact = refit_exact_batches(sae, batches, solver=config.solver, **exact_options)
                refit_seconds += exact.seconds
                method = exact.method
                solves[k] = DecoderSolve(
                    exact.sae.W_dec, exact.sae.b_dec, method, exact.iterations, exact.residual
                )
                rows.append((exact.before, evaluate_batches(exact.sae, batches)))
                refit[k] = exact.sae
            else:
                rows.append((evaluate_batches(sae, batches), nan))
    if retrain == "sgd":
        refit_seconds, method = 0.0, "adam"
        for k in range(len(steps)) if every_step else [len(steps) - 1]:
            trained = refit_sgd_batches(
                unrefit[k],
                batches,
                tokens=config.sgd_tokens,
                lr=config.sgd_lr,
                checkpoint=config.checkpoint,
            )
            refit_seconds += trained.seconds
            method, refit[k] = trained.method, trained.sae
            after = trained.after if unrefit[k].additive else evaluate_batches(trained.sae, batches)
            rows[k] = (rows[k][0], after)
    sources = tuple(family[m].name for m in range(len(steps)))
    settings = {"threshold": config.threshold, "swap": config.swap, "retrain": retrain}

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
        threshold=float(config.threshold),
        swap=bool(config.swap),
        retrain=retrain,
        n_tokens=rows[0][0].n_tokens,
        steps=tuple(
            _step_report(family[step.member], step, before, after, solved)
            for step, (before, after), solved in zip(steps, rows, solves, strict=True)
        ),
        sources=sources,
        provenance=steps[-1].features,
        refit_seconds=refit_seconds,
        refit_method=method,
        refit_iterations=sum(solved.iterations for solved in solves if solved is not None),
        refit_residual=max(
            (solved.residual for solved in solves if solved is not None), default=math.nan
        ),
        refit_tol=config.refit_tol if method == "cg" else math.nan,
    )
    unrefit_named = tuple(
        named(sae, k + 1, "-unrefit")
        for k, sae in enumerate(unrefit)
        if every_step or k == len(steps) - 1
    )
    return FrankensteinSteps(saes, unrefit_named, report)


def _step_report(
    member: SAE, step: StitchStep, before: Metrics, after: Metrics, solved: DecoderSolve | None
) -> StepReport:
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
        refit_method="none" if solved is None else solved.method,
        refit_iterations=0 if solved is None else solved.iterations,
        refit_residual=math.nan if solved is None else solved.residual,
    )
