"""Novel/reconstruction classification, swap groups, the novelty analysis and `saegeo classify`."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.sae import relu_pair

import saegeo as sg
from saegeo.cli import main
from saegeo.errors import SaegeoError
from saegeo.geometry.classify import classify, swap_groups


def unit(*coords: float) -> list[float]:
    v = np.asarray(coords, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def at_cosine(cos: float) -> list[float]:
    """A unit vector in the (e0, e1) plane at cosine ``cos`` from e0."""
    return [cos, math.sqrt(1.0 - cos * cos), 0.0, 0.0]


def test_novel_iff_max_cos_at_most_threshold():
    small = torch.eye(4)[:1].double()
    large = torch.tensor([at_cosine(0.7), at_cosine(0.7000001), at_cosine(0.6999999)]).double()
    # Cosines land within float32 rounding of 0.7: decide the boundary on what was computed.
    table = classify(small, large, threshold=0.7, device="cpu")
    assert list(table.columns) == ["max_cos", "nearest", "kind", "residual"]
    assert table.index.name == "feature" and table["nearest"].tolist() == [0, 0, 0]
    expected = np.where(table["max_cos"] <= 0.7, "novel", "reconstruction")
    assert table["kind"].tolist() == expected.tolist()
    assert table["kind"].tolist()[1:] == ["reconstruction", "novel"]
    exact = classify(torch.eye(2), torch.eye(2), threshold=1.0)
    assert exact["kind"].tolist() == ["novel", "novel"]  # cos 1 <= 1
    nearest = classify(torch.eye(3), torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.0, -1.0]]))
    assert nearest["nearest"].tolist()[0] == 1 and nearest["kind"].tolist()[1] == "novel"


def test_threshold_must_be_a_cosine():
    for bad in (1.5, float("nan"), True):
        with pytest.raises(SaegeoError, match="threshold"):
            classify(torch.eye(2), torch.eye(2), threshold=bad)


def hand_built_pair() -> tuple[sg.SAE, sg.SAE]:
    """Small features e0..e3 and large features linking them above a cosine of 0.7.

    Group A: large 0 is close to small 0 (cos 0.98) and large 1 lies between small 0 and
    small 1 (cos 0.705 with each), so A = small {0, 1} — large {0, 1}. Group B: small 2 —
    large 2 (cos 0.958). Small 3 and large 3 (novel) belong to no group.
    """
    small = torch.tensor(
        [unit(1, 0, 0, 0, 0), unit(0, 1, 0, 0, 0), unit(0, 0, 1, 0, 0), unit(0, 0, 0, 1, 0)]
    )
    large = torch.tensor(
        [unit(1, 0.2, 0, 0, 0), unit(1, 1, 0, 0, 0.1), unit(0, 0, 1, 0, 0.3), unit(0, 0, 0, 0, 1)]
    )
    return sg.SAE.from_decoder(small), sg.SAE.from_decoder(large)


def test_swap_groups_on_a_hand_built_pair():
    small, large = hand_built_pair()
    groups = swap_groups(small, large, threshold=0.7, device="cpu")
    assert groups.index.name == "group"
    assert groups[["small", "large"]].values.tolist() == [[[0, 1], [0, 1]], [[2], [2]]]
    assert groups["n_small"].tolist() == [2, 1] and groups["n_large"].tolist() == [2, 1]
    assert groups["max_cos"].tolist() == pytest.approx([1 / math.sqrt(1.04), 1 / math.sqrt(1.09)])
    # Above a stricter threshold large 1 links nothing and group A shrinks to a pair.
    strict = swap_groups(small, large, threshold=0.9, device="cpu")
    assert strict[["small", "large"]].values.tolist() == [[[0], [0]], [[2], [2]]]
    assert swap_groups(small, large, threshold=0.999).empty


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saegeo", *args], capture_output=True, text=True, check=False
    )


def test_cli_classify_writes_csv(tmp_path, capsys):
    small, large, acts = relu_pair()
    sg.save_sae(small, tmp_path / "small")
    sg.save_sae(large, tmp_path / "large")
    np.save(tmp_path / "acts.npy", acts.numpy())
    out = tmp_path / "out" / "table.csv"
    assert (
        main(
            [
                "classify",
                str(tmp_path / "small"),
                str(tmp_path / "large"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(out, index_col="feature")
    pd.testing.assert_frame_equal(table, classify(small, large), check_dtype=False)
    assert "novel" in capsys.readouterr().out
    assert (
        main(
            [
                "classify",
                str(tmp_path / "small"),
                str(tmp_path / "large"),
                "--threshold",
                "0.5",
                "--acts",
                str(tmp_path / "acts.npy"),
                "--out",
                str(out),
                "--force",  # replaces the previous table
            ]
        )
        == 0
    )
    table = pd.read_csv(out, index_col="feature")
    geometry = classify(small, large)
    assert list(table.columns) == [*geometry.columns, "delta_mse", "explained"]
    np.testing.assert_allclose(table["residual"], geometry["residual"], atol=1e-9)
    np.testing.assert_allclose(table["delta_mse"], sg.delta_mse(small, large, acts), rtol=1e-6)
    explained = sg.explained_share(small, large, acts)["explained"]
    np.testing.assert_allclose(table["explained"], explained, rtol=1e-6)
    assert not list(out.parent.glob(".*tmp"))


def test_cli_classify_bad_input_is_one_line_exit_2(tmp_path, capsys):
    small, _, _ = relu_pair()
    sg.save_sae(small, tmp_path / "small")
    sg.save_sae(sg.SAE.from_decoder(torch.randn(5, 3)), tmp_path / "narrow")
    s, out = str(tmp_path / "small"), str(tmp_path / "t.csv")
    cases = [
        ([s, str(tmp_path / "missing")], "missing"),
        ([s, str(tmp_path / "narrow")], "d_in"),
        ([s, s, "--threshold", "2"], "threshold"),
        ([s, s, "--acts", str(tmp_path / "nope.npy")], "nope.npy"),
    ]
    for args, needle in cases:
        assert main(["classify", *args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and needle in err
    # As a console command: one line on stderr, no traceback.
    result = run_cli("classify", s, str(tmp_path / "narrow"), "--out", out)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "d_in" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.csv").exists()
