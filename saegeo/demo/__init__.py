"""The demo: activations of the packaged language model, an SAE family on them, the report.

The family is the converged BatchTopK one shipped with saegeo (:data:`SHIPPED_FAMILY`, made by
``analyses/demo_family.py``), shown beside the shipped ReLU + L1 family
(:data:`SHIPPED_RELU_FAMILY`), or one trained here in minutes (``DemoSettings.retrain``). The
activations are harvested on this machine from registry packages; everything is cached under
one directory, so the first call harvests (and trains) and later calls only read.
"""

from __future__ import annotations

from pathlib import Path

from saegeo.demo.data import DemoData, demo_data
from saegeo.demo.report import (
    architecture_table,
    compare_architectures,
    compare_with_published,
    seed_003_comparison,
    write_report,
)
from saegeo.demo.settings import (
    DEFAULT_ROOT,
    EVAL_TOKENS,
    SHIPPED_FAMILIES,
    SHIPPED_FAMILY,
    SHIPPED_RELU_FAMILY,
    DemoSettings,
    shipped_record,
)
from saegeo.demo.stages import Stages, stage_keys

__all__ = [
    "DEFAULT_ROOT",
    "EVAL_TOKENS",
    "SHIPPED_FAMILIES",
    "SHIPPED_FAMILY",
    "SHIPPED_RELU_FAMILY",
    "DemoData",
    "DemoSettings",
    "Stages",
    "architecture_table",
    "compare_architectures",
    "compare_with_published",
    "demo_data",
    "run_demo",
    "seed_003_comparison",
    "shipped_record",
    "stage_keys",
    "write_report",
]


def run_demo(
    out: str | Path = DEFAULT_ROOT,
    *,
    quick: bool = False,
    retrain: bool = False,
    settings: DemoSettings | None = None,
    progress: bool | None = None,
) -> Path:
    """Build the demo data under ``out`` (cached), run every analysis, write the report.

    The family is the shipped one; ``retrain`` trains one here in minutes
    (:meth:`DemoSettings.retrained`) and ``quick`` a smaller one on fewer tokens
    (:meth:`DemoSettings.quick`); ``settings`` overrides both.

    Returns the path of ``out/report/index.html``. Analysis results are cached beside the
    report, each section's files keyed by the settings and stages that produced them (see
    :func:`stage_keys`), so a second run with the same settings only re-renders the page and
    a changed setting recomputes the sections that depend on it.
    """
    if settings is None:
        settings = (
            DemoSettings.quick()
            if quick
            else DemoSettings.retrained()
            if retrain
            else DemoSettings()
        )
    data = demo_data(out, settings, progress=progress)
    return write_report(data, progress=progress)
