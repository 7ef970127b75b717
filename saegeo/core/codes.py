"""Sparse codes: an SAE's latent activations over an activation store, as a CSR matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saegeo.core.devices import resolve_device
from saegeo.core.sae import SAE
from saegeo.errors import ShapeError
from saegeo.io.store import ActivationStore, as_store


def encode_codes(
    sae: SAE,
    acts: ActivationStore | torch.Tensor | str,
    *,
    batch_size: int = 4096,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> sp.csr_matrix:
    """Latent activations of ``sae`` on ``acts`` as ``scipy.sparse.csr_matrix`` [N, width], float32.

    Batches are encoded on ``device`` and only the non-zeros are kept, so memory grows with
    N·L0 rather than N·width.
    """
    store = as_store(acts)
    if store.d_in != sae.d_in:
        raise ShapeError(
            f"activations {store.source} have d_in={store.d_in}, but {sae.name} "
            f"expects d_in={sae.d_in}"
        )
    torch_device = resolve_device(device)
    sae = sae.to(torch_device)
    n_total = store.n_tokens if limit is None else min(limit, store.n_tokens)
    blocks = []
    with tqdm(
        total=n_total, desc=f"encode {sae.name}", unit="tok", disable=not progress, leave=False
    ) as bar:
        for batch_BD in store.iter_batches(batch_size, limit=limit, device=torch_device):
            acts_BF = sae.encode(batch_BD)
            rows, cols = acts_BF.nonzero(as_tuple=True)
            values = acts_BF[rows, cols]
            blocks.append(
                sp.csr_matrix(
                    (values.float().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())),
                    shape=(acts_BF.shape[0], sae.width),
                    dtype=np.float32,
                )
            )
            bar.update(acts_BF.shape[0])
    if not blocks:
        return sp.csr_matrix((0, sae.width), dtype=np.float32)
    return sp.vstack(blocks, format="csr", dtype=np.float32)
