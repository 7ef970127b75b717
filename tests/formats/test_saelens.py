"""The SAELens layout: training saves, config fields checked against types, ranges and weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.saelens import make_lens_sae
from sae_lens import SAE as LensSAE
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from safetensors.torch import save_file

import saegeo as sg
from saegeo.errors import FormatError

D, F = 16, 48


def _training_sae(kind: str, rescale: bool):
    common = dict(d_in=D, d_sae=F, k=4.0, rescale_acts_by_decoder_norm=rescale)
    if kind == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    else:
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=[12, 24, F], **common)
        )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, F) / D**0.5)
        sae.b_enc.copy_(torch.randn(F) * 0.1)
        # Decoder rows far from unit norm, so that a wrong fold shows.
        sae.W_dec.copy_(torch.randn(F, D) * (0.2 + 3 * torch.rand(F, 1)))
        sae.b_dec.copy_(torch.randn(D) * 0.1)
        sae.topk_threshold.fill_(0.4)
    return sae


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
def test_training_saves_load_as_the_inference_save(tmp_path, kind, rescale):
    lens = _training_sae(kind, rescale)
    lens.save_model(tmp_path / "training")
    lens.save_inference_model(tmp_path / "inference")
    assert json.loads((tmp_path / "training/cfg.json").read_text())["architecture"] == kind
    x = torch.randn(256, D) * 2
    expected = LensSAE.load_from_disk(tmp_path / "inference").encode(x)
    training, inference = sg.load_sae(tmp_path / "training"), sg.load_sae(tmp_path / "inference")
    assert training.arch == inference.arch == "jumprelu"
    assert 0 < float((expected != 0).float().sum(1).mean()) < F  # a meaningful threshold
    torch.testing.assert_close(training.encode(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inference.encode(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(training(x), inference(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def lens_dir(tmp_path) -> Path:
    path = tmp_path / "sae"
    make_lens_sae("topk", d_in=D, d_sae=F, k=4).save_model(path)
    return path


def _edit_cfg(path: Path, **changes) -> None:
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"d_in": D + 1}, "d_in is 17 but the weights have 16"),
        ({"d_sae": 999}, "d_sae is 999 but the weights have 48"),
        ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input must be true or false"),
        ({"k": True}, "k must be an integer"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": "4"}, "k must be an integer"),
        ({"metadata": [1, 2]}, "metadata must be a JSON object"),
        ({"normalize_activations": 3}, "normalize_activations must be one of"),
        ({"architecture": ["topk"]}, "architecture must be a string"),
        ({"metadata": {"matryoshka_widths": [24, 12]}}, "matryoshka_widths must be a strictly"),
        ({"metadata": {"matryoshka_widths": [12, 96]}}, "exceed the width 48"),
    ],
)
def test_config_fields_are_checked(lens_dir, changes, message):
    _edit_cfg(lens_dir, **changes)
    with pytest.raises(FormatError, match=message) as info:
        sg.load_sae(lens_dir)
    assert str(lens_dir / "cfg.json") in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"residual_threshold": "0.1"}, "residual_threshold must be a finite number"),
        ({"max_iterations": "8"}, "max_iterations must be an integer"),
        ({"max_iterations": 0}, "max_iterations must be an integer >= 1"),
        ({"stop_on_duplicate_support": 1}, "stop_on_duplicate_support must be true or false"),
    ],
)
def test_matching_pursuit_fields_are_checked(tmp_path, changes, message):
    path = tmp_path / "mp"
    make_lens_sae("matching_pursuit", d_in=D, d_sae=F).save_model(path)
    _edit_cfg(path, **changes)
    with pytest.raises(FormatError, match=message):
        sg.load_sae(path)


def test_activation_fn_kwargs_of_the_wrong_type(lens_dir):
    _edit_cfg(lens_dir, architecture="standard", activation_fn="topk", activation_fn_kwargs=[4])
    cfg = json.loads((lens_dir / "cfg.json").read_text())
    del cfg["k"]
    (lens_dir / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="activation_fn_kwargs must be a JSON object"):
        sg.load_sae(lens_dir)


def test_integer_weights_are_refused(lens_dir):
    sae = sg.load_sae(lens_dir)
    weights = dict(sae.architecture.saelens_weights(sae))
    weights["W_enc"] = (weights["W_enc"] * 10).to(torch.int8)
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(lens_dir / "sae_weights.safetensors")
    )
    with pytest.raises(FormatError, match="W_enc has dtype int8"):
        sg.load_sae(lens_dir)


def test_deeply_nested_json(lens_dir):
    (lens_dir / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="cfg.json"):
        sg.load_sae(lens_dir)


def test_cfg_that_is_a_directory(lens_dir):
    (lens_dir / "cfg.json").unlink()
    (lens_dir / "cfg.json").mkdir()
    with pytest.raises(FormatError, match="found a directory"):
        sg.load_sae(lens_dir)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_cfg_that_is_a_fifo_does_not_block(lens_dir):
    (lens_dir / "cfg.json").unlink()
    os.mkfifo(lens_dir / "cfg.json")
    with pytest.raises(FormatError, match="not a regular file"):
        sg.load_sae(lens_dir)


def test_width_zero_is_refused(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    save_file(
        {
            "W_enc": torch.zeros(D, 0),
            "b_enc": torch.zeros(0),
            "W_dec": torch.zeros(0, D),
            "b_dec": torch.zeros(D),
        },
        str(path / "sae_weights.safetensors"),
    )
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D}))
    with pytest.raises(FormatError, match="width 0"):
        sg.load_sae(path)
