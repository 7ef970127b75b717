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

Agreement: rows whose support equals SAELens's exactly, and the largest difference of codes
relative to the largest code.

OpenMP worker threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless already set): on a
shared CPU, spinning workers take the very cores the busy threads wait for, and the many
medium-sized operations of the Gram route suffer from that far more than one large product.
Both libraries run in the same process under the same setting.

Usage::

    python analyses/benchmarks/pursuit.py [--quick] [--threads N] [--direct] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import sae_lens  # noqa: E402
import torch  # noqa: E402
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAEConfig  # noqa: E402

from saegeo.core.pursuit import matching_pursuit  # noqa: E402
from saegeo.core.sae import SAE  # noqa: E402

FULL = dict(d_in=576, width=4608, batch=4096, max_iterations=64)
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


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def agreement(ours_BF: torch.Tensor, ref_BF: torch.Tensor) -> dict[str, Any]:
    same_rows = ((ours_BF != 0) == (ref_BF != 0)).all(dim=1)
    scale = ref_BF.abs().max().clamp(min=1e-30)
    l0_B = (ref_BF != 0).sum(dim=1)
    return {
        "same_support_rows": int(same_rows.sum()),
        "rows": int(ref_BF.shape[0]),
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
) -> dict[str, Any]:
    """Time SAELens and saegeo on one setting; returns times, speed-ups and agreement."""
    width, d_in = W_dec_FD.shape
    cfg = MatchingPursuitSAEConfig(d_in=d_in, d_sae=width, **rules)
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    theirs.load_state_dict({"W_dec": W_dec_FD, "b_dec": torch.zeros(d_in)})
    ours = SAE.from_decoder(W_dec_FD, **rules)
    with torch.no_grad():
        for sae in (theirs, ours):  # warm up thread pools and allocators
            sae.encode(x_BD[:8])
        saelens_s, ref_BF = timed(lambda: theirs.encode(x_BD))
        saegeo_s, ours_BF = timed(lambda: ours.encode(x_BD))
        kept_s, kept_BF = timed(lambda: ours.encode(x_BD))
    result = {"setting": name, **rules, "saelens_s": saelens_s, "saegeo_s": saegeo_s}
    result["speedup"] = saelens_s / saegeo_s
    result["saegeo_gram_kept_s"] = kept_s
    result["gram_kept_speedup"] = saelens_s / kept_s
    result["gram_kept_max_abs_diff"] = float((kept_BF - ours_BF).abs().max())
    result.update(agreement(ours_BF, ref_BF))
    if direct:
        direct_s, direct_BF = timed(
            lambda: matching_pursuit(x_BD, W_dec_FD, method="direct", **rules)
        )
        result["direct_s"] = direct_s
        result["direct_speedup"] = saelens_s / direct_s
        result["direct_same_support_rows"] = agreement(direct_BF, ref_BF)["same_support_rows"]
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller problem (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--direct", action="store_true", help="also time method='direct'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
        f"{torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(
        f"{'setting':8} {'SAELens s':>10} {'saegeo s':>9} {'speed-up':>9} "
        f"{'same support':>14} {'max rel err':>12} {'L0 mean (min..max)':>20}"
    )
    results = []
    for name, x_BD, rules in settings:
        rules = {**rules, "max_iterations": size["max_iterations"]}
        r = run_setting(name, W_dec_FD, x_BD, rules, direct=args.direct)
        results.append(r)
        print(
            f"{name:8} {r['saelens_s']:10.2f} {r['saegeo_s']:9.2f} {r['speedup']:8.1f}x "
            f"{r['same_support_rows']:>6}/{r['rows']:<7} {r['max_rel_err']:12.1e} "
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
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
