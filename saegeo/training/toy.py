"""Toy models with ground-truth feature hierarchies, to test what SAEs recover.

A toy model is a forest of features. A root fires on its own with its probability; a child fires
only when its parent fires, with its conditional probability, and, when siblings are mutually
exclusive, at most one child of a parent fires on a token (the Matryoshka toy model of the
Matryoshka SAE write-up). A firing feature takes a positive magnitude; a token's activation vector
is the sum of magnitude times direction over its firing features, plus optional Gaussian noise.
Directions are random unit vectors in ``d`` dimensions (near-orthogonal when ``d`` is large), or
exactly orthonormal.

Examples
--------
>>> toy = make_toy_model(ToyConfig(n_roots=2, branching=2, depth=1, d=16))
>>> toy.n_features, toy.directions.shape
(6, torch.Size([6, 16]))
>>> sorted(toy.tree.successors(0))
[2, 3]
>>> toy.sample(5).acts.shape
torch.Size([5, 16])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple, get_args

import networkx as nx
import numpy as np
import torch

from saegeo.acts.store import ActivationStore
from saegeo.config import check_choice, check_count
from saegeo.errors import ArgumentError, SaegeoError

Directions = Literal["random", "orthogonal"]


@dataclass(frozen=True)
class ToyConfig:
    """A regular feature forest: ``n_roots`` trees, each node with ``branching`` children."""

    n_roots: int = 8
    """Number of root features (trees)."""
    branching: int = 4
    """Children per non-leaf feature."""
    depth: int = 1
    """Levels of children below the roots; 0 gives independent features."""
    d: int = 64
    """Dimension of the embedding space (the SAE's d_in)."""
    root_prob: float = 0.05
    """Probability that a root fires on a token."""
    child_prob: float = 0.2
    """Probability that a child fires on a token where its parent fires."""
    exclusive: bool = True
    """At most one child of a parent fires per token (needs branching·child_prob <= 1)."""
    magnitude_mean: float = 1.0
    """Mean magnitude of a firing feature."""
    magnitude_std: float = 0.0
    """Standard deviation of the magnitude (log-normal, so magnitudes stay positive)."""
    noise_std: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to every coordinate."""
    directions: Directions = "random"
    """``random`` unit vectors, or ``orthogonal`` (orthonormal; needs n_features <= d)."""
    seed: int = 0
    """Seed of the directions and, combined with a sampler's own seed, of the samples."""

    def __post_init__(self) -> None:
        check_choice("directions", self.directions, get_args(Directions), owner="ToyConfig")
        for name in ("n_roots", "d"):
            check_count(name, getattr(self, name), owner="ToyConfig")
        if self.depth < 0 or (self.depth > 0 and self.branching < 1):
            raise SaegeoError(
                f"ToyConfig: need depth >= 0 and branching >= 1, got "
                f"depth={self.depth}, branching={self.branching}"
            )
        if self.exclusive and self.depth > 0 and self.branching * self.child_prob > 1 + 1e-9:
            raise SaegeoError(
                f"ToyConfig: exclusive children need branching*child_prob <= 1, got "
                f"{self.branching}*{self.child_prob}"
            )


class ToySample(NamedTuple):
    """Activations drawn from a toy model and the true codes that made them."""

    acts: torch.Tensor
    """Activation vectors [N, d]: codes @ directions + noise."""
    codes: torch.Tensor
    """True feature magnitudes [N, n_features]; zero where a feature does not fire."""


@dataclass(frozen=True, eq=False)
class ToyModel:
    """Ground truth of a hierarchical toy model and a sampler of its activations.

    Features are numbered breadth-first: roots first, then their children, and so on, so
    parents always come before their children.
    """

    directions: torch.Tensor
    """True feature directions [n_features, d], unit norm."""
    parent: torch.Tensor
    """Parent of each feature [n_features] (int64), -1 for roots."""
    prob: torch.Tensor
    """Firing probability [n_features]: unconditional for roots, given the parent otherwise."""
    magnitude_mean: torch.Tensor
    """Mean magnitude [n_features] of a firing feature."""
    magnitude_std: torch.Tensor
    """Standard deviation [n_features] of a firing feature's magnitude (log-normal)."""
    exclusive: bool
    """Whether at most one child of each parent fires per token."""
    noise_std: float
    """Standard deviation of the Gaussian noise added to each coordinate."""
    tree: nx.DiGraph
    """Edges parent -> child over feature ids; node attributes ``depth``, ``prob`` and
    ``marginal_prob``."""
    seed: int
    """Seed the directions came from; samplers mix it with their own seed."""

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_parents(
        cls,
        parent: Sequence[int] | torch.Tensor,
        prob: float | Sequence[float] | torch.Tensor,
        *,
        d: int,
        exclusive: bool = True,
        magnitude_mean: float | Sequence[float] | torch.Tensor = 1.0,
        magnitude_std: float | Sequence[float] | torch.Tensor = 0.0,
        noise_std: float = 0.0,
        directions: Directions = "random",
        seed: int = 0,
    ) -> ToyModel:
        """A toy model from a parent array (-1 for roots; parents before their children)."""
        parent_F = torch.as_tensor(parent, dtype=torch.long).reshape(-1)
        n = parent_F.numel()
        if n == 0:
            raise ArgumentError("parent", parent, "must list at least one feature")
        if bool((parent_F >= torch.arange(n)).any()) or bool((parent_F < -1).any()):
            raise ArgumentError(
                "parent", parent, "each entry must be -1 or the id of an earlier feature"
            )
        prob_F = _per_feature(prob, n, "prob")
        if bool((prob_F < 0).any()) or bool((prob_F > 1).any()):
            raise ArgumentError("prob", prob, "must lie in [0, 1]")
        mean_F = _per_feature(magnitude_mean, n, "magnitude_mean")
        std_F = _per_feature(magnitude_std, n, "magnitude_std")
        if bool((mean_F <= 0).any()):
            raise ArgumentError("magnitude_mean", magnitude_mean, "must be > 0")
        if bool((std_F < 0).any()):
            raise ArgumentError("magnitude_std", magnitude_std, "must be >= 0")
        if exclusive:
            child_mass = torch.zeros(n, dtype=torch.float64).index_add_(
                0, parent_F.clamp_min(0)[parent_F >= 0], prob_F[parent_F >= 0]
            )
            if bool((child_mass > 1 + 1e-9).any()):
                raise SaegeoError(
                    "ToyModel: exclusive children of a parent need probabilities summing to <= 1"
                )
        check_choice("directions", directions, get_args(Directions))
        generator = torch.Generator().manual_seed(seed)
        directions_FD = _directions(n, d, directions, generator)

        tree = nx.DiGraph(exclusive=exclusive)
        depth = [0] * n
        marginal = [0.0] * n
        for i in range(n):
            p = int(parent_F[i])
            depth[i] = 0 if p < 0 else depth[p] + 1
            marginal[i] = float(prob_F[i]) * (1.0 if p < 0 else marginal[p])
            tree.add_node(i, depth=depth[i], prob=float(prob_F[i]), marginal_prob=marginal[i])
            if p >= 0:
                tree.add_edge(p, i)
        return cls(
            directions=directions_FD,
            parent=parent_F,
            prob=prob_F.float(),
            magnitude_mean=mean_F.float(),
            magnitude_std=std_F.float(),
            exclusive=exclusive,
            noise_std=float(noise_std),
            tree=tree,
            seed=seed,
        )

    # ----------------------------------------------------------------- properties

    @property
    def n_features(self) -> int:
        return int(self.parent.numel())

    @property
    def d(self) -> int:
        return int(self.directions.shape[1])

    @property
    def depth(self) -> torch.Tensor:
        """Depth [n_features] of each feature (0 for roots)."""
        return torch.tensor([self.tree.nodes[i]["depth"] for i in range(self.n_features)])

    @property
    def marginal_prob(self) -> torch.Tensor:
        """Unconditional firing probability [n_features] of each feature."""
        return torch.tensor([self.tree.nodes[i]["marginal_prob"] for i in range(self.n_features)])

    def __repr__(self) -> str:
        return (
            f"ToyModel(n_features={self.n_features}, d={self.d}, "
            f"roots={int((self.parent < 0).sum())}, exclusive={self.exclusive})"
        )

    # ----------------------------------------------------------------- sampling

    def sample(self, n: int, *, seed: int = 0) -> ToySample:
        """``n`` tokens of activations and their true codes; the same ``seed`` gives the same."""
        return next(self.sampler(n, seed=seed))

    def sampler(self, batch_size: int, *, seed: int = 0) -> Iterator[ToySample]:
        """An endless stream of batches of ``batch_size`` tokens, deterministic given ``seed``."""
        check_count("batch_size", batch_size)
        mixed = int(np.random.SeedSequence([self.seed, seed]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(mixed)
        while True:
            yield self._draw(batch_size, generator)

    def to_store(self, n: int, *, seed: int = 0) -> ActivationStore:
        """``n`` sampled activation vectors as an in-memory ActivationStore."""
        return ActivationStore.from_tensor(self.sample(n, seed=seed).acts)

    def _draw(self, n: int, generator: torch.Generator) -> ToySample:
        fires_NF = self._fires(n, generator)
        codes_NF = fires_NF.float() * self._magnitudes(n, generator)
        acts_ND = codes_NF @ self.directions
        if self.noise_std > 0:
            acts_ND = acts_ND + self.noise_std * torch.randn(acts_ND.shape, generator=generator)
        return ToySample(acts=acts_ND, codes=codes_NF)

    def _fires(self, n: int, generator: torch.Generator) -> torch.Tensor:
        fires_NF = torch.zeros(n, self.n_features, dtype=torch.bool)
        depth_F = self.depth
        prob_F = self.prob.double()
        roots = (self.parent < 0).nonzero().squeeze(1)
        fires_NF[:, roots] = (
            torch.rand(n, roots.numel(), generator=generator, dtype=torch.float64) < prob_F[roots]
        )
        for level in range(1, int(depth_F.max()) + 1):
            children = (depth_F == level).nonzero().squeeze(1)
            parents = self.parent[children]
            parent_fires_NC = fires_NF[:, parents]
            if not self.exclusive:
                draw_NC = torch.rand(n, children.numel(), generator=generator, dtype=torch.float64)
                fires_NF[:, children] = parent_fires_NC & (draw_NC < prob_F[children])
                continue
            # One uniform draw per (token, parent) picks at most one child: child c owns the
            # interval [lo_c, hi_c) laid out along its siblings' cumulative probabilities.
            unique_parents, slot_C = torch.unique(parents, return_inverse=True)
            lo_C = _offsets_within_groups(prob_F[children], slot_C)
            hi_C = lo_C + prob_F[children]
            draw_NP = torch.rand(
                n, unique_parents.numel(), generator=generator, dtype=torch.float64
            )
            draw_NC = draw_NP[:, slot_C]
            fires_NF[:, children] = parent_fires_NC & (draw_NC >= lo_C) & (draw_NC < hi_C)
        return fires_NF

    def _magnitudes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # Log-normal with the requested mean and standard deviation.
        sigma2_F = torch.log1p((self.magnitude_std / self.magnitude_mean) ** 2)
        mu_F = self.magnitude_mean.log() - sigma2_F / 2
        normal_NF = torch.randn(n, self.n_features, generator=generator)
        return torch.exp(mu_F + sigma2_F.sqrt() * normal_NF)

    # ----------------------------------------------------------------- evaluation

    @torch.no_grad()
    def max_cos(self, W_dec: torch.Tensor) -> torch.Tensor:
        """For each true feature, its best cosine [n_features] with any row of W_dec [F, d]."""
        W_dec_FD = torch.as_tensor(W_dec).float()
        if W_dec_FD.ndim != 2 or W_dec_FD.shape[1] != self.d:
            raise SaegeoError(
                f"max_cos(): W_dec must be [width, {self.d}], got {tuple(W_dec_FD.shape)}"
            )
        unit_FD = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (self.directions @ unit_FD.T).max(dim=1).values


# The fields of ToyConfig that shape the regular forest; the others are the keyword arguments
# of ToyModel.from_parents, passed on as they are.
FOREST_FIELDS = ("n_roots", "branching", "depth", "root_prob", "child_prob")


def make_toy_model(config: ToyConfig | None = None) -> ToyModel:
    """A toy model whose hierarchy is the regular forest described by ``config``."""
    config = config or ToyConfig()
    parent: list[int] = [-1] * config.n_roots
    prob: list[float] = [config.root_prob] * config.n_roots
    level = list(range(config.n_roots))
    for _ in range(config.depth):
        next_level = []
        for p in level:
            for _ in range(config.branching):
                next_level.append(len(parent))
                parent.append(p)
                prob.append(config.child_prob)
        level = next_level
    options = {name: value for name, value in asdict(config).items() if name not in FOREST_FIELDS}
    return ToyModel.from_parents(parent, prob, **options)


def _per_feature(value: float | Sequence[float] | torch.Tensor, n: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64)
    if tensor.ndim == 0:
        return tensor.expand(n).clone()
    tensor = tensor.reshape(-1)
    if tensor.numel() != n:
        raise SaegeoError(f"ToyModel: {name} has {tensor.numel()} entries for {n} features")
    return tensor


def _offsets_within_groups(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Sum of the values before each entry within its group (an exclusive grouped cumsum)."""
    order = torch.argsort(group, stable=True)
    sorted_values = values[order]
    before = sorted_values.cumsum(0) - sorted_values
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    group_start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    offsets = torch.empty_like(values)
    offsets[order] = before - before[group_start]
    return offsets


def _directions(n: int, d: int, kind: Directions, generator: torch.Generator) -> torch.Tensor:
    gaussian_ND = torch.randn(n, d, generator=generator)
    if kind == "orthogonal":
        if n > d:
            raise SaegeoError(
                f"ToyModel: directions='orthogonal' needs n_features <= d, got "
                f"{n} features in d={d}"
            )
        q_DN, r_NN = torch.linalg.qr(gaussian_ND.T.double())
        # Fix the signs so that the result does not depend on the QR implementation.
        q_DN = q_DN * torch.sign(torch.diagonal(r_NN))
        return q_DN.T.float().contiguous()
    return gaussian_ND / gaussian_ND.norm(dim=1, keepdim=True).clamp_min(math.ulp(1.0))
