"""A tiny random Llama and a word-level tokenizer that stand in for a real language model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

WORDS = [f"w{i}" for i in range(90)]
SPECIALS = ["<unk>", "<bos>", "<eos>"]
TOKEN_IDS = {
    "vocab_size": 100,
    "bos_token_id": SPECIALS.index("<bos>"),
    "eos_token_id": SPECIALS.index("<eos>"),
}
"""The ids :func:`word_tokenizer` uses, as the tiny models' configs take them (the vocabulary
leaves room above its 93 tokens)."""


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
        **TOKEN_IDS, n_embd=32, n_layer=n_layers, n_head=4, n_positions=64
    )
    return transformers.GPT2LMHeadModel(config).eval(), word_tokenizer()


def tiny_llama(n_layers: int = 2) -> tuple[torch.nn.Module, object]:
    """A Llama (hidden 32, vocab 100) with random weights (seed 0), and its tokenizer."""
    import transformers

    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    config = transformers.LlamaConfig(
        **TOKEN_IDS,
        pad_token_id=TOKEN_IDS["eos_token_id"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model, tokenizer


def random_texts(n: int = 20, seed: int = 0) -> list[str]:
    """``n`` documents of 5 to 40 random words."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(n)]


def saved_gpt2_and_texts(root: Path, n_layers: int = 3) -> tuple[torch.nn.Module, Path, Path]:
    """A tiny GPT-2 saved under ``root/model`` and ``root/texts.txt`` of random documents:
    ``(model, model_dir, texts)``, what ``saegeo harvest --model DIR --text FILE`` takes."""
    model, tokenizer = tiny_gpt2(n_layers=n_layers)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    texts = root / "texts.txt"
    texts.write_text("\n".join(random_texts()) + "\n")
    return model, model_dir, texts


def harvest_on_ranks(
    root: str, runs: list[tuple[str, dict[str, Any]]], argvs: list[list[list[str]]]
) -> tuple[list[str | None], list[dict[str, Any]]]:
    """What one rank of a process group does: ``harvest`` into ``root/out`` for each
    ``(out, options)`` (the tiny Llama on :func:`random_texts` unless ``options`` say otherwise;
    ``options["rank1"]`` changes rank 1's options), then ``saegeo`` with each of
    ``argvs[rank]``.

    Each harvest fails as the command line does (the failing rank calls
    :func:`~saegeo.runtime.distributed.agree_on_error`): its result is the message every rank
    agreed on, or None. The command lines' results are those of
    :func:`helpers.distributed.cli_runs`.
    """
    from helpers.distributed import cli_runs
    from saegeo.errors import SaegeoError
    from saegeo.lm.harvest import harvest
    from saegeo.runtime import distributed

    model, tokenizer = tiny_llama()
    results: list[str | None] = []
    for out, options in runs:
        options = {"model": model, "tokenizer": tokenizer, "texts": random_texts(), **options}
        own = options.pop("rank1", {})
        options.update(own if distributed.rank() == 1 else {})
        message = None
        try:
            harvest(out=Path(root, out), **options)
        except distributed.PeerError as exc:  # another rank failed; all already agree
            results.append(str(exc))
            continue
        except SaegeoError as exc:
            message = str(exc)
        results.append(distributed.agree_on_error(message))
    mine = argvs[distributed.rank()]
    return results, cli_runs(mine, [0] * len(mine))
