"""Tree, forest and DAG JSON: schema validation, round trips, pinned key names, and the
``saegeo tree`` command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import networkx as nx
import numpy as np
import pytest
from helpers.property import PROPERTY
from helpers.tree import in_page, scored_dag, synthetic_family
from hypothesis import given
from hypothesis import strategies as st

import saegeo as sg
from saegeo.cli import main
from saegeo.errors import FormatError, SaegeoError
from saegeo.trees.dag import feature_dag, feature_tree, forest, node_id
from saegeo.trees.tree_json import (
    dag_from_json,
    dag_to_json,
    forest_from_json,
    forest_schema,
    forest_to_json,
    read_labels,
    tree_from_json,
    tree_schema,
    tree_to_json,
    validate_forest,
)

# The example of docs/concepts.md, plus the level-1 entry of "levels" that its abbreviation leaves
# out.
DESIGN_EXAMPLE = {
    "schema": "saegeo.feature_tree.v1",
    "metric": "decoder_cosine",
    "threshold": 0.7,
    "levels": [{"level": 0, "width": 768, "source": "gpt2-768"}],
    "tree": {
        "id": "0/12",
        "level": 0,
        "feature": 12,
        "score": None,
        "other_parents": [],
        "children": [
            {
                "id": "1/1290",
                "level": 1,
                "feature": 1290,
                "score": 0.99,
                "other_parents": [],
                "children": [],
            }
        ],
    },
}
DESIGN_EXAMPLE["levels"].append({"level": 1, "width": 1536, "source": "gpt2-1536"})


@pytest.fixture(scope="module")
def family_and_acts():
    tf = synthetic_family(n_roots=2, branching=2, depth=2, d=32, noise=0.1)
    return tf.family, tf.toy.to_store(1000)


@pytest.fixture(scope="module")
def dag(family_and_acts):
    family, acts = family_and_acts
    return feature_dag(family, acts=acts, progress=False)


@pytest.fixture
def tree(dag):
    table, trees = forest(dag, rank_by="size")
    return trees[0]


def all_nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node["children"] for n in all_nodes(child)]


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


# --------------------------------------------------------------------------- trees


def test_generated_tree_validates_and_round_trips(tree):
    doc = tree_to_json(tree, labels={"0/0": "a label"})
    validator(tree_schema()).validate(doc)  # the packaged schema, with plain jsonschema
    assert json.loads(json.dumps(doc)) == doc
    nodes = all_nodes(doc["tree"])
    assert len(nodes) == tree.number_of_nodes() > 3
    assert all("freq" in n and "max_act" in n for n in nodes)
    back = tree_from_json(doc)
    assert set(back.edges) == set(tree.edges)
    assert dict(back.nodes(data=True)) == {
        n: {**data, **({"label": "a label"} if n == (0, 0) else {})}
        for n, data in tree.nodes(data=True)
    }
    assert {e: back.edges[e]["score"] for e in back.edges} == {
        e: tree.edges[e]["score"] for e in tree.edges
    }
    assert tree_to_json(back) == doc


def test_design_example_round_trips_exactly():
    validator(tree_schema()).validate(DESIGN_EXAMPLE)
    T = tree_from_json(DESIGN_EXAMPLE)
    assert sorted(T.edges) == [((0, 12), (1, 1290))]
    assert T.nodes[(1, 1290)]["width"] == 1536
    assert tree_to_json(T) == DESIGN_EXAMPLE


def test_key_names_are_pinned(tree):
    """Keys are fixed once released (docs/design.md): this test fails if any is renamed."""
    doc = tree_to_json(tree)
    assert list(doc) == ["schema", "metric", "threshold", "levels", "tree"]
    assert doc["schema"] == "saegeo.feature_tree.v1"
    assert [list(level) for level in doc["levels"]] == [["level", "width", "source"]] * 3
    required = {"id", "level", "feature", "score", "other_parents", "children"}
    for node in all_nodes(doc["tree"]):
        assert required <= set(node) <= required | {"freq", "max_act", "label"}
        assert node["id"] == f"{node['level']}/{node['feature']}"
    schema = tree_schema()
    assert schema["required"] == ["schema", "metric", "threshold", "levels", "tree"]
    assert schema["properties"]["levels"]["items"]["required"] == ["level", "width", "source"]
    node_schema = schema["$defs"]["node"]
    assert set(node_schema["required"]) == required
    assert {"freq", "max_act", "label"} <= set(node_schema["properties"])
    forest_doc = forest_schema()
    assert forest_doc["required"] == ["schema", "metric", "threshold", "levels", "trees"]
    assert forest_doc["properties"]["schema"] == {"const": "saegeo.feature_forest.v1"}


def test_other_parents_are_written():
    G = scored_dag(
        {
            ((0, 0), (1, 0)): 0.9,
            ((0, 0), (1, 1)): 0.8,
            ((1, 0), (2, 3)): 0.7,
            ((1, 1), (2, 3)): 1.3,
        },
        metric="masked_cosine",
        threshold=0.6,
        levels=[{"level": i, "width": 4, "source": f"s{i}"} for i in range(3)],
    )
    doc = tree_to_json(feature_tree(G, "0/0"))
    validator(tree_schema()).validate(doc)
    child = doc["tree"]["children"]
    assert [c["id"] for c in child] == ["1/0", "1/1"]  # best score first
    assert child[1]["children"][0]["other_parents"] == [["1/0", 0.7]]
    assert tree_to_json(tree_from_json(doc)) == doc


def test_unknown_keys_are_accepted():
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    doc["generator"] = "a later version"
    doc["tree"]["children"][0]["token_examples"] = ["the", "a"]
    T = tree_from_json(doc)
    assert T.nodes[(1, 1290)]["token_examples"] == ["the", "a"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("levels"), "'levels' is a required property"),
        (lambda d: d.update(schema="saegeo.feature_tree.v2"), "expected schema"),
        (lambda d: d["tree"].update(id="0-12"), r"\$\.tree\.id"),
        (lambda d: d["tree"]["children"][0].update(score="high"), "score"),
        (lambda d: d["tree"]["children"][0].pop("other_parents"), "other_parents"),
        (lambda d: d["tree"].update(id="0/13"), "does not match"),
        (lambda d: d["tree"]["children"][0].update(id="5/1290", level=5), "outside the levels"),
        (
            lambda d: d["tree"]["children"][0].update(id="0/1290", level=0, feature=1290),
            "outside the levels",
        ),
    ],
)
def test_invalid_documents_raise_one_clear_error(edit, message):
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    edit(doc)
    with pytest.raises(FormatError, match=message) as info:
        tree_from_json(doc, source="tree.json")
    assert str(info.value).startswith("tree.json: ") and "\n" not in str(info.value)


def test_tree_to_json_needs_dag_attributes():
    T = nx.DiGraph(root="0/0")
    T.add_node((0, 0))
    with pytest.raises(SaegeoError, match="feature_dag"):
        tree_to_json(T)


# --------------------------------------------------------------------------- forests and DAGs


def test_forest_document_validates_and_round_trips(dag):
    table, trees = forest(dag, rank_by="split", min_size=2)
    doc = forest_to_json(dag, trees, rank_by="split")
    validate_forest(doc)
    assert doc["schema"] == "saegeo.feature_forest.v1" and doc["rank_by"] == "split"
    assert [t["tree"]["id"] for t in doc["trees"]] == table["root"].tolist()
    assert all(t["schema"] == "saegeo.feature_tree.v1" for t in doc["trees"])
    back = forest_from_json(json.loads(json.dumps(doc)))
    assert [tree_to_json(T) for T in back] == doc["trees"]
    # Labels (by id or by node) land on every tree's nodes; the document itself is unchanged.
    nodes = {n for T in trees for n in T}
    labels = {node: f"label {node_id(node)}" for node in nodes}
    labelled = forest_to_json(dag, trees, rank_by="split", labels=labels)
    validate_forest(labelled)
    found = [n for t in labelled["trees"] for n in all_nodes(t["tree"])]
    assert len(found) == sum(T.number_of_nodes() for T in trees)
    assert all(n["label"] == f"label {n['id']}" for n in found)
    empty = forest_to_json(dag, [])
    validate_forest(empty)
    assert empty["trees"] == [] and forest_from_json(empty) == []
    bad = copy.deepcopy(doc)
    bad["trees"][0]["tree"].pop("children")
    with pytest.raises(FormatError, match=r"\$\.trees\[0\]\.tree"):
        forest_from_json(bad)


def test_plain_validator_resolves_the_tree_schema_by_id(dag):
    _, trees = forest(dag, rank_by="split", min_size=2)
    doc = json.loads(json.dumps(forest_to_json(dag, trees, rank_by="split")))
    packaged = Path(sg.__file__).parent / "trees"
    forest_file = json.loads((packaged / "feature_forest.v1.schema.json").read_text())
    tree_file = json.loads((packaged / "feature_tree.v1.schema.json").read_text())
    # The embedded copy is the tree schema itself, found by its $id.
    assert forest_file["$defs"]["feature_tree.v1"] == tree_file
    assert forest_file["properties"]["trees"]["items"] == {"$ref": tree_file["$id"]}
    for schema in (forest_file, forest_schema()):
        jsonschema.validate(doc, schema)  # no registry, no network
        bad = copy.deepcopy(doc)
        bad["trees"][0]["tree"]["children"][0]["level"] = "one"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_dag_round_trips_through_node_link_json(dag):
    data = json.loads(json.dumps(dag_to_json(dag)))
    assert {"nodes", "edges", "graph", "directed"} <= set(data)
    assert data["nodes"][0]["id"] == "0/0"
    back = dag_from_json(data)
    assert dict(back.nodes(data=True)) == dict(dag.nodes(data=True))
    assert {(u, v): d for u, v, d in back.edges(data=True)} == {
        (u, v): d for u, v, d in dag.edges(data=True)
    }
    assert back.graph == dag.graph
    with pytest.raises(FormatError, match="node-link"):
        dag_from_json({"nodes": []})
    data["nodes"][0]["id"] = "zero"
    with pytest.raises(FormatError, match="^dag.json: node id 'zero' is not LEVEL/FEATURE"):
        dag_from_json(data, source="dag.json")


def test_read_labels(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"0/1": "dogs", "1/3": "puppies"}))
    assert read_labels(path) == {"0/1": "dogs", "1/3": "puppies"}
    path.write_text(json.dumps({"dogs": "0/1"}))
    with pytest.raises(FormatError, match="labels.json"):
        read_labels(path)
    path.write_text("[1, 2]")
    with pytest.raises(FormatError, match="labels.json"):
        read_labels(path)
    with pytest.raises(SaegeoError, match="missing.json"):
        read_labels(tmp_path / "missing.json")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_family(tmp_path_factory, family_and_acts):
    family, acts = family_and_acts
    root = tmp_path_factory.mktemp("family")
    for level, sae in enumerate(family):
        sg.save_sae(sae, root / f"sae-{level}")
    np.save(root / "acts.npy", acts.read().numpy())
    return root


def test_cli_tree_writes_json_and_html(saved_family, tmp_path, capsys):
    out, page = tmp_path / "tree.json", tmp_path / "tree.html"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0/0": "root feature"}))
    code = main(
        [
            "tree",
            *(str(p) for p in sorted(saved_family.glob("sae-*"))),
            "--root",
            "0/0",
            "--acts",
            str(saved_family / "acts.npy"),
            "--out",
            str(out),
            "--html",
            str(page),
            "--labels",
            str(labels),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    validator(tree_schema()).validate(doc)
    assert doc["tree"]["id"] == "0/0" and doc["tree"]["label"] == "root feature"
    assert "freq" in doc["tree"]
    text = page.read_text()
    assert all(in_page(n["id"], text) for n in all_nodes(doc["tree"]))
    assert "tree 0/0" in capsys.readouterr().out


@pytest.mark.parametrize(("metric", "threshold"), [("nesting", 0.45), ("containment", 0.5)])
def test_cli_tree_nesting_metrics(saved_family, tmp_path, metric, threshold):
    out = tmp_path / "tree.json"
    acts = str(saved_family / "acts.npy")
    args = ["tree", str(saved_family), "--root", "0/0", "--metric", metric, "--acts", acts]
    assert main([*args, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    validator(tree_schema()).validate(doc)
    assert doc["metric"] == metric and doc["threshold"] == threshold
    G = feature_dag(sg.Family.load([str(saved_family)]), metric=metric, acts=acts)
    expected = {f"{level}/{feature}" for level, feature in feature_tree(G, "0/0")}
    assert {n["id"] for n in all_nodes(doc["tree"])} == expected


def test_cli_tree_all_writes_forest(saved_family, tmp_path):
    out, page = tmp_path / "forest.json", tmp_path / "forest.html"
    code = main(
        [
            "tree",
            str(saved_family),
            "--all",
            "--metric",
            "masked_cosine",
            "--acts",
            str(saved_family / "acts.npy"),
            "--rank-by",
            "split",
            "--out",
            str(out),
            "--html",
            str(page),
            "--top",
            "2",
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    validate_forest(doc)
    assert doc["metric"] == "masked_cosine" and doc["threshold"] == 0.6
    assert doc["trees"] and all(len(all_nodes(t["tree"])) >= 2 for t in doc["trees"])
    text = page.read_text()
    assert text.count("<section>") == min(2, len(doc["trees"]))
    assert in_page(doc["trees"][0]["tree"]["id"], text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root", "zero"], "--root"),
        (["--root", "0/999"], "--root 0/999"),
        (["--root", "7/0"], "--root 7/0"),
        (["--root", "0/0", "--metric", "masked_cosine"], "needs activations"),
        (["--root", "0/0", "--metric", "nesting"], "needs activations"),
        (["--root", "0/0", "--metric", "containment"], "needs activations"),
    ],
)
def test_cli_tree_user_errors_are_one_line_exit_2(saved_family, tmp_path, capsys, args, message):
    code = main(["tree", str(saved_family), *args, "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------- property

SCORES = st.floats(-1.0, 1.0, allow_nan=False)


@st.composite
def tree_documents(draw: st.DrawFn) -> dict:
    """Any valid ``saegeo.feature_tree.v1`` document, children in the order it writes them."""
    widths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=4))
    free = [draw(st.permutations(range(width))) for width in widths]
    budget = [draw(st.integers(1, 14))]

    def node(level: int, score: float | None) -> dict:
        feature = free[level].pop()
        budget[0] -= 1
        out: dict = {"id": f"{level}/{feature}", "level": level, "feature": feature}
        out["score"] = score
        out["other_parents"] = (
            [
                [f"{level - 1}/{draw(st.integers(0, widths[level - 1] - 1))}", draw(SCORES)]
                for _ in range(draw(st.integers(0, 2)))
            ]
            if level
            else []
        )
        for key, low in (("freq", 0.0), ("max_act", -1e30), ("log_feature_density", -1e30)):
            if draw(st.booleans()):
                out[key] = draw(st.floats(low, 1e30))
        if draw(st.booleans()):
            out["label"] = draw(st.text(max_size=12))
        if draw(st.booleans()):
            out["neuronpedia"] = f"https://www.neuronpedia.org/gpt2-small/8-res-jb/{feature}"
        n_children = 0
        if level + 1 < len(widths):
            most = min(3, len(free[level + 1]), budget[0])
            n_children = draw(st.integers(0, max(0, most)))
        children = [node(level + 1, draw(SCORES)) for _ in range(n_children)]
        out["children"] = sorted(children, key=lambda c: (-c["score"], c["level"], c["feature"]))
        return out

    return {
        "schema": "saegeo.feature_tree.v1",
        "metric": draw(st.sampled_from(["decoder_cosine", "masked_cosine"])),
        "threshold": draw(st.floats(0.0, 1.0)),
        "levels": [
            {"level": i, "width": w, "source": draw(st.text(min_size=1, max_size=8))}
            for i, w in enumerate(widths)
        ],
        "tree": node(0, None),
    }


@PROPERTY
@given(doc=tree_documents())
def test_property_any_tree_document_round_trips(doc):
    text = json.dumps(doc, allow_nan=False)
    back = tree_from_json(json.loads(text), source="generated")
    assert tree_to_json(back) == doc
    assert json.loads(json.dumps(tree_to_json(back), allow_nan=False)) == doc
