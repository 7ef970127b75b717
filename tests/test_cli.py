"""The command line: info output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import saegeo as sg
from saegeo.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saegeo", *args], capture_output=True, text=True, check=False
    )


def test_info_describes_each_sae(tmp_path, capsys):
    sg.save_sae(
        sg.SAE(
            W_enc=torch.randn(4, 6),
            b_enc=torch.zeros(6),
            W_dec=torch.randn(6, 4),
            b_dec=torch.zeros(4),
            arch="topk",
            k=2,
        ),
        tmp_path / "topk",
    )
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
