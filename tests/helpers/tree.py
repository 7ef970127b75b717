"""Small SAE families over a known feature hierarchy, shared by the tree, JSON and figure tests."""

from __future__ import annotations

from typing import NamedTuple

import networkx as nx
import torch

import saegeo as sg
from saegeo.training.toy import ToyConfig, ToyModel, make_toy_model


class ToyFamily(NamedTuple):
    family: sg.Family
    toy: ToyModel
    truth: set[tuple[tuple[int, int], tuple[int, int]]]
    """True edges ((level, latent), (level + 1, latent)) of the hierarchy."""
    feature_of: dict[tuple[int, int], int]
    """The true feature each latent stands for (unrelated latents are absent)."""


def synthetic_family(
    *,
    n_roots: int = 2,
    branching: int = 2,
    depth: int = 2,
    d: int = 32,
    noise: float = 0.0,
    n_unrelated: int = 1,
    absorb: float = 0.3,
    seed: int = 0,
) -> ToyFamily:
    """One decoder-only SAE per depth of a toy hierarchy, as wider SAEs learn it.

    Level ``l`` has one latent per true feature of depth ``l``, pointing along the sum of the
    feature and its ancestors (a child latent keeps its parent's direction: feature splitting);
    level-0 latents also absorb ``absorb`` times each of their children. Each level adds
    ``n_unrelated`` random latents; every row gets Gaussian ``noise`` (relative to unit rows)
    and rows are shuffled, so latent indices say nothing about the hierarchy.
    """
    toy = make_toy_model(
        ToyConfig(
            n_roots=n_roots,
            branching=branching,
            depth=depth,
            d=d,
            root_prob=0.1,
            child_prob=1.0 / branching,
            directions="orthogonal",
            seed=seed,
        )
    )
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    parent = toy.parent.tolist()
    depth_of = toy.depth.tolist()
    saes, feature_of = [], {}
    for level in range(depth + 1):
        rows, features = [], []
        for f in (i for i in range(toy.n_features) if depth_of[i] == level):
            direction, g = toy.directions[f].clone(), f
            while parent[g] >= 0:
                g = parent[g]
                direction += toy.directions[g]
            if level == 0 and depth > 0:
                kids = [c for c in range(toy.n_features) if parent[c] == f]
                direction += absorb * toy.directions[kids].sum(0)
            rows.append(direction / direction.norm())
            features.append(f)
        for _ in range(n_unrelated):
            rows.append(torch.randn(d, generator=generator))
            features.append(-1)
        W_dec = torch.stack(rows)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec = W_dec + noise * torch.randn(W_dec.shape, generator=generator) / d**0.5
        order = torch.randperm(W_dec.shape[0], generator=generator)
        W_dec = W_dec[order] / W_dec[order].norm(dim=1, keepdim=True)
        saes.append(
            sg.SAE.from_decoder(W_dec, max_iterations=depth + 2, metadata={"name": f"toy-L{level}"})
        )
        for j, i in enumerate(order.tolist()):
            if features[i] >= 0:
                feature_of[(level, j)] = features[i]
    latent_of = {f: node for node, f in feature_of.items()}
    truth = {(latent_of[p], latent_of[c]) for p, c in toy.tree.edges}
    return ToyFamily(sg.Family(saes), toy, truth, feature_of)


def scored_dag(
    edges: dict[tuple[tuple[int, int], tuple[int, int]], float], **graph: object
) -> nx.DiGraph:
    """A feature DAG written by hand, with the attributes :func:`saegeo.feature_dag` gives it:
    ``score`` on each edge, ``level`` and ``feature`` on each node, ``graph`` on the graph."""
    G = nx.DiGraph(**graph)
    for (parent, child), score in edges.items():
        G.add_edge(parent, child, score=score)
    for node in G:
        G.nodes[node].update(level=node[0], feature=node[1])
    return G


def tree_edges(trees: list[nx.DiGraph]) -> set[tuple[tuple[int, int], tuple[int, int]]]:
    """The union of the edges of several trees."""
    return {edge for T in trees for edge in T.edges}


def in_page(node_id: str, html: str) -> bool:
    """Whether a page's figure data holds a node id (plotly writes "/" as \\u002f)."""
    escaped = node_id.replace("/", "\\u002f")
    return f'"{node_id}"' in html or f'"{escaped}"' in html
