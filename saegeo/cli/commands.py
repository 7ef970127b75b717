"""What each ``saegeo`` subcommand does with its parsed flags."""

from __future__ import annotations

import argparse
from typing import Any

from saegeo.cli import args as types
from saegeo.cli.options import option_values
from saegeo.errors import SaegeoError


def _report_skipped(args: argparse.Namespace, acts: Any) -> None:
    from saegeo.runtime import distributed

    skipped = getattr(acts, "skipped_rows", 0)
    if distributed.is_distributed() and acts is not None:
        # Each rank read its own share of the rows: count the union of what they dropped.
        skipped = len(set().union(*distributed.all_gather(set(acts._skipped))))
    if skipped:
        print(f"skipped {skipped} rows with NaN or Inf values in {args.acts}")


def _cmd_info(args: argparse.Namespace) -> int:
    from saegeo.core.describe import describe_sae
    from saegeo.formats.pretrained import load_family_spec

    family = load_family_spec(args.paths)
    for sae in family:
        print(describe_sae(sae))
    if len(family) > 1:
        print(f"family: {len(family)} SAEs, widths {family.widths}, d_in {family.d_in}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saegeo.demo import run_demo

    types.guard(args, [(args.out, "demo", "--out")], [])
    report = run_demo(args.out, quick=args.quick, retrain=args.retrain)
    print(f"report: {report}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from saegeo.effects.novelty import novelty_table
    from saegeo.formats.pretrained import load_sae_spec

    types.guard(args, [(args.out, "table", "--out")], [args.small, args.large, args.acts])
    small, large = load_sae_spec(args.small), load_sae_spec(args.large)
    if small.width > large.width:
        raise SaegeoError(
            f"SMALL {args.small} has width {small.width}, wider than LARGE {args.large} "
            f"({large.width}); classify sorts the larger SAE's features, so give the narrower "
            "one first"
        )
    acts = types.open_acts(args)
    table = novelty_table(small, large, acts, **option_values(args, novelty_table))
    if (out := types.claim(args)) is not None:
        out.path.write_text(table.to_csv(), encoding="utf-8")
        types.commit(out)
    _report_skipped(args, acts)
    n_novel = int((table["kind"] == "novel").sum())
    print(
        f"{n_novel} of {len(table)} features of {large.name} are novel "
        f"(max cos <= {args.threshold}) -> {args.out}"
    )
    return 0


def _cmd_match(args: argparse.Namespace) -> int:
    from saegeo.formats.pretrained import load_sae_spec
    from saegeo.geometry.matching import match_features
    from saegeo.runtime.atomic import write_text

    types.guard(args, [(args.out, "matches", "--out")], [args.a, args.b])
    a, b = load_sae_spec(args.a), load_sae_spec(args.b)
    match = match_features(a, b, threshold=args.threshold, encoder=args.encoder)
    write_text(args.out, match.pairs.to_csv())
    n_shared = int(match.pairs["shared"].sum())
    print(
        f"{n_shared} of {len(match.pairs)} matched pairs of {a.name} and {b.name} are shared "
        f"({match.shared_fraction:.3f} at > {args.threshold}); mean matched cosine "
        f"{match.mean_cos:.3f} ({match.method}) -> {args.out}"
    )
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    from saegeo.core.feature_info import neuronpedia_id
    from saegeo.formats.pretrained import RELEASE_PREFIX, load_family_spec
    from saegeo.runtime.atomic import json_text
    from saegeo.trees.dag import feature_dag, feature_tree, forest, node_id, parse_node_id
    from saegeo.trees.neuronpedia import tree_quick_list
    from saegeo.trees.tree_json import forest_to_json, read_labels, tree_to_json
    from saegeo.viz.figures import forest_html, tree_page

    types.guard(
        args,
        [(args.out, "tree", "--out"), (args.html, "html", "--html")],
        [*args.paths, args.acts, args.labels],
    )
    types.check_edge_threshold(args)
    if args.metric != "decoder_cosine" and not args.acts:
        raise SaegeoError(f"--metric {args.metric} needs activations; pass --acts")
    root = None if args.all else parse_node_id(args.root, name="root")
    labels = read_labels(args.labels) if args.labels else None
    if args.neuronpedia and root is None:
        raise SaegeoError("--neuronpedia: prints the quick list of one tree; use it with --root")
    if bool(args.paths) == bool(args.release):
        raise SaegeoError("give the family as PATH... or as --release RELEASE (one of the two)")
    family = load_family_spec(args.paths or [RELEASE_PREFIX + args.release])
    if args.neuronpedia and not any(neuronpedia_id(sae) for sae in family):
        raise SaegeoError(
            "--neuronpedia: no SAE of this family has Neuronpedia pages (only SAEs loaded from "
            "a release with Neuronpedia ids have them); leave the flag out"
        )
    if root is not None and not (root[0] < len(family) and root[1] < family.widths[root[0]]):
        raise SaegeoError(
            f"--root {node_id(root)}: no such feature; levels have widths "
            f"{family.widths} (level 0 is the narrowest)"
        )
    acts = types.open_acts(args)
    G = feature_dag(
        family,
        metric=args.metric,
        threshold=args.threshold,
        acts=acts,
        limit=args.limit,
        device=args.device,
    )
    if root is None:
        table, trees = forest(G, rank_by=args.rank_by, min_size=args.min_size)
        labels = _tree_labels(args, family, acts, [n for T in trees for n in T], labels)
        doc = forest_to_json(G, trees, rank_by=args.rank_by, labels=labels)
        page = forest_html(trees, labels=labels, top=args.top) if args.html else None
        types.write_tree(args, json_text(doc), page)
        _report_skipped(args, acts)
        print(table.head(args.top).to_string())
        print(f"forest: {len(trees)} trees of >= {args.min_size} features -> {args.out}")
        return 0
    T = feature_tree(G, root)
    # The quick list is made before anything is written: a tree without pages fails whole.
    quick_list = (
        tree_quick_list(T, name=f"saegeo tree {node_id(root)}") if args.neuronpedia else None
    )
    labels = _tree_labels(args, family, acts, list(T), labels)
    page = tree_page(T, labels=labels) if args.html else None
    types.write_tree(args, json_text(tree_to_json(T, labels=labels)), page)
    _report_skipped(args, acts)
    print(f"tree {node_id(root)}: {T.number_of_nodes()} features -> {args.out}")
    if quick_list is not None:
        print(f"Neuronpedia: {quick_list}")
    return 0


def _tree_labels(
    args: argparse.Namespace,
    family: Any,
    acts: Any,
    nodes: list[tuple[int, int]],
    given: dict[str, str] | None,
) -> dict[str, str]:
    """Top-token labels of ``nodes`` where ``--acts`` is a harvested store (token ids and a
    tokenizer), overridden by ``--labels``."""
    labels: dict[str, str] = {}
    if acts is not None and acts.meta.get("tokenizer") and acts.token_ids() is not None:
        from saegeo.lm.labels import feature_labels

        if acts.skipped_rows:
            print("no top-token labels: rows with NaN or Inf values were skipped")
        else:
            labels = feature_labels(family, acts, nodes, device=args.device, progress=None)
    labels.update(given or {})
    return labels


def _cmd_explore(args: argparse.Namespace) -> int:
    import time

    from saegeo.explorer.facts import family_facts
    from saegeo.explorer.site import write_site_files
    from saegeo.formats.pretrained import load_family_spec

    types.guard(args, [(args.out, "explore", "--out")], [*args.paths, args.acts])
    types.check_edge_threshold(args)
    family = load_family_spec(args.paths)
    acts = types.open_acts(args)
    start = time.perf_counter()
    facts = family_facts(
        family, acts, **option_values(args, family_facts), with_effects=not args.no_effects
    )
    if (out := types.claim(args)) is not None:
        write_site_files(facts, out.path)
        types.commit(out)
    _report_skipped(args, acts)
    print(
        f"explorer of {len(family)} SAEs (widths {family.widths}) in "
        f"{time.perf_counter() - start:.0f} s -> {args.out}/index.html"
    )
    return 0


def _cmd_stitch(args: argparse.Namespace) -> int:
    from saegeo.formats.pretrained import load_family_spec
    from saegeo.formats.saelens import write_saelens
    from saegeo.runtime import distributed
    from saegeo.runtime.atomic import write_json
    from saegeo.stitch.frankenstein import StitchConfig, frankenstein

    config = StitchConfig(**option_values(args, StitchConfig))
    types.guard(
        args,
        [(args.out, "stitched", "--out"), (args.checkpoint, "checkpoint", "--checkpoint")],
        [*args.paths, args.acts],
    )
    if distributed.is_distributed() and args.retrain == "sgd":
        raise SaegeoError(
            "--retrain sgd trains on one process; under torchrun use --retrain exact "
            "(its statistics are split across ranks), or launch without torchrun"
        )
    family = load_family_spec(args.paths)
    if args.upto is not None and args.upto < family.widths[0]:
        raise SaegeoError(
            f"--upto {args.upto}: no member is that narrow; the widths are {family.widths}"
        )
    # The stitched SAE holds at most every member's features: encoder and decoder, float32.
    types.guard(
        args,
        [(args.out, "stitched", "--out")],
        [*args.paths, args.acts],
        need_bytes=8 * family.d_in * sum(family.widths),
    )
    acts = types.open_acts(args)
    sae, report = frankenstein(family, acts, config)
    # The SAE and its report appear together under --out, or not at all.
    if (out := types.claim(args)) is not None:
        write_saelens(sae, out.path)
        write_json(out.path / "report.json", report.to_dict())
        types.commit(out)
    _report_skipped(args, acts)
    columns = [
        "source",
        "added",
        "swapped_in",
        "n_features",
        "l0_before",
        "mse_before",
        "mse_after",
    ]
    print(report.to_frame()[columns].to_string(index=False))
    if report.refit_method in ("cholesky", "lstsq", "cg"):
        print(
            f"exact refit by {report.refit_method}: {report.refit_iterations} iterations, "
            f"largest relative residual {report.refit_residual:.1e}, "
            f"{report.refit_seconds:.1f} s"
        )
    print(f"frankenstein: {sae.width} features ({args.retrain} refit) -> {args.out}")
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saegeo.lm.config import HarvestConfig
    from saegeo.lm.harvest import harvest

    local = [p for p in (args.model, args.text) if p is not None and Path(p).exists()]
    types.guard(args, [(args.out, "store", "--out")], local)
    if args.threads:
        import torch

        # On a machine shared with other jobs, fewer threads than cores avoids stalls at
        # every parallel op; this process is the only user of the setting.
        torch.set_num_threads(args.threads)
    site = _harvest_site(args)
    config = HarvestConfig(
        **option_values(args, HarvestConfig)
        | {
            "hook": site["hook"],
            "center_writing_weights": site["center"],
            "context": site["context"],
            "compile": {"auto": None, "yes": True, "no": False}[args.compile_mode],
        }
    )
    store = harvest(site["model"], args.text, args.out, config)
    meta = store.meta
    print(
        f"harvest: {store.n_tokens} tokens x {store.d_in} ({meta['dtype']}) from "
        f"{meta['model']} {meta['hook']} -> {args.out}"
    )
    return 0


def _harvest_site(args: argparse.Namespace) -> dict:
    """Model, hook, context and centring for ``harvest``: from --for's SAE, else the flags."""
    from saegeo.lm.config import HarvestConfig
    from saegeo.lm.models import DEFAULT_MODEL

    site = {
        "model": args.model or DEFAULT_MODEL,
        "hook": args.hook,
        "center": False,
        "context": args.context or HarvestConfig.context,
    }
    if not args.for_sae:
        return site
    from saegeo.formats.pretrained import site_metadata
    from saegeo.lm.sites import hf_model_name, site_for

    if args.layer is not None or args.hook is not None:
        raise SaegeoError("--for sets the hook from the SAE; drop --layer/--hook")
    meta = site_metadata(args.for_sae)
    found = site_for(meta, source=f"--for {args.for_sae}")
    if not args.model and not meta.get("model_name"):
        raise SaegeoError(f"--for {args.for_sae}: records no model_name; pass --model")
    site.update(hook=found.hook_name, center=found.center_writing_weights)
    site["model"] = args.model or hf_model_name(str(meta["model_name"]))
    if not args.context and isinstance(meta.get("context_size"), int):
        site["context"] = int(meta["context_size"])
    return site


def _cmd_train(args: argparse.Namespace) -> int:
    from saegeo.training.trainer import TrainConfig, train_family

    config = TrainConfig(**option_values(args, TrainConfig))
    types.guard(args, [(args.out, "family", "--out")], [args.acts], hold=False)
    widths = list(args.widths)
    acts = types.open_acts(args)
    types.check_train_size(args, widths, acts.d_in)
    # train_family claims --out and replaces it once every member is saved: an interrupted
    # run leaves the previous output as it was, never a mix of two runs.
    run = train_family(acts, widths, config, out_dir=args.out, overwrite=args.force)
    _report_skipped(args, acts)
    for report in run.reports:
        m = report.metrics
        held_out = (
            f"mse {m.mse:.4g}  fvu {m.fvu:.4f}  l0 {m.l0:.1f}  dead {m.dead_fraction:.3f}"
            if m is not None
            else "no held-out tokens"
        )
        print(f"{report.arch}-{report.width}: {held_out}  ({report.tokens_per_second:.0f} tok/s)")
    print(f"family: {len(run.reports)} SAEs -> {args.out} (family.json, metrics.csv)")
    return 0
