"""Hybrid SAEs: a smaller SAE with features of a larger one added, and some of its own removed.

An added feature keeps its activation exactly as in its own SAE (DESIGN, "Adding a feature"):
its encoder column, bias and threshold come along, a difference of ``b_dec`` centring is folded
into its bias, and it decodes with its own decoder row. How the union fires depends on the
architecture of the pair:

- ``relu`` / ``jumprelu`` (additive): :func:`saegeo.concat`; every latent fires as in its own
  SAE, so a hybrid's reconstruction is the smaller SAE's plus the added features' terms.
- ``topk`` with ``topk``: a TopK SAE over the union that keeps the smaller SAE's ``k``; an added
  latent competes for the ``k`` slots with its own (re-centred) pre-activation.
- ``matching_pursuit`` with ``matching_pursuit``: a pursuit over the union dictionary.

Other pairs (TopK with an additive SAE, pursuit with anything else) have no union; convert TopK
SAEs first with :meth:`SAE.to_jumprelu` (or pass ``topk="jumprelu"`` to the functions that
take activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from saegeo.core.sae import ADDITIVE_ARCHS, SAE, concat
from saegeo.errors import SaegeoError, ShapeError
from saegeo.io.streaming import BatchStream, checked_store

TopkMode = Literal["reencode", "jumprelu"]
TOPK_MODES: tuple[str, ...] = get_args(TopkMode)


def check_pair(small: SAE, large: SAE, *, what: str = "hybrid()") -> str:
    """The kind of union ``small`` and ``large`` form: ``additive``, ``topk`` or ``pursuit``.

    Raises a SaegeoError naming both SAEs when they cannot be combined.
    """
    if small.d_in != large.d_in:
        raise ShapeError(
            f"{what}: {small.name} has d_in={small.d_in} but {large.name} has d_in={large.d_in}"
        )
    if small.normalize_activations != large.normalize_activations:
        raise SaegeoError(
            f"{what}: {large.name} normalises inputs with {large.normalize_activations!r}, "
            f"{small.name} with {small.normalize_activations!r}"
        )
    if small.arch in ADDITIVE_ARCHS and large.arch in ADDITIVE_ARCHS:
        return "additive"
    if small.arch == large.arch == "topk":
        return "topk"
    if small.arch == large.arch == "matching_pursuit":
        return "pursuit"
    hint = (
        "; convert TopK SAEs with to_jumprelu(acts) (topk='jumprelu')"
        if "topk" in (small.arch, large.arch) and "matching_pursuit" not in (small.arch, large.arch)
        else ""
    )
    raise SaegeoError(
        f"{what}: cannot add features of {large.name} ({large.arch}) to "
        f"{small.name} ({small.arch}){hint}"
    )


def rebase(small: SAE, large: SAE) -> SAE:
    """``large``'s latents as they fire inside a union with ``small`` (same activations).

    The result reads ``small``'s input centring: the difference of ``b_dec`` centring is
    folded into the encoder bias (exactly as :func:`saegeo.concat` does) and ``b_dec`` and
    ``apply_b_dec_to_input`` are ``small``'s. Encoder, thresholds, ``k`` and decoder rows stay.
    """
    large = large.to(small.device, small.dtype)
    b_enc = large.b_enc + (small.centring() - large.centring()) @ large.W_enc
    return large.replace(
        b_enc=b_enc, b_dec=small.b_dec, apply_b_dec_to_input=small.apply_b_dec_to_input
    )


def _indices(idx: Sequence[int] | np.ndarray | torch.Tensor, width: int, name: str) -> torch.Tensor:
    if isinstance(idx, torch.Tensor):
        out = idx.to(device="cpu", dtype=torch.long).reshape(-1)
    else:
        out = torch.from_numpy(np.array(idx, dtype=np.int64).reshape(-1))
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= width):
        raise SaegeoError(f"hybrid(): {name} indices must lie in [0, {width})")
    if out.unique().numel() != out.numel():
        raise SaegeoError(f"hybrid(): {name} indices must be distinct")
    return out


def hybrid(
    small: SAE,
    large: SAE,
    *,
    add: Sequence[int] | np.ndarray | torch.Tensor = (),
    remove: Sequence[int] | np.ndarray | torch.Tensor = (),
) -> SAE:
    """``small`` without latents ``remove``, with ``large``'s latents ``add`` appended.

    The kept latents of ``small`` come first, in order, then the added ones in the order given.
    See the module docstring for how each pair of architectures combines.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> small, large = SAE.from_decoder(torch.eye(3)[:2]), SAE.from_decoder(torch.eye(3))
    >>> hybrid(small, large, add=[2], remove=[0]).W_dec
    tensor([[0., 1., 0.],
            [0., 0., 1.]])
    """
    kind = check_pair(small, large)
    add_idx = _indices(add, large.width, "add")
    remove_idx = _indices(remove, small.width, "remove")
    keep = torch.ones(small.width, dtype=torch.bool)
    keep[remove_idx] = False
    kept = small.select(keep.nonzero().squeeze(1))
    if kept.width + add_idx.numel() == 0:
        raise SaegeoError("hybrid(): the result would have no latents")
    if kind in ("additive", "pursuit"):
        # concat takes b_dec and the pursuit settings from its first SAE: small's.
        return concat([kept, large.select(add_idx)])
    added = rebase(small, large).select(add_idx)
    width = kept.width + added.width
    assert small.k is not None
    return small.replace(
        W_enc=torch.cat([kept.W_enc, added.W_enc], dim=1),
        b_enc=torch.cat([kept.b_enc, added.b_enc]),
        W_dec=torch.cat([kept.W_dec, added.W_dec]),
        k=min(small.k, width),
        metadata={"sources": [small.name, large.name]},
    )


def output_scale(sae: SAE, x_BD: torch.Tensor) -> torch.Tensor:
    """How much ``sae``'s output normalisation scales a reconstruction, per token [batch].

    ``decode`` maps a reconstruction ``y`` made in the normalised space to ``s·y + h(x)``;
    this is ``s``: 1 for ``none`` and ``expected_average_only_in``, ``||x||/sqrt(d_in)`` for
    ``constant_norm_rescale`` and the standard deviation of ``x`` for ``layer_norm``.
    """
    x_BD = x_BD.to(device=sae.device, dtype=sae.dtype)
    if sae.normalize_activations == "constant_norm_rescale":
        return 1.0 / (sae.d_in**0.5 / x_BD.norm(dim=-1))
    if sae.normalize_activations == "layer_norm":
        return (x_BD - x_BD.mean(dim=-1, keepdim=True)).std(dim=-1)
    return torch.ones(x_BD.shape[0], dtype=sae.dtype, device=sae.device)


def as_additive(sae: SAE, batches: BatchStream) -> SAE:
    """``sae``, or for a TopK SAE the JumpReLU SAE calibrated on ``batches``
    (:meth:`SAE.to_jumprelu`: mean L0 on those tokens equals ``k``)."""
    if sae.arch != "topk":
        return sae
    return sae.to_jumprelu(batches.replace(dtype=sae.dtype, progress=False))


def prepare_pair(
    small: SAE, large: SAE, batches: BatchStream, *, topk: TopkMode
) -> tuple[SAE, SAE, str]:
    """Both SAEs on the device of ``batches`` (TopK ones converted when ``topk="jumprelu"``,
    calibrated on the same tokens) and their union kind."""
    if topk not in TOPK_MODES:
        raise SaegeoError(f"topk must be one of {TOPK_MODES}, got {topk!r}")
    for sae in (small, large):
        checked_store(batches.store, sae)
    small, large = small.to(batches.device), large.to(batches.device, small.dtype)
    if topk == "jumprelu":
        small, large = as_additive(small, batches), as_additive(large, batches)
    return small, large, check_pair(small, large, what="delta_mse()")
