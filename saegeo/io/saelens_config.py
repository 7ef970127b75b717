"""SAELens configs written before SAELens 6.0, read in the 6.0 layout.

SAELens treats a ``cfg.json`` without ``sae_lens_version`` (at the top level or in
``metadata``), or with a version below 6.0, as a pre-6.0 config and upgrades it
(``sae_lens.loading.pretrained_sae_loaders.handle_pre_6_0_config``): ``hook_point`` becomes
``hook_name``, ``hook_point_head_index`` ``hook_head_index``, ``activation_fn_str``
``activation_fn``; a TopK activation with ``activation_fn_kwargs.k`` becomes the ``topk``
architecture; a boolean ``normalize_activations`` becomes ``"expected_average_only_in"`` (True)
or ``"none"``; ``apply_b_dec_to_input`` and ``prepend_bos`` default to True and the
architecture to ``standard``. :func:`upgrade_config` does the same. Very old configs give the
width only as ``expansion_factor`` (of ``d_in``); ``d_sae`` is then filled in from it.
"""

from __future__ import annotations

import re
from typing import Any

RENAMED_KEYS = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
"""Pre-6.0 key -> 6.0 key, as SAELens renames them."""
FIRST_6X = (6, 0)


def is_pre_6(cfg: dict[str, Any]) -> bool:
    """Whether SAELens would read ``cfg`` as a pre-6.0 config."""
    version = cfg.get("sae_lens_version")
    if not version and isinstance(cfg.get("metadata"), dict):
        version = cfg["metadata"].get("sae_lens_version")
    if not version:
        return True
    numbers = [int(n) for n in re.findall(r"\d+", str(version))[:2]]
    # "6.0.0-rc.0" and later count as 6.0, as in SAELens.
    return tuple(numbers + [0] * (2 - len(numbers))) < FIRST_6X


def upgrade_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` in the SAELens 6.0 layout (a new dict; 6.0 configs come back unchanged)."""
    if not is_pre_6(cfg):
        return dict(cfg)
    new = {RENAMED_KEYS.get(key, key): value for key, value in cfg.items()}
    new.setdefault("prepend_bos", True)
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("activation_fn", "relu")
    new.setdefault("architecture", "standard")
    kwargs = new.get("activation_fn_kwargs") or {}
    if (
        new.get("activation_fn") == "topk"
        and isinstance(kwargs, dict)
        and kwargs.get("k") is not None
    ):
        new["architecture"] = "topk"
        new["k"] = kwargs["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = (
            "expected_average_only_in" if new["normalize_activations"] else "none"
        )
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    d_in, factor = new.get("d_in"), new.get("expansion_factor")
    if new.get("d_sae") is None and isinstance(d_in, int) and isinstance(factor, (int, float)):
        new["d_sae"] = int(d_in * factor)
    if new.get("hook_name") is not None and "hook_layer" not in new:
        match = re.match(r"blocks\.(\d+)\.", str(new["hook_name"]))
        if match:
            new["hook_layer"] = int(match.group(1))
    return new
