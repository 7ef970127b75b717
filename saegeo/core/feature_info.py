"""Per-feature facts that travel with a published SAE: Neuronpedia pages and feature density.

An SAE loaded from a release may carry, in its ``metadata``:

- ``neuronpedia_id`` (e.g. ``gpt2-small/8-res_fs768-jb``): feature ``j``'s dashboard is
  ``https://www.neuronpedia.org/{neuronpedia_id}/{j}`` (:func:`neuronpedia_url`);
- ``log_feature_density`` [width]: log10 of the fraction of training tokens on which each
  feature fired, from SAELens's ``sparsity.safetensors`` (:func:`log_feature_density`).

Both describe the features of the SAE as published; :meth:`saegeo.SAE.select` keeps them
where they still apply (density indexed, the Neuronpedia id only for a prefix).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

NEURONPEDIA = "https://www.neuronpedia.org"
QUICK_LIST = "https://neuronpedia.org/quick-list/"
PER_FEATURE_KEYS = ("log_feature_density",)
"""Metadata entries holding one value per feature, indexed along with the features."""


def neuronpedia_id(sae: Any) -> str | None:
    """The SAE's Neuronpedia id (``MODEL/SAE``), or None."""
    value = getattr(sae, "metadata", {}).get("neuronpedia_id")
    return str(value) if value else None


def neuronpedia_url(sae: Any, feature: int) -> str | None:
    """Feature ``feature``'s Neuronpedia page, or None when the SAE has no Neuronpedia id.

    >>> from types import SimpleNamespace
    >>> sae = SimpleNamespace(metadata={"neuronpedia_id": "gpt2-small/8-res_fs768-jb"})
    >>> neuronpedia_url(sae, 5)
    'https://www.neuronpedia.org/gpt2-small/8-res_fs768-jb/5'
    """
    np_id = neuronpedia_id(sae)
    return None if np_id is None else f"{NEURONPEDIA}/{np_id}/{int(feature)}"


def log_feature_density(sae: Any) -> np.ndarray | None:
    """log10 feature density [width] as published (``sparsity.safetensors``), or None.

    A value whose length does not match the SAE's width (stale metadata) gives None.
    """
    value = getattr(sae, "metadata", {}).get("log_feature_density")
    if value is None:
        return None
    array = (
        value.detach().cpu().double().numpy()
        if isinstance(value, torch.Tensor)
        else np.asarray(value, dtype=np.float64)
    )
    return array if array.shape == (sae.width,) else None


def select_metadata(metadata: dict[str, Any], idx_F: torch.Tensor, width: int) -> dict[str, Any]:
    """Metadata of an SAE that keeps latents ``idx_F`` (in order) of ``width``.

    Per-feature entries are indexed; the Neuronpedia id stays only when the kept latents are
    a prefix (their indices unchanged); Matryoshka widths are dropped.
    """
    out = {key: value for key, value in metadata.items() if key != "matryoshka_widths"}
    for key in PER_FEATURE_KEYS:
        value = out.get(key)
        if value is None:
            continue
        tensor = torch.as_tensor(value)
        if tensor.shape == (width,):
            out[key] = tensor[idx_F.cpu()]
        else:
            del out[key]
    n = idx_F.numel()
    is_prefix = bool(n <= width and torch.equal(idx_F.cpu(), torch.arange(n)))
    if not is_prefix:
        out.pop("neuronpedia_id", None)
    return out


def quick_list_url(features: Iterable[tuple[str, int]], *, name: str = "saegeo") -> str:
    """A Neuronpedia quick-list URL of ``(neuronpedia_id, feature)`` pairs.

    The format is SAELens's ``get_neuronpedia_quick_list``: each entry names the model
    (``modelId``), the SAE (``layer``; the two parts of a Neuronpedia id) and the feature.

    >>> quick_list_url([("gpt2-small/8-res_fs768-jb", 3)], name="t")[:64]
    'https://neuronpedia.org/quick-list/?name=t&features=%5B%7B%22mod'
    """
    entries = []
    for np_id, feature in features:
        model, _, sae = str(np_id).partition("/")
        entries.append({"modelId": model, "layer": sae, "index": str(int(feature))})
    return (
        f"{QUICK_LIST}?name={urllib.parse.quote(name)}"
        f"&features={urllib.parse.quote(json.dumps(entries))}"
    )
