"""Throughput of saegeo's heavy steps on this machine, beside what its hardware can do.

Each figure is a function that returns a dict of named numbers; ``main`` runs the figures
asked for, prints them and, with ``--json``, writes them to a file.

- ``harvest``: tokens/s of ``saegeo.lm.harvest`` on the packaged SmolLM2-135M at a middle layer,
  uncompiled and compiled (``compile=True``; compiling happens in a warm-up harvest, timed on
  its own), the FLOP rate that implies (2 x parameters of blocks 0..layer per token; the
  embedding is a lookup and the blocks after the hook never run), and this machine's own
  matmul throughput (float32, and the dtype the model computes in) timed in the same run.
  Uncompiled and compiled runs alternate, with a matmul timing after each pair, so that load
  from other jobs falls on all three alike; each rate is given as the best and the median of
  ``repeats`` runs (the matmul rate is a best, so ``*_flops_over_matmul`` uses best rates).
  The first tokens of a compiled and an uncompiled run are compared with a float32 forward
  (median relative error per token). Runs are 50k tokens by default, so that the fixed cost of
  a harvest call (reading the text source, writing ``meta.json`` and the tokenizer) weighs
  little, as in the long harvests that compile by default (100k tokens or more).

- ``train``: training tokens/s of ``saegeo.training.trainer`` per architecture and width at
  d_in=576 on
  toy activations, the dense-equivalent FLOP rate (12·d_in·width per token: forward and
  backward of a dense encoder and decoder), and this machine's float32 matmul throughput timed
  in the same run.

- ``batch_topk_selection``: BatchTopK's choice of latents from a batch's pre-activations
  against its dense definition (a flat top-k over all of them), per width and dtype,
  alternating in one run.

- ``train_precision``: training tokens/s with ``TrainConfig.matmul_dtype="bfloat16"`` against
  ``"float32"`` per architecture and width (runs alternating, in the same process), and the
  held-out FVU each precision reaches on the same data and seed.

Usage::

    python analyses/benchmarks/throughput.py [--figures harvest] [--tokens 50000]
        [--layer 15] [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saegeo.acts.store import ActivationStore
from saegeo.lm.harvest import harvest
from saegeo.lm.models import DEFAULT_MODEL, decoder_blocks, load_model


def matmul_gflops(dtype: torch.dtype = torch.float32, *, n: int = 2048, seconds: float = 2.0):
    """Best GFLOP/s of an [n, n] @ [n, n] matmul in ``dtype`` over about ``seconds``."""
    a_NN = torch.randn(n, n).to(dtype)
    b_NN = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a_NN @ b_NN
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a_NN @ b_NN
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def harvest_throughput(
    *,
    model: str = DEFAULT_MODEL,
    layer: int | None = None,
    tokens: int = 50_000,
    context: int = 128,
    batch_size: int = 16,
    model_dtype: str = "auto",
    repeats: int = 3,
) -> dict[str, Any]:
    """Harvest tokens/s, best and median of ``repeats``, uncompiled and compiled, vs matmul.

    ``*_flops_over_matmul`` is the model's FLOP rate over this machine's matmul rate in the
    dtype the model computes in.
    """
    started = time.perf_counter()
    lm = load_model(model, device="cpu", model_dtype=model_dtype)
    load_s = time.perf_counter() - started
    _, blocks = decoder_blocks(lm.model)
    layer = len(blocks) // 2 if layer is None else layer
    block_params = sum(p.numel() for block in blocks[: layer + 1] for p in block.parameters())
    compute_dtype = next(lm.model.parameters()).dtype

    gflops = {dt: matmul_gflops(dt) for dt in {torch.float32, compute_dtype}}
    rates: dict[bool, list[float]] = {False: [], True: []}
    compile_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        options = dict(
            layer=layer,
            context=context,
            batch_size=batch_size,
            progress=False,
            tokenizer=lm.tokenizer,
        )
        for compiled in (False, True):
            start = time.perf_counter()
            harvest(
                lm.model,
                None,
                Path(tmp, f"warmup{compiled}"),
                max_tokens=batch_size * (context - 2),
                compile=compiled,
                **options,
            )
            if compiled:
                compile_s = time.perf_counter() - start
        for repeat in range(repeats):
            for compiled in (False, True):
                start = time.perf_counter()
                store = harvest(
                    lm.model,
                    None,
                    Path(tmp, f"run{repeat}{compiled}"),
                    max_tokens=tokens,
                    compile=compiled,
                    **options,
                )
                rates[compiled].append(store.n_tokens / (time.perf_counter() - start))
            for dt in gflops:
                gflops[dt] = max(gflops[dt], matmul_gflops(dt, seconds=0.5))
        # Last, as it casts the model: the first tokens again through a float32 forward.
        n_check = min(tokens, 4 * batch_size * (context - 2))
        reference = harvest(
            lm.model,
            None,
            Path(tmp, "float32"),
            max_tokens=n_check,
            compile=False,
            model_dtype="float32",
            dtype="float32",
            **options,
        ).read(n_check)
        acts = {
            compiled: ActivationStore.open(Path(tmp, f"run0{compiled}")).read(n_check).float()
            for compiled in (False, True)
        }
    best = {compiled: max(runs) for compiled, runs in rates.items()}
    median = {compiled: statistics.median(runs) for compiled, runs in rates.items()}

    def median_relative_error(acts_BD: torch.Tensor, reference_BD: torch.Tensor) -> float:
        norms_B = reference_BD.norm(dim=1).clamp(min=1e-12)
        return round(float(((acts_BD - reference_BD).norm(dim=1) / norms_B).median()), 4)

    def over_matmul(tokens_per_s: float) -> float:
        return round(2 * block_params * tokens_per_s / 1e9 / gflops[compute_dtype], 3)

    return {
        "model": lm.name,
        "layer": layer,
        "n_layers": len(blocks),
        "context": context,
        "batch_size": batch_size,
        "model_dtype": str(compute_dtype).removeprefix("torch."),
        "tokens": tokens,
        "block_params_up_to_layer": block_params,
        "matmul_float32_gflop_per_s": round(gflops[torch.float32], 1),
        "matmul_model_dtype_gflop_per_s": round(gflops[compute_dtype], 1),
        "repeats": repeats,
        "tokens_per_s_uncompiled": round(best[False]),
        "tokens_per_s_compiled": round(best[True]),
        "tokens_per_s_uncompiled_median": round(median[False]),
        "tokens_per_s_compiled_median": round(median[True]),
        "compiled_over_uncompiled": round(best[True] / best[False], 3),
        "uncompiled_flops_over_matmul": over_matmul(best[False]),
        "compiled_flops_over_matmul": over_matmul(best[True]),
        "compile_s_with_first_batch": round(compile_s, 1),
        "tokens_compared_with_float32": n_check,
        "compiled_vs_uncompiled_median_rel_diff": median_relative_error(acts[True], acts[False]),
        "uncompiled_vs_float32_median_rel_err": median_relative_error(acts[False], reference),
        "compiled_vs_float32_median_rel_err": median_relative_error(acts[True], reference),
        "model_load_s": round(load_s, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def train_throughput(
    *,
    d_in: int = 576,
    widths: tuple[int, ...] = (576, 4608),
    archs: tuple[str, ...] = (
        "topk",
        "batchtopk",
        "relu",
        "matryoshka_batchtopk",
        "matryoshka_relu",
        "matching_pursuit",
    ),
    k: int = 32,
    batch_size: int = 4096,
    steps: int = 4,
    pursuit_steps: int = 2,
) -> dict[str, Any]:
    """Training tokens/s per architecture and width, against this machine's matmul rate.

    Activations come from a toy hierarchy (5120 features, mean L0 about 36) in ``d_in``
    dimensions; each run trains ``steps`` batches (``pursuit_steps`` for matching pursuit),
    timed without initialisation or evaluation.
    """
    from saegeo.training.toy import ToyConfig, make_toy_model
    from saegeo.training.trainer import TrainConfig, train_sae

    toy = make_toy_model(
        ToyConfig(n_roots=1024, branching=4, depth=1, d=d_in, root_prob=0.02, child_prob=0.2)
    )
    store = toy.to_store(batch_size * (steps + 1))
    gflops_before = matmul_gflops(torch.float32)
    results: dict[str, Any] = {"d_in": d_in, "k": k, "batch_size": batch_size}
    for arch in archs:
        for width in widths:
            n_steps = pursuit_steps if arch == "matching_pursuit" else steps
            config = TrainConfig(
                arch=arch,  # type: ignore[arg-type]
                width=width,
                k=k,
                tokens=n_steps * batch_size,
                batch_size=batch_size,
                eval_tokens=0,
                matmul_dtype="float32",
                device="cpu",
                progress=False,
            )
            _, report = train_sae(store, config)
            results[f"{arch}_{width}_tokens_per_s"] = round(report.tokens_per_second)
            dense_gflops = 12 * d_in * width * report.tokens_per_second / 1e9
            results[f"{arch}_{width}_dense_equiv_gflop_per_s"] = round(dense_gflops, 1)
    gflops = max(gflops_before, matmul_gflops(torch.float32))
    results["matmul_float32_gflop_per_s"] = round(gflops, 1)
    results["torch_threads"] = torch.get_num_threads()
    results["load_average_1min"] = round(os.getloadavg()[0], 2)
    return results


def train_precision(
    *,
    d_in: int = 576,
    widths: tuple[int, ...] = (576, 4608),
    archs: tuple[str, ...] = ("topk", "batchtopk", "relu"),
    k: int = 32,
    batch_size: int = 4096,
    steps: int = 12,
    repeats: int = 2,
    quality_tokens: int = 1_500_000,
) -> dict[str, Any]:
    """Training tokens/s with bfloat16 products against float32, and the loss each reaches.

    For every architecture and width, runs with ``matmul_dtype="float32"`` and
    ``"bfloat16"`` alternate (``repeats`` of each, ``steps`` batches per run; the best rate of
    each is kept) so that load from other jobs falls on both alike. Then one longer run of each
    (``quality_tokens`` at the narrowest width, same seed and data) gives the held-out FVU each
    reaches; ``*_fvu_rel_diff`` is bf16's FVU minus float32's, relative to float32's.
    """
    from saegeo.training.toy import ToyConfig, make_toy_model
    from saegeo.training.trainer import TrainConfig, train_sae

    toy = make_toy_model(
        ToyConfig(n_roots=1024, branching=4, depth=1, d=d_in, root_prob=0.02, child_prob=0.2)
    )
    store = toy.to_store(max(batch_size * (steps + 1), 200_000))
    results: dict[str, Any] = {"d_in": d_in, "k": k, "batch_size": batch_size}

    def config(arch: str, width: int, dtype: str, tokens: int, eval_tokens: int) -> TrainConfig:
        return TrainConfig(
            arch=arch,  # type: ignore[arg-type]
            width=width,
            k=k,
            tokens=tokens,
            batch_size=batch_size,
            eval_tokens=eval_tokens,
            matmul_dtype=dtype,  # type: ignore[arg-type]
            device="cpu",
            progress=False,
        )

    for arch in archs:
        for width in widths:
            best = {"float32": 0.0, "bfloat16": 0.0}
            for _ in range(repeats):
                for dtype in best:
                    _, report = train_sae(store, config(arch, width, dtype, steps * batch_size, 0))
                    best[dtype] = max(best[dtype], report.tokens_per_second)
            for dtype, rate in best.items():
                results[f"{arch}_{width}_{dtype}_tokens_per_s"] = round(rate)
            results[f"{arch}_{width}_bf16_speedup"] = round(best["bfloat16"] / best["float32"], 2)
        fvu = {}
        for dtype in ("float32", "bfloat16"):
            _, report = train_sae(store, config(arch, widths[0], dtype, quality_tokens, 16_384))
            assert report.metrics is not None
            fvu[dtype] = report.metrics.fvu
            results[f"{arch}_{widths[0]}_{dtype}_fvu"] = round(report.metrics.fvu, 4)
        results[f"{arch}_{widths[0]}_fvu_rel_diff"] = round(
            (fvu["bfloat16"] - fvu["float32"]) / fvu["float32"], 4
        )
    results["matmul_float32_gflop_per_s"] = round(matmul_gflops(torch.float32), 1)
    results["matmul_bfloat16_gflop_per_s"] = round(matmul_gflops(torch.bfloat16), 1)
    results["load_average_1min"] = round(os.getloadavg()[0], 2)
    return results


def batch_topk_selection(
    *,
    widths: tuple[int, ...] = (576, 4608, 16384),
    k: int = 32,
    batch_size: int = 4096,
    repeats: int = 5,
) -> dict[str, Any]:
    """BatchTopK's choice of latents in a training step against the dense definition (a flat
    top-k over all B·F pre-activations, scattered into [B, F]), timed alternately in the same
    run; best of ``repeats``.

    Both keep the ``k·B`` largest positive entries; ``*_speedup`` is the dense definition's
    time over saegeo's. The pre-activations are Gaussian, in float32 and
    in bfloat16 (what training chooses from where bfloat16 products are fast).
    """
    from saegeo.training.losses import batch_topk_activations
    from saegeo.training.sparse_ops import select_batch_topk

    results: dict[str, Any] = {"k": k, "batch_size": batch_size}
    for width in widths:
        for dtype in (torch.float32, torch.bfloat16):
            pre_BF = torch.randn(batch_size, width).to(dtype)
            best = {"saegeo": math.inf, "dense": math.inf}
            for _ in range(repeats):
                for name, select in (
                    ("saegeo", select_batch_topk),
                    ("dense", batch_topk_activations),
                ):
                    start = time.perf_counter()
                    select(pre_BF, k)
                    best[name] = min(best[name], time.perf_counter() - start)
            tag = f"{width}_{str(dtype).removeprefix('torch.')}"
            results[f"{tag}_saegeo_ms"] = round(1000 * best["saegeo"], 2)
            results[f"{tag}_dense_ms"] = round(1000 * best["dense"], 2)
            results[f"{tag}_speedup"] = round(best["dense"] / best["saegeo"], 2)
    results["load_average_1min"] = round(os.getloadavg()[0], 2)
    return results


FIGURES: dict[str, Callable[..., dict[str, Any]]] = {
    "harvest": harvest_throughput,
    "train": train_throughput,
    "train_precision": train_precision,
    "batch_topk_selection": batch_topk_selection,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--figures", default=",".join(FIGURES), help=f"comma-separated, from {sorted(FIGURES)}"
    )
    parser.add_argument("--tokens", type=int, default=50_000, help="tokens per harvest run")
    parser.add_argument("--layer", type=int, default=None, help="hooked block (middle)")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts per forward")
    parser.add_argument("--repeats", type=int, default=3, help="harvest runs of each kind")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default torch's choice)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {}
    for name in args.figures.split(","):
        if name == "harvest":
            results[name] = harvest_throughput(
                layer=args.layer,
                tokens=args.tokens,
                batch_size=args.batch_size,
                repeats=args.repeats,
            )
        else:
            results[name] = FIGURES[name]()
        print(f"[{name}]")
        for key, value in results[name].items():
            print(f"  {key:40s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
