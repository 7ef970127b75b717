"""How well three novelty scores predict whether adding a wider feature lowers the MSE.

For every adjacent pair of each family, every wider feature that fires on the held-out tokens
gets its ``delta_mse`` (the narrower SAE's MSE change when the feature is added alone) and three
scores:

- ``max_cos``: the largest decoder cosine to the narrower SAE (novel iff <= 0.7, the default of
  "Stitching SAEs of different sizes");
- ``residual``: the share of the feature's unit decoder row left outside the span of its 8
  nearest narrower rows (:func:`saegeo.geometry.residual.decoder_residual`; high = novel),
  which, like ``max_cos``, needs no activations;
- ``explained``: the share of the input's component along the feature's decoder contributions
  that the narrower SAE's reconstruction already holds, on the tokens where it fires
  (:func:`saegeo.effects.explained.explained_share`; the closed form of ``delta_mse`` puts its
  threshold at 1/2 when ``present`` is 1);
- ``projection``: the least-squares coefficient of the narrower reconstruction on the feature's
  contributions, ``Σ<ŷ, c> / Σ||c||² = explained · present``, which also carries the wider
  SAE's scale of the feature (shown for comparison).

The table gives, per pair, the wider features scored (those that fire on the held-out tokens),
the share of them with ``delta_mse < 0``, each score's ROC AUC for that sign (low score =
predicted to lower the MSE), and how often each threshold rule (``max_cos <= 0.7``,
``explained < 0.5``) gets the sign right (balanced accuracy: the mean of the two classes' hit
rates). ``present`` is the median of ``present``, the closed form's assumption (about 1) behind
the 1/2 threshold.

    .venv/bin/python analyses/novelty_scores.py [--family PATH... --acts ACTS] [--out FILE]

Families: toy hierarchies (:mod:`saegeo.training.toy`) with SAEs trained by
:func:`saegeo.train_family` (ReLU, BatchTopK saved as JumpReLU, TopK with the TopK union), a few
minutes in all on two CPU cores; the demo family too when ``make demo`` has run (activations
under ``reports/demo``); or ``--family``/``--acts``. Writes the table as CSV under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEMO, ROOT, add_input_flags, demo_family, toy_family

import saegeo as sg
from saegeo.effects.explained import EXPLAINED_THRESHOLD, explained_share, roc_auc
from saegeo.effects.novelty import novelty_table

HELD_OUT = 16_384
"""Tokens at the start of a store that training held out (train_family's eval_tokens)."""
FEATURES: list[pd.DataFrame] = []
TOY_FAMILIES = (("relu", (48, 96, 192)), ("batchtopk", (48, 96, 192)), ("topk", (48, 96, 192)))


def balanced_accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean of the hit rates on the positives and on the negatives."""
    rates = [
        float((predicted[actual == c] == c).mean()) for c in (True, False) if (actual == c).any()
    ]
    return float(np.mean(rates))


def pair_rows(name: str, family: sg.Family, acts: torch.Tensor, topk: str) -> list[dict]:
    rows = []
    for small, large in family.pairs():
        options = dict(topk=topk, device="cpu", progress=False)
        table = novelty_table(small, large, progress=False)
        delta = sg.delta_mse(small, large, acts, **options)
        scores = explained_share(small, large, acts, **options)
        fires = scores["explained"].notna().to_numpy()  # fires, and present > 0
        lowers = (delta < 0).to_numpy()[fires]
        max_cos = table["max_cos"].to_numpy()[fires]
        residual = table["residual"].to_numpy()[fires]
        explained = scores["explained"].to_numpy()[fires]
        present = scores["present"].to_numpy()[fires]
        projection = explained * present
        FEATURES.append(
            pd.DataFrame(
                {
                    "family": name,
                    "pair": f"{small.width}->{large.width}",
                    "max_cos": max_cos,
                    "residual": residual,
                    "explained": explained,
                    "present": present,
                    "delta_mse": delta.to_numpy()[fires],
                }
            )
        )
        rows.append(
            {
                "family": name,
                "pair": f"{small.width}->{large.width}",
                "scored": int(fires.sum()),
                "lowers_mse": float(lowers.mean()),
                "auc_max_cos": roc_auc(-max_cos, lowers),
                "auc_residual": roc_auc(residual, lowers),
                "auc_projection": roc_auc(-projection, lowers),
                "auc_explained": roc_auc(-explained, lowers),
                "bacc_max_cos": balanced_accuracy(max_cos <= 0.7, lowers),
                "bacc_explained": balanced_accuracy(explained < EXPLAINED_THRESHOLD, lowers),
                "present": float(np.median(present)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_flags(parser, tokens=HELD_OUT, tokens_help="held-out tokens used")
    parser.add_argument("--out", default=str(ROOT / "reports" / "novelty_scores.csv"))
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    rows = []
    if args.family:
        if not args.acts:
            parser.error("--family needs --acts")
        family = sg.Family.load(args.family)
        acts = sg.ActivationStore.open(args.acts).read(limit=args.tokens)
        rows += pair_rows("given", family, acts, "reencode")
    else:
        for arch, widths in TOY_FAMILIES:
            family, acts = toy_family(arch, widths)
            rows += pair_rows(f"toy {arch}", family, acts[: args.tokens], "reencode")
            if arch == "topk":
                rows += pair_rows("toy topk as jumprelu", family, acts[: args.tokens], "jumprelu")
        if demo := demo_family():
            family, acts_path = demo
            acts = sg.ActivationStore.open(acts_path).read(limit=args.tokens)
            rows += pair_rows("demo", family, acts, "reencode")
        else:
            print(f"(no demo family under {DEMO}: toy families only)")

    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    pd.concat(FEATURES).to_csv(out.with_name(out.stem + "_features.csv"), index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{time.perf_counter() - started:.0f} s; table -> {out}")


if __name__ == "__main__":
    main()
