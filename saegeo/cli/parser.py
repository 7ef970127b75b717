"""The ``saegeo`` argument parser: every subcommand and flag, each flag range-checked."""

from __future__ import annotations

import argparse
from typing import get_args

from saegeo.cli import args as types
from saegeo.cli import commands
from saegeo.effects.hybrid import TOPK_MODES
from saegeo.lm.config import MODEL_DTYPES, STORE_DTYPES
from saegeo.stitch.config import RETRAINS
from saegeo.training.config import TRAIN_ARCHS, PenaltyKind, Prefixes
from saegeo.trees.dag import Metric

SAE_PATHS_HELP = (
    "SAEs of one family: directories, a directory of them, or published SAEs named "
    "sae-lens:RELEASE/SAE_ID (one SAE), sae-lens:RELEASE (the release's family on one site) "
    "or hf:ORG/NAME/FOLDER (a Hugging Face repository folder)"
)


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
    p.set_defaults(func=commands._cmd_info, parser=p)

    p = sub.add_parser(
        "classify",
        help="novel vs reconstruction features of a larger SAE (SMALL must be the narrower)",
    )
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
    p.add_argument(
        "--acts",
        type=types.path,
        help="activations; adds each feature's delta_mse and explained share",
    )
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
    p.set_defaults(func=commands._cmd_classify, parser=p)

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
        "by masked_cosine, cofiring, nesting and containment, adds freq and max_act otherwise",
    )
    p.add_argument(
        "--threshold",
        type=types.real(),
        default=None,
        help="edge iff score > T (default 0.7 decoder_cosine, 0.6 masked_cosine, "
        "0.6 cofiring, 0.45 nesting, 0.5 containment)",
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
    p.add_argument(
        "--limit",
        type=types.integer(1),
        help="--metric masked_cosine: use only the first N activation tokens",
    )
    types.add_common(p)
    p.set_defaults(func=commands._cmd_tree, parser=p)

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
    p.set_defaults(func=commands._cmd_stitch, parser=p)

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
    p.set_defaults(func=commands._cmd_harvest, parser=p)

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
    p.set_defaults(func=commands._cmd_train, parser=p)

    p = sub.add_parser("demo", help="the whole pipeline on the packaged model and text")
    p.add_argument(
        "--out",
        default="reports/demo",
        type=types.path,
        help="report directory (default %(default)s)",
    )
    family = p.add_mutually_exclusive_group()
    family.add_argument(
        "--retrain",
        action="store_true",
        help="train a family here from scratch (minutes) instead of the one shipped with saegeo",
    )
    family.add_argument(
        "--quick", action="store_true", help="train a small family on fewer tokens, for a fast look"
    )
    p.set_defaults(func=commands._cmd_demo, parser=p)

    return parser
