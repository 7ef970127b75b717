"""Regenerate the README's pictures in assets/ from the analyses' results.

    .venv/bin/python analyses/make_figures.py [--skip-analyses] [--pair 0]

1. Runs ``analyses/novel_vs_reconstruction.py`` and ``analyses/frankenstein.py`` with their
   defaults (the demo family when ``make demo`` has run, else a toy family), unless
   ``--skip-analyses`` reuses their last results under ``reports/``.
2. Draws ``assets/novel_vs_reconstruction.png`` (one pair of widths, ``--pair``) and
   ``assets/frankenstein.png`` from their CSV results with :mod:`saegeo.viz.plots`, rendered by
   headless Chromium at each figure's own size.
3. Runs ``analyses/figures_tree.py`` for ``assets/tree.png``.

Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``). ``make figures`` runs this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from common import screenshot

from saegeo.effects.novelty import FamilyNovelty
from saegeo.viz.plots import frankenstein_figure, novelty_figure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPORTS = ROOT / "reports"
ASSETS = ROOT / "assets"


def run(script: str, *args: str) -> None:
    """Run an analysis script with this interpreter, from the repository root."""
    print(f"$ {Path(sys.executable).name} analyses/{script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True, cwd=ROOT)


def render_png(fig: go.Figure, png_path: Path) -> Path:
    """Screenshot ``fig`` (plotly.js embedded, no network) with headless Chromium."""
    width, height = int(fig.layout.width or 1100), int(fig.layout.height or 520)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "figure.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True, config={"staticPlot": True})
        return screenshot(html, png_path, width=width, height=height)


def novelty_png(pair: int) -> Path:
    """One pair of the novel-vs-reconstruction figure, from the analysis's CSVs."""
    out = REPORTS / "novel_vs_reconstruction"
    summary = pd.read_csv(out / "summary.csv")
    if not 0 <= pair < len(summary):
        sys.exit(f"--pair {pair}: the results have pairs 0..{len(summary) - 1}")
    features, curves = pd.read_csv(out / "features.csv"), pd.read_csv(out / "curves.csv")
    result = FamilyNovelty(
        summary.iloc[[pair]].reset_index(drop=True),
        features[features["pair"] == pair].assign(pair=0),
        curves[curves["pair"] == pair].assign(pair=0),
    )
    row = summary.iloc[pair]
    title = (
        f"Novel vs reconstruction features of {row['large']} relative to {row['small']} "
        "(novel: max decoder cosine ≤ 0.7)"
    )
    return render_png(novelty_figure(result, title=title), ASSETS / "novel_vs_reconstruction.png")


def frankenstein_png() -> Path:
    """Frankenstein SAEs against the original widths, from the analysis's CSVs."""
    out = REPORTS / "frankenstein"
    comparison, path = pd.read_csv(out / "comparison.csv"), pd.read_csv(out / "path.csv")
    fig = frankenstein_figure(
        comparison, path, title="Frankenstein SAEs vs the original widths (held-out MSE)"
    )
    # Unrefit stitches err by orders of magnitude more than the rest: a log scale keeps the
    # originals and the refit Frankensteins apart.
    fig.update_yaxes(type="log")
    return render_png(fig, ASSETS / "frankenstein.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-analyses", action="store_true", help="reuse reports/ results")
    parser.add_argument("--pair", type=int, default=0, help="pair of widths shown (0: narrowest)")
    args = parser.parse_args()
    if not args.skip_analyses:
        run("novel_vs_reconstruction.py")
        run("frankenstein.py")
    print(f"wrote {novelty_png(args.pair)}")
    print(f"wrote {frankenstein_png()}")
    run("figures_tree.py")


if __name__ == "__main__":
    main()
