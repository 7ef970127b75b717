"""How far an SAE's reconstruction falls short along itself: the least-squares gain.

An L1 penalty shrinks a ReLU SAE's activations, so its reconstruction ``x̂`` is too short:
scaled up by one scalar it would fit the input better. The gain

    g = <x - b, x̂ - b> / ||x̂ - b||²,

with ``b`` the decoder's output for zero codes (its bias), is that scalar: 1 for an SAE
without shrinkage, above 1 for a shrunk one. "Why novel features help" in ``docs/matching.md``
measures what shrinkage does to the novel-feature analysis.
"""

from __future__ import annotations

import numpy as np
import torch

from saegeo.core.sae import SAE, as_input


def reconstruction_gain(
    sae: SAE, x_BD: torch.Tensor | np.ndarray, *, batch_size: int = 4096
) -> float:
    """The least-squares gain of ``sae``'s reconstruction on the activations ``x_BD``.

    Parameters
    ----------
    sae
        Any SAE saegeo reads; it runs on its own device and dtype.
    x_BD
        Activations [N, d_in] held in memory, a tensor or numpy array (e.g.
        ``store.read(limit=...)``).
    batch_size
        Tokens encoded at once.

    Returns
    -------
    float
        ``g``: 1 without shrinkage, above 1 when the reconstruction falls short along itself
        (NaN when the SAE reconstructs nothing but its bias).

    Examples
    --------
    >>> import torch, saegeo as sg
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(16, 8, generator=g)
    >>> sae = sg.SAE(W_enc=W.T, b_enc=torch.zeros(16), W_dec=W, b_dec=torch.zeros(8), arch="relu")
    >>> x = torch.randn(256, 8, generator=g)
    >>> shrunk = sae.replace(W_dec=sae.W_dec / 2)
    >>> round(reconstruction_gain(shrunk, x) / reconstruction_gain(sae, x), 3)
    2.0
    """
    num = den = 0.0
    with torch.no_grad():
        for batch_BD in as_input(x_BD, "x_BD").split(batch_size):
            x_bd = batch_BD.to(sae.W_dec.device, sae.W_dec.dtype)
            codes_BF = sae.encode(x_bd)
            bias_BD = sae.decode(torch.zeros_like(codes_BF), x_bd)
            y_BD = sae.decode(codes_BF, x_bd) - bias_BD
            num += float(((x_bd - bias_BD) * y_BD).sum(dtype=torch.float64))
            den += float(y_BD.square().sum(dtype=torch.float64))
    return num / den if den > 0 else float("nan")
