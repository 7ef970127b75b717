"""The command line: info output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from helpers.sae import gaussian_sae

import saegeo as sg
from saegeo.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saegeo", *args], capture_output=True, text=True, check=False
    )


def test_info_describes_each_sae(tmp_path, capsys):
    sg.save_sae(gaussian_sae(4, 6, arch="topk", k=2), tmp_path / "topk")
    sg.save_sae(sg.SAE.from_decoder(torch.randn(12, 4)), tmp_path / "mp")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arch topk" in out and "k=2" in out and "width 12" in out
    assert "decoder norms" in out and "widths [6, 12]" in out


def test_user_errors_are_one_line_exit_2(tmp_path):
    result = run_cli("info", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing" in result.stderr
    assert "Traceback" not in result.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text(json.dumps({"architecture": "standard"}))
    result = run_cli("info", str(bad))
    assert result.returncode == 2 and "sae_weights.safetensors" in result.stderr


def _choices(command: str) -> dict[str, tuple[str, ...]]:
    from saegeo.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return {a.dest: tuple(a.choices) for a in sub._actions if a.choices is not None}


def test_choices_are_the_library_literals():
    from typing import get_args

    from saegeo.effects.hybrid import TOPK_MODES
    from saegeo.lm.config import MODEL_DTYPES, STORE_DTYPES
    from saegeo.stitch.config import RETRAINS
    from saegeo.stitch.refit import SOLVERS
    from saegeo.training.config import TRAIN_ARCHS, PenaltyKind, Prefixes
    from saegeo.trees.dag import Metric

    assert _choices("classify") == {"topk": TOPK_MODES}
    assert _choices("tree")["metric"] == get_args(Metric)
    assert _choices("stitch") == {"retrain": RETRAINS, "solver": SOLVERS}
    harvest = _choices("harvest")
    assert (harvest["dtype"], harvest["model_dtype"]) == (STORE_DTYPES, MODEL_DTYPES)
    train = _choices("train")
    assert train["arch"] == TRAIN_ARCHS
    assert (train["sparsity"], train["prefixes"]) == (get_args(PenaltyKind), get_args(Prefixes))


def test_argument_errors_show_the_flag_that_sets_them():
    from saegeo.cli import build_parser, flag_message
    from saegeo.errors import ArgumentError

    sub = build_parser()._subparsers._group_actions[0].choices["harvest"]  # type: ignore[union-attr]
    tokens = ArgumentError("max_tokens", 0, "must be at least 1", owner="HarvestConfig")
    assert str(tokens) == "HarvestConfig.max_tokens=0: must be at least 1"
    assert flag_message(tokens, sub) == "--tokens 0: must be at least 1"
    assert flag_message(ArgumentError("gguf_file", "a.gguf", "x"), sub) == "--gguf-file a.gguf: x"
    # Without a flag for it (harvest has no --shard-tokens), the Python name stays.
    shard = ArgumentError("shard_tokens", 0, "must be at least 1", owner="HarvestConfig")
    assert flag_message(shard, sub) == str(shard)
    assert flag_message(sg.SaegeoError("plain"), sub) == "plain"


def _stitch_inputs(root):
    from helpers.sae import save_family_and_acts

    save_family_and_acts(root, ((24, 2), (48, 3)), 600)
    return [str(root / "w24"), str(root / "w48"), "--acts", str(root / "acts.npy")]


def test_stitch_reports_the_refit_solver_and_either_solver_gives_the_same_fit(tmp_path, capsys):
    inputs = _stitch_inputs(tmp_path)
    reports = {}
    for solver in ("cholesky", "cg"):
        out = tmp_path / solver
        assert main(["stitch", *inputs, "--solver", solver, "--out", str(out)]) == 0
        reports[solver] = json.loads((out / "report.json").read_text())
        assert f"exact refit by {solver}" in capsys.readouterr().out
    dense, cg = reports["cholesky"], reports["cg"]
    assert (dense["refit_method"], cg["refit_method"]) == ("cholesky", "cg")
    assert dense["refit_iterations"] == 0 and cg["refit_iterations"] > 0
    assert dense["refit_tol"] is None and cg["refit_tol"] == 1e-8
    assert dense["refit_residual"] < 1e-9 and cg["refit_residual"] < 1e-3
    for step_dense, step_cg in zip(dense["steps"], cg["steps"], strict=True):
        assert step_cg["refit_iterations"] > 0 and step_dense["refit_iterations"] == 0
        assert abs(step_cg["mse_after"] / step_dense["mse_after"] - 1) < 1e-6
        assert step_cg["mse_after"] < step_cg["mse_before"]


def test_stitch_refuses_a_refit_that_would_not_fit_before_allocating_it(tmp_path, monkeypatch):
    import contextlib
    import io

    from saegeo.runtime import memory

    inputs = _stitch_inputs(tmp_path)
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 50_000)
    for solver, flags in (("cholesky", "--solver cg or --upto"), ("cg", "--limit or --upto")):
        out = tmp_path / solver
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["stitch", *inputs, "--solver", solver, "--out", str(out)])
        line = err.getvalue().strip()
        assert code == 2 and line.count("\n") == 0, line
        assert "needs about" in line and "is available" in line and flags in line, line
        assert not out.exists()


def test_match_writes_the_matched_pairs_and_guards_its_output(tmp_path, capsys):
    import pandas as pd

    g = torch.Generator().manual_seed(0)
    a, b = gaussian_sae(8, 10, generator=g), gaussian_sae(8, 14, generator=g)
    sg.save_sae(a, tmp_path / "a")
    sg.save_sae(b, tmp_path / "b")
    out = tmp_path / "matches.csv"
    assert main(["match", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "matched pairs" in capsys.readouterr().out
    written = pd.read_csv(out, index_col="pair")
    expected = sg.match_features(sg.load_sae(tmp_path / "a"), sg.load_sae(tmp_path / "b")).pairs
    pd.testing.assert_frame_equal(written, expected, check_exact=False, atol=1e-9)
    args = ["match", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--encoder"]
    assert main(args) == 2  # a previous output needs --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    notes = tmp_path / "notes.csv"
    notes.write_text("name,value\n")
    assert main(["match", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(notes)]) == 2
    assert notes.read_text() == "name,value\n"
    sg.save_sae(gaussian_sae(6, 10, generator=g), tmp_path / "other")
    result = run_cli(
        "match", str(tmp_path / "a"), str(tmp_path / "other"), "--out", str(tmp_path / "x.csv")
    )
    assert result.returncode == 2 and "d_in" in result.stderr and "Traceback" not in result.stderr
