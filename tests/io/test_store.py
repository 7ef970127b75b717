"""Activation stores: the three layouts, bounded batches, resumable shard writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saegeo as sg
from saegeo.errors import FormatError, SaegeoError


def test_npy_and_safetensors(tmp_path):
    acts = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", acts)
    save_file({"acts": torch.from_numpy(acts)}, str(tmp_path / "a.safetensors"))
    for name in ("a.npy", "a.safetensors"):
        store = sg.ActivationStore.open(tmp_path / name)
        assert (store.n_tokens, store.d_in) == (50, 6)
        batches = list(store.iter_batches(batch_size=16))
        assert [b.shape[0] for b in batches] == [16, 16, 16, 2]
        np.testing.assert_array_equal(torch.cat(batches).numpy(), acts)
        assert store.read(limit=7).shape == (7, 6)


def test_shard_writer_resumes(tmp_path):
    acts = torch.randn(100, 4)
    ids = torch.arange(100, dtype=torch.int32)
    writer = sg.ShardWriter(tmp_path / "store", 4, shard_tokens=30, meta={"model": "toy"})
    writer.add(acts[:70], token_ids=ids[:70])
    assert writer.n_tokens == 60  # two complete shards; 10 tokens still queued
    # Interrupted here: re-open and continue from what is on disk.
    resumed = sg.ShardWriter(tmp_path / "store", 4, shard_tokens=30)
    assert resumed.n_tokens == 60
    resumed.add(acts[60:], token_ids=ids[60:])
    store = resumed.close(text_source="unit test")
    assert store.n_tokens == 100 and store.meta["model"] == "toy"
    assert store.meta["text_source"] == "unit test"
    torch.testing.assert_close(store.read(), acts)
    np.testing.assert_array_equal(store.token_ids(), ids.numpy())
    with pytest.raises(SaegeoError, match="cannot resume"):
        sg.ShardWriter(tmp_path / "store", 5)


def test_bad_stores(tmp_path):
    with pytest.raises(SaegeoError, match="no such file"):
        sg.ActivationStore.open(tmp_path / "missing.npy")
    (tmp_path / "d").mkdir()
    with pytest.raises(SaegeoError, match="meta.json"):
        sg.ActivationStore.open(tmp_path / "d")
    (tmp_path / "d/meta.json").write_text("{oops")
    with pytest.raises(FormatError, match="corrupt"):
        sg.ActivationStore.open(tmp_path / "d")
    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(FormatError, match="'acts'"):
        sg.ActivationStore.open(tmp_path / "wrong.safetensors")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(FormatError, match="2-D"):
        sg.ActivationStore.open(tmp_path / "flat.npy")


def test_slice_is_a_view_across_shards(tmp_path):
    acts = torch.randn(100, 4)
    writer = sg.ShardWriter(tmp_path / "s", 4, shard_tokens=30)
    writer.add(acts, doc_ids=torch.arange(100, dtype=torch.int32) // 10)
    store = writer.close()
    part = store.slice(25, 75)
    assert part.n_tokens == 50
    torch.testing.assert_close(torch.cat(list(part.iter_batches(batch_size=7))), acts[25:75])
    np.testing.assert_array_equal(part.doc_ids(), np.arange(25, 75) // 10)
    torch.testing.assert_close(store.slice(90).read(), acts[90:])
    with pytest.raises(SaegeoError, match="row range"):
        store.slice(50, 10)
