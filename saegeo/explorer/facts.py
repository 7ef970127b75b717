"""Everything the explorer shows about a family, computed once: the measures and the statistics.

:func:`family_facts` runs saegeo's own measures — :func:`saegeo.classify`,
:func:`saegeo.delta_mse`, :func:`saegeo.explained_share` (through
:func:`saegeo.effects.novelty.novelty_table`), :func:`saegeo.feature_dag` and
:func:`saegeo.swap_groups` — and one streaming pass of activation statistics
(:func:`saegeo.explorer.stats.family_stats`), and keeps them per member as tables indexed by
feature. Feature cards (:func:`saegeo.feature_card`), the Jupyter explorer and the offline
site all read from it, so a number means the same thing wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    StreamOptions,
    checked_store,
    stream_options,
    with_stream_options,
)
from saegeo.core.feature_info import neuronpedia_url
from saegeo.core.sae import SAE
from saegeo.effects.novelty import novelty_table
from saegeo.errors import SaegeoError
from saegeo.explorer.stats import MemberStats, family_stats
from saegeo.formats.family import Family, as_family
from saegeo.geometry.classify import swap_groups
from saegeo.lm.snippets import StoreTokens, snippet_windows
from saegeo.trees.dag import DEFAULT_THRESHOLDS, Metric, feature_dag, node_id, parse_node_id

LABEL_TOKENS = 3
"""Distinct top tokens in a feature's label."""


@dataclass(frozen=True)
class FamilyFacts:
    """The measures and activation statistics of every feature of a family (see the module)."""

    family: Family
    """The SAEs, narrowest first."""
    dag: nx.DiGraph
    """The feature DAG (:func:`saegeo.feature_dag`) by ``metric`` at ``threshold``."""
    features: list[pd.DataFrame]
    """Per level, indexed by feature: ``freq``, ``max_act``, ``mean_act`` (where it fires),
    ``n_parents``, ``n_children`` and, from level 1 on, ``max_cos``, ``nearest``, ``kind``
    (against the next narrower member) and, with activations, ``delta_mse`` and
    ``explained``; ``label`` (its top tokens) where the tokens are known."""
    swaps: list[pd.DataFrame]
    """Per adjacent pair (index ``level - 1`` of the wider member), :func:`saegeo.swap_groups`."""
    stats: list[MemberStats] | None
    """Activation statistics per level (None without activations)."""
    tokens: StoreTokens | None
    """Token ids (and documents, contexts) of the activations, where known."""
    tokenizer: Any
    """Anything with ``decode(ids) -> str``, or None."""
    novelty_threshold: float = 0.7
    """Novel iff ``max_cos <= novelty_threshold``."""
    _text: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def metric(self) -> str:
        return str(self.dag.graph["metric"])

    @property
    def threshold(self) -> float:
        return float(self.dag.graph["threshold"])

    def node(self, feature: str | tuple[int, int]) -> tuple[int, int]:
        """``(level, index)`` of a feature named ``"L/I"`` or ``(L, I)``, checked to exist."""
        level, index = parse_node_id(feature, name="feature")
        if level >= len(self.family) or index >= self.family.widths[level]:
            raise SaegeoError(
                f"feature {node_id((level, index))}: no such feature; the family's levels have "
                f"widths {self.family.widths} (level 0 is the narrowest)"
            )
        return level, index

    def token_text(self, ids: Sequence[int]) -> list[str]:
        """Each token id decoded alone (cached), for per-token shading."""
        if self.tokenizer is None:
            return [f"#{int(i)}" for i in ids]
        missing = {int(i) for i in ids} - self._text.keys()
        for i in sorted(missing):
            self._text[i] = self.tokenizer.decode([i])
        return [self._text[int(i)] for i in ids]

    def snippet_windows(self, level: int, index: int) -> list[dict[str, Any]]:
        """The feature's top snippets as positions: ``token``, ``activation``, ``positions``
        (of the tokens shown, an array), ``acts`` (the feature's activation on each) and
        ``centre`` (the activating token's place among them); strongest first."""
        if self.stats is None or self.tokens is None:
            return []
        stats = self.stats[level]
        kept = stats.top_rows[index] >= 0
        rows = stats.top_rows[index][kept]
        values, windows = stats.top_values[index][kept], stats.windows[index][kept]
        positions, shown = snippet_windows(
            rows,
            stats.window,
            self.tokens.token_ids.size,
            doc_ids=self.tokens.doc_ids,
            tokens_per_context=self.tokens.tokens_per_context,
        )
        return [
            {
                "token": int(rows[s]),
                "activation": float(values[s]),
                "positions": positions[s][shown[s]],
                "acts": windows[s][shown[s]],
                "centre": int(shown[s][: stats.window[0]].sum()),
            }
            for s in range(rows.size)
        ]

    def snippets(self, level: int, index: int) -> list[dict[str, Any]]:
        """The feature's top snippets, strongest first: ``token`` (position), ``activation``,
        ``doc_id``, ``context``, ``tokens`` (decoded one by one), ``acts`` (the feature's
        activation on each) and ``centre`` (the activating token's place in them)."""
        if self.tokens is None:
            return []
        doc_ids, per_context = self.tokens.doc_ids, self.tokens.tokens_per_context
        return [
            {
                "token": s["token"],
                "activation": s["activation"],
                "doc_id": -1 if doc_ids is None else int(doc_ids[s["token"]]),
                "context": -1 if not per_context else s["token"] // per_context,
                "tokens": self.token_text(self.tokens.token_ids[s["positions"]].tolist()),
                "acts": [float(a) for a in s["acts"]],
                "centre": s["centre"],
            }
            for s in self.snippet_windows(level, index)
        ]

    def label(self, level: int, index: int) -> str:
        """The feature's label: its distinct top tokens, strongest first (``""`` if unknown)."""
        return top_tokens_label(
            [s["tokens"][s["centre"]] for s in self.snippets(level, index)], n=LABEL_TOKENS
        )


def top_tokens_label(tokens: Sequence[str], *, n: int = LABEL_TOKENS) -> str:
    """The first ``n`` distinct tokens of ``tokens`` (strongest first), trimmed, joined by ``·``.

    >>> top_tokens_label([" the", "The", " the", "\\n", " a"], n=3)
    'the · The · ⏎'
    """
    seen: list[str] = []
    for token in tokens:
        text = token.strip() or token.replace("\n", "⏎").replace(" ", "␣")
        if text and text not in seen:
            seen.append(text)
        if len(seen) == n:
            break
    return " · ".join(seen)


@with_stream_options
def family_facts(
    family: Family | Sequence[SAE],
    acts: ActsLike | None = None,
    *,
    metric: Metric = "decoder_cosine",
    threshold: float | None = None,
    novelty_threshold: float = 0.7,
    k: int = 10,
    window: tuple[int, int] = (8, 4),
    tokenizer: Any = None,
    token_ids: np.ndarray | None = None,
    with_effects: bool = True,
    **options: Unpack[StreamOptions],
) -> FamilyFacts:
    """Measure every feature of ``family`` for the feature cards and the explorer.

    Parameters
    ----------
    family
        SAEs of one model site.
    acts
        Activations [N, d_in] (store, tensor or path): needed for frequencies, snippets,
        ``delta_mse`` and ``explained``. A store written by ``saegeo harvest`` also gives the
        token ids and the tokenizer that make snippets readable.
    metric, threshold
        The parent/child score and its edge threshold (:func:`saegeo.feature_dag`; None takes
        the metric's default).
    novelty_threshold
        Novel iff the largest decoder cosine to the next narrower member is ``<=`` this
        (:func:`saegeo.classify`; also the swap groups' threshold).
    k, window
        Snippets per feature and the tokens ``(before, after)`` shown around each.
    tokenizer, token_ids
        Override the store's tokenizer (anything with ``decode(ids)``) and token ids [N].
    with_effects
        Compute ``delta_mse`` and ``explained`` (one pass over the activations per pair).
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`); ``limit`` caps the
        tokens every measure reads.
    """
    fam = as_family(family)
    store = None if acts is None else checked_store(acts, fam[0], what="family_facts()")
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[metric]
    settings = stream_options(options)
    G = feature_dag(
        fam,
        metric=metric,
        threshold=threshold,
        acts=store if metric != "decoder_cosine" else None,
        **settings,
    )
    stats = None if store is None else family_stats(fam, store, k=k, window=window, **settings)
    tokens, tokenizer = _tokens(store, tokenizer, token_ids, settings["limit"])
    features, swaps = [], []
    for level, sae in enumerate(fam):
        table = pd.DataFrame(index=pd.RangeIndex(sae.width, name="feature"))
        if stats is not None:
            table["freq"] = stats[level].freq
            table["max_act"] = stats[level].max_act
            table["mean_act"] = stats[level].mean_act
        table["n_parents"] = [G.in_degree((level, j)) for j in range(sae.width)]
        table["n_children"] = [G.out_degree((level, j)) for j in range(sae.width)]
        if level > 0:
            small = fam[level - 1]
            novelty = novelty_table(
                small,
                sae,
                store if with_effects else None,
                threshold=novelty_threshold,
                **settings,
            )
            table = table.join(novelty.drop(columns=["neuronpedia"], errors="ignore"))
            swaps.append(
                swap_groups(
                    small,
                    sae,
                    threshold=novelty_threshold,
                    device=settings["device"],
                    progress=settings["progress"],
                )
            )
        if neuronpedia_url(sae, 0) is not None:
            table["neuronpedia"] = [neuronpedia_url(sae, j) for j in range(sae.width)]
        features.append(table)
    facts = FamilyFacts(
        family=fam,
        dag=G,
        features=features,
        swaps=swaps,
        stats=stats,
        tokens=tokens,
        tokenizer=tokenizer,
        novelty_threshold=float(novelty_threshold),
    )
    if tokens is not None:
        for level, table in enumerate(features):
            table["label"] = [facts.label(level, j) for j in range(len(table))]
    return facts


def _tokens(
    store: Any, tokenizer: Any, token_ids: np.ndarray | None, limit: int | None
) -> tuple[StoreTokens | None, Any]:
    """The tokens of ``store`` (or ``token_ids``) and a tokenizer, where both are known."""
    if store is None:
        return None, None
    if token_ids is not None:
        tokens = StoreTokens(np.asarray(token_ids, dtype=np.int64).reshape(-1), None, None)
    else:
        ids = store.token_ids()
        if ids is None:
            return None, None
        from saegeo.lm.snippets import store_tokens

        tokens = store_tokens(store)
    if tokenizer is None:
        if "tokenizer" not in store.meta:
            return None, None  # token ids without a tokenizer: no text to show
        from saegeo.lm.harvest import load_tokenizer

        tokenizer = load_tokenizer(store)
    n = tokens.token_ids.size if limit is None else min(int(limit), tokens.token_ids.size)
    if n < tokens.token_ids.size:
        doc_ids = None if tokens.doc_ids is None else tokens.doc_ids[:n]
        tokens = StoreTokens(tokens.token_ids[:n], doc_ids, tokens.tokens_per_context)
    return tokens, tokenizer


PASSED_OPTIONS = ("metric", "threshold", "novelty_threshold", "k")
"""The options of :func:`family_facts` that :func:`saegeo.feature_card` and
:func:`saegeo.explore` take and pass on, with the stream options (``**options``)."""


def as_facts(
    family: Family | Sequence[SAE] | FamilyFacts, acts: ActsLike | None, **options: Any
) -> FamilyFacts:
    """``family`` itself when it is already a :class:`FamilyFacts`, else
    :func:`family_facts` of it on ``acts`` with ``options``."""
    return family if isinstance(family, FamilyFacts) else family_facts(family, acts, **options)
