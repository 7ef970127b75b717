"""The stopped forward pass: compiled and uncompiled agree, and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import TINY_DECODER, random_texts, tiny_llama

from saegeo import harvest as harvest_module
from saegeo import lm_forward
from saegeo.harvest import decoder_blocks, harvest
from saegeo.lm_forward import (
    COMPILED_ATTENTION,
    GROUPED_ATTENTION,
    _compiled_attention,
    grouped_attention,
    hooked_forward,
    stopped_forward,
)

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
        assert model.config._attn_implementation == GROUPED_ATTENTION
        assert all("forward" in vars(block) for block in blocks[:2])
        assert "forward" not in vars(blocks[2])  # blocks after the hooked one never run
        torch.testing.assert_close(run(input_ids_BT), expected_BTD, rtol=1e-4, atol=1e-5)
        # A short batch is padded to the compiled shape and cut back.
        torch.testing.assert_close(run(input_ids_BT[:3]), expected_BTD[:3], rtol=1e-4, atol=1e-5)
    assert model.config._attn_implementation == attention
    assert not any("forward" in vars(block) for block in blocks)
    torch.testing.assert_close(hooked_forward(model, blocks[1], input_ids_BT), expected_BTD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_keys", [7, 9])
def test_grouped_attention_equals_the_eager_attention(dtype, n_keys):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    module.num_key_value_groups = 3
    query_BHTE = torch.randn(2, 6, 7, 8, dtype=dtype)
    key_BGUE, value_BGUE = torch.randn(2, 2, 2, n_keys, 8, dtype=dtype).unbind(1)
    # Additive mask as transformers' eager_mask builds it: causal, keys ending at the query.
    allowed_TU = torch.ones(7, n_keys).tril(n_keys - 7).bool()
    allowed_BTU = allowed_TU.expand(2, -1, -1).clone()
    allowed_BTU[1, :, :2] = False  # left padding in the second row
    mask_B1TU = torch.zeros(2, 1, 7, n_keys, dtype=dtype).masked_fill(
        ~allowed_BTU[:, None], torch.finfo(dtype).min
    )
    for mask in (mask_B1TU, None):
        expected_BTHE, _ = eager_attention_forward(
            module, query_BHTE, key_BGUE, value_BGUE, mask, scaling=0.3
        )
        out_BTHE, weights = grouped_attention(
            module, query_BHTE, key_BGUE, value_BGUE, mask, scaling=0.3
        )
        assert weights is None
        torch.testing.assert_close(out_BTHE, expected_BTHE)
    with pytest.raises(ValueError, match="dropout"):
        grouped_attention(module, query_BHTE, key_BGUE, value_BGUE, None, 0.3, dropout=0.1)


def test_models_with_their_own_eager_attention_keep_it(tiny_lm):
    import transformers

    _, blocks = decoder_blocks(tiny_lm[0])
    assert _compiled_attention(blocks) == GROUPED_ATTENTION
    # Gemma 2 soft-caps its attention logits in its own eager attention.
    config = transformers.Gemma2Config(**TINY_DECODER, num_hidden_layers=2, head_dim=8)
    gemma = transformers.Gemma2ForCausalLM(config).eval()
    _, gemma_blocks = decoder_blocks(gemma)
    assert _compiled_attention(gemma_blocks) == COMPILED_ATTENTION
    assert _compiled_attention([torch.nn.Linear(2, 2)]) == COMPILED_ATTENTION


@pytest.mark.parametrize("why", ["own eager attention", "grouped attention refused"])
def test_other_models_compile_with_their_eager_attention(tiny_lm, monkeypatch, why):
    model, _ = tiny_lm
    _, blocks = decoder_blocks(model)
    attention = model.config._attn_implementation
    monkeypatch.setattr(torch, "compile", lambda fn, **_kwargs: fn)  # the switching alone
    if why == "own eager attention":
        monkeypatch.setattr(lm_forward, "_compiled_attention", lambda _: COMPILED_ATTENTION)
    else:
        setter = model.set_attn_implementation

        def refuse_grouped(implementation: str) -> None:
            if implementation == GROUPED_ATTENTION:
                raise ValueError("LlamaForCausalLM does not support this attention")
            setter(implementation)

        monkeypatch.setattr(model, "set_attn_implementation", refuse_grouped)
    input_ids_BT = torch.randint(3, 100, (2, 12))
    with stopped_forward(model, blocks, 1, compile=True, rows=2) as run:
        assert model.config._attn_implementation == COMPILED_ATTENTION
        torch.testing.assert_close(run(input_ids_BT), hidden_state(model, input_ids_BT, 1))
    assert model.config._attn_implementation == attention


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
