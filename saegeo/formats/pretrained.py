"""Published SAEs and families by release name, through the Hugging Face cache.

:func:`load_pretrained` reads one SAE of a release (see :mod:`saegeo.formats.registry`) or of any
Hugging Face repository folder; :func:`family_from_pretrained` reads several of one release as a
:class:`~saegeo.Family`. Files come through :func:`saegeo.formats.hub.fetch` (cache first; offline
with ``HF_HUB_OFFLINE=1``) and only the files of the SAEs asked for are fetched.

Layouts, by the release's SAELens ``conversion_func``:

- ``None`` (SAELens): ``cfg.json`` (pre-6.0 configs upgraded as SAELens does),
  ``sae_weights.safetensors``, and ``sparsity.safetensors`` where the folder has one, kept as
  ``metadata["log_feature_density"]``;
- ``gemma_2`` (Gemma Scope): ``params.npz`` (:mod:`saegeo.formats.gemma_scope`);
- ``dictionary_learning_1`` (SAEBench, Matryoshka BatchTopK): ``ae.pt`` and ``config.json``.

The release's ``config_overrides`` and Neuronpedia id are applied as SAELens applies them:
``normalize_activations`` and ``apply_b_dec_to_input`` change the SAE, everything else
(``model_from_pretrained_kwargs``, ``dataset_path``, ``neuronpedia_id``, ...) goes to
``metadata``. An SAE normalising its input by ``expected_average_only_in`` gets the registry's
``norm_scaling_factor`` folded into its weights, as ``SAE.from_pretrained`` does.

**Names on the command line** (:func:`parse_spec`): ``sae-lens:RELEASE/SAE_ID`` is one SAE of a
release, ``sae-lens:RELEASE/SITE`` the family of its SAEs on a site (``layer_12``),
``sae-lens:RELEASE`` the family of a release of one site, and
``hf:ORG/NAME/FOLDER`` the SAE in a folder of any repository; anything else is a local path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saegeo.core.sae import SAE
from saegeo.errors import FormatError, SaegeoError
from saegeo.formats import fields
from saegeo.formats.family import Family
from saegeo.formats.gemma_scope import PARAMS_FILE, load_params_npz
from saegeo.formats.gemma_scope import site_metadata as gemma_site_metadata
from saegeo.formats.hub import cached, download_hint, fetch, offline
from saegeo.formats.reading import Config, read_json_object, read_safetensors
from saegeo.formats.registry import Release, get_release, releases
from saegeo.formats.sae_files import load_sae
from saegeo.formats.saelens_config import saelens_metadata, upgrade_config

RELEASE_PREFIX = "sae-lens:"
REPO_PREFIX = "hf:"
SPARSITY_FILE = "sparsity.safetensors"
SUPPORTED_LOADERS = (None, "sae_lens", "gemma_2", "dictionary_learning_1")
"""SAELens ``conversion_func`` values whose files saegeo reads."""
SAE_FIELDS = ("normalize_activations", "apply_b_dec_to_input")
"""Config overrides that change the SAE itself; all others are metadata."""
_REPO_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?")
"""One part of a Hugging Face repository id (ORG or NAME)."""


@dataclass(frozen=True)
class Spec:
    """A parsed SAE name: a release (with one SAE id or none) or a repository folder."""

    release: str | None = None
    sae_id: str | None = None
    repo_id: str | None = None
    folder: str | None = None
    path: str | None = None


def parse_spec(spec: str | os.PathLike[str]) -> Spec:
    """Parse a name as the CLI takes it (see the module docstring).

    >>> parse_spec("sae-lens:gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_22").sae_id
    'layer_12/width_16k/average_l0_22'
    >>> parse_spec("hf:ORG/NAME/some/folder")
    Spec(release=None, sae_id=None, repo_id='ORG/NAME', folder='some/folder', path=None)
    """
    text = str(spec)
    if text.startswith(RELEASE_PREFIX):
        rest = text[len(RELEASE_PREFIX) :]
        release, _, sae_id = rest.partition("/")
        if not release:
            raise SaegeoError(f"{text}: expected {RELEASE_PREFIX}RELEASE or RELEASE/SAE_ID")
        return Spec(release=release, sae_id=sae_id or None)
    if text.startswith(REPO_PREFIX):
        parts = text[len(REPO_PREFIX) :].split("/")
        if len(parts) < 2 or not all(parts[:2]):
            raise SaegeoError(f"{text}: expected {REPO_PREFIX}ORG/NAME[/FOLDER]")
        return Spec(repo_id="/".join(parts[:2]), folder="/".join(parts[2:]))
    return Spec(path=text)


def is_pretrained_spec(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a published SAE rather than a local path."""
    return parse_spec(spec).path is None


# ---------------------------------------------------------------------------- loading


def load_pretrained(
    release: str | None = None,
    sae_id: str | None = None,
    *,
    repo_id: str | None = None,
    folder: str | None = None,
    dtype: torch.dtype = torch.float32,
    use_sae_lens: bool = True,
) -> SAE:
    """One published SAE: ``release`` and ``sae_id``, or ``repo_id`` and ``folder``.

    ``release`` may also be a Hugging Face repository id not in any registry, with ``sae_id``
    its folder, as ``sae_lens.SAE.from_pretrained`` accepts. ``use_sae_lens=False`` reads the
    table bundled with saegeo even when SAELens is installed.

    Examples
    --------
    >>> import saegeo as sg
    >>> sae = sg.load_pretrained("gpt2-small-res-jb-feature-splitting",
    ...                          "blocks.8.hook_resid_pre_768")  # doctest: +SKIP
    """
    if repo_id is not None:
        if release is not None:
            raise SaegeoError("load_pretrained(): pass release or repo_id, not both")
        return _load_folder(repo_id, folder or "", None, dtype=dtype)
    if release is None:
        raise SaegeoError("load_pretrained(): pass release (and sae_id) or repo_id (and folder)")
    entry = get_release(release, use_sae_lens=use_sae_lens)
    if entry is None:
        if "/" not in release:
            raise SaegeoError(_unknown_release(release, use_sae_lens))
        return _load_folder(release, sae_id or "", None, dtype=dtype)
    if sae_id is None:
        raise SaegeoError(
            f"release {release}: load_pretrained() needs sae_id, one of "
            f"{_some(list(entry.saes))}; Family.from_pretrained() loads several"
        )
    return _load_folder(entry.repo_id, entry.folder(sae_id), (entry, sae_id), dtype=dtype)


def family_from_pretrained(
    release: str,
    sae_ids: Sequence[str] | None = None,
    *,
    site: str | None = None,
    dtype: torch.dtype = torch.float32,
    use_sae_lens: bool = True,
) -> Family:
    """SAEs of one release as a family, sorted by width.

    ``sae_ids=None`` takes the release's family on one site (see
    :meth:`saegeo.formats.registry.Release.family_ids`): its only site, or ``site`` (``"layer_12"``
    for Gemma Scope, ``"blocks.8.hook_resid_pre"`` for a TransformerLens hook); a release of
    several sites without ``site`` is refused before anything is fetched, naming its sites.
    Where several SAEs of a site share a width (Gemma Scope's L0 variants), the canonical one
    is taken. A single Matryoshka SAE gives the family of its nested prefixes, as
    :meth:`saegeo.Family.load` does.

    Examples
    --------
    >>> import saegeo as sg
    >>> fam = sg.Family.from_pretrained("gemma-scope-2b-pt-res", site="layer_12")  # doctest: +SKIP
    """
    entry = get_release(release, use_sae_lens=use_sae_lens)
    if entry is None:
        raise SaegeoError(_unknown_release(release, use_sae_lens))
    if isinstance(sae_ids, str):
        sae_ids = [sae_ids]
    if sae_ids is not None and site is not None:
        raise SaegeoError(f"release {release}: pass sae_ids or site, not both")
    ids = entry.family_ids(site) if sae_ids is None else list(sae_ids)
    if not ids:
        raise SaegeoError(f"release {release}: sae_ids is empty")
    for sae_id in ids:
        entry.folder(sae_id)  # every id checked before anything is fetched
    saes = [_load_folder(entry.repo_id, entry.folder(i), (entry, i), dtype=dtype) for i in ids]
    if len(saes) == 1 and saes[0].metadata.get("matryoshka_widths"):
        return Family.from_matryoshka(saes[0])
    return Family(saes)


def load_sae_spec(spec: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> SAE:
    """One SAE from a local path or a CLI name (``sae-lens:RELEASE/SAE_ID``,
    ``hf:ORG/NAME/DIR``)."""
    parsed = parse_spec(spec)
    if parsed.path is not None:
        return load_sae(parsed.path, dtype=dtype)
    if parsed.repo_id is not None:
        return load_pretrained(repo_id=parsed.repo_id, folder=parsed.folder, dtype=dtype)
    if parsed.sae_id is None or _names_site(parsed):
        raise SaegeoError(
            f"{spec}: names a whole release or site; give one SAE as {RELEASE_PREFIX}RELEASE/SAE_ID"
        )
    return load_pretrained(parsed.release, parsed.sae_id, dtype=dtype)


def _names_site(parsed: Spec) -> bool:
    """Whether ``sae-lens:RELEASE/X`` names a site of the release rather than an SAE id."""
    if parsed.release is None or parsed.sae_id is None:
        return False
    entry = get_release(parsed.release)
    return entry is not None and parsed.sae_id not in entry.saes and parsed.sae_id in entry.sites()


def load_family_spec(
    specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    dtype: torch.dtype = torch.float32,
) -> Family:
    """A family from local paths and CLI names; ``sae-lens:RELEASE`` adds the release's family.

    With local paths only this is :meth:`saegeo.Family.load`.
    """
    items = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not any(is_pretrained_spec(s) for s in items):
        return Family.load(items)
    saes: list[SAE] = []
    for spec in items:
        parsed = parse_spec(spec)
        if parsed.path is not None:
            saes.extend(Family.load(parsed.path))
        elif parsed.release is not None and parsed.sae_id is None:
            saes.extend(family_from_pretrained(parsed.release, dtype=dtype))
        elif _names_site(parsed):
            assert parsed.release is not None
            saes.extend(family_from_pretrained(parsed.release, site=parsed.sae_id, dtype=dtype))
        else:
            saes.append(load_sae_spec(spec, dtype=dtype))
    if len(saes) == 1 and saes[0].metadata.get("matryoshka_widths"):
        return Family.from_matryoshka(saes[0])
    return Family(saes)


# ---------------------------------------------------------------------------- one folder


@dataclass(frozen=True)
class _Located:
    """One SAE folder of a repository, with its registry entry where it has one."""

    repo_id: str
    folder: str
    entry: Release | None
    sae_id: str | None
    what: str
    loader: str | None

    def file(self, name: str) -> str:
        prefix = self.folder.strip("/")
        return f"{prefix}/{name}" if prefix else name


def _locate(repo_id: str, folder: str, known: tuple[Release, str] | None) -> _Located:
    entry, sae_id = known if known is not None else (None, None)
    what = (
        f"release {entry.name}, SAE {sae_id}"
        if entry is not None
        else f"{REPO_PREFIX}{repo_id}/{folder}".rstrip("/")
    )
    _check_repo(repo_id, folder, what)
    loader = entry.conversion_func if entry is not None else _probe_loader(repo_id, folder, what)
    if loader not in SUPPORTED_LOADERS:
        raise SaegeoError(
            f"{what}: its files need SAELens's {loader!r} loader, which saegeo does not read; "
            "saegeo reads SAELens, Gemma Scope (gemma_2) and dictionary_learning_1 releases"
        )
    return _Located(repo_id, folder, entry, sae_id, what, loader)


def _site_config(loc: _Located) -> dict[str, Any]:
    """The SAE's config as SAELens reads it, fetching only the (small) config file."""
    if loc.loader in (None, "sae_lens"):
        cfg_path = fetch(loc.repo_id, loc.file("cfg.json"), what=loc.what)
        assert cfg_path is not None
        cfg = upgrade_config(read_json_object(cfg_path), cfg_path)
        # SAELens >= 6 keeps the site (hook_name, context_size, ...) under metadata.
        return {**cfg, **saelens_metadata(Config(cfg, cfg_path))}
    if loc.loader == "gemma_2":
        return gemma_site_metadata(loc.repo_id, loc.folder)
    config_path = fetch(loc.repo_id, loc.file("config.json"), what=loc.what)
    assert config_path is not None
    return _dictionary_learning_cfg(read_json_object(config_path), config_path)


def _metadata(
    loc: _Located, cfg: dict[str, Any], base: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, SAE field changes)`` from the config, the registry and its overrides."""
    metadata = dict(base)
    for key in ("model_name", "hook_name", "hook_layer", "context_size", "prepend_bos"):
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    if "model_from_pretrained_kwargs" in cfg:
        metadata["model_from_pretrained_kwargs"] = cfg["model_from_pretrained_kwargs"]
    changes: dict[str, Any] = {}
    if loc.entry is not None and loc.sae_id is not None:
        for key, value in loc.entry.overrides(loc.sae_id).items():
            if key in SAE_FIELDS:
                changes[key] = value
            else:
                metadata[key] = value
        metadata.setdefault("model_name", loc.entry.model)
        metadata.update(release=loc.entry.name, sae_id=loc.sae_id, registry=loc.entry.registry)
    metadata.update(repo_id=loc.repo_id, folder=loc.folder)
    metadata["name"] = _name(metadata, loc.sae_id, loc.folder)
    return metadata, changes


def site_metadata(spec: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an SAE (model, hook, settings) without fetching its weights.

    ``spec`` is a local path or a CLI name (see :func:`parse_spec`; one SAE, or a release,
    whose first SAE on its family's site is read).
    """
    parsed = parse_spec(spec)
    if parsed.path is not None:
        return dict(load_sae(parsed.path).metadata)
    if parsed.repo_id is not None:
        loc = _locate(parsed.repo_id, parsed.folder or "", None)
    else:
        assert parsed.release is not None
        entry = get_release(parsed.release)
        if entry is None:
            if "/" not in parsed.release:
                raise SaegeoError(_unknown_release(parsed.release, True))
            loc = _locate(parsed.release, parsed.sae_id or "", None)
        else:
            if parsed.sae_id is None or _names_site(parsed):
                sae_id = entry.family_ids(parsed.sae_id)[0]
            else:
                sae_id = parsed.sae_id
            loc = _locate(entry.repo_id, entry.folder(sae_id), (entry, sae_id))
    return _metadata(loc, _site_config(loc), {})[0]


def _load_folder(
    repo_id: str,
    folder: str,
    known: tuple[Release, str] | None,
    *,
    dtype: torch.dtype,
) -> SAE:
    loc = _locate(repo_id, folder, known)
    what = loc.what
    cfg = _site_config(loc)
    log_density = None
    if loc.loader in (None, "sae_lens"):
        # A folder whose required files are all cached is complete: its optional sparsity
        # file is read from the cache or not at all, without asking the Hub every time.
        complete = cached(repo_id, loc.file("sae_weights.safetensors")) is not None
        weights_path = fetch(repo_id, loc.file("sae_weights.safetensors"), what=what)
        sparsity_path = fetch(
            repo_id, loc.file(SPARSITY_FILE), what=what, required=False, ask_hub=not complete
        )
        assert weights_path is not None
        sae = load_sae(weights_path.parent)
        if sparsity_path is not None:
            log_density = _read_sparsity(sparsity_path, sae.width)
    elif loc.loader == "gemma_2":
        npz_path = fetch(repo_id, loc.file(PARAMS_FILE), what=what)
        assert npz_path is not None
        sae = load_params_npz(npz_path, repo_id=repo_id, folder=folder)
        cfg = {}
    else:
        weights_path = fetch(repo_id, loc.file("ae.pt"), what=what)
        assert weights_path is not None
        sae = load_sae(weights_path.parent)
    d_sae = cfg.get("d_sae")
    if isinstance(d_sae, int) and d_sae != sae.width:
        raise FormatError(f"{what}: config says d_sae={d_sae} but the weights hold {sae.width}")
    metadata, changes = _metadata(loc, cfg, sae.metadata)
    if log_density is not None:
        metadata["log_feature_density"] = log_density
    sae = sae.replace(metadata=metadata, **changes)
    entry, sae_id = loc.entry, loc.sae_id
    factor = entry.norm_scaling_factor.get(sae_id or "") if entry is not None else None
    if entry is not None and factor is not None:
        factor = fields.number(
            factor,
            field=f"norm_scaling_factor of {sae_id}",
            source=f"release registry ({entry.registry}) entry {entry.name}",
            minimum=0,
            exclusive_minimum=True,
        )
    if sae.normalize_activations == "expected_average_only_in" and factor is not None:
        sae = sae.replace(
            W_enc=sae.W_enc * factor,
            W_dec=sae.W_dec / factor,
            b_dec=sae.b_dec / factor,
            normalize_activations="none",
        )
    sae = sae.to(dtype=dtype)
    sae.check(what)
    return sae


def _probe_loader(repo_id: str, folder: str, what: str) -> str | None:
    """The layout of a folder not in a registry, from the files it has."""
    prefix = folder.strip("/")

    def file(name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    if fetch(repo_id, file("cfg.json"), what=what, required=False) is not None:
        return None
    if fetch(repo_id, file(PARAMS_FILE), what=what, required=False) is not None:
        return "gemma_2"
    if fetch(repo_id, file("config.json"), what=what, required=False) is not None:
        return "dictionary_learning_1"
    where = "the cache (HF_HUB_OFFLINE is set)" if offline() else f"{repo_id}/{folder}"
    raise SaegeoError(
        f"{what}: none of cfg.json (SAELens), {PARAMS_FILE} (Gemma Scope) or config.json "
        f"(dictionary_learning) is in {where}; fetch the folder with "
        f"`{download_hint(repo_id, folder=folder)}`"
    )


def _check_repo(repo_id: str, folder: str, what: str) -> None:
    """Refuse a repository id or folder that cannot name one on the Hub (``../..``)."""
    parts = repo_id.split("/")
    good_repo = len(parts) == 2 and all(
        _REPO_PART.fullmatch(p) and ".." not in p and "--" not in p for p in parts
    )
    if not good_repo:
        raise SaegeoError(
            f"{what}: {repo_id!r} is not a Hugging Face repository id; expected ORG/NAME "
            "(letters, digits, '-', '_' and '.'), as in hf:ORG/NAME/FOLDER"
        )
    if any(part in (".", "..") for part in folder.split("/")) or folder.startswith("/"):
        raise SaegeoError(
            f"{what}: the folder {folder!r} leaves the repository; give a path inside it"
        )


def _read_sparsity(path: Path, width: int) -> torch.Tensor:
    tensors = read_safetensors(path)
    if "sparsity" not in tensors:
        raise FormatError(f"{path}: no tensor named 'sparsity' (found {sorted(tensors)})")
    log_density = tensors["sparsity"].float().reshape(-1)
    if log_density.shape != (width,):
        raise FormatError(
            f"{path}: holds {log_density.numel()} feature densities for an SAE of width {width}"
        )
    return log_density


def _dictionary_learning_cfg(config: dict[str, Any], source: Path) -> dict[str, Any]:
    """Site settings SAELens reads from a dictionary_learning ``config.json``."""
    outer = Config(config, source)
    trainer = Config(outer.mapping("trainer"), f"{source} (trainer)")
    buffer = Config(outer.mapping("buffer"), f"{source} (buffer)")
    cfg: dict[str, Any] = {"prepend_bos": True}
    layer = trainer.integer("layer", None, minimum=0)
    if layer is not None:
        cfg["hook_name"] = f"blocks.{layer}.hook_resid_post"
        cfg["hook_layer"] = layer
    if "lm_name" in trainer:
        cfg["model_name"] = trainer.string("lm_name").split("/")[-1]
    context = buffer.integer("ctx_len", None, minimum=1)
    if context is not None:
        cfg["context_size"] = context
    d_sae = trainer.integer("dict_size", None, minimum=1)
    if d_sae is not None:
        cfg["d_sae"] = d_sae
    return cfg


def _name(metadata: dict[str, Any], sae_id: str | None, folder: str) -> str:
    """A short label: the SAE part of its Neuronpedia id, else its id or folder."""
    np_id = metadata.get("neuronpedia_id")
    if np_id and "/" in str(np_id):
        return str(np_id).split("/", 1)[1]
    label = sae_id or folder.strip("/") or str(metadata.get("repo_id", "sae"))
    return re.sub(r"/+", "-", label)


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


def _unknown_release(release: str, use_sae_lens: bool) -> str:
    known = sorted(releases(use_sae_lens=use_sae_lens))
    close = [name for name in known if release.lower() in name.lower()][:5]
    hint = f"; similar: {', '.join(close)}" if close else f"; {len(known)} releases are known"
    return (
        f"release {release!r}: not in the release registry{hint} (or pass a Hugging Face "
        f"repo id as {REPO_PREFIX}ORG/NAME/FOLDER)"
    )
