"""Flags made from the library's declarations: one declaration per option."""

from __future__ import annotations

import argparse

import pytest

from saegeo.cli.options import _parameter_docs, options_of
from saegeo.cli.parser import build_parser
from saegeo.lm.config import HarvestConfig
from saegeo.stitch.config import StitchConfig
from saegeo.training.config import TrainConfig

DEVIATIONS = {("tree", "min_size"): 2, ("harvest", "context"): None}
"""Flags whose default the command line sets apart from the library's, on purpose."""


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_default_equals_its_declaration():
    checked = 0
    for command, parser in _subcommands().items():
        for action in parser._actions:
            owner = getattr(action, "owner", None)
            if owner is None:
                continue
            declared = options_of(owner)[action.dest].default
            expected = DEVIATIONS.get((command, action.dest), declared)
            default = action.default if action.default is not False else False
            assert default == expected, (command, action.dest, default, declared)
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("config", [StitchConfig, TrainConfig, HarvestConfig])
def test_every_config_field_has_help(config):
    for option in options_of(config).values():
        assert option.help, f"{config.__name__}.{option.name} has no docstring"


def test_options_read_types_choices_and_docs():
    train = options_of(TrainConfig)
    assert train["k"].kind == "int" and train["k"].default == 32
    assert train["lr"].kind == "float"
    assert train["matryoshka_widths"].kind == "ints" and train["matryoshka_widths"].optional
    assert train["arch"].choices is not None and "batchtopk" in train["arch"].choices
    assert options_of(StitchConfig)["checkpoint"].kind == "path"
    assert options_of(HarvestConfig)["device"].kind == "device"


def test_numpydoc_parameters_are_read_per_name():
    def f(x: int, *, a: int = 1, b: str = "x", c: float = 0.5) -> None:
        """Do it.

        Parameters
        ----------
        x
            The input, positional: not an option.
        a
            The first.
        b, c
            Both of
            these.

        Returns
        -------
        None
        """

    assert _parameter_docs(f)["b"] == _parameter_docs(f)["c"] == "Both of these."
    options = options_of(f)
    assert set(options) == {"a", "b", "c"}
    assert options["b"].help == "Both of these." and options["c"].kind == "float"


def test_a_bad_value_names_its_flag(tmp_path, capsys):
    from saegeo.cli import main

    code = main(["train", "--acts", "a.npy", "--widths", "8", "--out", "o", "--k", "0"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "saegeo train: error: --k 0: must be >= 1"
