"""The ``saegeo`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, get_args

from saegeo import cli_args as types
from saegeo.effects.hybrid import TOPK_MODES
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.lm.config import MODEL_DTYPES, STORE_DTYPES
from saegeo.stitch.config import RETRAINS
from saegeo.training.config import TRAIN_ARCHS, PenaltyKind, Prefixes
from saegeo.trees.dag import Metric

EXIT_USER_ERROR = 2
# Library arguments that a flag of another name sets (the others are spelt alike: max_tokens
# is --tokens, sgd_tokens is --sgd-tokens).
FLAG_NAMES = {"max_tokens": "--tokens", "texts": "--text"}
DEFAULT_CONTEXT = 128
SAE_PATHS_HELP = (
    "SAEs of one family: directories, a directory of them, or published SAEs named "
    "sae-lens:RELEASE/SAE_ID (one SAE), sae-lens:RELEASE (the release's family on one site) "
    "or hf:ORG/NAME/FOLDER (a Hugging Face repository folder)"
)


def _report_skipped(args: argparse.Namespace, acts: Any) -> None:
    skipped = getattr(acts, "skipped_rows", 0)
    if skipped:
        print(f"skipped {skipped} rows with NaN or Inf values in {args.acts}")


def _cmd_info(args: argparse.Namespace) -> int:
    from saegeo.core.describe import describe_sae
    from saegeo.io.pretrained import load_family_spec

    family = load_family_spec(args.paths)
    for sae in family:
        print(describe_sae(sae))
    if len(family) > 1:
        print(f"family: {len(family)} SAEs, widths {family.widths}, d_in {family.d_in}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saegeo.demo import run_demo

    types.guard(args, [(args.out, "demo", "--out")], [])
    report = run_demo(args.out, quick=args.quick)
    print(f"report: {report}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from saegeo.effects.novelty import novelty_table
    from saegeo.io.atomic import write_text
    from saegeo.io.pretrained import load_sae_spec

    types.guard(args, [(args.out, "table", "--out")], [args.small, args.large, args.acts])
    small, large = load_sae_spec(args.small), load_sae_spec(args.large)
    acts = types.open_acts(args)
    table = novelty_table(
        small,
        large,
        acts,
        threshold=args.threshold,
        topk=args.topk,
        limit=args.limit,
        device=args.device,
    )
    write_text(args.out, table.to_csv())
    _report_skipped(args, acts)
    n_novel = int((table["kind"] == "novel").sum())
    print(
        f"{n_novel} of {len(table)} features of {large.name} are novel "
        f"(max cos <= {args.threshold}) -> {args.out}"
    )
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    from saegeo.io.atomic import json_text
    from saegeo.io.pretrained import RELEASE_PREFIX, load_family_spec
    from saegeo.trees.dag import feature_dag, feature_tree, forest, node_id, parse_node_id
    from saegeo.trees.tree_json import forest_to_json, read_labels, tree_to_json
    from saegeo.viz.figures import figure_page, forest_html, tree_figure

    types.guard(
        args,
        [(args.out, "tree", "--out"), (args.html, "html", "--html")],
        [*args.paths, args.acts, args.labels],
    )
    threshold = args.threshold
    if args.metric == "decoder_cosine" and threshold is not None and not -1 <= threshold <= 1:
        raise SaegeoError(
            f"--threshold {threshold:g}: a decoder cosine threshold must lie in [-1, 1]"
        )
    root = None if args.all else parse_node_id(args.root, name="--root")
    labels = read_labels(args.labels) if args.labels else None
    if args.neuronpedia and root is None:
        raise SaegeoError("--neuronpedia: prints the quick list of one tree; use it with --root")
    if bool(args.paths) == bool(args.release):
        raise SaegeoError("give the family as PATH... or as --release RELEASE (one of the two)")
    family = load_family_spec(args.paths or [RELEASE_PREFIX + args.release])
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
        device=args.device,
    )
    if root is None:
        table, trees = forest(G, rank_by=args.rank_by, min_size=args.min_size)
        doc = forest_to_json(G, trees, rank_by=args.rank_by, labels=labels)
        page = forest_html(trees, labels=labels, top=args.top) if args.html else None
        types.write_tree(args, json_text(doc), page)
        _report_skipped(args, acts)
        print(table.head(args.top).to_string())
        print(f"forest: {len(trees)} trees of >= {args.min_size} features -> {args.out}")
        return 0
    T = feature_tree(G, root)
    page = figure_page(tree_figure(T, labels=labels)) if args.html else None
    types.write_tree(args, json_text(tree_to_json(T, labels=labels)), page)
    _report_skipped(args, acts)
    print(f"tree {node_id(root)}: {T.number_of_nodes()} features -> {args.out}")
    if args.neuronpedia:
        from saegeo.trees.neuronpedia import tree_quick_list

        print(f"Neuronpedia: {tree_quick_list(T, name=f'saegeo tree {node_id(root)}')}")
    return 0


def _cmd_stitch(args: argparse.Namespace) -> int:
    from saegeo.io.atomic import atomic_dir, write_json
    from saegeo.io.formats import save_sae
    from saegeo.io.pretrained import load_family_spec
    from saegeo.stitch.frankenstein import StitchConfig, frankenstein

    types.guard(
        args,
        [(args.out, "stitched", "--out"), (args.checkpoint, "checkpoint", "--checkpoint")],
        [*args.paths, args.acts],
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
    config = StitchConfig(
        threshold=args.threshold,
        upto=args.upto,
        swap=args.swap,
        retrain=args.retrain,
        sgd_tokens=args.sgd_tokens,
        checkpoint=args.checkpoint,
        limit=args.limit,
        device=args.device,
    )
    sae, report = frankenstein(family, acts, config)
    # The SAE and its report appear together under --out, or not at all.
    with atomic_dir(args.out) as tmp:
        save_sae(sae, tmp)
        write_json(tmp / "report.json", report.to_dict())
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
        layer=args.layer,
        hook=site["hook"],
        center_writing_weights=site["center"],
        context=site["context"],
        skip_first=args.skip_first,
        batch_size=args.batch_size,
        max_tokens=args.tokens,
        dtype=args.dtype,
        device=args.device,
        gguf_file=args.gguf_file,
        model_dtype=args.model_dtype,
        compile={"auto": None, "yes": True, "no": False}[args.compile],
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
    from saegeo.lm.harvest import DEFAULT_MODEL

    site = {
        "model": args.model or DEFAULT_MODEL,
        "hook": args.hook,
        "center": False,
        "context": args.context or DEFAULT_CONTEXT,
    }
    if not args.for_sae:
        return site
    from saegeo.io.pretrained import site_metadata
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
    from saegeo.io.atomic import atomic_dir
    from saegeo.training.trainer import TrainConfig, train_family

    types.guard(args, [(args.out, "family", "--out")], [args.acts])
    widths = list(args.widths)
    matryoshka = args.matryoshka_widths
    acts = types.open_acts(args)
    types.check_train_size(args, widths, acts.d_in)
    config = TrainConfig(
        arch=args.arch,
        k=args.k,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        sparsity=args.sparsity,
        sparsity_coefficient=args.sparsity_coefficient,
        target_l0=args.target_l0,
        matryoshka_widths=matryoshka,
        prefixes=args.prefixes,
        eval_tokens=args.eval_tokens,
        device=args.device,
        seed=args.seed,
    )
    # Trained into a fresh directory that replaces --out once every member is saved: an
    # interrupted run leaves the previous output as it was, never a mix of two runs.
    with atomic_dir(args.out) as tmp:
        run = train_family(acts, widths, config, out_dir=tmp)
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


def build_parser() -> argparse.ArgumentParser:
    parser = types.Parser(
        prog="saegeo",
        description="Geometry of features across SAE families: splitting, novel features, "
        "feature trees and Frankenstein SAEs.",
        epilog="SAE NAMES: wherever a command takes an SAE directory it also takes a published "
        "SAE: sae-lens:RELEASE/SAE_ID (a release of SAELens's registry, e.g. "
        "sae-lens:gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_768), "
        "sae-lens:RELEASE (every SAE of the release on its first SAE's site) or "
        "hf:ORG/NAME/FOLDER (a folder of a Hugging Face repository). Files come through the "
        "Hugging Face cache; with HF_HUB_OFFLINE=1 only the cache is read.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe SAEs: architecture, sizes, L0 settings, norms")
    p.add_argument("paths", nargs="+", type=types.path, help=SAE_PATHS_HELP)
    p.set_defaults(func=_cmd_info, parser=p)

    p = sub.add_parser("classify", help="novel vs reconstruction features of a larger SAE")
    p.add_argument(
        "small", type=types.path, help="the smaller SAE (directory, or sae-lens:RELEASE/SAE_ID)"
    )
    p.add_argument(
        "large", type=types.path, help="the larger SAE (directory, or sae-lens:RELEASE/SAE_ID)"
    )
    p.add_argument(
        "--threshold",
        type=types.real(-1, 1),
        default=0.7,
        help="novel iff max decoder cosine <= T (default %(default)s)",
    )
    p.add_argument("--acts", type=types.path, help="activations; adds each feature's delta_mse")
    p.add_argument(
        "--topk",
        choices=TOPK_MODES,
        default="reencode",
        help="--acts with TopK SAEs: TopK union, or convert to JumpReLU (default %(default)s)",
    )
    p.add_argument("--limit", type=types.integer(1), help="use only the first N activation tokens")
    p.add_argument(
        "--out", required=True, type=types.path, help="CSV output, one row per larger-SAE feature"
    )
    types.add_common(p)
    p.set_defaults(func=_cmd_classify, parser=p)

    p = sub.add_parser("tree", help="feature tree (or forest) across the widths of a family")
    p.add_argument("paths", nargs="*", type=types.path, help=SAE_PATHS_HELP)
    p.add_argument(
        "--release", help="instead of PATH...: the family of a published release (sae-lens:RELEASE)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--root", help="root feature LEVEL/FEATURE (level 0 is the narrowest SAE)")
    which.add_argument("--all", action="store_true", help="every tree (forest), ranked")
    p.add_argument(
        "--metric",
        choices=get_args(Metric),
        default="decoder_cosine",
        help="edge score (default %(default)s)",
    )
    p.add_argument(
        "--acts",
        type=types.path,
        help="activations (.npy, .safetensors or store directory); needed "
        "by masked_cosine, adds freq and max_act otherwise",
    )
    p.add_argument(
        "--threshold",
        type=types.real(),
        default=None,
        help="edge iff score > T (default 0.7 decoder_cosine, 0.6 masked_cosine)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=types.path,
        help="JSON output (saegeo.feature_tree.v1, or saegeo.feature_forest.v1 with --all)",
    )
    p.add_argument(
        "--html",
        type=types.path,
        help="also write an interactive HTML figure (a page of the top trees with --all)",
    )
    p.add_argument(
        "--labels", type=types.path, help="JSON object of labels by LEVEL/FEATURE, shown on hover"
    )
    p.add_argument(
        "--neuronpedia",
        action="store_true",
        help="--root: print a Neuronpedia quick-list URL of the tree's features (published SAEs)",
    )
    p.add_argument(
        "--rank-by",
        choices=["size", "split"],
        default="size",
        help="--all: rank trees by size or by how much the root splits",
    )
    p.add_argument(
        "--min-size",
        type=types.integer(1),
        default=2,
        help="--all: leave out trees of fewer features (default %(default)s)",
    )
    p.add_argument(
        "--top",
        type=types.integer(1),
        default=10,
        help="--all: trees shown in --html and printed (default %(default)s)",
    )
    types.add_common(p)
    p.set_defaults(func=_cmd_tree, parser=p)

    p = sub.add_parser("stitch", help="Frankenstein SAE: stitch novel features across widths")
    p.add_argument("paths", nargs="+", type=types.path, help=SAE_PATHS_HELP)
    p.add_argument(
        "--acts",
        required=True,
        type=types.path,
        help="activations (.npy, .safetensors or store dir)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=types.path,
        help="output directory (SAELens layout + report.json)",
    )
    p.add_argument(
        "--threshold",
        type=types.real(-1, 1),
        default=0.7,
        help="add a feature iff its max decoder cosine is <= T (default %(default)s)",
    )
    p.add_argument("--upto", type=types.integer(1), help="use members of width <= W (default all)")
    p.add_argument("--swap", action="store_true", help="also swap children in for swap groups")
    p.add_argument(
        "--retrain",
        choices=RETRAINS,
        default="exact",
        help="decoder refit with the encoder frozen (default %(default)s)",
    )
    p.add_argument(
        "--sgd-tokens",
        type=types.integer(1),
        help="--retrain sgd: training tokens (default 10 passes over the activations)",
    )
    p.add_argument("--checkpoint", type=types.path, help="--retrain sgd: resumable checkpoint file")
    p.add_argument("--limit", type=types.integer(1), help="use only the first N activation tokens")
    types.add_common(p)
    p.set_defaults(func=_cmd_stitch, parser=p)

    p = sub.add_parser("harvest", help="store a language model's residual stream on text")
    p.add_argument(
        "--model",
        help="packaged model, Hugging Face name, local directory or .gguf file "
        "(default smollm2-135m-instruct, or the model of --for's SAE)",
    )
    p.add_argument(
        "--for",
        dest="for_sae",
        metavar="SAE",
        help="harvest the site of this SAE (directory, sae-lens:RELEASE[/SAE_ID] or "
        "hf:ORG/NAME/FOLDER): its model, TransformerLens hook, context size and model "
        "settings (center_writing_weights); --model and --context still override",
    )
    p.add_argument(
        "--hook",
        help="TransformerLens hook instead of --layer: blocks.L.hook_resid_pre (L >= 1, the "
        "output of block L-1) or blocks.L.hook_resid_post",
    )
    p.add_argument("--gguf-file", help="GGUF file inside --model, for GGUF checkpoints")
    p.add_argument(
        "--layer",
        type=types.integer(0),
        help="store the residual after this block, 0-based "
        "(= hidden_states[LAYER+1]; default the middle block)",
    )
    p.add_argument(
        "--text",
        default="bbc_news",
        help="bbc_news (packaged), a directory of "
        ".txt files, a .txt file (a document a line) or .jsonl (default %(default)s)",
    )
    p.add_argument(
        "--tokens", type=types.integer(1), help="stored tokens in all (default the whole text)"
    )
    p.add_argument(
        "--context",
        type=types.integer(2),
        help="tokens per model input, BOS included (default 128, or --for's SAE's context size)",
    )
    p.add_argument(
        "--skip-first",
        type=types.integer(0),
        default=1,
        help="text tokens at the start of each context run but not stored: the first position "
        "often holds a massive attention-sink activation (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=types.integer(1),
        default=16,
        help="contexts per forward pass (default %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=STORE_DTYPES,
        default="float16",
        help="stored dtype (default %(default)s)",
    )
    p.add_argument(
        "--model-dtype",
        choices=MODEL_DTYPES,
        default="auto",
        help="dtype the model computes in; auto is bfloat16 where "
        "the device is fast at it, else float32",
    )
    p.add_argument(
        "--out", required=True, type=types.path, help="store directory; re-running resumes it"
    )
    p.add_argument(
        "--device", default="auto", type=types.device, help="torch device (default %(default)s)"
    )
    p.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="torch.compile the blocks that run; auto: on a CPU, for 100k tokens or more",
    )
    p.add_argument(
        "--threads", type=types.integer(1), help="CPU threads for torch (default: torch's choice)"
    )
    p.set_defaults(func=_cmd_harvest, parser=p)

    p = sub.add_parser("train", help="train a family of SAEs, one per width, on activations")
    p.add_argument(
        "--acts",
        required=True,
        type=types.path,
        help="activations (.npy, .safetensors or store dir)",
    )
    p.add_argument(
        "--arch",
        default="topk",
        choices=TRAIN_ARCHS,
        help="training architecture (default %(default)s)",
    )
    p.add_argument(
        "--widths",
        required=True,
        type=types.integer_list,
        help="comma-separated widths, e.g. 576,1152,2304",
    )
    p.add_argument(
        "--out",
        required=True,
        type=types.path,
        help="output directory: <arch>-<width>/ per member",
    )
    p.add_argument(
        "--k",
        type=types.integer(1),
        default=32,
        help="L0 of TopK variants, pursuit steps of matching pursuit (default 32)",
    )
    p.add_argument(
        "--tokens",
        type=types.integer(1),
        default=500_000,
        help="training tokens per member (default %(default)s)",
    )
    p.add_argument("--batch-size", type=types.integer(1), default=4096, help="default %(default)s")
    p.add_argument(
        "--lr",
        type=types.real(0, above=True),
        default=2e-3,
        help="Adam peak rate (default %(default)s)",
    )
    p.add_argument(
        "--sparsity",
        choices=get_args(PenaltyKind),
        default="log",
        help="ReLU penalty (default %(default)s)",
    )
    p.add_argument(
        "--sparsity-coefficient",
        type=types.real(0),
        help="ReLU penalty weight (default 0.3 log, 3.0 l1)",
    )
    p.add_argument(
        "--target-l0",
        type=types.real(0, above=True),
        help="ReLU: adapt the penalty towards this L0",
    )
    p.add_argument(
        "--matryoshka-widths",
        type=types.integer_list,
        help="Matryoshka nested widths (default: halvings)",
    )
    p.add_argument(
        "--prefixes",
        choices=get_args(Prefixes),
        default="fixed",
        help="Matryoshka prefixes per batch (default %(default)s)",
    )
    p.add_argument(
        "--eval-tokens",
        type=types.integer(0),
        default=16_384,
        help="first tokens held out for the metrics (default %(default)s)",
    )
    p.add_argument("--seed", type=types.integer(0), default=0, help="default %(default)s")
    types.add_common(p)
    p.set_defaults(func=_cmd_train, parser=p)

    p = sub.add_parser("demo", help="the whole pipeline on the packaged model and text")
    p.add_argument(
        "--out",
        default="reports/demo",
        type=types.path,
        help="report directory (default %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.set_defaults(func=_cmd_demo, parser=p)

    return parser


def flag_message(exc: SaegeoError, parser: argparse.ArgumentParser) -> str:
    """The error's message, with the flag that sets the argument it names (``--tokens 0: ...``
    for ``HarvestConfig.max_tokens=0: ...``) where the command's ``parser`` has one."""
    if not isinstance(exc, ArgumentError):
        return str(exc)
    flag = FLAG_NAMES.get(exc.name, "--" + exc.name.replace("_", "-"))
    if flag not in {option for action in parser._actions for option in action.option_strings}:
        return str(exc)
    return f"{flag} {exc.value}: {exc.problem}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    if unknown:
        print(
            f"saegeo {args.command}: error: unrecognized arguments: {' '.join(unknown)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SaegeoError as exc:
        from saegeo.io.store import NonFiniteError

        message = (
            exc.message("pass --skip-nonfinite to drop such rows")
            if isinstance(exc, NonFiniteError)
            else flag_message(exc, args.parser)
        )
        print(f"saegeo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"saegeo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
