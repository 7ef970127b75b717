"""Toy hierarchies: the sampled statistics match the parameters they were built from."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from saegeo.errors import SaegeoError
from saegeo.training.toy import ToyConfig, ToyModel, make_toy_model

N_TOKENS = 200_000


def _binomial_tolerance(
    p: torch.Tensor, n: int | torch.Tensor, sigmas: float = 5.0
) -> torch.Tensor:
    return sigmas * torch.sqrt(p * (1 - p) / n) + 1e-9


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    return make_toy_model(
        ToyConfig(
            n_roots=4,
            branching=3,
            depth=2,
            d=32,
            root_prob=0.3,
            child_prob=0.3,
            magnitude_mean=2.0,
            magnitude_std=0.5,
        )
    )


@pytest.fixture(scope="module")
def codes(toy: ToyModel) -> torch.Tensor:
    return toy.sample(N_TOKENS, seed=3).codes


def test_structure_and_tree(toy: ToyModel) -> None:
    assert toy.n_features == 4 + 12 + 36
    assert nx.is_forest(toy.tree) and nx.is_directed_acyclic_graph(toy.tree)
    assert sorted(toy.tree.nodes) == list(range(toy.n_features))
    for child, parent in enumerate(toy.parent.tolist()):
        if parent < 0:
            assert toy.tree.in_degree(child) == 0
        else:
            assert list(toy.tree.predecessors(child)) == [parent]
    assert toy.depth.tolist() == [0] * 4 + [1] * 12 + [2] * 36
    assert sorted(toy.tree.successors(0)) == [4, 5, 6]
    # marginal = product of conditional probabilities along the path
    torch.testing.assert_close(toy.marginal_prob[20], torch.tensor(0.3**3))


def test_directions_unit_norm(toy: ToyModel) -> None:
    torch.testing.assert_close(toy.directions.norm(dim=1), torch.ones(toy.n_features))
    ortho = make_toy_model(
        ToyConfig(n_roots=4, branching=3, depth=1, d=32, directions="orthogonal")
    )
    torch.testing.assert_close(
        ortho.directions @ ortho.directions.T, torch.eye(16), atol=1e-5, rtol=0
    )
    wide = make_toy_model(ToyConfig(n_roots=64, depth=0, d=1024))
    cos_FF = wide.directions @ wide.directions.T - torch.eye(64)
    assert float(cos_FF.abs().max()) < 0.2  # near-orthogonal in high dimension


def test_firing_frequencies_match_parameters(toy: ToyModel, codes: torch.Tensor) -> None:
    fires = codes > 0
    freq = fires.double().mean(0)
    expected = toy.marginal_prob.double()
    assert bool(((freq - expected).abs() <= _binomial_tolerance(expected, N_TOKENS)).all())
    # conditional probability of each child given its parent
    children = (toy.parent >= 0).nonzero().squeeze(1)
    parent_count = fires[:, toy.parent[children]].sum(0).double()
    conditional = (fires[:, children] & fires[:, toy.parent[children]]).sum(0) / parent_count
    tolerance = _binomial_tolerance(torch.full_like(conditional, 0.3), parent_count)
    assert bool(((conditional - 0.3).abs() <= tolerance).all())


def test_children_never_fire_without_parent(toy: ToyModel, codes: torch.Tensor) -> None:
    fires = codes > 0
    children = (toy.parent >= 0).nonzero().squeeze(1)
    assert not bool((fires[:, children] & ~fires[:, toy.parent[children]]).any())


def test_siblings_exclusive(toy: ToyModel, codes: torch.Tensor) -> None:
    fires = codes > 0
    for parent in range(toy.n_features):
        kids = list(toy.tree.successors(parent))
        if kids:
            assert int(fires[:, kids].sum(1).max()) <= 1


def test_siblings_independent_when_not_exclusive() -> None:
    toy = make_toy_model(
        ToyConfig(
            n_roots=1, branching=2, depth=1, d=8, root_prob=0.5, child_prob=0.4, exclusive=False
        )
    )
    fires = toy.sample(N_TOKENS).codes > 0
    both = (fires[:, 1] & fires[:, 2]).double().mean()
    expected = torch.tensor(0.5 * 0.4 * 0.4, dtype=torch.float64)
    assert abs(float(both - expected)) <= float(_binomial_tolerance(expected, N_TOKENS))


def test_magnitudes_match_parameters(codes: torch.Tensor) -> None:
    active = codes[codes > 0].double()
    assert abs(float(active.mean()) - 2.0) < 0.01
    assert abs(float(active.std()) - 0.5) < 0.01
    assert float(active.min()) > 0


def test_acts_are_codes_times_directions(toy: ToyModel) -> None:
    sample = toy.sample(1000)
    torch.testing.assert_close(sample.acts, sample.codes @ toy.directions)
    noisy = make_toy_model(ToyConfig(d=64, noise_std=0.1))
    noisy_sample = noisy.sample(20_000)
    residual = noisy_sample.acts - noisy_sample.codes @ noisy.directions
    assert abs(float(residual.std()) - 0.1) < 0.005


def test_deterministic_given_seed() -> None:
    config = ToyConfig(n_roots=3, branching=2, depth=2, d=16, magnitude_std=0.3, noise_std=0.05)
    a, b = make_toy_model(config), make_toy_model(config)
    torch.testing.assert_close(a.directions, b.directions)
    torch.testing.assert_close(a.sample(500, seed=7).acts, b.sample(500, seed=7).acts)
    assert not torch.equal(a.sample(500, seed=7).acts, a.sample(500, seed=8).acts)
    other = make_toy_model(ToyConfig(n_roots=3, branching=2, depth=2, d=16, seed=1))
    assert not torch.equal(a.directions, other.directions)
    stream = a.sampler(100, seed=7)
    first, second = next(stream), next(stream)
    assert not torch.equal(first.acts, second.acts)
    assert torch.equal(a.to_store(100, seed=7).read(), first.acts)


def test_irregular_hierarchy_from_parents() -> None:
    # children of feature 0 are not contiguous and have different probabilities
    toy = ToyModel.from_parents([-1, -1, 0, 1, 0, 0], [0.5, 0.2, 0.1, 0.9, 0.6, 0.3], d=8)
    fires = toy.sample(N_TOKENS).codes > 0
    expected = torch.tensor([0.5, 0.2, 0.05, 0.18, 0.3, 0.15], dtype=torch.float64)
    freq = fires.double().mean(0)
    assert bool(((freq - expected).abs() <= _binomial_tolerance(expected, N_TOKENS)).all())
    assert int(fires[:, [2, 4, 5]].sum(1).max()) <= 1


def test_max_cos_finds_planted_directions(toy: ToyModel) -> None:
    W_dec = torch.cat([toy.directions[:10] * 3.0, torch.randn(5, toy.d)])
    best = toy.max_cos(W_dec)
    torch.testing.assert_close(best[:10], torch.ones(10))
    assert float(best[10:].max()) < 0.99


@pytest.mark.parametrize(
    "kwargs",
    [
        {"branching": 4, "child_prob": 0.3},  # exclusive children summing past 1
        {"directions": "orthogonal", "n_roots": 40, "d": 8},
        {"directions": "sphere"},
        {"n_roots": 0},
    ],
)
def test_bad_configs_raise(kwargs: dict) -> None:
    with pytest.raises(SaegeoError):
        make_toy_model(ToyConfig(**kwargs))


def test_bad_parent_arrays_raise() -> None:
    with pytest.raises(SaegeoError, match="parent"):
        ToyModel.from_parents([-1, 2, 0], 0.5, d=4)
    with pytest.raises(SaegeoError, match="prob"):
        ToyModel.from_parents([-1, 0], [0.5], d=4)
