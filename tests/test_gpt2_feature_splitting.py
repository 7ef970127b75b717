"""analyses/gpt2_feature_splitting.py end to end on the fake cache, a tiny GPT-2 as GPT-2."""

from __future__ import annotations

import runpy
from pathlib import Path

import pandas as pd
from helpers.hub import FS, FS_WIDTHS, install_fake_hub
from helpers.lm import random_texts, tiny_gpt2

from saegeo.acts.store import ActivationStore

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "gpt2_feature_splitting.py"


def test_gpt2_feature_splitting_runs_on_a_stand_in(tmp_path, monkeypatch, capsys):
    install_fake_hub(tmp_path / "hub", monkeypatch)
    model, tokenizer = tiny_gpt2(n_layers=3)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(random_texts(60)) + "\n")
    out = tmp_path / "out"
    script = runpy.run_path(str(SCRIPT), run_name="gpt2_feature_splitting")
    script["main"](
        [
            "--release",
            FS.name,
            "--model",
            str(tmp_path / "model"),
            "--text",
            str(texts),
            "--tokens",
            "300",
            "--upto",
            "32",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "ours | published" in printed and "about 35%" in printed
    acts = ActivationStore.open(out / "acts")
    assert acts.n_tokens == 300 and acts.meta["tl_hook_name"] == "blocks.1.hook_resid_pre"
    assert acts.meta["center_writing_weights"] is True and acts.meta["context"] == 16
    saes = pd.read_csv(out / "saes.csv")
    assert list(saes["width"]) == list(FS_WIDTHS) and list(saes["published_width"]) == [
        768,
        1536,
        3072,
    ]
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 2 and pairs.loc[0, "published_novel_decreases"] == 628
    cells = ["novel_decreases", "novel_does_not_decrease"]
    cells += ["reconstruction_decreases", "reconstruction_does_not_decrease"]
    assert (pairs[cells].sum(axis=1) == pairs["large_width"]).all()
    assert (pairs["n_novel"] == pairs["novel_decreases"] + pairs["novel_does_not_decrease"]).all()
    stitched = pd.read_csv(out / "frankenstein.csv")
    assert list(stitched["width"]) == [16, 32]
    assert stitched.loc[1, "published_n_features"] == 1425
    assert stitched.loc[1, "n_features"] == 16 + stitched.loc[1, "added"]
    assert stitched["mse_after"].notna().all()
