"""Sparse codes: an SAE's latent activations over an activation store, as a CSR matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from typing_extensions import Unpack

from saegeo.acts.streaming import (
    ActsLike,
    BatchStream,
    StreamOptions,
    sae_stream,
    with_stream_options,
)
from saegeo.core.sae import SAE
from saegeo.runtime import distributed
from saegeo.runtime.memory import require_argument, sparse_codes_bytes


def csr_codes(acts_BF: torch.Tensor) -> sp.csr_matrix:
    """The non-zeros of a batch of latent activations [B, F] as a float32 CSR matrix (on the CPU).

    >>> csr_codes(torch.tensor([[0.0, 2.0], [1.0, 0.0]])).toarray().tolist()
    [[0.0, 2.0], [1.0, 0.0]]
    """
    rows, cols = acts_BF.nonzero(as_tuple=True)
    values = acts_BF[rows, cols]
    return sp.csr_matrix(
        (values.float().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())),
        shape=tuple(acts_BF.shape),
        dtype=np.float32,
    )


@with_stream_options
def encode_codes(
    sae: SAE,
    acts: ActsLike,
    **options: Unpack[StreamOptions],
) -> sp.csr_matrix:
    """Latent activations of ``sae`` on ``acts`` as ``scipy.sparse.csr_matrix`` [N, width], float32.

    Batches are encoded on the options' ``device`` (:class:`~saegeo.acts.streaming.StreamOptions`)
    and only the non-zeros are kept, so memory grows with N·L0 rather than N·width.

    Under ``torch.distributed`` each rank encodes its share of the tokens and the rows are
    gathered, so every rank returns the whole matrix (the single-process result): each holds
    N·L0 values and column indices, as one process would.
    """
    sae, batches = sae_stream(sae, acts, options, "encode_codes")
    batches = batches.replace(sharded=True)
    blocks: list[sp.csr_matrix] = []
    for batch_BD in batches:
        acts_BF = sae.encode(batch_BD)
        if not blocks:
            nonzeros = int(torch.count_nonzero(acts_BF))
            _require_memory(sae, batches, nonzeros / max(acts_BF.shape[0], 1))
        blocks.append(csr_codes(acts_BF))
    codes = (
        sp.vstack(blocks, format="csr", dtype=np.float32)
        if blocks
        else sp.csr_matrix((0, sae.width), dtype=np.float32)
    )
    return distributed.gather_rows(codes)


def _require_memory(sae: SAE, batches: BatchStream, l0: float) -> None:
    """Refuse, naming ``limit``, codes whose non-zeros (at the first batch's L0) would not fit
    in the host's free memory."""
    require_argument(
        sparse_codes_bytes(batches.n_tokens, l0),
        torch.device("cpu"),
        what=f"the codes of {sae.name} on {batches.n_tokens} tokens (L0 {l0:.1f})",
        argument="limit",
        value=batches.limit,
        advice="encode fewer tokens",
    )
