"""Top activating text snippets of a feature: where it fires most, with the text around it.

A snippet is one token where the feature fires, its activation, and a window of the tokens
around it, cut at the edges of the token's document and of its model context (the model never
saw across a context boundary, so text beyond it says nothing about why the feature fired).
:func:`top_snippets` works on arrays (codes, token ids, document ids); :func:`store_tokens`
reads those from a harvested store and :func:`feature_snippets` does both in one call.

Examples
--------
>>> import numpy as np, scipy.sparse as sp
>>> class Chars:  # a tokenizer whose token ids are character codes
...     def decode(self, ids):
...         return "".join(map(chr, ids))
>>> ids = np.frombuffer(b"the cat sat. a dog ran.", dtype=np.uint8).astype(np.int64)
>>> codes = sp.csr_matrix((np.array([2.0, 1.0]), ([4, 17], [0, 0])), shape=(len(ids), 1))
>>> df = top_snippets(codes, 0, ids, Chars(), k=2, window=3)
>>> df[["token", "activation", "text"]].values.tolist()
[[4, 2.0, 'he «c»at '], [17, 1.0, ' do«g» ra']]
>>> top_snippets(codes, 0, ids, Chars(), k=1, window=(5, 0)).loc[0, "text"]
'the «c»'
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from saegeo.acts.codes import encode_codes
from saegeo.acts.store import ActivationStore
from saegeo.config import check_count
from saegeo.core.sae import SAE
from saegeo.errors import ArgumentError, SaegeoError, ShapeError

MARKS = ("«", "»")
"""Strings put around the activating token in the ``text`` column."""
COLUMNS = [
    "token",
    "activation",
    "doc_id",
    "context",
    "left",
    "token_str",
    "right",
    "text",
]


class StoreTokens(NamedTuple):
    """What a harvested store knows about its tokens, for :func:`top_snippets`."""

    token_ids: np.ndarray
    """Token id of each stored token [N] (int64)."""
    doc_ids: np.ndarray | None
    """Document of each token [N] (int64), or None where the store has none."""
    tokens_per_context: int | None
    """Stored tokens per model context: token i belongs to context i // this (None: unknown)."""


def store_tokens(store: ActivationStore) -> StoreTokens:
    """Token ids, document ids and context length of a harvested store (see :mod:`harvest`).

    Context boundaries count from the store's first token, as in a whole harvest (not in a
    :meth:`~saegeo.acts.store.ActivationStore.slice` that starts mid-context).
    """
    token_ids = store.token_ids()
    if token_ids is None:
        raise SaegeoError(
            f"{store.source}: the store has no token ids, so it has no text to show; "
            "use a store written by saegeo harvest"
        )
    doc_ids = store.doc_ids()
    per_context = store.meta.get("tokens_per_context")
    return StoreTokens(
        token_ids.astype(np.int64, copy=False),
        None if doc_ids is None else doc_ids.astype(np.int64, copy=False),
        None if per_context is None else int(per_context),
    )


def _window(window: int | tuple[int, int]) -> tuple[int, int]:
    """(tokens before, tokens after) from ``window``."""
    pair = (window, window) if isinstance(window, (int, np.integer)) else tuple(window)
    if len(pair) != 2 or any(
        isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0 for w in pair
    ):
        raise ArgumentError("window", window, "must be an integer >= 0 or a pair of them")
    return int(pair[0]), int(pair[1])


def _feature_column(codes: Any, feature: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows where ``feature`` is non-zero, their values, number of rows) of ``codes``."""
    if sp.issparse(codes):
        if codes.ndim != 2:
            raise ShapeError("top_snippets(): codes must be 2-D [tokens, features]")
        n_rows, width = codes.shape
        if not 0 <= feature < width:
            raise SaegeoError(f"top_snippets(): feature {feature} is outside [0, {width})")
        column = sp.csc_matrix(codes[:, [feature]])
        column.eliminate_zeros()
        return column.indices.astype(np.int64), column.data.astype(np.float64), n_rows
    array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if array.ndim == 1:
        if feature != 0:
            raise SaegeoError("top_snippets(): with 1-D codes (one feature's column) use feature=0")
        values = array
    elif array.ndim == 2:
        if not 0 <= feature < array.shape[1]:
            raise SaegeoError(f"top_snippets(): feature {feature} is outside [0, {array.shape[1]})")
        values = array[:, feature]
    else:
        raise ShapeError(f"top_snippets(): codes must be [tokens, features], got {array.shape}")
    rows = np.flatnonzero(values)
    return rows.astype(np.int64), values[rows].astype(np.float64), int(array.shape[0])


def top_snippets(
    codes: sp.spmatrix | np.ndarray | torch.Tensor,
    feature: int,
    token_ids: np.ndarray,
    tokenizer: Any,
    *,
    doc_ids: np.ndarray | None = None,
    tokens_per_context: int | None = None,
    k: int = 10,
    window: int | tuple[int, int] = 10,
    max_per_doc: int | None = None,
    marks: tuple[str, str] = MARKS,
) -> pd.DataFrame:
    """The ``k`` tokens where ``feature`` fires most, each with the text around it.

    Parameters
    ----------
    codes
        Latent activations [N, width] (``scipy.sparse``, as from :func:`saegeo.encode_codes`,
        or dense), or one feature's column [N] (then ``feature=0``).
    feature
        The feature's index (column of ``codes``).
    token_ids
        Token id of every token [>= N] of the activations the codes were computed on.
    tokenizer
        Anything with ``decode(list_of_ids) -> str`` (a ``transformers`` tokenizer:
        :func:`saegeo.lm.harvest.load_tokenizer`).
    doc_ids
        Document of every token [like token_ids]; windows stop at document edges.
    tokens_per_context
        Tokens per model context (token i is in context i // this); windows stop at context
        edges. None: no context boundaries.
    k
        Number of snippets (fewer when the feature fires on fewer tokens).
    window
        Tokens shown before and after the activating one: one number, or ``(before, after)``.
    max_per_doc
        At most this many snippets from one document (None: no limit), so that one long
        article does not fill the table.
    marks
        Strings put around the activating token in ``text``.

    Returns
    -------
    pandas.DataFrame
        One row per snippet, strongest first (ties: earlier token first), index ``rank``;
        columns ``token`` (position in the activations), ``activation``, ``doc_id`` and
        ``context`` (-1 where unknown), ``left``, ``token_str``, ``right`` (decoded text)
        and ``text``: left, marked token and right on one line (newlines shown as ``⏎``).
    """
    check_count("k", k, minimum=0)
    before, after = _window(window)
    check_count("max_per_doc", max_per_doc, optional=True)
    check_count("tokens_per_context", tokens_per_context, optional=True)
    token_ids = np.asarray(token_ids).reshape(-1)
    rows, values, n_rows = _feature_column(codes, int(feature))
    if n_rows > token_ids.size:
        raise ShapeError(
            f"top_snippets(): codes have {n_rows} tokens but token_ids only {token_ids.size}"
        )
    if doc_ids is not None:
        doc_ids = np.asarray(doc_ids).reshape(-1)
        if doc_ids.size != token_ids.size:
            raise ShapeError(
                f"top_snippets(): doc_ids has {doc_ids.size} tokens, token_ids {token_ids.size}"
            )

    # Strongest first; ties keep the earlier token (lexsort sorts by its last key first).
    order = np.lexsort((rows, -values))
    rows, values = rows[order], values[order]
    if max_per_doc is not None and doc_ids is not None:
        docs = doc_ids[rows]
        rank_in_doc = pd.Series(docs).groupby(docs).cumcount().to_numpy()
        keep = rank_in_doc < max_per_doc
        rows, values = rows[keep], values[keep]
    rows, values = rows[:k], values[:k]

    clipped, shown_KW = snippet_windows(
        rows,
        (before, after),
        token_ids.size,
        doc_ids=doc_ids,
        tokens_per_context=tokens_per_context,
    )
    centre = before
    left_ok, right_ok = shown_KW[:, :centre], shown_KW[:, centre + 1 :]
    ids = token_ids[clipped]

    left, middle, right, text = [], [], [], []
    for s in range(rows.size):  # k snippets, not N tokens
        left.append(tokenizer.decode(ids[s, :centre][left_ok[s].astype(bool)].tolist()))
        middle.append(tokenizer.decode([int(ids[s, centre])]))
        right.append(tokenizer.decode(ids[s, centre + 1 :][right_ok[s].astype(bool)].tolist()))
        text.append(_marked(left[-1], middle[-1], right[-1], marks))
    frame = pd.DataFrame(
        {
            "token": rows,
            "activation": values,
            "doc_id": doc_ids[rows] if doc_ids is not None else np.full(rows.size, -1),
            "context": rows // tokens_per_context if tokens_per_context else np.full(rows.size, -1),
            "left": left,
            "token_str": middle,
            "right": right,
            "text": text,
        },
        columns=COLUMNS,
    )
    frame.index.name = "rank"
    return frame


def snippet_windows(
    rows: np.ndarray,
    window: tuple[int, int],
    n_tokens: int,
    *,
    doc_ids: np.ndarray | None = None,
    tokens_per_context: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The window of tokens shown around each of ``rows``: positions and which are shown.

    Parameters
    ----------
    rows
        Positions of the activating tokens [K].
    window
        ``(before, after)``: tokens shown on either side.
    n_tokens
        Tokens in all (positions run over ``[0, n_tokens)``).
    doc_ids, tokens_per_context
        As for :func:`top_snippets`: a window stops at the edges of its token's document and
        model context.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Positions [K, before + 1 + after] (clipped into range) and a boolean mask of the same
        shape: True where the position is shown. A window is contiguous, so everything beyond
        the first position that leaves the document or context is hidden too.

    Examples
    --------
    >>> positions, shown = snippet_windows(np.array([1]), (2, 1), 10, tokens_per_context=5)
    >>> positions.tolist(), shown.astype(int).tolist()
    ([[0, 0, 1, 2]], [[0, 1, 1, 1]])
    """
    before, after = window
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    positions = rows[:, None] + np.arange(-before, after + 1)[None, :]
    inside = (positions >= 0) & (positions < n_tokens)
    clipped = np.clip(positions, 0, max(n_tokens - 1, 0))
    if doc_ids is not None:
        inside &= doc_ids[clipped] == doc_ids[rows][:, None]
    if tokens_per_context is not None:
        inside &= clipped // tokens_per_context == (rows // tokens_per_context)[:, None]
    left = np.flip(np.cumprod(np.flip(inside[:, :before], axis=1), axis=1), axis=1)
    right = np.cumprod(inside[:, before + 1 :], axis=1)
    centre = np.ones((rows.size, 1), dtype=bool)
    shown = np.concatenate([left.astype(bool), centre, right.astype(bool)], axis=1)
    return clipped, shown


def _marked(left: str, token: str, right: str, marks: tuple[str, str]) -> str:
    """One line: the token between marks, its leading spaces outside them."""
    core = token.lstrip() or token
    lead = token[: len(token) - len(core)]
    return (left + lead + marks[0] + core + marks[1] + right).replace("\n", "⏎")


def feature_snippets(
    store: ActivationStore,
    feature: int,
    *,
    codes: sp.spmatrix | np.ndarray | None = None,
    sae: SAE | None = None,
    tokenizer: Any = None,
    tokens: StoreTokens | None = None,
    k: int = 10,
    window: int | tuple[int, int] = 10,
    max_per_doc: int | None = None,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`top_snippets` of ``feature`` on a harvested store, from ``codes`` or an ``sae``.

    Pass the codes of the store (:func:`saegeo.encode_codes`) to look at many features of
    one SAE, or ``sae`` to encode the store here (the first ``limit`` tokens). The tokenizer
    (default: the one saved with the store, :func:`saegeo.lm.harvest.load_tokenizer`) and
    ``tokens`` (default: :func:`store_tokens`) can be passed to avoid reading them again.
    """
    if (codes is None) == (sae is None):
        raise SaegeoError("feature_snippets(): pass exactly one of codes= and sae=")
    if sae is not None:
        codes = encode_codes(sae, store, limit=limit, device=device, progress=progress)
    if tokenizer is None:
        from saegeo.lm.harvest import load_tokenizer

        tokenizer = load_tokenizer(store)
    tokens = tokens or store_tokens(store)
    return top_snippets(
        codes,  # type: ignore[arg-type]
        feature,
        tokens.token_ids,
        tokenizer,
        doc_ids=tokens.doc_ids,
        tokens_per_context=tokens.tokens_per_context,
        k=k,
        window=window,
        max_per_doc=max_per_doc,
    )
