"""Time of saegeo's token-sum statistics on 1 rank vs 2 ranks of ``torch.distributed``, in one run.

Each figure is a workload timed inside every rank between two barriers (the slowest rank
counts), first on a process group of 1 rank, then of 2 ranks, on the same seeded SAEs and
tokens; the printout gives both times and their ratio. On the CPU each rank uses
``--threads`` threads (default 1), so 2 ranks use twice the cores of 1: the ratio is what
sharding the tokens buys, reductions and start-up of the collectives included.

Workloads (a jumprelu pair of ``--small`` and ``--large`` features, d_in ``--d-in``, ``--tokens``
tokens):

- ``evaluate``: :func:`saegeo.evaluate` of the large SAE (all-reduce of sums, moments gathered);
- ``refit``: :func:`saegeo.stitch.refit.accumulate_stats` of the large SAE (all-reduce of the
  [F+1, F+1] Gram matrix and [F+1, D] cross sums);
- ``delta``: :func:`saegeo.delta_mse` of the pair (all-reduce of [L] sums);
- ``mcs``: :func:`saegeo.encode_codes` of both and :func:`saegeo.geometry.masked_cosine`
  (codes' rows gathered to every rank, child groups split across ranks);
- ``cosine``: :func:`saegeo.decoder_cosine` (rows of the large decoder split, top-1 gathered).

Usage::

    python analyses/benchmarks/distributed.py [--tokens 20000] [--small 512] [--large 2048]
        [--d-in 256] [--device cpu|cuda] [--threads 1]

With ``--device cuda`` the ranks use NCCL, one GPU each (2 ranks need 2 GPUs; with one GPU
only the 1-rank time is printed). Sizes are small by default so that it runs in about a minute
on two CPU cores; scale them up for a real measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORKLOADS = ("evaluate", "refit", "delta", "mcs", "cosine")


def _pair(small: int, large: int, d_in: int) -> tuple[Any, Any]:
    from saegeo.core.sae import SAE

    g = torch.Generator().manual_seed(0)

    def make(width: int) -> SAE:
        W_dec_FD = torch.randn(width, d_in, generator=g)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        return SAE(
            W_enc=W_dec_FD.T.clone(),
            b_enc=torch.zeros(width),
            W_dec=W_dec_FD,
            b_dec=torch.zeros(d_in),
            arch="jumprelu",
            threshold=torch.full((width,), 2.5),
        )

    return make(small), make(large)


def _workload(name: str, small: Any, large: Any, x_ND: torch.Tensor, device: str) -> None:
    import saegeo as sg
    from saegeo.acts.streaming import stream
    from saegeo.geometry.masked_cosine import masked_cosine
    from saegeo.stitch.refit import accumulate_stats

    opts: dict[str, Any] = {"batch_size": 2048, "device": device, "progress": False}
    if name == "evaluate":
        sg.evaluate(large, x_ND, **opts)
    elif name == "refit":
        accumulate_stats(large, stream(x_ND, **opts))
    elif name == "delta":
        sg.delta_mse(small, large, x_ND, **opts)
    elif name == "mcs":
        codes_S = sg.encode_codes(small, x_ND, **opts)
        codes_L = sg.encode_codes(large, x_ND, **opts)
        masked_cosine(codes_S, codes_L, min_score=0.2)
    else:
        sg.decoder_cosine(small, large, device=device)


def _rank(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    device = "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    small, large = _pair(args.small, args.large, args.d_in)
    x_ND = torch.randn(args.tokens, args.d_in, generator=torch.Generator().manual_seed(1))
    times = {}
    for name in WORKLOADS:
        _workload(name, small, large, x_ND[:256], device)  # warm-up: kernels, collectives
        dist.barrier()
        start = time.perf_counter()
        _workload(name, small, large, x_ND, device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        times[name] = time.perf_counter() - start
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(times))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(world: int, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per workload on ``world`` spawned ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times")
        init = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(_rank, args=(world, init, args, out), nprocs=world)
        return dict(json.loads(Path(out).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--small", type=int, default=512)
    parser.add_argument("--large", type=int, default=2048)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    worlds = [1, 2] if args.device == "cpu" or n_gpus >= 2 else [1]
    where = f"cuda, {n_gpus} GPU(s)" if args.device == "cuda" else f"cpu, {args.threads} thread(s)"
    print(
        f"{where} per rank; {args.tokens} tokens, {args.small} x {args.large} features, "
        f"d_in {args.d_in}"
    )
    results = {world: timed(world, args) for world in worlds}
    header = f"{'workload':<10}" + "".join(f"{f'{w} rank(s) s':>14}" for w in worlds)
    print(header + (f"{'1 / 2':>8}" if len(worlds) == 2 else ""))
    for name in WORKLOADS:
        row = f"{name:<10}" + "".join(f"{results[w][name]:>14.3f}" for w in worlds)
        if len(worlds) == 2:
            row += f"{results[1][name] / results[2][name]:>8.2f}"
        print(row)
    total = {w: sum(results[w].values()) for w in worlds}
    print(
        f"{'total':<10}"
        + "".join(f"{total[w]:>14.3f}" for w in worlds)
        + (f"{total[1] / total[2]:>8.2f}" if len(worlds) == 2 else "")
    )


if __name__ == "__main__":
    main()
