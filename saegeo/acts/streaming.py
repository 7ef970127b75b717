"""Streaming over activations: the one loop every function that reads activations runs.

:func:`stream` turns anything saegeo accepts as activations (:data:`ActsLike`) into batches
[<= batch_size, d_in] on a device, in a dtype, at most ``limit`` tokens in all, after checking
that their ``d_in`` fits the SAE that will read them, with a progress bar.

**progress** has one meaning in every saegeo function that takes it:

- ``None`` (the default): show a bar only when stderr is a terminal;
- ``True``: always show it;
- ``False``: never show it.

In Jupyter the bar is tqdm's notebook widget where ``ipywidgets`` is installed, and its plain
text bar otherwise (``tqdm.auto`` would print "IProgress not found" in every notebook).

Examples
--------
>>> import torch
>>> batches = stream(torch.ones(10, 4), batch_size=4, limit=9, d_in=4, progress=False)
>>> batches.n_tokens, [x.shape[0] for x in batches]
(9, [4, 4, 1])
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, TypeVar

import numpy as np
import torch
from tqdm.std import tqdm

from saegeo.acts.store import ActivationStore, as_store
from saegeo.config import check_count
from saegeo.errors import ShapeError
from saegeo.runtime import distributed
from saegeo.runtime.devices import resolve_device

if TYPE_CHECKING:
    from saegeo.core.sae import SAE

ActsLike: TypeAlias = ActivationStore | torch.Tensor | np.ndarray | str | os.PathLike[str]
"""Activations [N, d_in]: a store, a tensor or array, or a path that
:meth:`ActivationStore.open` reads (``.npy``, ``.safetensors`` or a store directory)."""


def token_count(store: ActivationStore, limit: int | None) -> int:
    """How many tokens a pass over ``store`` reads when capped at ``limit`` (None: all)."""
    return store.n_tokens if limit is None else max(0, min(int(limit), store.n_tokens))


def bar_class() -> type[tqdm]:
    """tqdm's notebook bar inside a Jupyter kernel that can draw widgets, else its text bar."""
    if "ipykernel.zmqshell" in sys.modules and importlib.util.find_spec("ipywidgets"):
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    return tqdm


def progress_bar(total: int | None, desc: str, progress: bool | None, **options: object) -> tqdm:
    """A tqdm bar that follows the module's meaning of ``progress`` (None: on a terminal)."""
    disable = None if progress is None else not progress
    if not distributed.is_main():
        disable = True  # under torch.distributed, rank 0 alone shows progress
    bar = bar_class()
    return bar(total=total, desc=desc, leave=False, disable=disable, **options)  # type: ignore[call-overload]


def checked_store(
    acts: ActsLike, d_in: SAE | int | None = None, *, what: str = ""
) -> ActivationStore:
    """``acts`` as an :class:`ActivationStore`, checked to have ``d_in`` columns.

    ``d_in`` is an SAE (its ``d_in``, named in the error) or a number; ``what`` names the
    calling function in the error (e.g. ``"evaluate()"``).
    """
    store = as_store(acts)
    if d_in is None:
        return store
    expected = d_in if isinstance(d_in, int) else d_in.d_in
    if store.d_in != expected:
        reader = (
            f"d_in={expected} is expected"
            if isinstance(d_in, int)
            else (f"{d_in.name} expects d_in={expected}")
        )
        prefix = f"{what}: " if what else ""
        raise ShapeError(f"{prefix}activations {store.source} have d_in={store.d_in}, but {reader}")
    return store


class StreamOptions(TypedDict, total=False):
    """How a function reads its activations: the keywords (``**options``) that every saegeo
    function streaming activations takes, each defaulting as in :func:`stream`.

    Type checkers and editors check them at the call (PEP 692), ``help()`` and
    ``inspect.signature`` list them with their defaults (:func:`with_stream_options`), and at
    run time an unknown keyword is a ``TypeError`` (:func:`stream_options`).

    Examples
    --------
    >>> import saegeo as sg
    >>> sg.delta_mse(small, large, "acts/", batch_size=1024, limit=100_000)  # doctest: +SKIP
    """

    batch_size: int
    """Tokens per batch (default 4096)."""
    limit: int | None
    """At most this many tokens in all (default None: every token)."""
    device: str | torch.device
    """Where to compute (default ``"auto"``: CUDA when present)."""
    progress: bool | None
    """Show a progress bar: None (the default) on a terminal, True always, False never."""


def stream_options(options: Mapping[str, Any]) -> StreamOptions:
    """Every :class:`StreamOptions` keyword: those in ``options``, the others at :func:`stream`'s
    defaults; ``TypeError`` for a keyword that is not one of them."""
    unknown = sorted(set(options) - StreamOptions.__optional_keys__)
    if unknown:
        allowed = ", ".join(sorted(StreamOptions.__optional_keys__))
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}: the keywords that set how activations"
            f" are read are {allowed}"
        )
    defaults = inspect.signature(stream).parameters
    settings = {key: options.get(key, defaults[key].default) for key in defaults}
    check_count("batch_size", settings["batch_size"])
    check_count("limit", settings["limit"], optional=True)
    return {key: settings[key] for key in StreamOptions.__optional_keys__}  # type: ignore[return-value]


@dataclass(frozen=True)
class BatchStream:
    """Consecutive batches [<= batch_size, d_in] of a store, with a progress bar (tokens).

    Iterating again starts again from the first token. Build it with :func:`stream`; derive
    one that differs in a setting with :meth:`replace`, and the one an SAE reads with
    :meth:`for_sae`. Functions that take a stream read it as it is, so that one value carries
    the reading settings through every pass of a computation.
    """

    store: ActivationStore
    """The activations."""
    batch_size: int
    """Tokens per batch."""
    limit: int | None
    """At most this many tokens in all (None: every token)."""
    device: torch.device
    """Where batches arrive."""
    dtype: torch.dtype
    """Their dtype."""
    progress: bool | None
    """The progress bar: None on a terminal, True always, False never."""
    desc: str
    """The bar's label."""
    sharded: bool = False
    """Under ``torch.distributed``, yield only this rank's contiguous share of the tokens
    (:func:`saegeo.runtime.distributed.shard`); set by functions that reduce their sums over
    ranks. Without a process group it changes nothing."""

    def replace(self, **changes: Any) -> BatchStream:
        """The same stream with some settings changed (e.g. ``dtype=sae.dtype``)."""
        return dataclasses.replace(self, **changes)

    def for_sae(self, sae: SAE, what: str) -> tuple[SAE, BatchStream]:
        """``sae`` on the stream's device, and this stream for it: in its dtype, checked against
        its d_in, the bar labelled ``"{what} {sae.name}"`` (``what``: the calling function)."""
        store = checked_store(self.store, sae, what=f"{what}()")
        batches = self.replace(store=store, dtype=sae.dtype, desc=f"{what} {sae.name}")
        return sae.to(self.device), batches

    @property
    def n_tokens(self) -> int:
        """Tokens one pass yields: ``min(limit, store.n_tokens)``."""
        return token_count(self.store, self.limit)

    def __iter__(self) -> Iterator[torch.Tensor]:
        store, limit = self.store, self.limit
        if self.sharded and distributed.is_distributed():
            start, stop = distributed.shard(self.n_tokens)
            store, limit = store.slice(start, stop), None
        total = token_count(store, limit)
        with progress_bar(total, self.desc, self.progress, unit="tok") as bar:
            for x_BD in store.iter_batches(
                self.batch_size, limit=limit, dtype=self.dtype, device=self.device
            ):
                yield x_BD
                bar.update(x_BD.shape[0])


def stream(
    acts: ActsLike,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    d_in: SAE | int | None = None,
    progress: bool | None = None,
    desc: str = "",
    what: str = "",
) -> BatchStream:
    """Batches of ``acts`` [<= batch_size, d_in] on ``device`` in ``dtype``, ``limit`` in all.

    Parameters
    ----------
    acts
        The activations (see :data:`ActsLike`).
    batch_size
        Tokens per batch.
    limit
        At most this many tokens in all (None: every token).
    device
        Where batches arrive and the work runs; ``"auto"`` is CUDA when present.
    dtype
        The batches' dtype.
    d_in
        The SAE that reads the batches, or the width they must have; a mismatch raises one
        :class:`~saegeo.errors.ShapeError` naming the activations, the SAE and ``what``.
    progress
        The module's meaning: None shows a bar on a terminal, True always, False never.
    desc
        The bar's label.
    """
    check_count("batch_size", batch_size)
    check_count("limit", limit, optional=True)
    return BatchStream(
        checked_store(acts, d_in, what=what),
        batch_size=batch_size,
        limit=limit,
        device=resolve_device(device),
        dtype=dtype,
        progress=progress,
        desc=desc,
    )


F = TypeVar("F", bound=Callable[..., Any])


def with_stream_options(function: F) -> F:
    """``function``, unchanged, whose signature as ``help()``, ``inspect.signature`` and Jupyter
    show it lists its ``**options: Unpack[StreamOptions]`` as the keywords themselves, with
    :func:`stream`'s defaults."""
    signature = inspect.signature(function)
    kept = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    if len(kept) == len(signature.parameters):
        raise TypeError(f"{function.__qualname__} takes no **options to show")
    keywords = [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in inspect.signature(stream).parameters.values()
        if p.name in StreamOptions.__optional_keys__
    ]
    function.__signature__ = signature.replace(parameters=[*kept, *keywords])  # type: ignore[attr-defined]
    return function


def read(acts: ActsLike, options: Mapping[str, Any]) -> BatchStream:
    """Batches of ``acts`` as a public function's ``**options`` (:class:`StreamOptions`) say."""
    return stream(acts, **stream_options(options))


def sae_stream(
    sae: SAE, acts: ActsLike, options: Mapping[str, Any], what: str
) -> tuple[SAE, BatchStream]:
    """``sae`` on the options' device, and batches of ``acts`` for it
    (:meth:`BatchStream.for_sae`)."""
    return read(acts, options).for_sae(sae, what)
