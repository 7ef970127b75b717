"""Blocked decoder cosines against the dense cosine matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saegeo as sg
from saegeo.errors import SaegeoError, ShapeError
from saegeo.geometry.similarity import decoder_cosine, decoder_cosine_pairs, unit_rows


def dense_cosines(W_small_SD: torch.Tensor, W_large_LD: torch.Tensor) -> torch.Tensor:
    """The whole cosine matrix [L, S], in float64."""
    return unit_rows(W_large_LD.double()) @ unit_rows(W_small_SD.double()).T


@pytest.fixture
def decoders() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(300, 24), torch.randn(530, 24) * 3.0


# block_elements: whole matrix at once, rows only (300 columns fit), and both axes split with
# ragged edges (the small axis into tiles of 37 columns).
@pytest.mark.parametrize("block_elements", [10**8, 300 * 37, 37 * 256])
@pytest.mark.parametrize("k", [1, 4])
def test_decoder_cosine_matches_dense_topk(decoders, block_elements, k):
    W_small_SD, W_large_LD = decoders
    expected = dense_cosines(W_small_SD, W_large_LD).topk(k, dim=1)
    match = decoder_cosine(W_small_SD, W_large_LD, k=k, block_elements=block_elements, device="cpu")
    assert match.values.shape == (530, k) and match.values.dtype == torch.float32
    torch.testing.assert_close(match.values.double(), expected.values, atol=1e-5, rtol=0)
    assert torch.equal(match.indices, expected.indices)


@pytest.mark.parametrize("k", [1, 3])
def test_tiles_narrower_than_k(k):
    # One small feature per tile: the first tile fills the top-k only partly.
    W_small_SD, W_large_LD = torch.randn(9, 5), torch.randn(300, 5)
    expected = dense_cosines(W_small_SD, W_large_LD).topk(k, dim=1)
    match = decoder_cosine(W_small_SD, W_large_LD, k=k, block_elements=256, device="cpu")
    torch.testing.assert_close(match.values.double(), expected.values, atol=1e-5, rtol=0)
    assert torch.equal(match.indices, expected.indices)


def test_decoder_cosine_takes_saes_and_keeps_ties_in_index_order():
    W_SD = torch.eye(4)
    W_small_SD = torch.cat([W_SD, W_SD])  # every direction twice: exact ties
    small = sg.SAE.from_decoder(W_small_SD)
    large = sg.SAE.from_decoder(torch.eye(4) * 5)
    for block_elements in (10**6, 1):
        match = decoder_cosine(small, large, block_elements=block_elements, device="cpu")
        assert torch.equal(match.indices[:, 0], torch.arange(4))
        torch.testing.assert_close(match.values, torch.ones(4, 1))
        match = decoder_cosine(small, large, k=2, block_elements=block_elements, device="cpu")
        assert torch.equal(
            match.indices.sort(dim=1).values, torch.stack([torch.arange(4), torch.arange(4, 8)], 1)
        )


def test_bfloat16_recomputes_values_in_float32(decoders):
    W_small_SD, W_large_LD = decoders
    match = decoder_cosine(W_small_SD, W_large_LD, k=3, dtype=torch.bfloat16, device="cpu")
    dense = dense_cosines(W_small_SD, W_large_LD)
    exact = dense.gather(1, match.indices)
    torch.testing.assert_close(match.values.double(), exact, atol=1e-5, rtol=0)
    # bfloat16 picks near-best candidates only.
    assert (dense.max(dim=1).values - match.values[:, 0].double()).max() < 0.02
    assert (match.values[:, :-1] >= match.values[:, 1:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_elements", [10**8, 37 * 256])
def test_pairs_are_exactly_the_entries_above_threshold(decoders, dtype, block_elements):
    W_small_SD, W_large_LD = decoders
    dense_LS = dense_cosines(W_small_SD, W_large_LD).numpy()
    pairs = decoder_cosine_pairs(
        W_small_SD,
        W_large_LD,
        threshold=0.5,
        dtype=dtype,
        block_elements=block_elements,
        device="cpu",
    )
    assert pairs.shape == (300, 530)
    expected_SL = np.where(dense_LS.T > 0.5, dense_LS.T, 0.0)
    assert pairs.nnz == int((dense_LS > 0.5).sum()) > 0
    np.testing.assert_allclose(pairs.toarray(), expected_SL, atol=1e-5)


def test_user_errors_name_the_argument():
    with pytest.raises(ShapeError, match="d_in"):
        decoder_cosine(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(SaegeoError, match="k=4: exceeds the 3 features"):
        decoder_cosine(torch.randn(3, 4), torch.randn(3, 4), k=4)
    with pytest.raises(SaegeoError, match="k=0: must be an integer >= 1"):
        decoder_cosine(torch.randn(3, 4), torch.randn(3, 4), k=0)
    with pytest.raises(SaegeoError, match="small decoder holds NaN"):
        decoder_cosine(torch.full((3, 4), float("nan")), torch.randn(3, 4))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_cosines_do_not_depend_on_the_decoders_scale(decoders, scale):
    W_small_SD, W_large_LD = decoders
    expected = decoder_cosine(W_small_SD, W_large_LD, k=2, device="cpu")
    scaled = decoder_cosine(W_small_SD * scale, W_large_LD, k=2, device="cpu")
    torch.testing.assert_close(scaled.values, expected.values)
    assert torch.equal(scaled.indices, expected.indices)
    with pytest.raises(ShapeError, match="large"):
        decoder_cosine(torch.randn(3, 4), torch.randn(4))


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 2])
def test_gpu_matches_cpu(decoders, k):
    W_small_SD, W_large_LD = decoders
    cpu = decoder_cosine(W_small_SD, W_large_LD, k=k, device="cpu")
    for block_elements in (7 * 256, 10**8):
        gpu = decoder_cosine(
            W_small_SD, W_large_LD, k=k, device="cuda", block_elements=block_elements
        )
        torch.testing.assert_close(gpu.values, cpu.values, atol=1e-5, rtol=0)
        assert torch.equal(gpu.indices, cpu.indices)


@pytest.mark.gpu
def test_gpu_bfloat16_picks_near_best_and_recomputes_exactly(decoders):
    W_small_SD, W_large_LD = decoders
    dense = dense_cosines(W_small_SD, W_large_LD)
    match = decoder_cosine(W_small_SD, W_large_LD, device="cuda", dtype=torch.bfloat16)
    chosen = dense.gather(1, match.indices)
    torch.testing.assert_close(match.values.double(), chosen, atol=1e-5, rtol=0)
    assert bool((chosen[:, 0] >= dense.max(dim=1).values - 2e-2).all())


def test_seed_stability_counts_features_found_again():
    g = torch.Generator().manual_seed(0)
    W_FD = torch.randn(40, 16, generator=g)
    other = W_FD[:30] + 0.01 * torch.randn(30, 16, generator=g)  # 30 of 40 found again
    assert sg.seed_stability(W_FD, other, device="cpu") == pytest.approx(0.75)
    assert sg.seed_stability(other, W_FD, device="cpu") == 1.0
    reference = (dense_cosines(other, W_FD).max(dim=1).values > 0.7).double().mean()
    assert sg.seed_stability(W_FD, other, device="cpu") == pytest.approx(float(reference))
    with pytest.raises(SaegeoError, match="threshold"):
        sg.seed_stability(W_FD, other, threshold=1.5)
