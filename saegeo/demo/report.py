"""The demo's report: every analysis on the demo data, cached section by section."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from saegeo.acts.store import ActivationStore
from saegeo.demo.data import DemoData
from saegeo.demo.settings import (
    EVAL_TOKENS,
    NOVELTY_POINTS,
    NOVELTY_TOKENS,
    SHIPPED_FAMILY,
    STITCH_TOKENS,
    TREE_COUNT,
    TREE_MIN_SIZE,
    TREES_SHOWN,
    shipped_record,
)
from saegeo.demo.stages import Stages, stage_keys
from saegeo.deprecation import renamed
from saegeo.formats.family import Family
from saegeo.runtime.atomic import write_json, write_text

log = logging.getLogger(__name__)


def write_report(data: DemoData, *, progress: bool | None = None) -> Path:
    """Run every analysis on ``data`` and write ``data.root/report/index.html``.

    Each section's results are cached under ``data.root`` as :func:`run_demo` describes.
    """
    from saegeo.core.describe import sparsity_settings
    from saegeo.viz.report import Report

    report_dir = data.root / "report"
    n_eval = min(EVAL_TOKENS, data.store.n_tokens // 5)
    held_out, fit = data.store.slice(0, n_eval), data.store.slice(n_eval)
    family = data.family
    stages, keys = Stages(data.root), stage_keys(data.settings, n_eval)

    model = data.store.meta.get("model")
    site = f"{model} layer {data.store.meta.get('layer', '?')}" if model else "toy activations"
    page = Report(f"saegeo demo: {site}, widths {family.widths}")
    source = (
        f"{data.store.meta.get('hook', 'the')} residual stream on packaged BBC news"
        if model
        else str(data.store.meta.get("description", data.store.source))
    )
    page.text(
        f"Activations: {data.store.n_tokens:,} tokens of {source}; the first {n_eval:,} are "
        f"held out for every metric below. {_provenance(data)}"
    )
    page.heading("The family")
    members = _family_table(data, sparsity_settings)
    page.table(members)
    if not data.settings.retrain:
        _stability_section(page)
    if not stages.ready("family_table", keys["family_table"], [report_dir / "family.csv"]):
        write_text(report_dir / "family.csv", members.to_csv(index=False))
        stages.done("family_table")

    page.heading("Novel and reconstruction features")
    _novelty_section(page, family, held_out, report_dir, progress, stages, keys["novelty"])
    page.heading("Feature trees across widths")
    _tree_section(page, data, report_dir, stages, keys["trees"])
    page.heading("Frankenstein SAEs")
    _frankenstein_section(
        page, family, fit, held_out, report_dir, progress, stages, keys["frankenstein"]
    )
    page.heading("Files")
    page.links(
        {
            name: name
            for name in sorted(
                p.name for p in report_dir.iterdir() if p.suffix in (".csv", ".json") or p.is_dir()
            )
        }
    )
    return page.write(report_dir / "index.html")


def _provenance(data: DemoData) -> str:
    """Where the family comes from, in a sentence or two."""
    if data.settings.retrain:
        return (
            "The family was trained here with <code>saegeo.training.trainer</code> on "
            f"{data.settings.train_tokens:,} tokens per member; trained for minutes on a CPU, "
            "its dictionaries have not converged (the shipped family, without "
            "<code>--retrain</code>, has)."
        )
    record = shipped_record()
    training = record["config"]
    return (
        f"The family ships with saegeo: {training['arch']} (saved as JumpReLU, as SAELens "
        f"saves BatchTopK), k={training['k']}, trained by <code>analyses/demo_family.py</code> "
        f"for {training['tokens']:,} tokens per member (batch {training['batch_size']}) on "
        f"the whole packaged corpus ({record['acts_tokens']:,} tokens) except these held-out "
        "ones."
    )


def _stability_section(page: Any) -> None:
    import pandas as pd

    from saegeo.viz.plots import seed_stability_figure

    stability = json.loads((SHIPPED_FAMILY / "seed_stability.json").read_text())
    final = stability["curve"][-1]
    page.text(
        f"Seed stability: trained again from another seed, the narrowest member "
        f"(width {stability['width']}) finds {final['stability']:.0%} of its features again "
        f"(largest decoder cosine to the other seed's features > 0.7; "
        f"{final['stability_live']:.0%} among latents live on the held-out tokens). The curve "
        "shows how it rose with training; points before the last are taken before the "
        "learning rate's final decay."
    )
    page.figure(
        seed_stability_figure(
            pd.DataFrame(stability["curve"]), title="Seed stability of the narrowest member"
        )
    )


def _family_table(data: DemoData, sparsity_settings: Any) -> Any:
    import pandas as pd

    metrics_path = data.family_dir / "metrics.csv"
    trained = pd.read_csv(metrics_path) if metrics_path.exists() else None
    rows = []
    for sae in data.family:
        row: dict[str, Any] = {
            "name": sae.name,
            "arch": sae.arch,
            "width": sae.width,
            "sparsity": sparsity_settings(sae),
        }
        if trained is not None and sae.name in set(trained["name"]):
            match = trained[trained["name"] == sae.name].iloc[0]
            for column in (
                "eval_mse",
                "eval_fvu",
                "eval_l0",
                "eval_dead_fraction",
                "tokens_per_second",
            ):
                if column in match:
                    row[column.removeprefix("eval_")] = match[column]
        rows.append(row)
    return pd.DataFrame(rows)


def _novelty_section(
    page: Any,
    family: Family,
    held_out: ActivationStore,
    report_dir: Path,
    progress: bool | None,
    stages: Stages,
    key: str,
) -> Any:
    import pandas as pd

    from saegeo.effects.novelty import (
        FamilyNovelty,
        family_novelty,
        kind_sign_frame,
        published_pair_table,
    )
    from saegeo.viz.plots import novelty_figure

    files = {name: report_dir / f"novelty_{name}.csv" for name in ("summary", "features", "curves")}
    if stages.ready("novelty", key, list(files.values())):
        result = FamilyNovelty(*(pd.read_csv(files[n]) for n in ("summary", "features", "curves")))
    else:
        result = family_novelty(
            family, held_out.slice(0, NOVELTY_TOKENS), points=NOVELTY_POINTS, progress=progress
        )
        for name, frame in zip(("summary", "features", "curves"), result, strict=True):
            write_text(files[name], frame.to_csv(index=False))
        stages.done("novelty")
    page.text(
        "A wider SAE's feature is <b>novel</b> when its largest decoder cosine to the narrower "
        "SAE is at most 0.7, <b>reconstruction</b> otherwise. <code>delta_mse</code> is the "
        "change in the narrower SAE's MSE when that one feature is added to it, keeping its "
        "own activation. A second score, <code>explained</code>, is the share of the input's "
        "component along a feature's decoder contributions that the narrower SAE already "
        "reconstructs on the tokens where the feature fires; the closed form of "
        "<code>delta_mse</code> predicts that adding the feature lowers the MSE when it is "
        "below about 1/2. A third, <code>residual</code>, needs no activations: the share of "
        "the feature's unit decoder row left outside the span of its 8 nearest narrower rows. "
        "<code>auc_max_cos</code>, <code>auc_residual</code> and <code>auc_explained</code> say "
        "how well each score ranks the features that lower the MSE above those that do not "
        "(ROC AUC; 0.5 is chance, 1 perfect)."
    )
    # The kind × sign counts show as the 2×2 tables below rather than as summary columns.
    cells = [c for c in result.summary if c.endswith(("_decreases", "_does_not_decrease"))]
    page.table(result.summary.drop(columns=cells))
    page.table(kind_sign_frame(result))
    page.text(
        "The figures of “Stitching SAEs of different sizes” for every adjacent pair, under "
        "the paper's own first GPT-2 pair "
        f"(on the first {NOVELTY_TOKENS:,} held-out tokens):"
    )
    page.table(published_pair_table(result.summary))
    page.text(compare_with_published(result), note=True)
    page.figure(novelty_figure(result, title="Novel vs reconstruction"))
    return result


def _tree_section(page: Any, data: DemoData, report_dir: Path, stages: Stages, key: str) -> None:
    import pandas as pd

    from saegeo.trees.dag import feature_dag, node_id, tree_root
    from saegeo.trees.forest import HUB_FACTOR, forest
    from saegeo.trees.tree_json import forest_from_json, forest_to_json
    from saegeo.viz.figures import tree_figure, tree_score_range, tree_table_html

    path, table_path = report_dir / "trees.json", report_dir / "trees.csv"
    if not stages.ready("trees", key, [path, table_path]):
        G = feature_dag(data.family, acts=data.store, progress=False)  # acts: freq, max_act
        table, trees = forest(G, rank_by="split", min_size=TREE_MIN_SIZE)
        trees = trees[:TREE_COUNT]
        labels = _token_labels(data, trees)
        table = table.head(TREE_COUNT)
        table = table.assign(label=[labels.get(root, "") for root in table["root"]])
        write_json(path, forest_to_json(G, trees, rank_by="split", labels=labels))
        write_text(table_path, table.to_csv())
        stages.done("trees")
    trees = forest_from_json(json.loads(path.read_text()))
    table = pd.read_csv(table_path, keep_default_na=False, na_values=[""])
    page.text(
        "Edges join a feature to the next width's features whose decoder cosine with it "
        "exceeds 0.7; each feature is kept under its best parent. Trees are ranked by how "
        "clearly they split: a feature <b>splits</b> when at least two features of the next "
        "width have it as their best parent (a child that continues another feature better is "
        f"not part of its split) and it has no more than {HUB_FACTOR}× the width ratio of "
        "children (more make it a hub). Trees whose root splits come first, the weaker "
        "child of the split (<code>split_score</code>) strongest first, then trees that split "
        f"further down. The top {len(trees)} trees with at least {TREE_MIN_SIZE} features are "
        "in <code>trees.json</code>; boxes and tables show each feature's top tokens on the "
        "activations."
    )
    if not trees:
        return
    columns = ["root", "label", "size", "n_children", "n_split_children", "split_at"]
    page.table(table[columns + ["split_score"]], max_rows=10)
    shown = trees[:TREES_SHOWN]
    scale = tree_score_range(shown)
    for T in shown:
        root = tree_root(T)
        label = T.nodes[root].get("label")
        title = f"Feature tree {node_id(root)}" + (f": {label}" if label else "")
        page.figure(tree_figure(T, title=title, score_range=scale), height="420px")
        page.block(tree_table_html(T))


def _token_labels(data: DemoData, trees: list[Any]) -> dict[str, str]:
    """The top activating tokens of each feature of ``trees``, as node labels (none where the
    store has no token ids or tokenizer)."""
    from saegeo.lm.labels import feature_labels

    if not data.store.meta.get("tokenizer") or data.store.token_ids() is None:
        log.info("no token labels: the store has no tokenizer or token ids")
        return {}
    nodes = sorted({node for T in trees for node in T})
    return feature_labels(data.family, data.store, nodes, progress=False)


def _frankenstein_section(
    page: Any,
    family: Family,
    fit: ActivationStore,
    held_out: ActivationStore,
    report_dir: Path,
    progress: bool | None,
    stages: Stages,
    key: str,
) -> None:
    import pandas as pd

    from saegeo.formats.sae_files import save_sae
    from saegeo.stitch.curve import compare_frankensteins
    from saegeo.stitch.frankenstein import frankenstein_steps
    from saegeo.viz.plots import frankenstein_figure

    comparison_path = report_dir / "frankenstein_comparison.csv"
    stitched_dir = report_dir / "frankenstein"
    report_path = report_dir / "frankenstein_report.json"
    if stages.ready("frankenstein", key, [comparison_path, stitched_dir, report_path]):
        comparison = pd.read_csv(comparison_path)
    else:
        # One stitching pass gives the Frankenstein up to every width; the widest is saved.
        stitched = frankenstein_steps(family, fit.slice(0, STITCH_TOKENS), progress=progress)
        comparison = compare_frankensteins(family, stitched, held_out, progress=progress)
        save_sae(stitched.saes[-1], stitched_dir, overwrite=True)
        write_json(report_path, stitched.report.to_dict())
        write_text(comparison_path, comparison.to_csv(index=False))
        stages.done("frankenstein")
    page.text(
        "Starting from the narrowest SAE, every feature of each wider SAE whose largest "
        "decoder cosine to the features already in is at most 0.7 is added; the decoder is "
        "then refit exactly (least squares with the encoder frozen). The stitched SAE is saved "
        "in SAELens format under <code>frankenstein/</code>. Held-out MSE:"
    )
    columns = [
        c
        for c in ("kind", "name", "n_features", "l0", "mse", "fvu", "mse_vs_nearest")
        if c in comparison
    ]
    page.table(comparison[columns])
    page.figure(frankenstein_figure(comparison, title="Frankenstein SAEs vs the originals"))


def compare_with_published(result: Any) -> str:
    """Where ``result`` agrees with the three findings of "Stitching SAEs of different sizes".

    ``result`` is a :class:`~saegeo.effects.novelty.FamilyNovelty` computed with activations;
    the text says, finding by finding, where it agrees and where it does not, with the figures.
    """
    from saegeo.effects.novelty import PUBLISHED_GPT2_PAIR as paper

    summary = result.summary
    n_novel = summary["novel_decreases"] + summary["novel_does_not_decrease"]
    n_rec = summary["reconstruction_decreases"] + summary["reconstruction_does_not_decrease"]
    share = n_novel / summary["large_width"]
    novel_lowers = summary["novel_decreases"] / n_novel.clip(lower=1)
    rec_raises = summary["reconstruction_does_not_decrease"] / n_rec.clip(lower=1)
    paper_novel = paper["n_novel"]
    paper_rec = paper["reconstruction_decreases"] + paper["reconstruction_does_not_decrease"]
    findings = [
        (
            "novel features are a minority of the wider SAE",
            share,
            paper_novel / paper["large_width"],
            lambda v: v < 0.5,
        ),
        (
            "novel features lower the narrower SAE's MSE when added",
            novel_lowers,
            paper["novel_decreases"] / paper_novel,
            lambda v: v > 0.5,
        ),
        (
            "reconstruction features raise it",
            rec_raises,
            paper["reconstruction_does_not_decrease"] / paper_rec,
            lambda v: v > 0.5,
        ),
    ]
    sentences = []
    for claim, values, published, holds in findings:
        held = [bool(holds(v)) for v in values]
        span = (
            f"{values.iloc[0]:.0%}"
            if len(values) == 1
            else f"{values.min():.0%}–{values.max():.0%} across pairs"
        )
        verdict = (
            "Agrees"
            if all(held)
            else "Disagrees"
            if not any(held)
            else f"Agrees for {sum(held)} of {len(held)} pairs"
        )
        sentences.append(
            f"{verdict} with “Stitching SAEs of different sizes” that {claim}: "
            f"{span} here, {published:.0%} there."
        )
    features = result.features
    if len(features) and "explained" in features:
        novel = features[features["kind"] == "novel"]
        rebuilt = novel["explained"] >= 0.5
        if len(novel) and rebuilt.any() and (~rebuilt).any():
            raise_ = (novel.loc[rebuilt, "delta_mse"] >= 0).mean()
            lower = (novel.loc[~rebuilt, "delta_mse"] < 0).mean()
            sentences.append(
                f"Of the novel features, {rebuilt.mean():.0%} are already rebuilt by the "
                "narrower SAE through other features (<code>explained</code> >= 0.5) although "
                f"no single one is close to them; {raise_:.0%} of those raise the MSE when "
                f"added, and {lower:.0%} of the rest lower it."
            )
    return " ".join(sentences)


seed_003_comparison = renamed(compare_with_published, "seed_003_comparison")
