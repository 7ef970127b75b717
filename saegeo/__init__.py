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

from saegeo.core.codes import encode_codes
from saegeo.core.family import Family
from saegeo.core.sae import SAE, concat
from saegeo.effects.delta import delta_mse
from saegeo.effects.explained import explained_share
from saegeo.effects.hybrid import hybrid
from saegeo.effects.interpolation import interpolation_path
from saegeo.effects.metrics import Metrics, evaluate
from saegeo.effects.novelty import family_novelty
from saegeo.errors import FormatError, InsufficientMemoryError, SaegeoError, ShapeError
from saegeo.geometry.classify import classify, swap_groups
from saegeo.geometry.cofiring import cofiring, containment, nesting
from saegeo.geometry.masked_cosine import masked_cosine
from saegeo.geometry.similarity import (
    CosineMatch,
    decoder_cosine,
    decoder_cosine_pairs,
    seed_stability,
)
from saegeo.io.formats import load_sae, save_sae
from saegeo.io.pretrained import load_pretrained
from saegeo.io.store import ActivationStore, ShardWriter
from saegeo.io.streaming import ActsLike
from saegeo.lm.config import HarvestConfig
from saegeo.stitch.config import StitchConfig
from saegeo.stitch.curve import compare_frankensteins, frankenstein_curve
from saegeo.stitch.frankenstein import (
    FrankensteinSteps,
    frankenstein,
    frankenstein_steps,
    plan_frankenstein,
)
from saegeo.stitch.refit import Refit, refit_exact
from saegeo.stitch.refit_sgd import refit_sgd
from saegeo.stitch.report import FrankensteinReport
from saegeo.training.toy import ToyConfig, ToyModel, make_toy_model
from saegeo.training.trainer import TrainConfig, TrainReport, train_family, train_sae
from saegeo.trees.dag import feature_dag, feature_tree, forest
from saegeo.trees.tree_json import tree_from_json, tree_to_json

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "ActivationStore",
    "ActsLike",
    "CosineMatch",
    "Family",
    "FormatError",
    "InsufficientMemoryError",
    "FrankensteinReport",
    "FrankensteinSteps",
    "HarvestConfig",
    "Metrics",
    "Refit",
    "SaegeoError",
    "ShapeError",
    "ShardWriter",
    "StitchConfig",
    "ToyConfig",
    "ToyModel",
    "TrainConfig",
    "TrainReport",
    "classify",
    "cofiring",
    "compare_frankensteins",
    "concat",
    "containment",
    "decoder_cosine",
    "decoder_cosine_pairs",
    "seed_stability",
    "delta_mse",
    "encode_codes",
    "evaluate",
    "explained_share",
    "family_novelty",
    "feature_dag",
    "feature_tree",
    "forest",
    "frankenstein",
    "frankenstein_curve",
    "frankenstein_steps",
    "hybrid",
    "interpolation_path",
    "load_pretrained",
    "load_sae",
    "make_toy_model",
    "masked_cosine",
    "nesting",
    "plan_frankenstein",
    "refit_exact",
    "refit_sgd",
    "save_sae",
    "swap_groups",
    "train_family",
    "train_sae",
    "tree_from_json",
    "tree_to_json",
]
