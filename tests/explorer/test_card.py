"""The feature card's numbers are saegeo's measures, read for one feature."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from helpers.explore import Words

import saegeo as sg
from saegeo.explorer.facts import PASSED_OPTIONS
from saegeo.lm.snippets import top_snippets


def test_card_numbers_equal_the_measures(toy, facts):
    fam, acts = toy.family, toy.acts
    classified = sg.classify(fam[1], fam[2])
    deltas = sg.delta_mse(fam[1], fam[2], acts, progress=False)
    explained = sg.explained_share(fam[1], fam[2], acts, progress=False)["explained"]
    G = sg.feature_dag(fam, acts=acts, progress=False)
    for j in range(fam[2].width):
        card = sg.feature_card(facts, f"2/{j}")
        assert card.kind == classified.at[j, "kind"]
        assert card.max_cos == pytest.approx(classified.at[j, "max_cos"])
        assert card.residual == pytest.approx(classified.at[j, "residual"])
        assert card.nearest == f"1/{classified.at[j, 'nearest']}"
        assert card.delta_mse == pytest.approx(deltas[j])
        if np.isnan(explained[j]):
            assert card.to_dict()["explained"] is None
        else:
            assert card.explained == pytest.approx(explained[j])
        node = G.nodes[(2, j)]
        assert card.freq == pytest.approx(node["freq"])
        assert card.max_act == pytest.approx(node["max_act"])
        parents = {f"1/{p[1]}": G.edges[p, (2, j)]["score"] for p in G.predecessors((2, j))}
        assert {e["id"]: e["score"] for e in card.parents} == pytest.approx(parents)


def test_ancestors_descendants_and_swap_groups(toy, facts):
    fam = toy.family
    G = sg.feature_dag(fam)
    root = next(n for n in G if n[0] == 0 and G.out_degree(n) > 0)
    card = sg.feature_card(facts, root)
    T = sg.feature_tree(G, root)
    assert {e["id"] for e in card.descendants} == {f"{lv}/{i}" for lv, i in T.nodes} - {card.id}
    assert {e["id"] for e in card.children} == {f"1/{c[1]}" for c in G.successors(root)}
    leaf = next(n for n in T.nodes if n[0] == 2)
    up = sg.feature_card(facts, f"{leaf[0]}/{leaf[1]}")
    assert card.id in {e["id"] for e in up.ancestors}
    groups = sg.swap_groups(fam[1], fam[2])
    mine = [g for _, g in groups.iterrows() if leaf[1] in g["large"]]
    assert [g["large"] for g in up.swap_groups if g["pair"] == [1, 2]] == [
        [f"2/{j}" for j in mine[0]["large"]]
    ]


def test_snippets_are_top_snippets_with_per_token_activations(toy, facts):
    codes = sg.encode_codes(toy.family[1], toy.acts, progress=False)
    for j in range(toy.family[1].width):
        card = sg.feature_card(facts, (1, j))
        expected = top_snippets(codes, j, toy.token_ids, Words(), k=5, window=(8, 4))
        assert [s["token"] for s in card.snippets] == expected["token"].tolist()
        assert [s["activation"] for s in card.snippets] == pytest.approx(
            expected["activation"].tolist()
        )
        for s, (_, row) in zip(card.snippets, expected.iterrows(), strict=True):
            assert "".join(s["tokens"]) == row["left"] + row["token_str"] + row["right"]
            column = codes[:, j].toarray().ravel()
            first = s["token"] - s["centre"]
            assert s["acts"] == pytest.approx(column[first : first + len(s["acts"])].tolist())


def test_histogram_counts_every_firing_token(toy, facts):
    codes = sg.encode_codes(toy.family[0], toy.acts, progress=False)
    for j in range(toy.family[0].width):
        card = sg.feature_card(facts, f"0/{j}")
        assert sum(card.histogram["counts"]) == codes[:, j].nnz
        assert card.kind is None and card.delta_mse is None


def test_card_is_plain_json_and_renders(facts):
    card = sg.feature_card(facts, "1/3")
    text = json.dumps(card.to_dict(), allow_nan=False)
    assert json.loads(text)["id"] == "1/3"
    page = card._repr_html_()
    assert 'data-testid="feature-card"' in page and 'data-feature="1/3"' in page


@pytest.mark.parametrize("front", [sg.feature_card, sg.explore])
def test_card_and_explorer_pass_options_on_with_family_facts_defaults(front):
    """The options a front passes to :func:`saegeo.family_facts` keep its types and defaults."""
    measures = inspect.signature(sg.family_facts).parameters
    options = inspect.signature(front).parameters
    for name in PASSED_OPTIONS:
        assert options[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert options[name].default == measures[name].default, name
        assert options[name].annotation == measures[name].annotation, name
    assert front.__annotations__["options"] == sg.family_facts.__annotations__["options"]


def test_card_from_family_in_one_line(toy):
    card = sg.feature_card(toy.family, "1/2", acts=toy.acts, progress=False)
    assert card.id == "1/2" and card.snippets == []  # a tensor has no token ids


def test_unknown_feature_is_one_clear_error(facts):
    with pytest.raises(sg.SaegeoError, match="9/0: no such feature"):
        sg.feature_card(facts, "9/0")
    with pytest.raises(sg.SaegeoError, match="LEVEL/FEATURE"):
        sg.feature_card(facts, "x")
