"""saegeo: the geometry of features across sparse-autoencoder families.

Shape suffixes on tensor names: B batch/tokens, D d_in, F features, K top-k, S features of
the smaller SAE, L features of the larger SAE, P parents, C children.

Examples:
    >>> import saegeo as sg
    >>> fam = sg.Family.load("path/to/family")  # doctest: +SKIP
"""

from saegeo.classify import classify, swap_groups
from saegeo.codes import encode_codes
from saegeo.dag import feature_dag, feature_tree, forest
from saegeo.delta import delta_mse
from saegeo.errors import FormatError, SaegeoError, ShapeError
from saegeo.family import Family
from saegeo.formats import load_sae, save_sae
from saegeo.frankenstein import (
    FrankensteinSteps,
    frankenstein,
    frankenstein_steps,
    plan_frankenstein,
)
from saegeo.frankenstein_curve import compare_frankensteins, frankenstein_curve
from saegeo.frankenstein_report import FrankensteinReport
from saegeo.hybrid import hybrid
from saegeo.interpolation import interpolation_path
from saegeo.masked_cosine import masked_cosine
from saegeo.metrics import Metrics, evaluate
from saegeo.novelty import family_novelty
from saegeo.refit import Refit, refit_exact
from saegeo.refit_sgd import refit_sgd
from saegeo.sae import SAE, concat
from saegeo.similarity import CosineMatch, decoder_cosine, decoder_cosine_pairs
from saegeo.store import ActivationStore, ShardWriter
from saegeo.toy import ToyConfig, ToyModel, make_toy_model
from saegeo.train import TrainConfig, TrainReport, train_family, train_sae
from saegeo.tree_json import tree_from_json, tree_to_json

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
