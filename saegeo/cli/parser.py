"""The ``saegeo`` argument parser: every subcommand and its flags.

The flags that set a library option are made from the option's own declaration
(:mod:`saegeo.cli.options`): a field of :class:`~saegeo.lm.config.HarvestConfig`,
:class:`~saegeo.training.config.TrainConfig` or :class:`~saegeo.stitch.config.StitchConfig`, or
a keyword of the function the command calls. Where the command line's default differs from
the library's, ``set_defaults`` says so next to the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from saegeo.cli import args as types
from saegeo.cli import commands
from saegeo.cli.options import add_options


class Command(NamedTuple):
    """A subcommand."""

    summary: str
    """Its line in ``saegeo --help``."""
    add_flags: Callable[[argparse.ArgumentParser], None]
    """Adds its arguments and flags to its parser."""
    run: Callable[[argparse.Namespace], int]
    """Runs it on the parsed flags; returns the exit code."""


SAE_PATHS_HELP = (
    "SAEs of one family: directories, a directory of them, or published SAEs named "
    "sae-lens:RELEASE/SAE_ID (one SAE), sae-lens:RELEASE/SITE (the release's family on a "
    "site, e.g. layer_12 of Gemma Scope), sae-lens:RELEASE (a release of one site) or "
    "hf:ORG/NAME/FOLDER (a Hugging Face repository folder)"
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; with ``command``, only that one gets its flags (the
    others are listed by name), so that ``saegeo --help`` loads none of the library."""
    parser = types.Parser(
        prog="saegeo",
        description="Geometry of features across SAE families: splitting, novel features, "
        "feature trees and Frankenstein SAEs.",
        epilog="SAE NAMES: wherever a command takes an SAE directory it also takes a published "
        "SAE: sae-lens:RELEASE/SAE_ID (a release of SAELens's registry, e.g. "
        "sae-lens:gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_768), "
        "sae-lens:RELEASE/SITE (the family on one site; Gemma Scope's canonical SAE per "
        "width), sae-lens:RELEASE (a release of one site) or "
        "hf:ORG/NAME/FOLDER (a folder of a Hugging Face repository). Files come through the "
        "Hugging Face cache; with HF_HUB_OFFLINE=1 only the cache is read.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.summary)
        if command is None or command == name:
            spec.add_flags(p)
        p.set_defaults(func=spec.run, parser=p)
    return parser


def _acts(p: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """--acts: the activations a command reads."""
    p.add_argument("--acts", required=required, type=types.path, help=help)


def _out(p: argparse.ArgumentParser, help: str) -> None:
    """--out: the output a command writes."""
    p.add_argument("--out", required=True, type=types.path, help=help)


def _info(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=types.path, help=SAE_PATHS_HELP)


def _classify(p: argparse.ArgumentParser) -> None:
    from saegeo.effects.novelty import novelty_table

    p.add_argument(
        "small", type=types.path, help="the smaller SAE (directory, or sae-lens:RELEASE/SAE_ID)"
    )
    p.add_argument(
        "large", type=types.path, help="the larger SAE (directory, or sae-lens:RELEASE/SAE_ID)"
    )
    _acts(p, "activations; adds each feature's delta_mse and explained share")
    add_options(p, novelty_table, ["threshold", "topk", "limit"])
    _out(p, "CSV output, one row per larger-SAE feature")
    types.add_common(p)


def _tree(p: argparse.ArgumentParser) -> None:
    from saegeo.trees.dag import feature_dag
    from saegeo.trees.forest import forest

    p.add_argument("paths", nargs="*", type=types.path, help=SAE_PATHS_HELP)
    p.add_argument(
        "--release", help="instead of PATH...: the family of a published release (sae-lens:RELEASE)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--root", help="root feature LEVEL/FEATURE (level 0 is the narrowest SAE)")
    which.add_argument("--all", action="store_true", help="every tree (forest), ranked")
    add_options(p, feature_dag, ["metric"])
    _acts(
        p,
        "activations (.npy, .safetensors or store directory); needed "
        "by masked_cosine, cofiring, nesting and containment, adds freq and max_act otherwise; "
        "a store written by saegeo harvest also labels every node with its top tokens",
    )
    add_options(p, feature_dag, ["threshold", "limit"])
    _out(p, "JSON output (saegeo.feature_tree.v1, or saegeo.feature_forest.v1 with --all)")
    p.add_argument(
        "--html",
        type=types.path,
        help="also write an interactive HTML figure (a page of the top trees with --all)",
    )
    p.add_argument(
        "--labels",
        type=types.path,
        help="JSON object of labels by LEVEL/FEATURE; they override the top-token labels that "
        "a harvested --acts store gives every node",
    )
    p.add_argument(
        "--neuronpedia",
        action="store_true",
        help="--root: print a Neuronpedia quick-list URL of the tree's features (published SAEs)",
    )
    add_options(p, forest, ["rank_by", "min_size"])
    p.set_defaults(min_size=2)  # a forest on the command line leaves out lone features
    p.add_argument(
        "--top",
        type=types.integer(1),
        default=10,
        help="--all: trees shown in --html and printed (default %(default)s)",
    )
    types.add_common(p)


def _stitch(p: argparse.ArgumentParser) -> None:
    from saegeo.stitch.config import StitchConfig

    p.add_argument("paths", nargs="+", type=types.path, help=SAE_PATHS_HELP)
    _acts(p, "activations (.npy, .safetensors or store dir)", required=True)
    _out(p, "output directory (SAELens layout + report.json)")
    add_options(
        p,
        StitchConfig,
        [
            "threshold",
            "upto",
            "swap",
            "retrain",
            "solver",
            "refit_tol",
            "refit_max_iterations",
            "sgd_tokens",
            "checkpoint",
            "limit",
        ],
    )
    types.add_common(p)


def _harvest(p: argparse.ArgumentParser) -> None:
    from saegeo.lm.config import HarvestConfig

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
        "--text",
        default="bbc_news",
        help="bbc_news (packaged), a directory of "
        ".txt files, a .txt file (a document a line) or .jsonl (default %(default)s)",
    )
    add_options(
        p,
        HarvestConfig,
        [
            "layer",
            "hook",
            "gguf_file",
            "max_tokens",
            "context",
            "skip_first",
            "batch_size",
            "dtype",
            "model_dtype",
            "device",
        ],
    )
    p.set_defaults(context=None)  # None: --for's SAE's context size, else the field's default
    _out(p, "store directory; re-running resumes it")
    p.add_argument(
        "--compile",
        dest="compile_mode",
        choices=["auto", "yes", "no"],
        default="auto",
        help="torch.compile the blocks that run; auto: on a CPU, for 100k tokens or more",
    )
    p.add_argument(
        "--threads", type=types.integer(1), help="CPU threads for torch (default: torch's choice)"
    )


def _train(p: argparse.ArgumentParser) -> None:
    from saegeo.training.config import TrainConfig

    _acts(p, "activations (.npy, .safetensors or store dir)", required=True)
    p.add_argument(
        "--widths",
        required=True,
        type=types.integer_list,
        help="comma-separated widths, e.g. 576,1152,2304",
    )
    _out(p, "output directory: <arch>-<width>/ per member")
    add_options(
        p,
        TrainConfig,
        [
            "arch",
            "k",
            "tokens",
            "batch_size",
            "lr",
            "sparsity",
            "sparsity_coefficient",
            "target_l0",
            "matryoshka_widths",
            "prefixes",
            "eval_tokens",
            "seed",
        ],
    )
    types.add_common(p)


def _demo(p: argparse.ArgumentParser) -> None:
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


def _match(p: argparse.ArgumentParser) -> None:
    from saegeo.geometry.matching import match_features

    p.add_argument("a", type=types.path, help="an SAE (directory, or sae-lens:RELEASE/SAE_ID)")
    p.add_argument("b", type=types.path, help="another SAE of the same d_in, any width")
    add_options(p, match_features, ["threshold", "encoder"])
    _out(p, "CSV output, one row per matched pair")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a previous saegeo output of the same kind at the output path",
    )


def _explore(p: argparse.ArgumentParser) -> None:
    from saegeo.cli.options import options_of
    from saegeo.explorer.facts import family_facts

    p.add_argument("paths", nargs="+", type=types.path, help=SAE_PATHS_HELP)
    _acts(p, "activations (a store from saegeo harvest gives the snippets' text)", required=True)
    _out(p, "site directory (index.html and data/)")
    add_options(p, family_facts, ["metric", "threshold", "novelty_threshold", "limit"])
    p.add_argument(
        "--snippets",
        dest="k",
        type=types.integer(1),
        default=options_of(family_facts)["k"].default,
        help="top activating snippets kept per feature (default %(default)s)",
    )
    p.add_argument(
        "--no-effects",
        action="store_true",
        help="leave out delta_mse and the explained share (each a further pass over the "
        "activations per pair of widths)",
    )
    types.add_common(p)


COMMANDS: dict[str, Command] = {
    "info": Command(
        "describe SAEs: architecture, sizes, L0 settings, norms", _info, commands._cmd_info
    ),
    "classify": Command(
        "novel vs reconstruction features of a larger SAE (SMALL must be the narrower)",
        _classify,
        commands._cmd_classify,
    ),
    "match": Command(
        "one-to-one matching of two SAEs' features (Hungarian)", _match, commands._cmd_match
    ),
    "tree": Command(
        "feature tree (or forest) across the widths of a family", _tree, commands._cmd_tree
    ),
    "stitch": Command(
        "Frankenstein SAE: stitch novel features across widths", _stitch, commands._cmd_stitch
    ),
    "explore": Command(
        "an offline site to explore a family feature by feature (index.html)",
        _explore,
        commands._cmd_explore,
    ),
    "harvest": Command(
        "store a language model's residual stream on text", _harvest, commands._cmd_harvest
    ),
    "train": Command(
        "train a family of SAEs, one per width, on activations", _train, commands._cmd_train
    ),
    "demo": Command("the whole pipeline on the packaged model and text", _demo, commands._cmd_demo),
}
"""Every subcommand: its one-line summary, what adds its flags, what runs it."""
