"""Published releases as current SAELens saves them, and the Hub when it cannot be reached.

Everything runs on a fake Hugging Face cache (``helpers.hub``); the one test that talks to
a Hub talks to a closed port on this machine (``HF_ENDPOINT=http://127.0.0.1:9``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.hub import (
    D_IN,
    FS,
    FS_HOOK,
    LENS6,
    LENS6_SITES,
    MATRYOSHKA_WIDTHS,
    FakeHub,
    install_fake_hub,
)

import saegeo as sg
from saegeo.errors import SaegeoError
from saegeo.formats import hub as hub_module
from saegeo.formats.pretrained import (
    load_family_spec,
    load_pretrained,
    load_sae_spec,
    site_metadata,
)
from saegeo.formats.registry import CANONICAL_L0, Release, get_release
from saegeo.lm.sites import site_for

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return install_fake_hub(tmp_path / "hub", monkeypatch)


def _snapshot(hub: FakeHub, repo_id: str) -> Path:
    return next((hub.cache / f"models--{repo_id.replace('/', '--')}").glob("snapshots/*"))


def _online(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Leave offline mode with every Hub request recorded and refused (the test fails if one
    is made where none should be)."""
    import huggingface_hub

    calls: list[str] = []

    def request(*args: object, **kwargs: object) -> None:
        calls.append(str(args[:2]))
        raise AssertionError(f"unexpected Hub request {args[:2]}")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", request)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", request)
    return calls


# ------------------------------------------------------------------ SAELens >= 6 metadata


def test_site_of_a_saelens_6_config_comes_from_its_metadata(fake_hub: FakeHub):
    hook = LENS6_SITES[0]
    meta = site_metadata(f"sae-lens:{LENS6.name}/{hook}")
    assert meta["hook_name"] == hook and meta["context_size"] == 16
    assert meta["prepend_bos"] is True and meta["model_name"] == "tiny-gpt2"
    assert meta["model_from_pretrained_kwargs"] == {"center_writing_weights": False}
    site = site_for(meta, source="test")
    assert (site.hook_name, site.layer, site.center_writing_weights) == (hook, 0, False)
    # The same config read with its weights says the same.
    sae = load_pretrained(LENS6.name, hook)
    assert sae.metadata["hook_name"] == hook and sae.metadata["context_size"] == 16


def test_matryoshka_widths_from_training_architecture_details(fake_hub: FakeHub):
    hook = LENS6_SITES[1]
    sae = load_pretrained(LENS6.name, hook)
    assert sae.metadata["matryoshka_widths"] == list(MATRYOSHKA_WIDTHS)
    fam = sg.Family.from_pretrained(LENS6.name, site=hook)
    assert fam.widths == list(MATRYOSHKA_WIDTHS)
    assert load_family_spec(f"sae-lens:{LENS6.name}/{hook}").widths == list(MATRYOSHKA_WIDTHS)


def test_matryoshka_saved_by_saelens_reads_as_its_prefixes(tmp_path: Path):
    pytest.importorskip("sae_lens")
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    config = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=8, d_sae=24, k=4.0, matryoshka_widths=[4, 12, 24]
    )
    MatryoshkaBatchTopKTrainingSAE(config).save_inference_model(tmp_path / "m")
    assert sg.load_sae(tmp_path / "m").metadata["matryoshka_widths"] == [4, 12, 24]
    assert sg.Family.load([tmp_path / "m"]).widths == [4, 12, 24]


# ------------------------------------------------------------------ default families


def test_a_release_of_several_sites_is_refused_before_fetching(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
):
    _online(monkeypatch)
    monkeypatch.setattr(hub_module, "fetch", lambda *a, **k: pytest.fail("fetched a file"))
    with pytest.raises(SaegeoError) as info:
        sg.Family.from_pretrained(LENS6.name)
    message = str(info.value)
    assert all(site in message for site in LENS6_SITES) and "site=" in message
    with pytest.raises(SaegeoError, match="no site 'blocks.9.hook_resid_post'"):
        sg.Family.from_pretrained(LENS6.name, site="blocks.9.hook_resid_post")
    # A site with one SAE names it; a site with several names a family.
    assert load_sae_spec(f"sae-lens:{LENS6.name}/{LENS6_SITES[0]}").width == 48
    with pytest.raises(SaegeoError, match="names a whole release or site"):
        load_sae_spec(f"sae-lens:{FS.name}/{FS_HOOK}")


def _gemma_like(ids: list[str]) -> Release:
    return Release(
        name="gemma-like",
        repo_id="org/gemma-like",
        model="m",
        conversion_func="gemma_2",
        saes={i: i for i in ids},
    )


def test_gemma_scope_family_is_one_canonical_sae_per_width():
    ids = [
        f"layer_{layer}/width_{width}/average_l0_{l0}"
        for layer in (3, 12)
        for width, l0s in (("16k", (22, 82, 176)), ("65k", (118, 61)), ("1m", (101, 99)))
        for l0 in l0s
    ]
    release = _gemma_like(["embedding/width_4k/average_l0_6", *ids])
    with pytest.raises(SaegeoError, match="3 sites \\(embedding, layer_3, layer_12\\)"):
        release.family_ids()
    assert release.family_ids("layer_12") == [
        "layer_12/width_16k/average_l0_82",
        "layer_12/width_65k/average_l0_118",
        "layer_12/width_1m/average_l0_99",  # a tie at distance 1 goes to the sparser
    ]


def test_canonical_choice_equals_saelens_canonical_release():
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    ours = Release(
        name="gemma-scope-2b-pt-res",
        repo_id="google/gemma-scope-2b-pt-res",
        model="gemma-2-2b",
        conversion_func="gemma_2",
        saes=dict(directory["gemma-scope-2b-pt-res"].saes_map),
    )
    canonical = set(directory["gemma-scope-2b-pt-res-canonical"].saes_map.values())
    checked = 0
    for site in ours.sites():
        for sae_id in ours.family_ids(site):
            width_folder = sae_id.rsplit("/", 1)[0]
            theirs = [p for p in canonical if p.rsplit("/", 1)[0] == width_folder]
            if theirs:
                assert theirs == [sae_id], (sae_id, CANONICAL_L0)
                checked += 1
    assert checked >= 50


def test_registry_gemma_scope_needs_a_layer():
    release = get_release("gemma-scope-2b-pt-res")
    if release is None:
        pytest.skip("no registry holds gemma-scope-2b-pt-res")
    with pytest.raises(SaegeoError, match="layer_12"):
        sg.Family.from_pretrained("gemma-scope-2b-pt-res")
    widths = [sae_id.split("/")[1] for sae_id in release.family_ids("layer_12")]
    assert widths == sorted(set(widths), key=widths.index)  # one per width


# ------------------------------------------------------------------ the Hub


def test_a_complete_folder_is_read_without_asking_the_hub(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
):
    snapshot = _snapshot(fake_hub, FS.repo)
    (snapshot / f"{FS_HOOK}_32" / "sparsity.safetensors").unlink()
    calls = _online(monkeypatch)
    sae = load_pretrained(FS.name, f"{FS_HOOK}_32")
    assert sae.width == 32 and "log_feature_density" not in sae.metadata and calls == []


def test_the_sparsity_file_is_asked_for_with_the_weights(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
):
    import huggingface_hub

    snapshot = _snapshot(fake_hub, FS.repo)
    folder = snapshot / f"{FS_HOOK}_32"
    kept = {name: (folder / name).read_bytes() for name in ("sae_weights.safetensors",)}
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        (folder / name).unlink()
    asked: list[str] = []

    def download(repo_id: str, filename: str, *, cache_dir: str) -> str:
        asked.append(filename)
        name = filename.rsplit("/", 1)[1]
        if name not in kept:
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not found")
        (folder / name).write_bytes(kept[name])
        return str(folder / name)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert load_pretrained(FS.name, f"{FS_HOOK}_32").width == 32
    assert asked == [f"{FS_HOOK}_32/sae_weights.safetensors", f"{FS_HOOK}_32/sparsity.safetensors"]


def test_an_unreachable_hub_is_one_line_within_seconds(fake_hub: FakeHub, tmp_path: Path):
    # A fresh interpreter, so that huggingface_hub reads HF_ENDPOINT (a closed local port).
    script = textwrap.dedent(
        f"""
        import time
        from saegeo.errors import SaegeoError
        from saegeo.formats.pretrained import load_pretrained
        start = time.perf_counter()
        try:
            load_pretrained(repo_id="test-org/absent", folder="f")
        except SaegeoError as exc:
            print("ERROR", exc)
        print("SECONDS", time.perf_counter() - start)
        # Cached files need no request at all.
        print("CACHED", load_pretrained(repo_id={FS.repo!r}, folder={FS_HOOK + "_16"!r}).width)
        """
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_CACHE": str(fake_hub.cache),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout.splitlines()
    error = next(line for line in out if line.startswith("ERROR"))
    assert "cannot reach the Hugging Face Hub" in error and "hf download test-org/absent" in error
    assert "HF_HUB_OFFLINE=1" in error
    assert "CACHED 16" in out, done.stdout + done.stderr
    assert float(next(line for line in out if line.startswith("SECONDS")).split()[1]) < 5
    assert "Retrying" not in done.stderr and done.stderr.count("\n") <= 1, done.stderr


@pytest.mark.parametrize("spec", ["hf:../..", "hf:org/../x", "hf:org/name/../../etc", "hf:-a/b"])
def test_repository_names_that_are_no_repository(fake_hub: FakeHub, spec: str):
    with pytest.raises(SaegeoError) as info:
        load_sae_spec(spec)
    assert "\n" not in str(info.value)


def test_cli_hf_dotdot_is_one_line(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]):
    from saegeo.cli import main

    assert main(["info", "hf:../.."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a Hugging Face repository id" in err[0]


def test_offline_missing_file_names_hf_download(fake_hub: FakeHub):
    snapshot = _snapshot(fake_hub, FS.repo)
    (snapshot / f"{FS_HOOK}_16" / "sae_weights.safetensors").unlink()
    with pytest.raises(SaegeoError) as info:
        load_pretrained(FS.name, f"{FS_HOOK}_16")
    assert f"`hf download {FS.repo} {FS_HOOK}_16/sae_weights.safetensors`" in str(info.value)
    assert "huggingface-cli" not in str(info.value)


def test_decoder_geometry_of_a_release_equals_its_files(fake_hub: FakeHub):
    weights = fake_hub.weights[f"lens6/{LENS6_SITES[0]}"]
    sae = load_pretrained(LENS6.name, LENS6_SITES[0])
    torch.testing.assert_close(sae.W_dec, weights["W_dec"])
    assert sae.d_in == D_IN
