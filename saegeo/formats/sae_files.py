"""Reading SAEs from SAELens, dictionary_learning and sparsify directories; writing SAELens.

Every reader returns a :class:`saegeo.SAE` whose ``encode``/``decode`` equal the original
library's on the same inputs. Conventions that only rescale latents (SAELens TopK's
``rescale_acts_by_decoder_norm``, dictionary_learning JumpReLU's decoder-norm scaling) are
folded into the weights, which leaves the codes and reconstructions unchanged. The layouts
live in :mod:`saegeo.formats.saelens`, :mod:`saegeo.formats.dictionary_learning` and
:mod:`saegeo.formats.sparsify`; this module recognises which one a directory holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from saegeo.core.sae import SAE
from saegeo.errors import FormatError, SaegeoError
from saegeo.formats.dictionary_learning import (
    DICTLEARN_CFG,
    DICTLEARN_WEIGHTS,
    read_dictionary_learning,
)
from saegeo.formats.gemma_scope import PARAMS_FILE, load_params_npz
from saegeo.formats.saelens import SAELENS_CFG, SAELENS_WEIGHTS, read_saelens, write_saelens
from saegeo.formats.sparsify import SPARSIFY_WEIGHTS, read_sparsify

__all__ = ["SAE_FILES", "is_sae_dir", "load_sae", "save_sae"]

SAE_FILES = (SAELENS_CFG, DICTLEARN_WEIGHTS, SAELENS_WEIGHTS, PARAMS_FILE)
"""Files whose presence marks a directory as an SAE directory."""


def is_sae_dir(path: Path) -> bool:
    """Whether ``path`` holds the files of an SAE (any supported layout)."""
    return any((path / name).exists() for name in SAE_FILES)


def load_sae(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> SAE:
    """Read an SAE from a SAELens, dictionary_learning or sparsify directory (or ``ae.pt``).

    Every error names the file and the problem (:class:`saegeo.FormatError`).

    Examples
    --------
    >>> sae = load_sae("path/to/sae")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_file() and path.name == DICTLEARN_WEIGHTS:
        path = path.parent
    if not path.exists():
        raise SaegeoError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise SaegeoError(
            f"{path}: expected an SAE directory (SAELens, dictionary_learning or sparsify layout)"
        )
    if (path / SAELENS_WEIGHTS).exists() or (
        (path / SAELENS_CFG).exists() and not (path / SPARSIFY_WEIGHTS).exists()
    ):
        sae = read_saelens(path)
    elif (path / SPARSIFY_WEIGHTS).exists():
        sae = read_sparsify(path)
    elif (path / DICTLEARN_WEIGHTS).exists():
        sae = read_dictionary_learning(path)
    elif (path / PARAMS_FILE).exists():  # Gemma Scope
        sae = load_params_npz(path / PARAMS_FILE)
    else:
        raise FormatError(
            f"{path}: no SAE files found; expected {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), "
            f"{DICTLEARN_WEIGHTS} + {DICTLEARN_CFG} (dictionary_learning), "
            f"{SAELENS_CFG} + {SPARSIFY_WEIGHTS} (sparsify) or {PARAMS_FILE} (Gemma Scope)"
        )
    if sae.width < 1 or sae.d_in < 1:
        raise FormatError(
            f"{path}: the SAE has width {sae.width} and d_in {sae.d_in}; an SAE needs at least "
            "one latent and one input dimension"
        )
    sae = sae.to(dtype=dtype)
    sae.check(str(path))
    return sae


def save_sae(sae: SAE, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``sae`` as a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``).

    The directory appears complete or not at all. ``path`` must be new or an empty directory;
    with ``overwrite=True`` it may also hold an SAE that saegeo saved, which is replaced once
    the new one is complete. Nothing else is ever replaced: a user's file or folder at
    ``path``, or a folder holding files besides the SAE's, is refused
    (:class:`saegeo.runtime.outputs.OutputError`), and so is a folder that appears at ``path``
    while the SAE is written (see :mod:`saegeo.runtime.claim`).
    ``sae_lens.SAE.load_from_disk(path)`` reads it back.

    Examples
    --------
    >>> sg.save_sae(sae, "saes/topk-768")  # doctest: +SKIP
    >>> sg.save_sae(sae, "saes/topk-768", overwrite=True)  # replaces it  # doctest: +SKIP
    """
    from saegeo.runtime.claim import claim_output
    from saegeo.runtime.outputs import Output

    sae.check("save_sae()")
    with claim_output(Output.named(path, "sae", "path"), force=overwrite) as claim:
        write_saelens(sae, claim.path)
        claim.commit()
    return Path(path)
