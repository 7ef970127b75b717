"""Run a causal language model up to one decoder block, compiled where that pays.

:func:`stopped_forward` yields a function from token ids [B, T] to the output of a chosen
block [B, T, D]. A forward hook on that block takes its output and stops the pass, so the
blocks after it, the final norm and the unembedding never run.

**Compiling.** With ``compile=True`` each block that runs gets a ``torch.compile``-d forward
(one graph shared by all of them: their parameters are graph inputs), and the model's attention
is switched to ``"eager"`` (matmul, softmax, matmul), which inductor fuses with the mask and
the surrounding elementwise work; both are undone on exit. On a 2-core AVX-512 CPU this runs
SmolLM2-135M at 1.2–1.4× the uncompiled rate (``analyses/benchmarks/throughput.py``).
Compiling costs a few seconds once per process with inductor's on-disk cache warm, 10–30 s
cold. Batches are padded to ``rows`` so that a short last batch does not recompile. A model
that does not compile (no C++ compiler, an operation inductor cannot trace) falls back to the
uncompiled forward with one warning.

Examples:
    >>> with stopped_forward(model, blocks[15], compile=True, rows=16) as run:  # doctest: +SKIP
    ...     acts_BTD = run(input_ids_BT)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPILED_ATTENTION = "eager"
"""Attention implementation used under ``compile=True`` (see the module docstring)."""


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
    previous_attention = _set_attention(model, COMPILED_ATTENTION)
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


def _set_attention(model: Any, implementation: str | None) -> str | None:
    """Switch ``model``'s attention implementation; return the one it had (None: unknown)."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if implementation is None or previous is None or setter is None:
        return None
    if previous != implementation:
        try:
            setter(implementation)
        except (ValueError, ImportError, AttributeError) as exc:
            logger.info("keeping %s attention (%s)", previous, exc)
            return None
    return previous
