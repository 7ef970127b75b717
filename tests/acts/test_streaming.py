"""The one activation stream: batches, limit, dtype, the d_in check, the meaning of progress."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers.sae import gaussian_sae

import saegeo as sg
from saegeo.acts.store import ActivationStore
from saegeo.acts.streaming import (
    StreamOptions,
    checked_store,
    progress_bar,
    stream,
    stream_options,
    token_count,
    with_stream_options,
)
from saegeo.core.sae import SAE
from saegeo.effects.novelty import novelty_table
from saegeo.errors import ArgumentError, ShapeError


def test_batches_respect_batch_size_limit_and_dtype():
    x = torch.randn(23, 5)
    batches = stream(x, batch_size=10, limit=17, device="cpu", dtype=torch.float64, progress=False)
    assert batches.n_tokens == 17
    got = list(batches)
    assert [b.shape[0] for b in got] == [10, 7]
    assert all(b.dtype == torch.float64 and b.device.type == "cpu" for b in got)
    torch.testing.assert_close(torch.cat(got), x[:17].double())
    # A stream can be read again, from the first token.
    assert sum(b.shape[0] for b in batches) == 17


@pytest.mark.parametrize("kind", ["tensor", "array", "npy", "store"])
def test_every_acts_like_streams_the_same_rows(tmp_path, kind):
    x = torch.randn(12, 3)
    acts: object = x
    if kind == "array":
        acts = x.numpy()
    elif kind == "npy":
        np.save(tmp_path / "a.npy", x.numpy())
        acts = tmp_path / "a.npy"
    elif kind == "store":
        acts = ActivationStore.from_tensor(x)
    got = torch.cat(list(stream(acts, batch_size=5, device="cpu", d_in=3, progress=False)))
    torch.testing.assert_close(got, x)


def test_token_count():
    store = ActivationStore.from_tensor(torch.zeros(8, 2))
    assert [token_count(store, limit) for limit in (None, 3, 8, 100, 0)] == [8, 3, 8, 8, 0]


def test_d_in_mismatch_names_the_source_the_sae_and_the_caller(tmp_path):
    np.save(tmp_path / "acts.npy", np.zeros((4, 6), dtype=np.float32))
    sae = SAE.from_decoder(torch.eye(5)).replace(metadata={"name": "tiny"})
    with pytest.raises(ShapeError) as info:
        stream(tmp_path / "acts.npy", d_in=sae, what="evaluate()")
    message = str(info.value)
    assert message.startswith("evaluate(): activations ")
    assert "acts.npy have d_in=6" in message and "tiny expects d_in=5" in message
    with pytest.raises(ShapeError, match="d_in=7 is expected"):
        checked_store(torch.zeros(2, 6), 7)
    assert checked_store(torch.zeros(2, 6), 6).d_in == 6


def test_a_stream_for_an_sae_reads_in_its_dtype_and_checks_its_d_in():
    x = torch.randn(9, 4)
    batches = stream(x, batch_size=4, limit=7, device="cpu", progress=False)
    sae = SAE.from_decoder(torch.eye(4)).to(dtype=torch.float64).replace(metadata={"name": "s"})
    moved, for_sae = batches.for_sae(sae, "evaluate")
    assert moved.device == batches.device and for_sae.desc == "evaluate s"
    assert (for_sae.batch_size, for_sae.limit, for_sae.progress) == (4, 7, False)
    torch.testing.assert_close(torch.cat(list(for_sae)), x[:7].double())
    narrow = SAE.from_decoder(torch.eye(3)).replace(metadata={"name": "narrow"})
    with pytest.raises(ShapeError, match=r"^evaluate\(\): .*narrow expects d_in=3"):
        batches.for_sae(narrow, "evaluate")


class _Terminal:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_has_one_meaning(monkeypatch):
    # Under pytest stderr is not a terminal: None hides the bar, True shows it, False never.
    def shown(progress: bool | None) -> bool:
        with progress_bar(3, "x", progress) as bar:
            return not bar.disable

    assert [shown(None), shown(True), shown(False)] == [False, True, False]
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert [shown(None), shown(True), shown(False)] == [True, True, False]


def test_to_jumprelu_reads_a_stream_without_holding_it():
    sae = gaussian_sae(4, 8, arch="topk", k=2)
    x = torch.randn(300, 4)
    from_stream = sae.to_jumprelu(stream(x, batch_size=64, limit=200, progress=False))
    from_tensor = sae.to_jumprelu(x[:200])
    torch.testing.assert_close(from_stream.threshold, from_tensor.threshold)


def test_progress_bars_in_jupyter_need_no_widgets(monkeypatch):
    """Inside a Jupyter kernel the bar is a widget where ipywidgets is installed; without it,
    the plain text bar (never tqdm.auto's "IProgress not found" warning)."""
    import importlib.util
    import sys
    import types
    import warnings

    import tqdm.notebook
    import tqdm.std

    from saegeo.acts import streaming

    assert streaming.bar_class() is tqdm.std.tqdm  # not in a kernel
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else find_spec(name, *a),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert streaming.bar_class() is tqdm.std.tqdm
        streaming.progress_bar(3, "test", progress=False).close()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert streaming.bar_class() is tqdm.notebook.tqdm


def test_stream_options_are_streams_keywords_with_its_defaults():
    parameters = inspect.signature(stream).parameters
    assert StreamOptions.__optional_keys__ == set(StreamOptions.__annotations__)
    for key, annotation in StreamOptions.__annotations__.items():
        written = getattr(annotation, "__forward_arg__", annotation)  # a string, as in stream
        assert parameters[key].annotation == written, key
    body = ast.parse(textwrap.dedent(inspect.getsource(StreamOptions))).body[0].body
    pairs = zip(body, body[1:], strict=False)
    docs = {a.target.id: d.value.value for a, d in pairs if isinstance(a, ast.AnnAssign)}
    for key in ("batch_size", "limit", "device"):  # the documented default is stream's
        written = docs[key].replace("``", "").replace('"', "'")
        assert f"default {parameters[key].default!r}" in written, key
    assert "None (the default)" in docs["progress"] and parameters["progress"].default is None
    settings = stream_options({"limit": 7})
    assert settings == {
        "batch_size": parameters["batch_size"].default,
        "limit": 7,
        "device": parameters["device"].default,
        "progress": parameters["progress"].default,
    }


def test_an_unknown_stream_keyword_is_a_type_error_naming_it():
    sae = gaussian_sae(4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="'batch_sise'.*batch_size, device, limit, progress"):
        sg.encode_codes(sae, torch.zeros(3, 4), batch_sise=2)
    with pytest.raises(TypeError, match="'dtype'"):
        stream_options({"dtype": torch.float64})  # stream's own, not a public function's


def test_stream_options_are_checked_where_no_activations_are_read():
    sae = gaussian_sae(4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ArgumentError, match="batch_size"):
        novelty_table(sae, sae, None, batch_size=0)


def test_every_function_that_streams_activations_takes_the_stream_options():
    """Public functions reading ``acts`` take :class:`StreamOptions` (or a config that holds
    them), declare none of its keywords themselves, and show them with stream's defaults."""
    defaults = inspect.signature(stream).parameters
    checked = 0
    for name in dir(sg):
        function = getattr(sg, name)
        if not inspect.isfunction(function):
            continue
        parameters = inspect.signature(function).parameters
        if not {"acts", "eval_acts"} & set(parameters) or "config" in parameters:
            continue
        assert function.__annotations__.get("options") == "Unpack[StreamOptions]", name
        assert not StreamOptions.__optional_keys__ & set(function.__annotations__), name
        for key in StreamOptions.__optional_keys__:
            assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY, (name, key)
            assert parameters[key].default == defaults[key].default, (name, key)
        checked += 1
    assert checked >= 12


def test_showing_stream_options_needs_a_function_that_takes_them():
    def plain(acts, *, batch_size=1):
        return acts

    with pytest.raises(TypeError, match="takes no"):
        with_stream_options(plain)
