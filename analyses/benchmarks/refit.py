"""Benchmark: the exact decoder refit against Adam, on the Frankenstein of a family.

In one run, on the same Frankenstein SAE (stitched without refit) and the same tokens:

- one evaluation pass (encode + decode), the unit the other times are given in;
- the exact refit (one pass + Cholesky solve): time and training MSE;
- Adam on the decoder for the same wall time as the exact refit;
- Adam to convergence (``--passes`` passes over the tokens, learning rate decayed at the
  end), for each learning rate of a small sweep.

MSE is reported on the fitting tokens (the objective both minimise) and on held-out tokens.
Times are noisy on a shared CPU, so the table gives them as ratios to the evaluation pass
measured in the same run. Runs on CUDA when present (``--device auto``).

    .venv/bin/python analyses/benchmarks/refit.py [--family PATH... --acts ACTS]

Without ``--family`` it uses the demo family when ``make demo`` has run (``reports/demo/acts``
with ``reports/demo/family`` if trained, else the shipped family), else a TopK family trained
on a toy model in a few seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import saegeo as sg
from saegeo.effects.metrics import evaluate
from saegeo.runtime.devices import resolve_device
from saegeo.stitch.refit import refit_exact
from saegeo.stitch.refit_sgd import refit_sgd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # analyses/common.py
from common import add_input_flags, load_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_flags(parser, tokens=200_000)
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens")
    parser.add_argument("--passes", type=int, default=30, help="Adam passes to convergence")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)

    family, acts, what = load_inputs(args, "topk", [64, 128, 256, 512], n_roots=64)
    held_out, fit = acts[: args.eval_tokens], acts[args.eval_tokens :]
    common = {"batch_size": args.batch_size, "device": device, "progress": False}
    frank, report = sg.frankenstein(family, fit, retrain="none", **common)
    print(
        f"{what}: widths {family.widths} -> Frankenstein of {frank.width} features, "
        f"L0 {report.steps[-1].l0_before:.1f}; {len(fit)} fit / {len(held_out)} held-out "
        f"tokens; device {device}, {torch.get_num_threads()} CPU threads"
    )

    def held_out_mse(sae: sg.SAE) -> float:
        return evaluate(sae, held_out, batch_size=args.batch_size, device=device).mse

    start = time.perf_counter()
    evaluate(frank, fit, batch_size=args.batch_size, device=device)
    unit = time.perf_counter() - start

    rows = [
        {
            "method": "none",
            "lr": None,
            "tokens": 0,
            "seconds": 0.0,
            "train_mse": report.steps[-1].mse_before,
            "held_out_mse": held_out_mse(frank),
        }
    ]
    exact = refit_exact(frank, fit, **common)
    rows.append(
        {
            "method": "exact",
            "lr": None,
            "tokens": exact.n_tokens,
            "seconds": exact.seconds,
            "train_mse": exact.after.mse,
            "held_out_mse": held_out_mse(exact.sae),
        }
    )
    budget = args.passes * len(fit)
    for lr in args.lrs:
        same_time = refit_sgd(frank, fit, lr=lr, tokens=budget, max_seconds=exact.seconds, **common)
        converged = refit_sgd(frank, fit, lr=lr, tokens=budget, **common)
        for label, result in (("adam, exact's time", same_time), ("adam, converged", converged)):
            rows.append(
                {
                    "method": label,
                    "lr": lr,
                    "tokens": result.n_tokens,
                    "seconds": result.seconds,
                    "train_mse": result.after.mse,
                    "held_out_mse": held_out_mse(result.sae),
                }
            )

    table = pd.DataFrame(rows)
    table["time / eval pass"] = table["seconds"] / unit
    table["time / exact"] = table["seconds"] / exact.seconds
    table["train_mse / exact"] = table["train_mse"] / exact.after.mse
    table["held_out / exact"] = table["held_out_mse"] / rows[1]["held_out_mse"]
    print(f"one evaluation pass over the fit tokens: {unit:.3f} s; exact solve by {exact.method}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
