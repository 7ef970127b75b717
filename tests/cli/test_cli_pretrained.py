"""The command line on published SAEs: release names, Neuronpedia links, harvest --for."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.hub import FS, FS_HOOK, FS_WIDTHS, FakeHub, install_fake_hub
from helpers.lm import saved_gpt2_and_texts

from saegeo.acts.store import ActivationStore
from saegeo.cli import main


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return install_fake_hub(tmp_path / "hub", monkeypatch)


def test_info_and_classify_take_release_names(fake_hub, tmp_path, capsys):
    assert main(["info", f"sae-lens:{FS.name}"]) == 0
    assert f"widths {list(FS_WIDTHS)}" in capsys.readouterr().out
    out = tmp_path / "table.csv"
    small, large = (f"sae-lens:{FS.name}/{FS_HOOK}_{w}" for w in FS_WIDTHS[:2])
    assert main(["classify", small, large, "--out", str(out)]) == 0
    table = pd.read_csv(out, index_col=0)
    assert table.loc[5, "neuronpedia"] == "https://www.neuronpedia.org/tiny-gpt2/1-res_fs32/5"
    nearest = table.loc[5, "nearest"]
    assert table.loc[5, "nearest_neuronpedia"].endswith(f"/1-res_fs16/{nearest}")


def test_tree_release_json_neuronpedia_and_quick_list(fake_hub, tmp_path, capsys):
    out = tmp_path / "tree.json"
    code = main(
        [
            "tree",
            "--release",
            FS.name,
            "--root",
            "0/0",
            "--threshold",
            "0.2",
            "--out",
            str(out),
            "--html",
            str(tmp_path / "tree.html"),
            "--neuronpedia",
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    root = doc["tree"]
    assert root["neuronpedia"] == "https://www.neuronpedia.org/tiny-gpt2/1-res_fs16/0"
    density = fake_hub.weights[f"{FS_HOOK}_16/sparsity"]["sparsity"][0]
    assert root["log_feature_density"] == pytest.approx(float(density))
    html = (tmp_path / "tree.html").read_text()
    assert "Neuronpedia: %{customdata[8]}" in html
    assert "neuronpedia.org\\u002ftiny-gpt2\\u002f1-res_fs16\\u002f0" in html  # JSON-escaped
    printed = capsys.readouterr().out
    url = next(line for line in printed.splitlines() if line.startswith("Neuronpedia: "))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url.split(" ", 1)[1]).query)
    entries = json.loads(query["features"][0])
    assert entries[0] == {"modelId": "tiny-gpt2", "layer": "1-res_fs16", "index": "0"}
    assert len(entries) == 1 + len(root["children"]) + sum(
        len(c["children"]) for c in root["children"]
    )


def test_tree_needs_paths_or_release(fake_hub, tmp_path, capsys):
    code = main(["tree", "--root", "0/0", "--out", str(tmp_path / "t.json")])
    assert code == 2 and "--release" in capsys.readouterr().err


def test_harvest_for_a_published_sae(fake_hub, tmp_path, capsys):
    model, model_dir, texts = saved_gpt2_and_texts(tmp_path, n_layers=3)
    out = tmp_path / "acts"
    sae = f"sae-lens:{FS.name}/{FS_HOOK}_16"
    args = ["harvest", "--for", sae, "--model", str(model_dir), "--text", str(texts)]
    args += ["--out", str(out), "--tokens", "60", "--dtype", "float32", "--skip-first", "0"]
    args += ["--model-dtype", "float32", "--compile", "no"]
    assert main(args) == 0, capsys.readouterr().err
    store = ActivationStore.open(out)
    # The SAE's site: blocks.1.hook_resid_pre, context 16, centred writing weights.
    assert store.meta["tl_hook_name"] == FS_HOOK and store.meta["layer"] == 0
    assert store.meta["context"] == 16 and store.meta["center_writing_weights"] is True
    token_ids = torch.as_tensor(store.token_ids(), dtype=torch.long).reshape(-1, 15)
    input_ids = torch.cat([torch.ones(token_ids.shape[0], 1, dtype=torch.long), token_ids], 1)
    with torch.no_grad():
        hs = model(input_ids=input_ids, output_hidden_states=True).hidden_states[1][:, 1:]
    expected = (hs - hs.mean(-1, keepdim=True)).reshape(-1, 32)[:60]
    torch.testing.assert_close(store.read(), expected, rtol=1e-5, atol=1e-5)
    assert main(args[:3] + ["--layer", "1", "--out", str(tmp_path / "x")]) == 2
