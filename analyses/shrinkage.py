"""Do novel features lower the MSE only because the narrower SAE under-reconstructs?

"Stitching SAEs of different sizes" finds that adding a novel wider feature to the narrower SAE
lowers its MSE (96% of them on GPT-2). An L1 penalty shrinks a ReLU SAE's activations, so its
reconstruction falls short along its own features (``present`` > 1 in
:mod:`saegeo.effects.explained`), and then adding almost any well-aligned feature helps. This
script removes the shrinkage and measures again. For each adjacent pair of each family, the
narrower SAE is taken as it is (``original``), with its decoder scaled by the least-squares
gain of its reconstruction (``gain``: one scalar, fitted on the training tokens), and with its
decoder refitted exactly for its frozen codes (``refit``: :func:`saegeo.refit_exact` on the
training tokens), and with both SAEs' decoders refitted (``refit_both``: the wider feature's
own contribution is shrunk too when its SAE is penalised, which ``present`` measures); the
wider features are classified once, on the original decoders, and their ``delta_mse`` and
``present`` recomputed against each variant on the held-out tokens.

Families: a ReLU + L1 family trained here with saegeo's trainer (``--steps`` steps of
``--batch-size`` tokens on the store's training tokens, the L1 coefficient adapted towards
``--target-l0``), a BatchTopK family trained the same way, and the two shipped families
(BatchTopK and ReLU + L1).

    .venv/bin/python analyses/shrinkage.py --acts STORE --out DIR [--steps 2000]

Writes ``DIR/shrinkage.csv`` (one row per family, pair and variant) and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import saegeo as sg
from saegeo.demo import SHIPPED_FAMILY, SHIPPED_RELU_FAMILY
from saegeo.effects.explained import explained_share
from saegeo.effects.metrics import evaluate
from saegeo.effects.shrinkage import reconstruction_gain

HELD_OUT = 16_384
"""Tokens at the start of the store that training holds out (TrainConfig.eval_tokens)."""
WIDTHS = (576, 1152)


def trained_family(store: sg.ActivationStore, out: Path, config: sg.TrainConfig) -> sg.Family:
    """The family under ``out``, trained there first if it is not (whole)."""
    if (out / "family.json").exists() and sg.Family.load(out).widths == list(WIDTHS):
        return sg.Family.load(out)
    started = time.perf_counter()
    run = sg.train_family(store, list(WIDTHS), config, out)
    for report in run.reports:
        metrics = report.metrics
        assert metrics is not None
        print(
            f"{config.arch} {report.width}: FVU {metrics.fvu:.3f}, L0 {metrics.l0:.1f}, "
            f"dead {metrics.dead_fraction:.3f}, {report.seconds:.0f} s",
            flush=True,
        )
    print(f"{config.arch} family trained in {time.perf_counter() - started:.0f} s", flush=True)
    return run.family


def gain_scaled(sae: sg.SAE, train: torch.Tensor) -> tuple[sg.SAE, float]:
    """``sae`` with its decoder scaled by the least-squares gain of its reconstruction."""
    gain = reconstruction_gain(sae, train)
    return sae.replace(W_dec=sae.W_dec * gain), gain


def pair_rows(
    name: str, small: sg.SAE, large: sg.SAE, held_out: torch.Tensor, train: torch.Tensor
) -> list[dict]:
    kinds = sg.classify(small, large, device="cpu")["kind"].to_numpy()
    novel = kinds == "novel"
    gained, gain = gain_scaled(small, train)
    refit = sg.refit_exact(small, train, device="cpu", progress=False).sae
    large_refit = sg.refit_exact(large, train, device="cpu", progress=False).sae
    variants = {
        "original": (small, large, 1.0),
        "gain": (gained, large, gain),
        "refit": (refit, large, np.nan),
        "refit_both": (refit, large_refit, np.nan),
    }
    rows = []
    for variant, (narrow, wide, gain_value) in variants.items():
        options = dict(device="cpu", progress=False)
        delta = sg.delta_mse(narrow, wide, held_out, **options).to_numpy()
        present = explained_share(narrow, wide, held_out, **options)["present"].to_numpy()
        fires = ~np.isnan(present)
        lowers = delta < 0
        rows.append(
            {
                "family": name,
                "pair": f"{small.width}->{large.width}",
                "variant": variant,
                "gain": gain_value,
                "small_fvu": evaluate(narrow, held_out, progress=False).fvu,
                "novel_share": float(novel.mean()),
                "novel_lowering": float(lowers[novel & fires].mean()),
                "reconstruction_raising": float((~lowers)[~novel & fires].mean()),
                "all_lowering": float(lowers[fires].mean()),
                "median_present": float(np.median(present[fires])),
                "scored": int(fires.sum()),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="activation store (the demo's)")
    parser.add_argument("--out", type=Path, required=True, help="directory for families and CSV")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--target-l0", type=float, default=36.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--families",
        default="relu_l1,batchtopk,batchtopk_shipped,relu_shipped",
        help="which of relu_l1, batchtopk (both trained here), batchtopk_shipped and relu_shipped",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    store = sg.ActivationStore.open(args.acts)
    acts = store.read()
    held_out, train = acts[:HELD_OUT], acts[HELD_OUT:]
    base = sg.TrainConfig(
        tokens=args.steps * args.batch_size,
        batch_size=args.batch_size,
        eval_tokens=HELD_OUT,
        device="cpu",
        progress=False,
    )
    configs = {
        "relu_l1": dataclasses.replace(base, arch="relu", sparsity="l1", target_l0=args.target_l0),
        "batchtopk": dataclasses.replace(base, arch="batchtopk", k=32),
    }
    rows = []
    for name in args.families.split(","):
        if name in ("batchtopk_shipped", "relu_shipped"):
            shipped = SHIPPED_FAMILY if name == "batchtopk_shipped" else SHIPPED_RELU_FAMILY
            family = sg.Family([sae.to(dtype=torch.float32) for sae in sg.Family.load(shipped)])
        elif name in configs:
            family = trained_family(store, args.out / name, configs[name])
        else:
            parser.error(f"--families: unknown family {name!r}")
        for small, large in family.pairs():
            rows += pair_rows(name, small, large, held_out, train)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "shrinkage.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
