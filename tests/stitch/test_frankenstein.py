"""Frankenstein SAEs: the stitching plan's semantics, the metrics of every step against direct
evaluation, saving, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers.stitch import CPU, D, subset_sae, toy_acts, toy_family

from saegeo.cli import main
from saegeo.core.sae import SAE
from saegeo.effects.metrics import evaluate
from saegeo.errors import SaegeoError
from saegeo.formats.sae_files import load_sae, save_sae
from saegeo.geometry.classify import swap_groups
from saegeo.geometry.similarity import decoder_cosine
from saegeo.stitch.frankenstein import frankenstein, frankenstein_steps, plan_frankenstein

# --------------------------------------------------------------------------- the plan


def test_feature_at_threshold_is_added():
    small = SAE.from_decoder(torch.tensor([[1.0, 0.0, 0.0]]))
    large = SAE.from_decoder(torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]))
    cos = float(decoder_cosine(small, large, device="cpu").values[0, 0])
    at = plan_frankenstein([small, large], threshold=cos, device="cpu")
    assert at[1].added == (0, 1)
    below = float(np.nextafter(np.float32(cos), np.float32(-1)))
    assert plan_frankenstein([small, large], threshold=below, device="cpu")[1].added == (1,)


def test_features_compare_with_the_frankenstein_before_the_step():
    e = torch.eye(4)
    base = SAE.from_decoder(e[:1])
    # Two copies of a novel direction in one member are both added...
    second = SAE.from_decoder(torch.stack([e[1], e[1], e[0]]))
    # ...and a later member's copy of it is not, nor is its copy of the base feature.
    third = SAE.from_decoder(torch.stack([e[1], e[0], e[2], e[3]]))
    steps = plan_frankenstein([base, second, third], device="cpu")
    assert [s.added for s in steps] == [(0,), (0, 1), (2, 3)]
    assert steps[-1].features == ((0, 0), (1, 0), (1, 1), (2, 2), (2, 3))
    assert [s.offered for s in steps] == [1, 3, 4]


def test_swap_replaces_groups_by_their_wider_features():
    family = toy_family()
    steps = plan_frankenstein(family, swap=True, device="cpu")
    # Step 1: every base feature has an identical child in the 12-wide member.
    assert steps[1].swapped_out == tuple((0, j) for j in range(6))
    assert steps[1].swapped_in == tuple(range(6))
    assert sorted(steps[1].features) == [(1, j) for j in range(12)]
    # Step 2: the blend joins the group of directions 0 and 1 (cos 0.71 > 0.7).
    groups = swap_groups(family[1], family[2], device="cpu")
    sizes = sorted(zip(groups["n_small"], groups["n_large"], strict=True))
    assert sizes == [(1, 1)] * 10 + [(2, 3)]
    assert len(steps[2].features) == 19 and set(steps[2].swapped_in) == set(range(12)) | {18}


def test_without_swap_reconstruction_features_are_left_out():
    steps = plan_frankenstein(toy_family(), device="cpu")
    assert [len(s.added) for s in steps] == [6, 6, 6]
    assert (2, 18) not in steps[-1].features  # the blend is a reconstruction feature


def test_upto_is_a_width_or_an_index():
    family = toy_family()
    assert len(plan_frankenstein(family, upto=12, device="cpu")) == 2
    assert len(plan_frankenstein(family, upto=18, device="cpu")) == 2
    assert len(plan_frankenstein(family, upto=1, device="cpu")) == 2  # below width 6: an index
    assert len(plan_frankenstein(family, upto=0, device="cpu")) == 1
    with pytest.raises(SaegeoError, match="upto"):
        plan_frankenstein(family, upto=4, device="cpu")


# --------------------------------------------------------------------------- the builder


def test_frankenstein_metrics_match_direct_evaluation():
    family, x = toy_family(), toy_acts()
    sae, report = frankenstein(family, x, **CPU)
    steps = plan_frankenstein(family, device="cpu")
    frame = report.to_frame()
    assert frame["n_features"].tolist() == [6, 12, 18]
    assert report.provenance == steps[-1].features
    for row, step in zip(frame.itertuples(), steps, strict=True):
        direct = evaluate(subset_sae(family, step.features), x, device="cpu")
        assert row.mse_before == pytest.approx(direct.mse, rel=1e-5)
        assert row.fvu_before == pytest.approx(direct.fvu, rel=1e-5)
        assert row.l0_before == pytest.approx(direct.l0)
        assert row.mse_after <= row.mse_before
        assert row.l0_after == row.l0_before
    final = evaluate(sae, x, device="cpu")
    assert final.mse == pytest.approx(frame["mse_after"].iloc[-1], rel=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.width))
    # The codes are those of the source features (scaled by the folded decoder norms).
    source_codes = subset_sae(family, steps[-1].features).encode(x)
    assert torch.equal(sae.encode(x) != 0, source_codes != 0)


def test_each_step_is_refit_as_if_it_were_the_last():
    family, x = toy_family(), toy_acts()
    _, report = frankenstein(family, x, **CPU)
    sae_upto, report_upto = frankenstein(family, x, upto=12, **CPU)
    assert report_upto.steps[-1].mse_after == pytest.approx(report.steps[1].mse_after)
    assert evaluate(sae_upto, x, device="cpu").mse == pytest.approx(
        report.steps[1].mse_after, rel=1e-5
    )


def test_swap_frankenstein_ends_at_the_widest_member():
    family, x = toy_family(), toy_acts()
    sae, report = frankenstein(family, x, swap=True, retrain="none", **CPU)
    assert sorted(report.provenance) == [(2, j) for j in range(19)]
    widest = evaluate(family[2], x, device="cpu")
    assert report.steps[-1].mse_before == pytest.approx(widest.mse, rel=1e-5)
    assert math.isnan(report.steps[-1].mse_after)


def test_topk_members_are_converted():
    family, x = toy_family("topk"), toy_acts()
    sae, report = frankenstein(family, x, **CPU)
    assert sae.arch == "jumprelu"
    converted = family[0].to_jumprelu(x)
    assert report.steps[0].l0_before == pytest.approx(evaluate(converted, x, device="cpu").l0)
    assert all(s.mse_after <= s.mse_before for s in report.steps)


def test_matching_pursuit_family():
    family, x = toy_family("matching_pursuit"), toy_acts(400)
    sae, report = frankenstein(family, x, **CPU)
    assert sae.arch == "matching_pursuit" and sae.width == 18
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(18))
    # "after" is measured by re-encoding with the refit dictionary.
    assert report.steps[-1].mse_after == pytest.approx(evaluate(sae, x, device="cpu").mse)


def test_sgd_retrain_refits_the_last_step_only():
    family, x = toy_family(), toy_acts(500)
    sae, report = frankenstein(
        family, x, retrain="sgd", sgd_tokens=20 * 500, sgd_lr=1e-2, batch_size=250, **CPU
    )
    assert report.refit_method == "adam"
    assert [math.isnan(s.mse_after) for s in report.steps] == [True, True, False]
    assert report.steps[-1].mse_after < report.steps[-1].mse_before
    assert evaluate(sae, x, device="cpu").mse == pytest.approx(report.steps[-1].mse_after, rel=1e-5)


def test_stitched_sae_reloads_in_saegeo_and_saelens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    family, x = toy_family(), toy_acts(300)
    sae, _ = frankenstein(family, x, **CPU)
    save_sae(sae, tmp_path / "frank")
    ours = load_sae(tmp_path / "frank")
    torch.testing.assert_close(ours(x), sae(x))
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "frank"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(lens(x), sae(x), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    family, x = toy_family(), toy_acts(50)
    with pytest.raises(SaegeoError, match="retrain"):
        frankenstein(family, x, retrain="adam", **CPU)  # type: ignore[arg-type]
    with pytest.raises(SaegeoError, match="d_in"):
        frankenstein(family, torch.randn(10, D + 1), **CPU)
    with pytest.raises(SaegeoError, match="cannot combine jumprelu, matching_pursuit"):
        frankenstein([family[0], toy_family("matching_pursuit")[1]], x, **CPU)


@pytest.mark.parametrize(
    ("arch", "retrain"),
    [("jumprelu", "exact"), ("topk", "exact"), ("matching_pursuit", "exact"), ("relu", "none")],
)
def test_steps_equal_one_frankenstein_per_width(arch, retrain):
    family, x = toy_family(arch), toy_acts(400)
    stitched = frankenstein_steps(family, x, retrain=retrain, **CPU)
    assert len(stitched.saes) == len(stitched.unrefit) == len(family)
    for i, member in enumerate(family):
        sae, report = frankenstein(family, x, upto=member.width, retrain=retrain, **CPU)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(stitched.saes[i], name), getattr(sae, name))
        assert stitched.saes[i].metadata == sae.metadata
        assert stitched.unrefit[i].width == sae.width
        assert same_step(stitched.report.steps[i], report.steps[-1])
    assert all(map(same_step, stitched.report.steps, report.steps))
    assert stitched.report.provenance == report.provenance


def same_step(a, b) -> bool:
    """Step reports equal, their metrics up to float rounding (sums over other unions)."""
    a, b = dataclasses.asdict(a), dataclasses.asdict(b)
    floats = [k for k, v in a.items() if isinstance(v, float)]
    rounded = {k: v for k, v in a.items() if k not in floats}
    return rounded == {k: v for k, v in b.items() if k not in floats} and all(
        a[k] == pytest.approx(b[k], rel=1e-6, nan_ok=True) for k in floats
    )


def test_steps_train_every_step_with_sgd():
    family, x = toy_family(), toy_acts(400)
    stitched = frankenstein_steps(family, x, retrain="sgd", sgd_tokens=800, **CPU)
    assert stitched.report.refit_method == "adam"
    for step, sae, unrefit in zip(
        stitched.report.steps, stitched.saes, stitched.unrefit, strict=True
    ):
        assert math.isfinite(step.mse_after)
        assert not torch.equal(sae.W_dec, unrefit.W_dec)
    _, report = frankenstein(family, x, retrain="sgd", sgd_tokens=800, **CPU)
    assert math.isnan(report.steps[0].mse_after) and math.isfinite(report.steps[-1].mse_after)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def family_on_disk(tmp_path):
    for sae in toy_family():
        save_sae(sae, tmp_path / "family" / sae.name)
    np.save(tmp_path / "acts.npy", toy_acts(300).numpy())
    return tmp_path


def test_cli_stitch_writes_one_directory(family_on_disk, capsys):
    out = family_on_disk / "frank"
    code = main(
        [
            "stitch",
            str(family_on_disk / "family"),
            "--acts",
            str(family_on_disk / "acts.npy"),
            "--out",
            str(out),
            "--swap",
            "--upto",
            "12",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "cfg.json",
        "report.json",
        "sae_weights.safetensors",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "saegeo.frankenstein_report.v1" and report["swap"] is True
    assert len(report["steps"]) == 2
    assert load_sae(out).width == report["steps"][-1]["n_features"]
    assert sorted(p.name for p in family_on_disk.iterdir()) == ["acts.npy", "family", "frank"]
    assert "frankenstein: 12 features" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing_acts", "wrong_d_in", "bad_upto"])
def test_cli_stitch_user_errors_exit_2(family_on_disk, capsys, problem):
    acts = family_on_disk / "acts.npy"
    extra: list[str] = []
    if problem == "missing_acts":
        acts = family_on_disk / "nope.npy"
    elif problem == "wrong_d_in":
        np.save(acts, np.zeros((10, D + 1), dtype=np.float32))
    else:
        extra = ["--upto", "5"]
    out = family_on_disk / "frank"
    code = main(
        ["stitch", str(family_on_disk / "family"), "--acts", str(acts), "--out", str(out), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("saegeo stitch: error:") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.gpu
def test_gpu_frankenstein_matches_cpu():
    family, x = toy_family(), toy_acts()
    cpu_sae, cpu = frankenstein(family, x, swap=True, **CPU)
    gpu_sae, gpu = frankenstein(family, x, swap=True, device="cuda", progress=False)
    assert gpu.provenance == cpu.provenance
    for a, b in zip(gpu.steps, cpu.steps, strict=True):
        assert a.mse_after == pytest.approx(b.mse_after, rel=1e-4)
    torch.testing.assert_close(gpu_sae(x), cpu_sae(x), rtol=1e-4, atol=1e-4)
