"""HarvestConfig: checks that name the field, the CLI that builds it and shows flags."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.lm import random_texts, tiny_llama

import saegeo as sg
from saegeo.acts.store import DTYPES
from saegeo.cli import main
from saegeo.errors import ArgumentError
from saegeo.lm.config import MODEL_DTYPES, STORE_DTYPES, HarvestConfig

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"dtype": "int8"}, "dtype", "choose one of float16, bfloat16, float32"),
        ({"model_dtype": "fp8"}, "model_dtype", "choose one of auto, float16"),
        ({"layer": -1}, "layer", "block index >= 0"),
        ({"skip_first": -1}, "skip_first", "at least 0"),
        ({"context": 3, "skip_first": 2}, "context", "at least 4 (BOS, 2 skipped"),
        ({"batch_size": 0}, "batch_size", "at least 1"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"shard_tokens": 0}, "shard_tokens", "at least 1"),
    ],
)
def test_bad_fields_name_themselves(changes, field, problem):
    with pytest.raises(ArgumentError) as info:
        HarvestConfig(**changes)
    message = str(info.value)
    assert message.startswith(f"HarvestConfig.{field}={changes[field]!r}: ") and problem in message
    assert "--" not in message


def test_choices_and_export():
    assert set(STORE_DTYPES) == set(DTYPES) and ("auto", *STORE_DTYPES) == MODEL_DTYPES
    assert sg.HarvestConfig is HarvestConfig
    with pytest.raises(dataclasses.FrozenInstanceError):
        HarvestConfig().layer = 3  # type: ignore[misc]
    assert HarvestConfig(context=16, skip_first=0).tokens_per_context == 15


def test_harvest_takes_a_config_or_its_fields_as_keywords(tmp_path):
    from saegeo.lm.harvest import harvest

    model, tokenizer = tiny_llama()
    texts = random_texts()
    config = HarvestConfig(layer=1, context=16, max_tokens=40, dtype="float32", progress=False)
    by_config = harvest(model, texts, tmp_path / "a", config, tokenizer=tokenizer)
    by_keywords = harvest(
        model,
        texts,
        tmp_path / "b",
        tokenizer=tokenizer,
        layer=1,
        context=16,
        max_tokens=40,
        dtype="float32",
        progress=False,
    )
    assert by_config.n_tokens == by_keywords.n_tokens == 40
    torch.testing.assert_close(by_config.read(), by_keywords.read())
    with pytest.raises(ArgumentError, match=r"^max_token=40: not an argument; HarvestConfig"):
        harvest(model, texts, tmp_path / "c", tokenizer=tokenizer, max_token=40)
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ArgumentError, match=r"^out='.*file': is a file, but the output is a directory"
    ):
        harvest(model, texts, tmp_path / "file", config, tokenizer=tokenizer)
    # Resuming with other settings names the out argument, not a flag.
    with pytest.raises(ArgumentError, match=r"^out='.*a': existing store has context=16") as info:
        harvest(model, texts, tmp_path / "a", config, tokenizer=tokenizer, context=12)
    assert "--" not in str(info.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # Every range is HarvestConfig's, named by its flag.
        (["--tokens", "0"], "--tokens 0: must be at least 1"),
        (
            ["--context", "2"],
            "--context 2: must be at least 3 (BOS, 1 skipped tokens and one stored token)",
        ),
        (
            ["--context", "4", "--skip-first", "3"],
            "--context 4: must be at least 5 (BOS, 3 skipped tokens and one stored token)",
        ),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ],
)
def test_cli_shows_library_errors_with_flags(tmp_path, capsys, flags, message):
    assert main(["harvest", "--out", str(tmp_path / "acts"), *flags]) == 2
    assert capsys.readouterr().err == f"saegeo harvest: error: {message}\n"
    assert not (tmp_path / "acts").exists()


def test_cli_harvest_choices_come_from_the_library():
    from saegeo.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["harvest"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in sub._actions if a.choices is not None}
    assert tuple(choices["dtype"]) == STORE_DTYPES
    assert tuple(choices["model_dtype"]) == MODEL_DTYPES
