"""Top activating snippets: the vectorised windows against a token-by-token reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from saegeo.acts.store import ActivationStore, ShardWriter
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError, ShapeError
from saegeo.lm.snippets import feature_snippets, store_tokens, top_snippets


class Words:
    """A tokenizer whose token ``i`` decodes to ``" w{i}"``."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f" w{i}" for i in ids)


def naive_snippets(values, token_ids, doc_ids, per_context, k, before, after, max_per_doc=None):
    """(token, activation, left ids, right ids) by walking each window token by token."""
    order = sorted(np.flatnonzero(values), key=lambda i: (-values[i], i))
    taken, per_doc = [], {}
    for i in order:
        doc = None if doc_ids is None else int(doc_ids[i])
        if max_per_doc is not None and doc is not None:
            if per_doc.get(doc, 0) >= max_per_doc:
                continue
            per_doc[doc] = per_doc.get(doc, 0) + 1
        taken.append(i)
        if len(taken) == k:
            break

    def same(i, j):
        if not 0 <= j < len(token_ids):
            return False
        if doc_ids is not None and doc_ids[j] != doc_ids[i]:
            return False
        return per_context is None or j // per_context == i // per_context

    out = []
    for i in taken:
        left, j = [], i - 1
        while len(left) < before and same(i, j):
            left.insert(0, int(token_ids[j]))
            j -= 1
        right, j = [], i + 1
        while len(right) < after and same(i, j):
            right.append(int(token_ids[j]))
            j += 1
        out.append((i, float(values[i]), left, right))
    return out


def random_corpus(n=400, width=6, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(0, 50, n)
    doc_ids = np.repeat(np.arange(n), rng.integers(3, 40, n))[:n]  # documents of 3 to 39 tokens
    dense = np.where(rng.random((n, width)) < 0.1, rng.random((n, width)) * 5, 0.0)
    dense[rng.integers(0, n, 5), 0] = 2.5  # ties
    return token_ids, doc_ids, dense.astype(np.float32)


@pytest.mark.parametrize("per_context", [None, 16, 7])
@pytest.mark.parametrize("use_docs", [True, False])
@pytest.mark.parametrize(("before", "after", "max_per_doc"), [(4, 4, None), (0, 6, 1), (9, 2, 2)])
def test_matches_naive(per_context, use_docs, before, after, max_per_doc):
    token_ids, doc_ids, dense = random_corpus()
    docs = doc_ids if use_docs else None
    for feature in range(dense.shape[1]):
        df = top_snippets(
            sp.csr_matrix(dense),
            feature,
            token_ids,
            Words(),
            doc_ids=docs,
            tokens_per_context=per_context,
            k=7,
            window=(before, after),
            max_per_doc=max_per_doc,
        )
        expected = naive_snippets(
            dense[:, feature], token_ids, docs, per_context, 7, before, after, max_per_doc
        )
        assert df["token"].tolist() == [e[0] for e in expected]
        np.testing.assert_allclose(df["activation"], [e[1] for e in expected], rtol=1e-6)
        assert df["left"].tolist() == [Words().decode(e[2]) for e in expected]
        assert df["right"].tolist() == [Words().decode(e[3]) for e in expected]
        assert df["token_str"].tolist() == [f" w{token_ids[e[0]]}" for e in expected]


def test_columns_marks_and_boundaries():
    token_ids = np.arange(12)
    doc_ids = np.array([0] * 5 + [1] * 7)
    values = np.zeros(12)
    values[[4, 5, 9]] = [3.0, 2.0, 1.0]
    df = top_snippets(
        values, 0, token_ids, Words(), doc_ids=doc_ids, tokens_per_context=8, k=5, window=3
    )
    assert df.index.name == "rank"
    assert df["token"].tolist() == [4, 5, 9]
    # Token 4 ends document 0; token 5 starts document 1; token 9 is in the second context.
    assert df["text"].tolist() == [" w1 w2 w3 «w4»", " «w5» w6 w7", " w8 «w9» w10 w11"]
    assert df["doc_id"].tolist() == [0, 1, 1]
    assert df["context"].tolist() == [0, 0, 1]


def test_newlines_and_custom_marks():
    class Lines:
        def decode(self, ids):
            return "".join("\n" if i == 0 else f"x{i}" for i in ids)

    df = top_snippets(np.array([0.0, 1.0, 0.0]), 0, np.array([0, 1, 0]), Lines(), marks="[]")
    assert df.loc[0, "text"] == "⏎[x1]⏎"
    assert df.loc[0, "left"] == "\n"


def test_input_kinds_agree():
    token_ids, doc_ids, dense = random_corpus(seed=1)
    kwargs = dict(doc_ids=doc_ids, tokens_per_context=32, k=5, window=3)
    reference = top_snippets(sp.csr_matrix(dense), 2, token_ids, Words(), **kwargs)
    for codes, feature in [
        (sp.csc_matrix(dense), 2),
        (dense, 2),
        (torch.from_numpy(dense), 2),
        (dense[:, 2], 0),
    ]:
        df = top_snippets(codes, feature, token_ids, Words(), **kwargs)
        assert df.equals(reference)


def test_fewer_firings_than_k_and_codes_shorter_than_tokens():
    values = np.zeros(5)
    values[1] = 1.0
    df = top_snippets(values, 0, np.arange(8), Words(), k=10, window=10)
    assert len(df) == 1
    assert df.loc[0, "right"] == " w2 w3 w4 w5 w6 w7"  # token ids beyond the codes still show
    assert top_snippets(np.zeros(5), 0, np.arange(5), Words()).empty


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(feature=3), SaegeoError),
        (dict(k=-1), SaegeoError),
        (dict(window=-2), SaegeoError),
        (dict(window=(1, 2, 3)), SaegeoError),
        (dict(max_per_doc=0), SaegeoError),
        (dict(tokens_per_context=0), SaegeoError),
        (dict(token_ids=np.arange(3)), ShapeError),
        (dict(doc_ids=np.zeros(4)), ShapeError),
    ],
)
def test_bad_arguments(kwargs, error):
    args = dict(codes=sp.csr_matrix(np.eye(5, 3)), feature=0, token_ids=np.arange(5))
    args.update(kwargs)
    with pytest.raises(error):
        top_snippets(args.pop("codes"), args.pop("feature"), args.pop("token_ids"), Words(), **args)


def harvest_like_store(tmp_path, n_tokens=60, per_context=10, d_in=4):
    """A store directory with token ids, document ids and context length, as harvests write."""
    torch.manual_seed(0)
    writer = ShardWriter(tmp_path / "acts", d_in, shard_tokens=25)
    acts = torch.randn(n_tokens, d_in)
    token_ids = torch.arange(n_tokens, dtype=torch.int32)
    doc_ids = torch.tensor([i // 13 for i in range(n_tokens)], dtype=torch.int32)
    for start in range(0, n_tokens, 10):
        writer.add(
            acts[start : start + 10],
            token_ids=token_ids[start : start + 10],
            doc_ids=doc_ids[start : start + 10],
        )
    return writer.close(tokens_per_context=per_context), acts


def test_store_tokens_and_feature_snippets(tmp_path):
    store, acts = harvest_like_store(tmp_path)
    tokens = store_tokens(store)
    assert tokens.token_ids.tolist() == list(range(60))
    assert tokens.doc_ids.tolist() == [i // 13 for i in range(60)]
    assert tokens.tokens_per_context == 10

    sae = SAE.from_decoder(torch.eye(4)[:3] + 0.1).to(dtype=torch.float32)
    codes = sae.encode(acts).numpy()
    by_sae = feature_snippets(store, 1, sae=sae, tokenizer=Words(), k=4, window=3, device="cpu")
    by_codes = feature_snippets(store, 1, codes=sp.csr_matrix(codes), tokenizer=Words(), k=4)
    expected = naive_snippets(codes[:, 1], np.arange(60), tokens.doc_ids, 10, 4, 3, 3)
    assert by_sae["token"].tolist() == [e[0] for e in expected]
    assert by_sae["left"].tolist() == [Words().decode(e[2]) for e in expected]
    assert by_codes["token"].tolist() == by_sae["token"].tolist()


def test_feature_snippets_needs_one_source_and_token_ids(tmp_path):
    store, _ = harvest_like_store(tmp_path)
    with pytest.raises(SaegeoError, match="exactly one"):
        feature_snippets(store, 0, tokenizer=Words())
    with pytest.raises(SaegeoError, match="no token ids"):
        store_tokens(ActivationStore.from_tensor(torch.zeros(3, 4)))
