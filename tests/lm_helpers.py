"""A tiny random Llama and a word-level tokenizer that stand in for a real language model."""

from __future__ import annotations

import random

import torch

WORDS = [f"w{i}" for i in range(90)]
SPECIALS = ["<unk>", "<bos>", "<eos>"]


def tiny_llama(n_layers: int = 2) -> tuple[torch.nn.Module, object]:
    """A Llama (hidden 32, vocab 100) with random weights (seed 0), and its tokenizer."""
    import tokenizers
    import transformers

    torch.manual_seed(0)
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
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
