"""A fake Hugging Face cache on disk holding small published-style SAEs in every layout.

The layout is huggingface_hub's: ``models--ORG--NAME/refs/main`` holds a commit hash and
``models--ORG--NAME/snapshots/<hash>/<path>`` the files. One repository stores its files as
blobs linked from the snapshot, as ``hf_hub_download`` does; the others as plain files in the
snapshot, which huggingface_hub reads the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeRelease(NamedTuple):
    """A release of the fake hub: the Hugging Face repository that holds it, and its name in
    SAELens's release table."""

    repo: str
    name: str


FS = FakeRelease("test-org/tiny-feature-splitting", "tiny-res-feature-splitting")
GEMMA = FakeRelease("test-org/gemma-scope-2b-pt-res", "tiny-gemma-scope-res")
DL = FakeRelease("test-org/saebench_tiny", "tiny-saebench-topk")
MATRYOSHKA = FakeRelease("test-org/tiny-matryoshka", "tiny-res-matryoshka")
LENS6 = FakeRelease("test-org/tiny-matryoshka-6x", "tiny-res-matryoshka-6x")
FS_HOOK = "blocks.1.hook_resid_pre"
FS_WIDTHS = (16, 32, 64)
MATRYOSHKA_WIDTHS = (8, 24, 48)
LENS6_SITES = ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_post")
D_IN = 32


@dataclass
class FakeHub:
    """Where the fake cache lies and the releases it holds (SAELens registry entries)."""

    cache: Path
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _write(cache: Path, repo_id: str, filename: str, data: bytes, *, blobs: bool) -> None:
    repo = _repo_dir(cache, repo_id)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    if not blobs:
        target.write_bytes(data)
        return
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    target.symlink_to(os.path.relpath(blob, target.parent))


def _safetensors_bytes(tensors: dict[str, torch.Tensor], tmp: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _relu_weights(width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(D_IN, width, generator=generator) / D_IN**0.5,
        "b_enc": torch.randn(width, generator=generator) * 0.1,
        "W_dec": torch.randn(width, D_IN, generator=generator) / D_IN**0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.1,
    }


def pre6_cfg(width: int, *, with_d_sae: bool = True) -> dict[str, Any]:
    """A SAELens config as written before 6.0 (the layout of jbloom's GPT-2 releases)."""
    cfg: dict[str, Any] = {
        "model_name": "tiny-gpt2",
        "hook_point": FS_HOOK,
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 16,
        "d_in": D_IN,
        "expansion_factor": width // D_IN if width % D_IN == 0 else None,
        "b_dec_init_method": "geometric_median",
        "l1_coefficient": 8e-5,
        "lr": 4e-4,
        "train_batch_size": 4096,
        "device": "mps",
        "seed": 42,
        "dtype": "torch.float32",
        "activation_fn_str": "relu",
        "normalize_activations": False,
    }
    if with_d_sae:
        cfg["d_sae"] = width
    return cfg


def build_fake_hub(cache: Path, seed: int = 0) -> FakeHub:
    """Write the fake cache under ``cache`` and return its description."""
    generator = torch.Generator().manual_seed(seed)
    hub = FakeHub(cache)
    tmp = cache / "tmp.safetensors"
    cache.mkdir(parents=True, exist_ok=True)

    # SAELens layout, pre-6.0 configs, sparsity files; blobs linked from the snapshot.
    saes = []
    for width in FS_WIDTHS:
        folder = f"{FS_HOOK}_{width}"
        weights = _relu_weights(width, generator)
        hub.weights[folder] = weights
        log_density = -torch.rand(width, generator=generator) * 5
        hub.weights[folder + "/sparsity"] = {"sparsity": log_density}
        cfg = pre6_cfg(width)
        _write(cache, FS.repo, f"{folder}/cfg.json", json.dumps(cfg).encode(), blobs=True)
        _write(
            cache,
            FS.repo,
            f"{folder}/sae_weights.safetensors",
            _safetensors_bytes(weights, tmp),
            blobs=True,
        )
        _write(
            cache,
            FS.repo,
            f"{folder}/sparsity.safetensors",
            _safetensors_bytes({"sparsity": log_density}, tmp),
            blobs=True,
        )
        saes.append({"id": folder, "path": folder, "neuronpedia": f"tiny-gpt2/1-res_fs{width}"})
    hub.releases[FS.name] = {
        "repo_id": FS.repo,
        "model": "tiny-gpt2",
        "conversion_func": None,
        "config_overrides": {"model_from_pretrained_kwargs": {"center_writing_weights": True}},
        "saes": saes,
    }

    # Gemma Scope layout: params.npz, JumpReLU.
    gemma_saes = []
    for width in (16, 32):
        folder = f"layer_1/width_{width}/average_l0_5"
        weights = _relu_weights(width, generator)
        weights["threshold"] = torch.rand(width, generator=generator) * 0.3
        hub.weights[folder] = weights
        buffer = _npz_bytes({k: v.numpy() for k, v in weights.items()}, cache / "tmp.npz")
        _write(cache, GEMMA.repo, f"{folder}/params.npz", buffer, blobs=False)
        gemma_saes.append({"id": folder, "path": folder})
    hub.releases[GEMMA.name] = {
        "repo_id": GEMMA.repo,
        "model": "gemma-2-2b",
        "conversion_func": "gemma_2",
        "saes": gemma_saes,
    }

    # SAELens 6 layout: a Matryoshka BatchTopK SAE saved for inference (JumpReLU).
    width = MATRYOSHKA_WIDTHS[-1]
    weights = _relu_weights(width, generator)
    weights["threshold"] = torch.rand(width, generator=generator) * 0.3
    hub.weights["matryoshka"] = weights
    cfg6 = {
        "architecture": "jumprelu",
        "d_in": D_IN,
        "d_sae": width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "matryoshka_widths": list(MATRYOSHKA_WIDTHS),
        "metadata": {
            "sae_lens_version": "6.5.0",
            "model_name": "tiny-gpt2",
            "hook_name": "blocks.2.hook_resid_post",
            "context_size": 16,
        },
    }
    folder = "standard/blocks.2.hook_resid_post"
    _write(cache, MATRYOSHKA.repo, f"{folder}/cfg.json", json.dumps(cfg6).encode(), blobs=False)
    _write(
        cache,
        MATRYOSHKA.repo,
        f"{folder}/sae_weights.safetensors",
        _safetensors_bytes(weights, tmp),
        blobs=False,
    )
    hub.releases[MATRYOSHKA.name] = {
        "repo_id": MATRYOSHKA.repo,
        "model": "tiny-gpt2",
        "conversion_func": None,
        "saes": [{"id": "blocks.2.hook_resid_post", "path": folder}],
    }

    # SAELens >= 6 as SAELens 6.54 saves a Matryoshka BatchTopK SAE for inference: the site
    # under metadata, the nested widths only under metadata.training_architecture_details; one
    # SAE on each of two sites.
    lens6_saes = []
    for hook in LENS6_SITES:
        weights = _relu_weights(width, generator)
        weights["threshold"] = torch.rand(width, generator=generator) * 0.3
        hub.weights[f"lens6/{hook}"] = weights
        cfg = {
            "device": "cpu",
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": "6.54.12",
                "sae_lens_training_version": "6.54.12",
                "model_name": "tiny-gpt2",
                "hook_name": hook,
                "hook_head_index": None,
                "context_size": 16,
                "prepend_bos": True,
                "model_from_pretrained_kwargs": {"center_writing_weights": False},
                "training_architecture": "matryoshka_batchtopk",
                "training_architecture_details": {
                    "k": 4.0,
                    "rescale_acts_by_decoder_norm": True,
                    "topk_threshold_lr": 0.01,
                    "matryoshka_widths": list(MATRYOSHKA_WIDTHS),
                    "use_matryoshka_aux_loss": False,
                },
            },
            "d_in": D_IN,
            "dtype": "float32",
            "d_sae": width,
            "apply_b_dec_to_input": True,
            "architecture": "jumprelu",
        }
        _write(cache, LENS6.repo, f"{hook}/cfg.json", json.dumps(cfg).encode(), blobs=True)
        _write(
            cache,
            LENS6.repo,
            f"{hook}/sae_weights.safetensors",
            _safetensors_bytes(weights, tmp),
            blobs=True,
        )
        lens6_saes.append({"id": hook, "path": hook})
    hub.releases[LENS6.name] = {
        "repo_id": LENS6.repo,
        "model": "tiny-gpt2",
        "conversion_func": None,
        "saes": lens6_saes,
    }

    # dictionary_learning layout (SAEBench): ae.pt + config.json, TopK.
    folder = "tiny_topk/resid_post_layer_1/trainer_0"
    width, k = 48, 4
    weights = _relu_weights(width, generator)
    state = {
        "encoder.weight": weights["W_enc"].T.contiguous(),
        "encoder.bias": weights["b_enc"],
        "decoder.weight": weights["W_dec"].T.contiguous(),
        "b_dec": weights["b_dec"],
        "k": torch.tensor(k),
        "threshold": torch.tensor(-1.0),
    }
    hub.weights[folder] = weights
    ae_path = cache / "tmp.pt"
    torch.save(state, ae_path)
    _write(cache, DL.repo, f"{folder}/ae.pt", ae_path.read_bytes(), blobs=False)
    ae_path.unlink()
    config = {
        "trainer": {
            "dict_class": "AutoEncoderTopK",
            "trainer_class": "TopKTrainer",
            "activation_dim": D_IN,
            "dict_size": width,
            "k": k,
            "layer": 1,
            "lm_name": "google/gemma-2-2b",
            "submodule_name": "resid_post_layer_1",
        },
        "buffer": {"d_submodule": D_IN, "ctx_len": 128},
    }
    _write(cache, DL.repo, f"{folder}/config.json", json.dumps(config).encode(), blobs=False)
    hub.releases[DL.name] = {
        "repo_id": DL.repo,
        "model": "gemma-2-2b",
        "conversion_func": "dictionary_learning_1",
        "saes": [
            {
                "id": "blocks.1.hook_resid_post__trainer_0",
                "path": folder,
                "neuronpedia": "gemma-2-2b/1-tiny-topk__trainer_0",
            }
        ],
    }
    return hub


def _npz_bytes(arrays: dict[str, np.ndarray], tmp: Path) -> bytes:
    np.savez(tmp, **arrays)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def lens_lookup(name: str, entry: dict[str, Any]) -> Any:
    """SAELens's registry record for a fake release."""
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

    return PretrainedSAELookup(
        release=name,
        repo_id=entry["repo_id"],
        model=entry["model"],
        conversion_func=entry.get("conversion_func"),
        saes_map={s["id"]: s["path"] for s in entry["saes"]},
        expected_var_explained={},
        expected_l0={},
        neuronpedia_id={s["id"]: s.get("neuronpedia") for s in entry["saes"]},
        norm_scaling_factor={},
        config_overrides=entry.get("config_overrides"),
    )


def install_fake_hub(cache: Path, monkeypatch: Any) -> FakeHub:
    """Build the fake cache, go offline on it, and register its releases with SAELens and
    with saegeo's bundled table (``monkeypatch`` undoes it all after the test)."""
    import huggingface_hub.constants

    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saegeo.formats import registry

    hub = build_fake_hub(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import; SAELens's downloads go through its constants.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    directory = get_pretrained_saes_directory()
    for name, entry in hub.releases.items():
        monkeypatch.setitem(directory, name, lens_lookup(name, entry))
    bundled = {
        name: registry._from_entry(name, entry, "saegeo") for name, entry in hub.releases.items()
    }
    monkeypatch.setattr(registry, "bundled_releases", lambda: bundled)
    return hub
