"""SAELens's run-time input normalisation (``normalize_activations``), the one place it lives.

A normalisation maps an input ``x`` to the encoder's input ``n(x)``, and a reconstruction ``y``
made in normalised units back to input units by an affine map per token,
``x̂ = s(x)·y + h(x)``. Everything that needs it asks this module: encoding
(:func:`normalize`), decoding (:func:`denormalize`), the hybrid closed forms, which scale an
added decoder term by ``s`` (:func:`output_scale`), and the exact decoder refit, which fits
``y`` to the target ``(x − h)/s`` with weight ``s²`` (:func:`decode_target`).

| name | ``n(x)`` | ``s(x)`` | ``h(x)`` |
|---|---|---|---|
| ``none`` | ``x`` | 1 | 0 |
| ``expected_average_only_in`` | ``x`` (folded into the weights at load, as SAELens does) | 1 | 0 |
| ``constant_norm_rescale`` | ``x·√D/‖x‖`` | ``‖x‖/√D`` | 0 |
| ``layer_norm`` | ``(x − μ)/(σ + 1e-5)`` | ``σ`` | ``μ`` |

(``μ`` and ``σ`` are the mean and standard deviation of ``x`` across its D entries; SAELens
adds the ``1e-5`` on the way in only.)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from saegeo.errors import SaegeoError

Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
LAYER_NORM_EPS = 1e-5


def check(kind: str, source: str) -> None:
    """Raise a SaegeoError naming ``source`` unless ``kind`` is a supported normalisation."""
    if kind not in NORMALIZATIONS:
        raise SaegeoError(
            f"{source}: unsupported normalize_activations {kind!r}; "
            f"expected one of {', '.join(NORMALIZATIONS)}"
        )


def needs_input(kind: str) -> bool:
    """Whether undoing the normalisation needs the input ``x`` (its statistics)."""
    return kind in ("constant_norm_rescale", "layer_norm")


def normalize(kind: str, x_BD: torch.Tensor) -> torch.Tensor:
    """The encoder's input ``n(x)`` [B, D]."""
    if kind == "constant_norm_rescale":
        return x_BD * (x_BD.shape[-1] ** 0.5 / x_BD.norm(dim=-1, keepdim=True))
    if kind == "layer_norm":
        centred_BD = x_BD - x_BD.mean(dim=-1, keepdim=True)
        return centred_BD / (centred_BD.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)
    return x_BD


def output_map(kind: str, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(s [B], h [B, D] or None)`` of the output map ``x̂ = s·y + h`` for inputs ``x``."""
    if kind == "constant_norm_rescale":
        return x_BD.norm(dim=-1) / x_BD.shape[-1] ** 0.5, None
    if kind == "layer_norm":
        mean_B1 = x_BD.mean(dim=-1, keepdim=True)
        return (x_BD - mean_B1).std(dim=-1), mean_B1.expand_as(x_BD)
    return torch.ones(x_BD.shape[:-1], dtype=x_BD.dtype, device=x_BD.device), None


def output_scale(kind: str, x_BD: torch.Tensor) -> torch.Tensor:
    """``s`` [B]: how much the output map scales a reconstruction made in normalised units."""
    return output_map(kind, x_BD)[0]


def denormalize(kind: str, y_BD: torch.Tensor, x_BD: torch.Tensor | None) -> torch.Tensor:
    """``s(x)·y + h(x)`` [B, D]: a reconstruction in input units (``x`` may be None for
    normalisations that do not need it)."""
    if not needs_input(kind):
        return y_BD
    if x_BD is None:
        raise SaegeoError(
            f"normalize_activations={kind!r} needs the input x to undo the normalisation; "
            "pass x (decode(acts, x=x)) or call forward(x)"
        )
    scale_B, shift_BD = output_map(kind, x_BD)
    y_BD = y_BD * scale_B[..., None]
    return y_BD if shift_BD is None else y_BD + shift_BD


def decode_target(kind: str, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target [B, D] and weight [B] of a linear decode in normalised units.

    ``Σ w_t ||y_t − ẑ_t||² = Σ ||x_t − x̂_t||²`` for ``ẑ = a W_dec + b`` and ``x̂ = s·ẑ + h``:
    ``y = (x − h)/s`` and ``w = s²``.
    """
    scale_B, shift_BD = output_map(kind, x_BD)
    centred_BD = x_BD if shift_BD is None else x_BD - shift_BD
    return centred_BD / scale_B[..., None], scale_B**2
