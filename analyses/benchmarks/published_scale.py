"""Every step a researcher runs, at the shapes of published SAE families: time and peak memory.

Builds a stand-in family with the shapes and the structure of a published release and times,
each in a fresh process (so that its peak RSS is its own), the steps of a study:

- ``cosine``: :func:`saegeo.decoder_cosine` of each adjacent pair;
- ``classify``: :func:`saegeo.classify` and :func:`saegeo.delta_mse` of each adjacent pair;
- ``explained``: :func:`saegeo.explained_share` of each adjacent pair;
- ``trees``: the containment DAG of the whole family (:func:`saegeo.feature_dag` with
  ``metric="containment"``) and its forest of trees;
- ``stitch``: ``saegeo stitch`` with the exact refit up to each ``--stitch-upto`` width, under an
  address-space limit (``--memory-limit``, as ``prlimit --as``), reporting the refit's method,
  iterations, residual and the MSE before and after it;
- ``compare``: ``saegeo stitch`` up to ``--compare-upto`` twice, with the dense Cholesky solve
  and with conjugate gradients: their times as a ratio (the dense one is the baseline, measured
  in the same run), MSEs and decoders.

Families (``--family``):

- ``gpt2``: the shapes of ``gpt2-small-res-jb-feature-splitting``: widths 768·2^i up to
  98,304, d_in 768;
- ``gemma``: the shapes of Gemma Scope's residual SAEs: widths 16,384·2^i up to 1,048,576,
  d_in 2,304 (the widest ones do not fit a 24 GiB machine: see below).

The stand-in has the structure that "Stitching SAEs of different sizes" reports for the GPT-2
family: at every doubling 57% of the wider SAE's features are children of a narrower feature
(decoder cosine 0.75–0.95 with their parent) and 43% are new (random directions). Tokens are
sparse non-negative mixtures of ``--l0`` features of the widest member plus noise; every
member is a JumpReLU SAE reading its own decoder directions, with one threshold calibrated so
that its mean L0 on the tokens is ``--l0`` (48 by default, as in the release).

Where a step would not fit the memory available, it says so before allocating (one line,
exit 2), naming what it needs and the option that lowers it.

Usage::

    python analyses/benchmarks/published_scale.py --family gpt2 --tokens 50000 \\
        --steps stitch --stitch-upto 24576 49152 --memory-limit 20000000000
    python analyses/benchmarks/published_scale.py --family gpt2 --max-width 24576 \\
        --tokens 20000 --steps cosine classify explained trees compare --compare-upto 12288

The stand-in is written once under ``--out`` (default ``reports/published_scale``) and reused
by later runs with the same settings; results go to ``results-*.json`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import selectors
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {"gpt2": (768, 768, 98_304), "gemma": (2304, 16_384, 1_048_576)}
"""Family: (d_in, narrowest width, widest published width)."""
CHILD_SHARE = 0.57
CHILD_COS = (0.75, 0.95)
CALIBRATION_TOKENS = 2048
STEPS = ("cosine", "classify", "explained", "explorer", "trees", "stitch", "compare")
EXIT_USER_ERROR = 2


class DoesNotFitError(Exception):
    """A step that would need more memory than there is (message: one line)."""


# --------------------------------------------------------------------------- the stand-in


def widths_of(family: str, max_width: int | None) -> list[int]:
    d_in, narrowest, widest = FAMILIES[family]
    top = widest if max_width is None else max_width
    widths = [narrowest]
    while widths[-1] * 2 <= top:
        widths.append(widths[-1] * 2)
    return widths


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def _next_level(parents_FD: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    """``width`` directions: 57% children of ``parents_FD`` (cosine 0.75–0.95), 43% new."""
    d_in = parents_FD.shape[1]
    n_child = round(CHILD_SHARE * width)
    parent = torch.randint(len(parents_FD), (n_child,), generator=g)
    base = parents_FD[parent]
    noise = torch.randn(n_child, d_in, generator=g)
    noise = _unit(noise - (noise * base).sum(1, keepdim=True) * base)
    cos = CHILD_COS[0] + (CHILD_COS[1] - CHILD_COS[0]) * torch.rand(n_child, 1, generator=g)
    children = cos * base + (1 - cos**2).sqrt() * noise
    new = _unit(torch.randn(width - n_child, d_in, generator=g))
    return torch.cat([children, new])[torch.randperm(width, generator=g)]


def _tokens(truth_FD: torch.Tensor, n: int, l0: int, g: torch.Generator) -> np.ndarray:
    """``n`` tokens: sums of ``l0`` random rows of ``truth_FD`` with weights 0.5 + Exp(1)."""
    out = np.empty((n, truth_FD.shape[1]), dtype=np.float32)
    for start in range(0, n, 4096):
        rows = min(4096, n - start)
        idx = torch.randint(len(truth_FD), (rows, l0), generator=g)
        weight = 0.5 + torch.empty(rows, l0).exponential_(generator=g)
        x = torch.nn.functional.embedding_bag(idx, truth_FD, per_sample_weights=weight, mode="sum")
        out[start : start + rows] = (x + 0.05 * torch.randn(x.shape, generator=g)).numpy()
    return out


def _threshold(x_ND: torch.Tensor, dirs_FD: torch.Tensor, l0: int) -> float:
    """The one threshold at which a JumpReLU SAE reading ``dirs_FD`` fires ``l0`` per token."""
    k = l0 * len(x_ND)
    best = torch.empty(0)
    for start in range(0, len(dirs_FD), 8192):
        pre = (x_ND @ dirs_FD[start : start + 8192].T).reshape(-1)
        best = (
            torch.cat([best, pre.topk(min(k, pre.numel())).values])
            .topk(min(k, len(best) + pre.numel()))
            .values
        )
    return float(best[-1])


def stand_in_bytes(d_in: int, widths: list[int], tokens: int) -> int:
    """Memory that building the stand-in takes: the widest member's encoder and decoder (or
    the two widest levels of directions) and the tokens, float32."""
    second = widths[-2] if len(widths) > 1 else 0
    return 4 * d_in * (max(2 * widths[-1], widths[-1] + second) + tokens)


def build_stand_in(out: Path, family: str, widths: list[int], tokens: int, l0: int, seed: int):
    """Write the stand-in family (SAELens layout) and its tokens (``acts.npy``) under ``out``."""
    import saegeo as sg
    from saegeo.runtime import memory

    d_in = FAMILIES[family][0]
    settings = {"family": family, "widths": widths, "tokens": tokens, "l0": l0, "seed": seed}
    done = out / "stand_in.json"
    if done.exists() and json.loads(done.read_text()) == settings:
        return
    need = stand_in_bytes(d_in, widths, tokens)
    free = memory.available_memory("cpu")
    if free is not None and need > free:
        raise DoesNotFitError(
            f"building the {family} stand-in up to width {widths[-1]:,} needs about "
            f"{need / 1e9:.1f} GB but {free / 1e9:.1f} GB is available; lower it with "
            "--max-width or --tokens"
        )
    if out.exists():
        shutil.rmtree(out)
    (out / "levels").mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    dirs = _unit(torch.randn(widths[0], d_in, generator=g))
    np.save(out / "levels" / f"{widths[0]}.npy", dirs.numpy())
    for width in widths[1:]:
        dirs = _next_level(dirs, width, g)
        np.save(out / "levels" / f"{width}.npy", dirs.numpy())
    np.save(out / "acts.npy", _tokens(dirs, tokens, l0, g))
    del dirs
    x_ND = torch.from_numpy(np.load(out / "acts.npy", mmap_mode="r")[:CALIBRATION_TOKENS].copy())
    for width in widths:
        dirs = torch.from_numpy(np.load(out / "levels" / f"{width}.npy"))
        sae = sg.SAE(
            W_enc=dirs.T.contiguous(),
            b_enc=torch.zeros(width),
            W_dec=dirs,
            b_dec=torch.zeros(d_in),
            arch="jumprelu",
            threshold=torch.full((width,), _threshold(x_ND, dirs, l0)),
        )
        sg.save_sae(sae, out / "family" / f"{family}-standin-{width}")
        del sae, dirs
    shutil.rmtree(out / "levels")
    done.write_text(json.dumps(settings))


# --------------------------------------------------------------------------- the steps


def _pair_bytes(d_in: int, small: int, large: int, batch: int, acts: bool) -> int:
    """Loading two members (encoder and decoder, float32) and, with activations, encoding a
    batch of the wider one (pre-activations, codes and a mask)."""
    weights = 8 * d_in * (small + large)
    return weights + (3 * 4 * batch * large if acts else 0) + 512 * 2**20


def _require(need: int, what: str, lowers: str) -> None:
    from saegeo.runtime import memory

    free = memory.available_memory("cpu")
    if free is not None and need > free:
        raise DoesNotFitError(
            f"{what} needs about {need / 1e9:.1f} GB but {free / 1e9:.1f} GB is available; "
            f"lower it with {lowers}"
        )


def worker(
    step: str, out: Path, small: int, large: int, batch: int, limit: int | None
) -> dict[str, Any]:
    """Run one step in this process; its time and what it found."""
    import saegeo as sg

    family_dir = out / "family"
    members = sorted(family_dir.iterdir(), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    by_width = {int(p.name.rsplit("-", 1)[1]): p for p in members}
    acts = sg.ActivationStore.open(out / "acts.npy")
    opts = {"device": "cpu", "progress": False}
    d_in, n_tokens = acts.d_in, min(acts.n_tokens, limit or acts.n_tokens)
    if step == "trees":
        widths = [w for w in sorted(by_width) if not large or w <= large]
        _require(
            8 * d_in * sum(widths) + 3 * 4 * batch * widths[-1] + 24 * n_tokens * 48 * len(widths),
            f"the containment trees of {len(widths)} members",
            "--max-width or --step-tokens",
        )
        start = time.perf_counter()
        fam = sg.Family.load([by_width[w] for w in widths])
        G = sg.feature_dag(
            fam, metric="containment", acts=acts, batch_size=batch, limit=limit, **opts
        )
        table, trees = sg.forest(G)
        return {"seconds": time.perf_counter() - start, "edges": G.number_of_edges(),
                "trees": len(trees)}  # fmt: skip
    _require(
        _pair_bytes(d_in, small, large, batch, step != "cosine"),
        f"the {step} step on widths {small:,} and {large:,}",
        "--max-width" + (" or --batch-size" if step != "cosine" else ""),
    )
    a, b = sg.load_sae(by_width[small]), sg.load_sae(by_width[large])
    start = time.perf_counter()
    if step == "cosine":
        match = sg.decoder_cosine(a, b, k=1, **opts)
        found = {"mean_max_cos": float(match.values.mean())}
    elif step == "classify":
        table = sg.classify(a, b, **opts)
        delta = sg.delta_mse(a, b, acts, batch_size=batch, limit=limit, **opts)
        found = {"novel_share": float((table["kind"] == "novel").mean()),
                 "mean_delta_mse": float(delta.mean())}  # fmt: skip
    elif step == "explained":
        share = sg.explained_share(a, b, acts, batch_size=batch, limit=limit, **opts)
        found = {"rows": len(share)}
    elif step == "explorer":
        # The explorer's data of the pair: one streaming pass for the activation statistics
        # and snippets of every feature, the DAG, classify and the swap groups (no effects).
        facts = sg.family_facts([a, b], acts, with_effects=False, batch_size=batch, limit=limit,
                                **opts)  # fmt: skip
        found = {"features": sum(len(table) for table in facts.features)}
    else:
        raise ValueError(step)
    return {"seconds": time.perf_counter() - start, **found}


def run_step_worker(args: argparse.Namespace, step: str, small: int, large: int) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "--worker",
        step,
        "--out",
        str(args.out_dir),
        "--pair",
        str(small),
        str(large),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    if args.step_tokens is not None:
        argv += ["--step-tokens", str(args.step_tokens)]
    code, seconds, peak, stdout, stderr = _run_measured(argv, args.threads)
    label = f"{small:,} / {large:,}" if small else f"up to {large:,}" if large else "all"
    row: dict[str, Any] = {"step": step, "widths": label, "exit": code, "wall_s": seconds,
                           "peak_rss_gb": peak / 1e9}  # fmt: skip
    if code == 0:
        row.update(json.loads(stdout.strip().splitlines()[-1]))
    else:
        row["message"] = (stderr.strip().splitlines() or ["(no output)"])[-1]
    return row


def _run_measured(argv: list[str], threads: int) -> tuple[int, float, int, str, str]:
    """Run ``argv`` in a fresh process: exit code, seconds, its own peak RSS, stdout, stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # Read both pipes to the end, then reap the child with its own resource usage.
    stdout_b, stderr_b = b"", b""
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_pipes = 2
    while open_pipes:
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_pipes -= 1
            elif key.fileobj is proc.stdout:
                stdout_b += chunk
            else:
                stderr_b += chunk
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, time.perf_counter() - start, int(usage.ru_maxrss) * 1024,
            stdout_b.decode(), stderr_b.decode())  # fmt: skip


def run_stitch(
    args: argparse.Namespace, upto: int, solver: str, limit: int | None = None
) -> dict[str, Any]:
    """``saegeo stitch`` up to ``upto`` with ``solver`` under the address-space limit, on the
    first ``limit`` tokens (None: all)."""
    out = args.out_dir / (f"stitch-{upto}-{solver}" + ("" if limit is None else f"-{limit}"))
    argv = [sys.executable, "-m", "saegeo", "--verbose", "stitch", str(args.out_dir / "family"),
            "--acts", str(args.out_dir / "acts.npy"), "--upto", str(upto),
            "--solver", solver, "--device", "cpu", "--out", str(out)]  # fmt: skip
    if limit is not None:
        argv += ["--limit", str(limit)]
    if args.refit_max_iterations is not None:
        argv += ["--refit-max-iterations", str(args.refit_max_iterations)]
    if out.exists():
        argv.append("--force")
    if args.memory_limit:
        argv = ["prlimit", f"--as={args.memory_limit}", *argv]
    code, seconds, peak, stdout, stderr = _run_measured(argv, args.threads)
    row: dict[str, Any] = {"step": f"stitch ({solver})", "widths": f"up to {upto:,}",
                           "exit": code, "wall_s": seconds, "peak_rss_gb": peak / 1e9}  # fmt: skip
    if code != 0:
        row["message"] = (stderr.strip().splitlines() or ["(no output)"])[-1]
        return row
    report = json.loads((out / "report.json").read_text())
    last = report["steps"][-1]
    row.update(
        features=last["n_features"],
        l0=last["l0_before"],
        mse_before=last["mse_before"],
        mse_after=last["mse_after"],
        method=report["refit_method"],
        iterations=report["refit_iterations"],
        residual=report["refit_residual"],
        refit_s=report["refit_seconds"],
        out=str(out),
    )
    return row


def compare_solvers(args: argparse.Namespace, upto: int) -> list[dict[str, Any]]:
    """The dense and the conjugate-gradient refit up to ``upto``: times, MSEs, decoders."""
    import saegeo as sg

    dense = run_stitch(args, upto, "cholesky", args.compare_tokens)
    cg = run_stitch(args, upto, "cg", args.compare_tokens)
    if dense["exit"] == 0 and cg["exit"] == 0:
        W_dense = sg.load_sae(dense["out"]).W_dec.double()
        W_cg = sg.load_sae(cg["out"]).W_dec.double()
        cg["mse_after / dense"] = cg["mse_after"] / dense["mse_after"]
        cg["decoder_rel_diff"] = float((W_cg - W_dense).norm() / W_dense.norm())
        cg["row_cos_min"] = float(torch.nn.functional.cosine_similarity(W_cg, W_dense).min())
        cg["refit_s / dense"] = cg["refit_s"] / dense["refit_s"]
        cg["wall_s / dense"] = cg["wall_s"] / dense["wall_s"]
    return [dense, cg]


# --------------------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB, torch {torch.__version__}"


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = ["step", "widths", "wall_s", "peak_rss_gb"]
    extra = [k for row in rows for k in row if k not in columns and k not in ("exit", "out")]
    columns += list(dict.fromkeys(extra))

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if math.isfinite(value) else ""
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="gpt2")
    parser.add_argument("--max-width", type=int, help="widest member (default: the release's)")
    parser.add_argument("--tokens", type=int, default=50_000, help="tokens of the stand-in")
    parser.add_argument("--l0", type=int, default=48, help="mean L0 of every member")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--stitch-upto", type=int, nargs="+", default=[24_576, 49_152])
    parser.add_argument("--compare-upto", type=int, default=12_288)
    parser.add_argument(
        "--compare-tokens", type=int, help="tokens of the solver comparison (default all)"
    )
    parser.add_argument(
        "--step-tokens", type=int, help="tokens of classify, explained and trees (default all)"
    )
    parser.add_argument("--pairs-upto", type=int, help="widest member of the pair steps")
    parser.add_argument(
        "--refit-max-iterations", type=int, help="cap on the stitch's conjugate-gradient iterations"
    )
    parser.add_argument("--memory-limit", type=int, help="address-space limit of saegeo stitch")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="default reports/published_scale/FAMILY")
    parser.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--pair", type=int, nargs=2, default=(0, 0), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir = args.out or ROOT / "reports" / "published_scale" / args.family
    try:
        if args.worker:
            found = worker(args.worker, args.out_dir, *args.pair, args.batch_size, args.step_tokens)
            print(json.dumps(found))
            return 0
        widths = widths_of(args.family, args.max_width)
        start = time.perf_counter()
        build_stand_in(args.out_dir, args.family, widths, args.tokens, args.l0, args.seed)
    except DoesNotFitError as exc:
        print(f"published_scale.py: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"{args.family} stand-in: widths {widths}, {args.tokens:,} tokens, L0 {args.l0} "
          f"({time.perf_counter() - start:.0f} s); {machine()}; {args.threads} thread(s)",
          flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for step in args.steps:
        if step in ("cosine", "classify", "explained", "explorer"):
            paired = [w for w in widths if args.pairs_upto is None or w <= args.pairs_upto]
            for small, large in zip(paired, paired[1:], strict=False):
                rows.append(run_step_worker(args, step, small, large))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        elif step == "trees":
            rows.append(run_step_worker(args, step, 0, args.pairs_upto or 0))
        elif step == "stitch":
            for upto in args.stitch_upto:
                rows.append(run_stitch(args, upto, "auto"))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        elif step == "compare":
            rows += compare_solvers(args, args.compare_upto)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    result = {"date": stamp, "machine": machine(), "threads": args.threads,
              "family": args.family, "widths": widths, "tokens": args.tokens,
              "memory_limit": args.memory_limit, "rows": rows}  # fmt: skip
    (args.out_dir / f"results-{stamp}.json").write_text(json.dumps(result, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
