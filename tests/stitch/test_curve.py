"""The Frankenstein curve: each width's Frankenstein against the members, on held-out tokens."""

from __future__ import annotations

import pytest
from helpers.stitch import CPU, subset_sae, toy_acts, toy_family

from saegeo.effects.metrics import evaluate
from saegeo.stitch.curve import frankenstein_curve
from saegeo.stitch.frankenstein import frankenstein, plan_frankenstein


def test_frankenstein_curve_compares_each_width_with_the_members():
    family, x = toy_family(), toy_acts(600)
    held_out = toy_acts(300) + 0.01
    curve = frankenstein_curve(family, x, eval_acts=held_out, **CPU)
    assert curve["kind"].tolist() == ["original"] * 3 + ["frankenstein", "unrefit"] * 3
    frank = curve[curve["kind"] == "frankenstein"]
    assert frank["n_features"].tolist() == [6, 12, 18]
    assert frank["nearest"].tolist() == ["m6", "m12", "m19"]
    sae, _ = frankenstein(family, x, upto=12, **CPU)
    assert frank["mse"].iloc[1] == pytest.approx(evaluate(sae, held_out, device="cpu").mse)
    unrefit = curve[curve["kind"] == "unrefit"]
    direct = evaluate(
        subset_sae(family, plan_frankenstein(family, device="cpu")[-1].features),
        held_out,
        device="cpu",
    )
    assert unrefit["mse"].iloc[-1] == pytest.approx(direct.mse, rel=1e-5)
    originals = curve[curve["kind"] == "original"]
    assert (originals["mse_vs_nearest"] == 1).all()
