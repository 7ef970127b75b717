"""GPT-2 small feature-splitting SAEs beside the numbers of "Stitching SAEs of different sizes".

Loads the SAELens release ``gpt2-small-res-jb-feature-splitting`` (eight ReLU SAEs on
``blocks.8.hook_resid_pre``, widths 768 to 98304) through the Hugging Face cache, harvests GPT-2's
activations at the SAEs' own site (``saegeo harvest --for``: the residual stream entering block
8, with TransformerLens's ``center_writing_weights``, contexts of the SAEs' ``context_size``),
and runs the paper's analysis:

- every SAE's L0 and MSE;
- for every adjacent pair, the share of the wider SAE's features that are novel (max decoder
  cosine to the narrower SAE <= 0.7) and the 2×2 table kind × sign(delta_mse);
- the Frankenstein SAE stitched from the narrowest member up to width 12288 (novel features
  added, decoder refit by least squares), its width, L0 and MSE after every step.

Each table is printed beside the numbers the paper reports (matched by position: the first pair
is the paper's GPT2-768 → GPT2-1536). The paper's activations came from OpenWebText; the default
text here is the packaged BBC news, so expect the same shape rather than the same digits.

    .venv/bin/python analyses/gpt2_feature_splitting.py [--tokens 200000] [--max-width 24576]
        [--text PATH] [--out reports/gpt2_feature_splitting]

Needs network access the first time (the SAEs and GPT-2 come from the Hugging Face Hub into its
cache; later runs work offline). Every count is an argument, so the same script runs on a
stand-in family and model (the tests do: ``--release``, ``--model``, ``--upto``). Writes
``saes.csv``, ``pairs.csv``, ``kind_sign.csv`` and ``frankenstein.csv`` under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import saegeo as sg
from saegeo.effects.novelty import PUBLISHED_GPT2_PAIR, kind_sign_frame
from saegeo.lm.harvest import harvest
from saegeo.lm.sites import hf_model_name, site_for
from saegeo.runtime.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "gpt2-small-res-jb-feature-splitting"

# "Stitching SAEs of different sizes", as published.
PUBLISHED_SAES = pd.DataFrame(
    {
        "width": [768, 1536, 3072, 6144, 12288, 24576, 49152, 98304],
        "l0": [35.2, 39.5, 42.4, 43.8, 43.9, 42.9, 42.4, 43.9],
        "mse": [2.72, 2.22, 1.89, 1.631, 1.456, 1.331, 1.210, 1.144],
    }
)
"""The paper's table of GPT-2 SAEs (layer 8 resid_pre): dictionary size, L0, MSE."""
PUBLISHED_FIRST_PAIR = {k: v for k, v in PUBLISHED_GPT2_PAIR.items() if not k.endswith("_width")}
"""GPT2-768 → GPT2-1536: 657 novel features; the 2×2 table kind × sign(delta_mse)."""
PUBLISHED_NOVEL_SHARE = 0.35
"""'about 35%' of a larger SAE's features are novel, across the family."""
PUBLISHED_FRANKENSTEIN = {1536: (1425, 53.1), 12288: (10485, 109.7)}
"""Frankenstein up to width W: (features, L0), against L0 35.0 (1536) and 44.1 (12288)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release", default=RELEASE, help="SAELens release (default %(default)s)")
    parser.add_argument("--sae-ids", nargs="+", help="SAE ids of the release (default: all)")
    parser.add_argument("--max-width", type=int, help="leave out members wider than this")
    parser.add_argument("--upto", type=int, default=12288, help="Frankenstein members <= this")
    parser.add_argument("--model", help="model to harvest (default: the SAEs' model)")
    parser.add_argument("--text", default="bbc_news", help="text for the activations")
    parser.add_argument("--tokens", type=int, default=200_000, help="activations harvested")
    parser.add_argument("--acts", help="an existing store for the SAEs' site (skips harvesting)")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpt2_feature_splitting"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    family = sg.Family.from_pretrained(args.release, args.sae_ids)
    if args.max_width is not None:
        family = sg.Family([sae for sae in family if sae.width <= args.max_width])
    print(f"family: {args.release}, widths {family.widths}")
    out = Path(args.out)
    acts = sg.ActivationStore.open(args.acts) if args.acts else harvest_site(args, family, out)
    print(f"activations: {acts.n_tokens} tokens x {acts.d_in} ({acts.source})")

    options = dict(batch_size=args.batch_size, device=args.device)
    saes = saes_table(family, acts, options)
    novelty = sg.family_novelty(family, acts, threshold=args.threshold, points=0, **options)
    pairs = pairs_table(novelty.summary)
    steps = sg.frankenstein_steps(
        family, acts, threshold=args.threshold, upto=args.upto, progress=False, **options
    )
    stitched = frankenstein_table(steps.report.to_frame())

    write_text(out / "saes.csv", saes.to_csv(index=False))
    write_text(out / "pairs.csv", pairs.to_csv(index=False))
    write_text(out / "kind_sign.csv", kind_sign_frame(novelty).to_csv(index=False))
    write_text(out / "frankenstein.csv", stitched.to_csv(index=False))
    show = {"index": False, "float_format": lambda v: f"{v:.4g}", "na_rep": "–"}
    print("\nSAEs (ours | published)")
    print(saes.to_string(**show))
    print("\nAdjacent pairs: novel share and kind x sign(delta_mse) (ours | published)")
    print(pairs.to_string(**show))
    print(f"published: about {PUBLISHED_NOVEL_SHARE:.0%} of a larger SAE's features are novel")
    print(f"\nFrankenstein up to width {args.upto} (ours | published)")
    print(stitched.to_string(**show))
    print(f"\nwrote {out}/saes.csv, pairs.csv, kind_sign.csv, frankenstein.csv")


def harvest_site(args: argparse.Namespace, family: sg.Family, out: Path) -> sg.ActivationStore:
    """Activations at the family's own site (see ``saegeo harvest --for``)."""
    meta = family[0].metadata
    site = site_for(meta, source=f"{args.release} ({family[0].name})")
    model = args.model or hf_model_name(str(meta["model_name"]))
    context = int(meta.get("context_size") or 128)
    print(
        f"harvest: {model} {site.hook_name} (block {site.layer} output), context {context}, "
        f"center_writing_weights={site.center_writing_weights}"
    )
    return harvest(
        model,
        args.text,
        out / "acts",
        hook=site.hook_name,
        center_writing_weights=site.center_writing_weights,
        context=context,
        max_tokens=args.tokens,
        dtype="float32",
        model_dtype="float32",
        device=args.device,
        compile=False,
    )


def published(frame: pd.DataFrame, column: str, n: int) -> list[float | None]:
    values = list(frame[column])
    return values[:n] + [None] * max(0, n - len(values))


def saes_table(family: sg.Family, acts: sg.ActivationStore, options: dict) -> pd.DataFrame:
    rows = []
    for sae in family:
        metrics = sg.evaluate(sae, acts, **options)
        rows.append({"sae": sae.name, "width": sae.width, "l0": metrics.l0, "mse": metrics.mse})
    table = pd.DataFrame(rows)
    n = len(table)
    table["published_width"] = published(PUBLISHED_SAES, "width", n)
    table["published_l0"] = published(PUBLISHED_SAES, "l0", n)
    table["published_mse"] = published(PUBLISHED_SAES, "mse", n)
    return table


def pairs_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Each of our columns followed by the paper's (first pair only: the paper's 768 -> 1536)."""
    table = summary[["small_width", "large_width"]].copy()
    pad = [None] * (len(table) - 1)
    paper = {**PUBLISHED_FIRST_PAIR, "share_novel": PUBLISHED_FIRST_PAIR["n_novel"] / 1536}
    for key in ["n_novel", "share_novel", *list(PUBLISHED_FIRST_PAIR)[1:]]:
        table[key] = summary[key]
        table[f"published_{key}"] = [paper[key], *pad]
    return table


def frankenstein_table(steps: pd.DataFrame) -> pd.DataFrame:
    table = steps[["width", "added", "n_features", "l0_before", "mse_before", "mse_after"]].copy()
    paper_widths = list(PUBLISHED_SAES["width"])[: len(table)]
    table["published_width"] = paper_widths + [None] * (len(table) - len(paper_widths))
    table["published_n_features"] = [
        PUBLISHED_FRANKENSTEIN.get(w, (None, None))[0] for w in table["published_width"]
    ]
    table["published_l0"] = [
        PUBLISHED_FRANKENSTEIN.get(w, (None, None))[1] for w in table["published_width"]
    ]
    return table


if __name__ == "__main__":
    main()
