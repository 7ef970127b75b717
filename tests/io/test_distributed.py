"""Statistics over 2 and 3 gloo ranks on the CPU equal the single-process ones; the command
line under torchrun's variables writes on rank 0 only and stops every rank on one error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from distributed_helpers import run_ranks, statistics

from saegeo.io import distributed


def test_without_a_process_group_everything_is_the_single_process_case():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(7) == (0, 7)
    t = torch.arange(3.0)
    assert distributed.all_reduce_(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert distributed.all_reduce_sums(2, 3.5) == (2.0, 3.5)
    assert distributed.agree_on_error("boom") == "boom"
    assert distributed.agree_on_error(None) is None


@pytest.mark.parametrize("n", [0, 1, 5, 203])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_spans_are_contiguous_disjoint_and_cover_the_tokens(n, parts):
    spans = [distributed.span(n, p, parts) for p in range(parts)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    sizes = [stop - start for start, stop in spans]
    assert max(sizes) - min(sizes) <= 1


def _same(name, got, want):
    if isinstance(want, tuple):
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(f"{name}[{i}]", g, w)
    elif isinstance(want, list):
        assert got == want, name
    else:
        np.testing.assert_allclose(
            np.asarray(got, dtype=np.float64),
            np.asarray(want, dtype=np.float64),
            rtol=1e-9 if np.asarray(want).dtype == np.float64 else 1e-5,
            atol=1e-9 if np.asarray(want).dtype == np.float64 else 1e-6,
            err_msg=name,
        )


@pytest.fixture(scope="module")
def single():
    return statistics()


@pytest.mark.parametrize("world", [2, 3])
def test_every_statistic_over_ranks_equals_the_single_process_one(world, single, tmp_path):
    results = run_ranks(statistics, world, tmp_path)
    assert len(results) == world
    for rank, result in enumerate(results):
        assert result.keys() == single.keys()
        for name, want in single.items():
            _same(f"rank {rank} {name}", result[name], want)


def test_the_single_process_statistics_are_not_trivial(single):
    # Otherwise the comparison above could pass on empty or all-zero results.
    assert single["mcs"].any() and single["cosine_pairs"].any() and single["dag_edges"]
    assert (single["delta"] != 0).any() and (single["delta_pursuit"] != 0).any()
    assert single["stats"][4] == 203 and single["metrics"][2] > 0
