"""Sparse codes: an SAE's latent activations over an activation store, as a CSR matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from saegeo.core.memory import require, sparse_codes_bytes
from saegeo.core.sae import SAE
from saegeo.io import distributed
from saegeo.io.streaming import ActsLike, BatchStream, sae_stream


def encode_codes(
    sae: SAE,
    acts: ActsLike,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> sp.csr_matrix:
    """Latent activations of ``sae`` on ``acts`` as ``scipy.sparse.csr_matrix`` [N, width], float32.

    Batches are encoded on ``device`` and only the non-zeros are kept, so memory grows with
    N·L0 rather than N·width. ``progress`` as in :mod:`saegeo.io.streaming`.

    Under ``torch.distributed`` each rank encodes its share of the tokens and the rows are
    gathered, so every rank returns the whole matrix (the single-process result): each holds
    N·L0 values and column indices, as one process would.
    """
    sae, batches = sae_stream(sae, acts, batch_size, limit, device, progress, "encode_codes")
    batches = batches.replace(sharded=True)
    blocks: list[sp.csr_matrix] = []
    for batch_BD in batches:
        acts_BF = sae.encode(batch_BD)
        rows, cols = acts_BF.nonzero(as_tuple=True)
        if not blocks:
            _require_memory(sae, batches, rows.numel() / max(acts_BF.shape[0], 1), limit)
        values = acts_BF[rows, cols]
        blocks.append(
            sp.csr_matrix(
                (values.float().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())),
                shape=(acts_BF.shape[0], sae.width),
                dtype=np.float32,
            )
        )
    codes = (
        sp.vstack(blocks, format="csr", dtype=np.float32)
        if blocks
        else sp.csr_matrix((0, sae.width), dtype=np.float32)
    )
    return distributed.gather_rows(codes)


def _require_memory(sae: SAE, batches: BatchStream, l0: float, limit: int | None) -> None:
    """Refuse, naming ``limit``, codes whose non-zeros (at the first batch's L0) would not fit
    in the host's free memory."""
    require(
        sparse_codes_bytes(batches.n_tokens, l0),
        torch.device("cpu"),
        what=f"the codes of {sae.name} on {batches.n_tokens} tokens (L0 {l0:.1f})",
        argument="limit",
        value=limit,
        advice="encode fewer tokens",
    )
