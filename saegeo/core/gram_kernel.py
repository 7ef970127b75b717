"""The Triton kernel of :mod:`saegeo.core.gram_update` (imported only where it runs)."""

import triton
import triton.language as tl


@triton.jit
def gram_update_kernel(
    source_ptr,
    keep_ptr,
    corr_ptr,
    gram_ptr,
    idx_ptr,
    coef_ptr,
    block_max_ptr,
    padded,
    blocks,
    GATHER: tl.constexpr,
    BLOCK: tl.constexpr,
    PER_PROGRAM: tl.constexpr,
):
    """One row's ``PER_PROGRAM`` blocks of ``BLOCK`` columns: ``corr = source - coef · gram``
    and each block's maximum (see :func:`saegeo.core.gram_update.update`)."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if GATHER:  # noqa: SIM108 (a static branch of the compiled kernel)
        source_row = tl.load(keep_ptr + row).to(tl.int64)
    else:
        source_row = row
    atom = tl.load(idx_ptr + row).to(tl.int64)
    coef = tl.load(coef_ptr + row)
    cols = chunk * (PER_PROGRAM * BLOCK) + tl.arange(0, PER_PROGRAM * BLOCK)
    inside = cols < padded
    corr = tl.load(source_ptr + source_row * padded + cols, mask=inside, other=0.0)
    gram = tl.load(gram_ptr + atom * padded + cols, mask=inside, other=0.0)
    new = corr - coef * gram
    tl.store(corr_ptr + row * padded + cols, new, mask=inside)
    new_KB = tl.reshape(new, (PER_PROGRAM, BLOCK))
    block_max = tl.max(new_KB, axis=1)
    # tl.max may skip NaN; a block's sum is NaN whenever the block holds one.
    has_nan = tl.max((new_KB != new_KB).to(tl.int32), axis=1) > 0
    block_max = tl.where(has_nan, tl.sum(new_KB, axis=1), block_max)
    block = chunk * PER_PROGRAM + tl.arange(0, PER_PROGRAM)
    tl.store(block_max_ptr + row * blocks + block, block_max, mask=block < blocks)
