"""One feature seen across its family: the feature card.

A :class:`FeatureCard` holds everything saegeo knows about one feature ``"LEVEL/INDEX"``: where
it sits (width, level), whether it is novel against the next narrower member (largest decoder
cosine, nearest feature, ``delta_mse`` and explained share), how it fires (frequency, largest
and mean activation, a histogram), its top snippets with the activation on every token, its
ancestors down to the narrowest member and its descendants up to the widest by the chosen
parent/child score, its swap group, its Neuronpedia page and a label (its top tokens).

Every number is read from :class:`saegeo.explorer.facts.FamilyFacts`, which computes it with
saegeo's own measures (:func:`saegeo.classify`, :func:`saegeo.delta_mse`,
:func:`saegeo.explained_share`, :func:`saegeo.feature_dag`, :func:`saegeo.swap_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, StreamOptions, with_stream_options
from saegeo.core.sae import SAE
from saegeo.explorer.facts import PASSED_OPTIONS, FamilyFacts, as_facts
from saegeo.explorer.stats import HIST_EDGES
from saegeo.formats.family import Family
from saegeo.runtime.atomic import finite_or_null
from saegeo.trees.dag import Metric, feature_tree, node_id

CARD_SCHEMA = "saegeo.feature_card.v1"


@dataclass(frozen=True)
class FeatureCard:
    """Everything about one feature of a family (see the module docstring).

    Floats that are not known (no activations, the narrowest member has no kind) are None.
    """

    id: str
    """``"LEVEL/INDEX"``."""
    level: int
    feature: int
    width: int
    """Width of the feature's SAE."""
    source: str
    """Name of the feature's SAE."""
    label: str
    """Its top tokens (``""`` without token ids)."""
    kind: str | None
    """``"novel"`` or ``"reconstruction"`` against the next narrower member (None at level 0)."""
    max_cos: float | None
    """Largest decoder cosine to the next narrower member."""
    nearest: str | None
    """The narrower feature reaching it (``"LEVEL/INDEX"``)."""
    delta_mse: float | None
    """Change in the narrower SAE's MSE when this feature is added to it."""
    explained: float | None
    """Share of its contribution the narrower SAE's reconstruction already holds."""
    residual: float | None
    """Share of its unit decoder row outside the span of the nearest narrower rows (the novelty
    score that needs no activations, :func:`saegeo.geometry.residual.decoder_residual`)."""
    freq: float | None
    """Fraction of tokens where it fires."""
    max_act: float | None
    mean_act: float | None
    """Mean activation where it fires."""
    histogram: dict[str, list[float]]
    """``edges`` (log-spaced, :data:`saegeo.explorer.stats.HIST_EDGES`, trimmed to the bins it
    fills) and ``counts`` of its non-zero activations."""
    snippets: list[dict[str, Any]]
    """Top snippets, strongest first (:meth:`FamilyFacts.snippets`)."""
    parents: list[dict[str, Any]]
    """Features one level narrower with an edge to it: ``id``, ``score``, ``label``."""
    children: list[dict[str, Any]]
    """Features one level wider with an edge from it: ``id``, ``score``, ``label``."""
    ancestors: list[dict[str, Any]]
    """Edges of the DAG above it, down to the narrowest member: ``id`` (the narrower
    feature), ``child`` and ``score``, nearest level first."""
    descendants: list[dict[str, Any]]
    """Its tree (:func:`saegeo.feature_tree`) to the widest member: ``id``, ``parent``
    (the kept one) and ``score``, level by level."""
    swap_groups: list[dict[str, Any]]
    """The swap groups it belongs to, with the narrower and with the wider member:
    ``pair`` (the two levels), ``small``, ``large`` (feature ids) and ``max_cos``."""
    neuronpedia: str | None
    """Its Neuronpedia page, where its SAE was published with one."""
    metric: str
    """The parent/child score."""
    threshold: float
    """Its edge threshold."""
    novelty_threshold: float
    """Novel iff ``max_cos <=`` this."""

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON types (no NaN: unknown values are None)."""
        return finite_or_null({"schema": CARD_SCHEMA, **asdict(self)})

    def _repr_html_(self) -> str:
        from saegeo.explorer.card_html import card_html

        return card_html(self.to_dict())


@with_stream_options
def feature_card(
    family: Family | Sequence[SAE] | FamilyFacts,
    feature: str | tuple[int, int],
    *,
    acts: ActsLike | None = None,
    metric: Metric = "decoder_cosine",
    threshold: float | None = None,
    novelty_threshold: float = 0.7,
    k: int = 10,
    **options: Unpack[StreamOptions],
) -> FeatureCard:
    """The card of one feature of a family.

    Parameters
    ----------
    family
        The family, or its :class:`~saegeo.explorer.facts.FamilyFacts` (computed once with
        :func:`saegeo.explorer.facts.family_facts`, then every card is immediate).
    feature
        ``"LEVEL/INDEX"`` or ``(level, index)``; level 0 is the narrowest member.
    acts
        Activations [N, d_in] (a store from ``saegeo harvest`` gives readable snippets).
    metric, threshold
        Parent/child score and edge threshold (:func:`saegeo.feature_dag`).
    novelty_threshold
        Novel iff the largest decoder cosine is ``<=`` this (:func:`saegeo.classify`).
    k
        Snippets per feature.
    **options
        ``batch_size``, ``limit``, ``device``, ``progress``: how ``acts`` is read and where
        the work runs (:class:`~saegeo.acts.streaming.StreamOptions`).

    Examples
    --------
    >>> import saegeo as sg
    >>> card = sg.feature_card(fam, "2/700", acts=store)  # doctest: +SKIP
    >>> card.kind, card.delta_mse, card.label  # doctest: +SKIP
    """
    values = locals()
    facts = as_facts(family, acts, **{name: values[name] for name in PASSED_OPTIONS}, **options)
    return card_from_facts(facts, feature)


def card_from_facts(facts: FamilyFacts, feature: str | tuple[int, int]) -> FeatureCard:
    """The card of ``feature`` read from ``facts``."""
    level, index = facts.node(feature)
    sae = facts.family[level]
    row = facts.features[level].loc[index]
    G = facts.dag

    def value(key: str) -> float | None:
        return float(row[key]) if key in row.index and row[key] is not None else None

    def label(node: tuple[int, int]) -> str:
        table = facts.features[node[0]]
        return str(table.at[node[1], "label"]) if "label" in table.columns else ""

    def edge(node: tuple[int, int], score: float, **extra: Any) -> dict[str, Any]:
        return {"id": node_id(node), "score": float(score), "label": label(node), **extra}

    me = (level, index)
    parents = sorted(
        (edge(p, G.edges[p, me]["score"]) for p in G.predecessors(me)), key=lambda e: -e["score"]
    )
    children = sorted(
        (edge(c, G.edges[me, c]["score"]) for c in G.successors(me)), key=lambda e: -e["score"]
    )
    above = nx.ancestors(G, me) | {me}
    ancestors = [
        edge(p, data["score"], child=node_id(c))
        for p, c, data in G.in_edges(above, data=True)
        if p in above
    ]
    ancestors.sort(key=lambda e: (-int(e["id"].split("/")[0]), -e["score"]))
    T = feature_tree(G, me)
    descendants = [
        edge(n, T.nodes[n]["score"], parent=node_id(next(iter(T.predecessors(n)))))
        for n in sorted(T.nodes - {me})
    ]
    stats = facts.stats[level] if facts.stats is not None else None
    return FeatureCard(
        id=node_id(me),
        level=level,
        feature=index,
        width=sae.width,
        source=sae.name,
        label=label(me),
        kind=str(row["kind"]) if "kind" in row.index else None,
        max_cos=value("max_cos"),
        nearest=node_id((level - 1, int(row["nearest"]))) if "nearest" in row.index else None,
        delta_mse=value("delta_mse"),
        explained=value("explained"),
        residual=value("residual"),
        freq=value("freq"),
        max_act=value("max_act"),
        mean_act=value("mean_act"),
        histogram=_histogram(None if stats is None else stats.hist[index]),
        snippets=facts.snippets(level, index),
        parents=parents,
        children=children,
        ancestors=ancestors,
        descendants=descendants,
        swap_groups=_swap_groups(facts, level, index),
        neuronpedia=str(row["neuronpedia"]) if "neuronpedia" in row.index else None,
        metric=facts.metric,
        threshold=facts.threshold,
        novelty_threshold=facts.novelty_threshold,
    )


def _histogram(counts_H: np.ndarray | None) -> dict[str, list[float]]:
    """Edges and counts of the bins from the first to the last one filled."""
    if counts_H is None or not counts_H.any():
        return {"edges": [], "counts": []}
    filled = np.flatnonzero(counts_H)
    lo, hi = int(filled[0]), int(filled[-1]) + 1
    return {
        "edges": [float(e) for e in HIST_EDGES[lo : hi + 1]],
        "counts": [int(c) for c in counts_H[lo:hi]],
    }


def _swap_groups(facts: FamilyFacts, level: int, index: int) -> list[dict[str, Any]]:
    """The swap groups holding the feature: as the wider member's (pair level - 1, level) and
    as the narrower member's (pair level, level + 1)."""
    out = []
    for pair, side in ((level - 1, "large"), (level, "small")):
        if not 0 <= pair < len(facts.swaps):
            continue
        groups = facts.swaps[pair]
        for _, group in groups.iterrows():
            if index in group[side]:
                out.append(
                    {
                        "pair": [pair, pair + 1],
                        "small": [node_id((pair, i)) for i in group["small"]],
                        "large": [node_id((pair + 1, j)) for j in group["large"]],
                        "max_cos": float(group["max_cos"]),
                    }
                )
                break
    return out
