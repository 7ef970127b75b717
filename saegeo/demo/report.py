"""The demo's report: every analysis on the demo data, cached section by section."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saegeo.acts.store import ActivationStore
from saegeo.demo.data import DemoData
from saegeo.demo.settings import (
    EVAL_TOKENS,
    NOVELTY_POINTS,
    NOVELTY_TOKENS,
    SHIPPED_FAMILIES,
    SHIPPED_FAMILY,
    SHIPPED_RELU_FAMILY,
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
    members = _family_table(data.family, data.family_dir, sparsity_settings)
    page.table(members)
    if not data.settings.retrain:
        _stability_section(page, SHIPPED_FAMILY)
    if not stages.ready("family_table", keys["family_table"], [report_dir / "family.csv"]):
        write_text(report_dir / "family.csv", members.to_csv(index=False))
        stages.done("family_table")

    run = _Run(page, report_dir, stages, keys, progress)
    page.heading("Novel and reconstruction features")
    novelty = _novelty_section(run, family, held_out)
    if not data.settings.retrain:
        page.heading("Two architectures: BatchTopK and ReLU + L1")
        _architecture_section(run, novelty, held_out)
    page.heading("Feature trees across widths")
    _tree_section(run, data)
    page.heading("Frankenstein SAEs")
    _frankenstein_section(run, family, fit, held_out)
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


class _Run(NamedTuple):
    """What every section of one report shares."""

    page: Any
    """The page being written."""
    dir: Path
    """Where the report and its section files go."""
    stages: Stages
    """The stage cache of the demo root."""
    keys: dict[str, str]
    """The key of every stage (:func:`stage_keys`)."""
    progress: bool | None
    """Progress bars."""

    def ready(self, name: str, paths: list[Path]) -> bool:
        """Whether section ``name``'s files ``paths`` are cached under its current key."""
        return self.stages.ready(name, self.keys[name], paths)


def _provenance(data: DemoData) -> str:
    """Where the family comes from, in a sentence or two."""
    if data.settings.retrain:
        return (
            "The family was trained here with <code>saegeo.training.trainer</code> on "
            f"{data.settings.train_tokens:,} tokens per member; trained for minutes on a CPU, "
            "its dictionaries have not converged (the shipped family, without "
            "<code>--retrain</code>, has)."
        )
    return f"The family ships with saegeo: {_shipped_training(SHIPPED_FAMILY)}"


def _shipped_training(family_dir: Path) -> str:
    """How a shipped family was trained, in a sentence."""
    record = shipped_record(family_dir)
    training = record["config"]
    arch = (
        f"BatchTopK (saved as JumpReLU, as SAELens saves BatchTopK), k={training['k']}"
        if training["arch"] == "batchtopk"
        else f"ReLU with an L1 penalty held at λ = {training['sparsity_coefficient']:g}"
    )
    return (
        f"{arch}, trained by <code>analyses/demo_family.py</code> for "
        f"{training['tokens']:,} tokens per member (batch {training['batch_size']}) on the whole "
        f"packaged corpus ({record['acts_tokens']:,} tokens) except these held-out ones."
    )


def _stability_section(page: Any, family_dir: Path) -> None:
    import pandas as pd

    from saegeo.viz.plots import seed_stability_figure

    stability = json.loads((family_dir / "seed_stability.json").read_text())
    final = stability["curve"][-1]
    # A family whose curve predates the matched figure holds it for the finished SAEs alone.
    last = final if "stability_matched" in final else stability.get("final_matched")
    matched = (
        f"; matched one to one (Hungarian matching on decoder cosine, "
        f"<code>sg.match_features</code>), {last['stability_matched']:.0%} of the features "
        f"pair above 0.7, with a mean matched cosine of {last['mean_matched_cos']:.2f}"
        if last
        else ""
    )
    page.text(
        f"Seed stability: trained again from another seed, the narrowest member "
        f"(width {stability['width']}) finds {final['stability']:.0%} of its features again "
        f"(largest decoder cosine to the other seed's features > 0.7; "
        f"{final['stability_live']:.0%} among latents live on the held-out tokens{matched}). "
        "The curve shows how it rose with training; points before the last are taken before "
        "the learning rate's final decay."
    )
    page.figure(
        seed_stability_figure(
            pd.DataFrame(stability["curve"]), title="Seed stability of the narrowest member"
        )
    )


def _family_table(family: Family, family_dir: Path, sparsity_settings: Any) -> Any:
    import pandas as pd

    metrics_path = family_dir / "metrics.csv"
    trained = pd.read_csv(metrics_path) if metrics_path.exists() else None
    rows = []
    for sae in family:
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
                "near_duplicate",
                "near_dead",
                "tokens_per_second",
            ):
                if column in match:
                    row[column.removeprefix("eval_")] = match[column]
        rows.append(row)
    return pd.DataFrame(rows)


def _novelty_section(run: _Run, family: Family, held_out: ActivationStore) -> Any:
    import pandas as pd

    from saegeo.effects.novelty import (
        FamilyNovelty,
        family_novelty,
        kind_sign_frame,
        published_pair_table,
    )
    from saegeo.viz.plots import novelty_figure

    page, progress = run.page, run.progress
    files = {name: run.dir / f"novelty_{name}.csv" for name in ("summary", "features", "curves")}
    if run.ready("novelty", list(files.values())):
        result = FamilyNovelty(*(pd.read_csv(files[n]) for n in ("summary", "features", "curves")))
    else:
        result = family_novelty(
            family, held_out.slice(0, NOVELTY_TOKENS), points=NOVELTY_POINTS, progress=progress
        )
        for name, frame in zip(("summary", "features", "curves"), result, strict=True):
            write_text(files[name], frame.to_csv(index=False))
        run.stages.done("novelty")
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


def _tree_section(run: _Run, data: DemoData) -> None:
    import pandas as pd

    from saegeo.trees.dag import feature_dag, node_id, tree_root
    from saegeo.trees.forest import HUB_FACTOR, forest
    from saegeo.trees.tree_json import forest_from_json, forest_to_json
    from saegeo.viz.figures import tree_figure, tree_score_range, tree_table_html

    page = run.page
    path, table_path = run.dir / "trees.json", run.dir / "trees.csv"
    if not run.ready("trees", [path, table_path]):
        G = feature_dag(data.family, acts=data.store, progress=False)  # acts: freq, max_act
        table, trees = forest(G, rank_by="split", min_size=TREE_MIN_SIZE)
        trees = trees[:TREE_COUNT]
        labels = _token_labels(data, trees)
        table = table.head(TREE_COUNT)
        table = table.assign(label=[labels.get(root, "") for root in table["root"]])
        write_json(path, forest_to_json(G, trees, rank_by="split", labels=labels))
        write_text(table_path, table.to_csv())
        run.stages.done("trees")
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
    run: _Run, family: Family, fit: ActivationStore, held_out: ActivationStore
) -> None:
    import pandas as pd

    from saegeo.formats.sae_files import save_sae
    from saegeo.stitch.curve import compare_frankensteins
    from saegeo.stitch.frankenstein import frankenstein_steps
    from saegeo.viz.plots import frankenstein_figure

    page, progress = run.page, run.progress
    comparison_path = run.dir / "frankenstein_comparison.csv"
    stitched_dir = run.dir / "frankenstein"
    report_path = run.dir / "frankenstein_report.json"
    if run.ready("frankenstein", [comparison_path, stitched_dir, report_path]):
        comparison = pd.read_csv(comparison_path)
    else:
        # One stitching pass gives the Frankenstein up to every width; the widest is saved.
        stitched = frankenstein_steps(family, fit.slice(0, STITCH_TOKENS), progress=progress)
        comparison = compare_frankensteins(family, stitched, held_out, progress=progress)
        save_sae(stitched.saes[-1], stitched_dir, overwrite=True)
        write_json(report_path, stitched.report.to_dict())
        write_text(comparison_path, comparison.to_csv(index=False))
        run.stages.done("frankenstein")
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


def _architecture_section(run: _Run, batchtopk: Any, held_out: ActivationStore) -> None:
    """The shipped ReLU + L1 family beside the BatchTopK one: the paper's table for both."""
    import pandas as pd

    from saegeo.core.describe import sparsity_settings
    from saegeo.effects.novelty import FamilyNovelty, family_novelty
    from saegeo.effects.shrinkage import reconstruction_gain

    relu = Family.load(SHIPPED_RELU_FAMILY)
    page = run.page
    files = {name: run.dir / f"relu_novelty_{name}.csv" for name in ("summary", "features")}
    gains_path = run.dir / "reconstruction_gain.csv"
    if run.ready("architectures", [*files.values(), gains_path]):
        result = FamilyNovelty(
            pd.read_csv(files["summary"]), pd.read_csv(files["features"]), pd.DataFrame()
        )
        gains = pd.read_csv(gains_path)
    else:
        sample = held_out.slice(0, NOVELTY_TOKENS)
        result = family_novelty(relu, sample, points=0, progress=run.progress)
        x_BD = sample.read()
        gains = pd.DataFrame(
            {"family": label, "name": sae.name, "width": sae.width}
            | {"gain": reconstruction_gain(sae.to(dtype=torch.float32), x_BD)}
            for label, family_dir in SHIPPED_FAMILIES.items()
            for sae in Family.load(family_dir)
        )
        write_text(files["summary"], result.summary.to_csv(index=False))
        write_text(files["features"], result.features.to_csv(index=False))
        write_text(gains_path, gains.to_csv(index=False))
        run.stages.done("architectures")
    page.text(
        "A second family ships with saegeo, with the architecture of the GPT-2 family of "
        "“Stitching SAEs of different sizes”: "
        f"{_shipped_training(SHIPPED_RELU_FAMILY)} Same site, activations and widths as the "
        "BatchTopK family. <code>near_duplicate</code> is the share of a member's latents "
        "whose decoder cosine to another of its latents exceeds 0.9, <code>near_dead</code> "
        "the share whose energy on the held-out tokens (mean of f²‖d‖²) is below 1% of the "
        "member's mean latent energy."
    )
    page.table(_family_table(relu, SHIPPED_RELU_FAMILY, sparsity_settings))
    _stability_section(page, SHIPPED_RELU_FAMILY)
    results = dict(zip(SHIPPED_FAMILIES, (batchtopk, result), strict=True))
    page.text(
        "The figures of “Stitching SAEs of different sizes” for every adjacent pair of both "
        f"families, on the same {NOVELTY_TOKENS:,} held-out tokens, under the paper's own "
        "GPT-2 pair. <code>narrower gain</code> is the least-squares gain of the narrower "
        "member's reconstruction: the factor by which scaling its reconstruction up would fit "
        "the input best (1: no shrinkage)."
    )
    page.table(architecture_table({k: r.summary for k, r in results.items()}, gains))
    page.text(compare_architectures(results, gains), note=True)


def architecture_table(summaries: dict[str, Any], gains: Any) -> Any:
    """The table of :func:`~saegeo.effects.novelty.published_pair_table` for several families
    (``summaries``: name → :attr:`FamilyNovelty.summary`), with a ``family`` column and the
    narrower member's reconstruction gain (``gains``: columns ``name``, ``gain``)."""
    import pandas as pd

    from saegeo.effects.novelty import published_pair_table

    gain_of = dict(zip(gains["name"], gains["gain"], strict=True))
    frames: list[pd.DataFrame] = []
    for label, summary in summaries.items():
        table = published_pair_table(summary)
        table.insert(0, "family", [PAPER_FAMILY, *[label] * len(summary)])
        table["narrower gain"] = ["–", *(f"{gain_of[name]:.3f}" for name in summary["small"])]
        frames.append(table if not frames else table.iloc[1:])
    return pd.concat(frames, ignore_index=True)


PAPER_FAMILY = "the paper: GPT-2, ReLU + L1"
"""The family column of the paper's row in :func:`architecture_table`."""


def compare_architectures(results: dict[str, Any], gains: Any) -> str:
    """What the paper's three figures say of each family in ``results`` (name →
    :class:`~saegeo.effects.novelty.FamilyNovelty` with activations), pooled over its pairs,
    which family lies nearer the paper, and how far each family's narrower members reconstruct
    short of the input (``gains``: columns ``family``, ``name``, ``gain``)."""
    from saegeo.effects.novelty import PUBLISHED_GPT2_PAIR as paper

    names = list(results)
    shares = {name: _pooled_shares(result.summary) for name, result in results.items()}
    published = _pooled_shares({key: [value] for key, value in paper.items()})

    def each(figure: int) -> str:
        parts = [f"{shares[name][figure]:.0%} in the {name} family" for name in names]
        return f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 1 else parts[0]

    sentences = [
        f"Of the wider SAEs' features, {each(0)} are novel ({published[0]:.0%} in the paper).",
        f"Added alone, the novel features that lower the narrower SAE's MSE are {each(1)} "
        f"({published[1]:.0%} in the paper); the reconstruction features that raise it, "
        f"{each(2)} ({published[2]:.0%}).",
    ]
    distance = {
        name: sum(abs(a - b) for a, b in zip(shares[name], published, strict=True)) / 3
        for name in names
    }
    if len(names) > 1:
        nearest = min(names, key=distance.__getitem__)
        others = ", ".join(f"{distance[n]:.0%} for {n}" for n in names if n != nearest)
        sentences.append(
            f"Over the three figures the {nearest} family lies nearer the paper (a mean "
            f"difference of {distance[nearest]:.0%}, against {others})."
        )
    narrower = gains[gains["name"].isin({n for r in results.values() for n in r.summary["small"]})]
    spans = {
        name: (group["gain"].min(), group["gain"].max())
        for name, group in narrower.groupby("family", sort=False)
    }
    if spans:
        parts = [
            f"{lo:.3f}{'' if f'{lo:.3f}' == f'{hi:.3f}' else f'–{hi:.3f}'} in the {name} family"
            for name, (lo, hi) in spans.items()
        ]
        shrunk = [name for name, (lo, _) in spans.items() if lo > SHRUNK_GAIN]
        sentences.append(
            "The least-squares gain of the narrower members' reconstructions is "
            f"{' and '.join(parts)}"
            + (
                f": the {' and '.join(shrunk)} members reconstruct short of the input along "
                "their own features, the shrinkage an L1 penalty causes, under which adding "
                "almost any well-aligned feature lowers the MSE (the documentation's shrinkage "
                "experiment removes it and measures again)."
                if shrunk
                else "."
            )
        )
    return " ".join(sentences)


SHRUNK_GAIN = 1.01
"""A reconstruction gain above this counts as shrinkage in :func:`compare_architectures`."""


def _pooled_shares(summary: Any) -> tuple[float, float, float]:
    """Novel share, novel features lowering the MSE and reconstruction features raising it,
    pooled over the pairs of ``summary`` (a mapping of columns to values per pair)."""
    novel_lower = sum(summary["novel_decreases"])
    novel = novel_lower + sum(summary["novel_does_not_decrease"])
    rec_raise = sum(summary["reconstruction_does_not_decrease"])
    rec = rec_raise + sum(summary["reconstruction_decreases"])
    return (
        novel / max(sum(summary["large_width"]), 1),
        novel_lower / max(novel, 1),
        rec_raise / max(rec, 1),
    )


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
