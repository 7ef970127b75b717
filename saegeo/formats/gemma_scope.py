"""Gemma Scope SAEs: ``params.npz`` in ``layer_L/width_W/average_l0_N`` folders, JumpReLU.

The archive holds ``W_enc`` [d_in, width], ``W_dec`` [width, d_in], ``b_enc``, ``b_dec`` and
``threshold``; the SAE encodes ``pre · 1[pre > threshold]`` with ``pre = x W_enc + b_enc`` (no
``b_dec`` subtracted first) and decodes ``f W_dec + b_dec``. The site and model come from the
folder and repository names as SAELens reads them (``get_gemma_2_config_from_hf``): a
``-res`` repository holds ``blocks.L.hook_resid_post`` SAEs (``hook_embed`` for the
``embedding`` folders, whose weights SAELens rescales by sqrt(d_in)), ``-mlp``
``blocks.L.hook_mlp_out``, ``-att`` ``blocks.L.attn.hook_z``.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saegeo.core.sae import SAE
from saegeo.errors import FormatError
from saegeo.formats.reading import check_weight_dtype
from saegeo.runtime.paths import regular_file

PARAMS_FILE = "params.npz"
WIDTHS = {
    "width_4k": 4096,
    "width_16k": 16384,
    "width_32k": 32768,
    "width_65k": 65536,
    "width_131k": 131072,
    "width_262k": 262144,
    "width_524k": 524288,
    "width_1m": 1048576,
}
MODELS = {
    "2b-it": "gemma-2-2b-it",
    "9b-it": "gemma-2-9b-it",
    "27b-it": "gemma-2-27b-it",
    "2b": "gemma-2-2b",
    "9b": "gemma-2-9b",
    "27b": "gemma-2-27b",
}
"""Repository name part -> model name, first match wins (as in SAELens)."""


def site_metadata(repo_id: str, folder: str) -> dict[str, Any]:
    """``model_name``, ``hook_name``, ``hook_layer`` and friends of a Gemma Scope folder."""
    meta: dict[str, Any] = {
        "prepend_bos": True,
        "context_size": 1024,
        "dataset_path": "monology/pile-uncopyrighted",
    }
    model = next((name for key, name in MODELS.items() if key in repo_id), None)
    if model is not None:
        meta["model_name"] = model
    match = re.search(r"layer_(\d{1,9})", folder)
    layer = int(match.group(1)) if match else (0 if "embedding" in folder else None)
    if layer is not None:
        meta["hook_layer"] = layer
        if "res" in repo_id:
            meta["hook_name"] = (
                "hook_embed" if "embedding" in folder else f"blocks.{layer}.hook_resid_post"
            )
        elif "mlp" in repo_id:
            meta["hook_name"] = f"blocks.{layer}.hook_mlp_out"
        elif "att" in repo_id:
            meta["hook_name"] = f"blocks.{layer}.attn.hook_z"
    width = folder_width(folder)
    if width is not None:
        meta["d_sae"] = width
    return meta


def folder_width(folder: str) -> int | None:
    """The width a Gemma Scope folder name gives (``width_16k`` -> 16384), as SAELens reads it.

    >>> folder_width("layer_12/width_16k/average_l0_82"), folder_width("layer_12")
    (16384, None)
    """
    return next((w for key, w in WIDTHS.items() if key in folder), None)


def load_params_npz(path: str | Path, *, repo_id: str = "", folder: str | None = None) -> SAE:
    """A JumpReLU SAE from a Gemma Scope ``params.npz`` (see the module docstring).

    Parameters
    ----------
    path
        the ``params.npz`` file.
    repo_id
        the repository it came from (gives the model and the kind of site).
    folder
        its folder in the repository (gives the layer and width); defaults to the
        last three parts of the file's directory.
    """
    path = regular_file(path, what="Gemma Scope params.npz")
    folder = folder if folder is not None else "/".join(path.parent.parts[-3:])
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: unreadable npz archive ({exc}); re-download it") from None
    for key, array in arrays.items():
        check_weight_dtype(array, key, path)
    weights = {
        ("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(array).float()
        for key, array in arrays.items()
    }
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in weights]
    if missing:
        raise FormatError(f"{path}: missing arrays {missing} (found {sorted(weights)})")
    W_enc, W_dec = weights["W_enc"], weights["W_dec"]
    if W_dec.ndim != 2:
        raise FormatError(f"{path}: W_dec must be 2-D [width, d_in], got shape {list(W_dec.shape)}")
    if "embedding" in folder:
        d_in = W_dec.shape[-1]
        W_enc, W_dec = W_enc / math.sqrt(d_in), W_dec * math.sqrt(d_in)
    if "scaling_factor" in weights and not torch.allclose(
        weights["scaling_factor"], torch.ones_like(weights["scaling_factor"])
    ):
        raise FormatError(f"{path}: a scaling_factor other than 1 is not supported")
    declared = folder_width(folder)
    if declared is not None and declared != W_dec.shape[0]:  # SAELens refuses it too
        raise FormatError(
            f"{path}: the folder {folder!r} says width {declared} but the weights have "
            f"{W_dec.shape[0]} latents; the file is not this folder's SAE, re-download it"
        )
    metadata = {
        **site_metadata(repo_id, folder),
        "name": folder.replace("/", "-") if folder else path.parent.name,
        "source": str(path.parent),
        "format": "gemma_scope",
    }
    return SAE(
        W_enc=W_enc,
        b_enc=weights["b_enc"],
        W_dec=W_dec,
        b_dec=weights["b_dec"],
        arch="jumprelu",
        threshold=weights["threshold"],
        apply_b_dec_to_input=False,
        metadata=metadata,
    )
