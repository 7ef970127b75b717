"""Output guards: what saegeo recognises as its own outputs, and what it refuses to replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.sae import random_sae

import saegeo as sg
from saegeo.demo.settings import DemoSettings
from saegeo.runtime.outputs import GENERATOR_META, Output, OutputError, check_outputs, output_kind


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    """One output of each kind, written as saegeo writes them, and a few foreign files."""
    made = {
        "table": tmp_path / "t.csv",
        "matches": tmp_path / "m.csv",
        "tree": tmp_path / "t.json",
        "html": tmp_path / "t.html",
        "stitched": tmp_path / "stitched",
        "family": tmp_path / "family",
        "store": tmp_path / "store",
        "demo": tmp_path / "demo",
        "checkpoint": tmp_path / "refit.pt",
    }
    made["table"].write_text("feature,max_cos,nearest,kind\n0,0.5,1,novel\n")
    made["matches"].write_text("pair,a,b,decoder_cos,encoder_cos,shared\n0,3,5,0.9,,True\n")
    made["tree"].write_text(json.dumps({"schema": "saegeo.feature_forest.v1", "trees": []}))
    made["html"].write_text(f"<!DOCTYPE html><html><head>{GENERATOR_META}</head></html>")
    for name in ("stitched", "family", "store", "demo"):
        made[name].mkdir()
    (made["stitched"] / "cfg.json").write_text("{}")
    (made["stitched"] / "report.json").write_text(
        json.dumps({"schema": "saegeo.frankenstein_report.v1"})
    )
    (made["family"] / "family.json").write_text(json.dumps({"format": "saegeo.family.v1"}))
    (made["store"] / "meta.json").write_text(json.dumps({"format": "saegeo.activations.v1"}))
    (made["demo"] / "settings.json").write_text(json.dumps(DemoSettings().as_dict()))
    (made["demo"] / "acts").mkdir()
    made["sae"] = sg.save_sae(random_sae(8, "relu", seed=0), tmp_path / "sae")
    made["checkpoint"].write_bytes(b"PK\x03\x04rest of a zip")
    return made


def test_each_kind_is_recognised(outputs, tmp_path):
    for kind, path in outputs.items():
        assert output_kind(path) == kind, kind
    (tmp_path / "notes.csv").write_text("name,value\n")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something.else"}))
    (tmp_path / "page.html").write_text("<html><head></head></html>")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "thesis.txt").write_text("text")
    for name in ("notes.csv", "other.json", "page.html", "folder"):
        assert output_kind(tmp_path / name) is None, name


def test_previous_outputs_need_force_and_resumed_kinds_do_not(outputs):
    for kind, path in outputs.items():
        out = Output(path, kind)  # type: ignore[arg-type]
        if kind in ("store", "demo", "checkpoint"):
            check_outputs([out])
        else:
            with pytest.raises(OutputError, match="--force"):
                check_outputs([out])
        check_outputs([out], force=True)


def test_foreign_or_mismatched_outputs_are_refused_even_with_force(outputs, tmp_path):
    (tmp_path / "notes.csv").write_text("name,value\n")
    with pytest.raises(OutputError, match="not a saegeo classify table"):
        check_outputs([Output(tmp_path / "notes.csv", "table")], force=True)
    with pytest.raises(OutputError, match="not a saegeo train family"):
        check_outputs([Output(outputs["stitched"], "family")], force=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_outputs([Output(outputs["family"], "table")], force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "empty.csv").write_text("")
    check_outputs([Output(empty, "family"), Output(tmp_path / "empty.csv", "table")])


def test_inputs_and_duplicates(tmp_path):
    acts = tmp_path / "data" / "acts.npy"
    acts.parent.mkdir()
    acts.write_bytes(b"")
    with pytest.raises(OutputError, match="one of the command's inputs"):
        check_outputs([Output(acts, "table")], [acts])
    with pytest.raises(OutputError, match="holds the input"):
        check_outputs([Output(tmp_path / "data", "family")], [acts])
    link = tmp_path / "link.npy"
    link.symlink_to(acts)
    with pytest.raises(OutputError, match="inputs"):
        check_outputs([Output(link, "table")], [acts])
    with pytest.raises(OutputError, match="--html .*same path as --out"):
        check_outputs(
            [Output(tmp_path / "x", "tree"), Output(tmp_path / "." / "x", "html", "--html")]
        )
    check_outputs([Output(tmp_path / "new" / "deeper" / "t.csv", "table")], [acts])


def test_free_space_and_parents(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a directory"):
        check_outputs([Output(tmp_path / "file" / "t.csv", "table")])
    with pytest.raises(OutputError, match="free"):
        check_outputs([Output(tmp_path / "out", "family")], need_bytes=2**62)


def test_the_demo_is_recognised_strictly(outputs, tmp_path):
    from saegeo.runtime.outputs import DEMO_SETTINGS

    assert set(DemoSettings().as_dict()) == DEMO_SETTINGS
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "settings.json").write_text(json.dumps({"multipliers": [1, 2], "lr": 3e-4}))
    assert output_kind(mine) is None
    (mine / "settings.json").write_text(json.dumps(DemoSettings().as_dict()))
    (mine / "results.csv").write_text("mine")
    assert output_kind(mine) is None  # the demo's settings, but beside a file of the user's
    (mine / "results.csv").unlink()
    assert output_kind(mine) == "demo"
