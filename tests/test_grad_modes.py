"""Every public entry point that takes SAEs or activations works under ``torch.inference_mode()``
and ``torch.no_grad()``, for every architecture, with activations made in that mode."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg

ARCHS = ["relu", "jumprelu", "topk", "matching_pursuit"]
MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}
# The training architecture whose saved SAE has each architecture.
TRAIN_ARCHS = {"jumprelu": "batchtopk"}

# Public functions that take neither SAEs nor activations (trees, JSON, files, toy models).
OTHERS = {
    "feature_tree",
    "forest",
    "load_pretrained",
    "load_sae",
    "make_toy_model",
    "save_sae",
    "tree_from_json",
    "tree_to_json",
}


def pair(arch: str) -> tuple[sg.SAE, sg.SAE]:
    return (
        random_sae(8, arch, seed=1).to(dtype=torch.float32),
        random_sae(16, arch, seed=2).to(dtype=torch.float32),
    )


def calls(arch: str) -> dict[str, Callable[[sg.SAE, sg.SAE, torch.Tensor], Any]]:
    """One call of each public entry point on a small pair and activations [N, 16]."""
    train = sg.TrainConfig(
        arch=TRAIN_ARCHS.get(arch, arch), width=8, k=2, tokens=400, batch_size=100, progress=False
    )

    def codes(sae: sg.SAE, x: torch.Tensor) -> Any:
        return sg.encode_codes(sae, x, progress=False)

    def additive(sae: sg.SAE, x: torch.Tensor) -> sg.SAE:
        return sae.to_jumprelu(x) if arch == "topk" else sae

    def means(sae: sg.SAE, x: torch.Tensor) -> Any:
        from saegeo.geometry.cofiring import input_means

        return input_means(codes(sae, x), x)

    return {
        "encode": lambda s, l, x: s.encode(x),
        "forward": lambda s, l, x: s(x),
        "to_additive": lambda s, l, x: s.to_additive(x),
        "classify": lambda s, l, x: sg.classify(s, l, progress=False),
        "cofiring": lambda s, l, x: sg.cofiring(codes(s, x), codes(l, x)),
        "compare_frankensteins": lambda s, l, x: sg.compare_frankensteins(
            [s, l], sg.frankenstein_steps([s, l], x, progress=False), x, progress=False
        ),
        "concat": lambda s, l, x: sg.concat([additive(s, x), additive(l, x)]),
        "containment": lambda s, l, x: sg.containment(
            codes(s, x), codes(l, x), s.W_dec, means(s, x), means(l, x)
        ),
        "decoder_cosine": lambda s, l, x: sg.decoder_cosine(s, l, progress=False),
        "decoder_cosine_pairs": lambda s, l, x: sg.decoder_cosine_pairs(s, l, threshold=0.5),
        "delta_mse": lambda s, l, x: sg.delta_mse(s, l, x, progress=False),
        "encode_codes": lambda s, l, x: codes(s, x),
        "evaluate": lambda s, l, x: sg.evaluate(s, x, progress=False),
        "explained_share": lambda s, l, x: sg.explained_share(s, l, x, progress=False),
        "reconstruction_gain": lambda s, l, x: sg.reconstruction_gain(s, x),
        "family_novelty": lambda s, l, x: sg.family_novelty([s, l], x, progress=False),
        "family_facts": lambda s, l, x: sg.family_facts([s, l], x, progress=False),
        "feature_card": lambda s, l, x: sg.feature_card([s, l], "1/0", acts=x),
        "explore": lambda s, l, x: sg.explore([s, l], x),
        "match_features": lambda s, l, x: sg.match_features(s, l, encoder=True),
        "seed_stability_matched": lambda s, l, x: sg.seed_stability_matched(s, l),
        "feature_dag": lambda s, l, x: sg.feature_dag(
            [s, l], metric="masked_cosine", acts=x, progress=False
        ),
        "frankenstein": lambda s, l, x: sg.frankenstein([s, l], x, progress=False),
        "frankenstein_sgd": lambda s, l, x: sg.frankenstein(
            [s, l], x, retrain="sgd", sgd_tokens=400, progress=False
        ),
        "frankenstein_curve": lambda s, l, x: sg.frankenstein_curve([s, l], x, progress=False),
        "frankenstein_steps": lambda s, l, x: sg.frankenstein_steps([s, l], x, progress=False),
        "hybrid": lambda s, l, x: sg.hybrid(additive(s, x), additive(l, x), add=[0]),
        "interpolation_path": lambda s, l, x: sg.interpolation_path([s, l], x, progress=False),
        "masked_cosine": lambda s, l, x: sg.masked_cosine(codes(s, x), codes(l, x)),
        "nesting": lambda s, l, x: sg.nesting(
            codes(s, x), codes(l, x), s.W_dec, means(s, x), means(l, x)
        ),
        "plan_frankenstein": lambda s, l, x: sg.plan_frankenstein([s, l]),
        "refit_exact": lambda s, l, x: sg.refit_exact(s, x, progress=False),
        "refit_sgd": lambda s, l, x: sg.refit_sgd(s, x, tokens=400, progress=False),
        "seed_stability": lambda s, l, x: sg.seed_stability(s, l),
        "swap_groups": lambda s, l, x: sg.swap_groups(s, l, acts=x, progress=False),
        "train_family": lambda s, l, x: sg.train_family(x, [4, 8], train),
        "train_sae": lambda s, l, x: sg.train_sae(x, train),
    }


def test_every_public_entry_point_is_covered():
    public = {
        name for name in sg.__all__ if inspect.isfunction(getattr(sg, name)) and name not in OTHERS
    }
    assert public <= set(calls("relu"))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("entry", list(calls("relu")))
def test_entry_point_works_in_mode(entry, arch, mode):
    small, large = pair(arch)
    x_BD = torch.randn(240, 16)
    expected = calls(arch)[entry](small, large, x_BD) if entry == "encode" else None
    with MODES[mode]():
        x_BD = x_BD.clone()  # made in the mode, as a notebook's activations are
        result = calls(arch)[entry](small, large, x_BD)
    assert result is not None
    if expected is not None:
        torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("mode", list(MODES))
def test_training_turns_gradients_on_and_restores_the_mode(mode):
    x_BD = torch.randn(400, 16)
    config = sg.TrainConfig(width=8, k=2, tokens=400, batch_size=100, progress=False)
    with MODES[mode]():
        sae, report = sg.train_sae(x_BD, config)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (mode == "inference_mode")
    assert report.steps == 4 and torch.isfinite(sae.W_dec).all()
