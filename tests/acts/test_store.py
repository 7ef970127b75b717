"""Activation stores: the three layouts, bounded batches, resumable shard writing."""

from __future__ import annotations

import json
import os

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
    with pytest.raises(FormatError, match="not valid JSON"):
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


def test_store_metadata_must_agree_with_its_shards(tmp_path):
    writer = sg.ShardWriter(tmp_path / "s", 4, shard_tokens=30)
    writer.add(torch.randn(50, 4))
    writer.close()
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["n_tokens"] = 10**12
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="n_tokens is 1000000000000 but the shards hold 50"):
        sg.ActivationStore.open(tmp_path / "s")
    meta["n_tokens"], meta["shards"][1]["n_tokens"] = 10**12, 10**12 - 30
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="shard_00001.safetensors: holds \\[20, 4\\]"):
        sg.ActivationStore.open(tmp_path / "s")


def test_nonfinite_rows_raise_or_are_skipped_once(tmp_path):
    acts = torch.randn(40, 3)
    acts[7, 1] = float("nan")
    acts[33, 0] = float("-inf")
    np.save(tmp_path / "a.npy", acts.numpy())
    with pytest.raises(FormatError, match=r"a\.npy: row 7 holds NaN or Inf"):
        sg.ActivationStore.open(tmp_path / "a.npy").read()
    store = sg.ActivationStore.open(tmp_path / "a.npy", nonfinite="skip")
    kept = torch.cat(list(store.iter_batches(batch_size=16)))
    keep = torch.ones(40, dtype=torch.bool)
    keep[[7, 33]] = False
    torch.testing.assert_close(kept, acts[keep])
    part = store.slice(30)  # a view shares the count; a second pass does not add to it
    assert part.read().shape[0] == 9
    store.read()
    assert store.skipped_rows == 2 and part.skipped_rows == 2
    with pytest.raises(SaegeoError, match="nonfinite"):
        sg.ActivationStore.open(tmp_path / "a.npy", nonfinite="drop")  # type: ignore[arg-type]


def test_only_real_regular_files_are_activations(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((3, 2), dtype=np.complex64))
    with pytest.raises(FormatError, match="real numbers"):
        sg.ActivationStore.open(tmp_path / "c.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(FormatError, match="empty.npy"):
        sg.ActivationStore.open(tmp_path / "empty.npy")
    os.mkfifo(tmp_path / "pipe.npy")
    with pytest.raises(FormatError, match="not a regular file"):
        sg.ActivationStore.open(tmp_path / "pipe.npy")
