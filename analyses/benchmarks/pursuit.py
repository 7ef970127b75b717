"""Matching-pursuit encode time: saegeo against SAELens on the same weights and inputs.

Both SAEs hold one random unit-norm decoder; each setting encodes the same inputs with
``sae_lens`` ``MatchingPursuitSAE.encode`` and with ``saegeo.SAE.encode`` (``method="auto"``,
which takes the Gram route at these sizes and builds the Gram matrix inside the timed call).
A second saegeo call on the same inputs is timed too: the SAE keeps its Gram matrix while its
decoder is unchanged, as when a store is encoded batch by batch.

- ``static``: no early stop (``residual_threshold=0``, ``stop_on_duplicate_support=False``),
  every row runs ``max_iterations``; inputs are Gaussian.
- ``dynamic``: inputs are sparse sums of 1..64 atoms plus noise; ``residual_threshold`` and the
  duplicate-support rule stop rows at many different iterations (the L0 range is printed).

Everything runs under the settings a user has: no environment variable is set, OpenMP keeps
its defaults. By default ``--busy`` starts one CPU-bound process per core that runs through
every timing, as on a workstation shared with other jobs (``--busy 0`` for an idle machine).

Agreement: SAELens runs in float32 (timed) and in float64; on the rows where its two runs pick
the same supports, the rows where saegeo's float32 supports equal them are counted (float
rounding can legitimately flip a near-tie where SAELens's own two runs disagree). The largest
difference of codes relative to the largest code is printed too.

Usage::

    python analyses/benchmarks/pursuit.py [--quick] [--busy N] [--direct] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sae_lens
import torch
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAEConfig

from saegeo.core.pursuit import matching_pursuit
from saegeo.core.sae import SAE

FULL = dict(d_in=512, width=4096, batch=2048, max_iterations=48)
QUICK = dict(d_in=256, width=2048, batch=1024, max_iterations=32)
DYNAMIC_THRESHOLD = 0.5


def make_inputs(
    W_dec_FD: torch.Tensor, batch: int, *, max_atoms: int = 64, noise: float = 0.02
) -> torch.Tensor:
    """Rows [batch, d_in] that are sums of 1..max_atoms decoder rows plus Gaussian noise."""
    width, d_in = W_dec_FD.shape
    atoms_B = torch.randint(1, max_atoms + 1, (batch,))
    idx_BK = torch.rand(batch, width).topk(max_atoms, dim=1).indices
    used_BK = torch.arange(max_atoms) < atoms_B[:, None]
    codes_BF = torch.zeros(batch, width).scatter_(
        1, idx_BK, used_BK * (0.5 + torch.rand(batch, max_atoms))
    )
    return codes_BF @ W_dec_FD + noise * torch.randn(batch, d_in)


def _spin() -> None:
    x = 0
    while True:
        x += 1


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes running for the duration of the block."""
    workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5 if n else 0.0)
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def supports(codes_BF: torch.Tensor) -> torch.Tensor:
    return codes_BF != 0


def agreement(
    ours_BF: torch.Tensor, ref_BF: torch.Tensor, ref64_BF: torch.Tensor
) -> dict[str, Any]:
    """Support agreement with SAELens where its float32 and float64 runs agree."""
    settled_B = (supports(ref_BF) == supports(ref64_BF)).all(dim=1)
    same_B = (supports(ours_BF) == supports(ref_BF)).all(dim=1)
    scale = ref_BF.abs().max().clamp(min=1e-30)
    l0_B = supports(ref_BF).sum(dim=1)
    return {
        "rows": int(ref_BF.shape[0]),
        "saelens_settled_rows": int(settled_B.sum()),
        "same_support_settled_rows": int((same_B & settled_B).sum()),
        "same_support_rows": int(same_B.sum()),
        "max_rel_err": float((ours_BF - ref_BF).abs().max() / scale),
        "l0_mean": float(l0_B.float().mean()),
        "l0_min": int(l0_B.min()),
        "l0_max": int(l0_B.max()),
    }


def run_setting(
    name: str,
    W_dec_FD: torch.Tensor,
    x_BD: torch.Tensor,
    rules: dict[str, Any],
    *,
    direct: bool,
    busy: int,
) -> dict[str, Any]:
    """Time SAELens and saegeo on one setting; returns times, speed-ups and agreement."""
    width, d_in = W_dec_FD.shape
    cfg = MatchingPursuitSAEConfig(d_in=d_in, d_sae=width, **rules)
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    theirs.load_state_dict({"W_dec": W_dec_FD, "b_dec": torch.zeros(d_in)})
    ours = SAE.from_decoder(W_dec_FD, **rules)
    theirs64 = sae_lens.SAE.from_dict({**cfg.to_dict(), "dtype": "float64"})
    theirs64.load_state_dict({"W_dec": W_dec_FD.double(), "b_dec": torch.zeros(d_in).double()})
    with torch.no_grad():
        ref64_BF = theirs64.encode(x_BD.double())  # untimed: the agreement reference
        for sae in (theirs, ours):  # warm up thread pools and allocators
            sae.encode(x_BD[:8])
        with busy_cores(busy):
            saelens_s, ref_BF = timed(lambda: theirs.encode(x_BD))
            saegeo_s, ours_BF = timed(lambda: ours.encode(x_BD))
            kept_s, kept_BF = timed(lambda: ours.encode(x_BD))
    result = {"setting": name, **rules, "saelens_s": saelens_s, "saegeo_s": saegeo_s}
    result["speedup"] = saelens_s / saegeo_s
    result["saegeo_gram_kept_s"] = kept_s
    result["gram_kept_speedup"] = saelens_s / kept_s
    result["gram_kept_max_abs_diff"] = float((kept_BF - ours_BF).abs().max())
    result.update(agreement(ours_BF, ref_BF, ref64_BF))
    if direct:
        with busy_cores(busy):
            direct_s, direct_BF = timed(
                lambda: matching_pursuit(x_BD, W_dec_FD, method="direct", **rules)
            )
        result["direct_s"] = direct_s
        result["direct_speedup"] = saelens_s / direct_s
        result["direct_same_support_rows"] = agreement(direct_BF, ref_BF, ref64_BF)[
            "same_support_settled_rows"
        ]
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller problem (seconds)")
    parser.add_argument(
        "--busy",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU-bound processes running through the timings (default: one per core)",
    )
    parser.add_argument("--direct", action="store_true", help="also time method='direct'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    torch.manual_seed(args.seed)
    W_dec_FD = torch.randn(size["width"], size["d_in"])
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    settings = [
        (
            "static",
            torch.randn(size["batch"], size["d_in"]),
            dict(residual_threshold=0.0, stop_on_duplicate_support=False),
        ),
        (
            "dynamic",
            make_inputs(W_dec_FD, size["batch"]),
            dict(residual_threshold=DYNAMIC_THRESHOLD, stop_on_duplicate_support=True),
        ),
    ]
    print(
        f"matching pursuit: d_in={size['d_in']} width={size['width']} batch={size['batch']} "
        f"max_iterations={size['max_iterations']}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {args.busy} busy processes"
    )
    print(
        f"{'setting':8} {'SAELens s':>10} {'saegeo s':>9} {'speed-up':>9} "
        f"{'same support*':>14} {'max rel err':>12} {'L0 mean (min..max)':>20}"
    )
    results = []
    for name, x_BD, rules in settings:
        rules = {**rules, "max_iterations": size["max_iterations"]}
        r = run_setting(name, W_dec_FD, x_BD, rules, direct=args.direct, busy=args.busy)
        results.append(r)
        print(
            f"{name:8} {r['saelens_s']:10.2f} {r['saegeo_s']:9.2f} {r['speedup']:8.1f}x "
            f"{r['same_support_settled_rows']:>6}/{r['saelens_settled_rows']:<7} "
            f"{r['max_rel_err']:12.1e} "
            f"{r['l0_mean']:9.1f} ({r['l0_min']}..{r['l0_max']})"
        )
        print(
            f"{'':8} Gram matrix kept from the first call: {r['saegeo_gram_kept_s']:.2f} s, "
            f"{r['gram_kept_speedup']:.1f}x, codes differ by {r['gram_kept_max_abs_diff']:.1e}"
        )
        if args.direct:
            print(
                f"{'':8} direct route: {r['direct_s']:.2f} s, {r['direct_speedup']:.1f}x, "
                f"{r['direct_same_support_rows']}/{r['rows']} same support"
            )
    print(
        "* rows with saegeo's supports equal to SAELens's, of the rows where SAELens's own "
        "float32 and float64 supports agree"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
