"""Inputs shared by the analysis scripts: the demo family when harvested, else a toy family."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

import saegeo as sg
from saegeo.demo import SHIPPED_FAMILY

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "reports" / "demo"


def two_level_toy(
    *, n_roots: int = 48, branching: int = 4, d: int = 64, seed: int = 0
) -> sg.ToyModel:
    """The analyses' toy hierarchy: ``n_roots`` roots with ``branching`` children each, noisy
    magnitudes, in ``d`` dimensions."""
    return sg.make_toy_model(
        sg.ToyConfig(
            n_roots=n_roots,
            branching=branching,
            depth=1,
            d=d,
            root_prob=0.04,
            child_prob=0.25,
            magnitude_std=0.3,
            noise_std=0.02,
            seed=seed,
        )
    )


def toy_family(
    arch: str,
    widths: Sequence[int],
    *,
    k: int = 8,
    n_roots: int = 48,
    d: int = 64,
    branching: int = 4,
    n_tokens: int = 100_000,
    train_tokens: int = 200_000,
    seed: int = 0,
) -> tuple[sg.Family, torch.Tensor]:
    """SAEs of ``widths`` trained on :func:`two_level_toy`, and the activations."""
    toy = two_level_toy(n_roots=n_roots, branching=branching, d=d, seed=seed)
    store = toy.to_store(n_tokens, seed=seed)
    config = sg.TrainConfig(
        arch=arch,
        k=k,
        tokens=train_tokens,
        batch_size=1024,  # type: ignore[arg-type]
        eval_tokens=16_384,
        seed=seed,
        progress=False,
    )
    return sg.train_family(store, list(widths), config).family, store.read()


def demo_family() -> tuple[sg.Family, Path] | None:
    """The demo's family and activation store when ``make demo`` has run: the family trained
    by ``saegeo demo --retrain`` if there is one, else the shipped family."""
    if not (DEMO / "acts").exists():
        return None
    trained = DEMO / "family"
    return sg.Family.load(trained if trained.exists() else SHIPPED_FAMILY), DEMO / "acts"


def add_input_flags(
    parser: argparse.ArgumentParser, *, tokens: int, tokens_help: str = "activations read at most"
) -> None:
    """The flags :func:`load_inputs` reads: ``--family``, ``--acts`` and ``--tokens``."""
    parser.add_argument("--family", nargs="+", help="SAE directories, or a directory of them")
    parser.add_argument("--acts", help="activations (.npy, .safetensors or store directory)")
    parser.add_argument("--tokens", type=int, default=tokens, help=tokens_help)


def load_inputs(
    args: argparse.Namespace, arch: str, widths: Sequence[int], **toy: int
) -> tuple[sg.Family, torch.Tensor, str]:
    """``--family``/``--acts`` if given, else the demo family, else :func:`toy_family` of
    ``arch``, ``widths`` and the options ``toy``."""
    if args.family:
        if not args.acts:
            sys.exit(f"{sys.argv[0]}: --family needs --acts")
        family, acts_path = sg.Family.load(args.family), Path(args.acts)
    elif demo := demo_family():
        family, acts_path = demo
    else:
        family, acts = toy_family(arch, widths, **toy)
        return family, acts[: args.tokens], f"toy {arch} family (no demo family found)"
    acts = sg.ActivationStore.open(acts_path).read(limit=args.tokens)
    return family, acts, f"{', '.join(family.names)} on {acts_path}"


def screenshot(
    html_path: Path, png_path: Path, *, width: int, height: int, budget_ms: int = 10_000
) -> Path:
    """Render a standalone HTML page to ``png_path`` with headless Chromium (no network)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found; install it (apt-get install chromium)")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={png_path}",
                f"--window-size={width},{height}",
                html_path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    return png_path
