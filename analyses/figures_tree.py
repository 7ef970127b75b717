"""Regenerate assets/tree.png: one feature tree of a toy family, rendered by headless Chromium.

The family is built from a toy model with a known hierarchy (3 roots, 3 children each, 3
grandchildren each). Its SAEs are decoder-only dictionaries whose latents are what wider SAEs
learn in such a model: the narrowest has one latent per root (the root plus a little of its
children, absorbed), the next one latent per child (root + child), the widest one per
grandchild (root + child + grandchild), each with a little noise and a few unrelated latents.

    .venv/bin/python analyses/figures_tree.py [--out assets/tree.png] [--html reports/tree.html]

Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``) for the PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import screenshot

import saegeo as sg
from saegeo.training.toy import ToyConfig, make_toy_model
from saegeo.viz.figures import save_html, tree_figure

ROOT = Path(__file__).resolve().parents[1]


def toy_family(seed: int = 0) -> tuple[sg.Family, sg.ActivationStore, dict[str, str]]:
    """A three-level family over a toy hierarchy, activations, and a label per latent."""
    toy = make_toy_model(
        ToyConfig(
            n_roots=3,
            branching=3,
            depth=2,
            d=64,
            root_prob=0.1,
            child_prob=0.3,
            directions="orthogonal",
            seed=seed,
        )
    )
    # Not the toy's own seed: its directions come from a generator seeded with it.
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    dirs = toy.directions
    parent = toy.parent.tolist()
    depth = toy.depth.tolist()
    saes, labels = [], {}
    for level in range(3):
        rows, names = [], []
        for f in (i for i in range(toy.n_features) if depth[i] == level):
            direction, chain, g = dirs[f].clone(), [f], f
            while parent[g] >= 0:
                g = parent[g]
                direction += dirs[g]
                chain.append(g)
            if level == 0:
                kids = [c for c in range(toy.n_features) if parent[c] == f]
                direction += 0.3 * dirs[kids].sum(0)
            rows.append(direction)
            names.append(" > ".join(f"f{c}" for c in reversed(chain)))
        for _ in range(2):  # unrelated latents
            rows.append(torch.randn(toy.d, generator=generator))
            names.append("unrelated")
        W_dec = torch.stack(rows)
        W_dec = W_dec + 0.02 * torch.randn(W_dec.shape, generator=generator)
        order = torch.randperm(W_dec.shape[0], generator=generator)
        W_dec = W_dec[order] / W_dec[order].norm(dim=1, keepdim=True)
        sae = sg.SAE.from_decoder(
            W_dec, max_iterations=8, metadata={"name": f"toy-{W_dec.shape[0]}"}
        )
        saes.append(sae)
        for j, i in enumerate(order.tolist()):
            labels[f"{level}/{j}"] = f"true {names[i]}"
    return sg.Family(saes), toy.to_store(4000, seed=seed), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "tree.png")
    parser.add_argument("--html", type=Path, default=ROOT / "reports" / "tree.html")
    args = parser.parse_args()

    family, acts, labels = toy_family()
    G = sg.feature_dag(family, metric="decoder_cosine", acts=acts, progress=False)
    table, trees = sg.forest(G, rank_by="size")
    print(table.head().to_string())
    fig = tree_figure(trees[0], labels=labels)
    fig.update_layout(width=1200, height=800)
    save_html(fig, args.html, overwrite=True)
    screenshot(args.html, args.out, width=1200, height=800, budget_ms=5000)
    print(f"wrote {args.html} and {args.out}")


if __name__ == "__main__":
    main()
