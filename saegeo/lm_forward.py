"""Run a causal language model up to one decoder block, compiled where that pays.

:func:`stopped_forward` yields a function from token ids [B, T] to the output of a chosen
block [B, T, D]. A forward hook on that block takes its output and stops the pass, so the
blocks after it, the final norm and the unembedding never run.

**Compiling.** With ``compile=True`` each block that runs gets a ``torch.compile``-d forward
(one graph shared by all of them: their parameters are graph inputs), and the model's attention
is switched to one written out in matmul, softmax, matmul, which inductor fuses with the mask
and the surrounding elementwise work; both are undone on exit. Where the model's own eager
attention is transformers' standard one, that is :func:`grouped_attention`, the same arithmetic
without copying keys and values once per query head; otherwise it is ``"eager"``. On a 2-core
AVX-512 CPU this runs SmolLM2-135M at 1.2–1.4× the uncompiled rate
(``analyses/benchmarks/throughput.py``). Compiling costs a few seconds once per process with
inductor's on-disk cache warm, 10–30 s cold. Batches are padded to ``rows`` so that a short
last batch does not recompile. A model that does not compile (no C++ compiler, an operation
inductor cannot trace) falls back to the uncompiled forward with one warning.

Examples:
    >>> with stopped_forward(model, blocks[15], compile=True, rows=16) as run:  # doctest: +SKIP
    ...     acts_BTD = run(input_ids_BT)
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPILED_ATTENTION = "eager"
"""Attention implementation used under ``compile=True`` for models with their own eager one."""

GROUPED_ATTENTION = "saegeo_grouped"
"""Name :func:`grouped_attention` is registered under with transformers."""


class _StopForwardError(Exception):
    """Raised by the hook once the hooked block has run."""


def hooked_forward(model: Any, block: torch.nn.Module, input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``input_ids_BT`` up to ``block`` and return its output [B, T, D]."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForwardError

    handle = block.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids_BT, use_cache=False)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"hooked block {type(block).__name__} never ran")
    return captured[0]


@contextmanager
def stopped_forward(
    model: Any,
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module],
    layer: int,
    *,
    compile: bool = False,
    rows: int | None = None,
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Yield ``run(input_ids_BT) -> output of blocks[layer]`` [B, T, D] for ``model``.

    Args:
        model: a ``transformers`` causal LM whose decoder blocks are ``blocks``.
        blocks: its decoder blocks, in order.
        layer: the block whose output ``run`` returns.
        compile: compile ``blocks[: layer + 1]`` (see the module docstring).
        rows: when compiling, pad shorter batches to this many rows (the harvest's batch size).
    """
    if not compile:
        yield lambda input_ids_BT: hooked_forward(model, blocks[layer], input_ids_BT)
        return
    compiled = blocks[: layer + 1]
    # A forward already set on the instance (accelerate's device hooks) is compiled and put back.
    own_forwards = [vars(block).get("forward") for block in compiled]
    previous_attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    for implementation in dict.fromkeys([_compiled_attention(compiled), COMPILED_ATTENTION]):
        if _set_attention(model, implementation):
            break
    for block in compiled:
        block.forward = torch.compile(block.forward, dynamic=False)  # type: ignore[method-assign]
    state = {"compiled": True, "checked": False}

    def restore_blocks() -> None:
        for block, own in zip(compiled, own_forwards, strict=True):
            if own is None:
                vars(block).pop("forward", None)
            else:
                block.forward = own  # type: ignore[method-assign]
        if state["compiled"]:
            _set_attention(model, previous_attention)
        state["compiled"] = False

    def run(input_ids_BT: torch.Tensor) -> torch.Tensor:
        n_rows = input_ids_BT.shape[0]
        if state["compiled"] and rows is not None and n_rows < rows:
            pad_PT = input_ids_BT[-1:].expand(rows - n_rows, -1)
            return run(torch.cat([input_ids_BT, pad_PT]))[:n_rows]
        if state["checked"] or not state["compiled"]:
            return hooked_forward(model, blocks[layer], input_ids_BT)
        try:
            out_BTD = hooked_forward(model, blocks[layer], input_ids_BT)
        except Exception as exc:  # noqa: BLE001 - any compile failure falls back
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            warnings.warn(
                f"torch.compile failed on {type(model).__name__} ({first_line[:200]}); "
                "running it uncompiled",
                RuntimeWarning,
                stacklevel=2,
            )
            restore_blocks()
            return hooked_forward(model, blocks[layer], input_ids_BT)
        state["checked"] = True
        return out_BTD

    try:
        yield run
    finally:
        restore_blocks()


def _set_attention(model: Any, implementation: str | None) -> bool:
    """Switch ``model``'s attention implementation; whether it now runs ``implementation``."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if implementation is None or current is None or setter is None:
        return False
    if current != implementation:
        try:
            setter(implementation)
        except (ValueError, ImportError, AttributeError) as exc:
            logger.info("keeping %s attention, not %s (%s)", current, implementation, exc)
            return False
    return True


def grouped_attention(
    module: torch.nn.Module,
    query_BHTE: torch.Tensor,
    key_BGUE: torch.Tensor,
    value_BGUE: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' standard eager attention, with grouped-query heads read in place.

    The eager attention repeats each key/value head for the query heads that share it. Here the
    query heads of a group are stacked along the query axis instead ([B, G, (H/G)·T, E]), so
    the same products and the same float32 softmax run without that copy and in fewer, larger
    matmuls. Query head h reads key/value head h // (H/G), as in the eager attention.

    Args:
        module: the attention module (unused: its eager counterpart reads only ``training``).
        query_BHTE: queries [B, H, T, E] (H heads, E head size).
        key_BGUE, value_BGUE: keys and values [B, G, U, E] (G key/value heads, U positions).
        attention_mask: additive mask [B, 1, T, U] in the model's dtype (transformers'
            ``eager_mask``), or None.
        scaling: factor on the query-key products.
        dropout: must be 0 (inference only).

    Returns:
        The attention output [B, T, H, E] and None in place of the attention weights.
    """
    if dropout:
        raise ValueError("grouped_attention is for inference: dropout must be 0")
    B, H, T, E = query_BHTE.shape
    G, U = key_BGUE.shape[1], key_BGUE.shape[2]
    queries_BGQE = query_BHTE.reshape(B, G, (H // G) * T, E)
    scores_BGQU = torch.matmul(queries_BGQE, key_BGUE.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores_BGNTU = scores_BGQU.view(B, G, H // G, T, U) + attention_mask[:, :, None, :, :U]
        scores_BGQU = scores_BGNTU.view(B, G, (H // G) * T, U)
    probs_BGQU = torch.softmax(scores_BGQU, dim=-1, dtype=torch.float32).to(query_BHTE.dtype)
    out_BHTE = torch.matmul(probs_BGQU, value_BGUE).view(B, H, T, E)
    return out_BHTE.transpose(1, 2).contiguous(), None


def _compiled_attention(blocks: torch.nn.ModuleList | Sequence[torch.nn.Module]) -> str:
    """GROUPED_ATTENTION where the eager attention of ``blocks`` is the standard one, else eager.

    A modelling module's ``eager_attention_forward`` is what its attention runs as ``"eager"``;
    it is standard when its code is that of Llama's (as transformers copies it into most
    models). Models that change it (soft-capping, attention sinks, ...) keep ``"eager"``.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
        from transformers.models.llama.modeling_llama import eager_attention_forward
    except ImportError:  # transformers before the attention interface
        return COMPILED_ATTENTION
    names = {type(module).__module__ for block in blocks for module in block.modules()}
    eagers = [
        eager
        for name in names
        if callable(eager := getattr(sys.modules.get(name), "eager_attention_forward", None))
    ]
    if not eagers or any(not _same_code(eager, eager_attention_forward) for eager in eagers):
        return COMPILED_ATTENTION
    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
    return GROUPED_ATTENTION


def _same_code(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Whether two functions have the same body (bytecode, names and constants)."""
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if code_a is None or code_b is None:
        return False
    return (code_a.co_code, code_a.co_names, code_a.co_consts) == (
        code_b.co_code,
        code_b.co_names,
        code_b.co_consts,
    )
