"""The demo's HTML report, and its screenshot at 1400 px for the README.

    .venv/bin/python analyses/report_screenshot.py [--toy] [--out DIR] [--png assets/report.png]

By default runs ``make demo``'s pipeline (:func:`saegeo.demo.run_demo`: the shipped family on
the packaged data, cached under ``--out``, default ``reports/demo``). With ``--toy`` it trains a
small TopK family (widths 48, 96, 192) on a toy two-level hierarchy
(:mod:`saegeo.training.toy`) instead and runs the demo's report on it
(:func:`saegeo.demo.write_report`: the same sections, tables and figures). Either way the page
is rendered with headless Chromium (``apt-get install chromium``) at 1400 px wide. A few minutes
on two CPU cores the first time; a second run only re-renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, screenshot, two_level_toy

import saegeo as sg
from saegeo.demo import DemoData, DemoSettings, Stages, run_demo, stage_keys, write_report

WIDTHS = (48, 96, 192)
K = 8


def toy_data(root: Path) -> DemoData:
    """Toy activations and a TopK family trained on them, cached under ``root``."""
    toy = two_level_toy(n_roots=48)
    acts = toy.sample(100_000, seed=0).acts
    store = sg.ActivationStore(
        [(acts.numpy(), 0, acts.shape[0])],
        acts.shape[1],
        meta={"description": "a toy two-level feature hierarchy (48 roots × 4 children)"},
        source="toy",
    )
    settings = DemoSettings(
        model="toy",
        tokens=acts.shape[0],
        retrain=True,
        arch="topk",
        k=K,
        multipliers=WIDTHS,
        train_tokens=200_000,
    )
    family_dir = root / "family"
    stages, key = Stages(root), stage_keys(settings)["family"]
    if stages.ready("family", key, [family_dir]):
        family = sg.Family.load(family_dir)
    else:
        config = sg.TrainConfig(
            arch="topk", k=K, tokens=200_000, batch_size=1024, eval_tokens=16_384, progress=False
        )
        family = sg.train_family(
            store, list(WIDTHS), config, out_dir=family_dir, overwrite=True
        ).family
        stages.done("family")
    return DemoData(store, family, root, settings, family_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", action="store_true", help="a toy family instead of the demo's")
    parser.add_argument("--out", default=None, help="cache directory of the report")
    parser.add_argument("--png", default=str(ROOT / "assets" / "report.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4400)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.toy:
        root = Path(args.out or ROOT / "reports" / "toy_report")
        root.mkdir(parents=True, exist_ok=True)
        page = write_report(toy_data(root), progress=False)
    else:
        page = run_demo(args.out or ROOT / "reports" / "demo")
    png = screenshot(page, Path(args.png), width=args.width, height=args.height)
    print(f"report: {page}\nscreenshot: {png}")


if __name__ == "__main__":
    main()
