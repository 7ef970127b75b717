"""The command line on inputs the formats refuse (one line, exit 2, nothing blocks) and
``saegeo harvest --for`` on an SAE saved by SAELens 6 or later (its site under metadata)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from helpers.hub import LENS6, LENS6_SITES, FakeHub, install_fake_hub
from helpers.lm import saved_gpt2_and_texts

from saegeo.acts.store import ActivationStore
from saegeo.cli import main


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return install_fake_hub(tmp_path / "hub", monkeypatch)


def test_harvest_for_a_saelens_6_sae(fake_hub, tmp_path, capsys):
    model, model_dir, texts = saved_gpt2_and_texts(tmp_path, n_layers=4)  # block 2 is not the last
    out = tmp_path / "acts"
    hook = LENS6_SITES[1]  # blocks.2.hook_resid_post, context 16, no centring
    args = ["harvest", "--for", f"sae-lens:{LENS6.name}/{hook}", "--model", str(model_dir)]
    args += ["--text", str(texts), "--out", str(out), "--tokens", "30", "--dtype", "float32"]
    args += ["--skip-first", "0", "--model-dtype", "float32", "--compile", "no"]
    assert main(args) == 0, capsys.readouterr().err
    store = ActivationStore.open(out)
    assert store.meta["tl_hook_name"] == hook and store.meta["layer"] == 2
    assert store.meta["context"] == 16 and not store.meta.get("center_writing_weights")
    token_ids = torch.as_tensor(store.token_ids(), dtype=torch.long).reshape(-1, 15)
    input_ids = torch.cat([torch.ones(token_ids.shape[0], 1, dtype=torch.long), token_ids], 1)
    with torch.no_grad():
        hs = model(input_ids=input_ids, output_hidden_states=True).hidden_states[3][:, 1:]
    torch.testing.assert_close(store.read(), hs.reshape(-1, 32)[:30], rtol=1e-5, atol=1e-5)


def test_harvest_for_a_site_of_a_release(fake_hub, tmp_path, capsys):
    # A release of several sites names its sites rather than picking one.
    args = ["harvest", "--for", f"sae-lens:{LENS6.name}", "--out", str(tmp_path / "a")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(site in err[0] for site in LENS6_SITES)


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_harvest_text_that_is_no_regular_file(tmp_path, capsys, kind):
    _, model_dir, _ = saved_gpt2_and_texts(tmp_path)
    texts = tmp_path / "special.txt"
    if kind == "fifo":
        os.mkfifo(texts)
    else:
        texts.symlink_to("/dev/zero")
    args = ["harvest", "--model", str(model_dir), "--text", str(texts), "--layer", "1"]
    args += ["--out", str(tmp_path / "acts"), "--tokens", "30", "--compile", "no"]
    capsys.readouterr()  # the model's saving progress
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(args)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "harvest blocked on the text file"
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == [2] and len(err) == 1 and "not a regular file" in err[0], err
    assert not (tmp_path / "acts").exists()
