"""The ``saegeo`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from saegeo.errors import SaegeoError

EXIT_USER_ERROR = 2


def _cmd_info(args: argparse.Namespace) -> int:
    from saegeo.core.describe import describe_sae
    from saegeo.core.family import Family

    family = Family.load(args.paths)
    for sae in family:
        print(describe_sae(sae))
    if len(family) > 1:
        print(f"family: {len(family)} SAEs, widths {family.widths}, d_in {family.d_in}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saegeo.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"report: {report}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from saegeo.effects.novelty import novelty_table
    from saegeo.io.atomic import write_text
    from saegeo.io.formats import load_sae
    from saegeo.io.store import ActivationStore

    small, large = load_sae(args.small), load_sae(args.large)
    if small.d_in != large.d_in:
        raise SaegeoError(
            f"{args.large}: d_in={large.d_in} but {args.small} has d_in={small.d_in}; "
            "both SAEs must read the same model site"
        )
    acts = ActivationStore.open(args.acts) if args.acts else None
    table = novelty_table(
        small,
        large,
        acts,
        threshold=args.threshold,
        topk=args.topk,
        limit=args.limit,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    write_text(args.out, table.to_csv())
    n_novel = int((table["kind"] == "novel").sum())
    print(
        f"{n_novel} of {len(table)} features of {large.name} are novel "
        f"(max cos <= {args.threshold}) -> {args.out}"
    )
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    from saegeo.core.family import Family
    from saegeo.io.atomic import write_json
    from saegeo.io.store import ActivationStore
    from saegeo.trees.dag import feature_dag, feature_tree, forest, node_id, parse_node_id
    from saegeo.trees.tree_json import forest_to_json, read_labels, tree_to_json
    from saegeo.viz.figures import forest_html, save_html, tree_figure

    root = None if args.all else parse_node_id(args.root, name="--root")
    labels = read_labels(args.labels) if args.labels else None
    family = Family.load(args.paths)
    if root is not None and not (root[0] < len(family) and root[1] < family.widths[root[0]]):
        raise SaegeoError(
            f"--root {node_id(root)}: no such feature; levels have widths "
            f"{family.widths} (level 0 is the narrowest)"
        )
    acts = ActivationStore.open(args.acts) if args.acts else None
    G = feature_dag(
        family,
        metric=args.metric,
        threshold=args.threshold,
        acts=acts,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    if root is None:
        table, trees = forest(G, rank_by=args.rank_by, min_size=args.min_size)
        write_json(args.out, forest_to_json(G, trees, rank_by=args.rank_by, labels=labels))
        if args.html:
            save_html(forest_html(trees, labels=labels, top=args.top), args.html)
        print(table.head(args.top).to_string())
        print(f"forest: {len(trees)} trees of >= {args.min_size} features -> {args.out}")
        return 0
    T = feature_tree(G, root)
    write_json(args.out, tree_to_json(T, labels=labels))
    if args.html:
        save_html(tree_figure(T, labels=labels), args.html)
    print(f"tree {node_id(root)}: {T.number_of_nodes()} features -> {args.out}")
    return 0


def _cmd_stitch(args: argparse.Namespace) -> int:
    from saegeo.core.family import Family
    from saegeo.io.atomic import atomic_dir, write_json
    from saegeo.io.formats import save_sae
    from saegeo.io.store import ActivationStore
    from saegeo.stitch.frankenstein import frankenstein

    family = Family.load(args.paths)
    acts = ActivationStore.open(args.acts)
    sae, report = frankenstein(
        family,
        acts,
        threshold=args.threshold,
        upto=args.upto,
        swap=args.swap,
        retrain=args.retrain,
        sgd_tokens=args.sgd_tokens,
        checkpoint=args.checkpoint,
        limit=args.limit,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    # The SAE and its report appear together under --out, or not at all.
    with atomic_dir(args.out) as tmp:
        save_sae(sae, tmp)
        write_json(tmp / "report.json", report.to_dict())
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
    from saegeo.lm.harvest import harvest

    if args.threads:
        import torch

        # On a machine shared with other jobs, fewer threads than cores avoids stalls at
        # every parallel op; this process is the only user of the setting.
        torch.set_num_threads(args.threads)
    store = harvest(
        args.model,
        args.text,
        args.out,
        layer=args.layer,
        context=args.context,
        skip_first=args.skip_first,
        batch_size=args.batch_size,
        max_tokens=args.tokens,
        dtype=args.dtype,
        device=args.device,
        gguf_file=args.gguf_file,
        model_dtype=args.model_dtype,
        compile={"auto": None, "yes": True, "no": False}[args.compile],
        progress=sys.stderr.isatty(),
    )
    meta = store.meta
    print(
        f"harvest: {store.n_tokens} tokens x {store.d_in} ({meta['dtype']}) from "
        f"{meta['model']} {meta['hook']} -> {args.out}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from saegeo.io.store import ActivationStore
    from saegeo.training.trainer import TrainConfig, train_family

    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        raise SaegeoError(f"--widths {args.widths!r}: expected integers such as 576,1152") from None
    matryoshka = None
    if args.matryoshka_widths:
        try:
            matryoshka = tuple(int(w) for w in args.matryoshka_widths.split(",") if w.strip())
        except ValueError:
            raise SaegeoError(
                f"--matryoshka-widths {args.matryoshka_widths!r}: expected integers"
            ) from None
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
        progress=sys.stderr.isatty(),
    )
    run = train_family(ActivationStore.open(args.acts), widths, config, out_dir=args.out)
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
    parser = argparse.ArgumentParser(
        prog="saegeo",
        description="Geometry of features across SAE families: splitting, novel features, "
        "feature trees and Frankenstein SAEs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe SAEs: architecture, sizes, L0 settings, norms")
    p.add_argument("paths", nargs="+", help="SAE directories, or a directory of them")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("classify", help="novel vs reconstruction features of a larger SAE")
    p.add_argument("small", help="the smaller SAE (directory)")
    p.add_argument("large", help="the larger SAE (directory)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="novel iff max decoder cosine <= T (default %(default)s)",
    )
    p.add_argument("--acts", help="activations; adds each feature's delta_mse")
    p.add_argument(
        "--topk",
        choices=["reencode", "jumprelu"],
        default="reencode",
        help="--acts with TopK SAEs: TopK union, or convert to JumpReLU (default %(default)s)",
    )
    p.add_argument("--limit", type=int, help="use only the first N activation tokens")
    p.add_argument("--out", required=True, help="CSV output, one row per larger-SAE feature")
    p.add_argument("--device", default="auto", help="torch device (default %(default)s)")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("tree", help="feature tree (or forest) across the widths of a family")
    p.add_argument("paths", nargs="+", help="SAE directories of one family, or a directory of them")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--root", help="root feature LEVEL/FEATURE (level 0 is the narrowest SAE)")
    which.add_argument("--all", action="store_true", help="every tree (forest), ranked")
    p.add_argument(
        "--metric",
        choices=["decoder_cosine", "masked_cosine", "cofiring", "nesting"],
        default="decoder_cosine",
        help="edge score (default %(default)s)",
    )
    p.add_argument(
        "--acts",
        help="activations (.npy, .safetensors or store directory); needed "
        "by masked_cosine, cofiring and nesting, adds freq and max_act otherwise",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="edge iff score > T (default 0.7 decoder_cosine, 0.6 masked_cosine, "
        "0.6 cofiring, 0.45 nesting)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="JSON output (saegeo.feature_tree.v1, or saegeo.feature_forest.v1 with --all)",
    )
    p.add_argument(
        "--html", help="also write an interactive HTML figure (a page of the top trees with --all)"
    )
    p.add_argument("--labels", help="JSON object of labels by LEVEL/FEATURE, shown on hover")
    p.add_argument(
        "--rank-by",
        choices=["size", "split"],
        default="size",
        help="--all: rank trees by size or by how much the root splits",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=2,
        help="--all: leave out trees of fewer features (default %(default)s)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=10,
        help="--all: trees shown in --html and printed (default %(default)s)",
    )
    p.add_argument("--device", default="auto", help="torch device (default %(default)s)")
    p.set_defaults(func=_cmd_tree)

    p = sub.add_parser("stitch", help="Frankenstein SAE: stitch novel features across widths")
    p.add_argument("paths", nargs="+", help="SAE directories of one family, or a directory of them")
    p.add_argument("--acts", required=True, help="activations (.npy, .safetensors or store dir)")
    p.add_argument("--out", required=True, help="output directory (SAELens layout + report.json)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="add a feature iff its max decoder cosine is <= T (default %(default)s)",
    )
    p.add_argument("--upto", type=int, help="use members of width <= W (default all)")
    p.add_argument("--swap", action="store_true", help="also swap children in for swap groups")
    p.add_argument(
        "--retrain",
        choices=["exact", "sgd", "none"],
        default="exact",
        help="decoder refit with the encoder frozen (default %(default)s)",
    )
    p.add_argument(
        "--sgd-tokens",
        type=int,
        help="--retrain sgd: training tokens (default 10 passes over the activations)",
    )
    p.add_argument("--checkpoint", help="--retrain sgd: resumable checkpoint file")
    p.add_argument("--limit", type=int, help="use only the first N activation tokens")
    p.add_argument("--device", default="auto", help="torch device (default %(default)s)")
    p.set_defaults(func=_cmd_stitch)

    p = sub.add_parser("harvest", help="store a language model's residual stream on text")
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="packaged model, Hugging Face name, local directory or .gguf file "
        "(default %(default)s)",
    )
    p.add_argument("--gguf-file", help="GGUF file inside --model, for GGUF checkpoints")
    p.add_argument(
        "--layer",
        type=int,
        help="store the residual after this block, 0-based "
        "(= hidden_states[LAYER+1]; default the middle block)",
    )
    p.add_argument(
        "--text",
        default="bbc_news",
        help="bbc_news (packaged), a directory of "
        ".txt files, a .txt file (a document a line) or .jsonl (default %(default)s)",
    )
    p.add_argument("--tokens", type=int, help="stored tokens in all (default the whole text)")
    p.add_argument(
        "--context",
        type=int,
        default=128,
        help="tokens per model input, BOS included (default %(default)s)",
    )
    p.add_argument(
        "--skip-first",
        type=int,
        default=1,
        help="text tokens at the start of each context run but not stored: the first position "
        "often holds a massive attention-sink activation (default %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="contexts per forward pass (default %(default)s)"
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="stored dtype (default %(default)s)",
    )
    p.add_argument(
        "--model-dtype",
        choices=["auto", "float16", "bfloat16", "float32"],
        default="auto",
        help="dtype the model computes in; auto is bfloat16 where "
        "the device is fast at it, else float32",
    )
    p.add_argument("--out", required=True, help="store directory; re-running resumes it")
    p.add_argument("--device", default="auto", help="torch device (default %(default)s)")
    p.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="torch.compile the blocks that run; auto: on a CPU, for 100k tokens or more",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=_cmd_harvest)

    p = sub.add_parser("train", help="train a family of SAEs, one per width, on activations")
    p.add_argument("--acts", required=True, help="activations (.npy, .safetensors or store dir)")
    p.add_argument(
        "--arch",
        default="topk",
        choices=[
            "topk",
            "batchtopk",
            "relu",
            "matryoshka_batchtopk",
            "matryoshka_relu",
            "matching_pursuit",
        ],
        help="training architecture (default %(default)s)",
    )
    p.add_argument("--widths", required=True, help="comma-separated widths, e.g. 576,1152,2304")
    p.add_argument("--out", required=True, help="output directory: <arch>-<width>/ per member")
    p.add_argument(
        "--k",
        type=int,
        default=32,
        help="L0 of TopK variants, pursuit steps of matching pursuit (default 32)",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=500_000,
        help="training tokens per member (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=4096, help="default %(default)s")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam peak rate (default %(default)s)")
    p.add_argument(
        "--sparsity",
        choices=["log", "l1"],
        default="log",
        help="ReLU penalty (default %(default)s)",
    )
    p.add_argument(
        "--sparsity-coefficient", type=float, help="ReLU penalty weight (default 0.3 log, 3.0 l1)"
    )
    p.add_argument("--target-l0", type=float, help="ReLU: adapt the penalty towards this L0")
    p.add_argument("--matryoshka-widths", help="Matryoshka nested widths (default: halvings)")
    p.add_argument(
        "--prefixes",
        choices=["fixed", "pareto"],
        default="fixed",
        help="Matryoshka prefixes per batch (default %(default)s)",
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=16_384,
        help="first tokens held out for the metrics (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="default %(default)s")
    p.add_argument("--device", default="auto", help="torch device (default %(default)s)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the whole pipeline on the packaged model and text")
    p.add_argument("--out", default="reports/demo", help="report directory (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SaegeoError as exc:
        print(f"saegeo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"saegeo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
