"""A tiny random Llama and a word-level tokenizer that stand in for a real language model."""

from __future__ import annotations

import random

import torch

WORDS = [f"w{i}" for i in range(90)]
SPECIALS = ["<unk>", "<bos>", "<eos>"]


def word_tokenizer() -> object:
    """A word-level tokenizer of ``WORDS`` (ids 3..92) with <unk>, <bos> and <eos> (0, 1, 2)."""
    import tokenizers
    import transformers

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_gpt2(n_layers: int = 3) -> tuple[torch.nn.Module, object]:
    """A GPT-2 (LayerNorm, hidden 32, vocab 100) with random weights (seed 0), and a tokenizer."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=n_layers,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(config).eval(), word_tokenizer()


def tiny_llama(n_layers: int = 2) -> tuple[torch.nn.Module, object]:
    """A Llama (hidden 32, vocab 100) with random weights (seed 0), and its tokenizer."""
    import transformers

    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model, tokenizer


def random_texts(n: int = 20, seed: int = 0) -> list[str]:
    """``n`` documents of 5 to 40 random words."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(n)]
