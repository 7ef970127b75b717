"""Formats: SAELens (checked against SAELens), dictionary_learning, sparsify, bad input."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from helpers.sae import gaussian_sae
from helpers.saelens import make_lens_sae
from sae_lens import SAE as LensSAE
from safetensors.torch import save_file

import saegeo as sg
from saegeo.errors import FormatError, SaegeoError, ShapeError

LENS_CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
    ("topk", {"k": 5}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("matching_pursuit", {"residual_threshold": 0.0, "max_iterations": 6}),
    ("matching_pursuit", {}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("jumprelu", {"normalize_activations": "layer_norm"}),
    ("standard", {"normalize_activations": "expected_average_only_in"}),
]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "cfg"), LENS_CASES)
def test_saelens_roundtrip_matches_saelens(tmp_path, arch, cfg):
    lens = make_lens_sae(arch, **cfg)
    lens.save_model(tmp_path / "lens")
    x = torch.randn(64, lens.cfg.d_in) * 2
    expected_acts = lens.encode(x).detach()
    expected_out = lens(x).detach()

    ours = sg.load_sae(tmp_path / "lens")
    acts = ours.encode(x)
    assert_close(acts, expected_acts)
    assert_close(ours.forward(x), expected_out)

    # Written by saegeo, read by SAELens: same function.
    sg.save_sae(ours, tmp_path / "ours")
    back = LensSAE.load_from_disk(tmp_path / "ours")
    assert_close(back.encode(x).detach(), expected_acts)
    assert_close(back(x).detach(), expected_out)
    assert_close(sg.load_sae(tmp_path / "ours").forward(x), expected_out)


def test_matryoshka_widths_survive(tmp_path):
    lens = make_lens_sae("jumprelu", d_sae=48)
    lens.cfg.metadata.matryoshka_widths = [12, 24, 48]
    lens.save_model(tmp_path / "m")
    sae = sg.load_sae(tmp_path / "m")
    assert sae.metadata["matryoshka_widths"] == [12, 24, 48]
    sg.save_sae(sae, tmp_path / "again")
    again = sg.load_sae(tmp_path / "again")
    assert again.metadata["matryoshka_widths"] == [12, 24, 48]
    # Where an SAE was read from is not written with it; loading sets it anew.
    saved = json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"]
    assert "source" not in saved and again.metadata["source"] == str(tmp_path / "again")
    family = sg.Family.load(tmp_path / "m")
    assert family.widths == [12, 24, 48]
    x = torch.randn(8, sae.d_in)
    assert_close(family[0].encode(x), sae.encode(x)[:, :12])


def test_pre_6_topk_config(tmp_path):
    lens = make_lens_sae("standard")
    lens.save_model(tmp_path / "old")
    cfg = json.loads((tmp_path / "old/cfg.json").read_text())
    cfg.pop("metadata")
    cfg.update(architecture="standard", activation_fn_str="topk", activation_fn_kwargs={"k": 3})
    (tmp_path / "old/cfg.json").write_text(json.dumps(cfg))
    sae = sg.load_sae(tmp_path / "old")
    assert sae.arch == "topk" and sae.k == 3
    assert int((sae.encode(torch.randn(4, 16)) > 0).sum(-1).max()) <= 3


# ----------------------------------------------------------------- dictionary_learning


def _dl_dir(tmp_path, state, dict_class, **trainer):
    path = tmp_path / dict_class
    path.mkdir()
    torch.save(state, path / "ae.pt")
    (path / "config.json").write_text(
        json.dumps({"trainer": {"dict_class": dict_class, **trainer}})
    )
    return path


def test_dictionary_learning_autoencoder(tmp_path):
    D, F = 8, 20
    enc, dec = torch.nn.Linear(D, F), torch.nn.Linear(F, D, bias=False)
    bias = torch.randn(D)
    state = {
        "bias": bias,
        "encoder.weight": enc.weight.data,
        "encoder.bias": enc.bias.data,
        "decoder.weight": dec.weight.data,
    }
    sae = sg.load_sae(_dl_dir(tmp_path, state, "AutoEncoder"))
    x = torch.randn(16, D)
    f = torch.relu(enc(x - bias)).detach()
    assert_close(sae.encode(x), f)
    assert_close(sae.forward(x), (dec(f) + bias).detach())


def test_dictionary_learning_topk_and_batchtopk(tmp_path):
    D, F, k = 8, 20, 4
    enc, dec = torch.nn.Linear(D, F), torch.nn.Linear(F, D, bias=False)
    b_dec = torch.randn(D) * 0.1
    state = {
        "encoder.weight": enc.weight.data,
        "encoder.bias": enc.bias.data,
        "decoder.weight": dec.weight.data,
        "b_dec": b_dec,
        "k": torch.tensor(k),
        "threshold": torch.tensor(0.2),
    }
    x = torch.randn(16, D)
    post_relu = torch.relu(enc(x - b_dec)).detach()
    topk = sg.load_sae(_dl_dir(tmp_path, state, "AutoEncoderTopK"))
    top = post_relu.topk(k, dim=-1)
    assert_close(topk.encode(x), torch.zeros_like(post_relu).scatter(-1, top.indices, top.values))
    batch = sg.load_sae(_dl_dir(tmp_path, state, "BatchTopKSAE"))
    assert batch.arch == "jumprelu"
    assert_close(batch.encode(x), post_relu * (post_relu > 0.2))


def test_dictionary_learning_jumprelu_norm_folding(tmp_path):
    D, F = 8, 20
    W_enc, W_dec = torch.randn(D, F), torch.randn(F, D) * 3
    b_enc, b_dec, threshold = torch.randn(F) * 0.1, torch.randn(D), torch.rand(F) * 0.3
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold}
    sae = sg.load_sae(_dl_dir(tmp_path, state, "JumpReluAutoEncoder"))
    x = torch.randn(16, D)
    pre = x @ W_enc + b_enc
    f = torch.relu(pre * (pre > threshold)) * W_dec.norm(dim=1)
    assert_close(sae.encode(x), f)
    assert_close(sae.forward(x), (f / W_dec.norm(dim=1)) @ W_dec + b_dec)


def test_dictionary_learning_matryoshka(tmp_path):
    D, F = 8, 24
    state = {
        "W_enc": torch.randn(D, F),
        "b_enc": torch.randn(F) * 0.1,
        "W_dec": torch.randn(F, D),
        "b_dec": torch.randn(D),
        "k": torch.tensor(4),
        "threshold": torch.tensor(0.3),
        "group_sizes": torch.tensor([6, 6, 12]),
    }
    sae = sg.load_sae(_dl_dir(tmp_path, state, "MatryoshkaBatchTopKSAE"))
    assert sae.metadata["matryoshka_widths"] == [6, 12, 24]
    x = torch.randn(16, D)
    post = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    assert_close(sae.encode(x), post * (post > 0.3))


def test_dictionary_learning_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil"
    path.mkdir()

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(path / "ae.pt", "wb") as f:
        pickle.dump({"encoder.weight": Payload()}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refusal is the one error, with no warning beside it
        with pytest.raises(FormatError, match="weights_only"):
            sg.load_sae(path)


# ----------------------------------------------------------------- sparsify


def test_sparsify_layout(tmp_path):
    D, F, k = 8, 20, 3
    path = tmp_path / "layers.3"
    path.mkdir()
    enc = torch.nn.Linear(D, F)
    W_dec, b_dec = torch.randn(F, D), torch.randn(D) * 0.1
    save_file(
        {
            "encoder.weight": enc.weight.data.contiguous(),
            "encoder.bias": enc.bias.data,
            "W_dec": W_dec,
            "b_dec": b_dec,
        },
        str(path / "sae.safetensors"),
    )
    (path / "cfg.json").write_text(
        json.dumps({"k": k, "num_latents": F, "d_in": D, "expansion_factor": 0})
    )
    sae = sg.load_sae(path)
    x = torch.randn(16, D)
    pre = torch.relu(enc(x - b_dec)).detach()
    top = pre.topk(k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    assert_close(sae.encode(x), acts)
    assert_close(sae.forward(x), acts @ W_dec + b_dec)


# ----------------------------------------------------------------- bad input


@pytest.fixture
def lens_dir(tmp_path):
    make_lens_sae("standard").save_model(tmp_path / "sae")
    return tmp_path / "sae"


def test_missing_cfg(lens_dir):
    (lens_dir / "cfg.json").unlink()
    with pytest.raises(SaegeoError):
        sg.load_sae(lens_dir)


def test_corrupt_cfg(lens_dir):
    (lens_dir / "cfg.json").write_text("{not json")
    with pytest.raises(FormatError, match="cfg.json"):
        sg.load_sae(lens_dir)


def test_truncated_safetensors(lens_dir):
    weights = lens_dir / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FormatError, match="sae_weights.safetensors"):
        sg.load_sae(lens_dir)


def test_wrong_shapes(lens_dir):
    cfg = json.loads((lens_dir / "cfg.json").read_text())
    save_file(
        {
            "W_enc": torch.randn(16, 48),
            "b_enc": torch.randn(47),
            "W_dec": torch.randn(48, 16),
            "b_dec": torch.randn(16),
        },
        str(lens_dir / "sae_weights.safetensors"),
    )
    (lens_dir / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeError, match="b_enc"):
        sg.load_sae(lens_dir)


def test_nan_weights(lens_dir):
    W_dec = torch.randn(48, 16)
    W_dec[3, 2] = float("nan")
    save_file(
        {
            "W_enc": torch.randn(16, 48),
            "b_enc": torch.randn(48),
            "W_dec": W_dec,
            "b_dec": torch.randn(16),
        },
        str(lens_dir / "sae_weights.safetensors"),
    )
    with pytest.raises(SaegeoError, match="NaN"):
        sg.load_sae(lens_dir)


def test_unknown_architecture(lens_dir):
    cfg = json.loads((lens_dir / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (lens_dir / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaegeoError, match="unsupported architecture 'gated'"):
        sg.load_sae(lens_dir)


def test_failed_save_leaves_no_partial_output(tmp_path, monkeypatch):
    sae = sg.load_sae(sg.save_sae(gaussian_sae(4, 6), tmp_path / "first"))
    import saegeo.formats.saelens as saelens_format

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saelens_format, "save_file", explode)
    with pytest.raises(RuntimeError):
        sg.save_sae(sae, tmp_path / "second")
    with pytest.raises(RuntimeError):
        sg.save_sae(sae, tmp_path / "first", overwrite=True)
    assert not (tmp_path / "second").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
    sg.load_sae(tmp_path / "first")  # the earlier output is intact
