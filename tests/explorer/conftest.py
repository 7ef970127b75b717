"""The toy family, its activations and its facts, shared by the explorer's tests."""

from __future__ import annotations

import pytest
from helpers.explore import Words, toy_explore

from saegeo.explorer.facts import family_facts


@pytest.fixture(scope="session")
def toy():
    return toy_explore()


@pytest.fixture(scope="session")
def facts(toy):
    """The toy family's facts: 5 snippets per feature, words as text."""
    return family_facts(
        toy.family, toy.acts, tokenizer=Words(), token_ids=toy.token_ids, k=5, progress=False
    )
