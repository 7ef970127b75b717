"""saegeo: the geometry of features across sparse-autoencoder families.

Shape suffixes on tensor names: B batch/tokens, D d_in, F features, K top-k, S features of
the smaller SAE, L features of the larger SAE, P parents, C children.

Examples:
    >>> import saegeo as sg
    >>> fam = sg.Family.load("path/to/family")  # doctest: +SKIP
"""

from saegeo.codes import encode_codes
from saegeo.errors import FormatError, SaegeoError, ShapeError
from saegeo.family import Family
from saegeo.formats import load_sae, save_sae
from saegeo.masked_cosine import masked_cosine
from saegeo.sae import SAE, concat
from saegeo.similarity import CosineMatch, decoder_cosine
from saegeo.store import ActivationStore, ShardWriter

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "ActivationStore",
    "CosineMatch",
    "Family",
    "FormatError",
    "SaegeoError",
    "ShapeError",
    "ShardWriter",
    "concat",
    "decoder_cosine",
    "encode_codes",
    "load_sae",
    "masked_cosine",
    "save_sae",
]
