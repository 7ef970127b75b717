"""Files of published SAEs from the Hugging Face Hub, cache first.

Files land in the standard Hugging Face cache (``models--ORG--NAME/snapshots/SHA/...``), the
directory ``HF_HUB_CACHE`` names, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``;
both variables are read at each call, so setting them after import works. A file already in the
cache is used as is, without asking the Hub. Otherwise it is downloaded with
``huggingface_hub.hf_hub_download`` (which shows a progress bar), unless ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) is set: then, as when the Hub cannot be reached, a missing file is one
:class:`~saegeo.errors.SaegeoError` naming the release, the SAE, the file and how to fetch it
(``hf download``). Only the files asked for are fetched, one at a time.

Before a download, one request without retries (at most :data:`PROBE_TIMEOUT` seconds) asks
the Hub for the file's metadata: when the Hub cannot be reached, the error comes at once rather
than after huggingface_hub's five retries with back-off (about half a minute of warnings).
Optional files (``required=False``) can be taken from the cache only (``ask_hub=False``), which
the readers do when every required file of a folder was already cached: a complete folder is
read without a single request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from saegeo.errors import SaegeoError

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT = 5.0
"""Seconds the first request to the Hub may take before it counts as unreachable."""


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


def cached(repo_id: str, filename: str) -> Path | None:
    """The cached copy of ``filename`` of ``repo_id``, or None; never asks the Hub."""
    found = _hub().try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir()))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def download_hint(repo_id: str, filename: str | None = None, *, folder: str = "") -> str:
    """The ``hf download`` command that fetches a file (or a folder) into the cache.

    >>> download_hint("google/gemma-scope-2b-pt-res", folder="layer_12/width_16k")
    "hf download google/gemma-scope-2b-pt-res --include 'layer_12/width_16k/*'"
    """
    if filename is not None:
        return f"hf download {repo_id} {filename}"
    return f"hf download {repo_id} --include '{folder.strip('/')}/*'"


def fetch(
    repo_id: str,
    filename: str,
    *,
    what: str,
    required: bool = True,
    ask_hub: bool = True,
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
        while offline) gives None instead of an error; a Hub that cannot be reached is
        an error either way.
    ask_hub
        when False (only with ``required=False``), a file not in the cache gives None
        without asking the Hub.
    """
    hub = _hub()
    cache = cache_dir()
    found = hub.try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    fetch_hint = (
        f"fetch it with `{download_hint(repo_id, filename)}`"
        + (" or unset HF_HUB_OFFLINE" if offline() else "")
        + f" (cache: {cache})"
    )
    if found is not None and not isinstance(found, str):  # the cache records it as absent
        if required:
            raise SaegeoError(f"{what}: {repo_id} has no file {filename}")
        return None
    if not required and not ask_hub:
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

    unreachable = _unreachable(hub, repo_id, filename)
    if unreachable is not None:
        raise SaegeoError(
            f"{what}: cannot reach the Hugging Face Hub for {filename} of {repo_id} "
            f"({unreachable}) and it is not cached; {fetch_hint}, or set HF_HUB_OFFLINE=1 to "
            "use only the cache"
        )
    try:
        return Path(hub.hf_hub_download(repo_id, filename, cache_dir=str(cache)))
    except RepositoryNotFoundError:
        raise SaegeoError(
            f"{what}: no repository {repo_id} on the Hugging Face Hub (or it is private or "
            "gated: log in with `hf auth login`)"
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


def _unreachable(hub: Any, repo_id: str, filename: str) -> str | None:
    """Why the Hub cannot be reached (one short line), or None when it answers.

    One metadata request without retries; any HTTP answer, an error status included, means
    the Hub is reachable (``hf_hub_download`` then reports the status as it does).
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        hub.get_hf_file_metadata(hub.hf_hub_url(repo_id, filename), timeout=PROBE_TIMEOUT)
    except HfHubHTTPError:
        return None
    except Exception as exc:  # connection refused, DNS failure, timeout, proxy errors
        lines = str(exc).strip().splitlines()
        return (lines[0] if lines else type(exc).__name__)[:160]
    return None
