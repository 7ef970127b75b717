"""The explorer site's data and the ``saegeo explore`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

import saegeo as sg
from saegeo.cli import main
from saegeo.explorer.site import page_html, write_site
from saegeo.explorer.site_data import index_data, member_data, snippet_data
from saegeo.runtime.outputs import output_kind


def test_member_documents_hold_the_cards_numbers(facts):
    for level in range(len(facts.family)):
        member = member_data(facts, level)
        snippets = snippet_data(facts, level)
        for j in range(facts.family.widths[level]):
            card = sg.feature_card(facts, (level, j)).to_dict()
            for key in ("freq", "max_act", "delta_mse", "explained", "max_cos"):
                expected = card[key]
                assert member[key][j] == (expected and pytest.approx(expected, rel=1e-5))
            assert member["kind"][j] == (None if card["kind"] is None else card["kind"] == "novel")
            assert [f"{level + 1}/{c}" for c, _ in member["children"][j]] == [
                c["id"] for c in card["children"]
            ]
            assert member["label"][j] == card["label"]
            texts = [
                "".join(snippets["tokens"][str(t)] for t in row[2])
                for row in snippets["snippets"][j]
            ]
            assert texts == ["".join(s["tokens"]) for s in card["snippets"]]
            hist = snippets["hist"][j]
            assert hist[1:] == card["histogram"]["counts"]


def test_documents_are_strict_json(facts):
    for doc in (index_data(facts), member_data(facts, 1), snippet_data(facts, 2)):
        json.dumps(doc, allow_nan=False)


def test_site_is_recognised_and_replaced_only_with_force(toy, facts, tmp_path):
    out = write_site(facts, tmp_path / "site")
    assert output_kind(out) == "explore"
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"{kind}-{level}.js" for kind in ("member", "snippets") for level in range(3)
    ]
    page = (out / "index.html").read_text()
    assert "data-testid" in page and "scriptLoader(" in page and "fetch(" not in page


def test_page_escapes_script_endings():
    index = {"levels": [], "note": "</script><b>"}
    assert "</script><b>" not in page_html(index)


def test_explore_command(toy, tmp_path, capsys):
    paths = []
    for sae in toy.family:
        sg.save_sae(sae, tmp_path / sae.name)
        paths.append(str(tmp_path / sae.name))
    acts = tmp_path / "acts.npy"
    np.save(acts, toy.acts.numpy())
    out = tmp_path / "site"
    args = ["explore", *paths, "--acts", str(acts), "--out", str(out), "--snippets", "3"]
    assert main(args) == 0
    assert "explorer of 3 SAEs" in capsys.readouterr().out
    index = json.loads((out / "explorer.json").read_text())
    assert [lv["width"] for lv in index["levels"]] == [6, 12, 24]
    assert index["has_text"] is False and index["n_tokens"] == len(toy.acts)
    assert main(args) == 2  # a previous site: only with --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([*args[:-6], "--acts", str(acts), "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"
    assert main([*args, "--force", "--threshold", "2"]) == 2
    assert main([*args, "--force", "--no-effects"]) == 0
    member = (out / "data" / "member-2.js").read_text()
    doc = json.loads(member[member.index(",") + 1 : member.rindex(")")])
    assert doc["delta_mse"] == [None] * 24 and doc["max_cos"][0] is not None


def test_pages_open_on_the_root_that_splits_most_clearly(facts):
    from saegeo.explorer.site_data import index_data, start_feature
    from saegeo.trees.dag import parse_node_id
    from saegeo.trees.forest import forest_roots, split_summary

    start = start_feature(facts)
    summaries = {root: split_summary(facts.dag, root) for root in forest_roots(facts.dag)}
    splitting = {root: s["split_score"] for root, s in summaries.items() if s["splits"]}
    if not splitting:
        assert start is None
        return
    assert summaries[parse_node_id(start)]["splits"]
    assert splitting[parse_node_id(start)] == max(splitting.values())
    assert index_data(facts)["start"] == start
