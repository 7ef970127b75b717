"""Published SAE releases by name: SAELens's release registry, or a table bundled with saegeo.

A *release* (SAELens's word) is a named set of SAEs in one Hugging Face repository, e.g.
``gpt2-small-res-jb-feature-splitting``: eight ReLU SAEs on ``blocks.8.hook_resid_pre`` of GPT-2
small. Each SAE of a release has an id (``blocks.8.hook_resid_pre_768``), a folder in the
repository, and optionally a Neuronpedia id; the release names the model, the loader its files
need (``conversion_func``) and ``config_overrides`` applied to every SAE's config.

When ``sae_lens`` is installed its own registry (``pretrained_saes.yaml``, read through
``sae_lens.loading.pretrained_saes_directory``) is used, so every release SAELens knows is
known here. Otherwise saegeo falls back to ``pretrained_saes.json`` shipped in this package:
the entries of SAELens's registry for the families saegeo documents (GPT-2 feature splitting,
Gemma Scope 2B residual layer 12, the SAEBench Gemma-2-2B TopK/ReLU families at layer 12 and
two Matryoshka BatchTopK releases), copied from SAELens 6.54.12.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from saegeo.errors import SaegeoError

BUNDLED_FILE = "pretrained_saes.json"
CHECKPOINT_MARK = "_step_"
"""SAE ids holding this are training checkpoints, left out of default families."""
CANONICAL_L0 = 100
"""Gemma Scope's canonical SAE of a site and width is the one whose average L0 is closest to
this (the ``-canonical`` releases of SAELens's registry pick exactly these)."""
_L0_RE = re.compile(r"average_l0_(\d{1,9})$")
_HOOK_RE = re.compile(r"blocks\.\d+\.(?:[a-z_]+\.)*hook_[a-z]+(?:_[a-z]+)*")


@dataclass(frozen=True)
class Release:
    """One release of the registry.

    Attributes
    ----------
    name
        the release name.
    repo_id
        the Hugging Face repository holding its files.
    model
        the model name (TransformerLens spelling, e.g. ``gpt2-small``).
    conversion_func
        the SAELens loader its files need; None is the SAELens layout.
    saes
        SAE id -> folder (or file) in the repository, in registry order.
    neuronpedia
        SAE id -> Neuronpedia id, where the registry gives one.
    config_overrides
        settings applied over every SAE's config.
    norm_scaling_factor
        SAE id -> input scale folded into SAEs that normalise their
        input by ``expected_average_only_in``.
    registry
        where the entry came from, ``"sae_lens"`` or ``"saegeo"``.
    """

    name: str
    repo_id: str
    model: str
    conversion_func: str | None
    saes: dict[str, str]
    neuronpedia: dict[str, str] = field(default_factory=dict)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    norm_scaling_factor: dict[str, float] = field(default_factory=dict)
    registry: str = "saegeo"

    def folder(self, sae_id: str) -> str:
        """The repository folder of ``sae_id``; a SaegeoError lists some valid ids otherwise."""
        if sae_id not in self.saes:
            ids = list(self.saes)
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise SaegeoError(
                f"release {self.name}: no SAE id {sae_id!r}; its {len(ids)} ids include {shown}"
            )
        return self.saes[sae_id]

    def overrides(self, sae_id: str) -> dict[str, Any]:
        """``config_overrides`` plus ``neuronpedia_id`` where known, as SAELens applies them."""
        out = dict(self.config_overrides)
        if self.neuronpedia.get(sae_id):
            out["neuronpedia_id"] = self.neuronpedia[sae_id]
        return out

    def sites(self) -> dict[str, list[str]]:
        """SAE ids by model site (:func:`site_key`), training checkpoints left out, in
        registry order."""
        ids = [i for i in self.saes if CHECKPOINT_MARK not in i] or list(self.saes)
        out: dict[str, list[str]] = {}
        for sae_id in ids:
            out.setdefault(site_key(sae_id), []).append(sae_id)
        return out

    def family_ids(self, site: str | None = None) -> list[str]:
        """Ids of the release's family on one site, decided from the ids alone (nothing is
        fetched).

        ``site=None`` takes the release's only site; a release of several sites (Gemma Scope
        has 27) must be told which one, and the error lists them. Where the ids give widths
        and several SAEs share one (Gemma Scope's ``width_16k/average_l0_N``), the canonical
        one is kept: the average L0 closest to :data:`CANONICAL_L0`.
        """
        sites = self.sites()
        if site is None:
            if len(sites) > 1:
                names = list(sites)
                shown = ", ".join(names[:30]) + (
                    f", ... ({len(names)} in all)" if len(names) > 30 else ""
                )
                raise SaegeoError(
                    f"release {self.name}: its SAEs lie on {len(names)} sites ({shown}); name one "
                    f"with site= in Python, or as sae-lens:{self.name}/SITE on the command line"
                )
            site = next(iter(sites))
        if site not in sites:
            raise SaegeoError(
                f"release {self.name}: no site {site!r}; its sites are {', '.join(sites)}"
            )
        return _canonical_per_width(sites[site])


def _canonical_per_width(ids: list[str]) -> list[str]:
    """``ids`` with one per width where the ids name widths and L0s (Gemma Scope)."""
    from saegeo.formats.gemma_scope import folder_width

    by_width: dict[int, list[tuple[int, str]]] = {}
    for sae_id in ids:
        width, l0 = folder_width(sae_id), _L0_RE.search(sae_id)
        if width is None or l0 is None:
            return ids
        by_width.setdefault(width, []).append((int(l0.group(1)), sae_id))
    return [
        min(group, key=lambda pair: (abs(pair[0] - CANONICAL_L0), pair[0]))[1]
        for _, group in sorted(by_width.items())
    ]


def site_key(sae_id: str) -> str:
    """The model site an SAE id names: its TransformerLens hook, else its first path part.

    >>> site_key("blocks.8.hook_resid_pre_768"), site_key("layer_12/width_16k/average_l0_22")
    ('blocks.8.hook_resid_pre', 'layer_12')
    """
    match = _HOOK_RE.search(sae_id)
    if match:
        return match.group(0)
    return sae_id.split("/")[0] if "/" in sae_id else sae_id


def _from_entry(name: str, entry: Mapping[str, Any], registry: str) -> Release:
    saes = {str(s["id"]): str(s["path"]) for s in entry["saes"]}
    neuronpedia = {
        str(s["id"]): str(s["neuronpedia"]) for s in entry["saes"] if s.get("neuronpedia")
    }
    return Release(
        name=name,
        repo_id=str(entry["repo_id"]),
        model=str(entry["model"]),
        conversion_func=entry.get("conversion_func"),
        saes=saes,
        neuronpedia=neuronpedia,
        config_overrides=dict(entry.get("config_overrides") or {}),
        norm_scaling_factor={
            str(s["id"]): float(s["norm_scaling_factor"])
            for s in entry["saes"]
            if s.get("norm_scaling_factor") is not None
        },
        registry=registry,
    )


@functools.cache
def bundled_releases() -> dict[str, Release]:
    """The releases of the table shipped with saegeo."""
    text = resources.files("saegeo.formats").joinpath(BUNDLED_FILE).read_text(encoding="utf-8")
    doc = json.loads(text)
    return {name: _from_entry(name, entry, "saegeo") for name, entry in doc["releases"].items()}


def _saelens_releases() -> dict[str, Release] | None:
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        return None
    out = {}
    for name, lookup in get_pretrained_saes_directory().items():
        out[name] = Release(
            name=name,
            repo_id=lookup.repo_id,
            model=lookup.model,
            conversion_func=lookup.conversion_func,
            saes=dict(lookup.saes_map),
            neuronpedia={k: v for k, v in (lookup.neuronpedia_id or {}).items() if v},
            config_overrides=dict(lookup.config_overrides or {}),
            norm_scaling_factor=dict(lookup.norm_scaling_factor or {}),
            registry="sae_lens",
        )
    return out


def releases(*, use_sae_lens: bool = True) -> dict[str, Release]:
    """Every known release: SAELens's registry when installed (and ``use_sae_lens``), else the
    bundled table."""
    found = _saelens_releases() if use_sae_lens else None
    return found if found is not None else bundled_releases()


def get_release(name: str, *, use_sae_lens: bool = True) -> Release | None:
    """The release called ``name``, or None when no registry knows it."""
    return releases(use_sae_lens=use_sae_lens).get(name)
