"""The Triton kernels of :mod:`saegeo.core.gram_update` (imported only where they run)."""

import triton
import triton.language as tl


@triton.jit
def select_apply_kernel(
    corr_ptr,
    block_max_ptr,
    drift_ptr,
    residual_ptr,
    dec_ptr,
    acts_ptr,
    rows_ptr,
    done_ptr,
    idx_ptr,
    coef_ptr,
    prior_ptr,
    norm_ptr,
    width,
    padded,
    blocks,
    d_in,
    BLOCK: tl.constexpr,
    BLOCKS_POW2: tl.constexpr,
    D_CHUNK: tl.constexpr,
    EXACT_CHUNK: tl.constexpr,
    FEW: tl.constexpr,
):
    """One running row's iteration: choose its atom, then apply it (see
    :func:`saegeo.core.gram_update.select_apply`). A finished row only gets coefficient 0."""
    row = tl.program_id(0).to(tl.int64)
    dtype = corr_ptr.dtype.element_ty
    if tl.load(done_ptr + row) != 0:
        tl.store(coef_ptr + row, tl.zeros((), dtype))
    else:
        corr_row = corr_ptr + row * padded
        block_max_row = block_max_ptr + row * blocks
        residual_row = residual_ptr + row * d_in
        # The block holding the largest correlation, and that correlation's column.
        ks = tl.arange(0, BLOCKS_POW2)
        block_max = tl.load(block_max_row + ks, mask=ks < blocks, other=float("-inf"))
        has_nan = tl.max((block_max != block_max).to(tl.int32), axis=0) > 0
        top = tl.max(block_max, axis=0)
        # (A NaN maximum matches no block: clamped in range, the row then goes to the exact path.)
        top_block = tl.min(tl.where(block_max == top, ks, blocks - 1), axis=0).to(tl.int64)
        drift = tl.load(drift_ptr + row)
        floor = top - 2 * drift
        cols = tl.arange(0, BLOCK)
        corr = tl.load(corr_row + top_block * BLOCK + cols)
        column = tl.min(tl.where(corr == top, cols, BLOCK - 1), axis=0).to(tl.int64)
        blocks_near = tl.sum((block_max >= floor).to(tl.int32), axis=0)
        entries_near = tl.sum((corr >= floor).to(tl.int32), axis=0)
        clear = (blocks_near == 1) & (entries_near == 1) & (top > drift) & (has_nan == 0)
        idx = top_block * BLOCK + column
        if clear == 0:
            every = (has_nan != 0) | (floor != floor) | (tl.abs(floor) == float("inf"))
            idx = _exact_argmax(
                corr_row, block_max, ks, residual_row, dec_ptr, floor, every,
                width, blocks, d_in, BLOCK, D_CHUNK, EXACT_CHUNK, FEW,
            )  # fmt: skip
        # SAELens's update: coef = relu(<r, d>), codes += coef, r -= coef · d.
        atom_row = dec_ptr + idx * d_in
        dot = _dot(residual_row, atom_row, d_in, D_CHUNK)
        coef = tl.where((dot > 0) | (dot != dot), dot, 0.0)  # relu, NaN kept as torch keeps it
        code_ptr = acts_ptr + tl.load(rows_ptr + row) * width + idx
        prior = tl.load(code_ptr)
        tl.store(code_ptr, prior + coef)
        squares = tl.zeros((), dtype)
        for start in range(0, d_in, D_CHUNK):
            ds, inside, residual, atom = _chunk(residual_row, atom_row, start, d_in, D_CHUNK)
            residual = residual - coef * atom
            tl.store(residual_row + ds, residual, mask=inside)
            squares += tl.sum(residual * residual, axis=0)
        tl.store(idx_ptr + row, idx)
        tl.store(coef_ptr + row, coef)
        tl.store(prior_ptr + row, prior)
        tl.store(norm_ptr + row, tl.sqrt(squares))


@triton.jit
def _chunk(residual_row, atom_row, start, d_in, D_CHUNK: tl.constexpr):
    """Entries ``start .. start + D_CHUNK`` of a residual and an atom (0 past d_in), with
    their positions and which of them are inside."""
    ds = start + tl.arange(0, D_CHUNK)
    inside = ds < d_in
    residual = tl.load(residual_row + ds, mask=inside, other=0.0)
    return ds, inside, residual, tl.load(atom_row + ds, mask=inside, other=0.0)


@triton.jit
def _dot(residual_row, atom_row, d_in, D_CHUNK: tl.constexpr):
    """``<r, d>`` of a residual and an atom."""
    dot = tl.zeros((), residual_row.dtype.element_ty)
    for start in range(0, d_in, D_CHUNK):
        _, _, residual, atom = _chunk(residual_row, atom_row, start, d_in, D_CHUNK)
        dot += tl.sum(residual * atom, axis=0)
    return dot


@triton.jit
def _dot64(residual_row, atom_row, d_in, D_CHUNK: tl.constexpr):
    """``<r, d>`` of a residual and an atom, summed in float64."""
    dot = tl.zeros((), tl.float64)
    for start in range(0, d_in, D_CHUNK):
        _, _, residual, atom = _chunk(residual_row, atom_row, start, d_in, D_CHUNK)
        dot += tl.sum(residual.to(tl.float64) * atom.to(tl.float64), axis=0)
    return dot


@triton.jit
def _exact_argmax(
    corr_row, block_max, ks, residual_row, dec_ptr, floor, every, width, blocks, d_in,
    BLOCK: tl.constexpr, D_CHUNK: tl.constexpr, EXACT_CHUNK: tl.constexpr, FEW: tl.constexpr,
):  # fmt: skip
    """SAELens's argmax for a row its drifting correlations leave open (as
    :func:`saegeo.core.gram_route.exact_argmax`): exact correlations of the atoms whose drifting
    correlation reaches ``floor``, or of ``every`` atom where the floor is not finite. They are
    summed in float64, as there.

    Only the blocks whose maximum ``block_max`` [blocks, padded to ``ks``] reaches the floor
    are visited, in order. In a block with at most ``FEW`` candidates, each candidate's
    correlation is one dot product; with more, the block's candidates go together in tiles of
    ``EXACT_CHUNK`` entries of d_in.
    """
    best = tl.full((), float("-inf"), tl.float64)
    best_idx = tl.zeros((), tl.int64) + width
    first_nan = tl.zeros((), tl.int64) + width
    cols = tl.arange(0, BLOCK)
    near = tl.where(every, ks < blocks, (block_max >= floor) & (ks < blocks))
    for _ in range(tl.sum(near.to(tl.int32), axis=0)):
        block = tl.min(tl.where(near, ks, blocks), axis=0)
        near = near & (ks != block)
        atoms = block.to(tl.int64) * BLOCK + cols
        corr = tl.load(corr_row + atoms)
        candidate = tl.where(every, atoms < width, (corr >= floor) & (atoms < width))
        count = tl.sum(candidate.to(tl.int32), axis=0)
        block_best = tl.full((), float("-inf"), tl.float64)
        block_idx = tl.zeros((), tl.int64) + width
        block_nan = tl.zeros((), tl.int64) + width
        if count <= FEW:
            # Candidates in ascending order: a later one must be larger to win.
            for _ in range(count):
                atom = tl.min(tl.where(candidate, atoms, width), axis=0)
                candidate = candidate & (atoms != atom)
                exact = _dot64(residual_row, dec_ptr + atom * d_in, d_in, D_CHUNK)
                block_nan = tl.where((exact != exact) & (block_nan == width), atom, block_nan)
                better = exact > block_best
                block_idx = tl.where(better, atom, block_idx)
                block_best = tl.where(better, exact, block_best)
        else:
            exact = tl.zeros((BLOCK,), tl.float64)
            for start in range(0, d_in, EXACT_CHUNK):
                ds = start + tl.arange(0, EXACT_CHUNK)
                inside = ds < d_in
                residual = tl.load(residual_row + ds, mask=inside, other=0.0)
                dec = tl.load(
                    dec_ptr + atoms[:, None] * d_in + ds[None, :],
                    mask=candidate[:, None] & inside[None, :],
                    other=0.0,
                )
                exact += tl.sum(dec.to(tl.float64) * residual.to(tl.float64)[None, :], axis=1)
            nan = candidate & (exact != exact)
            block_nan = tl.min(tl.where(nan, atoms, width), axis=0)
            value = tl.where(candidate & (exact == exact), exact, float("-inf"))
            block_best = tl.max(value, axis=0)
            block_idx = tl.min(tl.where(candidate & (value == block_best), atoms, width), axis=0)
        first_nan = tl.minimum(first_nan, block_nan)
        better = block_best > best
        best_idx = tl.where(better, block_idx, best_idx)
        best = tl.where(better, block_best, best)
    # A NaN correlation is SAELens's maximum where every atom counts; otherwise the first
    # atom at the maximum, or atom 0 when no correlation is positive.
    idx = tl.where(best > 0, best_idx, 0)
    return tl.where(every & (first_nan < width), first_nan, idx)


@triton.jit
def gram_update_kernel(
    corr_ptr,
    gram_ptr,
    idx_ptr,
    coef_ptr,
    done_ptr,
    block_max_ptr,
    padded,
    blocks,
    BLOCK: tl.constexpr,
    PER_PROGRAM: tl.constexpr,
):
    """One running row's ``PER_PROGRAM`` blocks of ``BLOCK`` columns: ``corr -= coef · gram``
    and each block's maximum (see :func:`saegeo.core.gram_update.update`)."""
    row = tl.program_id(0).to(tl.int64)
    if tl.load(done_ptr + row) == 0:
        chunk = tl.program_id(1)
        atom = tl.load(idx_ptr + row).to(tl.int64)
        coef = tl.load(coef_ptr + row)
        cols = chunk * (PER_PROGRAM * BLOCK) + tl.arange(0, PER_PROGRAM * BLOCK)
        inside = cols < padded
        corr = tl.load(corr_ptr + row * padded + cols, mask=inside, other=0.0)
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
