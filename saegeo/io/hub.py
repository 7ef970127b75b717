"""Files of published SAEs from the Hugging Face Hub, cache first.

Files land in the standard Hugging Face cache (``models--ORG--NAME/snapshots/SHA/...``), the
directory ``HF_HUB_CACHE`` names, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``;
both variables are read at each call, so setting them after import works. A file already in the
cache is used as is, without asking the Hub. Otherwise it is downloaded with
``huggingface_hub.hf_hub_download`` (which shows a progress bar), unless ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) is set: then, as when the Hub cannot be reached, a missing file is one
:class:`~saegeo.errors.SaegeoError` naming the release, the SAE, the file and how to fetch it.
Only the files asked for are fetched, one at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from saegeo.errors import SaegeoError

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def cache_dir() -> Path:
    """The Hugging Face hub cache directory, from the environment at call time."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in TRUE_VALUES


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise SaegeoError(
            "loading published SAEs needs huggingface_hub: pip install huggingface_hub"
        ) from None
    return huggingface_hub


def fetch(
    repo_id: str,
    filename: str,
    *,
    what: str,
    required: bool = True,
) -> Path | None:
    """The local path of ``filename`` in repository ``repo_id``, fetched if need be.

    Parameters
    ----------
    repo_id
        ``ORG/NAME`` of a model repository.
    filename
        the file's path inside the repository.
    what
        names the SAE in error messages, e.g. ``"release R, SAE S"``.
    required
        when False, a file the repository does not have (or that is not cached
        while offline) gives None instead of an error.
    """
    hub = _hub()
    cache = cache_dir()
    cached = hub.try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    fetch_hint = (
        f"fetch it with `huggingface-cli download {repo_id} {filename}`"
        + (" or unset HF_HUB_OFFLINE" if offline() else "")
        + f" (cache: {cache})"
    )
    if cached is not None and not isinstance(cached, str):  # the cache records it as absent
        if required:
            raise SaegeoError(f"{what}: {repo_id} has no file {filename}")
        return None
    if offline():
        if not required:
            return None
        raise SaegeoError(f"{what}: {filename} of {repo_id} is not in the cache; {fetch_hint}")
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hub.hf_hub_download(repo_id, filename, cache_dir=str(cache)))
    except RepositoryNotFoundError:
        raise SaegeoError(
            f"{what}: no repository {repo_id} on the Hugging Face Hub (or it is private or "
            "gated: log in with `huggingface-cli login`)"
        ) from None
    except LocalEntryNotFoundError:  # the Hub could not be reached and the cache lacks it
        if not required:
            return None
        raise SaegeoError(
            f"{what}: cannot reach the Hugging Face Hub for {filename} of {repo_id} and it is "
            f"not cached; {fetch_hint}"
        ) from None
    except EntryNotFoundError:
        if required:
            raise SaegeoError(f"{what}: {repo_id} has no file {filename}") from None
        return None
    except (OSError, ValueError) as exc:  # no network, timeouts, refused connections
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SaegeoError(
            f"{what}: cannot download {filename} of {repo_id} ({first_line[:160]}); {fetch_hint}"
        ) from None
