"""Feature labels from top tokens: the rule, its fast path against a naive one, and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers.lm import word_tokenizer

import saegeo as sg
from saegeo.acts.store import ShardWriter
from saegeo.cli import main
from saegeo.errors import SaegeoError
from saegeo.lm.labels import feature_labels, token_label, top_token_labels


class Words:
    """Token id i decodes to " w<i>"; id 0 to a newline and id 1 to a space."""

    def decode(self, ids: list[int]) -> str:
        return "".join({0: "\n", 1: " "}.get(i, f" w{i}") for i in ids)


def test_token_label_rule():
    # By count among the top tokens, ties by first occurrence; at most n; stripped.
    assert token_label([" b", " a", " a", " c", " b", " a"]) == "a · b · c"
    assert token_label([" b", " a", " c", " d"], n=2) == "b · a"
    assert token_label(["\n", " ", "  x "]) == "⏎ · ␣ · x"
    assert token_label(["a\nb"]) == "a⏎b"
    assert token_label([]) is None
    with pytest.raises(SaegeoError, match="^n=0: must be an integer >= 1$"):
        token_label(["a"], n=0)


def naive_labels(dense: np.ndarray, token_ids: np.ndarray, k: int, n: int) -> dict[int, str]:
    """The labelling rule spelled out, one feature and one token at a time."""
    out = {}
    for j in range(dense.shape[1]):
        firing = sorted((-dense[i, j], i) for i in range(dense.shape[0]) if dense[i, j] != 0)
        shown = [{0: "⏎", 1: "␣"}.get(int(token_ids[i]), f"w{token_ids[i]}") for _, i in firing[:k]]
        if shown:
            counts = Counter(shown)
            order = sorted(counts, key=lambda w: (-counts[w], shown.index(w)))
            out[j] = " · ".join(order[:n])
    return out


@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_token_labels_match_naive(k):
    rng = np.random.default_rng(0)
    dense = rng.exponential(size=(300, 12)) * (rng.random((300, 12)) < 0.1)
    dense[:, 7] = 0  # never fires: no label
    dense[5, 3] = dense[9, 3] = dense[:, 3].max() + 1  # a tie: the earlier token first
    token_ids = rng.integers(0, 9, size=300)
    labels = top_token_labels(sp.csr_matrix(dense), token_ids, Words(), k=k, n=2)
    assert labels == naive_labels(dense, token_ids, k, 2)
    assert 7 not in labels
    chosen = top_token_labels(sp.csr_matrix(dense), token_ids, Words(), features=[3, 7], k=k)
    assert set(chosen) == {3}
    with pytest.raises(SaegeoError, match="token_ids"):
        top_token_labels(sp.csr_matrix(dense), token_ids[:10], Words())


@pytest.fixture
def harvested(tmp_path):
    """A store with token ids and a saved word-level tokenizer, as `saegeo harvest` writes."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    tokenizer.save_pretrained(str(tmp_path / "acts" / "tokenizer"))
    writer = ShardWriter(tmp_path / "acts", 6, shard_tokens=100)
    acts = torch.randn(400, 6)
    writer.add(acts, token_ids=torch.randint(3, 90, (400,), dtype=torch.int32))
    store = writer.close(tokenizer={"path": "tokenizer"})
    W = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    family = sg.Family(
        [
            sg.SAE.from_decoder(W, metadata={"name": "narrow"}),
            sg.SAE.from_decoder(
                torch.nn.functional.normalize(W.repeat(2, 1) + 0.2 * torch.randn(8, 6), dim=1),
                metadata={"name": "wide"},
            ),
        ]
    )
    return store, family, tokenizer


def test_feature_labels_equal_labels_of_the_whole_codes(harvested):
    store, family, tokenizer = harvested
    labels = feature_labels(family, store, [(1, 5), (0, 2), (1, 0)], device="cpu")
    token_ids = store.token_ids()
    expected = {}
    for level, feature in [(1, 5), (0, 2), (1, 0)]:
        codes = sg.encode_codes(family[level], store, device="cpu", progress=False)
        found = top_token_labels(codes, token_ids, tokenizer, features=[feature])
        expected.update({f"{level}/{f}": label for f, label in found.items()})
    assert labels == expected and set(labels) <= {"1/5", "0/2", "1/0"}
    assert all(label and "<" not in label for label in labels.values())
    with pytest.raises(SaegeoError, match="no token ids"):
        feature_labels(family, sg.ActivationStore.from_tensor(torch.zeros(3, 6)), [(0, 0)])
    # Skipped NaN rows would shift every code against its token: refused, not mislabelled.
    nan_dir = Path(store.source).parent / "nan"
    writer = ShardWriter(nan_dir, 6, shard_tokens=100)
    acts = torch.randn(50, 6)
    acts[7] = float("nan")
    writer.add(acts, token_ids=torch.arange(50, dtype=torch.int32))
    writer.close(tokenizer={"path": "tokenizer"})
    with_nan = sg.ActivationStore.open(nan_dir, nonfinite="skip")
    with pytest.raises(SaegeoError, match="line up"):
        feature_labels(family, with_nan, [(0, 0)], tokenizer=tokenizer, device="cpu")


def test_cli_tree_labels_nodes_from_a_harvested_store(harvested, tmp_path):
    store, family, _ = harvested
    paths = [str(sg.save_sae(sae, tmp_path / sae.name)) for sae in family]
    out, page, given = tmp_path / "tree.json", tmp_path / "tree.html", tmp_path / "labels.json"
    given.write_text(json.dumps({"0/0": "my own label"}))
    args = ["tree", *paths, "--root", "0/0", "--acts", str(store.source), "--threshold", "0.5"]
    assert main([*args, "--out", str(out), "--html", str(page), "--labels", str(given)]) == 0
    doc = json.loads(out.read_text())
    assert doc["tree"]["label"] == "my own label"
    children = doc["tree"]["children"]
    assert children and all(child["label"] for child in children)
    expected = feature_labels(family, store, [(1, c["feature"]) for c in children], device="cpu")
    assert {c["id"]: c["label"] for c in children} == expected
    text = page.read_text()
    assert 'data-feature="0/0"' in text and "my own label" in text
