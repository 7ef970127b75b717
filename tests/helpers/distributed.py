"""Run a function on W gloo ranks of a fresh process group on this machine (loopback only).

Each rank calls ``fn(*args)`` under an initialised process group and pickles what it returns;
:func:`run_ranks` returns the results in rank order. The functions must be importable (module
level), since the ranks are spawned processes.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable, world: int, init: str, out: str, args: tuple) -> None:
    faulthandler.enable()  # a rank that aborts shows where (pytest enables it only in its own)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = fn(*args)
        # No rank leaves the group while another may still be talking to it.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    _leave()


def _env_entry(rank: int, fn: Callable, world: int, port: int, out: str, args: tuple) -> None:
    """As torchrun starts a rank: only the environment variables, no process group."""
    faulthandler.enable()
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    result = fn(*args)
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    _leave()


def _leave() -> None:
    """End a rank whose work is done and saved without the interpreter's teardown.

    Now and then a rank aborted after its last line ("terminate called without an active
    exception", no Python frame): a thread of torch's distributed backend still running while
    the process's C++ objects are destroyed at exit. Nothing is left to do at that point, so
    the rank leaves at once, as a successful one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn: Callable, world: int, tmp: Path, *args: Any, env: bool = False) -> list[Any]:
    """``fn(*args)`` on ``world`` spawned ranks; their results in rank order.

    With ``env=True`` the ranks get torchrun's environment variables instead of a process group
    (for the command line, which starts the group itself).
    """
    out = tmp / f"ranks-{world}-{'env' if env else 'group'}"
    out.mkdir(parents=True, exist_ok=True)
    if env:
        mp.spawn(_env_entry, args=(fn, world, free_port(), str(out), args), nprocs=world)
    else:
        init = f"file://{out / 'init'}"
        mp.spawn(_entry, args=(fn, world, init, str(out), args), nprocs=world)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(world)]


# --------------------------------------------------------------------------- what ranks compute

N_TOKENS = 203
"""Odd, so that 2 and 3 ranks get uneven shares."""
BATCH = 16


def statistics() -> dict[str, Any]:
    """Every token-sum statistic saegeo reduces over ranks, on seeded toy SAEs and tokens."""
    import numpy as np

    import saegeo as sg
    from helpers.sae import random_sae
    from saegeo.acts.codes import encode_codes
    from saegeo.acts.streaming import stream
    from saegeo.effects.delta import delta_mse, swap_deltas
    from saegeo.effects.metrics import evaluate
    from saegeo.geometry.masked_cosine import masked_cosine
    from saegeo.geometry.similarity import decoder_cosine, decoder_cosine_pairs
    from saegeo.stitch.refit import accumulate_stats, fixed_code_metrics, refit_exact
    from saegeo.trees.dag import feature_dag

    g = torch.Generator().manual_seed(1)
    x_BD = torch.randn(N_TOKENS, 16, generator=g, dtype=torch.float64) + 0.5
    small, large = random_sae(12, "jumprelu", seed=2), random_sae(25, "jumprelu", seed=3)
    mp_small = random_sae(6, "matching_pursuit", seed=4)
    mp_large = random_sae(10, "matching_pursuit", seed=5)
    opts: dict[str, Any] = {"batch_size": BATCH, "device": "cpu", "progress": False}
    out: dict[str, Any] = {}
    m = evaluate(large, x_BD, **opts)
    out["metrics"] = (m.mse, m.fvu, m.l0, m.dead_fraction, m.n_tokens, m.freq.numpy())
    stats = accumulate_stats(large, stream(x_BD, **opts))
    out["stats"] = (
        stats.gram.numpy(),
        stats.cross.numpy(),
        stats.target_sq,
        stats.active.numpy(),
        stats.n_tokens,
        stats.moments.m2,
        stats.moments.mean_D.numpy(),
    )
    fit = refit_exact(large, x_BD, **opts)
    out["refit"] = (fit.sae.W_dec.numpy(), fit.sae.b_dec.numpy(), fit.after.mse, fit.before.fvu)
    fixed = fixed_code_metrics(large, [(large.W_dec, large.b_dec)], stream(x_BD, **opts))
    out["fixed"] = (fixed[0].mse, fixed[0].fvu, fixed[0].l0)
    out["delta"] = delta_mse(small, large, x_BD, **opts).to_numpy()
    out["delta_pursuit"] = delta_mse(mp_small, mp_large, x_BD, **opts).to_numpy()
    out["swap"] = swap_deltas(small, large, x_BD, [[0], [1, 2]], [[3], [4]], **opts).to_numpy()
    codes_S = encode_codes(small, x_BD, **opts)
    codes_L = encode_codes(large, x_BD, **opts)
    out["codes"] = codes_L.toarray()
    mcs = masked_cosine(codes_S, codes_L, max_pairs=40)
    out["mcs"] = mcs.toarray()
    out["mcs_sym"] = masked_cosine(
        codes_S, codes_L, directed=False, top_k=2, max_pairs=40
    ).toarray()
    match = decoder_cosine(small, large, k=3, device="cpu", block_elements=64)
    out["cosine"] = (match.values.numpy(), match.indices.numpy())
    pairs = decoder_cosine_pairs(small, large, threshold=0.1, device="cpu", block_elements=64)
    out["cosine_pairs"] = pairs.toarray()
    G = feature_dag(
        sg.Family([small, large]), metric="masked_cosine", threshold=0.2, acts=x_BD, **opts
    )
    out["dag_edges"] = sorted((u, v, round(d["score"], 5)) for u, v, d in G.edges(data=True))
    out["dag_nodes"] = np.array([[d["freq"], d["max_act"]] for _, d in sorted(G.nodes(data=True))])
    return out


def cli_runs(argvs: list[list[str]], ports: list[int]) -> list[dict[str, Any]]:
    """``saegeo.cli.main(argv)`` for each argv (a fresh process group each time, on its own
    port), recording the exit code, stdout, stderr and which atomic writers this rank called."""
    import contextlib
    import io

    from saegeo.cli import main
    from saegeo.runtime import atomic, claim

    writes: list[str] = []

    def counted(module: Any, name: str) -> Callable:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            writes.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("write_text", "write_json", "atomic_files", "atomic_dir"):
        setattr(atomic, name, counted(atomic, name))
    claim.claim_output = counted(claim, "claim_output")  # every output a command holds
    runs = []
    for argv, port in zip(argvs, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        writes.clear()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        runs.append(
            {
                "code": code,
                "stdout": out.getvalue(),
                "stderr": err.getvalue(),
                "writes": list(writes),
                "group_left": dist.is_initialized(),
            }
        )
    return runs


def train_toy(arch: str, batch_size: int) -> dict[str, Any]:
    """A small SAE trained on a toy model's activations: its weights and held-out metrics."""
    from saegeo.training.config import TrainConfig
    from saegeo.training.toy import ToyConfig, make_toy_model
    from saegeo.training.trainer import train_sae

    store = make_toy_model(ToyConfig(d=16, seed=0)).to_store(6000)
    config = TrainConfig(
        arch=arch, width=32, k=4, tokens=6000, batch_size=batch_size, eval_tokens=1000,
        progress=False, device="cpu", seed=3,
    )  # fmt: skip
    sae, report = train_sae(store, config)
    assert report.metrics is not None
    return {
        "W_dec": sae.W_dec.numpy(),
        "W_enc": sae.W_enc.numpy(),
        "threshold": None if sae.threshold is None else sae.threshold.numpy(),
        "fvu": report.metrics.fvu,
        "tokens": report.tokens,
        "steps": report.steps,
    }


def statistics_and_training() -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`statistics`, then :func:`train_toy` at batch 250 per rank (one spawn for both)."""
    return statistics(), train_toy("batchtopk", 250)


def cg_refit() -> dict[str, Any]:
    """The conjugate-gradient refit of a seeded toy SAE (each rank keeps its tokens' codes)."""
    from helpers.sae import random_sae
    from saegeo.stitch.refit import refit_exact

    g = torch.Generator().manual_seed(1)
    x_BD = torch.randn(N_TOKENS, 16, generator=g, dtype=torch.float64) + 0.5
    sae = random_sae(40, "jumprelu", seed=3)
    calls = {"reduce": 0}
    from saegeo.stitch import refit_cg

    reduce = refit_cg.distributed.all_reduce_

    def counted(tensor: torch.Tensor) -> torch.Tensor:
        # The operator's products [live features, d_in]; the sums [F+1, d_in] are reduced once.
        calls["reduce"] += tensor.ndim == 2 and tensor.shape[0] != sae.width + 1
        return reduce(tensor)

    refit_cg.distributed.all_reduce_ = counted  # type: ignore[assignment]
    try:
        fit = refit_exact(sae, x_BD, solver="cg", batch_size=BATCH, device="cpu", progress=False)
    finally:
        refit_cg.distributed.all_reduce_ = reduce  # type: ignore[assignment]
    return {
        "W_dec": fit.sae.W_dec.numpy(),
        "b_dec": fit.sae.b_dec.numpy(),
        "mse": fit.after.mse,
        "mse_before": fit.before.mse,
        "iterations": fit.iterations,
        "reductions": calls["reduce"],
    }
