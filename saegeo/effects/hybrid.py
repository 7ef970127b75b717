"""Hybrid SAEs: a smaller SAE with features of a larger one added, and some of its own removed.

An added feature keeps its activation exactly as in its own SAE (``docs/concepts.md``, "Adding a
feature"): its encoder column, bias and threshold come along, a difference of ``b_dec`` centring is
folded into its bias, and it decodes with its own decoder row. How the union fires depends on the
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

from saegeo.acts.streaming import BatchStream, checked_store
from saegeo.config import check_choice
from saegeo.core import normalization
from saegeo.core.architectures import Union, union_kind
from saegeo.core.sae import SAE, check_same_site, concat
from saegeo.errors import ArgumentError, SaegeoError

TopkMode = Literal["reencode", "jumprelu"]
TOPK_MODES: tuple[str, ...] = get_args(TopkMode)


def check_pair(small: SAE, large: SAE, *, what: str = "hybrid()") -> Union:
    """The kind of union ``small`` and ``large`` form: ``additive``, ``topk`` or ``pursuit``.

    Raises a SaegeoError naming both SAEs when they cannot be combined.
    """
    check_same_site([small, large], what)
    return union_kind(
        [small, large],
        what,
        action=f"cannot add features of {large.name} ({large.arch}) to {small.name} ({small.arch})",
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
    outside = out[(out < 0) | (out >= width)]
    if outside.numel():
        raise ArgumentError(name, int(outside[0]), f"indices must lie in [0, {width})")
    if out.unique().numel() != out.numel():
        raise ArgumentError(name, idx, "indices must be distinct")
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
    if int(keep.sum()) + add_idx.numel() == 0:
        raise SaegeoError("hybrid(): the result would have no latents")
    kept = small.select(keep.nonzero().squeeze(1))
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
    """How much ``sae``'s output normalisation scales a reconstruction, per token [batch]
    (:func:`saegeo.core.normalization.output_scale`)."""
    x_BD = x_BD.to(device=sae.device, dtype=sae.dtype)
    return normalization.output_scale(sae.normalize_activations, x_BD)


def as_additive(sae: SAE, batches: BatchStream) -> SAE:
    """:meth:`SAE.to_additive` on ``batches``: a TopK SAE becomes the JumpReLU SAE whose mean
    L0 on those tokens is ``k``; other architectures stay as they are."""
    return sae.to_additive(batches.replace(dtype=sae.dtype, progress=False))


def prepare_pair(
    small: SAE, large: SAE, batches: BatchStream, *, topk: TopkMode
) -> tuple[SAE, SAE, str]:
    """Both SAEs on the device of ``batches`` (TopK ones converted when ``topk="jumprelu"``,
    calibrated on the same tokens) and their union kind."""
    check_choice("topk", topk, TOPK_MODES)
    for sae in (small, large):
        checked_store(batches.store, sae)
    small, large = small.to(batches.device), large.to(batches.device, small.dtype)
    if topk == "jumprelu":
        small, large = as_additive(small, batches), as_additive(large, batches)
    return small, large, check_pair(small, large, what="delta_mse()")
