"""saegeo: the geometry of features across sparse-autoencoder families.

Shape suffixes: a tensor or array of two or more dimensions carries one letter per axis after
its name (``W_dec_FD`` is [features, d_in]); a vector carries one where it is indexed along
with others (``error_B``). Where a letter has more than one use, the module makes clear which.

====  ================================================================================
A     atoms a matching pursuit chooses from: a dictionary's features, with any atom given
      per row (core.pursuit)
B     batch: tokens (rows of activations) in the batch at hand
D     d_in, the width of the model site
F     features (latents) of the SAE at hand
K     top-k: the latents kept per row, or another small per-row selection
S     features of the smaller SAE of a pair
L     features of the larger SAE of a pair
P     parents (trees, masked cosine); Matryoshka prefixes (training); the padded width of
      a matching-pursuit Gram matrix (core.pursuit); (token, feature) pairs (delta-MSE)
C     children
M     the features of a selection (those added to an SAE, in delta-MSE)
G     groups of a selection (swap groups, a selection's feature groups)
R     rows in work, a subset of a batch (pursuit, refit chunks); in the exact refit's
      ``rhs_BR``/``block_FR``, the right-hand-side columns [codes, targets, 1]
T     sequence positions of a model input (lm); steps of a replayed pursuit (training); the
      rows of one tile (core.pursuit)
N     the entries of a flat list: nonzeros of a sparse matrix, samples drawn, all tokens
H     the bins of a histogram (an activation histogram per feature, explorer)
W     the token positions of a snippet's window around its peak (lm.snippets)
U     a subset singled out for separate work: undecided rows (core.pursuit), unique
      (token, group) keys (delta-MSE)
1     an axis of size one kept for broadcasting (``mu_B1``), or one more than the letter
      before it (``bounds_P1``: P + 1 prefix bounds)
====  ================================================================================

Examples
--------
>>> import saegeo as sg
>>> fam = sg.Family.load("path/to/family")  # doctest: +SKIP
"""

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public API: imported on first use at run time (_public_names)
    from saegeo.acts.codes import encode_codes
    from saegeo.acts.store import ActivationStore, ShardWriter
    from saegeo.acts.streaming import ActsLike, StreamOptions
    from saegeo.core.sae import SAE, concat
    from saegeo.effects.delta import delta_mse
    from saegeo.effects.explained import explained_share
    from saegeo.effects.hybrid import hybrid
    from saegeo.effects.metrics import Metrics, evaluate
    from saegeo.effects.novelty import family_novelty
    from saegeo.effects.shrinkage import reconstruction_gain
    from saegeo.effects.swaps import swap_groups
    from saegeo.errors import (
        ArgumentError,
        FormatError,
        InsufficientMemoryError,
        SaegeoError,
        ShapeError,
    )
    from saegeo.explorer.card import FeatureCard, feature_card
    from saegeo.explorer.facts import FamilyFacts, family_facts
    from saegeo.explorer.widget import explore
    from saegeo.formats.family import Family
    from saegeo.formats.pretrained import load_pretrained
    from saegeo.formats.sae_files import load_sae, save_sae
    from saegeo.geometry.classify import classify
    from saegeo.geometry.cofiring import cofiring, containment, nesting
    from saegeo.geometry.masked_cosine import masked_cosine
    from saegeo.geometry.matching import (
        FeatureMatch,
        SeedStability,
        match_features,
        seed_stability_matched,
    )
    from saegeo.geometry.similarity import (
        CosineMatch,
        decoder_cosine,
        decoder_cosine_pairs,
        seed_stability,
    )
    from saegeo.lm.config import HarvestConfig
    from saegeo.stitch.config import StitchConfig
    from saegeo.stitch.curve import compare_frankensteins, frankenstein_curve
    from saegeo.stitch.frankenstein import (
        FrankensteinSteps,
        frankenstein,
        frankenstein_steps,
        plan_frankenstein,
    )
    from saegeo.stitch.interpolation import interpolation_path
    from saegeo.stitch.refit import Refit, refit_exact
    from saegeo.stitch.refit_sgd import refit_sgd
    from saegeo.stitch.report import FrankensteinReport
    from saegeo.training.toy import ToyConfig, ToyModel, make_toy_model
    from saegeo.training.trainer import TrainConfig, TrainReport, train_family, train_sae
    from saegeo.trees.dag import feature_dag, feature_tree
    from saegeo.trees.forest import forest
    from saegeo.trees.tree_json import tree_from_json, tree_to_json

__version__ = "0.1.0"


def _public_names() -> dict[str, str]:
    """Each public name's module, read from the ``TYPE_CHECKING`` imports above: the API is
    declared once, for type checkers and editors, and imported from there on first use."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If))
    return {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


_MODULE_OF = _public_names()
"""The public names, by the module that defines them (imported on first use)."""

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, so ``import saegeo`` (and the command line's
    ``--help``) does not wait for torch."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'saegeo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
