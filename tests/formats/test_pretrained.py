"""Published SAEs by release name, from a fake Hugging Face cache, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.hub import (
    D_IN,
    DL,
    FS,
    FS_HOOK,
    FS_WIDTHS,
    GEMMA,
    MATRYOSHKA,
    MATRYOSHKA_WIDTHS,
    FakeHub,
    install_fake_hub,
    pre6_cfg,
)

import saegeo as sg
from saegeo.core.feature_info import log_feature_density, neuronpedia_url
from saegeo.errors import SaegeoError
from saegeo.formats import registry
from saegeo.formats.pretrained import (
    family_from_pretrained,
    load_family_spec,
    load_pretrained,
    load_sae_spec,
    parse_spec,
)
from saegeo.formats.saelens_config import is_pre_6, upgrade_config

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*model_from_pretrained_kwargs:UserWarning")


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return install_fake_hub(tmp_path / "hub", monkeypatch)


def _lens(release: str, sae_id: str):  # type: ignore[no-untyped-def]
    pytest.importorskip("sae_lens")
    from sae_lens import SAE as LensSAE

    return LensSAE.from_pretrained(release, sae_id, device="cpu")


@pytest.mark.parametrize("use_sae_lens", [True, False])
def test_saelens_release_loads_and_encodes_as_saelens(fake_hub: FakeHub, use_sae_lens: bool):
    x_BD = torch.randn(64, D_IN) * 2
    for width in FS_WIDTHS:
        sae_id = f"{FS_HOOK}_{width}"
        sae = load_pretrained(FS.name, sae_id, use_sae_lens=use_sae_lens)
        lens = _lens(FS.name, sae_id)
        assert sae.width == width and sae.arch == "relu"
        torch.testing.assert_close(sae.encode(x_BD), lens.encode(x_BD))
        torch.testing.assert_close(sae.forward(x_BD), lens.decode(lens.encode(x_BD)))
        meta = sae.metadata
        assert meta["hook_name"] == FS_HOOK == lens.cfg.metadata.hook_name
        assert meta["model_name"] == "tiny-gpt2"
        assert meta["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
        assert meta["neuronpedia_id"] == lens.cfg.metadata.neuronpedia_id
        assert meta["release"] == FS.name and meta["sae_id"] == sae_id
        assert meta["registry"] == ("sae_lens" if use_sae_lens else "saegeo")
        expected = fake_hub.weights[f"{sae_id}/sparsity"]["sparsity"]
        torch.testing.assert_close(torch.as_tensor(log_feature_density(sae)).float(), expected)
        assert neuronpedia_url(sae, 3) == (
            f"https://www.neuronpedia.org/tiny-gpt2/1-res_fs{width}/3"
        )


def test_family_from_pretrained_takes_the_site_sorted_by_width(fake_hub: FakeHub):
    fam = sg.Family.from_pretrained(FS.name)
    assert fam.widths == list(FS_WIDTHS)
    assert fam.names == [f"1-res_fs{w}" for w in FS_WIDTHS]
    two = family_from_pretrained(FS.name, [f"{FS_HOOK}_64", f"{FS_HOOK}_16"])
    assert two.widths == [16, 64]


def test_only_the_saes_asked_for_are_read(fake_hub: FakeHub):
    # Removing another SAE's weights changes nothing: its files are never opened.
    snapshot = next((fake_hub.cache / f"models--{FS.repo.replace('/', '--')}").glob("snapshots/*"))
    (snapshot / f"{FS_HOOK}_64" / "sae_weights.safetensors").unlink()
    sae = load_pretrained(FS.name, f"{FS_HOOK}_16")
    assert sae.width == 16
    with pytest.raises(SaegeoError) as err:
        load_pretrained(FS.name, f"{FS_HOOK}_64")
    message = str(err.value)
    assert FS.name in message and f"{FS_HOOK}_64" in message
    assert "sae_weights.safetensors" in message
    assert f"`hf download {FS.repo} {FS_HOOK}_64/sae_weights.safetensors`" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_missing_sparsity_file_is_optional(fake_hub: FakeHub):
    snapshot = next((fake_hub.cache / f"models--{FS.repo.replace('/', '--')}").glob("snapshots/*"))
    (snapshot / f"{FS_HOOK}_32" / "sparsity.safetensors").unlink()
    sae = load_pretrained(FS.name, f"{FS_HOOK}_32")
    assert log_feature_density(sae) is None


def test_unknown_release_and_id_are_clear_errors(fake_hub: FakeHub):
    with pytest.raises(SaegeoError, match="not in the release registry"):
        load_pretrained("no-such-release", "x")
    with pytest.raises(SaegeoError, match="no SAE id 'nope'"):
        load_pretrained(FS.name, "nope")
    with pytest.raises(SaegeoError, match="none of cfg.json .* is in the cache"):
        load_pretrained(repo_id="test-org/absent", folder="f")


def test_repo_id_and_folder_load_without_a_registry(fake_hub: FakeHub):
    sae = load_pretrained(repo_id=FS.repo, folder=f"{FS_HOOK}_32")
    same = load_pretrained(FS.name, f"{FS_HOOK}_32")
    torch.testing.assert_close(sae.W_enc, same.W_enc)
    assert "neuronpedia_id" not in sae.metadata
    assert load_sae_spec(f"hf:{FS.repo}/{FS_HOOK}_32").width == 32
    # A repository id in place of a release, with the folder as SAE id, as SAELens accepts.
    assert load_pretrained(FS.repo, f"{FS_HOOK}_16").width == 16


def test_gemma_scope_params_npz(fake_hub: FakeHub):
    folder = "layer_1/width_16/average_l0_5"
    sae = load_pretrained(GEMMA.name, folder)
    weights = fake_hub.weights[folder]
    assert sae.arch == "jumprelu" and not sae.apply_b_dec_to_input
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert sae.metadata["model_name"] == "gemma-2-2b"
    x_BD = torch.randn(50, D_IN)
    pre_BF = x_BD @ weights["W_enc"] + weights["b_enc"]
    expected_BF = pre_BF * (pre_BF > weights["threshold"])
    torch.testing.assert_close(sae.encode(x_BD), expected_BF.relu())
    torch.testing.assert_close(
        sae.decode(expected_BF), expected_BF @ weights["W_dec"] + weights["b_dec"]
    )
    # The same folder on disk reads the same way through load_sae.
    snapshot = next(
        (fake_hub.cache / f"models--{GEMMA.repo.replace('/', '--')}").glob("snapshots/*")
    )
    local = sg.load_sae(snapshot / folder)
    torch.testing.assert_close(local.encode(x_BD), sae.encode(x_BD))
    assert sg.Family.from_pretrained(GEMMA.name).widths == [16, 32]


def test_dictionary_learning_release_encodes_as_saelens(fake_hub: FakeHub):
    sae_id = "blocks.1.hook_resid_post__trainer_0"
    sae = load_pretrained(DL.name, sae_id)
    lens = _lens(DL.name, sae_id)
    x_BD = torch.randn(40, D_IN)
    assert sae.arch == "topk" and sae.k == 4
    torch.testing.assert_close(sae.encode(x_BD), lens.encode(x_BD))
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post" == lens.cfg.metadata.hook_name
    assert sae.metadata["model_name"] == "gemma-2-2b" and sae.metadata["context_size"] == 128
    assert sae.name == "1-tiny-topk__trainer_0"


def test_family_spec_mixes_releases_and_paths(fake_hub: FakeHub, tmp_path: Path):
    local = sg.save_sae(load_pretrained(FS.name, f"{FS_HOOK}_16"), tmp_path / "local")
    fam = load_family_spec([str(local), f"sae-lens:{FS.name}/{FS_HOOK}_64"])
    assert fam.widths == [16, 64]
    assert load_family_spec(f"sae-lens:{FS.name}").widths == list(FS_WIDTHS)
    with pytest.raises(SaegeoError, match="whole release"):
        load_sae_spec(f"sae-lens:{FS.name}")


def test_select_keeps_density_and_neuronpedia_only_where_they_apply(fake_hub: FakeHub):
    sae = load_pretrained(FS.name, f"{FS_HOOK}_32")
    density = log_feature_density(sae)
    assert density is not None
    prefix = sae.select(range(8))
    assert neuronpedia_url(prefix, 7) == neuronpedia_url(sae, 7)
    torch.testing.assert_close(
        torch.as_tensor(log_feature_density(prefix)), torch.as_tensor(density[:8])
    )
    picked = sae.select([5, 2])
    assert neuronpedia_url(picked, 0) is None
    assert list(log_feature_density(picked)) == [density[5], density[2]]


def test_parse_spec():
    assert parse_spec("sae-lens:rel/a/b") == parse_spec("sae-lens:rel/a/b")
    assert parse_spec("sae-lens:rel").sae_id is None
    assert parse_spec("runs/family").path == "runs/family"
    with pytest.raises(SaegeoError, match="ORG/NAME"):
        parse_spec("hf:onlyorg")


def test_pre_6_config_upgrade_matches_saelens():
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_sae_loaders import handle_pre_6_0_config

    cfg = pre6_cfg(64)
    assert is_pre_6(cfg) and not is_pre_6({"metadata": {"sae_lens_version": "6.0.0-rc.1"}})
    ours, lens = upgrade_config(cfg), handle_pre_6_0_config(dict(cfg))
    assert ours["hook_name"] == lens["metadata"]["hook_name"] == FS_HOOK
    for key in ("d_sae", "d_in", "apply_b_dec_to_input", "normalize_activations", "architecture"):
        assert ours[key] == lens[key], key
    topk = upgrade_config({**cfg, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 7}})
    assert topk["architecture"] == "topk" and topk["k"] == 7
    no_width = upgrade_config({key: v for key, v in cfg.items() if key != "d_sae"})
    assert no_width["d_sae"] == D_IN * 2
    assert upgrade_config({**cfg, "normalize_activations": True})["normalize_activations"] == (
        "expected_average_only_in"
    )


def test_bundled_table_matches_saelens_registry():
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lens = get_pretrained_saes_directory()
    for name, ours in registry.bundled_releases().items():
        theirs = lens[name]
        assert ours.repo_id == theirs.repo_id and ours.model == theirs.model
        assert ours.conversion_func == theirs.conversion_func
        assert ours.config_overrides == (theirs.config_overrides or {})
        for sae_id, path in ours.saes.items():
            assert theirs.saes_map[sae_id] == path
            assert ours.neuronpedia.get(sae_id) == theirs.neuronpedia_id.get(sae_id)
    fs = registry.bundled_releases()["gpt2-small-res-jb-feature-splitting"]
    assert len(fs.family_ids()) == 8


def test_online_fetches_only_the_missing_files_of_the_sae_asked_for(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    snapshot = next((fake_hub.cache / f"models--{FS.repo.replace('/', '--')}").glob("snapshots/*"))
    weights = snapshot / f"{FS_HOOK}_32" / "sae_weights.safetensors"
    kept = weights.read_bytes()
    weights.unlink()
    calls: list[tuple[str, str, str]] = []

    def download(repo_id: str, filename: str, *, cache_dir: str) -> str:
        calls.append((repo_id, filename, cache_dir))
        weights.write_bytes(kept)  # what a download would have put in the cache
        return str(weights)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    sae = load_pretrained(FS.name, f"{FS_HOOK}_32")
    assert sae.width == 32
    assert calls == [(FS.repo, f"{FS_HOOK}_32/sae_weights.safetensors", str(fake_hub.cache))]

    def unreachable(repo_id: str, filename: str, *, cache_dir: str) -> str:
        raise LocalEntryNotFoundError("connection refused")

    weights.unlink()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(SaegeoError, match="cannot reach the Hugging Face Hub"):
        load_pretrained(FS.name, f"{FS_HOOK}_32")


def test_matryoshka_release_is_a_family_of_prefixes(fake_hub: FakeHub):
    sae_id = "blocks.2.hook_resid_post"
    sae = load_pretrained(MATRYOSHKA.name, sae_id)
    lens = _lens(MATRYOSHKA.name, sae_id)
    x_BD = torch.randn(30, D_IN)
    assert sae.arch == "jumprelu" and sae.metadata["hook_name"] == sae_id
    torch.testing.assert_close(sae.encode(x_BD), lens.encode(x_BD))
    fam = sg.Family.from_pretrained(MATRYOSHKA.name)
    assert fam.widths == list(MATRYOSHKA_WIDTHS)
    torch.testing.assert_close(fam[0].W_dec, sae.W_dec[: MATRYOSHKA_WIDTHS[0]])


def test_cache_dir_follows_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path):
    from saegeo.formats.hub import cache_dir, fetch, offline

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "hub" and not offline()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert cache_dir() == tmp_path / "hub" and offline()
    with pytest.raises(SaegeoError, match="f/cfg.json of test-org/absent is not in the cache"):
        fetch("test-org/absent", "f/cfg.json", what="test")
