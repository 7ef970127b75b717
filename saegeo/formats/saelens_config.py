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

From 6.0 on, SAELens keeps what describes the model site (``hook_name``, ``context_size``,
``prepend_bos``, ``model_from_pretrained_kwargs``, ...) under ``metadata``, and a training
save converted for inference keeps the training settings it drops under
``metadata.training_architecture_details`` (a Matryoshka SAE's ``matryoshka_widths`` among
them). :func:`saelens_metadata` gathers all of these from either layout.
"""

from __future__ import annotations

import os
import re
from typing import Any

from saegeo.formats import fields
from saegeo.formats.reading import Config

RENAMED_KEYS = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
"""Pre-6.0 key -> 6.0 key, as SAELens renames them."""
FIRST_6X = (6, 0, 0)
SITE_KEYS = (
    "model_name",
    "model_class_name",
    "hook_name",
    "hook_layer",
    "hook_point",
    "hook_head_index",
    "prepend_bos",
    "context_size",
    "dataset_path",
    "model_from_pretrained_kwargs",
    "matryoshka_widths",
)
"""Keys SAELens < 6 keeps at the top level of a config and SAELens >= 6 under ``metadata``."""
TRAINING_DETAILS = "training_architecture_details"


def is_pre_6(cfg: dict[str, Any], source: str | os.PathLike[str] = "cfg.json") -> bool:
    """Whether SAELens would read ``cfg`` as a pre-6.0 config (``"6.0.0-rc.0"`` and later
    count as 6.0, as in SAELens)."""
    field, version = "sae_lens_version", cfg.get("sae_lens_version")
    if not version and isinstance(cfg.get("metadata"), dict):
        field, version = "metadata.sae_lens_version", cfg["metadata"].get("sae_lens_version")
    if not version:
        return True
    return fields.version(version, field=field, source=source) < FIRST_6X


def upgrade_config(
    cfg: dict[str, Any], source: str | os.PathLike[str] = "cfg.json"
) -> dict[str, Any]:
    """``cfg`` in the SAELens 6.0 layout (a new dict; 6.0 configs come back unchanged).

    ``source`` names the file in errors: a version, ``d_in`` or ``expansion_factor`` that is
    no number of the right kind is refused here.
    """
    if not is_pre_6(cfg, source):
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
    if new.get("d_sae") is None and new.get("expansion_factor") is not None:
        new["d_sae"] = _width_from_factor(Config(new, source))
    if new.get("hook_name") is not None and "hook_layer" not in new:
        match = re.match(r"blocks\.(\d{1,9})\.", str(new["hook_name"]))
        if match:
            new["hook_layer"] = int(match.group(1))
    return new


def _width_from_factor(cfg: Config) -> int:
    """``d_sae`` of a config that gives the width as ``expansion_factor`` times ``d_in``."""
    d_in = cfg.integer("d_in", minimum=1)
    factor = cfg.number("expansion_factor", minimum=0, exclusive_minimum=True)
    assert d_in is not None and factor is not None
    width = d_in * factor
    if width > fields.MAX_SIZE:
        raise fields.bad_field(
            cfg.source,
            "expansion_factor",
            f"at most {fields.MAX_SIZE // d_in} (d_in is {d_in})",
            factor,
        )
    return int(width)


def saelens_metadata(cfg: Config) -> dict[str, Any]:
    """The metadata of a config in the 6.0 layout: its ``metadata`` object, the site keys
    older configs keep at the top level (:data:`SITE_KEYS`) where ``metadata`` lacks them, and
    ``matryoshka_widths`` from ``training_architecture_details`` where nothing else gives it.
    """
    metadata = dict(cfg.mapping("metadata"))
    for key in SITE_KEYS:
        if key in cfg and key not in metadata:
            metadata[key] = cfg.get(key)
    meta = Config(metadata, f"{cfg.source} (metadata)")
    # The site fields harvest and the model settings read; null means not recorded.
    for key, minimum in (("context_size", 1), ("hook_layer", 0)):
        if metadata.get(key) is not None:
            metadata[key] = meta.integer(key, minimum=minimum)
    for key in ("model_name", "hook_name", "hook_point", "dataset_path"):
        if metadata.get(key) is not None:
            meta.string(key)
    if metadata.get("prepend_bos") is not None:
        meta.boolean("prepend_bos")
    if metadata.get("model_from_pretrained_kwargs") is not None:
        meta.mapping("model_from_pretrained_kwargs")
    details = meta.mapping(TRAINING_DETAILS)
    if metadata.get("matryoshka_widths") is None and details.get("matryoshka_widths"):
        metadata["matryoshka_widths"] = details["matryoshka_widths"]
    if metadata.get("matryoshka_widths") is not None:
        metadata["matryoshka_widths"] = Config(metadata, cfg.source).int_list(
            "matryoshka_widths",
            check=lambda ws: bool(ws) and ws == sorted(set(ws)) and ws[0] >= 1,
            expected="a strictly rising list of positive integers",
        )
    return metadata
