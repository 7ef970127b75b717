"""Flags and inputs that once ended in tracebacks, silent nonsense or a late failure: each is
now one line, exit 2, with nothing written (the set-up and checks of test_cli_errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli_errors import WIDTHS, _sae, _setup, check_case, family, train

import saegeo as sg
from saegeo.cli import main


def all_nan_acts(root: Path) -> str:
    np.save(root / "nan.npy", np.full((300, 8), np.nan, dtype=np.float32))
    return str(root / "nan.npy")


CASES = {
    "a root with a superscript digit": lambda r: (
        ["tree", *family(r), "--root", "0/²", "--out", str(r / "t.json")],
        "--root",
    ),
    "a seed beyond 64 bits": lambda r: (
        train(r, "--out", str(r / "f"), "--seed", str(2**70)),
        "--seed",
    ),
    "skipping non-finite rows of all-NaN activations": lambda r: (
        ["train", "--acts", all_nan_acts(r), "--widths", "8", "--k", "2"]
        + ["--skip-nonfinite", "--out", str(r / "f")],
        "NaN",
    ),
    "neuronpedia on a local family": lambda r: (
        ["tree", *family(r), "--root", "0/1", "--neuronpedia", "--out", str(r / "t.json")],
        "--neuronpedia",
    ),
    "classify with the larger SAE first": lambda r: (
        ["classify", *reversed(family(r)), "--out", str(r / "t.csv")],
        "narrower",
    ),
    "masked cosine without activations": lambda r: (
        ["tree", *family(r), "--root", "0/1", "--metric", "masked_cosine"]
        + ["--out", str(r / "t.json")],
        "--acts",
    ),
    "a learning rate that diverges": lambda r: (
        train(r, "--out", str(r / "f"), "--lr", "1e6", "--tokens", "12000"),
        "--lr",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_case(CASES[name], tmp_path, capsys)


def test_a_decoder_scaled_by_1e30_keeps_its_cosines(tmp_path, capsys):
    _setup(tmp_path)
    large = _sae(WIDTHS[1], 1)
    sg.save_sae(large.replace(W_dec=large.W_dec * 1e30), tmp_path / "scaled")
    tables = []
    for name, path in [("plain", family(tmp_path)[1]), ("scaled", tmp_path / "scaled")]:
        out = tmp_path / f"{name}.csv"
        assert main(["classify", family(tmp_path)[0], str(path), "--out", str(out)]) == 0
        tables.append(pd.read_csv(out))
    assert (tables[0]["max_cos"] > 0.1).any()
    np.testing.assert_allclose(tables[1]["max_cos"], tables[0]["max_cos"], rtol=1e-5)
    np.testing.assert_array_equal(tables[1]["nearest"], tables[0]["nearest"])
