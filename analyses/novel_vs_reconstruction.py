"""The novel-vs-reconstruction analysis of "Stitching SAEs of different sizes" on a family.

For every adjacent pair of widths: the share of the wider SAE's features that are novel (max
decoder cosine to the narrower SAE <= threshold), each feature's ``delta_mse`` when added alone
to the narrower SAE, the 2×2 table kind × sign(delta_mse), and the MSE of the narrower SAE as
the novel (or the reconstruction) features are added together, most helpful first, each point
a real evaluation of the hybrid SAE. The computations are :func:`saegeo.family_novelty`; this
script only reads inputs and writes results.

    .venv/bin/python analyses/novel_vs_reconstruction.py [--family PATH... --acts ACTS] [--out DIR]

Without ``--family`` it uses the demo family (the shipped one, or ``reports/demo/family`` after
``saegeo demo --retrain``) on ``reports/demo/acts`` when ``make demo`` has run, and otherwise
trains a small ReLU family
(standard SAEs, as in the paper) on a toy model, which takes a minute or two on a CPU.

Writes ``summary.csv`` (one row per pair), ``features.csv`` (one row per wider-SAE feature),
``kind_sign.csv`` (the 2×2 tables), ``curves.csv`` and ``novel_vs_reconstruction.html``
(plotly, self-contained) under ``--out`` (default ``reports/novel_vs_reconstruction``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, add_input_flags, load_inputs

import saegeo as sg
from saegeo.effects.novelty import kind_sign_frame
from saegeo.runtime.atomic import write_text
from saegeo.viz.figures import save_html
from saegeo.viz.plots import novelty_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_flags(parser, tokens=50_000)
    parser.add_argument("--out", default=str(ROOT / "reports" / "novel_vs_reconstruction"))
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--points", type=int, default=11, help="evaluated points per curve")
    parser.add_argument(
        "--topk", choices=["reencode", "jumprelu"], default="reencode", help="TopK pairs"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)

    family, acts, what = load_inputs(args, "relu", [48, 96, 192])
    print(f"family: {what}; widths {family.widths}; {len(acts)} tokens")
    result = sg.family_novelty(
        family,
        acts,
        threshold=args.threshold,
        points=args.points,
        topk=args.topk,
        device=args.device,
    )
    out = Path(args.out)
    write_text(out / "summary.csv", result.summary.to_csv(index=False))
    write_text(out / "features.csv", result.features.to_csv(index=False))
    write_text(out / "kind_sign.csv", kind_sign_frame(result).to_csv(index=False))
    write_text(out / "curves.csv", result.curves.to_csv(index=False))
    title = f"Novel vs reconstruction features (threshold {args.threshold}): {what}"
    save_html(
        novelty_figure(result, threshold=args.threshold, title=title),
        out / "novel_vs_reconstruction.html",
        overwrite=True,
    )
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(kind_sign_frame(result).to_string(index=False))
    print(
        f"wrote {out}/summary.csv, features.csv, kind_sign.csv, curves.csv, "
        "novel_vs_reconstruction.html"
    )


if __name__ == "__main__":
    main()
