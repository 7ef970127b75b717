"""The demo's stage cache: each stage is rebuilt exactly when a setting it depends on changes.

The harvest is replaced by toy activations and training by a short run, so the whole
pipeline (family, novelty, trees, Frankenstein, report) runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import saegeo.effects.novelty
import saegeo.lm.harvest
import saegeo.training.trainer
from saegeo import demo
from saegeo.acts.store import ActivationStore, ShardWriter
from saegeo.demo import DemoSettings, run_demo, stage_keys
from saegeo.effects.novelty import PUBLISHED_PAIR_NAME, FamilyNovelty, published_pair_table
from saegeo.errors import ArgumentError
from saegeo.formats.family import Family
from saegeo.formats.sae_files import load_sae
from saegeo.training.toy import ToyConfig, make_toy_model

D_IN = 8
SETTINGS = DemoSettings(
    tokens=3000, retrain=True, multipliers=(1, 2), train_tokens=1024, k=2, context=16, arch="topk"
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count harvests and trainings, standing in for both with tiny toy versions."""
    counts = {"harvest": 0, "train": 0}
    real_train = saegeo.training.trainer.train_family

    def fake_harvest(model, texts, out, *, max_tokens, **_):
        counts["harvest"] += 1
        acts = (
            make_toy_model(ToyConfig(d=D_IN, n_roots=4, branching=3, root_prob=0.3))
            .sample(max_tokens)
            .acts
        )
        writer = ShardWriter(out, D_IN, shard_tokens=1000, meta={"model": "toy", "layer": 0})
        writer.add(acts)
        return writer.close()

    def small_train(store, widths, config, out_dir=None):
        counts["train"] += 1
        config = dataclasses.replace(config, batch_size=256, eval_tokens=256, progress=False)
        return real_train(store, widths, config, out_dir=out_dir)

    monkeypatch.setattr(saegeo.lm.harvest, "harvest", fake_harvest)
    monkeypatch.setattr(saegeo.training.trainer, "train_family", small_train)
    return counts


def _mtimes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("index.html", "stages.json", "settings.json")
    }


def _report_widths(root: Path) -> dict[str, list[int]]:
    """The family widths each report file describes."""
    report = root / "report"
    summary = pd.read_csv(report / "novelty_summary.csv")
    features = pd.read_csv(report / "novelty_features.csv")
    curves = pd.read_csv(report / "novelty_curves.csv")
    trees = json.loads((report / "trees.json").read_text())
    comparison = pd.read_csv(report / "frankenstein_comparison.csv")
    stitched = json.loads((report / "frankenstein_report.json").read_text())
    return {
        "family.csv": sorted(pd.read_csv(report / "family.csv")["width"]),
        "novelty_summary.csv": sorted({*summary["small_width"], *summary["large_width"]}),
        # Features per adjacent pair: the larger member's width.
        "novelty_features.csv": sorted(features.groupby("pair").size()),
        "novelty_curves.csv": sorted(
            summary["large_width"].iloc[pair] for pair in set(curves["pair"])
        ),
        "trees.json": sorted({level["width"] for level in trees["levels"]}),
        "frankenstein_comparison.csv": sorted(
            set(comparison.loc[comparison["kind"] == "original", "n_features"])
        ),
        "frankenstein_report.json": sorted(
            {int(name.rsplit("-", 1)[1]) for name in stitched["sources"]}
        ),
    }


def _describing(widths: list[int]) -> dict[str, list[int]]:
    """What :func:`_report_widths` reads from a report on the family of ``widths``."""
    return {
        "family.csv": widths,
        "novelty_summary.csv": widths,
        "novelty_features.csv": widths[1:],
        "novelty_curves.csv": widths[1:],
        "trees.json": widths,
        "frankenstein_comparison.csv": widths,
        "frankenstein_report.json": widths,
    }


def test_changed_settings_rebuild_what_depends_on_them(tmp_path, calls):
    run_demo(tmp_path, settings=SETTINGS, progress=False)
    assert calls == {"harvest": 1, "train": 1}
    first = _mtimes(tmp_path)
    assert _report_widths(tmp_path) == _describing([8, 16])

    # Same settings: nothing is recomputed, not one file rewritten.
    run_demo(tmp_path, settings=SETTINGS, progress=False)
    assert calls == {"harvest": 1, "train": 1}
    assert _mtimes(tmp_path) == first

    # A training setting: the family and every report section change, the activations do not.
    wider = dataclasses.replace(SETTINGS, multipliers=(1, 2, 4))
    run_demo(tmp_path, settings=wider, progress=False)
    assert calls == {"harvest": 1, "train": 2}
    second = _mtimes(tmp_path)
    acts = [name for name in first if name.startswith("acts")]
    assert acts and all(second[name] == first[name] for name in acts)
    assert Family.load(tmp_path / "family").widths == [8, 16, 32]
    assert _report_widths(tmp_path) == _describing([8, 16, 32])
    assert load_sae(tmp_path / "report" / "frankenstein").d_in == D_IN
    assert not list((tmp_path / "family").glob("*-64"))

    # A harvest setting: everything downstream is rebuilt.
    more = dataclasses.replace(wider, tokens=3500)
    run_demo(tmp_path, settings=more, progress=False)
    assert calls == {"harvest": 2, "train": 3}
    assert ActivationStore.open(tmp_path / "acts").n_tokens == 3500


def test_stage_keys_follow_their_settings():
    base = stage_keys(SETTINGS, 1000)
    seed = stage_keys(dataclasses.replace(SETTINGS, seed=1), 1000)
    assert seed["acts"] == base["acts"]
    assert all(seed[name] != base[name] for name in base if name != "acts")
    layer = stage_keys(dataclasses.replace(SETTINGS, layer=3), 1000)
    assert all(layer[name] != base[name] for name in base)
    held_out = stage_keys(SETTINGS, 2000)
    changed = {name for name in base if held_out[name] != base[name]}
    assert changed == {"novelty", "frankenstein"}


def test_interrupted_training_starts_over(tmp_path, calls, monkeypatch):
    def broken(*args, **kwargs):
        (tmp_path / "family").mkdir()
        (tmp_path / "family" / "family.json").write_text("{}")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(saegeo.training.trainer, "train_family", broken)
        with pytest.raises(KeyboardInterrupt):
            demo.demo_data(tmp_path, SETTINGS, progress=False)
    data = demo.demo_data(tmp_path, SETTINGS, progress=False)
    assert calls == {"harvest": 1, "train": 1}
    assert data.family.widths == [8, 16]


# --------------------------------------------------------------------------- the shipped family

SHIPPED_WIDTHS = [576, 1152, 2304]


def test_shipped_family_is_what_the_readme_states():
    family = Family.load(demo.SHIPPED_FAMILY)
    assert family.widths == SHIPPED_WIDTHS and family.d_in == 576
    assert {sae.arch for sae in family} == {"jumprelu"}
    record = demo.shipped_record()
    assert record["config"]["arch"] == "batchtopk"
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "BatchTopK family (k=32) of widths 576, 1152 and 2304" in readme
    assert f"after block {record['harvest']['layer']} of SmolLM2" in readme
    relu = demo.shipped_record(demo.SHIPPED_RELU_FAMILY)
    assert relu["config"]["arch"] == "relu" and relu["config"]["target_l0"] is None
    assert relu["harvest"] == record["harvest"] and relu["acts_tokens"] == record["acts_tokens"]
    assert {sae.arch for sae in Family.load(demo.SHIPPED_RELU_FAMILY)} == {"relu"}
    assert f"λ = {relu['config']['sparsity_coefficient']:g}" in readme
    size = sum(
        p.stat().st_size
        for family_dir in demo.SHIPPED_FAMILIES.values()
        for p in family_dir.rglob("*")
        if p.is_file()
    )
    assert size < 25 * 2**20


@pytest.mark.parametrize("family_dir", demo.SHIPPED_FAMILIES.values(), ids=demo.SHIPPED_FAMILIES)
def test_shipped_families_are_float16_saelens_members_at_the_demo_site(family_dir):
    family = Family.load(family_dir)
    assert family.widths == SHIPPED_WIDTHS and family.d_in == 576
    assert all(sae.metadata["hook_name"] == "blocks.5.hook_resid_post" for sae in family)
    cfgs = [json.loads(p.read_text()) for p in family_dir.glob("*/cfg.json")]
    assert len(cfgs) == 3 and {cfg["dtype"] for cfg in cfgs} == {"float16"}
    metrics = pd.read_csv(family_dir / "metrics.csv")
    assert list(metrics["width"]) == SHIPPED_WIDTHS
    assert {"near_duplicate", "near_dead", "along_mean"} <= set(metrics)
    stability = json.loads((family_dir / "seed_stability.json").read_text())
    assert stability["width"] == 576 and stability["curve"]


@pytest.mark.parametrize("family_dir", demo.SHIPPED_FAMILIES.values(), ids=demo.SHIPPED_FAMILIES)
def test_shipped_families_reload_in_saelens_with_the_same_outputs(family_dir):
    sae_lens = pytest.importorskip("sae_lens")
    family = Family.load(family_dir)
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0)) * 3
    for sae in family:
        path = family_dir / sae.name
        lens = sae_lens.SAE.load_from_disk(str(path), dtype="float32")
        with torch.no_grad():
            codes = lens.encode(x)
            torch.testing.assert_close(codes, sae.encode(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(lens.decode(codes), sae.decode(codes), atol=1e-4, rtol=1e-4)


def test_default_settings_are_the_shipped_site():
    harvest = demo.shipped_record()["harvest"]
    settings = DemoSettings()
    assert not settings.retrain
    assert {name: getattr(settings, name) for name in harvest} == harvest


def test_the_demo_harvests_only_the_held_out_tokens_for_the_shipped_family(tmp_path, monkeypatch):
    harvested = []

    def fake_harvest(model, texts, out, *, max_tokens, layer, **_):
        harvested.append((max_tokens, layer))
        acts = torch.randn(max_tokens, 576, generator=torch.Generator().manual_seed(0))
        writer = ShardWriter(out, 576, shard_tokens=1000, meta={"model": model, "layer": layer})
        writer.add(acts)
        return writer.close()

    monkeypatch.setattr(saegeo.lm.harvest, "harvest", fake_harvest)
    settings = dataclasses.replace(DemoSettings(), tokens=2000)
    data = demo.demo_data(tmp_path, settings, progress=False)
    assert harvested == [(2000, 5)] and not (tmp_path / "family").exists()
    assert data.family_dir == demo.SHIPPED_FAMILY and data.family.widths == SHIPPED_WIDTHS
    with pytest.raises(ArgumentError, match="layer=5; keep it, or set retrain=True"):
        demo.demo_data(tmp_path, dataclasses.replace(settings, layer=3), progress=False)


def test_the_comparison_with_the_published_pair_says_where_it_agrees():
    summary = pd.DataFrame(
        {
            "small": ["a", "b"],
            "large": ["b", "c"],
            "small_width": [4, 8],
            "large_width": [8, 16],
            "novel_decreases": [3, 12],
            "novel_does_not_decrease": [1, 2],
            "reconstruction_decreases": [1, 2],
            "reconstruction_does_not_decrease": [3, 0],
        }
    )
    features = pd.DataFrame(
        {
            "kind": ["novel"] * 4 + ["reconstruction"],
            "explained": [0.9, 0.8, 0.2, 0.1, 0.9],
            "delta_mse": [1.0, -1.0, -1.0, -1.0, 1.0],
        }
    )
    result = FamilyNovelty(summary, features, pd.DataFrame())
    text = demo.compare_with_published(result)
    assert "Of the novel features, 50% are already rebuilt" in text
    assert "50% of those raise the MSE when added, and 100% of the rest lower it" in text
    paper = "“Stitching SAEs of different sizes”"
    assert f"Agrees with {paper} that novel features lower the narrower SAE's MSE" in text
    assert "86%" in text and "75%" in text  # 12/14 and 3/4 novel features lower the MSE
    assert f"Disagrees with {paper} that novel features are a minority" in text
    assert f"Agrees for 1 of 2 pairs with {paper} that reconstruction features raise it" in text
    table = published_pair_table(summary)
    assert list(table["pair"]) == [PUBLISHED_PAIR_NAME, "a → b", "b → c"]
    assert table.loc[0, "novel share"] == "657 / 1,536 = 43%"
    assert table.loc[2, "reconstruction with delta_mse >= 0"] == "0 / 2 = 0%"


def test_the_former_names_of_the_comparison_warn_and_still_work():
    summary = pd.DataFrame(
        {
            "small": ["a"],
            "large": ["b"],
            "small_width": [4],
            "large_width": [8],
            "novel_decreases": [3],
            "novel_does_not_decrease": [1],
            "reconstruction_decreases": [1],
            "reconstruction_does_not_decrease": [3],
        }
    )
    result = FamilyNovelty(summary, pd.DataFrame(), pd.DataFrame())
    with pytest.warns(FutureWarning, match="use compare_with_published instead"):
        assert demo.seed_003_comparison(result) == demo.compare_with_published(result)
    with pytest.warns(FutureWarning, match="use published_pair_table instead"):
        old = saegeo.effects.novelty.seed_003_table(summary)
    pd.testing.assert_frame_equal(old, published_pair_table(summary))
    with pytest.warns(FutureWarning, match="use PUBLISHED_GPT2_PAIR instead"):
        from saegeo.effects.novelty import SEED_003_FIRST_PAIR
    assert SEED_003_FIRST_PAIR == saegeo.effects.novelty.PUBLISHED_GPT2_PAIR
    with pytest.raises(AttributeError, match="no attribute 'NO_SUCH_NAME'"):
        saegeo.effects.novelty.NO_SUCH_NAME  # noqa: B018


def _summary(names: list[str], widths: list[int], cells: list[tuple[int, int, int, int]]):
    """A FamilyNovelty summary: per pair the novel (lower, not) and reconstruction (lower,
    not) counts."""
    return pd.DataFrame(
        {
            "small": names[:-1],
            "large": names[1:],
            "small_width": widths[:-1],
            "large_width": widths[1:],
            "novel_decreases": [c[0] for c in cells],
            "novel_does_not_decrease": [c[1] for c in cells],
            "reconstruction_decreases": [c[2] for c in cells],
            "reconstruction_does_not_decrease": [c[3] for c in cells],
        }
    )


def test_the_architectures_are_compared_on_the_papers_figures_pooled_over_pairs():
    topk = _summary(["t4", "t8", "t16"], [4, 8, 16], [(1, 5, 0, 2), (2, 12, 0, 2)])
    relu = _summary(["r4", "r8", "r16"], [4, 8, 16], [(3, 0, 1, 4), (6, 1, 2, 7)])
    gains = pd.DataFrame(
        {
            "family": ["TopK"] * 3 + ["ReLU"] * 3,
            "name": ["t4", "t8", "t16", "r4", "r8", "r16"],
            "gain": [1.0, 1.0001, 0.999, 1.05, 1.04, 1.03],
        }
    )
    results = {
        "TopK": FamilyNovelty(topk, pd.DataFrame(), pd.DataFrame()),
        "ReLU": FamilyNovelty(relu, pd.DataFrame(), pd.DataFrame()),
    }
    table = demo.architecture_table({k: r.summary for k, r in results.items()}, gains)
    assert list(table["family"]) == [demo.report.PAPER_FAMILY, "TopK", "TopK", "ReLU", "ReLU"]
    assert list(table["narrower gain"]) == ["–", "1.000", "1.000", "1.050", "1.040"]
    assert table.loc[3, "novel share"] == "3 / 8 = 38%"
    text = demo.compare_architectures(results, gains)
    # Pooled: TopK novel 20/24, lowering 3/20, raising 4/4; ReLU 10/24, 9/10, 11/14.
    assert "features, 83% in the TopK family and 42% in the ReLU family are novel (43% in" in text
    assert "lower the narrower SAE's MSE are 15% in the TopK family and 90% in the ReLU" in text
    assert "raise it, 100% in the TopK family and 79% in the ReLU family (68%)" in text
    assert "the ReLU family lies nearer the paper" in text
    assert "1.040–1.050 in the ReLU family: the ReLU members reconstruct short" in text
    assert "is 1.000 in the TopK family" in text and "the TopK members" not in text


def test_the_report_on_the_shipped_families_sets_both_beside_the_paper(tmp_path, monkeypatch):
    def fake_harvest(model, texts, out, *, max_tokens, layer, **_):
        acts = 4 * torch.randn(max_tokens, 576, generator=torch.Generator().manual_seed(1))
        writer = ShardWriter(out, 576, shard_tokens=1000, meta={"model": model, "layer": layer})
        writer.add(acts)
        return writer.close()

    monkeypatch.setattr(saegeo.lm.harvest, "harvest", fake_harvest)
    settings = dataclasses.replace(DemoSettings(), tokens=1500)
    page = run_demo(tmp_path, settings=settings, progress=False).read_text()
    report = tmp_path / "report"
    relu = pd.read_csv(report / "relu_novelty_summary.csv")
    assert list(relu["small"]) == ["relu-576", "relu-1152"]
    gains = pd.read_csv(report / "reconstruction_gain.csv")
    assert list(gains["family"]) == ["BatchTopK"] * 3 + ["ReLU + L1"] * 3
    assert "Two architectures: BatchTopK and ReLU + L1" in page
    assert "relu-1152 → relu-2304" in page and "batchtopk-1152 → batchtopk-2304" in page
    assert "family lies nearer the paper" in page
    assert "matched one to one (Hungarian matching" in page  # both families' seed stability
