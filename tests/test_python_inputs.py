"""What the Python API takes: numpy arrays wherever tensors go, inputs of the wrong width, devices
this machine lacks, size arguments out of range, families given as paths."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg
from saegeo.errors import ArgumentError

ARCHS = ["relu", "jumprelu", "topk", "matching_pursuit"]


@pytest.fixture
def x_BD() -> torch.Tensor:
    return torch.randn(50, 16, dtype=torch.float64)


@pytest.mark.parametrize("arch", ARCHS)
def test_numpy_arrays_work_wherever_tensors_do(arch, x_BD):
    sae = random_sae(8, arch, seed=0)
    x_np = x_BD.numpy()
    torch.testing.assert_close(sae.encode(x_np), sae.encode(x_BD))
    torch.testing.assert_close(sae(x_np), sae(x_BD))
    codes_np = sae.encode(x_BD).numpy()
    torch.testing.assert_close(sae.decode(codes_np, x_np), sae.decode(sae.encode(x_BD), x_BD))
    assert sg.evaluate(sae, x_np, progress=False).mse == pytest.approx(
        sg.evaluate(sae, x_BD, progress=False).mse
    )
    if arch == "topk":
        assert torch.equal(sae.to_jumprelu(x_np).threshold, sae.to_jumprelu(x_BD).threshold)


def test_an_sae_takes_numpy_weights():
    W_dec_FD = np.eye(4, dtype=np.float32)
    sae = sg.SAE(W_enc=W_dec_FD.T, b_enc=np.zeros(4), W_dec=W_dec_FD, b_dec=np.zeros(4))
    assert isinstance(sae.W_dec, torch.Tensor) and sae.width == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_wrong_widths_name_both(arch, x_BD):
    sae = random_sae(8, arch, seed=0)
    with pytest.raises(sg.ShapeError, match=r"x has width 15 .* d_in is 16"):
        sae.encode(x_BD[:, :15])
    with pytest.raises(sg.ShapeError, match=r"acts has width 7 .* width is 8"):
        sae.decode(torch.zeros(3, 7))
    with pytest.raises(sg.ShapeError, match=r"d_in=15.*d_in=16"):
        sg.evaluate(sae, x_BD[:, :15].numpy(), progress=False)


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_an_unavailable_device_is_one_clear_error(device, x_BD):
    sae = random_sae(8, "relu", seed=0)
    with pytest.raises(ArgumentError, match=f"device='{device}'"):
        sg.evaluate(sae, x_BD, device=device, progress=False)
    with pytest.raises(ArgumentError, match="device="):
        sg.decoder_cosine(sae, sae, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_error(x_BD):
    with pytest.raises(ArgumentError, match="CUDA is not available"):
        sg.encode_codes(random_sae(8, "relu", seed=0), x_BD, device="cuda")


def _family(sae: sg.SAE) -> list[sg.SAE]:
    return [sae, random_sae(16, "relu", seed=1)]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda s, x: sg.encode_codes(s, x, batch_size=0), "batch_size=0"),
        (lambda s, x: sg.evaluate(s, x, batch_size=2.5), "batch_size=2.5"),
        (lambda s, x: sg.delta_mse(s, s, x, batch_size=True), "batch_size=True"),
        (lambda s, x: sg.explained_share(s, s, x, limit=-1), "limit=-1"),
        (lambda s, x: sg.refit_exact(s, x, limit=0), "limit=0"),
        (lambda s, x: sg.decoder_cosine(s, s, k=0), "k=0"),
        (lambda s, x: sg.decoder_cosine(s, s, block_elements=0), "block_elements=0"),
        (lambda s, x: sg.family_novelty([s], x, points=-1), "points=-1"),
        (lambda s, x: sg.interpolation_path([s, s], x, points=0), "points=0"),
        (lambda s, x: sg.match_features(s, s, candidates=0), "candidates=0"),
        (lambda s, x: sg.family_facts(_family(s), x, k=0, progress=False), "k=0"),
    ],
)
def test_size_arguments_are_checked(call, name, x_BD):
    with pytest.raises(ArgumentError, match=f"^{name}: must be an integer >= "):
        call(random_sae(8, "relu", seed=0), x_BD)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda s, x: sg.delta_mse(s, s, x, topk="both"), "topk='both'"),
        (lambda s, x: sg.feature_dag(_family(s), metric="mcs"), "metric='mcs'"),
        (lambda s, x: sg.forest(sg.feature_dag(_family(s)), rank_by="depth"), "rank_by='depth'"),
        (lambda s, x: sg.match_features(s, s, method="greedy"), "method='greedy'"),
        (lambda s, x: sg.decoder_cosine(s, s, dtype=torch.int32), "dtype=torch.int32"),
    ],
)
def test_choice_arguments_are_checked(call, name, x_BD):
    with pytest.raises(ArgumentError, match=f"^{re.escape(name)}: must be one of "):
        call(random_sae(8, "relu", seed=0), x_BD)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: sg.match_features(s, s, threshold=1.5),
        lambda s: sg.seed_stability(s, s, threshold=1.5),
    ],
)
def test_every_cosine_threshold_has_one_check(call):
    with pytest.raises(ArgumentError, match=r"^threshold=1\.5: must be a cosine in \[-1, 1\]$"):
        call(random_sae(8, "relu", seed=0))


def test_a_family_may_be_given_as_paths(tmp_path):
    paths = []
    for width in (8, 16):
        paths.append(sg.save_sae(random_sae(width, "relu", seed=width), tmp_path / f"w{width}"))
    G = sg.feature_dag([str(p) for p in reversed(paths)])
    assert [level["width"] for level in G.graph["levels"]] == [8, 16]
    with pytest.raises(sg.SaegeoError, match="SAEs or SAE paths, not int"):
        sg.feature_dag([1, 2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_moving_an_sae_to_a_missing_device_is_one_clear_error():
    with pytest.raises(ArgumentError, match="device='cuda': CUDA is not available"):
        random_sae(8, "relu", seed=0).to("cuda")
