"""saegeo: the geometry of features across sparse-autoencoder families.

Shape suffixes on tensor names: B batch/tokens, D d_in, F features, K top-k, S features of
the smaller SAE, L features of the larger SAE, P parents, C children.

Examples:
    >>> import saegeo as sg
    >>> fam = sg.Family.load("path/to/family")  # doctest: +SKIP
"""

from saegeo.core.codes import encode_codes
from saegeo.core.family import Family
from saegeo.core.sae import SAE, concat
from saegeo.effects.delta import delta_mse
from saegeo.effects.hybrid import hybrid
from saegeo.effects.interpolation import interpolation_path
from saegeo.effects.metrics import Metrics, evaluate
from saegeo.effects.novelty import family_novelty
from saegeo.errors import FormatError, SaegeoError, ShapeError
from saegeo.geometry.classify import classify, swap_groups
from saegeo.geometry.cofiring import cofiring, nesting
from saegeo.geometry.masked_cosine import masked_cosine
from saegeo.geometry.similarity import CosineMatch, decoder_cosine, decoder_cosine_pairs
from saegeo.io.formats import load_sae, save_sae
from saegeo.io.store import ActivationStore, ShardWriter
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
    "CosineMatch",
    "Family",
    "FormatError",
    "FrankensteinReport",
    "FrankensteinSteps",
    "Metrics",
    "Refit",
    "SaegeoError",
    "ShapeError",
    "ShardWriter",
    "ToyConfig",
    "ToyModel",
    "TrainConfig",
    "TrainReport",
    "classify",
    "cofiring",
    "compare_frankensteins",
    "concat",
    "decoder_cosine",
    "decoder_cosine_pairs",
    "delta_mse",
    "encode_codes",
    "evaluate",
    "family_novelty",
    "feature_dag",
    "feature_tree",
    "forest",
    "frankenstein",
    "frankenstein_curve",
    "frankenstein_steps",
    "hybrid",
    "interpolation_path",
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
