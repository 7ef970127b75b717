"""Matching pursuit's near-ties: saegeo's supports against SAELens's where its float32 and
float64 runs agree, with near-ties settled in float32 (as before) and in float64 (as now).

The dictionary (d_in 512, width 4,096, decoder norms 0.8 to 1.2) holds 512 pairs of atoms whose
correlations with any input differ by about float32 rounding (one atom of each pair is the
other times ``1 + 2e-7 · z`` plus noise of 1e-7); inputs are sums of 8 paired atoms, noise and
a non-zero ``b_dec``. Every row runs 48 iterations (no early stop). SAELens's float32 and
float64 runs disagree on most rows (their rounding flips the near-ties); on the rows where they
agree, saegeo's Gram route must agree too.

Usage::

    python analyses/benchmarks/pursuit_ties.py [--seed 0]
"""

from __future__ import annotations

import argparse
import functools

import torch
from sae_lens.saes.matching_pursuit_sae import _encode_matching_pursuit

from saegeo.core import gram_route
from saegeo.core.pursuit import matching_pursuit

D_IN, WIDTH, BATCH, ITERATIONS, PAIRS = 512, 4096, 2048, 48, 512
RULES = dict(residual_threshold=0.0, max_iterations=ITERATIONS, stop_on_duplicate_support=False)


def near_tie_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred inputs [BATCH, D_IN] and a dictionary [WIDTH, D_IN] with near-tied pairs."""
    g = torch.Generator().manual_seed(seed)
    W_dec_FD = torch.randn(WIDTH, D_IN, generator=g)
    W_dec_FD *= (0.8 + 0.4 * torch.rand(WIDTH, 1, generator=g)) / W_dec_FD.norm(dim=1, keepdim=True)
    twins = slice(1, 2 * PAIRS, 2)
    W_dec_FD[twins] = W_dec_FD[0 : 2 * PAIRS : 2] * (
        1 + 2e-7 * torch.randn(PAIRS, 1, generator=g)
    ) + 1e-7 * torch.randn(PAIRS, D_IN, generator=g)
    b_dec_D = 0.1 * torch.randn(D_IN, generator=g)
    codes_BF = torch.zeros(BATCH, WIDTH)
    picked_BK = 2 * torch.randint(0, PAIRS, (BATCH, 8), generator=g)
    codes_BF.scatter_(1, picked_BK, 0.5 + torch.rand(BATCH, 8, generator=g))
    noise_BD = 0.3 * torch.randn(BATCH, D_IN, generator=g) @ W_dec_FD[2 * PAIRS :][:D_IN] / 8
    x_BD = codes_BF @ W_dec_FD + noise_BD + b_dec_D
    return x_BD - b_dec_D, W_dec_FD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_BD, W_dec_FD = near_tie_case(args.seed)

    def saelens(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return _encode_matching_pursuit(x, W, **RULES)

    ref32_BF = saelens(x_BD, W_dec_FD)
    ref64_BF = saelens(x_BD.double(), W_dec_FD.double())
    settled_B = ((ref32_BF != 0) == (ref64_BF != 0)).all(dim=1)
    print(f"rows where SAELens float32 and float64 agree: {int(settled_B.sum())} of {BATCH}")
    exact_argmax = gram_route.exact_argmax
    float32_ties = functools.partial(exact_argmax, exact_dtype=torch.float32)  # the rule before
    for name, rule in [("float32", float32_ties), ("float64", exact_argmax)]:
        gram_route.exact_argmax = rule
        try:
            ours_BF = matching_pursuit(x_BD, W_dec_FD, method="gram", **RULES)
        finally:
            gram_route.exact_argmax = exact_argmax
        same_B = ((ours_BF != 0) == (ref32_BF != 0)).all(dim=1)
        print(
            f"near-ties in {name}: same supports on {int((same_B & settled_B).sum())} of the "
            f"{int(settled_B.sum())} settled rows"
        )


if __name__ == "__main__":
    main()
