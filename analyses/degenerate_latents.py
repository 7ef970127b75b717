"""How many of an SAE's latents are degenerate: near-duplicates, near-dead, along the mean.

For each SAE, on the first ``--tokens`` activations of a store:

- ``near_duplicate``: share of latents whose unit decoder row has cosine > 0.9 with another
  latent's of the same SAE;
- ``near_dead``: share whose energy, the mean over tokens of ``f_j² ||d_j||²``, is below 1% of
  the SAE's mean latent energy (a threshold that scales with the width);
- ``along_mean``: share whose unit decoder row has ``|cos| > 0.5`` with the mean activation;
- the held-out FVU and L0.

    .venv/bin/python analyses/degenerate_latents.py --acts STORE SAE_DIR [SAE_DIR ...]
    .venv/bin/python analyses/degenerate_latents.py --acts STORE --family FAMILY_DIR

With ``--family`` the shares of every member are also written into the family's
``metrics.csv`` and ``family.json`` (``analyses/demo_family.py`` does this for the shipped
families).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

import saegeo as sg
from saegeo.effects.metrics import evaluate
from saegeo.geometry.similarity import unit_rows

DUPLICATE_COS = 0.9
MEAN_COS = 0.5
NEAR_DEAD = 0.01


def degenerate_row(sae: sg.SAE, x_BD: torch.Tensor) -> dict[str, float]:
    mean_D = x_BD.mean(0)
    with torch.no_grad():
        sq_F = sum(sae.encode(batch).square().sum(0) for batch in x_BD.split(4096))
    energy_F = sq_F / len(x_BD) * sae.W_dec.norm(dim=1).square()
    unit_FD = unit_rows(sae.W_dec.float())
    cos_FF = unit_FD @ unit_FD.T
    cos_FF.fill_diagonal_(-1.0)
    metrics = evaluate(sae, x_BD, progress=False)
    return {
        "sae": sae.name,
        "width": sae.width,
        "fvu": metrics.fvu,
        "l0": metrics.l0,
        "near_duplicate": float((cos_FF.max(1).values > DUPLICATE_COS).float().mean()),
        "near_dead": float((energy_F < NEAR_DEAD * energy_F.mean()).float().mean()),
        "along_mean": float(((unit_FD @ unit_rows(mean_D)).abs() > MEAN_COS).float().mean()),
    }


HEALTH_COLUMNS = ("near_duplicate", "near_dead", "along_mean")


def add_health_columns(family_dir: Path, x_BD: torch.Tensor) -> pd.DataFrame:
    """Each member's degenerate-latent shares on ``x_BD``, written into ``family_dir``'s
    ``metrics.csv`` and ``family.json`` members (replacing earlier ones)."""
    family = sg.Family.load(family_dir)
    rows = pd.DataFrame(
        [degenerate_row(sae.to(dtype=torch.float32), x_BD.float()) for sae in family]
    )
    metrics_path = family_dir / "metrics.csv"
    metrics = pd.read_csv(metrics_path).drop(columns=list(HEALTH_COLUMNS), errors="ignore")
    health = rows.set_index("sae")[list(HEALTH_COLUMNS)]
    metrics = metrics.join(health, on="name")
    metrics.to_csv(metrics_path, index=False)
    record_path = family_dir / "family.json"
    record = json.loads(record_path.read_text())
    for member in record["members"]:
        member.update({c: float(health.loc[member["name"], c]) for c in HEALTH_COLUMNS})
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saes", nargs="*", help="SAE directories")
    parser.add_argument("--family", type=Path, help="a family directory: write its shares")
    parser.add_argument("--acts", required=True, help="activation store")
    parser.add_argument("--tokens", type=int, default=16_384, help="first N tokens (held out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_BD = sg.ActivationStore.open(args.acts).read(limit=args.tokens).float()
    rows = [degenerate_row(sg.load_sae(path), x_BD) for path in args.saes]
    if args.family is not None:
        rows += add_health_columns(args.family, x_BD).to_dict("records")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
