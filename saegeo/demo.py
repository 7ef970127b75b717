"""``saegeo demo``: the whole pipeline on data built on this machine, written as a report."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from saegeo.atomic import write_text
from saegeo.describe import describe_sae
from saegeo.family import Family
from saegeo.formats import save_sae
from saegeo.sae import SAE

log = logging.getLogger(__name__)


def build_small_family(
    out: Path, *, d_in: int = 64, widths: tuple[int, ...] = (64, 128, 256), seed: int = 0
) -> Family:
    """A small family of decoder-only SAEs whose wider members refine the narrower ones."""
    generator = torch.Generator().manual_seed(seed)
    base_FD = torch.randn(widths[-1], d_in, generator=generator)
    for width in widths:
        save_sae(SAE.from_decoder(base_FD[:width]), out / f"mp-{width}")
    return Family.load(out)


def run_demo(out: str | Path, *, quick: bool = False) -> Path:
    """Build the demo data under ``out`` and write its report; return the report's path."""
    out = Path(out)
    family = build_small_family(out / "family")
    text = "\n\n".join(describe_sae(sae) for sae in family)
    return write_text(out / "info.txt", text + "\n")
