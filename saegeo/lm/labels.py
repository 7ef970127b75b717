"""Short labels of features from the tokens they fire on most: the text on tree boxes.

The rule lives in :func:`token_label`: a feature's label is the distinct tokens among its
``k`` strongest activations (default 20), most frequent among them first (ties: the one with
the stronger activation first), at most ``n`` of them (default 3), joined by ``" · "``. Each
token is shown without its surrounding whitespace; a token of whitespace only shows as ``␣``
and a newline as ``⏎``. A feature that never fires on the tokens read has no label.

:func:`top_token_labels` applies the rule to the columns of a code matrix;
:func:`feature_labels` encodes a harvested store with the members of a family and labels the
features asked for, keyed by ``"level/feature"`` as trees and figures expect.

Examples
--------
>>> token_label([" the", " The", " the", "\\n", " the", " a"])
'the · The · ⏎'
>>> token_label([]) is None
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from saegeo.acts.codes import encode_codes
from saegeo.acts.store import ActivationStore
from saegeo.config import check_count
from saegeo.errors import SaegeoError
from saegeo.formats.family import Family

SEPARATOR = " · "
"""Between the tokens of a label."""
TOP_K = 20
"""Strongest activations of a feature whose tokens make its label."""
N_TOKENS = 3
"""Distinct tokens in a label at most."""


def _shown(token: str) -> str:
    """A token as a label shows it: stripped, with whitespace-only tokens made visible."""
    core = token.strip()
    if core:
        return core.replace("\n", "⏎")
    return "⏎" if "\n" in token else "␣"


def token_label(tokens: Sequence[str], *, n: int = N_TOKENS) -> str | None:
    """The label of a feature from its top tokens, given strongest activation first.

    Distinct tokens (as shown: stripped, ``␣`` for spaces, ``⏎`` for newlines) are ordered by
    how often they occur in ``tokens``, ties by first occurrence; the first ``n`` are joined
    by ``" · "``. None when ``tokens`` is empty.

    Examples
    --------
    >>> token_label([" cat", " dog", " dog"], n=1)
    'dog'
    >>> token_label([" cat", " dog"])
    'cat · dog'
    """
    check_count("n", n)
    shown = [_shown(t) for t in tokens]
    if not shown:
        return None
    counts = Counter(shown)
    first = {t: i for i, t in reversed(list(enumerate(shown)))}
    ordered = sorted(counts, key=lambda t: (-counts[t], first[t]))
    return SEPARATOR.join(ordered[:n])


def top_token_labels(
    codes: sp.spmatrix,
    token_ids: np.ndarray,
    tokenizer: Any,
    *,
    features: Iterable[int] | None = None,
    k: int = TOP_K,
    n: int = N_TOKENS,
) -> dict[int, str]:
    """Labels (:func:`token_label`) of the columns of ``codes`` [N, width].

    Parameters
    ----------
    codes
        Latent activations [N, width] (``scipy.sparse``, as from :func:`saegeo.encode_codes`).
    token_ids
        Token id of every row of ``codes`` [>= N].
    tokenizer
        Anything with ``decode(list_of_ids) -> str``.
    features
        Columns to label (default: all).
    k, n
        Top activations read per feature, and tokens kept in its label.

    Returns
    -------
    dict
        Label by column, for the columns that fire at least once.

    Examples
    --------
    >>> class Chars:
    ...     def decode(self, ids):
    ...         return "".join(map(chr, ids))
    >>> ids = np.frombuffer(b"abcab", dtype=np.uint8).astype(np.int64)
    >>> codes = sp.csr_matrix(np.array([[3.0, 0], [0, 1], [0, 0], [2, 0], [1, 0]]))
    >>> top_token_labels(codes, ids, Chars())
    {0: 'a · b', 1: 'b'}
    """
    check_count("k", k)
    columns = sp.csc_matrix(codes)
    columns.eliminate_zeros()
    token_ids = np.asarray(token_ids).reshape(-1)
    if columns.shape[0] > token_ids.size:
        raise SaegeoError(
            f"top_token_labels(): codes have {columns.shape[0]} tokens, token_ids "
            f"only {token_ids.size}"
        )
    chosen = range(columns.shape[1]) if features is None else features
    labels: dict[int, str] = {}
    pieces: dict[int, str] = {}  # decoded once per token id
    for feature in chosen:
        start, stop = columns.indptr[feature], columns.indptr[feature + 1]
        rows, values = columns.indices[start:stop], columns.data[start:stop]
        # Strongest first; ties keep the earlier token.
        top = rows[np.lexsort((rows, -values))[:k]]
        ids = token_ids[top].tolist()
        for token in ids:
            if token not in pieces:
                pieces[token] = tokenizer.decode([int(token)])
        label = token_label([pieces[t] for t in ids], n=n)
        if label is not None:
            labels[int(feature)] = label
    return labels


def feature_labels(
    family: Family,
    store: ActivationStore,
    nodes: Iterable[tuple[int, int]],
    *,
    tokenizer: Any = None,
    k: int = TOP_K,
    n: int = N_TOKENS,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = False,
) -> dict[str, str]:
    """Labels of the features ``nodes`` (``(level, feature)`` of ``family``), by
    ``"level/feature"``, from the tokens of a harvested ``store``.

    Each member with a feature asked for is encoded once, whole (a TopK or pursuit latent's
    activation depends on the other latents), on the first ``limit`` tokens (None: all). The
    tokenizer defaults to the one saved with the store
    (:func:`saegeo.lm.harvest.load_tokenizer`); a store without token ids raises
    :class:`saegeo.SaegeoError` (:func:`saegeo.lm.snippets.store_tokens`).
    """
    from saegeo.lm.harvest import load_tokenizer
    from saegeo.lm.snippets import store_tokens

    token_ids = store_tokens(store).token_ids
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(store)
    by_level: dict[int, list[int]] = {}
    for level, feature in nodes:
        by_level.setdefault(int(level), []).append(int(feature))
    labels: dict[str, str] = {}
    for level, features in sorted(by_level.items()):
        codes = encode_codes(family[level], store, limit=limit, device=device, progress=progress)
        if store.skipped_rows:
            raise SaegeoError(
                f"{store.source}: {store.skipped_rows} rows with NaN or Inf values were "
                "skipped, so the codes no longer line up with the token ids; labels need a "
                "store without such rows"
            )
        found = top_token_labels(
            codes, token_ids, tokenizer, features=sorted(set(features)), k=k, n=n
        )
        labels.update((f"{level}/{feature}", label) for feature, label in found.items())
    return labels
