"""The demo's HTML report on a toy family, and its screenshot at 1400 px for the README.

    .venv/bin/python analyses/report_screenshot.py [--out DIR] [--png assets/report.png]

Trains a small TopK family (widths 48, 96, 192) on a toy two-level hierarchy
(:mod:`saegeo.training.toy`), runs the demo's report on it (:func:`saegeo.demo.write_report`:
the same sections, tables and figures as ``make demo``, cached under ``--out``) and renders the
page with headless Chromium (``apt-get install chromium``) at 1400 px wide. About two minutes on
two CPU cores; a second run only re-renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, screenshot

import saegeo as sg
from saegeo.demo import DemoData, DemoSettings, Stages, stage_keys, write_report

WIDTHS = (48, 96, 192)
K = 8


def toy_data(root: Path) -> DemoData:
    """Toy activations and a TopK family trained on them, cached under ``root``."""
    toy = sg.make_toy_model(
        sg.ToyConfig(
            n_roots=48,
            branching=4,
            depth=1,
            d=64,
            root_prob=0.04,
            child_prob=0.25,
            magnitude_std=0.3,
            noise_std=0.02,
            seed=0,
        )
    )
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
        family = sg.train_family(store, list(WIDTHS), config, out_dir=family_dir).family
        stages.done("family")
    return DemoData(store=store, family=family, root=root, settings=settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "toy_report"))
    parser.add_argument("--png", default=str(ROOT / "assets" / "report.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4400)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    page = write_report(toy_data(root), progress=False)
    png = screenshot(page, Path(args.png), width=args.width, height=args.height)
    print(f"report: {page}\nscreenshot: {png}")


if __name__ == "__main__":
    main()
