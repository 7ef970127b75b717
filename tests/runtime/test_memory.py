"""Free memory and the estimates behind the refusals of large allocations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg
from saegeo.errors import ArgumentError
from saegeo.geometry import similarity
from saegeo.runtime import memory


def test_available_memory_reads_memavailable(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  300 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    assert memory.available_memory(torch.device("cpu")) == 300 * 1024
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "missing")
    assert memory.available_memory(torch.device("cpu")) > 0  # the free pages instead


def test_format_bytes():
    assert [memory.format_bytes(n) for n in (512, 1536, 5 * 2**20, 2**40)] == [
        "512 B",
        "1.5 KiB",
        "5.0 MiB",
        "1024.0 GiB",
    ]


def test_sparse_codes_estimate_bounds_the_codes_made():
    sae = random_sae(64, "topk", seed=0)
    x_BD = torch.randn(500, 16, dtype=torch.float64)
    codes = sg.encode_codes(sae, x_BD, progress=False)
    made = codes.data.nbytes + codes.indices.nbytes + codes.indptr.nbytes
    estimate = memory.sparse_codes_bytes(500, codes.nnz / 500)
    assert made <= estimate / 2 + 8 * 501 and estimate <= 3 * made


def test_decoder_cosine_estimate_counts_its_tensors():
    n_small, n_large, d_in, k = 300, 500, 24, 3
    tile = similarity._tile_shape(n_small, 256 * 37)
    float32 = memory.decoder_cosine_bytes(n_small, n_large, d_in, k, tile, 4)
    tensors = [
        n_small * d_in * 4,  # unit small rows
        n_large * d_in * 4,  # the large decoder on the device
        tile[0] * tile[1] * 4 + 2 * tile[0] * d_in * 4,  # a tile and its unit large rows
        n_large * k * (4 + 8),  # running top-k values and indices
    ]
    assert float32 == sum(tensors)
    bf16 = memory.decoder_cosine_bytes(n_small, n_large, d_in, k, tile, 2)
    assert bf16 - float32 == n_small * d_in * 2 - tile[0] * tile[1] * 2 - n_large * k * 2


def test_forward_estimate_grows_with_the_batch():
    one = memory.forward_bytes(1, 128, 576, 1536, 9, 4)
    assert memory.forward_bytes(16, 128, 576, 1536, 9, 4) == 16 * one
    assert one == 4 * (128 * (6 * 576 + 2 * 1536) + 9 * 128 * 128)


@pytest.fixture
def tiny_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)


def test_decoder_cosine_refuses_naming_the_device(tiny_memory):
    sae = random_sae(64, "relu", seed=0)
    with pytest.raises(ArgumentError, match=r"^device='cpu': decoder cosines of 64 x 64 .* free"):
        sg.decoder_cosine(sae, sae, device="cpu")


def test_codes_refuse_naming_the_limit(tiny_memory):
    sae = random_sae(64, "relu", seed=0)
    with pytest.raises(ArgumentError, match=r"^limit=None: the codes of .* on 500 tokens"):
        sg.encode_codes(sae, np.ones((500, 16)), progress=False)


def test_harvest_refuses_naming_the_batch_size(tiny_memory, tmp_path):
    lm_helpers = pytest.importorskip("helpers.lm")
    pytest.importorskip("transformers")
    from saegeo.lm.harvest import harvest

    model, tokenizer = lm_helpers.tiny_llama()
    with pytest.raises(ArgumentError, match=r"^batch_size=4: a forward pass of 4 contexts"):
        harvest(model, lm_helpers.random_texts(), tmp_path / "acts", tokenizer=tokenizer,
                batch_size=4, context=16, max_tokens=20, progress=False)  # fmt: skip
    assert not (tmp_path / "acts").exists()


def test_the_cli_names_the_flag(tiny_memory, tmp_path, capsys):
    from saegeo.cli import main

    for width in (8, 16):
        sg.save_sae(random_sae(width, "relu", seed=width), tmp_path / f"w{width}")
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(300, 16)))
    argv = ["tree", str(tmp_path / "w8"), str(tmp_path / "w16"), "--root", "0/0"]
    argv += ["--metric", "masked_cosine", "--acts", str(tmp_path / "acts.npy")]
    assert main([*argv, "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saegeo tree: error: --limit: the codes of")


def test_masked_cosine_refuses_naming_max_pairs(monkeypatch):
    import scipy.sparse as sp

    monkeypatch.setattr(memory, "available_memory", lambda device: 10_000)
    codes = sp.csr_matrix(np.ones((100, 20), dtype=np.float32))  # 2,000 pairs a child
    assert sg.masked_cosine(codes[:, :1], codes[:, :1]).shape == (1, 1)  # 100 pairs fit
    with pytest.raises(ArgumentError, match=r"^max_pairs=16777216: masked_cosine\(\) over"):
        sg.masked_cosine(codes, codes)


def test_cofiring_estimate_counts_bytes_per_pair():
    assert memory.cofiring_pairs_bytes(1000) == 1000 * 61
