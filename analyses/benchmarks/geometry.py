"""Speed and memory of saegeo's geometry across widths, each against its naive path, in one run.

Figures (every ratio is measured in the same run, on the same data):

- ``cosine``: :func:`saegeo.decoder_cosine` (blocked, running top-1) vs the naive full cosine
  matrix then ``topk``, at 6144 × 24576 features, d_in = 768: time, peak RSS of a process
  running only that (a fresh subprocess each), and the throughput as a fraction of this
  machine's float32 matmul rate (an [4096, 768] @ [768, 8192] product, best of several, timed in
  the same process just before and after).
- ``gpt2``: peak RSS and throughput of the GPT-2-sized pair, 49152 × 98304 features, d_in = 768
  (``--full``; the default runs it scaled to 12288 × 24576). The target is < 4 GiB.
- ``mcs``: :func:`saegeo.geometry.masked_cosine` at N = 200k tokens, L0 ≈ 32, 6144 parents × 24576
  children, vs the dense torch products ``AᵀB`` and ``(A∘A)ᵀ 1[B]`` over token chunks. The dense
  path needs ~120 TFLOP, so a sample of chunks is timed and extrapolated to all tokens (said so
  in the output). Codes are synthetic: children fire with Zipf-like frequencies, each child has
  a parent that fires with it three times in four, and a random parent otherwise.
- ``delta``: :func:`saegeo.delta_mse` for the 1536 features of a ReLU SAE added to a 768-wide
  one (d_in = 768, 8192 tokens) vs building each hybrid with ``concat([small,
  large.select([j])])`` and evaluating it; a sample of the one-at-a-time runs is timed and
  extrapolated to 1536 features (said so in the output).

Usage::

    python analyses/benchmarks/geometry.py [--figures cosine gpt2 mcs delta] [--full]

The machine may be shared: figures are ratios within one run, and the matmul rate is re-timed
around each throughput measurement.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

D_IN = 768
GIB = 2**30


# --------------------------------------------------------------------------- helpers


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux's ``VmHWM`` starts afresh at exec; ``ru_maxrss`` would carry the parent's peak over.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_rate(seconds: float = 1.5) -> float:
    """Best float32 FLOP/s of [4096, 768] @ [768, 8192] (the shape class of the cosine tiles)."""
    a_MD, b_ND = torch.randn(4096, D_IN), torch.randn(8192, D_IN)
    out_MN = torch.empty(4096, 8192)
    torch.mm(a_MD, b_ND.T, out=out_MN)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a_MD, b_ND.T, out=out_MN)
        best = max(best, 2 * 4096 * 8192 * D_IN / (time.perf_counter() - start))
    return best


def run_worker(*args: str) -> dict[str, Any]:
    """Run one measurement in a fresh process (so that its peak RSS is its own)."""
    result = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def decoders(n_small: int, n_large: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_small, D_IN, generator=g), torch.randn(n_large, D_IN, generator=g)


def worker_cosine(method: str, n_small: int, n_large: int, repeats: int) -> dict[str, Any]:
    """Time and peak RSS of one cosine method; throughput against the matmul rate around it."""
    from saegeo.geometry.similarity import decoder_cosine, unit_rows

    W_small_SD, W_large_LD = decoders(n_small, n_large)
    base_rss = peak_rss_bytes()
    rate_before = matmul_rate()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "blocked":
            decoder_cosine(W_small_SD, W_large_LD, k=1, device="cpu", progress=False)
        else:
            cos_LS = unit_rows(W_large_LD) @ unit_rows(W_small_SD).T
            cos_LS.topk(1, dim=1)
            del cos_LS
        best = min(best, time.perf_counter() - start)
    rate_after = matmul_rate()
    flops = 2.0 * n_small * n_large * D_IN
    rate = (rate_before + rate_after) / 2
    return {
        "seconds": best,
        "peak_rss_gib": peak_rss_bytes() / GIB,
        "inputs_rss_gib": base_rss / GIB,
        "gflops": flops / best / 1e9,
        "matmul_gflops": rate / 1e9,
        "fraction_of_matmul": flops / best / rate,
    }


# --------------------------------------------------------------------------- figures


def figure_cosine() -> None:
    n_small, n_large = 6144, 24576
    print(f"decoder_cosine, {n_small} x {n_large} features, d_in={D_IN}, k=1 (best of 2):")
    blocked = run_worker("cosine", "blocked", str(n_small), str(n_large), "2")
    naive = run_worker("cosine", "naive", str(n_small), str(n_large), "2")
    for name, r in (("blocked", blocked), ("naive full matrix", naive)):
        print(
            f"  {name:18s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_gib']:.2f} GiB "
            f"(inputs and runtime {r['inputs_rss_gib']:.2f})  {r['gflops']:.1f} GFLOP/s = "
            f"{r['fraction_of_matmul']:.0%} of matmul ({r['matmul_gflops']:.1f} GFLOP/s)"
        )
    print(
        f"  blocked vs naive: {naive['seconds'] / blocked['seconds']:.2f}x the speed, "
        f"{(naive['peak_rss_gib'] - naive['inputs_rss_gib']):.2f} vs "
        f"{(blocked['peak_rss_gib'] - blocked['inputs_rss_gib']):.2f} GiB above the inputs"
    )


def figure_gpt2(full: bool) -> None:
    n_small, n_large = (49152, 98304) if full else (12288, 24576)
    label = "GPT-2-sized pair" if full else "GPT-2 pair scaled by 1/4 per axis (--full for all)"
    print(f"decoder_cosine, {label}: {n_small} x {n_large} features, d_in={D_IN}, k=1:")
    r = run_worker("cosine", "blocked", str(n_small), str(n_large), "1")
    verdict = "OK" if r["peak_rss_gib"] < 4 else "OVER"
    print(
        f"  {r['seconds']:.1f} s  peak RSS {r['peak_rss_gib']:.2f} GiB (< 4 GiB: {verdict}; "
        f"inputs {r['inputs_rss_gib']:.2f})  {r['gflops']:.1f} GFLOP/s = "
        f"{r['fraction_of_matmul']:.0%} of matmul ({r['matmul_gflops']:.1f} GFLOP/s)"
    )


def synthetic_codes(
    n_tokens: int, n_parents: int, n_children: int, l0: int, seed: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Parent [N, P] and child [N, C] codes with L0 ≈ ``l0`` and parent-child co-firing."""
    rng = np.random.default_rng(seed)
    parent_of = rng.integers(0, n_parents, n_children)
    freq = 1.0 / np.arange(1, n_children + 1) ** 0.8
    child_NK = rng.choice(n_children, size=(n_tokens, l0), p=freq / freq.sum())
    child_val_NK = rng.exponential(1.0, size=(n_tokens, l0)).astype(np.float32) + 0.1
    rows = np.repeat(np.arange(n_tokens), l0)
    child = sp.csr_matrix(
        (child_val_NK.ravel(), (rows, child_NK.ravel())), shape=(n_tokens, n_children)
    )
    parent_NK = np.where(
        rng.random((n_tokens, l0)) < 0.75,
        parent_of[child_NK],
        rng.integers(0, n_parents, (n_tokens, l0)),
    )
    parent_val_NK = child_val_NK * rng.uniform(0.5, 1.5, (n_tokens, l0)).astype(np.float32)
    parent = sp.csr_matrix(
        (parent_val_NK.ravel(), (rows, parent_NK.ravel())), shape=(n_tokens, n_parents)
    )
    parent.sum_duplicates()
    child.sum_duplicates()
    return parent, child


def dense_mcs_products_seconds(
    parent: sp.csr_matrix, child: sp.csr_matrix, *, chunk: int, n_chunks: int
) -> float:
    """Seconds for the dense torch products over ``n_chunks`` chunks of ``chunk`` tokens."""
    num_PC = torch.zeros(parent.shape[1], child.shape[1])
    den_PC = torch.zeros_like(num_PC)
    start = time.perf_counter()
    for i in range(n_chunks):
        rows = slice(i * chunk, (i + 1) * chunk)
        a_NP = torch.from_numpy(parent[rows].toarray())
        b_NC = torch.from_numpy(child[rows].toarray())
        num_PC.addmm_(a_NP.T, b_NC)
        den_PC.addmm_((a_NP * a_NP).T, (b_NC != 0).float())
    return time.perf_counter() - start


def figure_mcs() -> None:
    from saegeo.geometry.masked_cosine import masked_cosine

    n_tokens, n_parents, n_children = 200_000, 6144, 24576
    parent, child = synthetic_codes(n_tokens, n_parents, n_children, 32)
    print(
        f"masked_cosine, N={n_tokens} tokens, {n_parents} x {n_children} latents, "
        f"L0 {parent.nnz / n_tokens:.1f} / {child.nnz / n_tokens:.1f}:"
    )
    for options in ({}, {"min_score": 0.1, "top_k": 8}):
        start = time.perf_counter()
        result = masked_cosine(parent, child, progress=False, **options)
        seconds = time.perf_counter() - start
        name = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        print(f"  sparse ({name}): {seconds:.1f} s, {result.nnz} pairs kept")
        if not options:
            sparse_seconds = seconds
        del result
    chunk, n_chunks = 4096, 2
    sample = dense_mcs_products_seconds(parent, child, chunk=chunk, n_chunks=n_chunks)
    dense = sample * n_tokens / (chunk * n_chunks)
    print(
        f"  dense torch products: {sample:.1f} s for {chunk * n_chunks} tokens, "
        f"extrapolated to {n_tokens}: {dense:.0f} s"
    )
    print(f"  sparse (defaults) vs dense: {dense / sparse_seconds:.0f}x faster")


def relu_sae(W_dec_FD: torch.Tensor, bias: float, seed: int):  # noqa: ANN201
    """A ReLU SAE whose encoder is its unit decoder, firing above ``-bias``."""
    import saegeo as sg

    W_dec_FD = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    return sg.SAE(
        W_enc=W_dec_FD.T.contiguous(),
        b_enc=torch.full((W_dec_FD.shape[0],), bias),
        W_dec=W_dec_FD,
        b_dec=0.01 * torch.randn(D_IN, generator=g),
    )


def figure_delta() -> None:
    import saegeo as sg

    # The large SAE's directions are 1536 random ones; the small SAE's merge them in pairs.
    # Tokens are made of ~32 of the 1536 directions each, plus noise.
    g = torch.Generator().manual_seed(3)
    W_true_LD = torch.randn(1536, D_IN, generator=g)
    W_true_LD /= W_true_LD.norm(dim=1, keepdim=True)
    small = relu_sae(W_true_LD[0::2] + W_true_LD[1::2], -1.5, seed=1)
    large = relu_sae(W_true_LD, -1.5, seed=2)
    codes_NL = torch.rand(8192, large.width, generator=g) < 32 / large.width
    codes_NL = codes_NL * (3.0 + torch.rand(8192, large.width, generator=g) * 3.0)
    acts = codes_NL @ large.W_dec + 0.1 * torch.randn(8192, D_IN, generator=g)
    metrics = sg.evaluate(small, acts, device="cpu")
    print(
        f"delta_mse, {large.width} features added to a {small.width}-wide ReLU SAE, "
        f"d_in={D_IN}, {acts.shape[0]} tokens (small L0 {metrics.l0:.0f}):"
    )
    start = time.perf_counter()
    fast = sg.delta_mse(small, large, acts, device="cpu", progress=False)
    fast_seconds = time.perf_counter() - start
    print(f"  closed form, all {large.width} features: {fast_seconds:.2f} s")
    sample = [0, 100, 500, 900, 1300, 1535]
    base = sg.evaluate(small, acts, device="cpu").mse
    start = time.perf_counter()
    naive = []
    for j in sample:
        hybrid = sg.concat([small, large.select([j])])
        naive.append(sg.evaluate(hybrid, acts, device="cpu").mse - base)
    per_feature = (time.perf_counter() - start) / len(sample)
    extrapolated = per_feature * large.width
    error = float(np.max(np.abs(np.array(naive) - fast.to_numpy()[sample])))
    print(
        f"  one-at-a-time re-encoding: {per_feature:.2f} s per feature (timed on "
        f"{len(sample)}), extrapolated to {large.width}: {extrapolated:.0f} s"
    )
    print(
        f"  closed form vs one-at-a-time: {extrapolated / fast_seconds:.0f}x faster; "
        f"max |difference| on the sample {error:.1e} (MSE {base:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--figures",
        nargs="+",
        choices=["cosine", "gpt2", "mcs", "delta"],
        default=["cosine", "gpt2", "mcs", "delta"],
    )
    parser.add_argument("--full", action="store_true", help="the GPT-2-sized pair at full size")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _, method, n_small, n_large, repeats = args.worker
        print(json.dumps(worker_cosine(method, int(n_small), int(n_large), int(repeats))))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name in args.figures:
        if name == "cosine":
            figure_cosine()
        elif name == "gpt2":
            figure_gpt2(args.full)
        elif name == "mcs":
            figure_mcs()
        else:
            figure_delta()


if __name__ == "__main__":
    main()
