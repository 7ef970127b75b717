"""Shared test set-up: every RNG seeded, slow and GPU tests skipped unless asked for."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

# SAELens is a test dependency (compatibility is checked against it); where it is missing, as
# on a GPU machine without it, the modules that build SAEs with it at import are left out.
collect_ignore = (
    []
    if importlib.util.find_spec("sae_lens")
    else [
        "saelens_helpers.py",
        "core/test_normalization.py",
        "io/test_formats.py",
        "io/test_saelens.py",
    ]
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    # The suite's tensors are small: one thread spares every operation a hand-off to workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
