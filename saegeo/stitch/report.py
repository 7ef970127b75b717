"""The report of a Frankenstein SAE: what each member's step added and how well it reconstructs.

Written by :func:`saegeo.stitch.frankenstein.frankenstein` and saved as JSON (schema
``REPORT_SCHEMA``) beside a stitched SAE by ``saegeo stitch`` and the demo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from saegeo.errors import SaegeoError
from saegeo.runtime.outputs import REPORT_SCHEMA

Feature = tuple[int, int]
"""A feature of a family: (member index, feature index in that member)."""


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
    refit_method: str = "none"
    """How this step's exact refit solved: ``cholesky``, ``lstsq`` or ``cg`` (``none`` without
    one). A stitch that chooses its solver solves narrow steps densely, wide ones by ``cg``."""
    refit_iterations: int = 0
    """Conjugate-gradient iterations of this step's exact refit (0 for a dense solve)."""
    refit_residual: float = math.nan
    """Relative residual of this step's exact refit (NaN where it was not solved exactly)."""


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
    """``cholesky``, ``lstsq``, ``cg`` (conjugate gradients), ``adam`` or ``none``."""
    refit_iterations: int = 0
    """Conjugate-gradient iterations of every step's exact refit together."""
    refit_residual: float = math.nan
    """The largest relative residual ``||rhs − AΘ|| / ||rhs||`` of the steps' exact solves."""
    refit_tol: float = math.nan
    """The conjugate-gradient stopping rule's tolerance (NaN for a dense solve)."""

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
            "refit_iterations": self.refit_iterations,
            "refit_residual": _json_number(self.refit_residual),
            "refit_tol": _json_number(self.refit_tol),
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
            fields: dict[str, Any] = {k: _or_nan(v) for k, v in step.items()}
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
            refit_iterations=doc.get("refit_iterations", 0),
            refit_residual=_or_nan(doc.get("refit_residual")),
            refit_tol=_or_nan(doc.get("refit_tol")),
        )


def _or_nan(value: Any) -> Any:
    return math.nan if value is None else value


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
