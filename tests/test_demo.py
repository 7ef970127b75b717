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

import saegeo.lm.harvest
import saegeo.training.trainer
from saegeo import demo
from saegeo.core.family import Family
from saegeo.demo import DemoSettings, run_demo, stage_keys
from saegeo.io.formats import load_sae
from saegeo.io.store import ActivationStore, ShardWriter
from saegeo.training.toy import ToyConfig, make_toy_model

D_IN = 8
SETTINGS = DemoSettings(
    tokens=3000, multipliers=(1, 2), train_tokens=1024, k=2, context=16, arch="topk"
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
