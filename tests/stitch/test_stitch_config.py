"""StitchConfig: checks that name the field, keywords that override it, the CLI built on it."""

from __future__ import annotations

import dataclasses
import inspect
from typing import get_args

import pytest
import torch
from test_frankenstein import CPU, toy_acts, toy_family

import saegeo as sg
from saegeo.cli import build_parser
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.stitch.config import RETRAINS, Retrain, StitchConfig
from saegeo.stitch.frankenstein import frankenstein, frankenstein_steps


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("retrain", "adam", "choose one of exact, sgd, none"),
        ("threshold", 1.5, "in [-1, 1]"),
        ("threshold", True, "in [-1, 1]"),
        ("upto", -1, ">= 0"),
        ("ridge", -1e-3, ">= 0"),
        ("sgd_tokens", 0, ">= 1"),
        ("sgd_lr", 0.0, "> 0"),
        ("batch_size", 0, ">= 1"),
        ("limit", 0, ">= 1"),
    ],
)
def test_bad_fields_name_themselves(field, value, problem):
    with pytest.raises(ArgumentError) as info:
        StitchConfig(**{field: value})
    assert str(info.value).startswith(f"StitchConfig.{field}={value!r}: ")
    assert problem in str(info.value)
    assert (info.value.name, info.value.value, info.value.owner) == (field, value, "StitchConfig")


def test_config_is_frozen_documented_and_exported():
    config = StitchConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threshold = 0.5  # type: ignore[misc]
    assert sg.StitchConfig is StitchConfig and get_args(Retrain) == RETRAINS
    source = inspect.getsource(StitchConfig)
    for field in dataclasses.fields(StitchConfig):
        # Every field is followed by its docstring.
        after = source.split(f"\n    {field.name}: ", 1)[1].split("\n", 2)[1]
        assert after.strip().startswith('"""'), field.name


def test_keywords_and_config_give_the_same_frankenstein():
    family, x = toy_family(), toy_acts(300)
    by_keywords, report_k = frankenstein(family, x, threshold=0.6, swap=True, **CPU)
    config = StitchConfig(threshold=0.6, swap=True, device="cpu", progress=False)
    by_config, report_c = frankenstein(family, x, config)
    torch.testing.assert_close(by_keywords.W_dec, by_config.W_dec)
    assert report_k.to_frame().equals(report_c.to_frame())
    # Keywords override the config's values.
    _, report = frankenstein(family, x, config, swap=False)
    assert report.swap is False and report.threshold == 0.6
    with pytest.raises(ArgumentError, match=r"^treshold=0\.6: not an argument; StitchConfig has"):
        frankenstein(family, x, treshold=0.6, **CPU)
    with pytest.raises(SaegeoError, match=r"StitchConfig\.retrain='adam'"):
        frankenstein(family, x, config, retrain="adam")


def test_steps_refuse_a_checkpoint(tmp_path):
    family, x = toy_family(), toy_acts(100)
    with pytest.raises(ArgumentError, match=r"^StitchConfig\.checkpoint="):
        frankenstein_steps(family, x, checkpoint=tmp_path / "c.pt", **CPU)


def test_cli_takes_its_choices_from_the_library():
    parser = build_parser()
    stitch = parser._subparsers._group_actions[0].choices["stitch"]  # type: ignore[union-attr]
    retrain = next(a for a in stitch._actions if "--retrain" in a.option_strings)
    assert tuple(retrain.choices) == RETRAINS


def test_cli_reports_a_bad_field_with_its_flag(tmp_path, capsys):
    from saegeo.cli import main

    for sae in toy_family():
        sg.save_sae(sae, tmp_path / "family" / sae.name)
    code = main(
        ["stitch", str(tmp_path / "family"), "--acts", "x.npy", "--out", "o", "--threshold", "3"]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        "saegeo stitch: error: --threshold 3.0: must be a cosine in [-1, 1]\n"
    )
