"""Harvesting for an SAE's own site: TransformerLens hook names on a tiny random GPT-2."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers.lm import random_texts, tiny_gpt2, tiny_llama

from saegeo.acts.store import ActivationStore
from saegeo.errors import SaegeoError
from saegeo.lm.harvest import harvest
from saegeo.lm.sites import (
    check_model_settings,
    hf_model_name,
    resolve_hook,
    site_for,
    uses_layer_norm,
)

transformers = pytest.importorskip("transformers")
HAS_TL = importlib.util.find_spec("transformer_lens") is not None
CONTEXT, N_TOKENS = 16, 150


@pytest.fixture(scope="module")
def gpt2() -> tuple[torch.nn.Module, object]:
    return tiny_gpt2(n_layers=3)


def run(lm, out, **kwargs) -> ActivationStore:
    model, tokenizer = lm
    options = {
        "context": CONTEXT,
        "batch_size": 4,
        "progress": False,
        "dtype": "float32",
        "skip_first": 0,
        "max_tokens": N_TOKENS,
    }
    return harvest(model, random_texts(), out, tokenizer=tokenizer, **{**options, **kwargs})


def contexts(store: ActivationStore) -> torch.Tensor:
    """The model inputs of a harvest: BOS then the stored tokens, one row per context."""
    token_ids = torch.as_tensor(store.token_ids(), dtype=torch.long).reshape(-1, CONTEXT - 1)
    return torch.cat([torch.ones(token_ids.shape[0], 1, dtype=torch.long), token_ids], 1)


def hidden_states(model, input_ids_BT: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids=input_ids_BT, output_hidden_states=True).hidden_states


@pytest.mark.parametrize(
    ("hook", "index"),
    [
        ("blocks.2.hook_resid_pre", 2),
        ("blocks.1.hook_resid_pre", 1),
        ("blocks.1.hook_resid_post", 2),
    ],
)
def test_hooks_equal_the_hidden_states_they_name(gpt2, tmp_path, hook, index):
    store = run(gpt2, tmp_path / "acts", hook=hook)
    assert store.n_tokens == N_TOKENS and store.meta["tl_hook_name"] == hook
    expected_BD = hidden_states(gpt2[0], contexts(store))[index][:, 1:].reshape(-1, 32)
    torch.testing.assert_close(store.read(), expected_BD, rtol=1e-5, atol=1e-5)


def test_resid_pre_is_the_previous_blocks_resid_post(gpt2, tmp_path):
    pre = run(gpt2, tmp_path / "pre", hook="blocks.2.hook_resid_pre").read()
    post = run(gpt2, tmp_path / "post", hook="blocks.1.hook_resid_post").read()
    torch.testing.assert_close(pre, post, rtol=0, atol=0)


def test_center_writing_weights_subtracts_each_tokens_mean(gpt2, tmp_path):
    store = run(
        gpt2, tmp_path / "acts", hook="blocks.2.hook_resid_pre", center_writing_weights=True
    )
    assert store.meta["center_writing_weights"] is True
    hs_BTD = hidden_states(gpt2[0], contexts(store))[2][:, 1:].reshape(-1, 32)
    torch.testing.assert_close(
        store.read(), hs_BTD - hs_BTD.mean(-1, keepdim=True), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not HAS_TL, reason="needs transformer_lens")
def test_center_writing_weights_matches_transformer_lens(gpt2, tmp_path):
    """TransformerLens's model with centred writing weights gives the harvested stream."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    model = gpt2[0]
    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=128,
        d_vocab=100,
        n_ctx=64,
        act_fn="gelu_new",
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
    )
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(model, cfg),
        fold_ln=False,
        center_writing_weights=True,
        center_unembed=False,
        fold_value_biases=False,
    )
    for hook in ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"):
        store = run(gpt2, tmp_path / hook, hook=hook, center_writing_weights=True)
        _, cache = tl.run_with_cache(contexts(store), names_filter=hook)
        expected_BD = cache[hook][:, 1:].reshape(-1, 32)
        torch.testing.assert_close(store.read(), expected_BD, rtol=1e-4, atol=1e-5)


def test_rms_norm_models_are_not_centred(tmp_path):
    """TransformerLens centres writing weights only on LayerNorm models."""
    llama = tiny_llama()
    assert not uses_layer_norm(llama[0]) and uses_layer_norm(tiny_gpt2()[0])
    plain = run(llama, tmp_path / "plain", hook="blocks.1.hook_resid_pre").read()
    asked = run(
        llama, tmp_path / "asked", hook="blocks.1.hook_resid_pre", center_writing_weights=True
    )
    torch.testing.assert_close(asked.read(), plain, rtol=0, atol=0)
    assert asked.meta["center_writing_weights"] is None


def test_unsupported_hooks_and_settings_are_refused(gpt2, tmp_path):
    assert resolve_hook("blocks.8.hook_resid_pre") == (7, "resid_pre")
    for hook in ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out"):
        with pytest.raises(SaegeoError, match="hook_resid_post"):
            resolve_hook(hook)
    with pytest.raises(SaegeoError, match="blocks 0..2"):
        run(gpt2, tmp_path / "acts", hook="blocks.3.hook_resid_post")
    with pytest.raises(SaegeoError, match="HarvestConfig.layer=0"):
        run(gpt2, tmp_path / "acts", hook="blocks.3.hook_resid_pre", layer=0)
    assert check_model_settings({"center_writing_weights": True, "fold_ln": True}, source="s")
    with pytest.raises(SaegeoError, match="first_n_layers"):
        check_model_settings({"first_n_layers": 2}, source="s")
    with pytest.raises(SaegeoError, match="prepend_bos"):
        site_for({"hook_name": "blocks.1.hook_resid_post", "prepend_bos": False})
    site = site_for(
        {
            "hook_name": "blocks.8.hook_resid_pre",
            "model_from_pretrained_kwargs": {"center_writing_weights": True},
        }
    )
    assert (site.layer, site.center_writing_weights) == (7, True)
    assert hf_model_name("gpt2-small") == "gpt2"
