"""Shared test set-up: every RNG seeded, slow and GPU tests skipped unless asked for."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch


def _import_triton_for_its_interpreter() -> None:
    """Without a GPU, the Triton kernels are tested in Triton's interpreter
    (tests/core/test_gram_update.py). Triton makes its language functions interpreted or
    compiled when it is first imported, and SAELens imports it while the test modules are
    collected, so Triton is imported here first, in the interpreter's mode; the variable is
    unset again, as saegeo reads it too."""
    if not importlib.util.find_spec("triton") or torch.cuda.is_available():
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("triton.language")
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


_import_triton_for_its_interpreter()

# SAELens is a test dependency (compatibility is checked against it); where it is missing, as
# on a GPU machine without it, the modules that build SAEs with it at import are left out.
collect_ignore = (
    []
    if importlib.util.find_spec("sae_lens")
    else [
        "helpers/saelens.py",
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
