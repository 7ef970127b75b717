"""Harvest a language model's residual-stream activations into an activation store.

**Hook point.** ``layer=l`` stores the residual stream *after* decoder block ``l`` (0-based):
the output of block ``l``, which is the input of block ``l + 1`` and equals
``output_hidden_states[l + 1]`` of a Hugging Face model for every block but the last (there
Hugging Face returns the state after the final norm; saegeo keeps the residual before it).
Only the embeddings and blocks ``0..l`` run: a forward hook on block ``l`` takes its output and
stops the forward pass, so the final norm and the unembedding never run. Long harvests on a CPU
compile those blocks (see :mod:`saegeo.lm.forward` and ``compile``).

**Contexts.** Documents are tokenised without special tokens and joined into one stream, each
followed by the tokenizer's EOS token as separator (it belongs to the document it ends). The
stream is cut into contexts of ``context - 1`` text tokens; each is fed to the model after the
tokenizer's BOS token, and the BOS position is not stored (it is the same vector in every
context, and an outlier in norm); neither are the first ``skip_first`` text tokens (default 1),
whose position often carries a massive "attention sink" activation. So every stored token saw
between ``skip_first + 1`` and ``context - 1`` tokens of text before it. The last incomplete
context of a source is dropped. Contexts depend only on the tokenizer, the source and
``context``, so an interrupted harvest resumes exactly where its last complete shard ended.

**Store.** Shards hold ``acts`` [n, d_model], ``token_ids`` [n] (int32) and ``doc_ids`` [n]
(int32, positions in the text source); ``meta.json`` records the model, hook, contexts, text
source and a copy of the tokenizer (``tokenizer/``), so :func:`load_tokenizer` can decode
token ids and :func:`saegeo.lm.corpus.open_source` can reopen the documents. Each shard's entry
says whether it was made with compiled blocks (``compiled``): in bfloat16 the two forwards
round differently and their activations differ by about 1% of a token's norm (at layer 15 of
SmolLM2, median; the compiled one, rounding less often, is the closer to float32), and a
resumed harvest may be compiled where its first part was not.

**Ranks.** Under a ``torch.distributed`` process group (started by the caller, or by
``torchrun`` for the command line) every rank calls :func:`harvest` with the same arguments and
the ranks write one store together, into a directory they all see: the new tokens are cut into
shards of ``shard_tokens`` (rounded down to whole contexts), and shard ``j`` is run and written
by rank ``j % W``; every rank tokenises the same stream and runs only the contexts that hold
tokens of its shards. Rank 0 lists each round of ``W`` shards in ``meta.json`` once all are
written (:class:`~saegeo.acts.store.ShardWriter` with ``collective=True``), writes the tokenizer
and shows progress. So the store is the one a single process writes, shard for shard, in the
same order, with the same file names: only the rounding of batched forwards can differ. An
interrupted run resumes after its last listed round, on any number of ranks. The work is dealt
out a shard at a time, so a harvest of fewer shards than ranks leaves some ranks idle.

Examples
--------
>>> store = harvest("smollm2-135m-instruct", "bbc_news", "acts/", layer=15,
...                 max_tokens=100_000)  # doctest: +SKIP
>>> tokenizer = load_tokenizer(store)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saegeo.acts.store import META_FILE, ActivationStore, ShardWriter
from saegeo.acts.streaming import progress_bar
from saegeo.config import override
from saegeo.errors import ArgumentError, SaegeoError
from saegeo.lm.config import HarvestConfig
from saegeo.lm.corpus import TextSource, open_source
from saegeo.lm.forward import stopped_forward
from saegeo.lm.models import (
    DEFAULT_MODEL,
    LanguageModel,
    decoder_blocks,
    import_transformers,
    prepare_model,
)
from saegeo.lm.sites import centred, resolve_hook, uses_layer_norm
from saegeo.runtime import distributed
from saegeo.runtime.atomic import atomic_dir
from saegeo.runtime.memory import forward_bytes, require_argument
from saegeo.runtime.outputs import Output, check_existing

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
PRODUCER = "saegeo.lm.harvest"
FLOAT16_MAX = 65504.0
COMPILE_MIN_TOKENS = 100_000
"""``compile=None`` compiles CPU harvests of at least this many new tokens (it pays off there)."""
# Settings a resumed harvest must share with the store it extends.
RESUME_KEYS = (
    "model",
    "gguf_file",
    "layer",
    "context",
    "skip_first",
    "prepend_bos",
    "model_dtype",
    "text_source",
    "tl_hook_name",
    "center_writing_weights",
)


def load_tokenizer(store: ActivationStore | str | os.PathLike[str]) -> Any:
    """The tokenizer saved with a harvested store, to decode its ``token_ids``."""
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    info = store.meta.get("tokenizer")
    if not isinstance(info, dict) or "path" not in info:
        raise SaegeoError(f"{store.source}: {META_FILE} records no tokenizer (not a harvest?)")
    path = Path(store.source) / info["path"]
    if not path.is_dir():
        raise SaegeoError(f"{path}: tokenizer directory of this store is missing")
    return import_transformers().AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------------------- contexts


def iter_contexts(
    tokenizer: Any, source: TextSource, n_text_tokens: int, *, docs_per_call: int = 32
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(token_ids, doc_ids)``, each [n_text_tokens], of consecutive stream contexts.

    The stream is every document's tokens (no special tokens) followed by the EOS token; the
    last incomplete context is dropped.
    """
    eos = tokenizer.eos_token_id
    buffer_ids: list[np.ndarray] = []
    buffer_docs: list[np.ndarray] = []
    buffered = 0
    for start in range(0, len(source), docs_per_call):
        docs = [source[i] for i in range(start, min(start + docs_per_call, len(source)))]
        encoded = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)
        for doc, ids in zip(docs, encoded["input_ids"], strict=True):
            ids = np.asarray(list(ids) + ([] if eos is None else [eos]), dtype=np.int64)
            buffer_ids.append(ids)
            buffer_docs.append(np.full(len(ids), doc.doc_id, dtype=np.int32))
            buffered += len(ids)
        if buffered < n_text_tokens:
            continue
        ids_all, docs_all = np.concatenate(buffer_ids), np.concatenate(buffer_docs)
        n_full = buffered // n_text_tokens
        for c in range(n_full):
            window = slice(c * n_text_tokens, (c + 1) * n_text_tokens)
            yield ids_all[window], docs_all[window]
        rest = n_full * n_text_tokens
        buffer_ids, buffer_docs = [ids_all[rest:]], [docs_all[rest:]]
        buffered -= rest


# ---------------------------------------------------------------------------- harvest


def harvest(
    model: str | os.PathLike[str] | Any = DEFAULT_MODEL,
    texts: TextSource | str | os.PathLike[str] | list[str] | None = None,
    out: str | os.PathLike[str] = "acts",
    config: HarvestConfig | None = None,
    *,
    tokenizer: Any = None,
    **overrides: Any,
) -> ActivationStore:
    """Write the residual stream after block ``layer`` of ``model`` on ``texts`` to ``out``.

    Re-running with the same ``out`` (and settings) keeps the shards already written and
    continues with the next token, up to ``max_tokens`` in all. Under a ``torch.distributed``
    process group, every rank calls it with the same arguments and they share the work (see
    the module docstring); ``max_tokens`` counts the tokens of every rank.

    Parameters
    ----------
    model
        a name or path for :func:`~saegeo.lm.models.load_model`, or a built ``transformers``
        causal LM (then pass ``tokenizer``; it is used on its own device and dtype unless ``device``
        or ``model_dtype`` say otherwise).
    texts
        a :class:`~saegeo.lm.corpus.TextSource`, ``"bbc_news"``/``None`` (the packaged
        BBC news), a path (see :func:`saegeo.lm.corpus.text_files`) or a list of strings.
    out
        the store directory to write (or resume).
    config
        the settings (:class:`~saegeo.lm.config.HarvestConfig`: ``layer``,
        ``context``, ``skip_first``, ``batch_size``, ``max_tokens``, ``dtype``,
        ``model_dtype``, ``device``, ``gguf_file``, ``text_source``, ``shard_tokens``,
        ``compile``, ``progress``); default settings when None.
    tokenizer
        the tokenizer of a built model.
    overrides
        fields of ``config`` given as keywords (``layer=15, max_tokens=100_000``),
        which replace its values.

    Returns
    -------
    ActivationStore
        The store, opened for reading; ``store.meta`` holds the metadata.

    Raises
    ------
    SaegeoError
        A setting, model or text source that does not work, named; under a process group,
        settings that differ between ranks (on every rank alike).
    """
    config = override(config or HarvestConfig(), overrides)
    layer, context, skip_first = config.layer, config.context, config.skip_first
    batch_size, max_tokens, dtype = config.batch_size, config.max_tokens, config.dtype
    check_existing(Output.named(out, "store", "out"), force=False)  # a new or resumed store
    out = Path(out)
    source = open_source(texts)
    text_spec = dict(source.spec)
    if config.text_source is not None and text_spec.get("kind") == "texts":
        text_spec["name"] = config.text_source

    lm = prepare_model(
        model,
        tokenizer,
        gguf_file=config.gguf_file,
        device=config.device,
        model_dtype=config.model_dtype,
    )
    blocks_name, blocks = decoder_blocks(lm.model)
    n_layers = len(blocks)
    hook = config.hook
    if hook is not None:
        hook_layer, _ = resolve_hook(hook, source="HarvestConfig.hook")
        if layer is not None and layer != hook_layer:
            raise ArgumentError(
                "layer",
                layer,
                f"hook {hook} is the output of block {hook_layer}",
                owner="HarvestConfig",
            )
        layer = hook_layer
    if layer is None:
        layer = n_layers // 2
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ArgumentError(
            "layer", layer, f"model {lm.name} has blocks 0..{n_layers - 1}", owner="HarvestConfig"
        )
    bos = lm.tokenizer.bos_token_id
    if bos is None:
        bos = lm.tokenizer.eos_token_id
    if bos is None:
        raise SaegeoError(f"model {lm.name}: its tokenizer has neither a BOS nor an EOS token")
    d_model = int(lm.model.config.get_text_config().hidden_size)
    _require_forward_memory(lm, batch_size, context, d_model)
    n_text = context - 1
    n_stored = n_text - skip_first
    meta = _harvest_meta(
        lm,
        text_spec,
        config,
        blocks_name=blocks_name,
        layer=layer,
        n_layers=n_layers,
        bos=bos,
        d_model=d_model,
    )
    center = config.center_writing_weights and uses_layer_norm(lm.model)
    meta.update(tl_hook_name=hook, center_writing_weights=True if center else None)
    _check_resumable(out, meta)
    shard_tokens = max(1, config.shard_tokens // n_stored) * n_stored
    settings = {key: meta[key] for key in RESUME_KEYS}
    _same_on_every_rank(
        {**settings, "dtype": dtype, "shard_tokens": shard_tokens, "max_tokens": max_tokens}
    )
    writer = ShardWriter(
        out, d_model, dtype=dtype, shard_tokens=shard_tokens, meta=meta, collective=True
    )
    if distributed.is_main():
        _save_tokenizer(lm.tokenizer, out / TOKENIZER_DIR)

    done = writer.n_tokens
    target = math.inf if max_tokens is None else max_tokens
    if done >= target:
        logger.info("%s already holds %d tokens (asked for %s)", out, done, max_tokens)
        return writer.close(**meta)
    first_context = done // n_stored
    last_context = None if max_tokens is None else math.ceil(max_tokens / n_stored)
    contexts = itertools.islice(
        iter_contexts(lm.tokenizer, source, n_text), first_context, last_context
    )

    def kept(context: int) -> np.ndarray:
        """Which of a context's stored tokens [n_stored] are new rows this rank writes."""
        rows = context * n_stored + np.arange(n_stored)
        return writer.owned(rows) & (rows < target)

    # Every rank reads the same contexts and runs those that hold rows of its own.
    own_contexts = (
        (ids, docs, keep)
        for c, (ids, docs) in enumerate(contexts, first_context)
        if (keep := kept(c)).any()
    )
    device_of_model = next(lm.model.parameters()).device
    compile = config.compile
    if compile is None:
        compile = device_of_model.type == "cpu" and target - done >= COMPILE_MIN_TOKENS
    started = time.perf_counter()
    bar = progress_bar(
        max_tokens,
        f"harvest layer {layer}",
        config.progress,
        initial=done,
        unit="tok",
        dynamic_ncols=True,
    )
    forward = stopped_forward(lm.model, blocks, layer, compile=compile, rows=batch_size)
    with bar, forward as run:
        while batch := list(itertools.islice(own_contexts, batch_size)):
            token_ids_BT = torch.from_numpy(np.stack([ids for ids, _, _ in batch]))
            doc_ids_BT = torch.from_numpy(np.stack([docs for _, docs, _ in batch]))
            keep_BT = torch.from_numpy(np.stack([keep for _, _, keep in batch]))
            bos_B1 = torch.full((len(batch), 1), bos, dtype=token_ids_BT.dtype)
            input_ids_BT = torch.cat([bos_B1, token_ids_BT], dim=1).to(device_of_model)
            acts_BTD = run(input_ids_BT)[:, 1 + skip_first :]
            if center:
                acts_BTD = centred(acts_BTD)
            writer.shard_info["compiled"] = run.compiled
            token_ids_BT, doc_ids_BT = token_ids_BT[:, skip_first:], doc_ids_BT[:, skip_first:]
            acts_BD = acts_BTD[keep_BT.to(acts_BTD.device)]
            if dtype == "float16" and acts_BD.abs().max().item() > FLOAT16_MAX:
                raise ArgumentError(
                    "dtype",
                    dtype,
                    f"activations of layer {layer} exceed the float16 range; "
                    "use bfloat16 or float32",
                    owner="HarvestConfig",
                )
            writer.add(
                acts_BD,
                token_ids=token_ids_BT[keep_BT].to(torch.int32),
                doc_ids=doc_ids_BT[keep_BT],
            )
            bar.update(acts_BD.shape[0] * distributed.world_size())
    store = writer.close(**meta)
    if not distributed.is_main():
        return store
    elapsed, new_tokens = time.perf_counter() - started, store.n_tokens - done
    logger.info(
        "harvested %d tokens in %.1f s (%.0f tokens/s); %s holds %d",
        new_tokens,
        elapsed,
        new_tokens / max(elapsed, 1e-9),
        out,
        store.n_tokens,
    )
    if max_tokens is not None and store.n_tokens < max_tokens:
        logger.warning(
            "text source %s ran out after %d tokens (asked for %d)",
            source.spec.get("kind"),
            store.n_tokens,
            max_tokens,
        )
    return store


def _require_forward_memory(lm: LanguageModel, batch_size: int, context: int, d_model: int) -> None:
    """Refuse, naming ``batch_size``, a batch whose forward pass would not fit beside the
    loaded model on its device."""
    text_config = lm.model.config.get_text_config()
    param = next(lm.model.parameters())
    need = forward_bytes(
        batch_size,
        context,
        d_model,
        int(getattr(text_config, "intermediate_size", None) or 4 * d_model),
        int(getattr(text_config, "num_attention_heads", None) or 1),
        param.element_size(),
    )
    require_argument(
        need,
        param.device,
        what=f"a forward pass of {batch_size} contexts of {context} tokens through {lm.name}",
        argument="batch_size",
        value=batch_size,
        advice="lower it",
    )


def _harvest_meta(
    lm: LanguageModel,
    text_spec: dict[str, Any],
    config: HarvestConfig,
    *,
    blocks_name: str,
    layer: int,
    n_layers: int,
    bos: int,
    d_model: int,
) -> dict[str, Any]:
    """The store's metadata: the model, the site read (``layer``, resolved from the config's
    ``layer`` or ``hook``), the context windows and the text source."""
    context, skip_first = config.context, config.skip_first
    dtype = next(lm.model.parameters()).dtype
    return {
        "producer": PRODUCER,
        "model": lm.name,
        "model_path": lm.path,
        "gguf_file": lm.gguf_file,
        "model_class": type(lm.model).__name__,
        "model_dtype": str(dtype).removeprefix("torch."),
        "n_layers": n_layers,
        "d_model": d_model,
        "layer": layer,
        "hook": f"{blocks_name}.{layer}",
        "hook_point": "resid_post",
        "hidden_states_index": layer + 1,
        "hook_description": (
            f"residual stream after block {layer} (output of {blocks_name}.{layer}, input of "
            f"block {layer + 1}); equals transformers output_hidden_states[{layer + 1}]"
            + (" before the final norm" if layer == n_layers - 1 else "")
        ),
        "context": context,
        "tokens_per_context": context - 1 - skip_first,
        "skip_first": skip_first,
        "prepend_bos": True,
        "bos_token_id": bos,
        "bos_stored": False,
        "separator_token_id": lm.tokenizer.eos_token_id,
        "text_source": text_spec,
        "tokenizer": {"path": TOKENIZER_DIR, "source": lm.name},
    }


def _same_on_every_rank(settings: dict[str, Any]) -> None:
    """Raise, on every rank alike, where a rank harvests otherwise than rank 0 (a no-op on one
    process); also the point before which no rank writes into the store."""
    first, *others = distributed.all_gather(settings)
    for rank, other in enumerate(others, 1):
        for key, value in first.items():
            if other[key] != value:
                raise SaegeoError(
                    f"rank {rank} harvests with {key}={other[key]!r}, rank 0 with "
                    f"{key}={value!r}; every rank must harvest the same texts with the same "
                    "model and settings into the same store"
                )


def _check_resumable(out: Path, meta: dict[str, Any]) -> None:
    meta_path = out / META_FILE
    if not meta_path.exists():
        return
    existing = ActivationStore.open(out).meta
    if existing.get("producer") != PRODUCER:
        raise ArgumentError(
            "out", str(out), "holds a store that saegeo harvest did not write; choose another one"
        )
    for key in RESUME_KEYS:
        if existing.get(key) != meta[key]:
            raise ArgumentError(
                "out",
                str(out),
                f"existing store has {key}={existing.get(key)!r}, this harvest "
                f"{key}={meta[key]!r}; use the same settings to resume it or another directory",
            )


def _save_tokenizer(tokenizer: Any, path: Path) -> None:
    if path.is_dir():
        return
    with atomic_dir(path) as tmp:
        tokenizer.save_pretrained(str(tmp))
