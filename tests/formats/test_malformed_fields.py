"""Numbers, dtypes and special files read from disk: every malformed one is one FormatError
naming the file and the field, raised before anything blocks or allocates."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.property import PROPERTY
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import saegeo as sg
from saegeo.errors import FormatError, SaegeoError
from saegeo.formats import fields
from saegeo.formats.gemma_scope import load_params_npz
from saegeo.formats.pretrained import site_metadata
from saegeo.formats.saelens_config import SITE_KEYS, upgrade_config
from saegeo.lm.corpus import open_source
from saegeo.lm.sites import site_for

D, F = 8, 16


def _weights(width: int = F, generator_seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(generator_seed)
    return {
        "W_enc": torch.randn(D, width, generator=g),
        "b_enc": torch.randn(width, generator=g),
        "W_dec": torch.randn(width, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }


def _saelens_dir(root: Path, cfg: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    root.mkdir(parents=True)
    (root / "cfg.json").write_text(json.dumps(cfg))  # NaN and Infinity written as JSON allows
    save_file(weights, str(root / "sae_weights.safetensors"))
    return root


def _pre6_cfg(**changes: Any) -> dict[str, Any]:
    cfg = {"d_in": D, "hook_point": "blocks.1.hook_resid_pre", "activation_fn_str": "relu"}
    return {**cfg, **changes}


def _finishes(call: Callable[[], Any], seconds: float = 10.0) -> BaseException | None:
    """Run ``call`` in a thread; fail if it blocks, and return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked"
    return raised[0] if raised else None


# ----------------------------------------------------------------------- the one reader


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, "an integer"),
        ("4", "an integer"),
        (4.5, "an integer"),
        (float("nan"), "an integer"),
        (float("inf"), "an integer"),
        (1e308, "an integer <= 1099511627776"),
        (2**41, "an integer <= 1099511627776"),
        (0, "an integer >= 1"),
        pytest.param(10**5000, "an integer of about 5001 digits", id="5000 digits"),
    ],
)
def test_integer_refuses_what_is_no_size(value, expected):
    with pytest.raises(FormatError, match="^cfg.json: d_in must be") as info:
        fields.integer(value, field="d_in", source="cfg.json", minimum=1)
    message = str(info.value)
    assert expected in message and "\n" not in message and len(message) < 200


def test_integer_and_number_accept_what_is_fine():
    assert fields.integer(16.0, field="k", source="f", minimum=1) == 16
    assert fields.integer(fields.MAX_SIZE, field="k", source="f") == fields.MAX_SIZE
    assert fields.number(10**400 // 10**399, field="x", source="f") == 10.0
    assert fields.number(0.5, field="x", source="f", minimum=0, exclusive_minimum=True) == 0.5
    for bad in (float("nan"), float("-inf"), 10**400, "1", None, False):
        with pytest.raises(FormatError, match="x must be a finite number"):
            fields.number(bad, field="x", source="f")
    with pytest.raises(FormatError, match="x must be a finite number > 0"):
        fields.number(0, field="x", source="f", minimum=0, exclusive_minimum=True)


def test_version_strings():
    assert fields.version("6.54.12", field="v", source="f") == (6, 54, 12)
    assert fields.version("v5", field="v", source="f") == (5, 0, 0)
    for bad in ("6" * 5000, 6.0, "", "six", None):
        with pytest.raises(FormatError, match="v must be a version string"):
            fields.version(bad, field="v", source="f")


# ----------------------------------------------------------------------- SAELens configs


@pytest.mark.parametrize("factor", [1e308, float("nan"), -2.0, "2"])
def test_pre6_expansion_factor_that_is_no_width(tmp_path, factor):
    path = _saelens_dir(tmp_path / "sae", _pre6_cfg(expansion_factor=factor), _weights())
    with pytest.raises(FormatError, match=r"cfg.json: expansion_factor must be") as info:
        sg.load_sae(path)
    assert "\n" not in str(info.value)


def test_pre6_expansion_factor_gives_the_width(tmp_path):
    path = _saelens_dir(tmp_path / "sae", _pre6_cfg(expansion_factor=2), _weights())
    assert sg.load_sae(path).width == F
    assert upgrade_config(_pre6_cfg(expansion_factor=2.0))["d_sae"] == F


@pytest.mark.parametrize("where", ["top", "metadata"])
def test_sae_lens_version_of_5000_digits(tmp_path, where):
    version = "6" * 5000
    cfg = {"d_in": D, "d_sae": F, "architecture": "standard"}
    if where == "top":
        cfg["sae_lens_version"] = version
    else:
        cfg["metadata"] = {"sae_lens_version": version}
    path = _saelens_dir(tmp_path / "sae", cfg, _weights())
    with pytest.raises(FormatError, match="sae_lens_version must be a version string") as info:
        sg.load_sae(path)
    assert len(str(info.value)) < 300


def test_integer_of_5000_digits_in_json(tmp_path):
    path = tmp_path / "sae"
    _saelens_dir(path, {}, _weights())
    (path / "cfg.json").write_text('{"d_in": ' + "7" * 5000 + "}")
    with pytest.raises(FormatError, match="cfg.json: not valid JSON"):
        sg.load_sae(path)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"context_size": 1e999}, "context_size must be an integer"),
        ({"hook_layer": -1}, "hook_layer must be an integer >= 0"),
        ({"training_architecture_details": [1]}, "training_architecture_details must be"),
        ({"model_from_pretrained_kwargs": [1]}, "model_from_pretrained_kwargs must be a JSON"),
        ({"prepend_bos": "yes"}, "prepend_bos must be true or false"),
        ({"hook_name": 12}, "hook_name must be a string"),
        (
            {"training_architecture_details": {"matryoshka_widths": [8, float("nan")]}},
            "matryoshka_widths must be a strictly rising list",
        ),
    ],
)
def test_6x_metadata_numbers(tmp_path, metadata, message):
    cfg = {
        "d_in": D,
        "d_sae": F,
        "architecture": "standard",
        "metadata": {"sae_lens_version": "6.5.0", **metadata},
    }
    with pytest.raises(FormatError, match=message):
        sg.load_sae(_saelens_dir(tmp_path / "sae", cfg, _weights()))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32])
def test_weights_of_a_dtype_saegeo_cannot_compute_with(tmp_path, dtype):
    weights = {k: v.to(dtype) for k, v in _weights().items()}
    cfg = {"d_in": D, "d_sae": F, "architecture": "standard"}
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(FormatError, match=f"W_(enc|dec) has dtype {name}; SAE weights must be"):
        sg.load_sae(_saelens_dir(tmp_path / "sae", cfg, weights))


@pytest.mark.parametrize("shape", [[0], [2], [1, 2]])
def test_batchtopk_threshold_of_the_wrong_shape(tmp_path, shape):
    weights = {**_weights(), "topk_threshold": torch.full(shape, 0.5)}
    cfg = {"d_in": D, "d_sae": F, "architecture": "batchtopk", "k": 2}
    with pytest.raises(FormatError, match="topk_threshold must hold one number"):
        sg.load_sae(_saelens_dir(tmp_path / "sae", cfg, weights))
    weights["topk_threshold"] = torch.tensor([[0.5]])  # one number, any shape, as SAELens reads
    assert sg.load_sae(_saelens_dir(tmp_path / "one", cfg, weights)).arch == "jumprelu"


def test_dictionary_learning_config_numbers(tmp_path):
    from saegeo.formats.pretrained import _dictionary_learning_cfg

    source = tmp_path / "config.json"
    cfg = _dictionary_learning_cfg({"trainer": {"layer": 3}, "buffer": {"ctx_len": 128}}, source)
    assert cfg["hook_name"] == "blocks.3.hook_resid_post" and cfg["context_size"] == 128
    with pytest.raises(FormatError, match=r"\(trainer\): layer must be an integer"):
        _dictionary_learning_cfg({"trainer": {"layer": float("inf")}}, source)
    with pytest.raises(FormatError, match=r"\(buffer\): ctx_len must be an integer"):
        _dictionary_learning_cfg({"buffer": {"ctx_len": "128"}}, source)


# ----------------------------------------------------------------------- activation stores


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_tokens": 1e999}, "meta.json: n_tokens must be an integer"),
        ({"d_in": 1e999}, "meta.json: d_in must be an integer"),
        ({"d_in": "8"}, "meta.json: d_in must be an integer"),
        ({"shards": {"file": "x"}}, "meta.json: shards must be a list"),
        ({"shards": [{"file": "../x", "n_tokens": 3}]}, r"\(shards\[0\]\): file must be a file"),
        ({"shards": [{"file": "s", "n_tokens": -1}]}, r"\(shards\[0\]\): n_tokens must be"),
    ],
)
def test_store_meta_numbers(tmp_path, change, message):
    writer = sg.ShardWriter(tmp_path / "store", D)
    writer.add(torch.randn(10, D))
    writer.close()
    meta_path = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(change)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=message):
        sg.ActivationStore.open(tmp_path / "store")
    with pytest.raises(FormatError, match=message):  # resuming reads the same way
        sg.ShardWriter(tmp_path / "store", D)


# ----------------------------------------------------------------------- Gemma Scope


def _params(path: Path, width: int = F, **extra: np.ndarray) -> Path:
    arrays = {
        k.replace("W_", "w_") if k.startswith("W_") else k: v.numpy()
        for k, v in _weights(width).items()
    }
    arrays["threshold"] = np.full(width, 0.1, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{**arrays, **extra})
    return path


def test_params_npz_holding_strings(tmp_path):
    path = _params(tmp_path / "params.npz", threshold=np.array(["0.1"] * F))
    with pytest.raises(FormatError, match="threshold has dtype <U3; SAE weights must be"):
        load_params_npz(path)


def test_params_npz_that_is_a_fifo(tmp_path):
    path = tmp_path / "layer_1" / "width_16k" / "average_l0_5" / "params.npz"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    raised = _finishes(lambda: sg.load_sae(path.parent))
    assert isinstance(raised, FormatError) and "not a regular file" in str(raised)


def test_gemma_scope_width_must_match_its_folder(tmp_path):
    folder = tmp_path / "layer_1" / "width_16k" / "average_l0_5"
    _params(folder / "params.npz", width=F)
    with pytest.raises(FormatError, match="says width 16384 but the weights have 16 latents"):
        sg.load_sae(folder)
    fine = tmp_path / "layer_1" / "width_16" / "average_l0_5"  # no width SAELens knows: unchecked
    _params(fine / "params.npz", width=F)
    assert sg.load_sae(fine).width == F


# ----------------------------------------------------------------------- text sources


@pytest.mark.parametrize("name", ["texts.txt", "texts.jsonl"])
def test_text_source_that_is_a_fifo(tmp_path, name):
    path = tmp_path / name
    os.mkfifo(path)
    raised = _finishes(lambda: open_source(path))
    assert isinstance(raised, SaegeoError) and "not a regular file" in str(raised), raised


def test_text_source_linked_to_a_device(tmp_path):
    path = tmp_path / "texts.txt"
    path.symlink_to("/dev/zero")
    raised = _finishes(lambda: open_source(path))
    assert isinstance(raised, SaegeoError) and "not a regular file" in str(raised), raised


# ----------------------------------------------------------------------- any value at all

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["6.5.0", "5.0.0", "topk", "jumprelu", "batchtopk", "layer_norm"]),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
CONFIG_KEYS = [
    "d_in", "d_sae", "k", "architecture", "activation_fn", "activation_fn_str",
    "activation_fn_kwargs", "normalize_activations", "apply_b_dec_to_input", "metadata",
    "sae_lens_version", "expansion_factor", "residual_threshold", "max_iterations",
    "stop_on_duplicate_support", "rescale_acts_by_decoder_norm", "matryoshka_widths",
    "hook_point", "hook_name", "context_size",
]  # fmt: skip


@settings(PROPERTY, max_examples=60)
@given(
    changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON_VALUES, min_size=1, max_size=3),
    metadata=st.dictionaries(st.sampled_from(SITE_KEYS), JSON_VALUES, max_size=3),
    arch=st.sampled_from(["standard", "jumprelu", "topk", "batchtopk", "matching_pursuit"]),
)
def test_property_any_config_value_loads_or_is_one_clear_error(
    tmp_path_factory, changes, metadata, arch
):
    weights = {**_weights(), "threshold": torch.rand(F), "topk_threshold": torch.tensor(0.3)}
    cfg = {"d_in": D, "d_sae": F, "architecture": arch, "k": 3, "metadata": metadata, **changes}
    path = tmp_path_factory.mktemp("sae")
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(path / "sae_weights.safetensors"))
    try:
        sae = sg.load_sae(path)
        assert sae.d_in == D and sae.width == F
        site_for(site_metadata(str(path)), source="--for")  # what harvest --for reads
    except SaegeoError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)


@settings(PROPERTY, max_examples=40)
@given(
    field=st.sampled_from(["d_in", "n_tokens", "dtype", "shards", "format"]),
    value=JSON_VALUES,
    shard_field=st.sampled_from(["file", "n_tokens", None]),
    shard_value=JSON_VALUES,
)
def test_property_any_store_meta_value_opens_or_is_one_clear_error(
    tmp_path_factory, field, value, shard_field, shard_value
):
    root = tmp_path_factory.mktemp("store")
    writer = sg.ShardWriter(root / "store", D)
    writer.add(torch.randn(10, D))
    writer.close()
    meta_path = root / "store" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    first = meta["shards"][0] if isinstance(meta["shards"], list) and meta["shards"] else None
    if shard_field is not None and isinstance(first, dict):
        first[shard_field] = shard_value
    meta_path.write_text(json.dumps(meta))
    try:
        store = sg.ActivationStore.open(root / "store")
    except SaegeoError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        assert store.read().shape == (10, D)


@settings(PROPERTY, max_examples=40)
@given(
    shapes=st.fixed_dictionaries(
        {
            key: st.lists(st.integers(0, 5), max_size=3)
            for key in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
        }
    ),
    dtype=st.sampled_from(["float32", "float16", "float64", "int8", "bool", "complex64"]),
    folder=st.sampled_from(["layer_1/width_16k/average_l0_5", "embedding/width_4k/x", "plain"]),
)
def test_property_any_params_npz_loads_or_is_one_clear_error(
    tmp_path_factory, shapes, dtype, folder
):
    path = tmp_path_factory.mktemp("gemma") / folder / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **{key: np.ones(shape, dtype=dtype) for key, shape in shapes.items()})
    try:
        sae = sg.load_sae(path.parent)
    except SaegeoError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        assert sae.W_dec.shape == (sae.width, sae.d_in)
