"""Property: any SAE SAELens saves, of any architecture and config, reads back in saegeo as the
function SAELens loads from the same files; and what saegeo writes, SAELens reads the same."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.property import PROPERTY
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

import saegeo as sg

pytest.importorskip("sae_lens")
from sae_lens import SAE as LensSAE  # noqa: E402
from sae_lens import JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig  # noqa: E402
from sae_lens.saes.batchtopk_sae import (  # noqa: E402
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
)
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAEConfig  # noqa: E402
from sae_lens.saes.matryoshka_batchtopk_sae import (  # noqa: E402
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)

NORMALIZATIONS = ["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]
HOOKS = st.sampled_from(["blocks.3.hook_resid_pre", "blocks.0.hook_resid_post", "hook_embed"])


def _assert_same_function(ours: sg.SAE, lens: LensSAE, x_BD: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x_BD), lens.encode(x_BD), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ours.forward(x_BD), lens(x_BD), rtol=1e-9, atol=1e-9)


def _fill(sae: torch.nn.Module, seed: int, decoder_scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            noise = torch.randn(param.shape, generator=g, dtype=param.dtype)
            if name == "threshold":
                param.copy_(noise.abs() * 0.3)
            elif name == "W_dec":
                param.copy_(noise * decoder_scale)
            else:
                param.copy_(noise * (0.2 if name.startswith("b_") else 1.0))


@st.composite
def lens_configs(draw: st.DrawFn) -> tuple[str, Any]:
    arch = draw(st.sampled_from(["standard", "jumprelu", "topk", "matching_pursuit"]))
    d_in = draw(st.integers(2, 8))  # layer_norm of one number is NaN in both libraries
    d_sae = draw(st.integers(1, 16))
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float64",
        "apply_b_dec_to_input": draw(st.booleans()),
        "normalize_activations": draw(st.sampled_from(NORMALIZATIONS)),
    }
    if arch == "topk":
        config = TopKSAEConfig(
            k=draw(st.integers(1, d_sae)),
            rescale_acts_by_decoder_norm=draw(st.booleans()),
            **common,
        )
    elif arch == "matching_pursuit":
        common["normalize_activations"] = "none"
        config = MatchingPursuitSAEConfig(
            residual_threshold=draw(st.sampled_from([0.0, 1e-2, 0.5])),
            max_iterations=draw(st.one_of(st.none(), st.integers(1, 6))),
            stop_on_duplicate_support=draw(st.booleans()),
            **common,
        )
    else:
        config = {"standard": StandardSAEConfig, "jumprelu": JumpReLUSAEConfig}[arch](**common)
    config.metadata.hook_name = draw(HOOKS)
    config.metadata.context_size = draw(st.integers(2, 4096))
    config.metadata.model_name = draw(st.sampled_from(["gpt2-small", "gemma-2-2b"]))
    return arch, config


@PROPERTY
@given(
    case=lens_configs(),
    seed=st.integers(0, 2**16),
    decoder_scale=st.sampled_from([0.3, 1.0, 3.0]),
)
def test_any_saelens_save_reads_as_saelens_loads_it(case, seed, decoder_scale):
    arch, config = case
    lens = LensSAE.from_dict(config.to_dict())
    _fill(lens, seed, decoder_scale)
    x_BD = 2 * torch.randn(
        12, config.d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    with tempfile.TemporaryDirectory() as tmp:
        lens.save_model(Path(tmp) / "lens")
        loaded = LensSAE.load_from_disk(Path(tmp) / "lens", dtype="float64")
        ours = sg.load_sae(Path(tmp) / "lens", dtype=torch.float64)
        _assert_same_function(ours, loaded, x_BD)
        for key in ("hook_name", "context_size", "model_name"):
            assert ours.metadata[key] == loaded.cfg.metadata[key]
        # Written by saegeo, read by SAELens: the same function again.
        sg.save_sae(ours, Path(tmp) / "ours")
        back = LensSAE.load_from_disk(Path(tmp) / "ours", dtype="float64")
        _assert_same_function(ours, back, x_BD)


@pytest.mark.filterwarnings("ignore:.*only set one matryoshka level:UserWarning")
@PROPERTY
@given(
    matryoshka=st.booleans(),
    rescale=st.booleans(),
    d_in=st.integers(1, 8),
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    k=st.integers(1, 4),
    threshold=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_any_batchtopk_training_save_reads_as_its_inference_save(
    matryoshka, rescale, d_in, widths, k, threshold, seed
):
    nested = [sum(widths[: i + 1]) for i in range(len(widths))]
    common = dict(d_in=d_in, d_sae=nested[-1], k=float(k), rescale_acts_by_decoder_norm=rescale)
    if matryoshka:
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=nested, **common)
        )
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    _fill(sae, seed, decoder_scale=2.0)
    with torch.no_grad():
        sae.topk_threshold.fill_(threshold)
    x_BD = 2 * torch.randn(12, d_in, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_model(Path(tmp) / "training")
        sae.save_inference_model(Path(tmp) / "inference")
        lens = LensSAE.load_from_disk(Path(tmp) / "inference")
        for folder in ("training", "inference"):
            ours = sg.load_sae(Path(tmp) / folder)
            with torch.no_grad():
                torch.testing.assert_close(ours.encode(x_BD), lens.encode(x_BD))
        if matryoshka:  # the inference save keeps them in training_architecture_details
            assert sg.Family.load(Path(tmp) / "inference").widths == sorted(set(nested))


@st.composite
def pre6_configs(draw: st.DrawFn) -> dict[str, Any]:
    d_in = draw(st.integers(1, 8))
    factor = draw(st.integers(1, 3))
    cfg: dict[str, Any] = {
        "d_in": d_in,
        "dtype": draw(st.sampled_from(["float32", "torch.float32"])),
        "hook_point": draw(HOOKS),
        "context_size": draw(st.integers(2, 1024)),
        "model_name": "gpt2-small",
    }
    if draw(st.booleans()):
        cfg["d_sae"] = d_in * factor
    else:
        cfg["expansion_factor"] = factor
    if draw(st.booleans()):
        cfg["activation_fn_str"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": draw(st.integers(1, d_in * factor))}
    if draw(st.booleans()):
        cfg["normalize_activations"] = draw(st.sampled_from([False, "none", "layer_norm"]))
    if draw(st.booleans()):
        cfg["apply_b_dec_to_input"] = draw(st.booleans())
    if draw(st.booleans()):
        cfg["sae_lens_version"] = draw(st.sampled_from(["3.12.0", "5.9.1", "0.1"]))
    return cfg


@PROPERTY
@given(cfg=pre6_configs(), seed=st.integers(0, 2**16))
def test_any_pre6_config_reads_as_saelens_upgrades_it(cfg, seed):
    width = cfg.get("d_sae") or cfg["d_in"] * cfg["expansion_factor"]
    g = torch.Generator().manual_seed(seed)
    weights = {
        "W_enc": torch.randn(cfg["d_in"], width, generator=g),
        "b_enc": 0.2 * torch.randn(width, generator=g),
        "W_dec": torch.randn(width, cfg["d_in"], generator=g),
        "b_dec": 0.2 * torch.randn(cfg["d_in"], generator=g),
    }
    x_BD = 2 * torch.randn(12, cfg["d_in"], generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        path, lens_path = Path(tmp) / "old", Path(tmp) / "lens"
        # SAELens needs d_sae; saegeo also reads the oldest configs that give expansion_factor.
        for folder, fields in ((path, cfg), (lens_path, {**cfg, "d_sae": width})):
            folder.mkdir()
            (folder / "cfg.json").write_text(json.dumps(fields))
            save_file(weights, str(folder / "sae_weights.safetensors"))
        lens, ours = LensSAE.load_from_disk(lens_path), sg.load_sae(path)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x_BD), lens.encode(x_BD))
            torch.testing.assert_close(ours.forward(x_BD), lens(x_BD))
        assert ours.metadata["hook_name"] == lens.cfg.metadata.hook_name == cfg["hook_point"]
        assert ours.metadata["context_size"] == lens.cfg.metadata.context_size
