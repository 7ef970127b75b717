"""Compiles the fused Gram iteration's Triton kernels for a GPU without one (run as a script by
tests/core/test_gram_update.py, in a process of its own)."""

from __future__ import annotations

import sys

from saegeo.core import gram_update


def compile_kernels(dtype: str, capability: int) -> None:
    """Both kernels at the settings of a 16384-wide dictionary, pointers of ``dtype``, for
    compute capability ``capability`` (90 for sm_90)."""
    # Triton is imported here: the test collection reads this module where Triton is absent.
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = gram_update._compiled()
    padded, blocks = 16384, 128
    for kernel, settings in [
        (kernels.select_apply_kernel, gram_update.select_apply_settings(padded, blocks)),
        (kernels.gram_update_kernel, gram_update.update_settings(padded, blocks)),
    ]:
        signature = {name: argument_type(name, dtype, settings) for name in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature, constexprs=settings)
        target = GPUTarget("cuda", capability, 32)
        compiled = triton_compile(source, target=target, options=gram_update.launch_options())
        assert compiled.asm["cubin"], kernel


def argument_type(name: str, dtype: str, constants: dict) -> str:
    """A kernel argument's Triton type: indices and flags by name, other pointers ``dtype``."""
    if name in constants:
        return "constexpr"
    if name in ("rows_ptr", "idx_ptr"):
        return "*i64"
    if name == "done_ptr":
        return "*i1"
    return f"*{dtype}" if name.endswith("_ptr") else "i32"


if __name__ == "__main__":
    compile_kernels(sys.argv[1], int(sys.argv[2]))
