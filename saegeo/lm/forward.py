"""Run a causal language model up to one decoder block, compiled where that pays.

:func:`stopped_forward` yields a callable (:class:`StoppedForward`) from token ids [B, T] to the
output of a chosen
block [B, T, D]. A forward hook on that block takes its output and stops the pass, so the
blocks after it, the final norm and the unembedding never run.

**Compiling.** With ``compile=True`` each block that runs gets a ``torch.compile``-d forward
(one graph shared by all of them: their parameters are graph inputs), and the model's attention
is switched to ``"eager"`` (matmul, softmax, matmul), which inductor fuses with the mask and
the surrounding elementwise work; both are undone on exit. On a 2-core AVX-512 CPU this runs
SmolLM2-135M at 1.1–1.4× the uncompiled rate (``analyses/benchmarks/throughput.py``).
Compiling costs a few seconds once per process with inductor's on-disk cache warm, 10–30 s
cold. Batches are padded to ``rows`` so that a short last batch does not recompile. A model
that does not compile (no C++ compiler, an operation inductor cannot trace) falls back to the
uncompiled forward with one warning.

Examples
--------
>>> with stopped_forward(model, blocks, 15, compile=True, rows=16) as run:  # doctest: +SKIP
...     acts_BTD = run(input_ids_BT)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
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


class StoppedForward:
    """``run(input_ids_BT)`` -> output of the hooked block [B, T, D] (see :func:`stopped_forward`).

    ``compiled`` says whether the blocks run compiled (False after a fallback).
    """

    def __init__(
        self,
        model: Any,
        blocks: torch.nn.ModuleList | Sequence[torch.nn.Module],
        layer: int,
        rows: int | None,
    ) -> None:
        self.model, self.block, self.rows = model, blocks[layer], rows
        self.compiled_blocks = blocks[: layer + 1]
        # A forward already set on an instance (accelerate's device hooks) is put back on exit.
        self._own_forwards = [vars(block).get("forward") for block in self.compiled_blocks]
        self._previous_attention: str | None = None
        self.compiled = False
        self._checked = False

    def compile(self) -> None:
        """Compile the blocks up to the hooked one and switch attention (see the module)."""
        self._previous_attention = _set_attention(self.model, COMPILED_ATTENTION)
        for block in self.compiled_blocks:
            block.forward = torch.compile(block.forward, dynamic=False)  # type: ignore[method-assign]
        self.compiled = True

    def restore(self) -> None:
        """Put the blocks' forwards and the model's attention back as they were."""
        for block, own in zip(self.compiled_blocks, self._own_forwards, strict=True):
            if own is None:
                vars(block).pop("forward", None)
            else:
                block.forward = own  # type: ignore[method-assign]
        if self.compiled:
            _set_attention(self.model, self._previous_attention)
        self.compiled = False

    def __call__(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        n_rows = input_ids_BT.shape[0]
        if self.compiled and self.rows is not None and n_rows < self.rows:
            pad_PT = input_ids_BT[-1:].expand(self.rows - n_rows, -1)
            return self(torch.cat([input_ids_BT, pad_PT]))[:n_rows]
        if self._checked or not self.compiled:
            return hooked_forward(self.model, self.block, input_ids_BT)
        try:
            out_BTD = hooked_forward(self.model, self.block, input_ids_BT)
        except Exception as exc:  # noqa: BLE001 - any compile failure falls back
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            warnings.warn(
                f"torch.compile failed on {type(self.model).__name__} ({first_line[:200]}); "
                "running it uncompiled",
                RuntimeWarning,
                stacklevel=2,
            )
            self.restore()
            return hooked_forward(self.model, self.block, input_ids_BT)
        self._checked = True
        return out_BTD


@contextmanager
def stopped_forward(
    model: Any,
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module],
    layer: int,
    *,
    compile: bool = False,
    rows: int | None = None,
) -> Iterator[StoppedForward]:
    """Yield ``run``, with ``run(input_ids_BT)`` -> output of ``blocks[layer]`` [B, T, D].

    Parameters
    ----------
    model
        a ``transformers`` causal LM whose decoder blocks are ``blocks``.
    blocks
        its decoder blocks, in order.
    layer
        the block whose output ``run`` returns.
    compile
        compile ``blocks[: layer + 1]`` (see the module docstring); ``run.compiled``
        turns False if compiling fails.
    rows
        when compiling, pad shorter batches to this many rows (the harvest's batch size).
    """
    run = StoppedForward(model, blocks, layer, rows)
    if compile:
        run.compile()
    try:
        yield run
    finally:
        run.restore()


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
