"""The demo: activations of the packaged language model, an SAE family on them, the report.

The family is the converged one shipped with saegeo (:data:`SHIPPED_FAMILY`, made by
``analyses/demo_family.py``), or one trained here in minutes (``DemoSettings.retrain``). The
activations are harvested on this machine from registry packages; everything is cached under
one directory, so the first call harvests (and trains) and later calls only read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from saegeo.core.family import Family
from saegeo.errors import ArgumentError
from saegeo.io.atomic import write_json, write_text
from saegeo.io.store import META_FILE, ActivationStore
from saegeo.training.config import TrainArch

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("reports/demo")


SHIPPED_FAMILY = Path(__file__).resolve().parent / "data" / "demo_family"
"""The family shipped with saegeo: SAELens directories stored in float16, with ``family.json``
(the harvest and training settings, the held-out tokens), ``metrics.csv`` and
``seed_stability.json``; ``analyses/demo_family.py`` makes it from scratch."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo harvests, and the family it analyses: the shipped one, or one trained here.

    The defaults are the shipped family's site; with ``retrain`` False the harvest must stay
    there, since the family was trained on it.
    """

    model: str = "smollm2-135m-instruct"
    """The language model: the packaged default, a Hugging Face name or a local path."""
    layer: int = 5
    """Residual stream after this block (0-based)."""
    tokens: int = 81_920
    """Tokens of packaged BBC news to harvest, from the first: the shipped family's held-out
    tokens (the first :data:`EVAL_TOKENS`, a fifth of the default) and the refit tokens after
    them; with ``retrain``, the training tokens too."""
    context: int = 128
    """Tokens per model input."""
    skip_first: int = 1
    """Text tokens at the start of each context left out (see saegeo.lm.harvest)."""
    retrain: bool = False
    """Train a family here with the settings below instead of using the shipped one."""
    arch: TrainArch = "batchtopk"
    """With ``retrain``: training architecture of the family (see saegeo.training.trainer)."""
    k: int = 32
    """With ``retrain``: active latents per token."""
    multipliers: tuple[int, ...] = (1, 2, 4, 8)
    """With ``retrain``: family widths as multiples of the model's width."""
    train_tokens: int = 600_000
    """With ``retrain``: training tokens per member (the store is cycled through)."""
    seed: int = 0
    """With ``retrain``: seed of the training runs."""

    @classmethod
    def retrained(cls) -> DemoSettings:
        """A family trained here from scratch in minutes (``saegeo demo --retrain``)."""
        return cls(tokens=300_000, retrain=True)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Small settings for a fast look (and for the test suite's notebook runs)."""
        return cls(tokens=40_000, retrain=True, multipliers=(1, 2, 4), train_tokens=200_000, k=16)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def shipped_record() -> dict[str, Any]:
    """The shipped family's ``family.json``: its members, harvest and training settings."""
    return json.loads((SHIPPED_FAMILY / "family.json").read_text())


def _check_shipped_site(settings: DemoSettings) -> None:
    """The harvest settings of ``settings`` must be those the shipped family was trained on."""
    harvest = shipped_record()["harvest"]
    for name in HARVEST_SETTINGS:
        if name != "tokens" and getattr(settings, name) != harvest[name]:
            raise ArgumentError(
                name,
                getattr(settings, name),
                f"the shipped family was trained with {name}={harvest[name]!r}; keep it, or "
                "set retrain=True to train a family on this site",
                owner="DemoSettings",
            )


class DemoData(NamedTuple):
    """The demo's activations and family."""

    store: ActivationStore
    """Harvested activations (with token ids and document ids per token)."""
    family: Family
    """The shipped SAEs, or with ``retrain`` SAEs trained on ``store``; narrowest first."""
    root: Path
    """The cache directory: ``acts/`` (and with ``retrain``, ``family/``) live here."""
    settings: DemoSettings
    """What was harvested and trained."""
    family_dir: Path
    """Where the family was loaded from: :data:`SHIPPED_FAMILY` or ``root/family``."""


def demo_data(
    root: str | Path = DEFAULT_ROOT,
    settings: DemoSettings | None = None,
    *,
    progress: bool | None = None,
) -> DemoData:
    """The demo's activations and family under ``root``, built on first use.

    ``root/acts`` is the activation store (resumed if a harvest was interrupted). The family
    is the shipped one (:data:`SHIPPED_FAMILY`) unless ``settings.retrain``; then
    ``root/family`` holds SAEs trained here, with ``family.json``. Each is a stage keyed by the
    settings that produced it and by its inputs' keys (see :class:`Stages`): it is rebuilt
    when that key changes, and only then.
    """
    from saegeo.lm.harvest import harvest
    from saegeo.training.trainer import TrainConfig, train_family

    settings = settings or DemoSettings()
    if not settings.retrain:
        _check_shipped_site(settings)
    root = Path(root)
    store_dir, family_dir = root / "acts", root / "family"
    keys = stage_keys(settings)
    root.mkdir(parents=True, exist_ok=True)
    stages = Stages(root)
    stages.adopt_legacy(settings, keys)
    write_json(root / "settings.json", settings.as_dict())

    if stages.ready("acts", keys["acts"], [store_dir]) and _store_complete(
        store_dir, settings.tokens
    ):
        store = ActivationStore.open(store_dir)
    else:
        log.info("harvesting %d tokens from %s", settings.tokens, settings.model)
        store = harvest(
            settings.model,
            None,
            store_dir,
            layer=settings.layer,
            context=settings.context,
            skip_first=settings.skip_first,
            max_tokens=settings.tokens,
            progress=progress,
        )
        stages.done("acts")
    if not settings.retrain:
        _remove(family_dir)  # a family trained here earlier, on other activations
        family = Family.load(SHIPPED_FAMILY)
        return DemoData(store, family, root, settings, SHIPPED_FAMILY)
    if stages.ready("family", keys["family"], [family_dir]):
        family = Family.load(family_dir)
    else:
        # train_family writes family.json after every member: an interrupted run is not
        # complete, so the stage starts over from an empty directory.
        _remove(family_dir)
        config = TrainConfig(
            arch=settings.arch,
            k=settings.k,
            tokens=settings.train_tokens,
            seed=settings.seed,
            progress=progress,
        )
        widths = [m * store.d_in for m in settings.multipliers]
        log.info("training %s family of widths %s", settings.arch, widths)
        family = train_family(store, widths, config, out_dir=family_dir).family
        stages.done("family")
    return DemoData(store, family, root, settings, family_dir)


# --------------------------------------------------------------------------- stage keys

STAGES_FILE = "stages.json"
"""Under the demo root: the key each stage's outputs were made with, and whether complete."""

HARVEST_SETTINGS = ("model", "layer", "tokens", "context", "skip_first")
TRAIN_SETTINGS = ("arch", "k", "multipliers", "train_tokens", "seed")


def stage_key(settings: dict[str, Any], *inputs: str) -> str:
    """A short hash of a stage's ``settings`` and the keys of the stages it reads.

    Examples
    --------
    >>> stage_key({"k": 32}) == stage_key({"k": 32})
    True
    >>> stage_key({"k": 32}) == stage_key({"k": 16})
    False
    >>> stage_key({"k": 32}, "a") == stage_key({"k": 32}, "b")
    False
    """
    blob = json.dumps({"settings": settings, "inputs": list(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_keys(settings: DemoSettings, n_eval: int | None = None) -> dict[str, str]:
    """The key of every demo stage under ``settings``.

    ``acts`` and ``family`` always; the report's sections (``family_table``, ``novelty``,
    ``trees``, ``frankenstein``) too when ``n_eval`` (the held-out tokens) is given.
    """
    values = settings.as_dict()
    acts = stage_key({k: values[k] for k in HARVEST_SETTINGS})
    if settings.retrain:
        family = stage_key({k: values[k] for k in TRAIN_SETTINGS}, acts)
    else:  # a new shipped family is a new family
        shipped = hashlib.sha256((SHIPPED_FAMILY / "family.json").read_bytes()).hexdigest()
        family = stage_key({"shipped": shipped})
    keys = {"acts": acts, "family": family}
    if n_eval is not None:
        keys["family_table"] = stage_key({}, family)
        keys["novelty"] = stage_key(
            {
                "n_eval": n_eval,
                "sample": NOVELTY_TOKENS,
                "points": NOVELTY_POINTS,
                "scores": ["delta_mse", "explained"],
            },
            acts,
            family,
        )
        keys["trees"] = stage_key(
            {"rank_by": "split", "min_size": TREE_MIN_SIZE, "top": TREE_COUNT}, family
        )
        keys["frankenstein"] = stage_key({"n_eval": n_eval, "fit": STITCH_TOKENS}, acts, family)
    return keys


class Stages:
    """The record of which key made each stage's outputs under a demo root.

    A stage is ready when its recorded key equals the current one, it was marked done and its
    outputs exist. Otherwise :meth:`ready` removes outputs made with another key, records the
    current key as in progress (so an interrupted harvest resumes with the same settings) and
    returns False; the caller builds the stage and calls :meth:`done`.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / STAGES_FILE
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                loaded = {}
            if isinstance(loaded, dict):
                self.records = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def ready(self, name: str, key: str, paths: list[Path]) -> bool:
        record = self.records.get(name, {})
        if record.get("key") == key:
            if record.get("done") and all(p.exists() for p in paths):
                return True
            if not record.get("done"):
                return False
        for path in paths:
            _remove(path)
        self.records[name] = {"key": key, "done": False}
        write_json(self.path, self.records)
        return False

    def done(self, name: str) -> None:
        self.records[name]["done"] = True
        write_json(self.path, self.records)

    def adopt_legacy(self, settings: DemoSettings, keys: dict[str, str]) -> None:
        """Keep the acts and family of a cache made before stage keys (``settings.json`` only)
        where they were made with the current settings and are complete."""
        legacy = self.path.parent / "settings.json"
        if self.records or not legacy.exists():
            return
        try:
            previous = json.loads(legacy.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        current = settings.as_dict()
        if not isinstance(previous, dict) or any(
            previous.get(k) != current[k] for k in HARVEST_SETTINGS
        ):
            return
        root = self.path.parent
        if _store_complete(root / "acts", settings.tokens):
            self.records["acts"] = {"key": keys["acts"], "done": True}
            family_json = root / "family" / "family.json"
            if previous == current and family_json.exists():
                members = json.loads(family_json.read_text()).get("members", [])
                if len(members) == len(settings.multipliers):
                    self.records["family"] = {"key": keys["family"], "done": True}
            write_json(self.path, self.records)


def _store_complete(path: Path, tokens: int) -> bool:
    meta_path = path / META_FILE
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    return int(meta.get("n_tokens", 0)) >= tokens


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- the report

EVAL_TOKENS = 16_384
"""Tokens at the start of the store held out for every metric (train_family holds out the
same tokens for its own evaluation)."""
NOVELTY_TOKENS = 8192
"""Held-out tokens behind the novelty section's delta-MSE and curves."""
NOVELTY_POINTS = 7
"""Points on each cumulative novelty curve."""
TREE_MIN_SIZE = 3
"""Features a tree needs to be listed in ``trees.json``."""
TREE_COUNT = 50
"""Trees kept in ``trees.json``, most-splitting roots first."""
STITCH_TOKENS = 50_000
"""Tokens after the held-out ones that the Frankenstein decoder is refit on."""


def run_demo(
    out: str | Path = DEFAULT_ROOT,
    *,
    quick: bool = False,
    retrain: bool = False,
    settings: DemoSettings | None = None,
    progress: bool | None = None,
) -> Path:
    """Build the demo data under ``out`` (cached), run every analysis, write the report.

    The family is the shipped one; ``retrain`` trains one here in minutes
    (:meth:`DemoSettings.retrained`) and ``quick`` a smaller one on fewer tokens
    (:meth:`DemoSettings.quick`); ``settings`` overrides both.

    Returns the path of ``out/report/index.html``. Analysis results are cached beside the
    report, each section's files keyed by the settings and stages that produced them (see
    :func:`stage_keys`), so a second run with the same settings only re-renders the page and
    a changed setting recomputes the sections that depend on it.
    """
    if settings is None:
        settings = (
            DemoSettings.quick()
            if quick
            else DemoSettings.retrained()
            if retrain
            else DemoSettings()
        )
    data = demo_data(out, settings, progress=progress)
    return write_report(data, progress=progress)


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

    page.heading("Novel and reconstruction features (seed 003)")
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
        seed_003_table,
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
        "below about 1/2. <code>auc_max_cos</code> and <code>auc_explained</code> say how well "
        "each score ranks the features that lower the MSE above those that do not (ROC AUC; "
        "0.5 is chance, 1 perfect)."
    )
    # The kind × sign counts show as the 2×2 tables below rather than as summary columns.
    cells = [c for c in result.summary if c.endswith(("_decreases", "_does_not_decrease"))]
    page.table(result.summary.drop(columns=cells))
    page.table(kind_sign_frame(result))
    page.text(
        "Seed 003's figures for every adjacent pair, under the seed's own first GPT-2 pair "
        f"(on the first {NOVELTY_TOKENS:,} held-out tokens):"
    )
    page.table(seed_003_table(result.summary))
    page.text(seed_003_comparison(result), note=True)
    page.figure(novelty_figure(result, title="Novel vs reconstruction"))
    return result


def _tree_section(page: Any, data: DemoData, report_dir: Path, stages: Stages, key: str) -> None:
    from saegeo.trees.dag import feature_dag, forest, node_id, tree_root
    from saegeo.trees.tree_json import forest_from_json, forest_to_json
    from saegeo.viz.figures import tree_figure

    path = report_dir / "trees.json"
    if stages.ready("trees", key, [path]):
        trees = forest_from_json(json.loads(path.read_text()))
    else:
        G = feature_dag(data.family)
        _, trees = forest(G, rank_by="split", min_size=TREE_MIN_SIZE)
        trees = trees[:TREE_COUNT]
        write_json(path, forest_to_json(G, trees, rank_by="split"))
        stages.done("trees")
    page.text(
        f"Edges join a feature to the next width's features whose decoder cosine with it "
        f"exceeds 0.7; each feature is kept under its best parent. {len(trees)} trees with at "
        f"least {TREE_MIN_SIZE} features, most-splitting roots first, are in "
        "<code>trees.json</code>."
    )
    if trees:
        labels = _token_labels(data, trees[0])
        page.figure(
            tree_figure(
                trees[0], labels=labels, title=f"Feature tree {node_id(tree_root(trees[0]))}"
            ),
            height="560px",
        )


def _token_labels(data: DemoData, tree: Any) -> dict[str, str]:
    """The top activating tokens of each feature in ``tree``, as node labels."""
    from saegeo.core.codes import encode_codes
    from saegeo.lm.harvest import load_tokenizer
    from saegeo.lm.snippets import store_tokens

    try:
        tokenizer = load_tokenizer(data.store)
        tokens = store_tokens(data.store)
    except Exception:  # a store without token ids or tokenizer: no labels, same figure
        log.info("no token labels: the store has no tokenizer or token ids")
        return {}
    sample = data.store.slice(0, 32_768)
    labels: dict[str, str] = {}
    for level in sorted({node[0] for node in tree.nodes}):
        features = sorted(node[1] for node in tree.nodes if node[0] == level)
        codes = encode_codes(data.family[level].select(features), sample, progress=False)
        for column, feature in enumerate(features):
            values = codes[:, column].toarray().ravel()
            top = values.argsort()[::-1][:5]
            words = [
                tokenizer.decode([int(tokens.token_ids[t])]).strip() or "␣"
                for t in top
                if values[t] > 0
            ]
            labels[f"{level}/{feature}"] = " · ".join(dict.fromkeys(words))
    return labels


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

    from saegeo.io.formats import save_sae
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
        save_sae(stitched.saes[-1], stitched_dir)
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


def seed_003_comparison(result: Any) -> str:
    """Where ``result`` (:class:`~saegeo.effects.novelty.FamilyNovelty` with activations) agrees
    with seed 003's three findings and where it does not, in words with the figures."""
    from saegeo.effects.novelty import SEED_003_FIRST_PAIR as seed

    summary = result.summary
    n_novel = summary["novel_decreases"] + summary["novel_does_not_decrease"]
    n_rec = summary["reconstruction_decreases"] + summary["reconstruction_does_not_decrease"]
    share = n_novel / summary["large_width"]
    novel_lowers = summary["novel_decreases"] / n_novel.clip(lower=1)
    rec_raises = summary["reconstruction_does_not_decrease"] / n_rec.clip(lower=1)
    seed_novel = seed["n_novel"]
    seed_rec = seed["reconstruction_decreases"] + seed["reconstruction_does_not_decrease"]
    findings = [
        (
            "novel features are a minority of the wider SAE",
            share,
            seed_novel / seed["large_width"],
            lambda v: v < 0.5,
        ),
        (
            "novel features lower the narrower SAE's MSE when added",
            novel_lowers,
            seed["novel_decreases"] / seed_novel,
            lambda v: v > 0.5,
        ),
        (
            "reconstruction features raise it",
            rec_raises,
            seed["reconstruction_does_not_decrease"] / seed_rec,
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
            f"{verdict} with seed 003 that {claim}: {span} here, {published:.0%} there."
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
