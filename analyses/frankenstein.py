"""Frankenstein SAEs stitched up to each width vs the original SAEs.

The comparison is that of "Stitching SAEs of different sizes".

For every width of a family, the Frankenstein of the members up to it (novel features added,
decoder refit exactly with the encoder frozen) is compared with the original members: MSE
against the number of features and against L0, on held-out tokens. The interpolation path
between adjacent widths (add novel features, then swap reconstruction groups) is drawn too.

    .venv/bin/python analyses/frankenstein.py [--family PATH... --acts ACTS] [--out DIR]

Without ``--family`` it uses the demo family (the shipped one, or ``reports/demo/family`` after
``saegeo demo --retrain``) on ``reports/demo/acts`` when ``make demo`` has run, and otherwise
trains a small TopK family on a toy model (seconds). The first ``--eval-tokens`` tokens of the
activations are held out for every metric; the rest are used for the refits.

Writes ``comparison.csv``, ``path.csv`` and ``frankenstein.html`` (plotly, self-contained)
under ``--out`` (default ``reports/frankenstein``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, add_input_flags, load_inputs

from saegeo.runtime.atomic import write_text
from saegeo.stitch.curve import frankenstein_curve
from saegeo.stitch.interpolation import interpolation_path
from saegeo.viz.figures import save_html
from saegeo.viz.plots import frankenstein_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_flags(parser, tokens=200_000)
    parser.add_argument("--out", default=str(ROOT / "reports" / "frankenstein"))
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="held out for metrics")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--swap", action="store_true", help="swap children in as well")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)

    family, acts, what = load_inputs(args, "topk", [32, 64, 128, 256])
    held_out, fit = acts[: args.eval_tokens], acts[args.eval_tokens :]
    print(
        f"family: {what}; widths {family.widths}; {len(fit)} fit / {len(held_out)} held-out tokens"
    )
    comparison = frankenstein_curve(
        family,
        fit,
        eval_acts=held_out,
        threshold=args.threshold,
        swap=args.swap,
        device=args.device,
        progress=True,
    )
    path = interpolation_path(
        family, held_out, threshold=args.threshold, device=args.device, progress=True
    )

    out = Path(args.out)
    write_text(out / "comparison.csv", comparison.to_csv(index=False))
    write_text(out / "path.csv", path.to_csv(index=False))
    title = f"Frankenstein SAEs vs originals (threshold {args.threshold}): {what}"
    save_html(
        frankenstein_figure(comparison, path, title=title),
        out / "frankenstein.html",
        overwrite=True,
    )
    columns = ["kind", "name", "n_features", "l0", "mse", "fvu", "nearest", "mse_vs_nearest"]
    print(comparison[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out}/comparison.csv, path.csv, frankenstein.html")


if __name__ == "__main__":
    main()
