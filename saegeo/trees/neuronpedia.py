"""Neuronpedia quick lists of the features of a tree."""

from __future__ import annotations

import networkx as nx

from saegeo.core.feature_info import NEURONPEDIA, quick_list_url
from saegeo.errors import SaegeoError


def tree_quick_list(T: nx.DiGraph, *, name: str = "saegeo tree") -> str:
    """A Neuronpedia quick-list URL of every node of ``T`` that has a Neuronpedia page.

    Nodes carry their page as attribute ``neuronpedia`` (set by :func:`saegeo.feature_dag` for
    SAEs published with Neuronpedia ids, and read back by :func:`saegeo.tree_from_json`).

    Examples
    --------
    >>> T = nx.DiGraph()
    >>> T.add_node((0, 3), neuronpedia="https://www.neuronpedia.org/gpt2-small/8-res_fs768-jb/3")
    >>> "8-res_fs768-jb" in tree_quick_list(T)
    True
    """
    features = []
    for node in sorted(T.nodes):
        url = T.nodes[node].get("neuronpedia")
        if not url or not str(url).startswith(NEURONPEDIA + "/"):
            continue
        np_id, _, feature = str(url)[len(NEURONPEDIA) + 1 :].rpartition("/")
        features.append((np_id, int(feature)))
    if not features:
        raise SaegeoError(
            "no feature of this tree has a Neuronpedia page (only SAEs loaded from a release "
            "with Neuronpedia ids have them)"
        )
    return quick_list_url(features, name=name)
