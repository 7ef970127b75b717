"""Build the explorer site of a family and time it: build, size, peak memory, page loads.

    python analyses/explorer_benchmark.py --family saegeo/data/demo_family \\
        --acts reports/demo/acts --out /tmp/site --screenshot assets/explorer.png
    python analyses/explorer_benchmark.py --family saegeo/data/demo_family \\
        --acts reports/demo/acts --standin 24576 --repeat 13 --no-effects --out /tmp/big

``--standin W`` adds a stand-in member of width W to the family: random unit decoder
directions, a tied encoder and JumpReLU thresholds calibrated on the first 4,096 tokens so
that each feature fires on L0/W of them (L0 that of the widest real member), the shape and the
sparsity of a trained member without its training. ``--repeat R`` reads the store R times
over (its shards listed R times in a store directory of links), for a token count beyond the
harvest. Runs on one thread. Prints one JSON object (``build_cpu_s``: the process's CPU
time, which a busy machine does not inflate as it does the wall-clock ``build_s``); the page
load times come from Chromium (Playwright, ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

import saegeo as sg
from saegeo.explorer.facts import family_facts
from saegeo.explorer.site import write_site

CALIBRATION_TOKENS = 4096
"""Tokens the stand-in member's thresholds are calibrated on."""


def repeated_store(source: Path, times: int, into: Path) -> Path:
    """A store directory that lists ``source``'s shards ``times`` over (links, no copies)."""
    meta = json.loads((source / "meta.json").read_text())
    shards = []
    for r in range(times):
        for shard in meta["shards"]:
            name = f"r{r:02d}_{shard['file']}"
            os.symlink((source / shard["file"]).resolve(), into / name)
            shards.append({**shard, "file": name})
    os.symlink((source / meta["tokenizer"]["path"]).resolve(), into / meta["tokenizer"]["path"])
    meta.update(shards=shards, n_tokens=sum(s["n_tokens"] for s in shards))
    (into / "meta.json").write_text(json.dumps(meta))
    return into


def standin_member(like: sg.SAE, width: int, store: sg.ActivationStore, seed: int = 0) -> sg.SAE:
    """A JumpReLU member of ``width`` random directions with calibrated thresholds."""
    generator = torch.Generator().manual_seed(seed)
    W_dec_FD = torch.randn(width, like.d_in, generator=generator)
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
    sample_BD = store.read(limit=CALIBRATION_TOKENS)
    l0 = float((sg.encode_codes(like, sample_BD, progress=False) != 0).sum(axis=1).mean())
    pre_BF = (sample_BD - like.b_dec.float()) @ W_dec_FD.T
    threshold_F = torch.quantile(pre_BF, 1 - l0 / width, dim=0).clamp_min(1e-3)
    return sg.SAE(
        W_enc=W_dec_FD.T.contiguous(),
        b_enc=torch.zeros(width),
        W_dec=W_dec_FD,
        b_dec=like.b_dec.float().clone(),
        arch="jumprelu",
        threshold=threshold_F,
        metadata={**like.metadata, "name": f"standin-{width}"},
    )


class PeakRSS:
    """The largest resident memory of this process while the block runs, sampled every 0.2 s
    (``ru_maxrss`` keeps the peak of everything before too, such as the stand-in's setup)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            if self._stop.wait(0.2):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def page_times(site: Path, screenshot: Path | None, feature: str | None) -> dict[str, float]:
    """Seconds Chromium takes to show the first rows, the widest member, and a card."""
    from playwright.sync_api import sync_playwright

    index = json.loads((site / "explorer.json").read_text())
    widest = len(index["levels"]) - 1
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        start = time.perf_counter()
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector('.sg-row[data-feature^="0/"]')
        out["first_rows_s"] = time.perf_counter() - start
        start = time.perf_counter()
        page.select_option("[data-testid=level]", str(widest))
        page.wait_for_selector(f'.sg-row[data-feature^="{widest}/"]')
        out["widest_member_s"] = time.perf_counter() - start
        row = page.locator(f'.sg-row[data-feature^="{widest}/"]').nth(1)
        feature_id = row.get_attribute("data-feature")
        start = time.perf_counter()
        row.click()
        page.wait_for_selector(
            f'[data-testid=feature-card][data-feature="{feature_id}"] [data-testid=snippet]'
        )
        out["card_s"] = time.perf_counter() - start
        if screenshot is not None:
            if feature:
                page.select_option("[data-testid=level]", feature.split("/")[0])
                page.fill("[data-testid=search]", feature)
                page.press("[data-testid=search]", "Enter")
                page.wait_for_selector(f'[data-testid=feature-card][data-feature="{feature}"]')
                page.fill("[data-testid=search]", "")
            page.wait_for_timeout(300)
            page.screenshot(path=str(screenshot))
        browser.close()
    return {key: round(value, 2) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--acts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--standin", type=int, help="add a stand-in member of this width")
    parser.add_argument("--repeat", type=int, default=1, help="read the store this many times")
    parser.add_argument("--no-effects", action="store_true")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--feature", help="the feature shown in the screenshot, L/I")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        acts = Path(args.acts)
        if args.repeat > 1:
            acts = repeated_store(acts, args.repeat, Path(tmp))
        store = sg.ActivationStore.open(acts)
        family = sg.Family.load(args.family)
        if args.standin:
            widest = family[-1]
            family = sg.Family(
                [*family, standin_member(widest.to(dtype=torch.float32), args.standin, store)]
            )
        cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        start = time.perf_counter()
        with PeakRSS() as memory:
            facts = family_facts(family, store, with_effects=not args.no_effects, device="cpu")
            site = write_site(facts, args.out)
        build_s = time.perf_counter() - start
        build_cpu_s = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before
    size = subprocess.run(["du", "-sb", str(site)], capture_output=True, text=True, check=True)
    result = {
        "widths": family.widths,
        "tokens": store.n_tokens,
        "effects": not args.no_effects,
        "build_s": round(build_s, 1),
        "build_cpu_s": round(build_cpu_s, 1),
        "build_peak_rss_gb": round(memory.peak / 2**30, 2),
        "site_mb": round(int(size.stdout.split()[0]) / 2**20, 1),
        "largest_file_mb": round(
            max(p.stat().st_size for p in (site / "data").iterdir()) / 2**20, 1
        ),
        **page_times(site, args.screenshot, args.feature),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
