"""The stopped forward pass: compiled and uncompiled agree, and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from helpers.lm import random_texts, tiny_llama

from saegeo.lm import harvest as harvest_module
from saegeo.lm.forward import COMPILED_ATTENTION, hooked_forward, stopped_forward
from saegeo.lm.harvest import harvest
from saegeo.lm.models import decoder_blocks

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_lm() -> tuple[torch.nn.Module, object]:
    return tiny_llama(n_layers=3)


def hidden_state(model: torch.nn.Module, input_ids_BT: torch.Tensor, layer: int) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids_BT, output_hidden_states=True).hidden_states[layer + 1]


@pytest.mark.parametrize("layer", [0, 1])
def test_hooked_forward_returns_the_blocks_output(tiny_lm, layer):
    model, _ = tiny_lm
    _, blocks = decoder_blocks(model)
    input_ids_BT = torch.randint(3, 100, (3, 12))
    torch.testing.assert_close(
        hooked_forward(model, blocks[layer], input_ids_BT), hidden_state(model, input_ids_BT, layer)
    )


def test_compiled_forward_matches_and_restores_the_model(tiny_lm):
    model, _ = tiny_lm
    _, blocks = decoder_blocks(model)
    attention = model.config._attn_implementation
    input_ids_BT = torch.randint(3, 100, (4, 12))
    expected_BTD = hidden_state(model, input_ids_BT, 1)
    with stopped_forward(model, blocks, 1, compile=True, rows=4) as run:
        assert model.config._attn_implementation == COMPILED_ATTENTION
        assert all("forward" in vars(block) for block in blocks[:2])
        assert "forward" not in vars(blocks[2])  # blocks after the hooked one never run
        torch.testing.assert_close(run(input_ids_BT), expected_BTD, rtol=1e-4, atol=1e-5)
        # A short batch is padded to the compiled shape and cut back.
        torch.testing.assert_close(run(input_ids_BT[:3]), expected_BTD[:3], rtol=1e-4, atol=1e-5)
    assert model.config._attn_implementation == attention
    assert not any("forward" in vars(block) for block in blocks)
    torch.testing.assert_close(hooked_forward(model, blocks[1], input_ids_BT), expected_BTD)


def test_a_model_that_fails_to_compile_runs_uncompiled(tiny_lm, monkeypatch):
    model, _ = tiny_lm
    _, blocks = decoder_blocks(model)
    attention = model.config._attn_implementation

    def failing_compile(fn, **_kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("inductor: no working C++ compiler\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    input_ids_BT = torch.randint(3, 100, (2, 12))
    with stopped_forward(model, blocks, 1, compile=True, rows=2) as run:
        with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler\\); running it"):
            out_BTD = run(input_ids_BT)
        assert not any("forward" in vars(block) for block in blocks)
        assert model.config._attn_implementation == attention
        torch.testing.assert_close(run(input_ids_BT), out_BTD)
    torch.testing.assert_close(out_BTD, hidden_state(model, input_ids_BT, 1))


def test_harvest_compiles_long_cpu_runs_only(tiny_lm, monkeypatch, tmp_path):
    model, tokenizer = tiny_lm
    compiled: list[object] = []

    def spy_compile(fn, **_kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", spy_compile)
    options = {"layer": 1, "context": 16, "progress": False, "tokenizer": tokenizer}
    texts = random_texts()
    harvest(model, texts, tmp_path / "short", max_tokens=56, **options)
    assert compiled == []
    monkeypatch.setattr(harvest_module, "COMPILE_MIN_TOKENS", 50)
    long = harvest(model, texts, tmp_path / "long", max_tokens=56, **options)
    assert len(compiled) == 2  # blocks 0 and 1
    forced = harvest(model, texts, tmp_path / "forced", max_tokens=56, compile=False, **options)
    assert len(compiled) == 2
    torch.testing.assert_close(long.read(), forced.read())
    assert [shard["compiled"] for shard in long.meta["shards"]] == [True]
    assert [shard["compiled"] for shard in forced.meta["shards"]] == [False]


def test_shards_record_how_they_were_made(tiny_lm, monkeypatch, tmp_path):
    model, tokenizer = tiny_lm
    monkeypatch.setattr(torch, "compile", lambda fn, **_kwargs: fn)
    options = {"layer": 1, "context": 16, "progress": False, "tokenizer": tokenizer}
    options |= {"shard_tokens": 28, "texts": random_texts()}
    harvest(model, out=tmp_path, max_tokens=56, compile=False, **options)
    store = harvest(model, out=tmp_path, max_tokens=112, compile=True, **options)
    assert [shard["compiled"] for shard in store.meta["shards"]] == [False] * 2 + [True] * 2

    def failing_compile(fn, **_kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("inductor: no working C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.warns(RuntimeWarning, match="running it uncompiled"):
        fallback = harvest(model, out=tmp_path / "fallback", max_tokens=56, compile=True, **options)
    assert [shard["compiled"] for shard in fallback.meta["shards"]] == [False] * 2
