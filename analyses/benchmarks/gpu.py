"""GPU benchmark: every device path of saegeo against a naive GPU baseline, in one run.

Sized to finish in a few minutes on one H100/H200. Each row of the final table is a time
ratio measured in this run (naive baseline / saegeo, so > 1 means saegeo is faster) next to
the absolute times and, where it applies, the result's agreement with the baseline:

- ceilings: float32 and bfloat16 matrix products (8192³) and a device-to-device copy, the
  rates every other figure can be read against;
- matching pursuit, 16384 tokens, d_in 768, width 16384, 64 iterations, with and without
  early stops (``auto`` takes the Gram route with the fused kernels; the Gram matrix is built
  inside the timed call), against the naive loop that recomputes every correlation of every
  row at every iteration (SAELens's algorithm). Supports are compared with the naive loop on
  the rows where its float32 and float64 runs agree;
- decoder cosine, 49152 x 98304 features, d 768, float32 and bfloat16, against a plain
  matrix product of the same shape into a preallocated output (the floor of any method that
  forms the product) and a naive product + row max; decoders are on the GPU already;
- training TopK and BatchTopK of width 16384 on d 768: bfloat16 products against float32,
  tokens/s and the held-out FVU each reaches from the same seed and data; and one TopK step
  alone (batches already on the device), which separates the step from data movement;
- the exact decoder refit on 400k tokens at width 16384 against solving the normal
  equations from dense codes.

Also printed: the fused Gram iteration's two kernels alone at several warp counts, and how
often one pursuit and one training step wait for the GPU.
``--profile FILE`` writes torch.profiler tables of one pursuit and of training steps.

    python analyses/benchmarks/gpu.py [--json out.json] [--profile profile.txt]
    python analyses/benchmarks/gpu.py --quick --device cpu     # a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import saegeo as sg
from saegeo.core import gram_route, gram_update
from saegeo.core.gram_route import BLOCK
from saegeo.core.pursuit import matching_pursuit
from saegeo.geometry import similarity
from saegeo.geometry.similarity import decoder_cosine
from saegeo.runtime.devices import host_syncs
from saegeo.stitch.refit import refit_exact
from saegeo.training.losses import batch_topk_activations
from saegeo.training.sparse_ops import select_batch_topk
from saegeo.training.trainer import TrainConfig, train_sae

FULL = dict(
    pursuit=(16384, 768, 16384, 64),
    cosine=(49152, 98304, 768),
    train=(768, 16384, 1_048_576),
    refit=400_000,
)
# A smoke test of the script itself, small enough for a CPU (--quick --device cpu).
QUICK = dict(
    pursuit=(512, 128, 1024, 16),
    cosine=(1024, 2048, 128),
    train=(128, 1024, 40_960),
    refit=20_000,
)
DEVICE = "cuda"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: bool = True) -> tuple[float, Any]:
    """Median seconds of ``repeats`` synchronised calls (after one warm-up call), and the last
    result."""
    if warmup:
        fn()
        synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ceilings() -> dict[str, float]:
    """TFLOP/s of 8192³ float32 and bfloat16 products; GB/s of a 4 GiB copy (read + write)."""
    out = {}
    n = 8192 if DEVICE == "cuda" else 1024
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=DEVICE).to(dtype) for _ in range(2))
        seconds, _ = timed(lambda a=a, b=b: a @ b, repeats=10)
        out[f"gemm_{name}_tflops"] = 2 * n**3 / seconds / 1e12
    src = torch.randn(2**30 if DEVICE == "cuda" else 2**24, device=DEVICE)
    dst = torch.empty_like(src)
    seconds, _ = timed(lambda: dst.copy_(src), repeats=10)
    out["copy_gb_per_s"] = 2 * src.numel() * 4 / seconds / 1e9
    return out


def naive_pursuit(
    x_BD: torch.Tensor, W_FD: torch.Tensor, iterations: int, rules: dict
) -> torch.Tensor:
    """SAELens's loop: every correlation of every row recomputed at every iteration."""
    batch = x_BD.shape[0]
    residual = x_BD.clone()
    acts = torch.zeros(batch, W_FD.shape[0], dtype=x_BD.dtype, device=x_BD.device)
    done = torch.zeros(batch, dtype=torch.bool, device=x_BD.device)
    rows = torch.arange(batch, device=x_BD.device)
    for _ in range(iterations):
        idx = (residual @ W_FD.T).relu().max(dim=1).indices
        atom = W_FD[idx]
        coef = (residual * atom).sum(-1).relu() * ~done
        prior = acts[rows, idx]
        acts[rows, idx] = prior + coef
        residual -= coef[:, None] * atom
        finished = coef == 0
        if rules["stop_on_duplicate_support"]:
            finished |= prior != 0
        if rules["residual_threshold"] > 0:
            finished |= residual.norm(dim=-1) < rules["residual_threshold"]
        done |= finished
    return acts


def pursuit_inputs(batch: int, d_in: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random unit-norm dictionary and rows that are sums of 1..64 of its atoms plus noise."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    W_FD = torch.randn(width, d_in, device=DEVICE, generator=g)
    W_FD /= W_FD.norm(dim=1, keepdim=True)
    atoms = torch.randint(0, width, (batch, 64), device=DEVICE, generator=g)
    used = torch.arange(64, device=DEVICE) < torch.randint(
        1, 65, (batch, 1), device=DEVICE, generator=g
    )
    weights = (0.5 + torch.rand(batch, 64, device=DEVICE, generator=g)) * used
    x_BD = torch.nn.functional.embedding_bag(atoms, W_FD, mode="sum", per_sample_weights=weights)
    return x_BD + 0.02 * torch.randn(batch, d_in, device=DEVICE, generator=g), W_FD


def bench_pursuit(batch: int, d_in: int, width: int, iterations: int) -> list[dict[str, Any]]:
    x_BD, W_FD = pursuit_inputs(batch, d_in, width)
    rows = []
    settings = {
        "static": dict(residual_threshold=0.0, stop_on_duplicate_support=False),
        "dynamic": dict(residual_threshold=0.5, stop_on_duplicate_support=True),
    }
    for name, rules in settings.items():
        naive_s, naive32 = timed(lambda rules=rules: naive_pursuit(x_BD, W_FD, iterations, rules))
        naive64 = naive_pursuit(x_BD.double(), W_FD.double(), iterations, rules)
        agree = ((naive32 != 0) == (naive64 != 0)).all(dim=1)
        for method in ("auto", "direct"):

            def run(method=method, rules=rules):
                return matching_pursuit(
                    x_BD, W_FD, max_iterations=iterations, method=method, **rules
                )

            seconds, ours = timed(run)
            same = ((ours != 0) == (naive32 != 0)).all(dim=1)
            rows.append(
                {
                    "path": f"matching pursuit {name}, {method}",
                    "size": f"{batch} x {width}, d {d_in}, {iterations} it",
                    "saegeo_s": seconds,
                    "baseline": "naive loop",
                    "baseline_s": naive_s,
                    "agreement": (
                        f"{int((agree & ~same).sum())} of {int(agree.sum())} rows differ where "
                        f"naive f32/f64 agree ({int((~agree).sum())} rows they don't)"
                    ),
                }
            )
    return rows


def bench_cosine(n_small: int, n_large: int, d_in: int) -> list[dict[str, Any]]:
    g = torch.Generator(device=DEVICE).manual_seed(1)
    small_SD = torch.randn(n_small, d_in, device=DEVICE, generator=g)
    large_LD = torch.randn(n_large, d_in, device=DEVICE, generator=g)
    rows = []
    reference = None
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        a, b = similarity.unit_rows(large_LD).to(dtype), similarity.unit_rows(small_SD).to(dtype)
        out = torch.empty(n_large, n_small, dtype=dtype, device=DEVICE)
        gemm_s, _ = timed(lambda a=a, b=b, out=out: torch.mm(a, b.T, out=out))
        del out
        naive_s, _ = timed(lambda a=a, b=b: (a @ b.T).max(dim=1))
        seconds, match = timed(
            lambda dtype=dtype: decoder_cosine(
                small_SD, large_LD, device=DEVICE, dtype=dtype, progress=False
            )
        )
        if reference is None:
            reference = match
            agreement = "reference"
        else:
            same = match.indices[:, 0] == reference.indices[:, 0]
            diff = (match.values - reference.values).abs().max().item()
            agreement = f"{float(same.float().mean()):.4f} same index as f32; max |Δ| {diff:.1e}"
        size = f"{n_small} x {n_large}, d {d_in}"
        rows.append(
            {
                "path": f"decoder cosine {name}",
                "size": size,
                "saegeo_s": seconds,
                "baseline": "plain GEMM",
                "baseline_s": gemm_s,
                "agreement": agreement,
            }
        )
        rows.append(
            {
                "path": f"decoder cosine {name}",
                "size": size,
                "saegeo_s": seconds,
                "baseline": "naive GEMM + max",
                "baseline_s": naive_s,
                "agreement": "",
            }
        )
    small_tiles = similarity.BLOCK_ELEMENTS  # the CPU's tile size
    seconds, _ = timed(
        lambda: decoder_cosine(
            small_SD,
            large_LD,
            device=DEVICE,
            dtype=torch.bfloat16,
            block_elements=small_tiles,
            progress=False,
        )
    )
    rows.append(
        {
            "path": "decoder cosine bf16, CPU-sized tiles",
            "size": size,
            "saegeo_s": seconds,
            "baseline": "plain GEMM",
            "baseline_s": rows[-2]["baseline_s"],
            "agreement": "",
        }
    )
    return rows


def training_data(d_in: int, tokens: int, features: int = 8192, k: int = 24) -> torch.Tensor:
    """Tokens [N, d_in] on the CPU: sums of ``k`` of ``features`` directions with Zipf-like
    frequencies and random magnitudes, plus noise (as a store hands them to the trainer)."""
    g = torch.Generator(device=DEVICE).manual_seed(2)
    dirs = torch.randn(features, d_in, device=DEVICE, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    probs = 1.0 / torch.arange(1, features + 1, device=DEVICE).float() ** 0.8
    chunks = []
    for start in range(0, tokens, 65536):
        n = min(65536, tokens - start)
        idx = torch.multinomial(probs, n * k, replacement=True, generator=g).view(n, k)
        mags = torch.rand(n, k, device=DEVICE, generator=g) * 2
        x = torch.nn.functional.embedding_bag(idx, dirs, mode="sum", per_sample_weights=mags)
        chunks.append((x + 0.05 * torch.randn(n, d_in, device=DEVICE, generator=g)).cpu())
    return torch.cat(chunks)


def bench_training(d_in: int, width: int, tokens: int) -> tuple[list[dict[str, Any]], sg.SAE]:
    x = training_data(d_in, tokens + 16384)
    rows = []
    trained = None

    train_sae(x, train_config("topk", width, "float32", 4096 * 4))  # CUDA and allocator warm-up
    for arch in ("topk", "batchtopk"):
        reports = {}
        for dtype in ("float32", "bfloat16"):
            sae, reports[dtype] = train_sae(x, train_config(arch, width, dtype, tokens))
            if arch == "topk" and dtype == "float32":
                trained = sae
        f32, bf16 = reports["float32"], reports["bfloat16"]
        assert f32.metrics is not None and bf16.metrics is not None
        rows.append(
            {
                "path": f"training {arch}, bf16 products",
                "size": f"width {width}, d {d_in}, {tokens} tokens",
                "saegeo_s": bf16.seconds,
                "baseline": "float32 products",
                "baseline_s": f32.seconds,
                "agreement": (
                    f"tok/s {f32.tokens_per_second:,.0f} -> {bf16.tokens_per_second:,.0f}; "
                    f"FVU {f32.metrics.fvu:.4f} -> {bf16.metrics.fvu:.4f} "
                    f"({(bf16.metrics.fvu - f32.metrics.fvu) / f32.metrics.fvu:+.2%})"
                ),
            }
        )
    step_s = {dtype: training_steps(d_in, width, dtype)(20) for dtype in ("float32", "bfloat16")}
    rows.append(
        {
            "path": "training step alone, topk bf16",
            "size": f"width {width}, d {d_in}, batch 4096",
            "saegeo_s": step_s["bfloat16"],
            "baseline": "float32 products",
            "baseline_s": step_s["float32"],
            "agreement": "batches already on the device; no set-up, bookkeeping or export",
        }
    )
    pre_BF = torch.randn(4096, width, device=DEVICE).to(torch.bfloat16)
    choice_s, _ = timed(lambda: select_batch_topk(pre_BF, 32))
    dense_s, _ = timed(lambda: batch_topk_activations(pre_BF, 32))
    rows.append(
        {
            "path": "BatchTopK choice of latents",
            "size": f"batch 4096, width {width}, k 32, bf16",
            "saegeo_s": choice_s,
            "baseline": "dense flat top-k",
            "baseline_s": dense_s,
            "agreement": "",
        }
    )
    assert trained is not None
    return rows, trained


def naive_refit(sae: sg.SAE, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder and bias from dense codes [N, F] on the GPU: the normal equations of
    ``[codes, 1] @ [W; b] ≈ x``, solved by Cholesky."""
    codes_NF = sae.encode(x_ND)
    design = torch.cat([codes_NF, torch.ones(len(codes_NF), 1, device=DEVICE)], dim=1)
    del codes_NF
    gram = design.T @ design
    gram.diagonal().add_(1e-6 * gram.diagonal().mean())
    solution = torch.cholesky_solve(design.T @ x_ND, torch.linalg.cholesky(gram))
    return solution[:-1], solution[-1]


def bench_refit(sae: sg.SAE, tokens: int, d_in: int) -> list[dict[str, Any]]:
    x = training_data(d_in, tokens).to(DEVICE)
    sae = sae.to(DEVICE)
    seconds, refit = timed(lambda: refit_exact(sae, x, device=DEVICE, progress=False), repeats=2)
    naive_s, (W_FD, b_D) = timed(lambda: naive_refit(sae, x), repeats=1)
    with torch.no_grad():
        naive_mse = ((sae.encode(x) @ W_FD + b_D - x) ** 2).sum(-1).mean().item()
    return [
        {
            "path": "exact refit",
            "size": f"{tokens} tokens, width {sae.width}",
            "saegeo_s": seconds,
            "baseline": "dense normal equations",
            "baseline_s": naive_s,
            "agreement": f"MSE {refit.after.mse:.5f} vs {naive_mse:.5f}",
        }
    ]


def fused_kernels(batch: int, d_in: int, width: int) -> list[str]:
    """The fused Gram iteration's two kernels alone, float32, at several warp counts (the first
    is the shipped one): the update's GB/s (3 passes of [batch, width]) and the choice and
    update of every row's atom (select_apply) from correlations of random unit atoms."""
    g = torch.Generator(device=DEVICE).manual_seed(3)
    padded = -(-width // BLOCK) * BLOCK
    W_dec = torch.randn(width, d_in, device=DEVICE, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    residual = torch.randn(batch, d_in, device=DEVICE, generator=g)
    corr = torch.full((batch, padded), -torch.inf, device=DEVICE)
    corr[:, :width] = residual @ W_dec.T
    block_max = corr.view(batch, -1, BLOCK).amax(dim=-1)
    drift = gram_route.drift_bound(residual.norm(dim=1), torch.float32)
    gram = torch.randn(width, padded, device=DEVICE, generator=g)
    acts = torch.zeros(batch, width, device=DEVICE)
    rows = torch.arange(batch, device=DEVICE)
    done = torch.zeros(batch, dtype=torch.bool, device=DEVICE)
    out = (
        torch.zeros(batch, dtype=torch.long, device=DEVICE),
        *torch.zeros(3, batch, device=DEVICE),
    )
    shipped = gram_update.NUM_WARPS
    lines = []
    for warps in (shipped, 2, 8):
        gram_update.NUM_WARPS = warps
        select_s, _ = timed(
            lambda: gram_update.select_apply(
                corr, block_max, drift, residual, W_dec, acts, rows, done, out
            ),
            repeats=10,
        )
        update_s, _ = timed(
            lambda: gram_update.update(corr, gram, out[0], out[1], done, block_max), repeats=10
        )
        lines.append(
            f"fused kernels warps={warps}: select_apply {select_s * 1e3:.3f} ms, update "
            f"{update_s * 1e3:.3f} ms = {3 * batch * padded * 4 / update_s / 1e9:.0f} GB/s"
        )
    gram_update.NUM_WARPS = shipped
    return lines


def sync_counts(sizes: dict[str, Any]) -> list[str]:
    """How often one static pursuit (``auto``) and one TopK training step wait for the GPU:
    torch's sync debug mode warns at every call that synchronises with the device."""
    tokens, d_in, width, iterations = sizes["pursuit"]
    x_BD, W_FD = pursuit_inputs(tokens, d_in, width)
    rules = dict(residual_threshold=0.0, stop_on_duplicate_support=False)
    lines = [
        "host synchronisations, static pursuit: "
        + str(host_syncs(lambda: matching_pursuit(x_BD, W_FD, max_iterations=iterations, **rules)))
    ]
    train_d_in, train_width, _ = sizes["train"]
    for dtype in ("float32", "bfloat16"):
        steps = training_steps(train_d_in, train_width, dtype)
        lines.append(
            f"host synchronisations, one TopK training step ({dtype}, with the loss read "
            f"the trainer makes): {host_syncs(lambda steps=steps: steps(1))}"
        )
    return lines


def train_config(arch: str, width: int, dtype: str, tokens: int) -> TrainConfig:
    """The benchmark's training settings: k 32, batches of 4096, 16384 held-out tokens."""
    return TrainConfig(
        arch=arch,  # type: ignore[arg-type]
        width=width,
        k=32,
        tokens=tokens,
        batch_size=4096,
        eval_tokens=16384,
        matmul_dtype=dtype,  # type: ignore[arg-type]
        device=DEVICE,
        progress=False,
    )


def training_steps(d_in: int, width: int, dtype: str) -> Callable[[int], float]:
    """A function running ``n`` TopK training steps (forward, backward, Adam, decoder norms)
    on batches already on the device, as the trainer runs them, and returning seconds per
    step: the step alone, without data movement, set-up or export."""
    from saegeo.training.step import (
        forward_step,
        init_state,
        remove_parallel_grad_,
        unit_norm_rows_,
    )

    config = train_config("topk", width, dtype, 4096 * 4)
    x = training_data(d_in, 4096 * 4).to(DEVICE)
    batches = x.split(4096)
    state = init_state(config, width, x[:4096], torch.device(DEVICE))
    optimizer = torch.optim.Adam(state.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(0)
    matmul_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32

    def run(n: int) -> float:
        synchronize()
        start = time.perf_counter()
        for step in range(n):
            out = forward_step(
                config, state, batches[step % 4], state.coefficient, generator, 0.01, matmul_dtype
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            remove_parallel_grad_(state.W_dec)
            optimizer.step()
            unit_norm_rows_(state.W_dec)
            out.loss.item()
        synchronize()
        return (time.perf_counter() - start) / n

    run(3)
    return run


def profile(sizes: dict[str, Any]) -> str:
    """The kernels that take the time in one static pursuit and in TopK training steps (the
    steps alone, batches on the device), with each step's time in float32 and bfloat16."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, d_in, width, iterations = sizes["pursuit"]
    x_BD, W_FD = pursuit_inputs(batch, d_in, width)
    static = dict(residual_threshold=0.0, stop_on_duplicate_support=False)
    tables = []
    runs: dict[str, Callable[[], Any]] = {
        "pursuit": lambda: matching_pursuit(x_BD, W_FD, max_iterations=iterations, **static),
    }
    d_in, width, _ = sizes["train"]
    for dtype in ("float32", "bfloat16"):
        steps = training_steps(d_in, width, dtype)
        tables.append(f"training step alone, topk {dtype}: {steps(20) * 1e3:.2f} ms")
        runs[f"8 training steps, topk {dtype}"] = lambda steps=steps: steps(8)
    activities = [ProfilerActivity.CPU]
    if DEVICE == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sort_by = "cuda_time_total" if DEVICE == "cuda" else "cpu_time_total"
    for name, run in runs.items():
        run()
        synchronize()
        with torch_profile(activities=activities) as prof:
            run()
            synchronize()
        table = prof.key_averages().table(sort_by=sort_by, row_limit=25)
        tables.append(f"=== {name}\n{table}")
    return "\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --quick")
    parser.add_argument("--profile", help="also write a kernel profile to this file")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        parser.error("needs CUDA (or --device cpu --quick for a smoke test)")
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        **{k: round(v, 1) for k, v in ceilings().items()},
    }
    print(json.dumps(info), flush=True)
    rows = []
    for name, bench in (
        ("pursuit", lambda: bench_pursuit(*sizes["pursuit"])),
        ("cosine", lambda: bench_cosine(*sizes["cosine"])),
    ):
        rows += bench()
        print(f"{name} done at {time.perf_counter() - start:.0f} s", flush=True)
    d_in, width, tokens = sizes["train"]
    train_rows, sae = bench_training(d_in, width, tokens)
    rows += train_rows
    print(f"training done at {time.perf_counter() - start:.0f} s", flush=True)
    rows += bench_refit(sae, sizes["refit"], d_in)
    sweep = fused_kernels(*sizes["pursuit"][:3]) + sync_counts(sizes) if DEVICE == "cuda" else []
    info["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n{'path':<34} {'size':<34} {'saegeo':>9} {'baseline':>24} {'base':>9} {'ratio':>6}")
    for row in rows:
        row["ratio"] = row["baseline_s"] / row["saegeo_s"]
        print(
            f"{row['path']:<34} {row['size']:<34} {row['saegeo_s'] * 1e3:>7.1f}ms "
            f"{row['baseline']:>24} {row['baseline_s'] * 1e3:>7.1f}ms {row['ratio']:>5.2f}x"
        )
        if row["agreement"]:
            print(f"{'':<34} {row['agreement']}")
    print("\n".join(sweep))
    print(json.dumps(info))
    if args.profile:
        with open(args.profile, "w") as f:
            f.write(profile(sizes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
