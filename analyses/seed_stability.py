"""Seed stability against optimiser steps: do two seeds of one width find the same features?

Trains one SAE width from two seeds on the same activations and, at evenly spaced optimiser
steps, measures :func:`saegeo.seed_stability`: the share of one seed's features whose largest
decoder cosine to the other seed's SAE is > 0.7 (both directions averaged), also among live
latents only (those that fire on the held-out tokens); beside it the one-to-one figure of
:func:`saegeo.seed_stability_matched` (the share of Hungarian-matched pairs above 0.7, which
near-duplicate latents cannot inflate) and the mean matched cosine; with the held-out FVU, L0
and dead share. A converged dictionary finds most of its features again from another starting
point; a young one does not.

    .venv/bin/python analyses/seed_stability.py --acts STORE --width 576 \\
        [--arch batchtopk --k 32 --tokens 10000000 --batch-size 4096 --lr 0.002] \\
        [--seeds 0,1] [--points 8] [--out FILE.json]

Snapshots taken before the end hold the learning rate at its value then (the final decay has
not run); the last point is the finished SAE. The run's settings, the curve and its wall time
are written to ``--out`` as JSON and printed as a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import saegeo as sg
from saegeo.effects.metrics import evaluate
from saegeo.training.config import TRAIN_ARCHS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="activation store")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--arch", default="batchtopk", choices=TRAIN_ARCHS)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-decay", type=float, default=0.2)
    parser.add_argument("--aux-k", type=int, default=None)
    parser.add_argument("--aux-coefficient", type=float, default=1 / 32)
    parser.add_argument("--dead-tokens", type=int, default=200_000)
    parser.add_argument("--seeds", default="0,1", help="the two training seeds, comma-separated")
    parser.add_argument("--points", type=int, default=8, help="snapshots along the run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the curve")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = sg.ActivationStore.open(args.acts)
    config = sg.TrainConfig(
        arch=args.arch,
        width=args.width,
        k=args.k,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        aux_k=args.aux_k,
        aux_coefficient=args.aux_coefficient,
        dead_tokens=args.dead_tokens,
        progress=False,
    )
    steps = max(1, config.tokens // config.batch_size)
    marks = sorted({max(1, round(steps * (i + 1) / args.points)) for i in range(args.points)})
    held_out = store.read(limit=min(config.eval_tokens, store.n_tokens // 5))
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) != 2:
        raise SystemExit(f"--seeds: give two seeds, got {args.seeds!r}")
    started = time.perf_counter()
    snapshots: dict[int, dict[int, sg.SAE]] = {seed: {} for seed in seeds}
    for seed in seeds:
        run = dataclasses.replace(config, seed=seed)
        sg.train_sae(
            store,
            run,
            snapshots=marks,
            on_snapshot=lambda step, sae, seed=seed: snapshots[seed].__setitem__(step, sae),
        )
        print(f"seed {seed} trained at {time.perf_counter() - started:.0f} s", flush=True)
    rows = [
        {"steps": step, "tokens": step * config.batch_size}
        | stability_row(snapshots[seeds[0]][step], snapshots[seeds[1]][step], held_out)
        for step in marks
    ]
    seconds = time.perf_counter() - started
    print(
        f"{'steps':>7} {'tokens':>10} {'stable':>7} {'live':>6} {'matched':>7} {'pw-mcc':>6} "
        f"{'fvu':>6} {'l0':>6} {'dead':>6}"
    )
    for r in rows:
        print(
            f"{r['steps']:7d} {r['tokens']:10d} {r['stability']:7.3f} {r['stability_live']:6.3f} "
            f"{r['stability_matched']:7.3f} {r['mean_matched_cos']:6.3f} "
            f"{r['fvu']:6.3f} {r['l0']:6.1f} {r['dead']:6.3f}"
        )
    print(f"{len(seeds)} seeds of width {args.width} in {seconds:.0f} s")
    if args.out:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"settings": settings, "seconds": seconds, "curve": rows}, indent=1)
        )


def stability_row(a: sg.SAE, b: sg.SAE, held_out: torch.Tensor) -> dict[str, float]:
    """Seed stability of ``a`` and ``b`` (both directions averaged), also among the latents
    live on ``held_out`` and by one-to-one matching, with their mean held-out FVU, L0 and dead
    share."""
    live_a, live_b = _live(a, held_out), _live(b, held_out)
    metrics = [evaluate(sae, held_out, progress=False) for sae in (a, b)]
    matched = sg.seed_stability_matched(a, b)
    return {
        "stability": (sg.seed_stability(a, b) + sg.seed_stability(b, a)) / 2,
        "stability_live": (
            sg.seed_stability(a.W_dec[live_a], b.W_dec[live_b])
            + sg.seed_stability(b.W_dec[live_b], a.W_dec[live_a])
        )
        / 2,
        "stability_matched": matched.matched,
        "mean_matched_cos": matched.mean_matched_cos,
        "fvu": sum(m.fvu for m in metrics) / 2,
        "l0": sum(m.l0 for m in metrics) / 2,
        "dead": sum(m.dead_fraction for m in metrics) / 2,
    }


def _live(sae: sg.SAE, acts: torch.Tensor) -> torch.Tensor:
    """Latents of ``sae`` that fire on ``acts``."""
    fired = torch.zeros(sae.width, dtype=torch.bool)
    for batch in acts.split(4096):
        fired |= (sae.encode(batch) > 0).any(0)
    return fired


if __name__ == "__main__":
    main()
